//! One big blob read from `tvix-oci-build serve` over gRPC, directly and
//! through a proxy adding 1 and 10 ms to each round trip: what a remote
//! store far away gives one reader (the FUSE cache fetches a blob whole
//! this way). The baseline is the same store at 0 ms.
//!
//! Run: `cargo bench -p tvix-oci-benches --bench grpc` (`QUICK=1`: 16 MiB).

// A benchmark fixture that fails should stop the run loudly.
#![allow(clippy::expect_used)]

use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tvix_oci_benches::mib_per_s;
use tvix_oci_benches::remote::{Served, cli_binary, route};
use tvix_oci_castore::open_blob_service;

fn main() {
    let quick = std::env::var_os("QUICK").is_some();
    let size: u32 = if quick { 16 << 20 } else { 192 << 20 };
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let tmp = tvix_oci_benches::bench_tempdir().expect("a temp dir");
    let bin = cli_binary().expect("the tvix-oci-build binary");
    let served = Served::start(&bin, &tmp.path().join("served")).expect("serve");
    // Bytes that do not compress, in case anything on the way would.
    let data: Vec<u8> = (0..size)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let store = rt
        .block_on(open_blob_service(&served.url()))
        .expect("a client");
    let digest = rt.block_on(store.put(data.into())).expect("uploaded");
    println!(
        "| round trip added | read {} MiB, 3 runs | best |",
        size >> 20
    );
    println!("| --- | --- | --- |");
    for ms in [0u64, 1, 10] {
        let runs: Vec<f64> = (0..3)
            .map(|_| {
                // A new connection each run, as a new build's mount has.
                let (url, _proxy) = route(&served, Duration::from_millis(ms)).expect("a proxy");
                let client = rt.block_on(open_blob_service(&url)).expect("a client");
                let t = Instant::now();
                let n = rt.block_on(async {
                    let mut r = client
                        .open_read(&digest)
                        .await
                        .expect("read")
                        .expect("the blob");
                    let mut buf = vec![0u8; 1 << 20];
                    let mut n = 0u64;
                    loop {
                        let k = r.read(&mut buf).await.expect("read");
                        if k == 0 {
                            break n;
                        }
                        n += k as u64;
                    }
                });
                assert_eq!(n, u64::from(size), "the whole blob");
                mib_per_s(n, t.elapsed())
            })
            .collect();
        let list: Vec<String> = runs.iter().map(|r| format!("{r:.0}")).collect();
        let best = runs.iter().copied().fold(0.0, f64::max);
        println!("| {ms} ms | {} MiB/s | {best:.0} MiB/s |", list.join(" / "));
    }
}
