//! The store commands against a gRPC store that accepts connections and
//! never answers end with exit 3 in bounded time, naming the store and
//! what they waited for: a TCP listener that never speaks, and a real
//! gRPC server whose store never answers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io;

use tvix_oci_testkit::SleepingStore;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::bin;
use tvix_oci_castore::B3Digest;

/// Accepts connections on a thread and holds them, never reading or
/// writing; its URL.
fn silent_listener() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("grpc+http://{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept() {
            held.push(s);
        }
    });
    url
}

/// Serves a [`SleepingStore`] over gRPC on a thread of its own; its URL.
fn sleeping_server() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("grpc+http://{}", l.local_addr().unwrap());
    l.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(l).unwrap();
            tonic::transport::Server::builder()
                .add_routes(tvix_oci_castore::grpc::castore_routes(
                    Arc::new(SleepingStore::default()),
                    Arc::new(SleepingStore::default()),
                ))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(l))
                .await
                .unwrap();
        });
    });
    url
}

/// Runs `cmd`, which must exit within 20 s; its exit code and stderr.
fn run_bounded(mut cmd: Command) -> (Option<i32>, String, Duration) {
    let start = Instant::now();
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            return (status.code(), err, start.elapsed());
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} still running after 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every store command against `url` (given in the environment, as tvix
/// and snix do) with 2 s timeouts exits 3 within a few seconds, naming
/// the store and the wait.
fn every_command_times_out(url: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("f");
    std::fs::write(&file, b"some bytes\n").unwrap();
    let d = B3Digest::of(b"anything").to_hex();
    let dest = tmp.path().join("out");
    let cases: Vec<Vec<String>> = vec![
        vec!["ls".into(), d.clone()],
        vec!["cat".into(), format!("{d}/x")],
        vec!["export".into(), d.clone(), dest.display().to_string()],
        vec!["import".into(), file.display().to_string()],
        vec![
            "run".into(),
            "--input".into(),
            format!("f={}", file.display()),
            "--".into(),
            "/nix/store/f".into(),
        ],
    ];
    for args in cases {
        let mut c = bin(&tmp.path().join("data"));
        c.env("BLOB_SERVICE_ADDR", url)
            .env("DIRECTORY_SERVICE_ADDR", url)
            .args(["--store-timeout", "2", "--store-idle-timeout", "2"])
            .args(["--store-connect-timeout", "2"])
            .args(&args);
        let (code, err, took) = run_bounded(c);
        assert_eq!(code, Some(3), "{args:?}: {err}");
        assert!(
            err.contains(&format!("store {url} did not")) && err.contains("within 2 s"),
            "{args:?}: {err}"
        );
        assert!(took < Duration::from_secs(10), "{args:?} took {took:?}");
        assert!(!dest.exists(), "export left {}", dest.display());
    }
}

#[test]
fn store_commands_against_a_listener_that_never_speaks() {
    every_command_times_out(&silent_listener());
}

#[test]
fn store_commands_against_a_grpc_server_whose_store_never_answers() {
    every_command_times_out(&sleeping_server());
}

#[test]
fn a_url_parameter_overrides_the_flag() {
    let base = silent_listener();
    let url = format!("{base}?timeout=1");
    let tmp = tempfile::tempdir().unwrap();
    let mut c = bin(&tmp.path().join("data"));
    c.args(["--store-timeout", "60", "--directory-service-addr", &url])
        .args(["ls", &B3Digest::of(b"x").to_hex()]);
    let (code, err, _) = run_bounded(c);
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains(&format!("the directory store {url} did not answer Get"))
            && err.contains("within 1 s"),
        "{err}"
    );
}
