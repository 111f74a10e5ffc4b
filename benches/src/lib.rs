//! Helpers shared by the benchmark programs: synthetic trees, timing, peak
//! memory. Each benchmark measures our operation and its native baseline
//! side by side in one run and reports the ratio.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// A small, fast, deterministic PRNG (xorshift64*), so trees are the same
/// from run to run without a dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// The shape of a synthetic tree.
#[derive(Debug, Clone, Copy)]
pub struct TreeShape {
    pub dirs: usize,
    pub small_files: usize,
    /// Small files are 0..2*avg bytes.
    pub small_avg: u64,
    pub large_files: usize,
    pub large_size: u64,
}

/// Writes a tree of that shape at `root` (mixed small and large files, some
/// executable, some symlinks); returns its total size in bytes.
pub fn make_tree(root: &Path, shape: TreeShape, seed: u64) -> std::io::Result<u64> {
    use std::os::unix::fs::PermissionsExt;
    let mut rng = Rng::new(seed);
    let mut total = 0;
    std::fs::create_dir_all(root)?;
    let dirs: Vec<_> = (0..shape.dirs.max(1))
        .map(|i| root.join(format!("pkg-{:04}/lib/sub-{}", i, i % 7)))
        .collect();
    for d in &dirs {
        std::fs::create_dir_all(d)?;
    }
    let mut buf = vec![0u8; 1 << 20];
    let mut fill = |f: &mut std::fs::File, mut n: u64, rng: &mut Rng| -> std::io::Result<()> {
        while n > 0 {
            let k = n.min(buf.len() as u64) as usize;
            for chunk in buf[..k].chunks_mut(8) {
                let v = rng.next_u64().to_le_bytes();
                chunk.copy_from_slice(&v[..chunk.len()]);
            }
            f.write_all(&buf[..k])?;
            n -= k as u64;
        }
        Ok(())
    };
    for i in 0..shape.small_files {
        let dir = &dirs[i % dirs.len()];
        let path = dir.join(format!("file-{i}.h"));
        let size = rng.below(2 * shape.small_avg);
        let mut f = std::fs::File::create(&path)?;
        fill(&mut f, size, &mut rng)?;
        if i % 10 == 0 {
            f.set_permissions(std::fs::Permissions::from_mode(0o755))?;
        }
        if i % 50 == 0 {
            std::os::unix::fs::symlink(format!("file-{i}.h"), dir.join(format!("link-{i}")))?;
        }
        total += size;
    }
    for i in 0..shape.large_files {
        let path = dirs[i % dirs.len()].join(format!("big-{i}.so"));
        let mut f = std::fs::File::create(&path)?;
        fill(&mut f, shape.large_size, &mut rng)?;
        total += shape.large_size;
    }
    Ok(total)
}

/// Runs `f` and returns how long it took.
pub fn time<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed())
}

/// Resets this process's peak-RSS counter (VmHWM).
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// This process's peak RSS since the last reset, in bytes.
pub fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The CPU time (user and system) this process used so far.
pub fn cpu_time() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Flushes dirty pages and drops the page cache (needs root; a no-op
/// otherwise), so each side of a comparison starts from the same state.
pub fn sync_and_drop_caches() {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

/// Megabytes per second.
pub fn mib_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / d.as_secs_f64()
}

/// A Nix-like build request: `script` run by the `sh` of the input named
/// `busybox`, in `/build` (the scratch dir), inputs at `/nix/store`, for
/// this host's system; with `env` and `outputs`.
pub fn busybox_sh_request(
    inputs: Vec<tvix_oci_castore::proto::Node>,
    script: String,
    env: &[(&str, &str)],
    outputs: &[&str],
) -> Result<tvix_oci_spec::BuildRequest, Box<dyn std::error::Error>> {
    let req = env
        .iter()
        .fold(ShRequest::with_inputs(inputs, &script), |r, (k, v)| {
            r.env(k, v)
        });
    Ok(req.outputs(outputs).build()?)
}

use tvix_oci_testkit::ShRequest;

pub mod copy;
pub mod eager;
pub mod measure;
pub mod remote;

/// A temp dir for a benchmark's trees, on the disk named by `BENCH_DIR`
/// (default `target/bench-tmp`), removed when dropped.
pub fn bench_tempdir() -> std::io::Result<tempfile::TempDir> {
    let base = std::env::var_os("BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-tmp")
        });
    std::fs::create_dir_all(&base)?;
    tempfile::tempdir_in(&base)
}

/// The embedded store (objects + redb) under `dir`.
pub async fn local_stores(
    dir: &Path,
) -> Result<
    (
        std::sync::Arc<dyn tvix_oci_castore::blobservice::BlobService>,
        std::sync::Arc<dyn tvix_oci_castore::directoryservice::DirectoryService>,
    ),
    tvix_oci_castore::StoreError,
> {
    let d = dir.display();
    let blobs = tvix_oci_castore::open_blob_service(&format!("objects://{d}/blobs")).await?;
    let dirs = tvix_oci_castore::open_directory_service(&format!("redb://{d}/dirs.redb")).await?;
    Ok((blobs, dirs))
}

/// Imports a tree `bin/busybox` (a copy of the host's static busybox, made
/// under `scratch`) and returns its node: the toolchain of the benchmark
/// builds.
pub async fn import_busybox(
    blobs: std::sync::Arc<dyn tvix_oci_castore::blobservice::BlobService>,
    dirs: &dyn tvix_oci_castore::directoryservice::DirectoryService,
    scratch: &Path,
) -> Result<tvix_oci_castore::Node, Box<dyn std::error::Error>> {
    let tree = scratch.join("bb");
    std::fs::create_dir_all(tree.join("bin"))?;
    std::fs::copy("/bin/busybox", tree.join("bin/busybox"))?;
    let opts = tvix_oci_castore::import::ImportOptions::default();
    Ok(tvix_oci_castore::import::import_path(blobs, dirs, &tree, &opts).await?)
}

/// The entries of directory node `root`: each one a build input.
pub async fn root_entries(
    dirs: &dyn tvix_oci_castore::directoryservice::DirectoryService,
    root: &tvix_oci_castore::Node,
) -> Result<
    Vec<(tvix_oci_castore::PathComponent, tvix_oci_castore::Node)>,
    Box<dyn std::error::Error>,
> {
    let tvix_oci_castore::Node::Directory { digest, .. } = root else {
        return Err("the root is not a directory".into());
    };
    let dir = dirs
        .get(digest)
        .await?
        .ok_or("the root directory is missing")?;
    Ok(dir
        .nodes()
        .map(|(n, node)| (n.clone(), node.clone()))
        .collect())
}

/// A tree on disk imported into the embedded store under `store_dir`.
#[derive(Debug)]
pub struct Imported {
    pub blobs: std::sync::Arc<dyn tvix_oci_castore::blobservice::BlobService>,
    pub dirs: std::sync::Arc<dyn tvix_oci_castore::directoryservice::DirectoryService>,
    /// The tree's own node.
    pub root: tvix_oci_castore::Node,
    /// Its entries: each one a build input.
    pub inputs: Vec<(tvix_oci_castore::PathComponent, tvix_oci_castore::Node)>,
}

/// Imports `src` into a new embedded store under `store_dir`.
pub async fn import_local(
    store_dir: &Path,
    src: &Path,
) -> Result<Imported, Box<dyn std::error::Error>> {
    let (blobs, dirs) = local_stores(store_dir).await?;
    let opts = tvix_oci_castore::import::ImportOptions::default();
    let root = tvix_oci_castore::import::import_path(blobs.clone(), &*dirs, src, &opts).await?;
    let inputs = root_entries(&*dirs, &root).await?;
    Ok(Imported {
        blobs,
        dirs,
        root,
        inputs,
    })
}
