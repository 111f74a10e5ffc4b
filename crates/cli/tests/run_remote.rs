//! `run --remote` against a real `serve`: the same JSON outputs as a local
//! run of the same flags, the log on stderr, nothing of the inputs sent
//! again the second time; exit 1 for a failing build,
//! 2 for a request the server refuses; over a unix socket too; Ctrl-C
//! cancels the build on the server, leaving nothing there.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use common::{bin, busybox_tree, leftovers, run_with_busybox};

/// A `serve` process, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        tvix_oci_testkit::stop(&mut self.0, std::time::Duration::from_secs(10));
    }
}

fn serve(tmp: &Path, extra: &[&str]) -> (Server, String) {
    let (child, url) = common::spawn_serve(&tmp.join("srv"), &tmp.join("bundles"), extra);
    (Server(child), url)
}

/// `run` of the flags shared by the remote and the local runs: busybox as
/// input, two outputs, a needle, `script` as the build.
fn flags(c: &mut Command, script: &str) {
    c.args(["--output", "build/hello", "--output", "nix/store/out"])
        .args(["--needle", "busybox", "--"])
        .args(["/nix/store/busybox/bin/busybox", "sh", "-c", script]);
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

const SCRIPT: &str = "echo first line; mkdir /nix/store/out; \
    echo made with /nix/store/busybox > /nix/store/out/msg; echo hi > hello";

#[test]
fn a_remote_run_prints_what_a_local_run_prints() {
    tvix_oci_testkit::require!(root, fuse, runc, busybox);
    let tmp = tempfile::tempdir().unwrap();
    let (_server, url) = serve(tmp.path(), &[]);
    let bb = busybox_tree(tmp.path());

    let mut c = run_with_busybox(&tmp.path().join("client"), &bb);
    c.args(["--remote", &url]);
    flags(&mut c, SCRIPT);
    let remote = c.output().unwrap();
    assert!(
        remote.status.success(),
        "{}",
        String::from_utf8_lossy(&remote.stderr)
    );
    let stderr = String::from_utf8_lossy(&remote.stderr);
    assert!(stderr.contains("first line"), "the log on stderr: {stderr}");
    assert!(
        !tmp.path().join("client").exists(),
        "a remote run leaves the local store alone"
    );
    // Run again: the server has the input, nothing of it is sent.
    let mut c = run_with_busybox(&tmp.path().join("client"), &bb);
    c.args(["-v", "--remote", &url]);
    flags(&mut c, SCRIPT);
    let again = c.output().unwrap();
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "input busybox: sent 0 blobs (0 bytes) and 0 directories; the server had 1 blobs"
        ),
        "{stderr}"
    );

    let mut c = run_with_busybox(&tmp.path().join("local"), &bb);
    c.arg("--bundle-root").arg(tmp.path().join("local-bundles"));
    flags(&mut c, SCRIPT);
    let local = c.output().unwrap();
    assert!(
        local.status.success(),
        "{}",
        String::from_utf8_lossy(&local.stderr)
    );

    let (remote, local) = (json(&remote), json(&local));
    assert_eq!(remote["build"], local["build"]);
    assert_eq!(remote["outputs"], local["outputs"]);
    assert_eq!(remote["outputs"][1]["needles_found_in"]["busybox"], "msg");
    let keys = |v: &serde_json::Value| {
        v["accounting"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(keys(&remote), keys(&local), "the same accounting figures");
    assert!(leftovers(&tmp.path().join("bundles")).is_empty());
}

#[test]
fn a_failing_remote_build_exits_1_and_a_refused_request_2() {
    tvix_oci_testkit::require!(root, fuse, runc, busybox);
    let tmp = tempfile::tempdir().unwrap();
    let (_server, url) = serve(tmp.path(), &["--max-outputs", "1"]);
    let bb = busybox_tree(tmp.path());
    let data = tmp.path().join("client");

    let mut c = run_with_busybox(&data, &bb);
    c.args(["--remote", &url, "--output", "build/x", "--"])
        .args([
            "/nix/store/busybox/bin/busybox",
            "sh",
            "-c",
            "echo broken; exit 7",
        ]);
    let out = c.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("broken"), "{stderr}");
    assert!(stderr.contains("exit code 7"), "{stderr}");
    assert!(
        json(&out)["error"]
            .as_str()
            .unwrap()
            .contains("exit code 7")
    );

    // Two outputs: valid here, over the server's limit of one.
    let mut c = run_with_busybox(&data, &bb);
    c.args(["--remote", &url]);
    flags(&mut c, SCRIPT);
    let out = c.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("the server refused the build"), "{stderr}");
    assert!(stderr.contains("outputs"), "{stderr}");

    // No server there: the host's fault.
    let out = bin(&data)
        .args([
            "run",
            "--remote",
            "grpc+http://127.0.0.1:1",
            "--output",
            "build/x",
        ])
        .args(["--", "/bin/true"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn run_remote_over_a_unix_socket() {
    tvix_oci_testkit::require!(root, fuse, runc, busybox);
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("tob.sock");
    let child = bin(&tmp.path().join("srv"))
        .arg("serve")
        .arg("--listen")
        .arg(format!("unix:{}", sock.display()))
        .arg("--bundle-root")
        .arg(tmp.path().join("bundles"))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "serve never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    let bb = busybox_tree(tmp.path());
    let mut c = run_with_busybox(&tmp.path().join("client"), &bb);
    c.arg("--remote")
        .arg(format!("grpc+unix://{}", sock.display()));
    flags(&mut c, SCRIPT);
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        json(&out)["outputs"][1]["needles_found_in"]["busybox"],
        "msg"
    );
}

#[test]
fn ctrl_c_cancels_the_remote_build_and_leaves_nothing_on_the_server() {
    tvix_oci_testkit::require!(root, fuse, runc, busybox);
    let tmp = tempfile::tempdir().unwrap();
    let (_server, url) = serve(tmp.path(), &[]);
    let bundles = tmp.path().join("bundles");
    let bb = busybox_tree(tmp.path());
    let mut c = run_with_busybox(&tmp.path().join("client"), &bb);
    c.args(["--remote", &url, "--output", "build/x", "--"])
        .args(["/nix/store/busybox/bin/busybox", "sleep", "60"]);
    let child = c
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !leftovers(&bundles)
        .iter()
        .any(|l| l.starts_with("a container"))
    {
        assert!(Instant::now() < deadline, "the build never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: the child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("were cancelled"), "{stderr}");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = leftovers(&bundles);
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "left behind: {left:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
