//! `tvix-oci-build build DRV…`: builds Nix derivations directly. Reads the
//! `.drv`, takes its input closure from the local Nix store (`nix-store
//! --query --requisites`), imports it into the castore, runs the request
//! Nix's sandbox would run (see `tvix_oci_nix::request`) and prints each
//! output in Nix's terms: store path, NAR hash, NAR size, references.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use serde_json::json;
use tvix_oci_castore::Node;
use tvix_oci_castore::blobservice::BlobService;
use tvix_oci_castore::directoryservice::DirectoryService;
use tvix_oci_executor::nar::{NarSink, NarWriter};
use tvix_oci_executor::nar_node::write_node;
use tvix_oci_executor::{BuildResult, Executor};
use tvix_oci_nix::Derivation;
use tvix_oci_nix::checks;
use tvix_oci_nix::fixed::{Algo, Found, Hasher, check, check_no_references, needs_flat};
use tvix_oci_nix::request::{NixRequest, RequestOptions, build_request};
use tvix_oci_nix::result::{BuiltOutput, NixOutput, nix_outputs};

use crate::args::ExecArgs;
use crate::exit::{BUILD_FAILED, HOST, INVALID, exit};
use crate::nix_paths::NixPaths;
use crate::progress::Progress;

/// Largest `.drv` read (Nix's own are kilobytes).
const MAX_DRV_BYTES: u64 = 64 << 20;

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Derivation files (`/nix/store/…​.drv`, as `nix-instantiate` prints).
    #[arg(required = true)]
    pub drvs: Vec<PathBuf>,
    /// NIX_BUILD_CORES of the build (Nix's `cores`). Default: the number
    /// of CPUs, as Nix.
    #[arg(long)]
    pub cores: Option<u32>,
    /// Print the request as JSON instead of running it.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub exec: ExecArgs,
}

/// Reads and parses a `.drv`; a bad one is the caller's fault (exit 2).
pub fn read_drv(path: &Path) -> anyhow::Result<Derivation> {
    let bad = |m: String| exit(INVALID, format!("derivation {}: {m}", path.display()));
    let meta = std::fs::metadata(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    if meta.len() > MAX_DRV_BYTES {
        return Err(bad(format!(
            "{} bytes, more than a .drv can be",
            meta.len()
        )));
    }
    let b = std::fs::read(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    tvix_oci_nix::parse(&b).map_err(|e| bad(e.to_string()))
}

/// The request for one `.drv`, its inputs imported.
async fn prepare(
    path: &Path,
    cores: Option<u32>,
    map: &NixPaths,
    progress: &Progress,
    blobs: &Arc<dyn BlobService>,
    dirs: &Arc<dyn DirectoryService>,
) -> anyhow::Result<Prepared> {
    let drv = read_drv(path)?;
    let mut missing = BTreeSet::new();
    let roots = crate::nix_inputs::input_roots(&drv, &mut missing)?;
    if !missing.is_empty() {
        return Err(exit(
            INVALID,
            format!(
                "derivation {}: inputs missing from the local Nix store (build them with Nix first): {}",
                path.display(),
                missing.into_iter().collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    let t = std::time::Instant::now();
    let closure = crate::nix_inputs::closure(&roots)?;
    let queried = t.elapsed();
    let (inputs, imported) =
        crate::nix_inputs::import_all(&closure, map, progress, blobs, dirs).await?;
    tracing::debug!(
        "input closure of {}: {} paths ({imported} imported), nix-store --query --requisites {queried:?}, then NAR hashes, map and imports {:?}",
        path.display(),
        closure.len(),
        t.elapsed() - queried
    );
    let mut opts = RequestOptions::default();
    if let Some(c) = cores {
        opts.build_cores = c;
    }
    let req = build_request(&drv, &inputs, &opts)
        .map_err(|e| exit(INVALID, format!("derivation {}: {e}", path.display())))?;
    // A fixed output's declaration must be checkable before it runs.
    if let (Some(fo), Some((_, out))) = (drv.fixed_output(), req.outputs.first()) {
        needs_flat(&fo, out).map_err(|e| exit(INVALID, e))?;
    }
    checks::validate(&drv)
        .map_err(|e| exit(INVALID, format!("derivation {}: {e}", path.display())))?;
    Ok(Prepared { drv, req, imported })
}

/// A derivation ready to run.
struct Prepared {
    drv: Derivation,
    req: NixRequest,
    /// Input paths imported (the others were in the map).
    imported: usize,
}

/// A fixed output's hash against its declaration, and no references
/// (Nix's checks): the build's fault when either fails.
async fn check_fixed(
    drv: &Derivation,
    req: &NixRequest,
    r: &BuildResult,
    outputs: &BTreeMap<String, NixOutput>,
    blobs: &dyn BlobService,
    dirs: &dyn DirectoryService,
) -> anyhow::Result<()> {
    let (Some(fo), Some((_, path)), Some(info), Some((_, node))) = (
        drv.fixed_output(),
        req.outputs.first(),
        r.outputs.first(),
        r.build.outputs.first(),
    ) else {
        return Ok(());
    };
    let (flat, algo) = needs_flat(&fo, path).map_err(|e| exit(INVALID, e))?;
    let found = if flat {
        match node {
            Node::File {
                digest,
                executable: false,
                ..
            } => Found::Flat(Some(blob_digest(blobs, digest, algo).await?)),
            _ => Found::Flat(None),
        }
    } else if algo == Algo::Sha256 {
        Found::Nar(info.nar_sha256.to_vec())
    } else {
        Found::Nar(nar_digest(node, algo, blobs, dirs).await?)
    };
    check(&fo, path, found).map_err(|e| exit(BUILD_FAILED, e))?;
    let refs = outputs
        .get("out")
        .map(|o| o.references.as_slice())
        .unwrap_or_default();
    check_no_references(path, refs).map_err(|e| exit(BUILD_FAILED, e))
}

/// Nix's checks after a build: no cycle between the outputs, the fixed
/// output's hash, the reference constraints. Requisites of the inputs the
/// outputs refer to come from the local Nix store, and only where a
/// `…Requisites` constraint needs them.
async fn check_outputs(
    drv_path: &Path,
    p: &Prepared,
    r: &BuildResult,
    outputs: &BTreeMap<String, NixOutput>,
    blobs: &dyn BlobService,
    dirs: &dyn DirectoryService,
) -> anyhow::Result<()> {
    let at = |e: checks::CheckError| exit(BUILD_FAILED, e);
    checks::check_cycles(&drv_path.display().to_string(), outputs).map_err(at)?;
    check_fixed(&p.drv, &p.req, r, outputs, blobs, dirs).await?;
    let mut requisites = BTreeMap::new();
    if checks::needs_requisites(&p.drv) {
        for f in checks::foreign_references(outputs) {
            let sp = tvix_oci_nix::StorePath::from_absolute(&f)
                .map_err(|e| exit(HOST, format!("reference {f}: {e}")))?;
            let cl = crate::nix_inputs::closure(&BTreeSet::from([sp]))?;
            requisites.insert(f, cl.iter().map(|p| p.absolute()).collect());
        }
    }
    checks::check_references(&p.drv, outputs, &requisites).map_err(at)
}

/// The digest of a stored blob in `algo`, streamed.
async fn blob_digest(
    blobs: &dyn BlobService,
    digest: &tvix_oci_castore::B3Digest,
    algo: Algo,
) -> anyhow::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut rd = blobs
        .open_read(digest)
        .await
        .with_context(|| format!("reading output blob {digest}"))?
        .ok_or_else(|| exit(HOST, format!("output blob {digest} is not in the store")))?;
    let mut h = algo.hasher();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = rd
            .read(&mut buf)
            .await
            .with_context(|| format!("reading output blob {digest}"))?;
        if n == 0 {
            return Ok(h.finish());
        }
        h.update(&buf[..n]);
    }
}

/// The digest in `algo` of the NAR of the stored output `node`, streamed
/// out of the castore (ingestion hashed it in SHA-256 only).
async fn nar_digest(
    node: &Node,
    algo: Algo,
    blobs: &dyn BlobService,
    dirs: &dyn DirectoryService,
) -> anyhow::Result<Vec<u8>> {
    /// The NAR writer's sink for any of the algorithms Nix declares.
    struct Sink(Hasher);
    impl NarSink for Sink {
        fn update(&mut self, data: &[u8]) {
            self.0.update(data);
        }
    }
    let mut nar = NarWriter::with_sink(Sink(algo.hasher()));
    write_node(&mut nar, node, blobs, dirs)
        .await
        .map_err(|e| exit(HOST, format!("hashing the NAR of the fixed output: {e}")))?;
    Ok(nar.into_sink().0.0.finish())
}

/// One build's outputs in Nix's terms.
fn nix_result(req: &NixRequest, r: &BuildResult) -> anyhow::Result<BTreeMap<String, NixOutput>> {
    let built: Vec<BuiltOutput> = r
        .outputs
        .iter()
        .zip(&r.build.outputs_needles)
        .map(|(o, n)| BuiltOutput {
            nar_sha256: o.nar_sha256,
            nar_size: o.nar_size,
            needles: n.clone(),
        })
        .collect();
    nix_outputs(req, &built).map_err(|e| exit(HOST, e))
}

pub async fn build(
    args: &BuildArgs,
    map: &NixPaths,
    blobs: Arc<dyn BlobService>,
    dirs: Arc<dyn DirectoryService>,
) -> anyhow::Result<()> {
    let progress = Progress::new();
    let mut reqs = Vec::new();
    for d in &args.drvs {
        reqs.push(prepare(d, args.cores, map, &progress, &blobs, &dirs).await?);
    }
    if args.dry_run {
        for p in &reqs {
            println!("{}", p.req.request.to_json());
        }
        return Ok(());
    }
    let config = args.exec.config();
    if config.sandbox_shell.is_none() {
        return Err(exit(
            HOST,
            "derivations run with /bin/sh, but no sandbox shell was found: install busybox-static or pass --sandbox-shell",
        ));
    }
    let exec = Executor::new(config, blobs.clone(), dirs.clone());
    let mut out = Vec::new();
    let mut worst = 0u8;
    for (d, p) in args.drvs.iter().zip(&reqs) {
        let r = &p.req;
        let sink = progress.build(d.display().to_string());
        let res = tokio::select! {
            r = exec.build(&r.request, &sink) => r,
            _ = crate::run::shutdown_signal() => return Err(exit(HOST, "interrupted; the build was stopped and cleaned up")),
        };
        drop(sink);
        let checked = match res {
            Ok(res) => match nix_result(r, &res) {
                Ok(outputs) => check_outputs(d, p, &res, &outputs, &*blobs, &*dirs)
                    .await
                    .map(|()| outputs),
                Err(e) => Err(e),
            },
            Err(e) => Err(e.into()),
        };
        match checked {
            Ok(outputs) => {
                let mut j = json!({ "drvPath": d.display().to_string(), "outputs": outputs });
                j["inputsImported"] = p.imported.into();
                j["inputsReused"] = r.request.inputs().len().saturating_sub(p.imported).into();
                out.push(j);
            }
            Err(e) => {
                let code = match e.downcast_ref::<tvix_oci_executor::BuildError>() {
                    Some(b) if b.is_build_failure() => BUILD_FAILED,
                    Some(_) => HOST,
                    None => crate::exit::code_of(&e),
                };
                eprintln!("error: building {}: {e:#}", d.display());
                worst = worst.max(code);
                out.push(json!({ "drvPath": d.display().to_string(), "error": format!("{e:#}") }));
            }
        }
    }
    let doc = if out.len() == 1 {
        out.remove(0)
    } else {
        serde_json::Value::Array(out)
    };
    println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    match worst {
        0 => Ok(()),
        code => Err(exit(code, "")),
    }
}
