//! Many builds from one executor: 200 in a row, then 8 at once, with the
//! process's open fds, the mounts below its directory and its memory
//! checked before and after.
//! A leak of any of them per build shows at this count.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use tvix_oci_executor::runc::NoLogs;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Mounts at or below `dir` (the test's own directory: the host's whole
/// table changes with the other tests running beside this one).
fn mounts(dir: &std::path::Path) -> usize {
    tvix_oci_fuse::mountinfo::mounts_below(dir).unwrap().len()
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// `n` builds in a row, then 8 at once.
async fn round(exec: &tvix_oci_executor::Executor, req: &tvix_oci_spec::BuildRequest, n: usize) {
    for i in 0..n {
        let res = exec.build(req, &NoLogs).await;
        assert!(res.is_ok(), "build {i}: {:?}", res.err());
    }
    let eight: Vec<_> = (0..8).map(|_| exec.build(req, &NoLogs)).collect();
    for r in futures::future::join_all(eight).await {
        r.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_in_a_row_and_eight_at_once_leak_nothing() {
    need_runtime!();
    let e = env().await;
    let exec = e.executor(|c| c.concurrency = 8);
    let req = e.request(
        &format!("echo $$ > /build/out; cat /nix/store/{DATA} >> /build/out"),
        &["build/out"],
        |_| {},
    );
    // A first round warms up what is made once or kept for reuse (threads,
    // the allocator's per-thread arenas, caches).
    round(&exec, &req, 20).await;
    let dir = e.tmp.path();
    let (fds, mnts, rss) = (open_fds(), mounts(dir), rss_kib());
    round(&exec, &req, 200).await;
    // Threads of the last builds may still be letting go (a FUSE worker
    // closing its fd): give them a moment before counting.
    let settled = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while (open_fds() != fds || mounts(dir) != mnts) && std::time::Instant::now() < settled {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let after = rss_kib();
    assert_eq!(open_fds(), fds, "open fds before and after");
    assert_eq!(
        mounts(dir),
        mnts,
        "mounts below {} before and after",
        dir.display()
    );
    // Before fuse-inputs pinned glibc's mmap threshold, fuser's zeroed
    // 16 MiB buffers made this grow by 250 MiB per 200 builds; now about 1 MiB
    // (the bound leaves room for other tests loading the machine).
    let grown = after.saturating_sub(rss);
    assert!(
        grown < 48 * 1024,
        "memory grew from {rss} to {after} KiB over 208 builds"
    );
    e.assert_clean();
}
