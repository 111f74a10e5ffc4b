//! How much lazy FUSE inputs cost, and when they win — side by side in one
//! run, for each input tree and store placement:
//! - native: the tree exported to local disk (the eager baseline; the
//!   export's time too);
//! - FUSE cold: a fresh mount, empty blob cache, page cache dropped;
//! - FUSE warm, with passthrough on and off: a new mount over the filled
//!   blob cache.
//!
//! For each: mount time, `stat` of every file (p50, p99), open to first byte
//! (p50, p99, 200 files), sequential read of the 3 largest files, and a
//! whole-tree read (8 readers). Placements: the embedded local store, and
//! `tvix-oci-build serve` in its own process on loopback, reached directly
//! and through a proxy adding 1 and 10 ms to each round trip. Trees: a synthetic one shaped like a
//! toolchain closure, and the Zig toolchain from the `ziglang` wheel on
//! PyPI (19,520 files, 411 MiB). End to end: `zig cc` compiling zstd (from
//! the `zstandard` sdist on PyPI) through the executor with the toolchain
//! as lazy input, against exporting it first, and against the compile
//! run directly on the host.
//!
//! Writes `benches/results/inputs.json`, `inputs.md` and SVG plots (latency
//! CDFs, throughput bars).
//!
//! Run (root, /dev/fuse, runc, /bin/busybox; pip for the Zig parts):
//! `cargo bench -p tvix-oci-benches --bench inputs`. `QUICK=1`: a small
//! synthetic tree, local and 0 ms only, no Zig (CI runs this).
//! `ZIG_DIR=/path/with/wheel-and-sdist` reuses downloads; `E2E_ONLY=1`
//! runs only the end-to-end compile; `MUSL=1` only the musl compile
//! (host, FUSE and kernel view, cold and warm: `musl.rs`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tvix_oci_benches::measure::{
    files_below, first_byte_each, percentile, read_all, read_tree, stat_each,
};
use tvix_oci_benches::remote::{Served, cli_binary, route, stores_at};
use tvix_oci_benches::{TreeShape, bench_tempdir, make_tree, mib_per_s, sync_and_drop_caches};
use tvix_oci_castore::blobservice::BlobService;
use tvix_oci_castore::directoryservice::DirectoryService;
use tvix_oci_castore::export::export_node;
use tvix_oci_castore::import::{ImportOptions, import_path};
use tvix_oci_castore::{Node, PathComponent};
use tvix_oci_fuse::{BlobCache, MountOptions, mount};

mod e2e;
mod musl;
mod report;

use report::Row;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// A tree to measure, imported.
struct Tree {
    name: String,
    inputs: Vec<(PathComponent, Node)>,
    files: usize,
    bytes: u64,
}

/// Where the store is.
#[derive(Clone, Copy)]
enum Placement {
    Local,
    Remote(u64),
}

impl Placement {
    fn label(self) -> String {
        match self {
            Placement::Local => "local".into(),
            Placement::Remote(ms) => format!("gRPC {ms} ms"),
        }
    }
}

fn main() -> Res<()> {
    // SAFETY: geteuid has no preconditions.
    if tvix_oci_testkit::lacks(&[tvix_oci_testkit::Need::Root, tvix_oci_testkit::Need::Fuse]) {
        return Ok(());
    }
    let quick = std::env::var_os("QUICK").is_some();
    let tmp = bench_tempdir()?;
    let rt = tokio::runtime::Runtime::new()?;
    let (blobs, dirs) = rt.block_on(tvix_oci_benches::local_stores(tmp.path()))?;

    let mut trees = vec![synthetic(&rt, tmp.path(), &blobs, &dirs, quick)?];
    let zig = if quick && std::env::var_os("E2E_ONLY").is_none() {
        None
    } else {
        match e2e::fetch(tmp.path()) {
            Ok(z) => Some(z),
            Err(e) => {
                println!("no Zig toolchain ({e}): the Zig rows are left out");
                None
            }
        }
    };
    if let Some(z) = &zig {
        trees.push(import_tree(
            &rt,
            "zig 0.17.1 (ziglang wheel)",
            &z.toolchain,
            &blobs,
            &dirs,
        )?);
    }
    let placements: Vec<Placement> = if quick {
        vec![Placement::Local, Placement::Remote(0)]
    } else {
        vec![
            Placement::Local,
            Placement::Remote(0),
            Placement::Remote(1),
            Placement::Remote(10),
        ]
    };

    if std::env::var_os("MUSL").is_some() {
        let z = zig.as_ref().ok_or("MUSL=1 needs the Zig toolchain")?;
        return musl::musl(&rt, tmp.path(), z, &blobs, &dirs);
    }
    let mut rows = Vec::new();
    // E2E_ONLY=1: only the end-to-end compile.
    if std::env::var_os("E2E_ONLY").is_some() {
        trees.clear();
    }
    // The remote store: `serve` on a store of its own, holding the trees.
    let served = Served::start(&cli_binary()?, &tmp.path().join("served"))?;
    for tree in &trees {
        let t = Instant::now();
        let nodes = tree.inputs.iter().map(|(_, node)| node);
        rt.block_on(served.upload(nodes, (&blobs, &*dirs)))?;
        println!(
            "{}: uploaded to serve in {:.1} s",
            tree.name,
            t.elapsed().as_secs_f64()
        );
    }
    for tree in &trees {
        println!(
            "{}: {} files, {:.0} MiB",
            tree.name,
            tree.files,
            tree.bytes as f64 / 1048576.0
        );
        rows.extend(native(&rt, tmp.path(), tree, &blobs, &dirs)?);
        for &p in &placements {
            rows.extend(fuse_rows(&rt, tmp.path(), tree, p, &blobs, &dirs, &served)?);
        }
    }
    let e2e = match &zig {
        Some(z) => Some(e2e::compile(&rt, tmp.path(), z, &blobs, &dirs, &served)?),
        None => None,
    };
    report::write(&rows, e2e.as_ref(), quick)?;
    Ok(())
}

fn import_tree(
    rt: &tokio::runtime::Runtime,
    name: &str,
    src: &Path,
    blobs: &Arc<dyn BlobService>,
    dirs: &Arc<dyn DirectoryService>,
) -> Res<Tree> {
    let root = rt.block_on(import_path(
        blobs.clone(),
        &**dirs,
        src,
        &ImportOptions::default(),
    ))?;
    let inputs = rt.block_on(tvix_oci_benches::root_entries(&**dirs, &root))?;
    let files = files_below(src);
    let bytes = files
        .iter()
        .filter_map(|p| std::fs::symlink_metadata(p).ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum();
    Ok(Tree {
        name: name.to_owned(),
        inputs,
        files: files.len(),
        bytes,
    })
}

/// A toolchain-closure-like tree: many packages of small files (headers,
/// scripts, libraries) and a few big ones (compilers, archives).
fn synthetic(
    rt: &tokio::runtime::Runtime,
    tmp: &Path,
    blobs: &Arc<dyn BlobService>,
    dirs: &Arc<dyn DirectoryService>,
    quick: bool,
) -> Res<Tree> {
    let shape = if quick {
        TreeShape {
            dirs: 40,
            small_files: 1_000,
            small_avg: 8 * 1024,
            large_files: 2,
            large_size: 16 << 20,
        }
    } else {
        TreeShape {
            dirs: 300,
            small_files: 20_000,
            small_avg: 12 * 1024,
            large_files: 6,
            large_size: 64 << 20,
        }
    };
    let src = tmp.join("synthetic");
    make_tree(&src, shape, 23)?;
    import_tree(rt, "synthetic closure", &src, blobs, dirs)
}

/// What a set of files measures: the figures of one row.
fn measure(
    root: &Path,
    variant: &str,
    tree: &Tree,
    placement: String,
    setup: Duration,
) -> Res<Row> {
    let files = files_below(root);
    let mut stats = stat_each(&files)?;
    let sample: Vec<PathBuf> = files
        .iter()
        .step_by((files.len() / 200).max(1))
        .filter(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file() && m.len() > 0))
        .cloned()
        .collect();
    let mut firsts = first_byte_each(&sample)?;
    let mut sizes: Vec<(u64, &PathBuf)> = files
        .iter()
        .filter_map(|p| {
            std::fs::symlink_metadata(p)
                .ok()
                .filter(|m| m.is_file())
                .map(|m| (m.len(), p))
        })
        .collect();
    sizes.sort_by_key(|s| std::cmp::Reverse(s.0));
    let (mut seq_bytes, mut seq_time) = (0, Duration::ZERO);
    for (_, p) in sizes.iter().take(3) {
        let (n, d) = read_all(p)?;
        seq_bytes += n;
        seq_time += d;
    }
    let (tree_bytes, tree_time) = read_tree(&files, 8)?;
    let row = Row {
        tree: tree.name.clone(),
        placement,
        variant: variant.to_owned(),
        setup_ms: setup.as_secs_f64() * 1e3,
        stat_p50_us: percentile(&mut stats, 0.5).as_secs_f64() * 1e6,
        stat_p99_us: percentile(&mut stats, 0.99).as_secs_f64() * 1e6,
        first_byte_p50_us: percentile(&mut firsts, 0.5).as_secs_f64() * 1e6,
        first_byte_p99_us: percentile(&mut firsts, 0.99).as_secs_f64() * 1e6,
        seq_mib_s: mib_per_s(seq_bytes, seq_time),
        tree_read_s: tree_time.as_secs_f64(),
        tree_read_mib: tree_bytes as f64 / 1048576.0,
        stat_us: stats.iter().map(|d| d.as_secs_f64() * 1e6).collect(),
        first_byte_us: firsts.iter().map(|d| d.as_secs_f64() * 1e6).collect(),
    };
    println!("  {}", row.line());
    Ok(row)
}

/// The tree exported to local disk, read with a cold page cache, then
/// again warm; the cold row's setup is the export.
fn native(
    rt: &tokio::runtime::Runtime,
    tmp: &Path,
    tree: &Tree,
    blobs: &Arc<dyn BlobService>,
    dirs: &Arc<dyn DirectoryService>,
) -> Res<Vec<Row>> {
    let dest = tmp.join("native");
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::create_dir_all(&dest)?;
    sync_and_drop_caches();
    let t = Instant::now();
    rt.block_on(async {
        for (name, node) in &tree.inputs {
            export_node(blobs.clone(), &**dirs, node, &dest.join(name.to_string())).await?;
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    let export = t.elapsed();
    sync_and_drop_caches();
    let cold = measure(&dest, "native, cold", tree, "local disk".into(), export)?;
    let warm = measure(
        &dest,
        "native, warm",
        tree,
        "local disk".into(),
        Duration::ZERO,
    )?;
    std::fs::remove_dir_all(&dest)?;
    Ok(vec![cold, warm])
}

/// Cold, then warm with passthrough on and off, from `placement`.
fn fuse_rows(
    rt: &tokio::runtime::Runtime,
    tmp: &Path,
    tree: &Tree,
    placement: Placement,
    blobs: &Arc<dyn BlobService>,
    dirs: &Arc<dyn DirectoryService>,
    served: &Served,
) -> Res<Vec<Row>> {
    let _guard = rt.enter();
    let (b, d, _proxy): (Arc<dyn BlobService>, Arc<dyn DirectoryService>, _) = match placement {
        Placement::Local => (blobs.clone(), dirs.clone(), None),
        Placement::Remote(ms) => {
            let (url, proxy) = route(served, Duration::from_millis(ms))?;
            let (b, d) = rt.block_on(stores_at(&url))?;
            (b, d, proxy)
        }
    };
    let cache_dir = tmp.join("cache");
    let _ = std::fs::remove_dir_all(&cache_dir);
    let cache = Arc::new(BlobCache::open(&cache_dir, 64 << 30)?);
    let mnt = tmp.join("mnt");
    std::fs::create_dir_all(&mnt)?;
    let mut rows = Vec::new();
    for (variant, passthrough, cold) in [
        ("FUSE cold", true, true),
        ("FUSE warm, passthrough", true, false),
        ("FUSE warm, no passthrough", false, false),
    ] {
        if cold {
            sync_and_drop_caches();
        }
        let t = Instant::now();
        let m = mount(
            b.clone(),
            d.clone(),
            tree.inputs.clone(),
            &mnt,
            &MountOptions {
                cache: Some(cache.clone()),
                passthrough,
                ..MountOptions::default()
            },
        )?;
        std::fs::read_dir(&mnt)?.count();
        let setup = t.elapsed();
        rows.push(measure(&mnt, variant, tree, placement.label(), setup)?);
        m.unmount()?;
    }
    let _ = std::fs::remove_dir_all(&cache_dir);
    Ok(rows)
}
