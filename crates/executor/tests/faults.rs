//! Faults under a running build, each an infrastructure error (the store's
//! or the host's fault, worth retrying) and never "the build failed", with
//! nothing left behind: a store that hangs mid-build, a store that fails a
//! read, and the FUSE connection of the inputs ending mid-build.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tvix_oci_castore::blobservice::BlobService;
use tvix_oci_castore::{B3Digest, Node};
use tvix_oci_executor::runc::NoLogs;
use tvix_oci_executor::{BuildError, Executor};

fn data_digest(e: &Env) -> B3Digest {
    match &e.data {
        Node::File { digest, .. } => *digest,
        other => panic!("data is {other:?}"),
    }
}

fn faulty_executor(e: &Env, fault: Fault, timeout: Option<Duration>) -> Executor {
    // Served to FUSE as a remote store is (no local files, no range
    // reads), so the build's reads go through it.
    let blobs = FaultyBlobs::new(e.blobs.clone())
        .reads(fault, Some(data_digest(e)))
        .remote()
        .shared();
    let mut config = e.config();
    config.timeout = timeout;
    Executor::new(config, blobs, e.dirs.clone())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_hanging_mid_build_is_an_infrastructure_error() {
    need_runtime!();
    let e = env().await;
    let script = format!("echo reading; cat /nix/store/{DATA} > /build/out");
    let req = e.request(&script, &["build/out"], |_| {});
    let exec = faulty_executor(&e, Fault::Hang, Some(Duration::from_secs(3)));
    let started = Instant::now();
    let err = exec.build(&req, &NoLogs).await.unwrap_err();
    // At the timeout the FUSE connection is aborted: the reader blocked on
    // the store dies with the container, well before the 5-minute fetch
    // timeout.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert!(!err.is_build_failure(), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("no answer"), "{msg}");
    assert!(msg.contains(DATA), "names the path: {msg}");
    e.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_failing_a_read_is_an_infrastructure_error_even_if_the_build_ignores_it() {
    need_runtime!();
    let e = env().await;
    // The build swallows the EIO and succeeds: its output cannot be
    // trusted, so the result is the store's failure.
    let script = format!("cat /nix/store/{DATA} > /build/out || true");
    let req = e.request(&script, &["build/out"], |_| {});
    let exec = faulty_executor(&e, Fault::Fail, None);
    let err = exec.build(&req, &NoLogs).await.unwrap_err();
    assert!(matches!(err, BuildError::Store(_)), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("the disk is on fire") && msg.contains(DATA),
        "{msg}"
    );
    e.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_serving_corrupted_bytes_is_caught_and_named_by_digest() {
    need_runtime!();
    let e = env().await;
    // The build sees EIO, never the wrong bytes; the error names the blob.
    let script = format!("cat /nix/store/{DATA} > /build/out; echo \"cat: $?\" >&2");
    let req = e.request(&script, &["build/out"], |_| {});
    let logs = Collect::default();
    let err = faulty_executor(&e, Fault::Corrupt, None)
        .build(&req, &logs)
        .await
        .unwrap_err();
    assert!(matches!(err, BuildError::Store(_)), "{err}");
    let digest = data_digest(&e).to_string();
    let hex = digest.trim_start_matches("b3:");
    assert!(err.to_string().contains(hex), "names the blob: {err}");
    let log = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(
        log.contains("I/O error") || log.contains("cat: 1"),
        "EIO inside: {log}"
    );
    e.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_big_blob_read_before_it_was_found_corrupt_fails_a_successful_build() {
    need_runtime!();
    let e = env().await;
    // Big enough to be served as it arrives, before it is verified; its
    // last byte is wrong and its tail comes 2 s late: the build reads its
    // (right) head and exits 0 long before the blob is found corrupt.
    let big: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 9) as u8)
        .collect();
    let digest = e.blobs.put(bytes::Bytes::from(big)).await.unwrap();
    let node = Node::File {
        digest,
        size: 4 << 20,
        executable: false,
    };
    let script = format!("head -c 16 /nix/store/{DATA} > /build/out && echo read the head >&2");
    let req = e.request(&script, &["build/out"], |p| {
        let data = e.data.to_proto(&DATA.try_into().unwrap());
        for i in p.inputs.iter_mut().filter(|i| **i == data) {
            *i = node.to_proto(&DATA.try_into().unwrap());
        }
    });
    let blobs = FaultyBlobs::new(e.blobs.clone())
        .reads(Fault::CorruptSlowTail(2000), Some(digest))
        .remote()
        .shared();
    let exec = Executor::new(e.config(), blobs, e.dirs.clone());
    let logs = Collect::default();
    let err = exec.build(&req, &logs).await.unwrap_err();
    let log = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(log.contains("read the head"), "the build succeeded: {log}");
    assert!(matches!(err, BuildError::Store(_)), "{err}");
    assert!(
        err.to_string().contains(&digest.to_hex()),
        "names the blob: {err}"
    );
    e.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_fuse_connection_ending_mid_build_is_an_infrastructure_error() {
    need_runtime!();
    let e = env().await;
    let script = format!("/nix/store/{BB}/bin/busybox sleep 2; cat /nix/store/{DATA} > /build/out");
    let req = e.request(&script, &["build/out"], |_| {});
    let exec = e.executor(|_| {});
    let root = e.tmp.path().join("bundles");
    let build = exec.build(&req, &NoLogs);
    let killer = async {
        // Abort the inputs' FUSE connection as soon as it is mounted, as if
        // its daemon had died.
        loop {
            let mounts = tvix_oci_fuse::mountinfo::mounts_below(&root).unwrap();
            if let Some(m) = mounts.iter().find(|m| m.fs_type.starts_with("fuse")) {
                tokio::time::sleep(Duration::from_millis(300)).await;
                assert!(tvix_oci_fuse::abort_connection(&m.mount_point));
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let (res, ()) = tokio::join!(build, killer);
    let err = res.unwrap_err();
    assert!(matches!(err, BuildError::Infrastructure(_)), "{err}");
    assert!(err.to_string().contains("FUSE connection"), "{err}");
    e.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn runc_failing_before_the_build_runs_is_an_infrastructure_error() {
    need_runtime!();
    let e = env().await;
    // A runtime that fails the way runc does when it cannot create the
    // container: a message on stderr, exit code 1.
    let fake = e.tmp.path().join("runc");
    std::fs::write(
        &fake,
        "#!/bin/sh\ncase \"$1\" in run) echo 'level=error msg=\"cannot create the container\"' >&2; exit 1;; esac\nexit 0\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let req = e.request("echo never", &["build/out"], |_| {});
    let err = e
        .executor(|c| c.runtime = fake.clone())
        .build(&req, &NoLogs)
        .await
        .unwrap_err();
    assert!(matches!(err, BuildError::Infrastructure(_)), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("failed before starting the build"), "{msg}");
    assert!(msg.contains("cannot create the container"), "{msg}");
    e.assert_clean();
}

/// Mounts a tmpfs of `size` at `dir`; unmounted when dropped.
struct SmallDisk(PathBuf);
impl SmallDisk {
    fn mount(dir: PathBuf, size: &str) -> SmallDisk {
        std::fs::create_dir_all(&dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tobtest"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(ok.success());
        SmallDisk(dir)
    }
}
impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_while_ingesting_leaves_no_partial_blob_or_directory() {
    need_runtime!();
    let e = env().await;
    // The blob store on a 6 MiB disk: room for busybox (2 MiB), not for
    // the 8 MiB output.
    let disk = SmallDisk::mount(e.tmp.path().join("small"), "6m");
    let blobs: Arc<dyn BlobService> = Arc::new(
        tvix_oci_castore::blobservice::ObjectsBlobService::open(disk.0.join("blobs")).unwrap(),
    );
    let tree = e.tmp.path().join("bb");
    let bb = tvix_oci_castore::import::import_path(
        blobs.clone(),
        &*e.dirs,
        &tree,
        &tvix_oci_castore::import::ImportOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(bb, e.bb);
    let script = format!(
        "mkdir /nix/store/{OUT}; echo small > /nix/store/{OUT}/a; \
         /nix/store/{BB}/bin/busybox dd if=/dev/zero of=/nix/store/{OUT}/big bs=1M count=8 2>/dev/null"
    );
    let out = format!("nix/store/{OUT}");
    let req = e.request(&script, &[&out], |_| {});
    let exec = Executor::new(e.config(), blobs.clone(), e.dirs.clone());
    let err = exec.build(&req, &NoLogs).await.unwrap_err();
    assert!(
        !err.is_build_failure(),
        "the disk's fault, not the build's: {err}"
    );
    assert!(err.to_string().contains("big"), "names the file: {err}");
    // Every file in the blob store is a whole blob named by its digest;
    // no temp file is left.
    for entry in walkdir::WalkDir::new(disk.0.join("blobs")) {
        let entry = entry.unwrap();
        if !entry.file_type().is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let data = std::fs::read(entry.path()).unwrap();
        assert_eq!(
            name,
            B3Digest::of(&data).to_string(),
            "a partial or stray file: {}",
            entry.path().display()
        );
    }
    drop(exec);
    e.assert_clean();
    drop(disk);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_hanging_while_outputs_are_stored_is_bounded_by_the_timeout() {
    need_runtime!();
    let e = env().await;
    let blobs = counting_blobs(e.blobs.clone(), Fault::Hang);
    let mut config = e.config();
    config.timeout = Some(Duration::from_secs(4));
    let exec = Executor::new(config, blobs.clone(), e.dirs.clone());
    let req = e.request(
        "mkdir -p /build/o; echo x > /build/o/f",
        &["build/o"],
        |_| {},
    );
    let t = Instant::now();
    // Before, ingestion waited for the store forever.
    let err = tokio::time::timeout(Duration::from_secs(60), exec.build(&req, &NoLogs))
        .await
        .expect("ingestion is bounded by the build's timeout")
        .unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    assert!(!err.is_build_failure(), "the store's fault: {err}");
    let msg = err.to_string();
    assert!(
        msg.starts_with("output build/o at f: the store did not answer")
            && msg.contains("timeout of 4s"),
        "{msg}"
    );
    drop(exec);
    e.assert_clean();
}
