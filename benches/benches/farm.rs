//! Scale-out (issue 18): 30 builds that each sleep 1 s, sent at once by 4
//! clients (`run --remote`) to one address — nginx balancing gRPC over
//! `serve` builders with `--jobs 2` each, sharing one castore in S3
//! (s3s-fs on loopback) — with one builder behind it, then three, side by
//! side in one run. The bar: one builder ≈ 15 s (30 builds / 2 slots),
//! three ≤ 6 s.
//!
//! Run (root, /dev/fuse, runc, /bin/busybox, nginx, s3s-fs):
//! `cargo bench -p tvix-oci-benches --bench farm` (`QUICK=1`: 6 builds of
//! 0.2 s).

// A benchmark fixture that fails should stop the run loudly.
#![allow(clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tvix_oci_benches::remote::cli_binary;
use tvix_oci_testkit::farm::Farm;
use tvix_oci_testkit::s3server::S3Server;
use tvix_oci_testkit::{Need, lacks};

/// All `builds` sent at once by `clients` clients to `url`, each sleeping
/// `secs`; how long until the last ended.
fn send_all(
    bin: &Path,
    dir: &Path,
    url: &str,
    clients: usize,
    builds: usize,
    secs: &str,
) -> Duration {
    let bb = dir.join("bb");
    std::fs::create_dir_all(bb.join("bin")).expect("bb dir");
    std::fs::copy("/bin/busybox", bb.join("bin/busybox")).expect("busybox");
    let start = Instant::now();
    std::thread::scope(|s| {
        let runs: Vec<_> = (0..builds)
            .map(|n| {
                let (bb, data) = (&bb, dir.join(format!("client-{}", n % clients)));
                s.spawn(move || {
                    let out = Command::new(bin)
                        .env("XDG_DATA_HOME", &data)
                        .arg("run")
                        .arg("--input")
                        .arg(format!("busybox={}", bb.display()))
                        .args(["--remote", url, "--retries", "10"])
                        .args(["--output", "build/out", "--"])
                        .args(["/nix/store/busybox/bin/busybox", "sh", "-c"])
                        .arg(format!("sleep {secs}; echo {n} > /build/out"))
                        .output()
                        .expect("run --remote");
                    assert!(
                        out.status.success(),
                        "build {n}: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                })
            })
            .collect();
        for r in runs {
            r.join().expect("a client");
        }
    });
    start.elapsed()
}

fn main() {
    use Need::*;
    if lacks(&[Root, Fuse, Runc, Busybox]) {
        return;
    }
    let quick = std::env::var_os("QUICK").is_some();
    let (builds, secs) = if quick { (6, "0.2") } else { (30, "1") };
    let tmp = tvix_oci_benches::bench_tempdir().expect("a temp dir");
    let bin = cli_binary().expect("the tvix-oci-build binary");
    let Some(s3) = S3Server::start_in(tmp.path()).expect("s3s-fs") else {
        println!("SKIPPED: s3s-fs is not installed");
        return;
    };
    let mut rows = Vec::new();
    for n in [1, 3] {
        let dir = tmp.path().join(format!("farm-{n}"));
        std::fs::create_dir_all(&dir).expect("farm dir");
        let store = s3.url(&format!("farm-{n}"));
        let Some(farm) = Farm::start(&bin, &dir, &store, n, &["--jobs", "2"]).expect("the farm")
        else {
            println!("SKIPPED: nginx is not installed");
            return;
        };
        // The input uploaded first, so both farms start with it stored.
        send_all(&bin, &dir, &farm.url, 1, 1, "0");
        let before: Vec<usize> = (0..n).map(|i| farm.finished(i)).collect();
        let took = send_all(&bin, &dir, &farm.url, 4, builds, secs);
        let spread: Vec<usize> = (0..n).map(|i| farm.finished(i) - before[i]).collect();
        rows.push((n, took, spread));
    }
    println!(
        "| builders behind nginx (--jobs 2 each) | {builds} builds of {secs} s, sent at once | builds per builder |"
    );
    println!("| --- | --- | --- |");
    for (n, took, spread) in &rows {
        println!("| {n} | {:.1} s | {spread:?} |", took.as_secs_f64());
    }
    if let [(_, one, _), (_, three, _)] = rows.as_slice() {
        println!("speed-up: {:.2}x", one.as_secs_f64() / three.as_secs_f64());
    }
}
