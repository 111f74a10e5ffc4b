//! Many builders behind one address (issue 18): three `serve`s over one
//! castore in S3 (s3s-fs on loopback), each with its own blob cache and
//! bundle root, behind nginx as their gRPC load balancer (`grpc_pass`,
//! least connections) — the farm of docs/deploy.md. Clients build through
//! nginx with `run --remote`; every output is then read through each
//! builder. A builder SIGKILLed mid-build: its clients try again and
//! succeed on another, no object in the store is partial, and the killed
//! builder cleans up when it comes back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::{bin, busybox_tree, leftovers, run_with_busybox, skip_or_fail};
use tvix_oci_testkit::farm::Farm;
use tvix_oci_testkit::s3server::S3Server;

/// The S3 server and the farm over it, or `None` (the test skipped) when
/// s3s-fs or nginx is absent.
fn farm(tmp: &Path, extra: &[&str]) -> Option<(S3Server, Farm)> {
    let Some(s3) = S3Server::start().unwrap() else {
        skip_or_fail("s3s-fs is not installed (.ci/install-deps installs it)");
        return None;
    };
    let cli = PathBuf::from(env!("CARGO_BIN_EXE_tvix-oci-build"));
    let Some(farm) = Farm::start(&cli, tmp, &s3.url("farm"), 3, extra).unwrap() else {
        skip_or_fail("nginx is not installed (.ci/install-deps installs it)");
        return None;
    };
    Some((s3, farm))
}

/// `run --remote` of build `n` on `url`: after `secs` s, output
/// `nix/store/out` holding `n`.
fn remote_build(client: &Path, bb: &Path, url: &str, n: usize, secs: &str) -> Output {
    run_with_busybox(client, bb)
        .args(["--remote", url, "--retries", "6"])
        .args(["--output", "nix/store/out", "--"])
        .args(["/nix/store/busybox/bin/busybox", "sh", "-c"])
        .arg(format!(
            "sleep {secs}; mkdir /nix/store/out; echo {n} > /nix/store/out/n"
        ))
        .output()
        .unwrap()
}

/// The output's directory digest, from a successful run's JSON.
fn output_of(n: usize, out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "build {n} failed: {err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["build"]["outputs"][0]["directory"]["digest"]
        .as_str()
        .unwrap_or_else(|| panic!("build {n}: no directory output: {v}"))
        .to_owned()
}

/// `clients` clients, each building its share of `builds` at once.
fn build_all(tmp: &Path, url: &str, clients: usize, builds: usize, secs: &str) -> Vec<Output> {
    let bb = busybox_tree(tmp);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let (bb, data) = (&bb, tmp.join(format!("client-{c}")));
                s.spawn(move || {
                    let mine: Vec<usize> = (c..builds).step_by(clients).collect();
                    std::thread::scope(|s| {
                        let runs: Vec<_> = mine
                            .iter()
                            .map(|&n| {
                                let data = &data;
                                s.spawn(move || (n, remote_build(data, bb, url, n, secs)))
                            })
                            .collect();
                        runs.into_iter()
                            .map(|h| h.join().unwrap())
                            .collect::<Vec<_>>()
                    })
                })
            })
            .collect();
        let mut all: Vec<(usize, Output)> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        all.sort_by_key(|(n, _)| *n);
        all.into_iter().map(|(_, o)| o).collect()
    })
}

/// `cat` of output `digest`'s file `n` through the store at `url`.
fn cat(tmp: &Path, url: &str, digest: &str) -> Vec<u8> {
    let out = bin(&tmp.join("reader"))
        .args(["--blob-service-addr", url, "--directory-service-addr", url])
        .args(["cat", &format!("{digest}/n")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cat {digest}/n through {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn thirty_builds_from_four_clients_spread_over_three_builders() {
    tvix_oci_testkit::require!(root, fuse, runc, busybox);
    let tmp = tempfile::tempdir().unwrap();
    let Some((_s3, farm)) = farm(tmp.path(), &["--jobs", "2"]) else {
        return;
    };
    let outs = build_all(tmp.path(), &farm.url, 4, 30, "0.5");
    for (n, out) in outs.iter().enumerate() {
        let digest = output_of(n, out);
        // Each output through one of the builders in turn, the first
        // through all three.
        let readers = if n == 0 { vec![0, 1, 2] } else { vec![n % 3] };
        for i in readers {
            let got = cat(tmp.path(), &farm.builder_url(i), &digest);
            assert_eq!(
                got,
                format!("{n}\n").as_bytes(),
                "build {n} via builder {i}"
            );
        }
    }
    let per: Vec<usize> = (0..3).map(|i| farm.finished(i)).collect();
    assert_eq!(per.iter().sum::<usize>(), 30, "builds per builder: {per:?}");
    assert!(per.iter().all(|&k| k >= 3), "not spread: {per:?}");
    drop(farm);
    for i in 0..3 {
        let bundles = tmp.path().join(format!("bundles-{i}"));
        assert!(leftovers(&bundles).is_empty(), "{:?}", leftovers(&bundles));
    }
}

/// Every object under `dir` named by a digest holds what its digest says:
/// a blob its bytes' BLAKE3, a directory its encoding's.
fn assert_objects_whole(dir: &Path) -> usize {
    let mut checked = 0;
    for entry in walkdir::WalkDir::new(dir).into_iter().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !entry.file_type().is_file()
            || name.len() != 64
            || !name.bytes().all(|b| b.is_ascii_hexdigit())
        {
            continue;
        }
        let bytes = std::fs::read(entry.path()).unwrap();
        assert_eq!(
            blake3::hash(&bytes).to_hex().as_str(),
            name,
            "a partial or corrupt object: {}",
            entry.path().display()
        );
        checked += 1;
    }
    checked
}

#[test]
fn a_builder_killed_mid_build_its_clients_try_again_elsewhere() {
    tvix_oci_testkit::require!(root, fuse, runc, busybox);
    let tmp = tempfile::tempdir().unwrap();
    let Some((s3, mut farm)) = farm(tmp.path(), &["--jobs", "2"]) else {
        return;
    };
    let url = farm.url.clone();
    let builds = std::thread::scope(|s| {
        let run = s.spawn(|| build_all(tmp.path(), &url, 3, 6, "3"));
        // Once every build was sent (every upload done) and builder 0
        // runs one, kill it.
        let start = Instant::now();
        let requested = |i| farm.log_lines(i, "build requested");
        while requested(0) == 0 || (0..3).map(requested).sum::<usize>() < 6 {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the builds were not all sent"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_secs(1));
        farm.kill(0);
        run.join().unwrap()
    });
    let mut retried = 0;
    for (n, out) in builds.iter().enumerate() {
        let digest = output_of(n, out);
        assert_eq!(
            cat(tmp.path(), &farm.builder_url(1), &digest),
            format!("{n}\n").as_bytes()
        );
        retried += usize::from(String::from_utf8_lossy(&out.stderr).contains("trying once more"));
    }
    assert!(retried >= 1, "no client had to try again");
    assert!(
        assert_objects_whole(&s3.bucket_dir()) > 0,
        "no objects checked"
    );
    // Back, it removes what its killed self left: bundles, mounts,
    // containers.
    farm.restart(0).unwrap();
    let bundles = tmp.path().join("bundles-0");
    assert!(leftovers(&bundles).is_empty(), "{:?}", leftovers(&bundles));
}
