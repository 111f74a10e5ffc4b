//! Learned prefetch end to end: a build of some shape leaves a profile of
//! the inputs it read; the next build of that shape, with an empty blob
//! cache, has them fetched at mount time and says so in its accounting;
//! a build of another shape gets nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use tvix_oci_executor::Executor;
use tvix_oci_executor::profiles::{ProfileStore, profile_key};
use tvix_oci_executor::runc::NoLogs;

#[tokio::test(flavor = "multi_thread")]
async fn the_second_build_of_a_shape_gets_its_inputs_fetched_ahead() {
    need_runtime!();
    let e = env().await;
    // Served as a remote store is, so inputs are fetched into the cache
    // (one per build: each build's bundle has its own).
    let remote = FaultyBlobs::new(e.blobs.clone()).remote().shared();
    let profiles = ProfileStore::new(e.tmp.path().join("profiles"));
    let exec = Executor::new(
        tvix_oci_executor::ExecutorConfig {
            prefetch_profiles: Some(profiles.clone()),
            ..e.config()
        },
        remote,
        e.dirs.clone(),
    );
    let script = format!("cat /nix/store/{DATA} > /build/out");
    let req = e.request(&script, &["build/out"], |_| {});
    let first = exec.build(&req, &NoLogs).await.unwrap();
    assert_eq!(first.accounting.input_bytes_prefetched, 0);
    // Kept: busybox (the shell) and the data it read.
    let kept = profiles.load(&profile_key(&req));
    assert_eq!(kept.len(), 2, "{kept:?}");

    let second = exec.build(&req, &NoLogs).await.unwrap();
    let a = &second.accounting;
    let (bb, data) = (1_982_256, 68);
    assert!(a.input_bytes_prefetched >= data, "{a:?}");
    assert!(a.input_bytes_prefetched <= bb + data, "{a:?}");
    assert_eq!(
        a.input_bytes_prefetched_used, a.input_bytes_prefetched,
        "{a:?}"
    );
    assert_eq!(second.outputs, first.outputs);

    // Another command: another shape, nothing fetched ahead.
    let other = e.request(&format!("{script}; true"), &["build/out"], |_| {});
    assert_ne!(profile_key(&other), profile_key(&req));
    let third = exec.build(&other, &NoLogs).await.unwrap();
    assert_eq!(third.accounting.input_bytes_prefetched, 0);
    e.assert_clean();
}
