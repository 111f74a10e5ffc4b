//! Import of a ~1 GiB tree of mixed files into the embedded local store
//! (objects + redb), against `cp -a` of the same tree onto the same disk,
//! side by side in one run; and the peak memory of the import.
//!
//! Run: `cargo bench -p tvix-oci-benches --bench import`
//! (`QUICK=1` for a 64 MiB tree; `BENCH_DIR` picks the disk, default
//! `target/bench-tmp`.)

use std::process::Command;
use std::time::Duration;

use tvix_oci_benches::{
    TreeShape, make_tree, mib_per_s, peak_rss, reset_peak_rss, sync_and_drop_caches, time,
};
use tvix_oci_castore::import::{ImportOptions, import_path};
use tvix_oci_castore::{open_blob_service, open_directory_service};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let quick = std::env::var_os("QUICK").is_some();
    let shape = if quick {
        TreeShape {
            dirs: 50,
            small_files: 2_000,
            small_avg: 8 * 1024,
            large_files: 2,
            large_size: 24 << 20,
        }
    } else {
        // ~1 GiB: 40,000 headers averaging 8 KiB (~310 MiB) and 6 large libraries.
        TreeShape {
            dirs: 1_000,
            small_files: 40_000,
            small_avg: 8 * 1024,
            large_files: 6,
            large_size: 120 << 20,
        }
    };
    let tmp = tvix_oci_benches::bench_tempdir()?;
    let src = tmp.path().join("src");
    let bytes = make_tree(&src, shape, 42)?;
    let files = shape.small_files + shape.large_files;
    println!(
        "tree: {files} files in {} dirs, {:.0} MiB",
        shape.dirs,
        bytes as f64 / 1048576.0
    );

    let rt = tokio::runtime::Runtime::new()?;
    let iterations = if quick { 1 } else { 3 };
    let (mut cp_best, mut cp_sync_best, mut imp_best) =
        (Duration::MAX, Duration::MAX, Duration::MAX);
    let mut peak = 0;
    for i in 0..iterations {
        // cp -a, then the same with the data flushed to disk (the import
        // fsyncs every blob, cp does not).
        sync_and_drop_caches();
        let dst = tmp.path().join(format!("cp-{i}"));
        let (st, d_cp) = time(|| Command::new("cp").arg("-a").arg(&src).arg(&dst).status());
        if !st?.success() {
            return Err("cp -a failed".into());
        }
        let ((), d_sync) = time(|| unsafe { libc::sync() });
        cp_best = cp_best.min(d_cp);
        cp_sync_best = cp_sync_best.min(d_cp + d_sync);
        std::fs::remove_dir_all(&dst)?;

        sync_and_drop_caches();
        let store = tmp.path().join(format!("store-{i}"));
        reset_peak_rss();
        let (res, d_imp) = time(|| {
            rt.block_on(async {
                let blobs =
                    open_blob_service(&format!("objects://{}/blobs", store.display())).await?;
                let dirs = open_directory_service(&format!("redb://{}/dirs.redb", store.display()))
                    .await?;
                import_path(blobs, &*dirs, &src, &ImportOptions::default()).await?;
                Ok::<_, Box<dyn std::error::Error>>(())
            })
        });
        res?;
        peak = peak.max(peak_rss());
        imp_best = imp_best.min(d_imp);
        std::fs::remove_dir_all(&store)?;
        println!(
            "run {i}: cp -a {:.2}s (+sync {:.2}s), import {:.2}s",
            d_cp.as_secs_f64(),
            d_sync.as_secs_f64(),
            d_imp.as_secs_f64()
        );
    }
    println!();
    println!("| operation | best of {iterations} | throughput | ratio to cp -a |");
    println!("| --- | --- | --- | --- |");
    for (name, d) in [
        ("cp -a", cp_best),
        ("cp -a + sync", cp_sync_best),
        ("import (objects + redb)", imp_best),
    ] {
        println!(
            "| {name} | {:.2} s | {:.0} MiB/s | {:.2}x |",
            d.as_secs_f64(),
            mib_per_s(bytes, d),
            d.as_secs_f64() / cp_best.as_secs_f64()
        );
    }
    println!("peak RSS during import: {:.0} MiB", peak as f64 / 1048576.0);
    Ok(())
}
