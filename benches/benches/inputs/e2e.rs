//! The end-to-end part: `zig cc` compiling zstd (the single-file library in
//! the `zstandard` sdist) as a real build, three ways, each from a dropped
//! page cache: through the executor with the toolchain as lazy FUSE input
//! (from the local store, and from `tvix-oci-build serve` through a proxy
//! adding 1 ms to each round trip), exporting the
//! toolchain to disk first and running the same bundle, and the same
//! compile run directly on the host.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tvix_oci_benches::eager::export_then_run;
use tvix_oci_benches::remote::{Served, route, stores_at};
use tvix_oci_benches::{busybox_sh_request, sync_and_drop_caches};
use tvix_oci_castore::blobservice::BlobService;
use tvix_oci_castore::directoryservice::DirectoryService;
use tvix_oci_castore::import::{ImportOptions, import_path};
use tvix_oci_executor::runc::NoLogs;
use tvix_oci_executor::{Accounting, Executor, ExecutorConfig};
use tvix_oci_spec::{BuildRequest, BundleLayout};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const ZIG: &str = "ziglang==0.17.1";
const ZSTANDARD: &str = "zstandard==0.25.0";
/// The compile, as the build runs it (and, with host paths, the host).
const COMPILE: &str = "cc -O2 -target x86_64-linux-musl -c {src}/zstd.c -o {out}/zstd.o";

/// The downloaded toolchain and sources.
pub struct Zig {
    /// The `ziglang` dir of the wheel: `zig` and `lib/`.
    pub toolchain: PathBuf,
    /// The sdist's `zstd` dir: `zstd.c` and headers.
    pub zstd: PathBuf,
}

/// Downloads (or finds, in `$ZIG_DIR`) the wheel and the sdist with pip and
/// unpacks them.
pub fn fetch(tmp: &Path) -> Res<Zig> {
    let dl = std::env::var_os("ZIG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| tmp.join("downloads"));
    std::fs::create_dir_all(&dl)?;
    let has = |prefix: &str, suffix: &str| -> Option<PathBuf> {
        std::fs::read_dir(&dl)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.is_file()
                    && p.file_name().is_some_and(|n| {
                        let n = n.to_string_lossy();
                        n.starts_with(prefix) && n.ends_with(suffix)
                    })
            })
    };
    let pip = |args: &[&str]| -> Res<()> {
        let st = std::process::Command::new("python3")
            .args(["-m", "pip", "download", "--no-deps", "-q", "-d"])
            .arg(&dl)
            .args(args)
            .status()?;
        if st.success() {
            Ok(())
        } else {
            Err(format!("pip download {args:?} failed").into())
        }
    };
    if has("ziglang-", ".whl").is_none() {
        pip(&[ZIG, "--only-binary=:all:"])?;
    }
    if has("zstandard-", ".tar.gz").is_none() {
        pip(&[ZSTANDARD, "--no-binary=:all:"])?;
    }
    let wheel = has("ziglang-", ".whl").ok_or("no ziglang wheel")?;
    let sdist = has("zstandard-", ".tar.gz").ok_or("no zstandard sdist")?;
    let out = tmp.join("unpacked");
    std::fs::create_dir_all(&out)?;
    let st = std::process::Command::new("python3")
        .args(["-m", "zipfile", "-e"])
        .arg(&wheel)
        .arg(out.join("wheel"))
        .status()?;
    if !st.success() {
        return Err("unpacking the wheel failed".into());
    }
    let toolchain = out.join("wheel/ziglang");
    // Zip entries carry no modes here: the compiler must be executable.
    std::fs::set_permissions(
        toolchain.join("zig"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let st = std::process::Command::new("tar")
        .arg("xzf")
        .arg(&sdist)
        .arg("-C")
        .arg(&out)
        .status()?;
    if !st.success() {
        return Err("unpacking the sdist failed".into());
    }
    let zstd = std::fs::read_dir(&out)?
        .flatten()
        .map(|e| e.path().join("zstd"))
        .find(|p| p.join("zstd.c").is_file())
        .ok_or("no zstd/zstd.c in the sdist")?;
    Ok(Zig { toolchain, zstd })
}

/// The end-to-end figures.
pub struct E2e {
    pub lazy_local: Duration,
    /// From the local store as a kernel view (its trees written in the
    /// first round, as by the first build of these inputs).
    pub kernel_local: Duration,
    pub lazy_local_first: Option<Duration>,
    pub lazy_remote: Duration,
    pub remote_bytes_fetched: u64,
    /// From `serve` 10 ms away, cold: without a profile, and with the one
    /// the build before left (learned prefetch).
    pub lazy_remote10: Duration,
    pub lazy_remote10_profiled: Duration,
    pub prefetched: (u64, u64),
    pub toolchain_bytes: u64,
    pub eager_export: Duration,
    pub eager_total: Duration,
    pub host: Duration,
    /// Rounds the medians are of.
    pub reps: usize,
}

impl E2e {
    pub fn json(&self) -> serde_json::Value {
        let s = |d: Duration| d.as_secs_f64();
        json!({
            "lazy_local_s": s(self.lazy_local),
            "kernel_view_local_s": s(self.kernel_local),
            "lazy_local_first_instruction_s": self.lazy_local_first.map(s),
            "lazy_remote_1ms_s": s(self.lazy_remote),
            "remote_bytes_fetched": self.remote_bytes_fetched,
            "lazy_remote_10ms_s": s(self.lazy_remote10),
            "lazy_remote_10ms_with_profile_s": s(self.lazy_remote10_profiled),
            "prefetched_bytes": self.prefetched.0,
            "prefetched_bytes_used": self.prefetched.1,
            "toolchain_bytes": self.toolchain_bytes,
            "eager_export_s": s(self.eager_export),
            "eager_total_s": s(self.eager_total),
            "host_s": s(self.host),
            "rounds": self.reps,
        })
    }
}

/// Runs the compile the three ways.
pub fn compile(
    rt: &tokio::runtime::Runtime,
    tmp: &Path,
    z: &Zig,
    blobs: &Arc<dyn BlobService>,
    dirs: &Arc<dyn DirectoryService>,
    served: &Served,
) -> Res<E2e> {
    let _guard = rt.enter();
    let opts = ImportOptions::default();
    let zig = rt.block_on(import_path(blobs.clone(), &**dirs, &z.toolchain, &opts))?;
    let zstd = rt.block_on(import_path(blobs.clone(), &**dirs, &z.zstd, &opts))?;
    let bb = rt.block_on(tvix_oci_benches::import_busybox(
        blobs.clone(),
        &**dirs,
        tmp,
    ))?;
    let mut named = vec![("busybox", bb), ("zig", zig), ("zstd", zstd)];
    named.sort_by(|a, b| a.0.cmp(b.0));
    rt.block_on(served.upload(named.iter().map(|(_, node)| node), (blobs, &**dirs)))?;
    let nodes = named
        .iter()
        .map(|(n, node)| Ok(node.to_proto(&(*n).try_into()?)))
        .collect::<Res<Vec<_>>>()?;
    let compile = COMPILE
        .replace("{src}", "/nix/store/zstd")
        .replace("{out}", "/build");
    let env = [
        ("HOME", "/build"),
        ("ZIG_GLOBAL_CACHE_DIR", "/build/gc"),
        ("ZIG_LOCAL_CACHE_DIR", "/build/lc"),
    ];
    let script = format!("/nix/store/zig/zig {compile}");
    let req = busybox_sh_request(nodes, script, &env, &["build/zstd.o"])?;
    let config = ExecutorConfig {
        bundle_root: tmp.join("bundles"),
        ..ExecutorConfig::probed()
    };

    // Rounds (E2E_REPS, default 3), the four ways interleaved; the
    // median of each.
    let reps: usize = std::env::var("E2E_REPS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3)
        .max(1);
    let rounds = (0..reps)
        .map(|_| round(rt, tmp, &req, &named, &config, blobs, dirs, served))
        .collect::<Res<Vec<_>>>()?;
    let median = |f: fn(&E2e) -> Duration| {
        let mut v: Vec<Duration> = rounds.iter().map(f).collect();
        v.sort();
        v[v.len() / 2]
    };
    let toolchain_bytes = tvix_oci_benches::measure::files_below(&z.toolchain)
        .iter()
        .filter_map(|p| std::fs::symlink_metadata(p).ok())
        .map(|m| m.len())
        .sum();
    let last = rounds.last().ok_or("no round")?;
    Ok(E2e {
        lazy_local: median(|r| r.lazy_local),
        kernel_local: median(|r| r.kernel_local),
        lazy_local_first: last.lazy_local_first,
        lazy_remote: median(|r| r.lazy_remote),
        remote_bytes_fetched: last.remote_bytes_fetched,
        lazy_remote10: median(|r| r.lazy_remote10),
        lazy_remote10_profiled: median(|r| r.lazy_remote10_profiled),
        prefetched: last.prefetched,
        toolchain_bytes,
        eager_export: median(|r| r.eager_export),
        eager_total: median(|r| r.eager_total),
        host: median(|r| r.host),
        reps,
    })
}

/// One round of the four ways, each from a dropped page cache.
#[allow(clippy::too_many_arguments)]
fn round(
    rt: &tokio::runtime::Runtime,
    tmp: &Path,
    req: &BuildRequest,
    named: &[(&str, tvix_oci_castore::Node)],
    config: &ExecutorConfig,
    blobs: &Arc<dyn BlobService>,
    dirs: &Arc<dyn DirectoryService>,
    served: &Served,
) -> Res<E2e> {
    let lazy = |label: &str, blobs, dirs, config: &ExecutorConfig| -> Res<(Duration, Accounting)> {
        sync_and_drop_caches();
        let exec = Executor::new(config.clone(), blobs, dirs);
        let t = Instant::now();
        let res = rt.block_on(exec.build(req, &NoLogs))?;
        let wall = t.elapsed();
        println!("  zig cc, lazy ({label}): {:.1} s", wall.as_secs_f64());
        Ok((wall, res.accounting))
    };
    let (lazy_local, local) = lazy("local store", blobs.clone(), dirs.clone(), config)?;
    let viewed = ExecutorConfig {
        kernel_view: Some(Arc::new(tvix_oci_fuse::ViewCache::open(
            tmp.join("view-cache"),
        )?)),
        ..config.clone()
    };
    let (kernel_local, _) = lazy(
        "local store, kernel view",
        blobs.clone(),
        dirs.clone(),
        &viewed,
    )?;
    // From `serve` 1 ms away: whole blobs are fetched into the cache when
    // opened, so the bytes fetched are those of the files the compile
    // opened.
    let (url, _proxy) = route(served, Duration::from_millis(1))?;
    let (rb, rd) = rt.block_on(stores_at(&url))?;
    let (lazy_remote, remote) = lazy("gRPC, 1 ms", rb, rd, config)?;
    // From `serve` 10 ms away, each build with its own empty blob cache:
    // the first leaves a prefetch profile, the second is given it.
    let (url, _proxy10) = route(served, Duration::from_millis(10))?;
    let profiles = tmp.join("profiles");
    let _ = std::fs::remove_dir_all(&profiles);
    let learning = ExecutorConfig {
        prefetch_profiles: Some(tvix_oci_executor::profiles::ProfileStore::new(&profiles)),
        ..config.clone()
    };
    let (rb, rd) = rt.block_on(stores_at(&url))?;
    let (lazy_remote10, _) = lazy("gRPC, 10 ms", rb.clone(), rd.clone(), &learning)?;
    let (lazy_remote10_profiled, profiled) =
        lazy("gRPC, 10 ms, with the profile", rb, rd, &learning)?;
    println!(
        "    prefetched {} bytes, of which the build read {}",
        profiled.input_bytes_prefetched, profiled.input_bytes_prefetched_used
    );

    // Eager: export the inputs, then run the same bundle.
    sync_and_drop_caches();
    let bundle = tmp.join("eager");
    let eager = export_then_run(rt, &bundle, req, named, blobs, &**dirs)?;
    let layout = BundleLayout::new(&bundle);
    println!(
        "  zig cc, export then build: {:.1} s",
        eager.total.as_secs_f64()
    );

    // The host: the same compile on the exported toolchain, no container.
    sync_and_drop_caches();
    let host_dir = tmp.join("host-build");
    std::fs::create_dir_all(&host_dir)?;
    let compile = COMPILE
        .replace("{src}", &layout.inputs().join("zstd").display().to_string())
        .replace("{out}", &host_dir.display().to_string());
    let t = Instant::now();
    let st = std::process::Command::new(layout.inputs().join("zig/zig"))
        .args(compile.split(' '))
        .env("HOME", &host_dir)
        .env("ZIG_GLOBAL_CACHE_DIR", host_dir.join("gc"))
        .env("ZIG_LOCAL_CACHE_DIR", host_dir.join("lc"))
        .status()?;
    let host = t.elapsed();
    if !st.success() {
        return Err(format!("the host compile failed: {st}").into());
    }
    println!("  zig cc, on the host: {:.1} s", host.as_secs_f64());
    std::fs::remove_dir_all(&bundle)?;
    std::fs::remove_dir_all(&host_dir)?;
    Ok(E2e {
        lazy_local,
        kernel_local,
        lazy_local_first: local.to_first_instruction,
        lazy_remote,
        remote_bytes_fetched: remote.input_bytes_fetched,
        lazy_remote10,
        lazy_remote10_profiled,
        prefetched: (
            profiled.input_bytes_prefetched,
            profiled.input_bytes_prefetched_used,
        ),
        toolchain_bytes: 0,
        eager_export: eager.export,
        eager_total: eager.total,
        host,
        reps: 1,
    })
}
