//! [`Executor`]: one build, start to end, as the four stages of
//! [`crate::pipeline`] — prepare → sandbox → run → collect — inside a
//! bundle directory. Every resource is a guard dropped in reverse order, so
//! a failure, a cancelled future or a panic leaves no container, mount or
//! bundle behind.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::sync::Semaphore;
use tracing::{Instrument, info, info_span};
use tvix_oci_castore::blobservice::BlobService;
use tvix_oci_castore::directoryservice::DirectoryService;
use tvix_oci_spec::BuildRequest;

use crate::pipeline::{Collected, Sandbox, collect};
use crate::rootless::Rootless;
use crate::runc::{LogSink, Phase, RunLimits};
use crate::seam::Host;
use crate::{Accounting, BuildError, BuildResult, ExecutorConfig, host};

/// Runs builds against a castore.
#[derive(Debug)]
pub struct Executor {
    config: ExecutorConfig,
    /// What the builds do to the host goes through it.
    host: Host,
    blobs: Arc<dyn BlobService>,
    dirs: Arc<dyn DirectoryService>,
    permits: Semaphore,
    /// The builds waiting for one of the `permits`.
    queue: crate::queue::Queue,
    /// What rootless builds need, checked once it is all there (until then
    /// each build checks again, so a fixed host needs no restart).
    rootless: OnceLock<Rootless>,
    /// `config.allowed_ro_paths`, canonical.
    allowed_ro_paths: Vec<PathBuf>,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

fn build_id() -> String {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("tob-{}-{n}-{nanos:08x}", std::process::id())
}

impl Executor {
    /// An executor on this host using `blobs` and `dirs` for inputs and
    /// outputs. Touches nothing yet; a process that starts serving builds
    /// calls [`Executor::recover`] first.
    pub fn new(
        config: ExecutorConfig,
        blobs: Arc<dyn BlobService>,
        dirs: Arc<dyn DirectoryService>,
    ) -> Self {
        let host = Host::linux(&config);
        Self::with_host(config, blobs, dirs, host)
    }

    /// An executor whose builds go through `host` (the real one is
    /// [`Host::linux`]; tests give a fake).
    pub fn with_host(
        config: ExecutorConfig,
        blobs: Arc<dyn BlobService>,
        dirs: Arc<dyn DirectoryService>,
        host: Host,
    ) -> Self {
        let permits = Semaphore::new(config.concurrency.max(1));
        let allowed_ro_paths = crate::ro_paths::canonical_allow_list(&config.allowed_ro_paths);
        Self {
            allowed_ro_paths,
            config,
            host,
            blobs,
            dirs,
            permits,
            queue: Default::default(),
            rootless: OnceLock::new(),
        }
    }

    /// Cleans up what a previous process that died mid-build (SIGKILL, a
    /// crash) left in the bundle root: its containers, mounts and bundles.
    /// Only bundles of processes no longer alive are touched. Returns how
    /// many bundles were removed.
    pub fn recover(&self) -> usize {
        let config = &self.config;
        let runc = host::find_runtime(&config.runtime).unwrap_or_else(|_| config.runtime.clone());
        let rootless = config.rootless.then(|| self.rootless().ok()).flatten();
        crate::cleanup_stale(&config.bundle_root, &runc, rootless.as_ref())
    }

    /// Runs `req` and returns its result. Build logs go to `logs`: its id
    /// first, then (when every slot is taken) its place in line, its
    /// phases, its log and figures as they come.
    pub async fn build(
        &self,
        req: &BuildRequest,
        logs: &dyn LogSink,
    ) -> Result<BuildResult, BuildError> {
        let id = build_id();
        logs.started(&id);
        let bound = (self.config.concurrency.max(1), self.config.max_queued);
        let _permit = self.queue.acquire(&self.permits, bound, logs).await?;
        let span = info_span!("build", id = %id);
        self.run(req, logs, &id).instrument(span).await
    }

    /// The four stages of build `id`. The prepared cgroup and id slot
    /// outlive the sandbox (declared first, dropped last).
    async fn run(
        &self,
        req: &BuildRequest,
        logs: &dyn LogSink,
        id: &str,
    ) -> Result<BuildResult, BuildError> {
        let started = Instant::now();
        let mut prepared = self.prepare(req, id)?;
        logs.phase(Phase::Mounting);
        let view = crate::pipeline::plan_view(self, req, prepared.rootless.is_some()).await;
        let mut sandbox = Sandbox::create(self, &mut prepared, req, id, view)?;
        let limits = RunLimits {
            timeout: self.config.timeout,
            max_silent: self.config.max_silent_time,
            log_limit: self.config.log_limit,
        };
        let ran = sandbox.run(self, &prepared, req, id, limits, logs).await?;
        info!("ingesting outputs");
        logs.phase(Phase::Ingesting);
        let limits = crate::pipeline::limits_from(
            self.config.ingest_limits,
            self.config.timeout,
            ran.started,
        );
        let Collected { build, outputs } = collect(self, req, &sandbox.layout, limits).await?;
        drop(sandbox);
        let accounting = Accounting::of(started, &ran);
        info!(
            wall = ?accounting.wall,
            to_first_instruction = ?accounting.to_first_instruction,
            cpu = ?accounting.cpu,
            "built"
        );
        Ok(BuildResult {
            build,
            outputs,
            accounting,
        })
    }

    /// Checks now what the first build would otherwise check: as root, that
    /// the build id pool holds no account of the host (see
    /// [`crate::idpool`]). A server calls it at start, to refuse to start
    /// rather than fail every build. Rootless, there is nothing to check.
    pub fn check_host(&self) -> Result<(), BuildError> {
        if !self.config.rootless {
            self.host.ids.check()?;
        }
        Ok(())
    }

    pub(crate) fn config(&self) -> &ExecutorConfig {
        &self.config
    }

    pub(crate) fn allowed_ro_paths(&self) -> &[PathBuf] {
        &self.allowed_ro_paths
    }

    /// The stores inputs come from and outputs go to.
    pub(crate) fn stores(&self) -> (Arc<dyn BlobService>, Arc<dyn DirectoryService>) {
        (self.blobs.clone(), self.dirs.clone())
    }

    pub(crate) fn host(&self) -> &Host {
        &self.host
    }

    /// What rootless builds need, checked until it is all there.
    pub(crate) fn rootless(&self) -> Result<Rootless, BuildError> {
        if let Some(r) = self.rootless.get() {
            return Ok(r.clone());
        }
        let r = crate::rootless::prepare(&self.config.bundle_root)?;
        Ok(self.rootless.get_or_init(|| r).clone())
    }
}
