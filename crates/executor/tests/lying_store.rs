//! Real builds whose inputs come from a store that lies (the castore's
//! `lying` server, over gRPC): a data blob whose stream never ends, one
//! byte longer or shorter than its node, with other bytes, hanging after
//! some bytes; a directory entry of the wrong size; a root input node of
//! the wrong size. Each is an infrastructure error naming the digest,
//! never "the build failed", with the bundle root bounded by what was
//! declared while the build runs, and nothing left after.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use tvix_oci_castore::blobservice::BlobService;
use tvix_oci_castore::directoryservice::DirectoryService;
use tvix_oci_castore::lying::{Lie, LyingServer, LyingStore};
use tvix_oci_castore::{B3Digest, Directory, Node, PathComponent};
use tvix_oci_castore::{open_blob_service, open_directory_service};
use tvix_oci_executor::Executor;
use tvix_oci_executor::runc::NoLogs;

const SIZE: usize = 300_001;

fn pc(s: &str) -> PathComponent {
    PathComponent::try_from(s).unwrap()
}

/// How the inputs lie.
#[derive(Debug, Clone, Copy)]
enum Case {
    Blob(Lie),
    /// busybox's `bin` entry declares a size its directory does not have.
    DirSize,
    /// The busybox input node declares a size its directory does not have.
    RootSize,
}

/// The lying store holding busybox and the data blob, and the inputs
/// (busybox, data) of a request; the digest the failure must name.
fn store_for(case: Case) -> (LyingStore, Node, Node, B3Digest) {
    let mut store = LyingStore::default();
    let bb_bytes = std::fs::read("/bin/busybox").unwrap();
    let bb_len = bb_bytes.len() as u64;
    let bb_blob = store.blob(bb_bytes, Lie::None);
    let mut bin = Directory::new();
    bin.add(
        pc("busybox"),
        Node::File {
            digest: bb_blob,
            size: bb_len,
            executable: true,
        },
    )
    .unwrap();
    let bin_size = bin.size() + if matches!(case, Case::DirSize) { 4 } else { 0 };
    let bin_digest = store.dir(bin);
    let mut bb = Directory::new();
    bb.add(
        pc("bin"),
        Node::Directory {
            digest: bin_digest,
            size: bin_size,
        },
    )
    .unwrap();
    let bb_size = bb.size() + if matches!(case, Case::RootSize) { 6 } else { 0 };
    let bb_digest = store.dir(bb);
    let lie = match case {
        Case::Blob(l) => l,
        _ => Lie::None,
    };
    let data: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
    let data_digest = store.blob(data, lie);
    let named = match case {
        Case::Blob(_) => data_digest,
        Case::DirSize => bin_digest,
        Case::RootSize => bb_digest,
    };
    let bb_node = Node::Directory {
        digest: bb_digest,
        size: bb_size,
    };
    let data_node = Node::File {
        digest: data_digest,
        size: SIZE as u64,
        executable: false,
    };
    (store, bb_node, data_node, named)
}

/// Bytes of the files below `dir`.
fn usage(dir: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(m) = e.path().symlink_metadata() else {
            continue;
        };
        // The inputs mount is FUSE: not counted, it holds nothing on disk.
        if m.is_dir() && !e.path().ends_with("inputs") {
            n += usage(&e.path());
        } else if m.is_file() {
            n += m.len();
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread")]
async fn builds_reading_from_a_lying_store_fail_as_its_fault_with_bounded_disk() {
    need_runtime!();
    let e = env().await;
    let bb_len = std::fs::metadata("/bin/busybox").unwrap().len();
    for case in [
        Case::Blob(Lie::Endless),
        Case::Blob(Lie::Longer(1)),
        Case::Blob(Lie::Shorter(1)),
        Case::Blob(Lie::Corrupt),
        Case::Blob(Lie::HangAfter(1000)),
        Case::DirSize,
        Case::RootSize,
    ] {
        let (store, bb, data, named) = store_for(case);
        let server = LyingServer::start(store);
        let blobs: Arc<dyn BlobService> = open_blob_service(server.url()).await.unwrap();
        let dirs: Arc<dyn DirectoryService> = open_directory_service(server.url()).await.unwrap();
        let script = format!("cat /nix/store/{DATA} > /build/out");
        let req = e.request(&script, &["build/out"], |p| {
            p.inputs = vec![
                bb.to_proto(&BB.try_into().unwrap()),
                data.to_proto(&DATA.try_into().unwrap()),
            ];
        });
        let mut config = e.config();
        config.timeout = Some(Duration::from_secs(5));
        let bundles = config.bundle_root.clone();
        let exec = Executor::new(config, blobs, dirs);
        // The bundle root's disk usage, sampled while the build runs.
        let peak = Arc::new(AtomicU64::new(0));
        let watch = {
            let (peak, bundles) = (peak.clone(), bundles.clone());
            tokio::spawn(async move {
                loop {
                    peak.fetch_max(usage(&bundles), Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        };
        let started = Instant::now();
        let err = exec.build(&req, &NoLogs).await.unwrap_err();
        watch.abort();
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{case:?}: {:?}",
            started.elapsed()
        );
        assert!(!err.is_build_failure(), "{case:?}: {err}");
        let msg = err.to_string();
        assert!(
            msg.contains(&named.to_hex()),
            "{case:?}: names the digest: {msg}"
        );
        let bound = SIZE as u64 + bb_len + (4 << 20);
        let peak = peak.load(Ordering::Relaxed);
        assert!(peak <= bound, "{case:?}: the bundle root held {peak} bytes");
        e.assert_clean();
    }
}
