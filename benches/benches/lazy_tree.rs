//! Issue 19's figures on one real tree, side by side in one run:
//! - warm, local store: `find` of every entry and reading every file once
//!   (`find -print0 | xargs -0 cat`, one reader; and 8 readers), on local
//!   disk and through FUSE (a mount read once before, and a new mount over
//!   page-cached blobs), interleaved, median of `ROUNDS` (default 5);
//! - cold, from `tvix-oci-build serve` behind a proxy adding `REMOTE_MS`
//!   (default `0,10`) to each round trip: walking and reading the whole
//!   tree with 8 readers from a fresh mount, empty blob cache and dropped
//!   page cache; and the first byte of the largest file.
//!
//! Run (root, /dev/fuse): `TREE=/path/to/ziglang cargo bench -p
//! tvix-oci-benches --bench lazy_tree` (`TREE`: any directory, e.g. the
//! `ziglang` dir of PyPI's ziglang 0.17.1 wheel; without it a small
//! synthetic tree, whose one large file has `LARGE_MB`, default 64).
//! `WARM_ONLY=1` / `COLD_ONLY=1` run one half;
//! `FETCH_CONCURRENCY=N` sets the mount's fetch bound for the cold half.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tvix_oci_benches::measure::{files_below, read_tree};
use tvix_oci_benches::remote::{Served, cli_binary, route, stores_at};
use tvix_oci_benches::{Imported, TreeShape, bench_tempdir, import_local, make_tree};
use tvix_oci_castore::blobservice::BlobService;
use tvix_oci_castore::directoryservice::DirectoryService;
use tvix_oci_castore::{Node, PathComponent};
use tvix_oci_fuse::{BlobCache, MountOptions, mount};

type Res<T> = Result<T, Box<dyn std::error::Error>>;
type Stores = (Arc<dyn BlobService>, Arc<dyn DirectoryService>);

/// Runs `sh -c script` with `$1` = `dir`, output discarded; its wall time.
fn timed_sh(script: &str, dir: &Path) -> Res<Duration> {
    let t = Instant::now();
    let st = Command::new("sh")
        .args(["-c", script, "sh"])
        .arg(dir)
        .stdout(Stdio::null())
        .status()?;
    if !st.success() {
        return Err(format!("{script} on {}: {st}", dir.display()).into());
    }
    Ok(t.elapsed())
}

const FIND: &str = "find \"$1\"";
const READ_ALL: &str = "find \"$1\" -type f -print0 | xargs -0 cat";

/// The three warm measures of one pass over `dir`: find, read-all with
/// one reader, read-all with 8 readers.
fn warm_pass(dir: &Path) -> Res<[Duration; 3]> {
    let find = timed_sh(FIND, dir)?;
    let one = timed_sh(READ_ALL, dir)?;
    let files = files_below(dir);
    let (_, eight) = read_tree(&files, 8)?;
    Ok([find, one, eight])
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The warm table's rows for `mode`: each measure's median natively, on
/// a mount read before and on a new mount, with their ratios to native.
fn print_rows(mode: &str, [native, same, fresh]: [&[Vec<Duration>]; 3]) {
    let names = ["find", "read-all, 1 reader", "read-all, 8 readers"];
    for (i, name) in names.iter().enumerate() {
        let (n, s, f) = (
            median(native[i].clone()),
            median(same[i].clone()),
            median(fresh[i].clone()),
        );
        let r = |d: Duration| d.as_secs_f64() / n.as_secs_f64();
        println!(
            "| {name} | {} | {mode} | {} | {:.2}x | {} | {:.2}x |",
            ms(n),
            ms(s),
            r(s),
            ms(f),
            r(f)
        );
    }
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

fn main() -> Res<()> {
    // SAFETY: geteuid has no preconditions.
    if tvix_oci_testkit::lacks(&[tvix_oci_testkit::Need::Root, tvix_oci_testkit::Need::Fuse]) {
        return Ok(());
    }
    let tmp = bench_tempdir()?;
    let rt = tokio::runtime::Runtime::new()?;
    let _guard = rt.enter();
    let src = match std::env::var_os("TREE") {
        Some(t) => PathBuf::from(t),
        None => {
            let shape = TreeShape {
                dirs: 200,
                small_files: 5_000,
                small_avg: 8 * 1024,
                large_files: 1,
                large_size: std::env::var("LARGE_MB")
                    .ok()
                    .and_then(|m| m.parse::<u64>().ok())
                    .unwrap_or(64)
                    << 20,
            };
            let p = tmp.path().join("synthetic");
            make_tree(&p, shape, 19)?;
            p
        }
    };
    let t = Instant::now();
    let Imported {
        blobs,
        dirs,
        root,
        inputs,
    } = rt.block_on(import_local(tmp.path(), &src))?;
    let files = files_below(&src);
    println!(
        "{}: {} entries below, imported in {:.1} s",
        src.display(),
        files.len(),
        t.elapsed().as_secs_f64()
    );
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir_all(&mnt)?;
    if std::env::var_os("COLD_ONLY").is_none() {
        warm(&src, &mnt, &inputs, (blobs.clone(), dirs.clone()))?;
    }
    if std::env::var_os("WARM_ONLY").is_none() {
        cold(tmp.path(), &src, &mnt, &root, &inputs, (blobs, dirs))?;
    }
    Ok(())
}

/// The warm table: native, and FUSE on a mount already read and on a new
/// mount each round (what each build gets), opening files in the kernel
/// (no-open) or through this process with passthrough; interleaved.
fn warm(src: &Path, mnt: &Path, inputs: &[(PathComponent, Node)], stores: Stores) -> Res<()> {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    println!("\nwarm, local store, median of {rounds} rounds:\n");
    println!("| measure | native | FUSE opens | mount read before | ratio | new mount | ratio |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for (mode, no_open) in [("in the kernel (no-open)", true), ("passthrough", false)] {
        let opts = MountOptions {
            no_open,
            ..MountOptions::default()
        };
        let mount_now = || {
            mount(
                stores.0.clone(),
                stores.1.clone(),
                inputs.to_vec(),
                mnt,
                &opts,
            )
        };
        // Fill the page cache (of the files and the store's blobs) first.
        warm_pass(src)?;
        let m = mount_now()?;
        warm_pass(mnt)?;
        let mut native = vec![Vec::new(); 3];
        let (mut same, mut fresh) = (native.clone(), native.clone());
        for _ in 0..rounds.max(1) {
            for (i, d) in warm_pass(src)?.into_iter().enumerate() {
                native[i].push(d);
            }
            for (i, d) in warm_pass(mnt)?.into_iter().enumerate() {
                same[i].push(d);
            }
        }
        let stats = m.stats();
        m.unmount()?;
        for _ in 0..rounds.max(1) {
            let m = mount_now()?;
            for (i, d) in warm_pass(mnt)?.into_iter().enumerate() {
                fresh[i].push(d);
            }
            m.unmount()?;
        }
        print_rows(mode, [&native, &same, &fresh]);
        eprintln!("{mode}: {stats:?} (the mount read again)");
    }
    kernel_view_rows(src, mnt, inputs, &stores, rounds)?;
    Ok(())
}

/// The kernel view's rows of the warm table (`ViewCache`: cached trees of
/// hard links to the blob store's files, no daemon): read-only (clones of
/// the trees), and writable (one overlay over them, as the executor mounts
/// it when the inputs dir is scratch). Prints what writing the trees cost
/// once, and a cached plan + mount (what each build pays).
fn kernel_view_rows(
    src: &Path,
    mnt: &Path,
    inputs: &[(PathComponent, Node)],
    stores: &Stores,
    rounds: usize,
) -> Res<()> {
    let base = mnt.with_file_name("kernel-view");
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base)?;
    // `VIEW_CACHE`: where the trees go (default: beside the mount).
    let cache_dir = std::env::var_os("VIEW_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| base.join("cache"));
    let _ = std::fs::remove_dir_all(&cache_dir);
    let cache = tvix_oci_fuse::ViewCache::open(&cache_dir)?;
    let rt = tokio::runtime::Handle::current();
    let t = Instant::now();
    let plan = rt.block_on(cache.plan(stores.0.clone(), &*stores.1, inputs))?;
    let first_plan = t.elapsed();
    let rw = base.join("rw");
    for (mode, writable) in [("kernel view", false), ("kernel view, writable", true)] {
        let dir = mnt.to_owned();
        let mount_now = || -> Res<(tvix_oci_fuse::KernelView, Duration)> {
            let t = Instant::now();
            let plan = rt.block_on(cache.plan(stores.0.clone(), &*stores.1, inputs))?;
            let v = match writable {
                true => {
                    // A new upper layer each time, as each build gets.
                    let _ = std::fs::remove_dir_all(&rw);
                    let (upper, work) = (rw.join("upper"), rw.join("work"));
                    std::fs::create_dir_all(&upper)?;
                    std::fs::create_dir_all(&work)?;
                    plan.mount_writable(mnt, &upper, &work)?
                }
                false => plan.mount(mnt)?,
            };
            Ok((v, t.elapsed()))
        };
        let unmount = |v: tvix_oci_fuse::KernelView| -> Res<()> {
            v.unmount()?;
            Ok(())
        };
        warm_pass(src)?;
        let (v, _) = mount_now()?;
        warm_pass(&dir)?;
        let mut native = vec![Vec::new(); 3];
        let (mut same, mut fresh, mut setup) = (native.clone(), native.clone(), Vec::new());
        for _ in 0..rounds.max(1) {
            for (i, d) in warm_pass(src)?.into_iter().enumerate() {
                native[i].push(d);
            }
            for (i, d) in warm_pass(&dir)?.into_iter().enumerate() {
                same[i].push(d);
            }
        }
        unmount(v)?;
        for _ in 0..rounds.max(1) {
            let (v, took) = mount_now()?;
            setup.push(took);
            for (i, d) in warm_pass(&dir)?.into_iter().enumerate() {
                fresh[i].push(d);
            }
            unmount(v)?;
        }
        print_rows(mode, [&native, &same, &fresh]);
        eprintln!(
            "{mode}: trees written once in {:.0} ms; a cached plan + mount: {:.1} ms (median)",
            first_plan.as_secs_f64() * 1e3,
            median(setup).as_secs_f64() * 1e3
        );
    }
    drop(plan);
    let _ = std::fs::remove_dir_all(&cache_dir);
    let _ = std::fs::remove_dir_all(&base);
    Ok(())
}

/// The cold rows: from `serve` at each `REMOTE_MS`, a fresh mount, empty
/// cache, page cache dropped: walk + read with 8 readers; then the first
/// byte of the largest file from another fresh mount.
fn cold(
    tmp: &Path,
    src: &Path,
    mnt: &Path,
    root: &Node,
    inputs: &[(PathComponent, Node)],
    stores: Stores,
) -> Res<()> {
    let served = Served::start(&cli_binary()?, &tmp.join("served"))?;
    tokio::runtime::Handle::current().block_on(served.upload([root], (&stores.0, &*stores.1)))?;
    let native_bytes = read_tree(&files_below(src), 8)?.0;
    let largest = files_below(src)
        .into_iter()
        .filter_map(|p| Some((std::fs::symlink_metadata(&p).ok()?.len(), p)))
        .max()
        .ok_or("an empty tree")?;
    let rel = largest.1.strip_prefix(src)?.to_owned();
    let list = std::env::var("REMOTE_MS").unwrap_or_else(|_| "0,10".into());
    println!(
        "\ncold, from serve (8 readers; first byte of {} bytes):\n",
        largest.0
    );
    println!(
        "| added round trip | walk | read | total | first byte of the largest file: path looked up, then open + read | from the path |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for ms_added in list.split(',').filter_map(|s| s.trim().parse::<u64>().ok()) {
        let (url, _proxy) = route(&served, Duration::from_millis(ms_added))?;
        let (b, d) = tokio::runtime::Handle::current().block_on(stores_at(&url))?;
        let run = |measure: &dyn Fn() -> Res<(Duration, Duration)>,
                   stream_from: u64|
         -> Res<(Duration, Duration)> {
            let cache_dir = tmp.join("cache");
            let _ = std::fs::remove_dir_all(&cache_dir);
            let cache = Arc::new(BlobCache::open(&cache_dir, 64 << 30)?);
            tvix_oci_benches::sync_and_drop_caches();
            let mut opts = MountOptions {
                cache: Some(cache),
                stream_from,
                ..MountOptions::default()
            };
            if let Some(n) = std::env::var("FETCH_CONCURRENCY")
                .ok()
                .and_then(|n| n.parse().ok())
            {
                opts.fetch_concurrency = n;
            }
            let m = mount(b.clone(), d.clone(), inputs.to_vec(), mnt, &opts)?;
            let r = measure();
            if r.is_err()
                && let Some(t) = m.store_trouble(Duration::ZERO)
            {
                eprintln!("the store's trouble: {t}");
            }
            m.unmount()?;
            let _ = std::fs::remove_dir_all(&cache_dir);
            r
        };
        // As the executor mounts inputs.
        let streamed = 1 << 20;
        let (walk, read) = run(
            &|| {
                let t = Instant::now();
                let files = files_below(mnt);
                let walk = t.elapsed();
                let (bytes, read) = read_tree(&files, 8)?;
                if bytes != native_bytes {
                    return Err(format!(
                        "read {bytes} bytes through FUSE, {native_bytes} natively"
                    )
                    .into());
                }
                Ok((walk, read))
            },
            streamed,
        )?;
        let first_byte = || {
            let t = Instant::now();
            std::fs::metadata(mnt.join(&rel))?;
            let looked_up = t.elapsed();
            let mut f = std::fs::File::open(mnt.join(&rel))?;
            std::io::Read::read_exact(&mut f, &mut [0u8; 1])?;
            Ok((t.elapsed() - looked_up, t.elapsed()))
        };
        let (first, from_path) = run(&first_byte, streamed)?;
        let (whole_first, whole_path) = run(&first_byte, u64::MAX)?;
        let ms1 = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
        println!(
            "| {ms_added} ms | {} | {} | {} | {} (checked whole first: {}) | {} (checked whole first: {}) |",
            ms(walk),
            ms(read),
            ms(walk + read),
            ms1(first),
            ms1(whole_first),
            ms1(from_path),
            ms1(whole_path),
        );
    }
    Ok(())
}
