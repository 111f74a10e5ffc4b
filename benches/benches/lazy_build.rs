//! A build over a big input closure that reads a little of it: lazy FUSE
//! inputs against exporting the inputs to disk first and running the same
//! build on them, side by side in one run. 5,000 store paths, 100,000
//! files, ~2 GiB; the build reads ~5% of the bytes.
//!
//! Run (root, /dev/fuse, runc, /bin/busybox):
//! `cargo bench -p tvix-oci-benches --bench lazy_build` (`QUICK=1`: 1/10 the size)

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tvix_oci_benches::eager::{Eager, export_then_run};
use tvix_oci_benches::{
    TreeShape, bench_tempdir, busybox_sh_request, make_tree, sync_and_drop_caches,
};
use tvix_oci_executor::runc::{LogSink, LogStream};
use tvix_oci_executor::{Executor, ExecutorConfig};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Notes when the build's first output arrives: its first instruction ran.
struct FirstOutput(Mutex<Option<Instant>>);
impl LogSink for FirstOutput {
    fn log(&self, _s: LogStream, _d: &[u8]) {
        let mut f = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f.get_or_insert_with(Instant::now);
    }
}

fn main() -> Res<()> {
    if tvix_oci_testkit::lacks(&[
        tvix_oci_testkit::Need::Root,
        tvix_oci_testkit::Need::Fuse,
        tvix_oci_testkit::Need::Runc,
        tvix_oci_testkit::Need::Busybox,
    ]) {
        return Ok(());
    }
    let quick = std::env::var_os("QUICK").is_some();
    let (paths, step) = if quick { (500, 20) } else { (5_000, 20) };
    let shape = TreeShape {
        dirs: paths,
        small_files: paths * 20,
        small_avg: 8 * 1024,
        large_files: 5,
        large_size: if quick { 24 << 20 } else { 256 << 20 },
    };
    let tmp = bench_tempdir()?;
    let src = tmp.path().join("src");
    let total = make_tree(&src, shape, 11)?;
    let rt = tokio::runtime::Runtime::new()?;
    let tvix_oci_benches::Imported {
        blobs,
        dirs,
        mut inputs,
        ..
    } = rt.block_on(tvix_oci_benches::import_local(tmp.path(), &src))?;
    let bb = rt.block_on(tvix_oci_benches::import_busybox(
        blobs.clone(),
        &*dirs,
        tmp.path(),
    ))?;
    inputs.push(("busybox".try_into()?, bb));
    inputs.sort_by(|a, b| a.0.cmp(&b.0));
    println!(
        "{} inputs, {} files, {:.0} MiB",
        inputs.len(),
        shape.small_files + shape.large_files,
        total as f64 / 1048576.0
    );

    // Read every 20th package's files and 1/4 of one large file: ~5%.
    let big = std::fs::read_dir(src.join("pkg-0000/lib/sub-0"))?
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("big-"))
        .map(|e| e.path())
        .ok_or("no big file in pkg-0000")?;
    let big_rel = big.strip_prefix(&src)?.display().to_string();
    let quarter = shape.large_size / 4;
    let script = format!(
        "echo go; i=0; while [ $i -lt {paths} ]; do cat /nix/store/pkg-$(printf %04d $i)/lib/*/file-* > /dev/null; i=$((i+{step})); done; \
         head -c {quarter} /nix/store/{big_rel} > /dev/null; echo done"
    );
    let nodes = inputs.iter().map(|(n, node)| node.to_proto(n)).collect();
    let req = busybox_sh_request(nodes, script, &[("PATH", "/nix/store/busybox/bin")], &[])?;
    let read = (paths / step) as u64 * 20 * shape.small_avg + quarter;

    // Lazy: the executor, inputs through FUSE.
    sync_and_drop_caches();
    let exec = Executor::new(
        ExecutorConfig {
            bundle_root: tmp.path().join("bundles"),
            ..ExecutorConfig::probed()
        },
        blobs.clone(),
        dirs.clone(),
    );
    let first = FirstOutput(Mutex::new(None));
    let t = Instant::now();
    let res = rt.block_on(exec.build(&req, &first))?;
    let lazy = t.elapsed();
    let lazy_first = first
        .0
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .map(|f| f - t)
        .unwrap_or_default();

    // Eager: export every input to disk, then run the same build on them.
    sync_and_drop_caches();
    let bundle = tmp.path().join("eager");
    let Eager {
        export,
        run: eager_run,
        total: eager,
    } = export_then_run(&rt, &bundle, &req, &inputs, &blobs, &*dirs)?;
    std::fs::remove_dir_all(&bundle)?;

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!();
    println!("| measure | lazy (FUSE) | eager (export, then build) |");
    println!("| --- | --- | --- |");
    println!(
        "| time to first instruction | {:.0} ms | over {:.0} ms (after the export) |",
        ms(lazy_first),
        ms(export)
    );
    println!("| export of the inputs | — | {:.0} ms |", ms(export));
    println!(
        "| the build itself | {:.0} ms (runc) | {:.0} ms (runc) |",
        ms(res.accounting.run_wall),
        ms(eager_run)
    );
    println!("| whole run | {:.0} ms | {:.0} ms |", ms(lazy), ms(eager));
    println!(
        "| speed-up | {:.1}x | 1x |",
        eager.as_secs_f64() / lazy.as_secs_f64()
    );
    println!(
        "bytes read by the build: ~{} MiB of {:.0} MiB ({:.1}%)",
        read >> 20,
        total as f64 / 1048576.0,
        read as f64 * 100.0 / total as f64
    );
    Ok(())
}
