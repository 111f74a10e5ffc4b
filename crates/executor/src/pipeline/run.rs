//! Stage 3, [`Ran`]: the container runs in the sandbox; then it is
//! deleted, the overlay and the inputs are unmounted (what the build left
//! is in the bundle), and the run is judged ([`super::decide::judge`]):
//! a store that failed under the build, or a FUSE daemon gone, is the
//! host's fault whatever the build made of it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};
use tvix_oci_fuse::StatsSnapshot;
use tvix_oci_spec::BuildRequest;

use super::decide::{RunFacts, judge};
use super::{Prepared, Sandbox};
use crate::cgroup::Usage;
use crate::faults::InfraError;
use crate::figures::with_progress;
use crate::runc::{LogSink, Phase, Process, RunLimits, RunOutcome};
use crate::seam::{BuildAccount, RunCall};
use crate::{BuildError, Executor, Figures};

/// A store call pending this long when the build ends means the store
/// hung.
const STORE_STALLED: Duration = Duration::from_secs(1);

/// A run that went to its end and left its outputs in the bundle.
#[derive(Debug)]
pub(crate) struct Ran {
    pub outcome: RunOutcome,
    /// When `runc run` started (the build's timeout counts from there).
    pub started: Instant,
    /// The build's cgroup's figures (none without a cgroup).
    pub usage: Usage,
    /// What the inputs' FUSE daemon fetched and served.
    pub fuse: StatsSnapshot,
    /// Learned prefetch: bytes of inputs fetched ahead, and of those the
    /// bytes the build read.
    pub prefetched: (u64, u64),
}

impl Sandbox {
    /// Stage 3: runs build `id` of `req` as `prepared` says, within
    /// `limits`, its log and phases to `logs`; then tears down its
    /// container and mounts and judges the run.
    pub(crate) async fn run(
        &mut self,
        exec: &Executor,
        prepared: &Prepared,
        req: &BuildRequest,
        id: &str,
        limits: RunLimits,
        logs: &dyn LogSink,
    ) -> Result<Ran, BuildError> {
        let Some(mut mounts) = self.mounts.take() else {
            return Err(InfraError::SandboxReused.into());
        };
        let state_root = prepared.rootless.as_ref().map(|r| r.runc_root.as_path());
        let cwd = format!("/{}", req.working_dir());
        let process = Process {
            builder: req.command_args().first().map_or("", String::as_str),
            cwd: &cwd,
        };
        info!("running");
        logs.phase(Phase::Running);
        // Aborts the FUSE connection when a limit stops the build, and
        // before the container is deleted when this future is dropped: a
        // process blocked reading from a hung store then dies at once.
        let aborted = AtomicBool::new(false);
        let abort_inputs = || {
            aborted.store(true, Ordering::Relaxed);
            mounts.inputs.abort();
        };
        let abort_guard = OnDrop(Some(&abort_inputs));
        let started = Instant::now();
        let run = exec.host().runtime.run(RunCall {
            runtime: &prepared.runc,
            state_root,
            id,
            bundle: self.layout.dir(),
            logs,
            limits,
            process,
            on_stop: &abort_inputs,
        });
        let cgroup = prepared.cgroup.as_deref();
        let ran = with_progress(run, logs, started, || figures(&mounts, cgroup)).await;
        abort_guard.disarm();
        let aborted = aborted.load(Ordering::Relaxed);
        // A big input blob the build read as it arrived is checked whole
        // before the build is judged: a corrupt one is the store's fault,
        // even if the build succeeded.
        if !aborted && mounts.inputs.is_serving() {
            mounts.inputs.settle().await;
        }
        let usage = cgroup.map(BuildAccount::usage).unwrap_or_default();
        let facts = RunFacts {
            serving: mounts.inputs.is_serving(),
            aborted,
            store_trouble: mounts.inputs.store_trouble(STORE_STALLED),
            memory_limit: prepared.spec.resources.memory_bytes,
            peak_memory: usage.peak_memory,
        };
        let learned = mounts
            .profile
            .take()
            .map(|shape| (shape, mounts.inputs.read_profile()));
        let fuse = unmount(mounts)?;
        let outcome = judge(ran, facts)?;
        let mut prefetched = (0, 0);
        if let Some(((key, before), now)) = learned {
            prefetched = (now.bytes_prefetched, now.bytes_prefetched_used);
            // What a build that succeeded read is the next one's profile.
            if let Some(store) = &exec.config().prefetch_profiles {
                match store.save(&key, &before, &now.read) {
                    Ok(true) => debug!(key = %key, blobs = now.read.len(), "prefetch profile kept"),
                    Ok(false) => {}
                    Err(e) => warn!("{e}"),
                }
            }
        }
        Ok(Ran {
            outcome,
            started,
            usage,
            fuse,
            prefetched,
        })
    }
}

/// What the running build used so far.
fn figures(mounts: &super::sandbox::Mounts, cgroup: Option<&dyn BuildAccount>) -> Figures {
    let usage = cgroup.map(BuildAccount::usage).unwrap_or_default();
    Figures {
        input_bytes_fetched: mounts.inputs.stats().bytes_fetched,
        cpu: usage.cpu,
        peak_memory: usage.peak_memory,
        ..Figures::default()
    }
}

/// Unmounts the overlay, then the inputs; what the inputs' daemon did.
fn unmount(mounts: super::sandbox::Mounts) -> Result<StatsSnapshot, BuildError> {
    if let Some(o) = mounts.overlay {
        o.unmount()?;
    }
    let stats = mounts.inputs.stats();
    mounts.inputs.into_mounted().unmount()?;
    Ok(stats)
}

/// Runs a function when dropped, unless disarmed.
pub(crate) struct OnDrop<'a>(pub(crate) Option<&'a (dyn Fn() + Sync)>);

impl OnDrop<'_> {
    pub(crate) fn disarm(mut self) {
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
