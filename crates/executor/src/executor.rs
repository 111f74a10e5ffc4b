//! [`Executor`]: one build, start to end, inside a bundle directory:
//! host checks → bundle skeleton → FUSE inputs at `inputs/` → overlay at
//! `store/` → `runc run` → unmount → checks → ingestion with reference
//! scanning → [`BuildResult`] → bundle removed. Every resource is a guard
//! dropped in reverse order, so a failure, a cancelled future or a panic
//! leaves no container, mount or bundle behind.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tracing::{Instrument, info, info_span};
use tvix_oci_castore::blobservice::BlobService;
use tvix_oci_castore::directoryservice::DirectoryService;
use tvix_oci_castore::{Node, PathComponent};
use tvix_oci_fuse::{BlobCache, MountOptions};
use tvix_oci_spec::{Build, BuildRequest, BundleLayout, SpecOptions};

use crate::BuildError;
use crate::cgroup::BuildCgroup;
use crate::idpool::{IdPool, IdPoolConfig};
use crate::ingest::{Deadline, IngestLimits, OutputAt, ingest_outputs};
use crate::overlay::Overlay;
use crate::refscan::Needles;
use crate::runc::{Container, LogSink, Phase, RunLimits};
use crate::{bundle::BundleDir, host};

/// How the executor runs builds.
#[derive(Clone, Debug)]
pub struct ExecutorConfig {
    /// Where bundles are made (one directory per build, removed after).
    pub bundle_root: PathBuf,
    /// The OCI runtime (`runc` on PATH by default).
    pub runtime: PathBuf,
    /// Shell bound at `/bin/sh` for `provide_bin_sh` (a static busybox).
    pub sandbox_shell: Option<PathBuf>,
    /// Builds run at once; more wait.
    pub concurrency: usize,
    /// Keep each bundle after the build (for debugging).
    pub keep_bundle: bool,
    /// How long the build may take, from its container starting to its
    /// outputs stored: the run and the ingestion of its outputs together.
    pub timeout: Option<Duration>,
    pub max_silent_time: Option<Duration>,
    /// Bytes of log past which the build is killed.
    pub log_limit: u64,
    /// Caps on the outputs of one build, all outputs together.
    pub ingest_limits: IngestLimits,
    /// Cache for blobs fetched from a remote store.
    pub blob_cache: Option<Arc<BlobCache>>,
    /// Resource limits and the like for the container.
    pub spec: SpecOptions,
    /// Run builds rootless (see [`crate::rootless`]); by default when the
    /// process is not root.
    pub rootless: bool,
    /// The host paths a request may name in `available_ro_paths` (exactly;
    /// canonicalized when the executor is made); none by default. See
    /// [`crate::ro_paths`].
    pub allowed_ro_paths: Vec<PathBuf>,
    /// As root, the host ids each build's user namespace maps to (see
    /// [`crate::idpool`]).
    pub id_pool: IdPoolConfig,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        let shell = ["/bin/busybox", "/usr/bin/busybox"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file());
        Self {
            bundle_root: crate::rootless::default_bundle_root(),
            runtime: PathBuf::from("runc"),
            sandbox_shell: shell,
            concurrency: std::thread::available_parallelism().map_or(1, |n| n.get()),
            keep_bundle: false,
            timeout: None,
            max_silent_time: None,
            log_limit: 100 << 20,
            ingest_limits: IngestLimits::default(),
            blob_cache: None,
            spec: SpecOptions::default(),
            // SAFETY: geteuid has no preconditions.
            rootless: unsafe { libc::geteuid() } != 0,
            allowed_ro_paths: Vec::new(),
            id_pool: IdPoolConfig::default(),
        }
    }
}

/// What one output was, next to the `Build`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputInfo {
    pub nar_sha256: [u8; 32],
    pub nar_size: u64,
    /// For each needle found (index into `refscan_needles`), the first path
    /// below the output it was found in.
    pub needle_paths: BTreeMap<usize, PathBuf>,
}

/// Figures of one build.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Accounting {
    pub wall: Duration,
    /// From the build starting to its process starting in the container
    /// (the end of the executor's and runc's set-up), to within 1 ms.
    pub to_first_instruction: Option<Duration>,
    /// From `runc run` starting to it ending.
    pub run_wall: Duration,
    /// CPU time of the build's processes (its cgroup), or where it has no
    /// cgroup (rootless), of runc and the build (`wait4`).
    pub cpu: Duration,
    /// Peak memory of the build's cgroup, page cache included (`None`
    /// without a cgroup).
    pub peak_memory: Option<u64>,
    /// Largest resident set of one process of the build.
    pub max_rss: u64,
    /// Bytes of inputs fetched from the store, and served by the FUSE
    /// daemon itself (passthrough reads of local blobs bypass it).
    pub input_bytes_fetched: u64,
    pub input_bytes_served: u64,
}

/// A finished build.
#[derive(Clone, Debug)]
pub struct BuildResult {
    pub build: Build,
    /// Per output, in request order.
    pub outputs: Vec<OutputInfo>,
    pub accounting: Accounting,
}

/// Runs builds against a castore.
#[derive(Debug)]
pub struct Executor {
    config: ExecutorConfig,
    blobs: Arc<dyn BlobService>,
    dirs: Arc<dyn DirectoryService>,
    permits: Semaphore,
    /// The runtime's version, judged once (see [`crate::runtime_version`]).
    runtime_verdict: std::sync::OnceLock<Result<(), String>>,
    /// What rootless builds need, checked once it is all there (until then
    /// each build checks again, so a fixed host needs no restart).
    rootless: std::sync::OnceLock<crate::rootless::Rootless>,
    /// `config.allowed_ro_paths`, canonical.
    allowed_ro_paths: Vec<PathBuf>,
    /// As root, the build id pool, once its range was found clear of the
    /// host's accounts (until then each build checks again).
    id_pool: std::sync::OnceLock<IdPool>,
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
    /// An executor using `blobs` and `dirs` for inputs and outputs. Cleans
    /// up what a previous process that died mid-build left in the bundle
    /// root (containers, mounts, bundles).
    pub fn new(
        config: ExecutorConfig,
        blobs: Arc<dyn BlobService>,
        dirs: Arc<dyn DirectoryService>,
    ) -> Self {
        let runc = host::find_runtime(&config.runtime).unwrap_or_else(|_| config.runtime.clone());
        let rootless = config
            .rootless
            .then(|| crate::rootless::prepare(&config.bundle_root).ok())
            .flatten();
        crate::cleanup_stale(&config.bundle_root, &runc, rootless.as_ref());
        let permits = Semaphore::new(config.concurrency.max(1));
        let allowed_ro_paths = crate::ro_paths::canonical_allow_list(&config.allowed_ro_paths);
        Self {
            allowed_ro_paths,
            config,
            blobs,
            dirs,
            permits,
            runtime_verdict: std::sync::OnceLock::new(),
            rootless: rootless.map(std::sync::OnceLock::from).unwrap_or_default(),
            id_pool: std::sync::OnceLock::new(),
        }
    }

    /// Runs `req` and returns its result. Build logs go to `logs`.
    pub async fn build(
        &self,
        req: &BuildRequest,
        logs: &dyn LogSink,
    ) -> Result<BuildResult, BuildError> {
        let _permit = self.permits.acquire().await.map_err(BuildError::infra)?;
        let id = build_id();
        let span = info_span!("build", id = %id);
        self.run(req, logs, &id).instrument(span).await
    }

    async fn run(
        &self,
        req: &BuildRequest,
        logs: &dyn LogSink,
        id: &str,
    ) -> Result<BuildResult, BuildError> {
        let started = Instant::now();
        host::check(req)?;
        let ro_paths =
            crate::ro_paths::check(req, &self.allowed_ro_paths, &self.config.bundle_root)?;
        let runc = host::find_runtime(&self.config.runtime)?;
        let verdict = self.runtime_verdict.get_or_init(|| {
            crate::runtime_version::check(&runc).map(|warning| {
                if let Some(w) = warning {
                    tracing::warn!("{w}");
                }
            })
        });
        if let Err(e) = verdict {
            return Err(BuildError::Host(e.clone()));
        }
        let mut spec_opts = self.config.spec.clone();
        spec_opts.sandbox_shell = self.config.sandbox_shell.clone();
        if spec_opts.open_files.is_none() {
            spec_opts.open_files = Some(host::open_files()?);
        }
        // /dev/shm: half of the RAM as in Nix, within the memory limit.
        if spec_opts.shm_bytes.is_none() {
            spec_opts.shm_bytes = spec_opts
                .resources
                .memory_bytes
                .and_then(|m| u64::try_from(m).ok());
        }
        let rootless = if self.config.rootless {
            Some(match self.rootless.get() {
                Some(r) => r.clone(),
                None => {
                    let r = crate::rootless::prepare(&self.config.bundle_root)?;
                    self.rootless.get_or_init(|| r).clone()
                }
            })
        } else {
            None
        };
        let cgroup = rootless
            .is_none()
            .then(|| BuildCgroup::create(id))
            .flatten();
        // As root, a slot of host ids for the build's user namespace, held
        // until the build's processes are gone (dropped last).
        let id_slot = match rootless {
            Some(_) => None,
            None => Some(
                self.id_pool()?
                    .take()
                    .map_err(|e| BuildError::Host(e.to_string()))?,
            ),
        };

        // Declared in this order so they drop in reverse: container, then
        // overlay, then FUSE, then the bundle directory.
        logs.phase(Phase::Mounting);
        let mut bundle = BundleDir::create(&self.config.bundle_root, id, self.config.keep_bundle)?;
        match &rootless {
            Some(r) => {
                bundle.set_rootless(r.clone());
                // The pids limit is an rlimit there (see make_spec).
                let limits = &spec_opts.resources;
                if limits.memory_bytes.is_some() || limits.cpus.is_some() {
                    return Err(BuildError::Host(
                        "memory and CPU limits need a cgroup, which a rootless build does not get; run as root or drop the limits".into(),
                    ));
                }
                spec_opts.rootless = true;
                spec_opts.user_namespace = Some(tvix_oci_spec::IdMappings {
                    uid: r.uid_mappings.clone(),
                    gid: r.gid_mappings.clone(),
                });
                spec_opts.overlay_in_container = Some(bundle.path().to_owned());
                spec_opts.cgroups_path = None;
            }
            // A cgroup of its own, named after the build; runc's is a child
            // of one the executor makes, to read the usage after runc
            // removed its own.
            None => {
                if let Some(slot) = &id_slot {
                    spec_opts.user_namespace = Some(slot.mappings());
                    spec_opts.rootfs = Some(slot.rootfs());
                }
                spec_opts.cgroups_path = Some(match &cgroup {
                    Some(cg) => cg.runc_path(),
                    None => PathBuf::from(format!("/{}/{id}", crate::cgroup::PARENT)),
                });
            }
        }
        let layout = BundleLayout::new(bundle.path());
        // Detached before the bundle goes, after the container.
        let (ro_clones, ro_mounts) = match &rootless {
            Some(_) => (
                Default::default(),
                crate::ro_paths::rootless_mounts(&ro_paths)?,
            ),
            None => crate::ro_paths::RoClones::attach(&layout, &ro_paths)?,
        };
        spec_opts.ro_mounts = ro_mounts;
        layout
            .write_skeleton(req, &spec_opts)
            .map_err(|e| BuildError::Host(e.to_string()))?;

        // Without a shared cache, the build's own lives in its bundle, so
        // it goes with the bundle, even after a crash (the stale cleanup).
        let cache = match &self.config.blob_cache {
            Some(c) => c.clone(),
            None => {
                let dir = bundle.path().join("blob-cache");
                Arc::new(BlobCache::open(&dir, u64::MAX).map_err(|e| {
                    BuildError::Host(format!("making the blob cache {}: {e}", dir.display()))
                })?)
            }
        };
        let mount_opts = MountOptions {
            cache: Some(cache),
            ..MountOptions::default()
        };
        let inputs = tvix_oci_fuse::mount(
            self.blobs.clone(),
            self.dirs.clone(),
            req.inputs().to_vec(),
            &layout.inputs(),
            &mount_opts,
        )
        .map_err(|e| BuildError::infra(format!("mounting the inputs: {e}")))?;
        // Rootless, the container mounts the overlay itself.
        let overlay = if req.inputs_dir_is_scratch() && rootless.is_none() {
            Some(
                Overlay::mount(
                    &layout.inputs(),
                    &layout.upper(),
                    &layout.work(),
                    &layout.store(),
                )
                .map_err(BuildError::infra)?,
            )
        } else {
            None
        };

        let mut container =
            Container::new(&runc, rootless.as_ref().map(|r| r.runc_root.as_path()), id);
        let limits = RunLimits {
            timeout: self.config.timeout,
            max_silent: self.config.max_silent_time,
            log_limit: self.config.log_limit,
        };
        info!("running");
        logs.phase(Phase::Running);
        // Aborts the FUSE connection when a limit stops the build, and
        // before the container is deleted when this future is dropped: a
        // process blocked reading from a hung store then dies at once.
        let aborted = AtomicBool::new(false);
        let abort_inputs = || {
            aborted.store(true, Ordering::Relaxed);
            inputs.abort();
        };
        let abort_guard = OnDrop(Some(&abort_inputs));
        let run_started = Instant::now();
        let cwd = format!("/{}", req.working_dir());
        let process = crate::runc::Process {
            builder: req.command_args().first().map_or("", String::as_str),
            cwd: &cwd,
        };
        let ran = crate::runc::run(
            &container,
            layout.dir(),
            logs,
            limits,
            process,
            &abort_inputs,
        )
        .await;
        abort_guard.disarm();
        container.delete();
        let usage = cgroup.as_ref().map(BuildCgroup::usage).unwrap_or_default();
        let serving = inputs.is_serving();
        let store_trouble = inputs.store_trouble(STORE_STALLED);
        if let Some(o) = overlay {
            o.unmount().map_err(BuildError::infra)?;
        }
        let fuse_stats = inputs.stats();
        inputs
            .unmount()
            .map_err(|e| BuildError::infra(format!("unmounting the inputs: {e}")))?;
        // Whatever the build made of it, inputs it could not read make the
        // result the store's fault, not the build's.
        if let Some(t) = store_trouble {
            return Err(BuildError::infra(format!(
                "the store failed while the build read its inputs: {t}"
            )));
        }
        if !serving && !aborted.load(Ordering::Relaxed) {
            return Err(BuildError::infra(
                "the FUSE connection of the inputs ended mid-build (aborted, or its daemon died)",
            ));
        }
        let outcome = ran.map_err(|e| match e {
            // Killed at its memory limit: say so rather than "signal 9".
            BuildError::Signaled {
                signal: 9,
                log_tail,
            } if spec_opts.resources.memory_bytes.is_some_and(|limit| {
                usage
                    .peak_memory
                    .is_some_and(|peak| peak >= limit as u64 * 15 / 16)
            }) =>
            {
                BuildError::OutOfMemory {
                    limit: spec_opts.resources.memory_bytes.unwrap_or_default() as u64,
                    log_tail,
                }
            }
            other => other,
        })?;

        if req.inputs_dir_is_scratch() {
            check_inputs_untouched(&layout.upper(), req.inputs())?;
        }

        info!("ingesting outputs");
        logs.phase(Phase::Ingesting);
        let needles = Arc::new(Needles::new(req.refscan_needles()));
        let mut outputs = Vec::new();
        let mut infos = Vec::new();
        let mut needle_lists = Vec::new();
        let mut at = Vec::new();
        for out in req.outputs() {
            let (base, rel) = output_location(&layout, req, out)?;
            let output = out.to_string();
            at.push(OutputAt { base, rel, output });
        }
        // The build's timeout covers the ingestion of its outputs too.
        let mut limits = self.config.ingest_limits;
        limits.deadline = self.config.timeout.map(|timeout| Deadline {
            at: run_started + timeout,
            timeout,
        });
        let ingested =
            ingest_outputs(&at, self.blobs.clone(), &*self.dirs, needles, limits).await?;
        for (out, got) in req.outputs().iter().zip(ingested) {
            let name = PathComponent::try_from(out.file_name())
                .map_err(|e| BuildError::infra(format!("output {out}: {e}")))?;
            outputs.push((name, got.node));
            needle_lists.push(got.needles.keys().map(|&i| i as u64).collect());
            infos.push(OutputInfo {
                nar_sha256: got.nar_sha256,
                nar_size: got.nar_size,
                needle_paths: got.needles,
            });
        }
        drop(ro_clones);
        drop(bundle);
        let accounting = Accounting {
            wall: started.elapsed(),
            to_first_instruction: outcome.process_started.map(|t| t - started),
            run_wall: outcome.wall,
            cpu: usage.cpu.unwrap_or(outcome.cpu),
            peak_memory: usage.peak_memory,
            max_rss: outcome.max_rss,
            input_bytes_fetched: fuse_stats.bytes_fetched,
            input_bytes_served: fuse_stats.bytes_served,
        };
        info!(
            wall = ?accounting.wall,
            to_first_instruction = ?accounting.to_first_instruction,
            cpu = ?accounting.cpu,
            "built"
        );
        Ok(BuildResult {
            build: Build {
                request: req.clone(),
                outputs,
                outputs_needles: needle_lists,
            },
            outputs: infos,
            accounting,
        })
    }
}

impl Executor {
    /// Checks now what the first build would otherwise check: as root, that
    /// the build id pool holds no account of the host (see
    /// [`crate::idpool`]). A server calls it at start, to refuse to start
    /// rather than fail every build. Rootless, there is nothing to check.
    pub fn check_host(&self) -> Result<(), BuildError> {
        if !self.config.rootless {
            self.id_pool()?;
        }
        Ok(())
    }

    /// The build id pool, opened (its range checked against the host's
    /// accounts) at the first build that needs it.
    fn id_pool(&self) -> Result<&IdPool, BuildError> {
        if let Some(p) = self.id_pool.get() {
            return Ok(p);
        }
        let p = IdPool::open(self.config.id_pool.clone())
            .map_err(|e| BuildError::Host(e.to_string()))?;
        Ok(self.id_pool.get_or_init(|| p))
    }
}

/// A store call pending this long when the build ends means the store
/// hung.
const STORE_STALLED: Duration = Duration::from_secs(1);

/// Runs a function when dropped, unless disarmed.
struct OnDrop<'a>(Option<&'a (dyn Fn() + Sync)>);

impl OnDrop<'_> {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for OnDrop<'_> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

/// Where output `out` is on the host: a trusted base dir of the bundle and
/// the path below it.
fn output_location(
    layout: &BundleLayout,
    req: &BuildRequest,
    out: &tvix_oci_spec::path::CleanPath,
) -> Result<(PathBuf, String), BuildError> {
    if req.inputs_dir_is_scratch()
        && let Some(rest) = out.strip_prefix(req.inputs_dir())
    {
        return Ok((layout.upper(), rest.to_owned()));
    }
    for s in req.scratch_paths() {
        if let Some(rest) = out.strip_prefix(s) {
            return Ok((layout.scratch(s), rest.to_owned()));
        }
    }
    // Below a read-only inputs dir: the build could not have written it.
    Err(BuildError::Output(crate::ingest::IngestError::Missing(
        out.to_string(),
    )))
}

/// Fails when the overlay's upper layer holds an entry named like an input:
/// the build wrote into, deleted or replaced it.
fn check_inputs_untouched(
    upper: &Path,
    inputs: &[(PathComponent, Node)],
) -> Result<(), BuildError> {
    use std::os::unix::ffi::OsStrExt;
    let rd = std::fs::read_dir(upper)
        .map_err(|e| BuildError::infra(format!("{}: {e}", upper.display())))?;
    for e in rd.flatten() {
        let name = e.file_name();
        if inputs
            .binary_search_by(|(n, _)| n.as_bytes().cmp(name.as_bytes()))
            .is_ok()
        {
            return Err(BuildError::ModifiedInput(
                name.to_string_lossy().into_owned(),
            ));
        }
    }
    Ok(())
}
