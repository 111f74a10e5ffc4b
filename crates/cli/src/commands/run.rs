//! `tvix-oci-build run`: builds from request files or from flags, logs to
//! stderr as they come, the result as JSON on stdout. The requests, the
//! progress display and the report are shared with `run --remote`
//! (`remote.rs`), which builds on a server instead.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use prost::Message;
use tvix_oci_castore::blobservice::BlobService;
use tvix_oci_castore::directoryservice::DirectoryService;
use tvix_oci_castore::import::{ImportOptions, import_path};
use tvix_oci_executor::{Executor, ExecutorConfig};
use tvix_oci_spec::json::JsonError;
use tvix_oci_spec::proto::{self, build_request as br};
use tvix_oci_spec::{BuildRequest, Problems, RequestLimits};

use super::report::{Failure, report};
use crate::args::{ExecArgs, RunArgs};
use crate::exit::{HOST, INVALID, exit};
use crate::progress::{BuildProgress, Progress};
use crate::upload::upload_path;

fn invalid(p: Problems) -> anyhow::Error {
    exit(INVALID, p)
}

/// Reads one request file: JSON, or binary protobuf, validated within
/// `limits`.
pub fn read_request(path: &Path, limits: &RequestLimits) -> anyhow::Result<BuildRequest> {
    let bytes = if path == Path::new("-") {
        let mut b = Vec::new();
        std::io::stdin()
            .read_to_end(&mut b)
            .context("reading the request from stdin")?;
        b
    } else {
        std::fs::read(path).map_err(|e| {
            exit(
                INVALID,
                format!("cannot read request {}: {e}", path.display()),
            )
        })?
    };
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'{') {
        let text = String::from_utf8(bytes).map_err(|_| {
            exit(
                INVALID,
                format!("{}: JSON that is not UTF-8", path.display()),
            )
        })?;
        return BuildRequest::from_json_within(&text, limits).map_err(|e| match e {
            JsonError::Invalid(p) => invalid(p),
            other => exit(INVALID, format!("{}: {other}", path.display())),
        });
    }
    let p = proto::BuildRequest::decode(bytes.as_slice()).map_err(|e| {
        exit(
            INVALID,
            format!(
                "{}: neither JSON nor a protobuf BuildRequest: {e}",
                path.display()
            ),
        )
    })?;
    BuildRequest::validate(p, limits).map_err(invalid)
}

fn split_kv<'a>(s: &'a str, what: &str) -> anyhow::Result<(&'a str, &'a str)> {
    s.split_once('=').ok_or_else(|| {
        exit(
            INVALID,
            format!("{what} {s:?} is not of the form KEY=VALUE"),
        )
    })
}

/// The request the flags describe, importing the inputs (to a server,
/// `remote`: only what it lacks, see [`crate::upload`]).
async fn request_from_flags(
    args: &RunArgs,
    progress: &Progress,
    blobs: &Arc<dyn BlobService>,
    dirs: &Arc<dyn DirectoryService>,
    remote: bool,
) -> anyhow::Result<BuildRequest> {
    if args.command.is_empty() {
        return Err(exit(
            INVALID,
            "no request file and no command after --: nothing to build",
        ));
    }
    let mut inputs = Vec::new();
    for spec in &args.input {
        let (name, path) = match spec.split_once('=') {
            Some((n, p)) => (n.to_owned(), PathBuf::from(p)),
            None => {
                let p = PathBuf::from(spec);
                let n = p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                (n, p)
            }
        };
        if !path.exists() && std::fs::symlink_metadata(&path).is_err() {
            return Err(exit(
                INVALID,
                format!("input {name}: {} does not exist", path.display()),
            ));
        }
        let opts = ImportOptions {
            observer: progress.import(&path),
            ..ImportOptions::default()
        };
        let imported = match remote {
            false => import_path(blobs.clone(), &**dirs, &path, &opts)
                .await
                .map_err(anyhow::Error::from),
            true => upload_path(&path, &opts, blobs, &**dirs)
                .await
                .map(|(node, sent)| {
                    tracing::info!(
                        "input {name}: sent {} blobs ({} bytes) and {} directories; the server had {} blobs",
                        sent.blobs, sent.bytes, sent.dirs, sent.blobs_there
                    );
                    node
                }),
        };
        let node = imported.with_context(|| format!("importing input {}", path.display()))?;
        let pc = name
            .as_str()
            .try_into()
            .map_err(|e| exit(INVALID, format!("input name {name:?}: {e}")))?;
        inputs.push((name, node.to_proto(&pc)));
    }
    inputs.sort_by(|a, b| a.0.cmp(&b.0));
    let mut env = Vec::new();
    for kv in &args.env {
        let (k, v) = split_kv(kv, "--env")?;
        env.push(br::EnvVar {
            key: k.into(),
            value: v.to_owned().into(),
        });
    }
    env.sort_by(|a, b| a.key.cmp(&b.key));
    let mut outputs = args.output.clone();
    outputs.sort();
    let mut scratch = args.scratch.clone();
    scratch.sort();
    let mut needles = args.needle.clone();
    needles.sort();
    let p = proto::BuildRequest {
        inputs: inputs.into_iter().map(|(_, n)| n).collect(),
        command_args: args.command.clone(),
        working_dir: args.workdir.clone(),
        scratch_paths: scratch,
        inputs_dir: args.inputs_dir.clone(),
        outputs,
        environment_vars: env,
        constraints: Some(br::BuildConstraints {
            system: tvix_oci_executor::host::host_system(),
            network_access: args.network,
            provide_bin_sh: args.sh,
            ..Default::default()
        }),
        additional_files: vec![],
        refscan_needles: needles,
    };
    BuildRequest::validate(p, &args.exec.limits.limits()).map_err(invalid)
}

/// The requests `args` describe: the request files read and validated,
/// or the one the flags describe, its inputs imported into `blobs` and
/// `dirs` (the stores the build reads them from; a server's, `remote`).
pub async fn requests(
    args: &RunArgs,
    progress: &Progress,
    blobs: &Arc<dyn BlobService>,
    dirs: &Arc<dyn DirectoryService>,
    remote: bool,
) -> anyhow::Result<Vec<BuildRequest>> {
    if args.requests.is_empty() {
        let req = request_from_flags(args, progress, blobs, dirs, remote).await?;
        return Ok(vec![req]);
    }
    if !args.command.is_empty() || !args.input.is_empty() {
        return Err(exit(
            INVALID,
            "give either request files or a build by flags (--input … -- COMMAND), not both",
        ));
    }
    args.requests
        .iter()
        .map(|p| read_request(p, &args.exec.limits.limits()))
        .collect()
}

/// Prints the requests as JSON, for `--dry-run`.
pub fn print_requests(requests: &[BuildRequest]) {
    for r in requests {
        println!("{}", r.to_json());
    }
}

/// The progress display of each of `n` builds.
pub fn build_sinks(progress: &Progress, n: usize) -> Vec<BuildProgress> {
    (1..=n)
        .map(|i| match n {
            1 => progress.build("build".into()),
            _ => progress.build(format!("build {i}")),
        })
        .collect()
}

pub async fn run(
    args: &RunArgs,
    blobs: Arc<dyn BlobService>,
    dirs: Arc<dyn DirectoryService>,
) -> anyhow::Result<()> {
    let progress = Progress::new();
    let requests = requests(args, &progress, &blobs, &dirs, false).await?;
    if args.dry_run {
        print_requests(&requests);
        return Ok(());
    }
    let config = args.exec.config(&*blobs);
    if requests.iter().any(|r| r.constraints().provide_bin_sh) && config.sandbox_shell.is_none() {
        return Err(no_sandbox_shell());
    }
    let exec = Executor::new(config, blobs, dirs);
    exec.recover();
    let sinks = build_sinks(&progress, requests.len());
    let builds =
        futures::future::join_all(requests.iter().zip(&sinks).map(|(r, s)| exec.build(r, s)));
    let results = tokio::select! {
        r = builds => r,
        _ = shutdown_signal() => return Err(exit(HOST, "interrupted; the builds were stopped and cleaned up")),
    };
    // Spinners off before the result goes to the terminal.
    drop(sinks);
    report(
        results
            .into_iter()
            .map(|r| r.map_err(Failure::of))
            .collect(),
    )
}

impl ExecArgs {
    /// The executor configuration these flags describe, for builds whose
    /// inputs come from `blobs` (the kernel view's cache is opened only
    /// for a store that keeps its blobs as local files).
    pub fn config(&self, blobs: &dyn BlobService) -> ExecutorConfig {
        let mut config = ExecutorConfig {
            runtime: self.runtime.clone(),
            keep_bundle: self.keep_bundle,
            timeout: self.timeout.map(Duration::from_secs),
            max_silent_time: self.max_silent_time.map(Duration::from_secs),
            ..ExecutorConfig::probed()
        };
        if let Some(j) = self.jobs {
            config.concurrency = j.max(1);
        }
        config.max_queued = self.queue;
        if let Some(r) = &self.bundle_root {
            config.bundle_root = r.clone();
        }
        if let Some(s) = &self.sandbox_shell {
            config.sandbox_shell = Some(s.clone());
        }
        let limits = &mut config.spec.resources;
        limits.memory_bytes = self.memory_limit.map(|m| m.min(i64::MAX as u64) as i64);
        limits.pids = self.pids_limit.0.map(i64::from);
        limits.cpus = self.cpus;
        config.allowed_ro_paths = self.allow_ro_path.clone();
        config.prefetch_profiles = self
            .prefetch_profiles
            .as_ref()
            .map(tvix_oci_executor::profiles::ProfileStore::new);
        let viewable = blobs.local_root().is_some();
        if self.inputs_view == crate::args::InputsView::Auto && !config.rootless && viewable {
            let dir = self
                .kernel_view_cache
                .clone()
                .unwrap_or_else(|| crate::store::data_dir().join("kernel-view"));
            match tvix_oci_fuse::ViewCache::open(&dir) {
                Ok(c) => config.kernel_view = Some(std::sync::Arc::new(c)),
                Err(e) => tracing::warn!("the inputs go through FUSE: the kernel view cache: {e}"),
            }
        }
        if let Some((start, count)) = self.id_pool {
            config.id_pool.start = start;
            config.id_pool.count = count;
        }
        config
    }
}

/// The error for a `provide_bin_sh` request without a sandbox shell.
fn no_sandbox_shell() -> anyhow::Error {
    exit(
        HOST,
        "a request asks for provide_bin_sh, but no sandbox shell was found: install busybox-static or pass --sandbox-shell",
    )
}

/// Ctrl-C or SIGTERM, listened for from this call on (not from the first
/// poll, as [`shutdown_signal`]): for a command that says it is ready
/// before it waits, so a signal sent at once is not the default death.
pub fn shutdown_signal_now() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    );
    async move {
        match handlers {
            (Ok(mut int), Ok(mut term)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            _ => shutdown_signal().await,
        }
    }
}

/// Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
