//! FUSE inputs against the same tree on local disk, side by side in one run:
//! warm sequential read of a large file (passthrough), warm `stat` of every
//! file, warm lookups of missing names (negative entries), mount time with 5,000 root inputs, and cold first byte from a
//! remote store 1 ms away (`tvix-oci-build serve` behind a proxy adding
//! 1 ms to each round trip).
//!
//! Run (root and /dev/fuse needed): `cargo bench -p tvix-oci-benches --bench fuse`
//! (`QUICK=1` for a small tree; `BENCH_DIR` picks the disk).

use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tvix_oci_benches::measure::{files_below, first_byte_each, percentile, read_all};
use tvix_oci_benches::remote::{Served, cli_binary, route, stores_at};
use tvix_oci_benches::{TreeShape, make_tree, mib_per_s};
use tvix_oci_fuse::{BlobCache, MountOptions, mount};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn stat_all(paths: &[PathBuf]) -> Res<Duration> {
    let t = Instant::now();
    for p in paths {
        std::fs::symlink_metadata(p)?;
    }
    Ok(t.elapsed())
}

fn main() -> Res<()> {
    if tvix_oci_testkit::lacks(&[tvix_oci_testkit::Need::Root, tvix_oci_testkit::Need::Fuse]) {
        return Ok(());
    }
    let quick = std::env::var_os("QUICK").is_some();
    let shape = if quick {
        TreeShape {
            dirs: 500,
            small_files: 10_000,
            small_avg: 512,
            large_files: 1,
            large_size: 64 << 20,
        }
    } else {
        TreeShape {
            dirs: 5_000,
            small_files: 100_000,
            small_avg: 512,
            large_files: 1,
            large_size: 1 << 30,
        }
    };
    let tmp = tvix_oci_benches::bench_tempdir()?;
    let src = tmp.path().join("src");
    let t = Instant::now();
    make_tree(&src, shape, 7)?;
    println!(
        "tree: {} files in {} dirs, made in {:.1}s",
        shape.small_files + 1,
        shape.dirs,
        t.elapsed().as_secs_f64()
    );

    let rt = tokio::runtime::Runtime::new()?;
    let _enter = rt.enter();
    let t = Instant::now();
    let tvix_oci_benches::Imported {
        blobs,
        dirs,
        root,
        inputs,
    } = rt.block_on(tvix_oci_benches::import_local(
        &tmp.path().join("store"),
        &src,
    ))?;
    println!("imported in {:.1}s", t.elapsed().as_secs_f64());
    // Every top-level package dir is one root input: 5,000 of them.
    println!("{} root inputs", inputs.len());

    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt)?;
    let mut rows: Vec<(String, String, String, String)> = Vec::new();

    // Mount time: mount, then stat and list the root.
    let mut mount_times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let m = mount(
            blobs.clone(),
            dirs.clone(),
            inputs.clone(),
            &mnt,
            &MountOptions::default(),
        )?;
        let n = std::fs::read_dir(&mnt)?.count();
        mount_times.push(t.elapsed());
        assert_eq!(n, inputs.len());
        m.unmount()?;
    }
    let mt = percentile(&mut mount_times, 0.5);
    rows.push((
        format!("mount + list root ({} inputs)", inputs.len()),
        "—".into(),
        format!("{:.1} ms", mt.as_secs_f64() * 1e3),
        "bar < 50 ms".into(),
    ));

    let m = mount(
        blobs.clone(),
        dirs.clone(),
        inputs.clone(),
        &mnt,
        &MountOptions::default(),
    )?;
    println!("passthrough: {}", m.stats().passthrough);

    // Warm stat of every file.
    let native_files = files_below(&src);
    let fuse_files: Vec<PathBuf> = native_files
        .iter()
        .map(|p| mnt.join(p.strip_prefix(&src).unwrap_or(p)))
        .collect();
    stat_all(&native_files)?;
    stat_all(&fuse_files)?;
    let (mut sn, mut sf) = (Duration::MAX, Duration::MAX);
    for _ in 0..3 {
        sn = sn.min(stat_all(&native_files)?);
        sf = sf.min(stat_all(&fuse_files)?);
    }
    rows.push((
        format!("warm stat of {} files", native_files.len()),
        format!("{:.0} ms", sn.as_secs_f64() * 1e3),
        format!("{:.0} ms", sf.as_secs_f64() * 1e3),
        format!("{:.2}x time", sf.as_secs_f64() / sn.as_secs_f64()),
    ));

    // Warm lookups of names that are not there, one beside each file (as
    // a compiler searching its include path): after the first round the
    // kernel answers them from its negative entries.
    let missing = |files: &[PathBuf]| -> Vec<PathBuf> {
        files
            .iter()
            .map(|p| {
                let mut name = p.file_name().unwrap_or_default().to_os_string();
                name.push(".nope");
                p.with_file_name(name)
            })
            .collect()
    };
    let (native_missing, fuse_missing) = (missing(&native_files), missing(&fuse_files));
    let look_all = |paths: &[PathBuf]| {
        let t = Instant::now();
        for p in paths {
            let _ = std::fs::symlink_metadata(p);
        }
        t.elapsed()
    };
    look_all(&native_missing);
    look_all(&fuse_missing);
    let (mut mn, mut mf) = (Duration::MAX, Duration::MAX);
    for _ in 0..3 {
        mn = mn.min(look_all(&native_missing));
        mf = mf.min(look_all(&fuse_missing));
    }
    rows.push((
        format!("warm lookup of {} missing names", native_missing.len()),
        format!("{:.0} ms", mn.as_secs_f64() * 1e3),
        format!("{:.0} ms", mf.as_secs_f64() * 1e3),
        format!("{:.2}x time", mf.as_secs_f64() / mn.as_secs_f64()),
    ));

    // Warm sequential read of the large file.
    let big = native_files
        .iter()
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.as_bytes().starts_with(b"big-"))
        })
        .ok_or("no big file")?;
    let big_fuse = mnt.join(big.strip_prefix(&src)?);
    read_all(big)?;
    read_all(&big_fuse)?;
    let (mut rn, mut rf) = (Duration::MAX, Duration::MAX);
    let mut bytes = 0;
    for _ in 0..3 {
        let (n, d) = read_all(big)?;
        rn = rn.min(d);
        let (n2, d2) = read_all(&big_fuse)?;
        assert_eq!(n, n2);
        bytes = n;
        rf = rf.min(d2);
    }
    rows.push((
        format!("warm sequential read, {} MiB", bytes >> 20),
        format!("{:.0} MiB/s", mib_per_s(bytes, rn)),
        format!("{:.0} MiB/s", mib_per_s(bytes, rf)),
        format!("{:.2}x throughput", rn.as_secs_f64() / rf.as_secs_f64()),
    ));
    m.unmount()?;

    // Cold first byte from a remote store 1 ms away.
    let served = Served::start(&cli_binary()?, &tmp.path().join("served"))?;
    rt.block_on(served.upload([&root], (&blobs, &*dirs)))?;
    let (url, _proxy) = route(&served, Duration::from_millis(1))?;
    let (rb, rd) = rt.block_on(stores_at(&url))?;
    let cache_dir = tmp.path().join("cache");
    let cache = Arc::new(BlobCache::open(&cache_dir, 8 << 30)?);
    let m = mount(
        rb,
        rd,
        inputs.clone(),
        &mnt,
        &MountOptions {
            cache: Some(cache),
            ..Default::default()
        },
    )?;
    // Directories looked up first: this measures the blob, not the walk.
    let sample: Vec<PathBuf> = fuse_files
        .iter()
        .step_by((fuse_files.len() / 200).max(1))
        .filter(|p| {
            !p.is_symlink()
                && std::fs::metadata(p)
                    .map(|m| m.len() > 0 && m.len() < 1 << 20)
                    .unwrap_or(false)
        })
        .cloned()
        .collect();
    let mut firsts = first_byte_each(&sample)?;
    let (p50, p99) = (percentile(&mut firsts, 0.5), percentile(&mut firsts, 0.99));
    rows.push((
        format!(
            "cold first byte, remote store at 1 ms ({} files)",
            firsts.len()
        ),
        "—".into(),
        format!(
            "p50 {:.2} ms, p99 {:.2} ms",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        ),
        "bar < 3 ms".into(),
    ));
    m.unmount()?;

    println!();
    println!("| measure | native disk | FUSE inputs | ratio |");
    println!("| --- | --- | --- | --- |");
    for (a, b, c, d) in rows {
        println!("| {a} | {b} | {c} | {d} |");
    }
    Ok(())
}
