//! The binary driven as a user would: both `run` forms, the JSON result,
//! exit codes and messages.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::{assert_nothing_left, bin, busybox_tree, can_build, import_digest, run_with_busybox};

use std::path::Path;
use std::process::Output;

fn flags_run(tmp: &Path, extra: &[&str], script: &str) -> Output {
    let bb = busybox_tree(tmp);
    let mut c = run_with_busybox(&tmp.join("data"), &bb);
    c.args(["--output", "build/hello", "--needle", "busybox"])
        .args(extra)
        .args(["--", "/nix/store/busybox/bin/busybox", "sh", "-c", script]);
    c.output().unwrap()
}

#[test]
fn dry_run_prints_a_request_the_file_form_accepts() {
    let tmp = tempfile::tempdir().unwrap();
    let out = flags_run(tmp.path(), &["--dry-run"], "echo hi > /build/hello");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = String::from_utf8(out.stdout).unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["inputs"][0]["name"], "busybox");
    assert_eq!(
        v["scratch_paths"],
        serde_json::json!(["build", "nix/store"])
    );
    let req = tmp.path().join("req.json");
    std::fs::write(&req, &json).unwrap();
    let again = bin(&tmp.path().join("data"))
        .args(["run", "--dry-run"])
        .arg(&req)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(again.stdout).unwrap(), json);
}

#[test]
fn both_forms_build_the_same_output() {
    tvix_oci_testkit::require!(root, fuse, runc, busybox);
    let tmp = tempfile::tempdir().unwrap();
    let script = "echo building; echo made with /nix/store/busybox > /build/hello";
    let out = flags_run(tmp.path(), &[], script);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("building"),
        "the log is streamed to stderr"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["build"]["outputs"][0]["name"], "hello");
    assert_eq!(v["outputs"][0]["needles"], serde_json::json!(["busybox"]));
    assert!(v["outputs"][0]["nar_size"].as_u64().unwrap() > 0);
    let digest = v["build"]["outputs"][0]["file"]["digest"].clone();

    let dry = flags_run(tmp.path(), &["--dry-run"], script);
    let req = tmp.path().join("req.json");
    std::fs::write(&req, &dry.stdout).unwrap();
    let out = bin(&tmp.path().join("data"))
        .arg("run")
        .arg(&req)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["build"]["outputs"][0]["file"]["digest"], digest);
}

#[test]
fn exit_codes_and_messages() {
    let tmp = tempfile::tempdir().unwrap();
    // 2: an invalid request, every problem named.
    let out = bin(&tmp.path().join("data"))
        .args(["run", "--output", "/abs", "--scratch", "proc", "--", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("outputs[0] \"/abs\" must be relative") && err.contains("/proc"),
        "{err}"
    );
    // 2: a missing request file, malformed JSON with its line.
    let out = bin(&tmp.path().join("data"))
        .args(["run", "/nonexistent/req.json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/req.json"));
    let bad = tmp.path().join("bad.json");
    std::fs::write(&bad, "{\n  \"command_args\": [\n}").unwrap();
    let out = bin(&tmp.path().join("data"))
        .arg("run")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 3"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 3: an unreachable store.
    let out = bin(&tmp.path().join("data"))
        .args([
            "--blob-service-addr",
            "grpc+http://127.0.0.1:1",
            "import",
            "/bin/busybox",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));
    // No backtraces, ever.
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));

    if let Some(why) = can_build() {
        println!("SKIPPED the build part: {why}");
        return;
    }
    // 1: the build failed, with its log tail.
    let out = flags_run(tmp.path(), &[], "echo last words; exit 4");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("exit code 4") && err.contains("last words"),
        "{err}"
    );
}

#[test]
fn sigterm_mid_build_leaves_nothing_behind() {
    tvix_oci_testkit::require!(root, fuse, runc, busybox);
    let tmp = tempfile::tempdir().unwrap();
    let bb = busybox_tree(tmp.path());
    let bundles = tmp.path().join("bundles");
    let mut child = run_with_busybox(&tmp.path().join("data"), &bb)
        .arg("--bundle-root")
        .arg(&bundles)
        .args([
            "--output",
            "build/x",
            "--",
            "/nix/store/busybox/bin/busybox",
            "sh",
            "-c",
        ])
        .arg("echo started; /nix/store/busybox/bin/busybox sleep 60")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains("started") {
        use std::io::Read;
        let n = err.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "the build never started: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    // SAFETY: the child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(3));
    assert_nothing_left(&bundles);
}

#[test]
fn store_tools_import_ls_cat_spec() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let tree = tmp.path().join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/greeting"), b"hello, store\n").unwrap();
    let out = bin(&data).arg("import").arg(&tree).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let digest = text.split_whitespace().nth(2).unwrap().to_owned();
    let ls = bin(&data)
        .args(["ls", &format!("{digest}/etc")])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&ls.stdout).contains(" 13 ")
            && String::from_utf8_lossy(&ls.stdout).contains("greeting")
    );
    let cat = bin(&data)
        .args(["cat", &format!("{digest}/etc/greeting")])
        .output()
        .unwrap();
    assert_eq!(cat.stdout, b"hello, store\n");
    let back = tmp.path().join("back");
    let out = bin(&data)
        .args(["export", &digest])
        .arg(&back)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(back.join("etc/greeting")).unwrap(),
        b"hello, store\n"
    );
    let missing = bin(&data)
        .args(["cat", &format!("{digest}/etc/nope")])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("\"nope\""));

    let dry = flags_run(tmp.path(), &["--dry-run"], "true");
    let req = tmp.path().join("req.json");
    std::fs::write(&req, &dry.stdout).unwrap();
    let spec = bin(&data).arg("spec").arg(&req).output().unwrap();
    assert!(
        spec.status.success(),
        "{}",
        String::from_utf8_lossy(&spec.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&spec.stdout).unwrap();
    assert_eq!(v["ociVersion"], "1.0.2");
    assert_eq!(v["process"]["cwd"], "/build");
}

#[test]
fn mount_in_the_foreground_and_unmount_on_interrupt() {
    tvix_oci_testkit::require!(root, fuse, runc, busybox);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let tree = tmp.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("f"), b"through fuse\n").unwrap();
    let digest = import_digest(&data, &tree);
    let mount_point = common::MountPoint::new(tmp.path().join("mnt"));
    let mnt = mount_point.0.clone();
    let mut child = bin(&data)
        .args(["mount", &format!("t={digest}")])
        .arg(&mnt)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains("mounted at") {
        use std::io::Read;
        let n = err.read(&mut buf).unwrap();
        assert!(n > 0, "never mounted: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    assert_eq!(std::fs::read(mnt.join("t/f")).unwrap(), b"through fuse\n");
    // SAFETY: the child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert!(child.wait().unwrap().success());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(mnt.to_str().unwrap()), "still mounted");
}

/// Two request files, each sleeping a little, built with `--jobs N`.
/// Returns the phase lines of stderr ("build I: PHASE") and the results.
fn two_builds(tmp: &Path, jobs: &str) -> (Vec<String>, serde_json::Value) {
    let bb = busybox_tree(tmp);
    let mut files = Vec::new();
    for i in 1..=2 {
        let script = format!("/nix/store/busybox/bin/busybox sleep 1; echo {i} > /build/out");
        let dry = run_with_busybox(&tmp.join("data"), &bb)
            .args(["--output", "build/out", "--dry-run", "--"])
            .args(["/nix/store/busybox/bin/busybox", "sh", "-c", &script])
            .output()
            .unwrap();
        assert!(dry.status.success());
        let f = tmp.join(format!("req{i}.json"));
        std::fs::write(&f, &dry.stdout).unwrap();
        files.push(f);
    }
    let out = bin(&tmp.join("data"))
        .args(["run", "--jobs", jobs])
        .args(&files)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let phases = stderr
        .lines()
        .filter(|l| l.starts_with("build "))
        .map(str::to_owned)
        .collect();
    (phases, serde_json::from_slice(&out.stdout).unwrap())
}

#[test]
fn several_requests_run_at_most_jobs_at_once() {
    tvix_oci_testkit::require!(root, fuse, runc, busybox);
    let tmp = tempfile::tempdir().unwrap();
    let (phases, results) = two_builds(tmp.path(), "1");
    // One result per request, in request order.
    for (i, r) in results.as_array().unwrap().iter().enumerate() {
        let want = format!("{}\n", i + 1);
        let digest = r["build"]["outputs"][0]["file"]["digest"].as_str().unwrap();
        let cat = bin(&tmp.path().join("data"))
            .args(["cat", digest])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&cat.stdout), want);
    }
    // The second waits, told its place in line (said once: it is first).
    let queued: Vec<_> = phases.iter().filter(|l| l.contains("queued")).collect();
    assert_eq!(queued.len(), 1, "{phases:?}");
    assert!(
        queued[0].ends_with(": queued, number 1 in line"),
        "{queued:?}"
    );
    let phases: Vec<_> = phases.iter().filter(|l| !l.contains("queued")).collect();
    // One at a time: a build is done ingesting before the other mounts.
    let first = phases[0].split(':').next().unwrap().to_owned();
    let firsts: Vec<_> = phases[..3].iter().map(|l| l.starts_with(&first)).collect();
    assert_eq!(firsts, [true; 3], "not one at a time: {phases:?}");
    assert_eq!(phases.len(), 6, "{phases:?}");

    // Two at once: both are running before either ingests.
    let tmp = tempfile::tempdir().unwrap();
    let (phases, _) = two_builds(tmp.path(), "2");
    let running = phases.iter().filter(|l| l.ends_with(": running")).count();
    let first_ingest = phases
        .iter()
        .position(|l| l.ends_with(": ingesting outputs"))
        .unwrap();
    let running_before: usize = phases[..first_ingest]
        .iter()
        .filter(|l| l.ends_with(": running"))
        .count();
    assert_eq!(
        (running, running_before),
        (2, 2),
        "not concurrent: {phases:?}"
    );
}

#[test]
fn host_and_store_errors_are_one_sentence_with_their_code() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let stderr = |o: &Output| String::from_utf8_lossy(&o.stderr).into_owned();

    // 2: a digest the store does not hold.
    let zero = "0".repeat(64);
    let out = bin(&data).args(["ls", &zero]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains(&zero), "{}", stderr(&out));

    // 3: a runtime that does not exist, named.
    let bb = busybox_tree(tmp.path());
    let with_runtime = |runtime: &Path| {
        run_with_busybox(&data, &bb)
            .arg("--runtime")
            .arg(runtime)
            .args([
                "--output",
                "build/x",
                "--",
                "/nix/store/busybox/bin/busybox",
                "true",
            ])
            .output()
            .unwrap()
    };
    let out = with_runtime(Path::new("/nonexistent/runc"));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("the OCI runtime /nonexistent/runc does not exist"));

    // 3: a runc below the 1.1.12 floor, with the CVE and the fix named.
    let old_runc = tmp.path().join("runc");
    std::fs::write(
        &old_runc,
        "#!/bin/sh\necho 'runc version 1.1.11'\necho 'commit: v1.1.11'\n",
    )
    .unwrap();
    std::fs::set_permissions(
        &old_runc,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let out = with_runtime(&old_runc);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("CVE-2024-21626"), "{}", stderr(&out));

    if let Some(why) = can_build() {
        println!("SKIPPED the mount cases: {why}");
        return;
    }
    let file = tmp.path().join("f");
    std::fs::write(&file, b"x").unwrap();
    let digest = import_digest(&data, &file);

    // 2: a mount point that is not empty, or does not exist.
    let full = tmp.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("x"), b"").unwrap();
    let out = bin(&data)
        .args(["mount", &digest])
        .arg(&full)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("is not empty"), "{}", stderr(&out));
    let out = bin(&data)
        .args(["mount", &digest])
        .arg(tmp.path().join("none"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));

    // 3: no /dev/fuse (hidden in a mount namespace of the command's own).
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let script = format!(
        "mount -t tmpfs none /dev && exec {} mount {digest} {}",
        env!("CARGO_BIN_EXE_tvix-oci-build"),
        mnt.display()
    );
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env("XDG_DATA_HOME", &data)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("/dev/fuse is not available"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
}

#[test]
fn a_missing_builder_or_a_symlinked_output_is_the_builds_fault_and_a_missing_import_path_the_requests()
 {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let stderr = |o: &Output| String::from_utf8_lossy(&o.stderr).into_owned();

    // 2: a path to import that does not exist, named (as `run --input`).
    let out = bin(&data)
        .args(["import", "/nonexistent/tree"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("/nonexistent/tree does not exist"),
        "{}",
        stderr(&out)
    );

    if let Some(why) = can_build() {
        println!("SKIPPED the build part: {why}");
        return;
    }
    // 1: a builder that does not exist in the sandbox, named.
    let bb = busybox_tree(tmp.path());
    let out = run_with_busybox(&data, &bb)
        .args(["--output", "build/x", "--", "/nix/store/busybox/bin/nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out)
            .contains("the builder /nix/store/busybox/bin/nope does not exist in the sandbox"),
        "{}",
        stderr(&out)
    );
    // 1: a working dir that is a file inside a directory input (validation
    // cannot see inside the inputs; runc cannot enter it).
    let out = run_with_busybox(&data, &bb)
        .args(["--workdir", "nix/store/busybox/bin/busybox/sub", "--"])
        .arg("/nix/store/busybox/bin/busybox")
        .arg("true")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(
            "the working dir /nix/store/busybox/bin/busybox/sub is, or is below, a file in the sandbox"
        ),
        "{}",
        stderr(&out)
    );
    // 1: a symlink on the way to an output.
    let out = run_with_busybox(&data, &bb)
        .args(["--output", "build/link/out", "--"])
        .args([
            "/nix/store/busybox/bin/busybox",
            "sh",
            "-c",
            "mkdir -p /build/real/out; ln -s real /build/link",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(
            "output build/link/out: build/link is a symlink; outputs are read without following symlinks"
        ),
        "{}",
        stderr(&out)
    );
}

#[test]
fn only_read_only_paths_allowed_with_allow_ro_path_are_bound() {
    tvix_oci_testkit::require!(root, fuse, runc, busybox);
    let tmp = tempfile::tempdir().unwrap();
    let bundles = tmp.path().join("bundles");
    let dry = flags_run(
        tmp.path(),
        &["--dry-run"],
        "head -c 3 /dev/zero | wc -c > /build/hello",
    );
    let mut v: serde_json::Value = serde_json::from_slice(&dry.stdout).unwrap();
    v["constraints"]["available_ro_paths"] = serde_json::json!(["/dev/zero"]);
    let req = tmp.path().join("req.json");
    std::fs::write(&req, v.to_string()).unwrap();
    let run = |extra: &[&str]| {
        bin(&tmp.path().join("data"))
            .arg("run")
            .arg(&req)
            .arg("--bundle-root")
            .arg(&bundles)
            .args(extra)
            .output()
            .unwrap()
    };
    // Not allowed: the request's fault on this builder, named with the flag.
    let out = run(&["--allow-ro-path", "/dev/null"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(
            "constraints.available_ro_paths: /dev/zero is not allowed on this builder (the operator allows paths with --allow-ro-path)"
        ),
        "{err}"
    );
    assert_nothing_left(&bundles);
    // Allowed: bound, and the device works inside.
    let out = run(&["--allow-ro-path", "/dev/zero"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["build"]["outputs"][0]["file"]["size"], 2, "{v}");
    assert_nothing_left(&bundles);
    // The flag takes absolute paths only; --pids-limit takes none.
    let out = run(&["--allow-ro-path", "dev/zero"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an absolute path"));
    let out = run(&["--allow-ro-path", "/dev/zero", "--pids-limit", "none"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
