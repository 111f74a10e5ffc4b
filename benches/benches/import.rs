//! Import of a ~1 GiB tree of mixed files into the embedded local store
//! (objects + redb) and into S3 (`objectstore+s3://`, an s3s-fs server on
//! loopback keeping its objects on the same disk), against `cp -a` of the
//! same tree onto the same disk, side by side in one run; and the peak
//! memory of each import. Without s3s-fs the S3 row is left out (in CI,
//! `CI` set, its absence fails).
//!
//! Run: `cargo bench -p tvix-oci-benches --bench import`
//! (`QUICK=1` for a 64 MiB tree; `BENCH_DIR` picks the disk, default
//! `target/bench-tmp`; every tree and store stays there until the end.)

use std::process::Command;
use std::time::Duration;

use tvix_oci_benches::{
    TreeShape, cpu_time, make_tree, mib_per_s, peak_rss, reset_peak_rss, sync_and_drop_caches, time,
};
use tvix_oci_castore::import::{ImportOptions, import_path};
use tvix_oci_castore::{open_blob_service, open_directory_service};
use tvix_oci_testkit::s3server::S3Server;

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
    let (mut s3_best, mut s3_peak) = (Duration::MAX, 0);
    let (mut file_best, mut file_peak) = (Duration::MAX, 0);
    let have_s3 = s3_installed()?;
    // Servers stopped, their data kept until the end.
    let mut stopped = Vec::new();
    // Nothing is removed before the end: on ext4 without a journal (this
    // machine's), a file created within 30 s of many deletions makes the
    // inode allocator step over each recently freed inode, which cost the
    // import timed after a removed tree several CPU-seconds (see
    // BENCHMARKS.md). ~4 GiB per iteration.
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

        let store = tmp.path().join(format!("store-{i}"));
        let local = (
            format!("objects://{}/blobs", store.display()),
            format!("redb://{}/dirs.redb", store.display()),
        );
        let (d_imp, p) = import_once(&rt, &src, &local)?;
        peak = peak.max(p);
        imp_best = imp_best.min(d_imp);
        // The same layout as S3's, as files: the backend without a server.
        let store = tmp.path().join(format!("file-{i}"));
        let url = format!("objectstore+file://{}", store.display());
        let (d, p) = import_once(&rt, &src, &(url.clone(), url))?;
        file_peak = file_peak.max(p);
        file_best = file_best.min(d);
        // A server of its own for each run, as each embedded import gets a
        // new store: s3s-fs keeps the metadata of every object it ever
        // stored in one directory of its root.
        let s3 = if have_s3 {
            S3Server::start_in(tmp.path())?
        } else {
            None
        };
        if let Some(mut s3) = s3 {
            // Unsigned bodies, as over HTTPS (the local server speaks plain
            // HTTP, where they are signed by default): what a farm on a
            // real S3 pays.
            let url = s3.url("import") + "&unsigned_payload=true";
            let cpu0 = s3.cpu_time();
            let (d, p) = import_once(&rt, &src, &(url.clone(), url))?;
            // s3s-fs does not fsync: flush its writes, as the embedded
            // store's import does for every blob.
            let ((), d_sync) = time(|| unsafe { libc::sync() });
            s3_peak = s3_peak.max(p);
            s3_best = s3_best.min(d + d_sync);
            println!(
                "run {i}: import into S3 {:.2}s (+sync {:.2}s), the server's CPU time {:.2}s",
                d.as_secs_f64(),
                d_sync.as_secs_f64(),
                (s3.cpu_time() - cpu0).as_secs_f64()
            );
            s3.kill();
            stopped.push(s3);
        }
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
    let mut rows = vec![
        ("cp -a", cp_best),
        ("cp -a + sync", cp_sync_best),
        ("import (objects + redb)", imp_best),
        ("import (objectstore+file)", file_best),
    ];
    if have_s3 {
        rows.push(("import (objectstore+s3, s3s-fs) + sync", s3_best));
    }
    for (name, d) in rows {
        println!(
            "| {name} | {:.2} s | {:.0} MiB/s | {:.2}x |",
            d.as_secs_f64(),
            mib_per_s(bytes, d),
            d.as_secs_f64() / cp_best.as_secs_f64()
        );
    }
    println!(
        "peak RSS during import: {:.0} MiB (objectstore+file: {:.0} MiB)",
        peak as f64 / 1048576.0,
        file_peak as f64 / 1048576.0
    );
    if have_s3 {
        println!(
            "S3 throughput / embedded: {:.2}x (bar: 0.5x); peak RSS during the S3 import: {:.0} MiB",
            imp_best.as_secs_f64() / s3_best.as_secs_f64(),
            s3_peak as f64 / 1048576.0
        );
    }
    Ok(())
}

/// Imports `src` into the stores at `urls` (blobs, directories), page
/// cache dropped first; the time and the peak RSS (the CPU time it took
/// is printed).
fn import_once(
    rt: &tokio::runtime::Runtime,
    src: &std::path::Path,
    urls: &(String, String),
) -> Result<(Duration, u64), Box<dyn std::error::Error>> {
    sync_and_drop_caches();
    reset_peak_rss();
    let cpu0 = cpu_time();
    let (res, d) = time(|| {
        rt.block_on(async {
            let blobs = open_blob_service(&urls.0).await?;
            let dirs = open_directory_service(&urls.1).await?;
            import_path(blobs, &*dirs, src, &ImportOptions::default()).await?;
            Ok::<_, Box<dyn std::error::Error>>(())
        })
    });
    res?;
    println!(
        "  import into {}: {:.2}s, its CPU time {:.2}s",
        urls.0.split(':').next().unwrap_or_default(),
        d.as_secs_f64(),
        (cpu_time() - cpu0).as_secs_f64()
    );
    Ok((d, peak_rss()))
}

/// Whether s3s-fs is installed (outside CI, without it there is no S3
/// row; in CI its absence fails).
fn s3_installed() -> Result<bool, Box<dyn std::error::Error>> {
    if tvix_oci_testkit::s3server::binary().is_some() {
        return Ok(true);
    }
    if tvix_oci_testkit::in_ci() {
        return Err("s3s-fs is not installed (.ci/install-deps installs it)".into());
    }
    println!("s3s-fs is not installed: no S3 row");
    Ok(false)
}
