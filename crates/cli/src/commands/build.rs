//! `tvix-oci-build build DRV…`: builds Nix derivations directly. Reads the
//! `.drv`, takes its input closure from the local Nix store (`nix-store
//! --query --requisites`), imports it into the castore, runs the request
//! Nix's sandbox would run (see `tvix_oci_nix::request`) and prints each
//! output in Nix's terms: store path, NAR hash, NAR size, references.
//! The outputs can then be written out (`--out-link`) and imported into
//! the Nix store (`--register`); missing inputs built first
//! (`--build-inputs`). With `--remote URL`, the same on a `serve`: its
//! stores take the inputs, its event stream runs the build.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use serde_json::json;
use tvix_oci_castore::blobservice::BlobService;
use tvix_oci_castore::directoryservice::DirectoryService;
use tvix_oci_castore::grpc::StoreTimeouts;
use tvix_oci_castore::{Node, open_blob_service_with, open_directory_service_with};
use tvix_oci_executor::{BuildResult, Executor};
use tvix_oci_nix::Derivation;
use tvix_oci_nix::checks;
use tvix_oci_nix::fixed::needs_flat;
use tvix_oci_nix::request::{NixRequest, RequestOptions, build_request};
use tvix_oci_nix::result::{BuiltOutput, NixOutput, nix_outputs};
use tvix_oci_spec::proto::events::build_service_client::BuildServiceClient;

use crate::args::ExecArgs;
use crate::exit::{HOST, INVALID, exit};
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
    #[arg(long, conflicts_with = "out_link")]
    pub dry_run: bool,
    /// Write each output out as a directory tree, named as nix-build names
    /// its result links: PATH for output `out`, PATH-NAME for output NAME
    /// (the second and later derivations: PATH-2, PATH-2-NAME, …). None
    /// of them may exist.
    #[arg(long, short = 'o', value_name = "PATH")]
    pub out_link: Option<PathBuf>,
    /// Import the outputs into the local Nix store (`nix-store --import`)
    /// with their references and deriver, as Nix records its own builds.
    /// An output Nix holds as valid already is left as is.
    #[arg(long, conflicts_with = "dry_run")]
    pub register: bool,
    /// Build first, with this command, the input derivations whose
    /// outputs are missing from the local Nix store, in dependency order,
    /// and register them (as --register does), so the inputs are there.
    #[arg(long, conflicts_with = "dry_run")]
    pub build_inputs: bool,
    /// Build on the `serve` at URL (grpc+http://HOST:PORT or
    /// grpc+unix:///PATH) instead of here: the input closure is imported
    /// into its store (paths imported there before are not), the log
    /// streams to stderr, the outputs are checked, written out and
    /// registered from its store. The server's own settings (timeouts,
    /// limits, sandbox shell) apply, not this command's.
    #[arg(long, value_name = "URL")]
    pub remote: Option<String>,
    /// With --remote: how many times a build is tried again when its
    /// server was busy or unreachable, or failed for its own host's or
    /// store's fault (never for the build's own failure).
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub retries: u32,
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

/// A derivation ready to run.
pub struct Prepared {
    pub drv: Derivation,
    pub req: NixRequest,
    /// Input paths imported (the others were in the map).
    pub imported: usize,
}

/// A derivation built and checked: its outputs in Nix's terms and as
/// castore nodes, by output name.
pub struct Built {
    pub outputs: BTreeMap<String, NixOutput>,
    pub nodes: BTreeMap<String, Node>,
}

/// What building needs: the stores, the map of imported Nix paths, the
/// executor (absent for `--dry-run`), or the server that builds
/// (`--remote`; the stores are then its).
pub struct Builder<'a> {
    pub cores: Option<u32>,
    pub map: &'a NixPaths,
    pub progress: Progress,
    pub blobs: Arc<dyn BlobService>,
    pub dirs: Arc<dyn DirectoryService>,
    pub exec: Option<Executor>,
    pub remote: Option<Remote>,
    /// Tries again of a remote build (`--retries`).
    pub retries: u32,
}

/// The event stream's client of a build server.
pub type Remote = BuildServiceClient<tonic::transport::Channel>;

impl Builder<'_> {
    /// The request for the `.drv` at `path`, its inputs imported. Inputs
    /// missing from the local Nix store are one error naming them all.
    pub async fn prepare(&self, path: &Path) -> anyhow::Result<Prepared> {
        let drv = read_drv(path)?;
        let mut missing = BTreeSet::new();
        let roots = crate::nix_inputs::input_roots(&drv, &mut missing)?;
        if !missing.is_empty() {
            return Err(exit(
                INVALID,
                format!(
                    "derivation {}: inputs missing from the local Nix store (build them with Nix first, or pass --build-inputs): {}",
                    path.display(),
                    missing.into_iter().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        let t = std::time::Instant::now();
        let closure = crate::nix_inputs::closure_with_hashes(&roots)?;
        let queried = t.elapsed();
        let (inputs, imported) = crate::nix_inputs::import_all(
            &closure,
            self.map,
            &self.progress,
            &self.blobs,
            &self.dirs,
        )
        .await?;
        tracing::debug!(
            "input closure of {}: {} paths ({imported} imported), found in {queried:?}, then NAR hashes, map and imports {:?}",
            path.display(),
            closure.paths.len(),
            t.elapsed() - queried
        );
        let mut opts = RequestOptions::default();
        if let Some(c) = self.cores {
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

    /// Runs `p` (the `.drv` at `path`) and makes Nix's checks on its
    /// outputs. A build failure carries exit code 1.
    pub async fn run(&self, path: &Path, p: &Prepared) -> anyhow::Result<Built> {
        let sink = self.progress.build(path.display().to_string());
        let res = match (&self.remote, &self.exec) {
            (Some(client), _) => tokio::select! {
                r = super::remote::build(client.clone(), &p.req.request, &sink, self.retries) => r.map_err(|f| exit(f.code, f.msg)),
                _ = crate::commands::shutdown_signal() => return Err(exit(HOST, "interrupted; the build on the server was cancelled")),
            },
            (None, Some(exec)) => tokio::select! {
                r = exec.build(&p.req.request, &sink) => r.map_err(|e| {
                    let code = crate::exit::code_of_build(&e);
                    exit(code, format!("{:#}", anyhow::Error::new(e)))
                }),
                _ = crate::commands::shutdown_signal() => return Err(exit(HOST, "interrupted; the build was stopped and cleaned up")),
            },
            (None, None) => return Err(exit(HOST, "no executor to run builds with")),
        };
        drop(sink);
        let res = res?;
        let outputs = nix_result(&p.req, &res)?;
        crate::nix_checks::check_outputs(path, p, &res, &outputs, &*self.blobs, &*self.dirs)
            .await?;
        let nodes = p
            .req
            .outputs
            .iter()
            .zip(&res.build.outputs)
            .map(|((name, _), (_, node))| (name.clone(), node.clone()))
            .collect();
        Ok(Built { outputs, nodes })
    }
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

/// Builds the `index`-th derivation of the command line and does what
/// the flags ask with its outputs; its line of the JSON result.
async fn build_one(
    args: &BuildArgs,
    b: &Builder<'_>,
    index: usize,
    path: &Path,
    prepared: Option<Prepared>,
) -> anyhow::Result<serde_json::Value> {
    let inputs_built = if args.build_inputs {
        crate::build_inputs::build_missing(b, path).await?
    } else {
        vec![]
    };
    let p = match prepared {
        Some(p) => p,
        None => b.prepare(path).await?,
    };
    let built = b.run(path, &p).await?;
    let mut j = json!({ "drvPath": path.display().to_string(), "outputs": built.outputs });
    j["inputsImported"] = p.imported.into();
    j["inputsReused"] = p
        .req
        .request
        .inputs()
        .len()
        .saturating_sub(p.imported)
        .into();
    if args.build_inputs {
        j["inputsBuilt"] = inputs_built.into();
    }
    if let Some(base) = &args.out_link {
        let links =
            crate::out_link::write(base, index, &built.nodes, b.blobs.clone(), &*b.dirs).await?;
        j["outLinks"] = json!(links);
    }
    if args.register {
        let done = crate::register::register(path, &built, b.blobs.clone(), &*b.dirs).await?;
        j["registered"] = json!(done);
    }
    Ok(j)
}

/// `build --remote URL`: [`build`] on the server at `url`, with its
/// stores (and a map of the Nix paths imported there of their own).
pub async fn build_remote(
    args: &BuildArgs,
    url: &str,
    timeouts: StoreTimeouts,
) -> anyhow::Result<()> {
    let host = |e: tvix_oci_castore::StoreError| exit(HOST, format!("--remote {url}: {e}"));
    let blobs = open_blob_service_with(url, timeouts).await.map_err(host)?;
    let dirs = open_directory_service_with(url, timeouts)
        .await
        .map_err(host)?;
    let map = NixPaths::new(&crate::store::data_dir(), url, url);
    let client = super::remote::client(url, timeouts).await?;
    build(args, &map, blobs, dirs, Some(client)).await
}

/// Builds `args`'s derivations here, or with `remote` on its server (whose
/// stores `blobs` and `dirs` are then).
pub async fn build(
    args: &BuildArgs,
    map: &NixPaths,
    blobs: Arc<dyn BlobService>,
    dirs: Arc<dyn DirectoryService>,
    remote: Option<Remote>,
) -> anyhow::Result<()> {
    if let Some(base) = &args.out_link {
        for (i, d) in args.drvs.iter().enumerate() {
            crate::out_link::check_free(base, i, read_drv(d)?.outputs.keys())?;
        }
    }
    if args.register || args.build_inputs {
        crate::register::check_drvs_valid(&args.drvs)?;
    }
    let mut b = Builder {
        cores: args.cores,
        map,
        progress: Progress::new(),
        blobs: blobs.clone(),
        dirs: dirs.clone(),
        exec: None,
        remote,
        retries: args.retries,
    };
    // Up front, so a missing input fails before anything runs; with
    // --build-inputs, only once the inputs were built.
    let mut reqs = Vec::new();
    for d in &args.drvs {
        reqs.push(match args.build_inputs {
            false => Some(b.prepare(d).await?),
            true => None,
        });
    }
    if args.dry_run {
        for p in reqs.iter().flatten() {
            println!("{}", p.req.request.to_json());
        }
        return Ok(());
    }
    if b.remote.is_none() {
        let config = args.exec.config(&*blobs);
        if config.sandbox_shell.is_none() {
            return Err(exit(
                HOST,
                "derivations run with /bin/sh, but no sandbox shell was found: install busybox-static or pass --sandbox-shell",
            ));
        }
        let exec = Executor::new(config, blobs, dirs);
        exec.recover();
        b.exec = Some(exec);
    }
    let mut out = Vec::new();
    let mut worst = 0u8;
    for (i, (d, p)) in args.drvs.iter().zip(reqs).enumerate() {
        match build_one(args, &b, i, d, p).await {
            Ok(j) => out.push(j),
            Err(e) => {
                eprintln!("error: building {}: {e:#}", d.display());
                worst = worst.max(crate::exit::code_of(&e));
                out.push(json!({ "drvPath": d.display().to_string(), "error": format!("{e:#}") }));
            }
        }
    }
    super::report::print_results(out, worst)
}
