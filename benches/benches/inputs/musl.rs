//! Issue 19's musl compile: `zig cc -target x86_64-linux-musl hello.c`
//! with an empty Zig cache builds musl's libc first (about a thousand
//! compiler runs, thousands of headers opened), so it weighs every lookup
//! and open of the toolchain. The same compile on the host (the toolchain
//! exported to local disk), and as a build whose toolchain is an input
//! from the embedded store through FUSE and as the kernel view; cold
//! (page cache dropped before each) and warm (filled), interleaved,
//! median of `MUSL_REPS` rounds (default 3). Run with `MUSL=1` (and
//! `ZIG_DIR` to reuse the download); prints its table.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tvix_oci_benches::{busybox_sh_request, sync_and_drop_caches};
use tvix_oci_castore::blobservice::BlobService;
use tvix_oci_castore::directoryservice::DirectoryService;
use tvix_oci_castore::import::{ImportOptions, import_path};
use tvix_oci_executor::runc::NoLogs;
use tvix_oci_executor::{Executor, ExecutorConfig};

use super::Res;
use super::e2e::Zig;

const HELLO: &str = "#include <stdio.h>\nint main(void) { puts(\"hi\"); return 0; }\n";
const ARGS: &str = "cc -target x86_64-linux-musl {src}/hello.c -o {out}/hello";

/// Runs the table.
pub fn musl(
    rt: &tokio::runtime::Runtime,
    tmp: &Path,
    z: &Zig,
    blobs: &Arc<dyn BlobService>,
    dirs: &Arc<dyn DirectoryService>,
) -> Res<()> {
    let _guard = rt.enter();
    let src = tmp.join("hello");
    std::fs::create_dir_all(&src)?;
    std::fs::write(src.join("hello.c"), HELLO)?;
    let opts = ImportOptions::default();
    let zig = rt.block_on(import_path(blobs.clone(), &**dirs, &z.toolchain, &opts))?;
    let hello = rt.block_on(import_path(blobs.clone(), &**dirs, &src, &opts))?;
    let bb = rt.block_on(tvix_oci_benches::import_busybox(
        blobs.clone(),
        &**dirs,
        tmp,
    ))?;
    let nodes = [("busybox", &bb), ("hello", &hello), ("zig", &zig)]
        .iter()
        .map(|(n, node)| Ok(node.to_proto(&(*n).try_into()?)))
        .collect::<Res<Vec<_>>>()?;
    let args = ARGS
        .replace("{src}", "/nix/store/hello")
        .replace("{out}", "/build");
    let env = [
        ("HOME", "/build"),
        ("ZIG_GLOBAL_CACHE_DIR", "/build/gc"),
        ("ZIG_LOCAL_CACHE_DIR", "/build/lc"),
    ];
    let req = busybox_sh_request(
        nodes,
        format!("/nix/store/zig/zig {args}"),
        &env,
        &["build/hello"],
    )?;
    let fuse = ExecutorConfig {
        bundle_root: tmp.join("musl-bundles"),
        ..ExecutorConfig::probed()
    };
    let view = ExecutorConfig {
        kernel_view: Some(Arc::new(tvix_oci_fuse::ViewCache::open(
            tmp.join("musl-view-cache"),
        )?)),
        ..fuse.clone()
    };
    let build = |config: &ExecutorConfig| -> Res<Duration> {
        let exec = Executor::new(config.clone(), blobs.clone(), dirs.clone());
        let t = Instant::now();
        rt.block_on(exec.build(&req, &NoLogs))?;
        Ok(t.elapsed())
    };
    // The host: the toolchain exported once, a new cache each time.
    let host_zig = tmp.join("musl-host-zig");
    let _ = std::fs::remove_dir_all(&host_zig);
    rt.block_on(tvix_oci_castore::export::export_node(
        blobs.clone(),
        &**dirs,
        &zig,
        &host_zig,
    ))?;
    let host = || -> Res<Duration> {
        let dir = tmp.join("musl-host");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let args = ARGS
            .replace("{src}", &src.display().to_string())
            .replace("{out}", &dir.display().to_string());
        let t = Instant::now();
        let st = std::process::Command::new(host_zig.join("zig"))
            .args(args.split(' '))
            .env("HOME", &dir)
            .env("ZIG_GLOBAL_CACHE_DIR", dir.join("gc"))
            .env("ZIG_LOCAL_CACHE_DIR", dir.join("lc"))
            .status()?;
        let took = t.elapsed();
        if !st.success() {
            return Err(format!("the host compile failed: {st}").into());
        }
        Ok(took)
    };
    // The trees of the view are written by a first build, as on a builder
    // that built with this toolchain before.
    build(&view)?;
    let reps: usize = std::env::var("MUSL_REPS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3)
        .max(1);
    let names = ["host", "FUSE, local store", "kernel view"];
    let mut times = vec![vec![Vec::new(); 3]; 2];
    for round in 0..reps {
        for (c, cold) in [true, false].into_iter().enumerate() {
            for (i, name) in names.iter().enumerate() {
                if cold {
                    sync_and_drop_caches();
                }
                let took = match i {
                    0 => host()?,
                    1 => build(&fuse)?,
                    _ => build(&view)?,
                };
                let how = if cold { "cold" } else { "warm" };
                println!(
                    "  musl, round {round}, {how}, {name}: {:.1} s",
                    took.as_secs_f64()
                );
                times[c][i].push(took);
            }
        }
    }
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    println!(
        "\n`zig cc -target x86_64-linux-musl hello.c`, empty Zig cache (musl built first), median of {reps}:\n"
    );
    println!("| | host | FUSE, local store | ratio | kernel view | ratio |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for (c, how) in ["cold", "warm"].iter().enumerate() {
        let [h, f, v] = [0, 1, 2].map(|i| median(times[c][i].clone()));
        let r = |d: Duration| d.as_secs_f64() / h.as_secs_f64();
        println!(
            "| {how} | {:.2} s | {:.2} s | {:.2}x | {:.2} s | {:.2}x |",
            h.as_secs_f64(),
            f.as_secs_f64(),
            r(f),
            v.as_secs_f64(),
            r(v)
        );
    }
    Ok(())
}
