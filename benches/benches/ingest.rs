//! Ingestion of a build output (`tvix_oci_executor::ingest`: the blobs
//! and directories stored, the NAR SHA-256 and a scan for 1,000 store-path
//! needles in one pass) against the import of the same tree
//! (`tvix_oci_castore::import::import_path`, which stores it only), both
//! into the embedded local store (objects + redb), side by side in one
//! run, caches dropped before each.
//!
//! Run: `cargo bench -p tvix-oci-benches --bench ingest`
//! (`QUICK=1` for a 64 MiB tree; `BENCH_DIR` picks the disk, default
//! `target/bench-tmp`.)

use std::sync::Arc;
use std::time::Duration;

use tvix_oci_benches::{
    Rng, TreeShape, make_tree, mib_per_s, peak_rss, reset_peak_rss, sync_and_drop_caches, time,
};
use tvix_oci_castore::import::{ImportOptions, import_path};
use tvix_oci_castore::{open_blob_service, open_directory_service};
use tvix_oci_executor::ingest::{IngestLimits, ingest_output};
use tvix_oci_executor::refscan::Needles;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const NIX32: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";

fn shape(quick: bool) -> TreeShape {
    if quick {
        TreeShape {
            dirs: 50,
            small_files: 2_000,
            small_avg: 8 * 1024,
            large_files: 2,
            large_size: 24 << 20,
        }
    } else {
        // ~600 MiB: 20,000 small files averaging 8 KiB and 3 large ones.
        TreeShape {
            dirs: 500,
            small_files: 20_000,
            small_avg: 8 * 1024,
            large_files: 3,
            large_size: 150 << 20,
        }
    }
}

/// Imports (`ingest == false`) or ingests `out` into a fresh store in `store`.
fn run(
    rt: &tokio::runtime::Runtime,
    out: &std::path::Path,
    store: &std::path::Path,
    needles: &Arc<Needles>,
    ingest: bool,
) -> Res<Duration> {
    sync_and_drop_caches();
    let (res, d) = time(|| {
        rt.block_on(async {
            let blobs = open_blob_service(&format!("objects://{}/blobs", store.display())).await?;
            let dirs =
                open_directory_service(&format!("redb://{}/dirs.redb", store.display())).await?;
            if ingest {
                let base = out.parent().ok_or("no parent")?;
                ingest_output(
                    base,
                    "out",
                    "nix/store/out",
                    blobs,
                    &*dirs,
                    needles.clone(),
                    IngestLimits::default(),
                )
                .await?;
            } else {
                import_path(blobs, &*dirs, out, &ImportOptions::default()).await?;
            }
            Ok::<_, Box<dyn std::error::Error>>(())
        })
    });
    res?;
    std::fs::remove_dir_all(store)?;
    Ok(d)
}

fn main() -> Res<()> {
    let quick = std::env::var_os("QUICK").is_some();
    let shape = shape(quick);
    let tmp = tvix_oci_benches::bench_tempdir()?;
    let out = tmp.path().join("upper/out");
    let bytes = make_tree(&out, shape, 42)?;
    println!(
        "tree: {} files in {} dirs, {:.0} MiB",
        shape.small_files + shape.large_files,
        shape.dirs,
        bytes as f64 / 1048576.0
    );
    let mut rng = Rng::new(7);
    let needles: Vec<Vec<u8>> = (0..1000)
        .map(|_| (0..32).map(|_| NIX32[rng.below(32) as usize]).collect())
        .collect();
    let needles = Arc::new(Needles::new(&needles));
    let rt = tokio::runtime::Runtime::new()?;
    let iterations = if quick { 1 } else { 3 };
    let (mut imp_best, mut ing_best, mut peak) = (Duration::MAX, Duration::MAX, 0);
    for i in 0..iterations {
        let imp = run(
            &rt,
            &out,
            &tmp.path().join(format!("imp-{i}")),
            &needles,
            false,
        )?;
        reset_peak_rss();
        let ing = run(
            &rt,
            &out,
            &tmp.path().join(format!("ing-{i}")),
            &needles,
            true,
        )?;
        peak = peak.max(peak_rss());
        println!(
            "run {i}: import {:.2}s, ingest {:.2}s",
            imp.as_secs_f64(),
            ing.as_secs_f64()
        );
        imp_best = imp_best.min(imp);
        ing_best = ing_best.min(ing);
    }
    println!();
    println!("| operation | best of {iterations} | throughput | ratio to import |");
    println!("| --- | --- | --- | --- |");
    for (name, d) in [
        ("import (store only)", imp_best),
        ("ingest (store + NAR + refscan)", ing_best),
    ] {
        println!(
            "| {name} | {:.2} s | {:.0} MiB/s | {:.2}x |",
            d.as_secs_f64(),
            mib_per_s(bytes, d),
            d.as_secs_f64() / imp_best.as_secs_f64()
        );
    }
    println!("peak RSS during ingest: {:.0} MiB", peak as f64 / 1048576.0);
    Ok(())
}
