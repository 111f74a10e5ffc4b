//! Outputs stored into object storage: a big output goes to its key
//! straight from the bundle (hashed first, then read once more), and what
//! is stored is that output, its references still found.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use tvix_oci_castore::blobservice::read_to_end;
use tvix_oci_castore::import::{ImportOptions, import_path};
use tvix_oci_castore::{B3Digest, Node, open_blob_service};
use tvix_oci_executor::Executor;
use tvix_oci_executor::runc::NoLogs;

#[tokio::test(flavor = "multi_thread")]
async fn a_big_output_goes_into_object_storage_whole_and_scanned() {
    need_runtime!();
    let e = env().await;
    let url = format!(
        "objectstore+file://{}",
        e.tmp.path().join("objects").display()
    );
    let blobs = open_blob_service(&url).await.unwrap();
    // The inputs, in that store too (the same digests).
    let opts = ImportOptions::default();
    import_path(blobs.clone(), &*e.dirs, &e.tmp.path().join("bb"), &opts)
        .await
        .unwrap();
    import_path(blobs.clone(), &*e.dirs, &e.tmp.path().join("data"), &opts)
        .await
        .unwrap();
    // 20 MB (past the size from which a blob is sent digest first), a
    // reference at its end.
    let script = format!(
        "yes 0123456789abcdef | head -c 20000000 > /build/out && cat /nix/store/{DATA} >> /build/out"
    );
    let req = e.request(&script, &["build/out"], |_| {});
    let exec = Executor::new(e.config(), blobs.clone(), e.dirs.clone());
    let res = exec.build(&req, &NoLogs).await.unwrap();
    let (digest, size) = match &res.build.outputs[0].1 {
        Node::File { digest, size, .. } => (*digest, *size),
        other => panic!("{other:?}"),
    };
    let stored = read_to_end(&*blobs, &digest).await.unwrap().unwrap();
    assert_eq!(stored.len() as u64, size);
    assert!(size > 20_000_000);
    assert_eq!(B3Digest::of(&stored), digest);
    assert!(stored.starts_with(b"0123456789abcdef\n0123"));
    // DATA names busybox: the needle of BB is found in the output.
    let needles = req.refscan_needles();
    let found: Vec<&str> = res.build.outputs_needles[0]
        .iter()
        .map(|i| needles[*i as usize].as_str())
        .collect();
    assert!(found.contains(&&BB[..32]), "{found:?}");
    e.assert_clean();
}
