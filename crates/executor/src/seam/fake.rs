//! [`FakeHost`]: a host for tests of the pipeline, on any machine — no
//! root, runc or FUSE. It records every call the pipeline makes (and every
//! guard dropped), can be told to fail any step, plays the build by
//! running a closure on the bundle (writing outputs where the container
//! would), and reports what it is told the build used and what its inputs'
//! daemon saw.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tvix_oci_fuse::StatsSnapshot;
use tvix_oci_spec::{BUILD_GID, BUILD_UID, IdMapping, IdMappings};

use super::{
    Accounting, BuildAccount, BuildIds, Host, Ids, InputsCall, InputsMounted, Mounted, Mounts,
    OverlayCall, RunCall, Runtime,
};
use crate::cgroup::Usage;
use crate::idpool::IdPoolError;
use crate::runc::RunOutcome;
use crate::{BuildError, HostError, InfraError};

/// A step of the pipeline on the host, as recorded and as made to fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Step {
    Locate,
    TakeIds,
    FreeIds,
    Cgroup,
    RemoveCgroup,
    MountInputs,
    MountOverlay,
    Run,
    AbortInputs,
    DeleteContainer,
    UnmountOverlay,
    UnmountInputs,
}

/// What the fake build does, given its bundle directory: writes outputs
/// (into `outputs/upper` for the store dir, `scratch/…` for scratch
/// paths) and says how the run ended.
pub type Play = dyn Fn(&Path) -> Result<RunOutcome, BuildError> + Send + Sync;

/// What the fake host is told: failures, the build, what it used.
#[derive(Default)]
struct Script {
    fail: Vec<Step>,
    play: Option<Arc<Play>>,
    /// The run never ends (until its future is dropped).
    hang: bool,
    peak_memory: Option<u64>,
    cpu: Option<Duration>,
    /// The inputs' daemon died mid-build.
    daemon_dies: bool,
    store_trouble: Option<String>,
}

/// The fake host: cheap to clone, all clones share one record.
#[derive(Clone, Default)]
pub struct FakeHost {
    calls: Arc<Mutex<Vec<Step>>>,
    script: Arc<Mutex<Script>>,
}

impl std::fmt::Debug for FakeHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeHost")
            .field("calls", &self.calls())
            .finish()
    }
}

impl FakeHost {
    pub fn new() -> Self {
        Self::default()
    }

    /// The host the executor gets: every trait is this fake.
    pub fn host(&self) -> Host {
        Host {
            runtime: Arc::new(self.clone()),
            mounts: Arc::new(self.clone()),
            accounting: Arc::new(self.clone()),
            ids: Arc::new(self.clone()),
        }
    }

    /// The steps taken so far, in order.
    pub fn calls(&self) -> Vec<Step> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Makes `step` fail (as the real host's failure of it would).
    pub fn fail(&self, step: Step) -> &Self {
        self.edit(|s| s.fail.push(step))
    }

    /// The build: `play` runs on the bundle directory when the container
    /// would. Without one, the run exits 0 having written nothing.
    pub fn play(
        &self,
        play: impl Fn(&Path) -> Result<RunOutcome, BuildError> + Send + Sync + 'static,
    ) -> &Self {
        self.edit(|s| s.play = Some(Arc::new(play)))
    }

    /// The run never ends, until its future is dropped.
    pub fn hang(&self) -> &Self {
        self.edit(|s| s.hang = true)
    }

    /// What the build's cgroup says it used.
    pub fn used(&self, peak_memory: Option<u64>, cpu: Option<Duration>) -> &Self {
        self.edit(|s| {
            s.peak_memory = peak_memory;
            s.cpu = cpu;
        })
    }

    /// The inputs' FUSE daemon dies during the run.
    pub fn daemon_dies(&self) -> &Self {
        self.edit(|s| s.daemon_dies = true)
    }

    /// The store fails under the build's reads.
    pub fn store_trouble(&self, what: &str) -> &Self {
        self.edit(|s| s.store_trouble = Some(what.to_owned()))
    }

    /// A successful run's outcome, for a [`FakeHost::play`].
    pub fn exited_0() -> RunOutcome {
        RunOutcome {
            cpu: Duration::from_millis(1),
            max_rss: 1 << 20,
            wall: Duration::from_millis(1),
            process_started: None,
        }
    }

    fn edit(&self, f: impl FnOnce(&mut Script)) -> &Self {
        if let Ok(mut s) = self.script.lock() {
            f(&mut s);
        }
        self
    }

    fn read<T>(&self, f: impl FnOnce(&Script) -> T) -> T {
        match self.script.lock() {
            Ok(s) => f(&s),
            Err(p) => f(&p.into_inner()),
        }
    }

    /// Records `step`; fails it when told to.
    fn step(&self, step: Step) -> Result<(), BuildError> {
        if let Ok(mut c) = self.calls.lock() {
            c.push(step);
        }
        match self.read(|s| s.fail.contains(&step)) {
            true => Err(fault(step)),
            false => Ok(()),
        }
    }
}

/// The error the real host gives for a failing `step`, in its class.
fn fault(step: Step) -> BuildError {
    match step {
        Step::Locate => HostError::RuntimeNotOnPath(PathBuf::from("runc")).into(),
        Step::TakeIds => HostError::IdPool(IdPoolError::Exhausted { slots: 1 }).into(),
        other => InfraError::Fake(format!("{other:?} failed (fake)")).into(),
    }
}

#[async_trait::async_trait]
impl Runtime for FakeHost {
    fn locate(&self, configured: &Path) -> Result<PathBuf, BuildError> {
        self.step(Step::Locate)?;
        Ok(configured.to_owned())
    }

    async fn run(&self, call: RunCall<'_>) -> Result<RunOutcome, BuildError> {
        self.step(Step::Run)?;
        // As runc's: deleted at the end, and when dropped the inputs are
        // aborted first.
        let _deleted = Recorded(self, Step::DeleteContainer);
        let abort_first = crate::pipeline::OnDrop(Some(call.on_stop));
        if self.read(|s| s.hang) {
            std::future::pending::<()>().await;
        }
        let ran = match self.read(|s| s.play.clone()) {
            Some(play) => play(call.bundle),
            None => Ok(Self::exited_0()),
        };
        abort_first.disarm();
        ran
    }
}

impl FakeHost {
    /// The inputs mounted, through FUSE or as a kernel view alike.
    fn inputs_step(&self) -> Result<Box<dyn InputsMounted>, BuildError> {
        self.step(Step::MountInputs)?;
        Ok(Box::new(FakeMount {
            host: self.clone(),
            unmount: Step::UnmountInputs,
            live: true,
        }))
    }
}

impl Mounts for FakeHost {
    fn inputs(&self, _call: InputsCall<'_>) -> Result<Box<dyn InputsMounted>, BuildError> {
        self.inputs_step()
    }

    fn view(&self, _call: super::ViewCall<'_>) -> Result<Box<dyn InputsMounted>, BuildError> {
        self.inputs_step()
    }

    fn overlay(&self, _call: OverlayCall<'_>) -> Result<Box<dyn Mounted>, BuildError> {
        self.step(Step::MountOverlay)?;
        Ok(Box::new(FakeMount {
            host: self.clone(),
            unmount: Step::UnmountOverlay,
            live: true,
        }))
    }
}

/// Records its step when dropped.
struct Recorded<'a>(&'a FakeHost, Step);

impl Drop for Recorded<'_> {
    fn drop(&mut self) {
        let _ = self.0.step(self.1);
    }
}

/// A mount of the fake: records its unmount once, explicit or on drop.
#[derive(Debug)]
struct FakeMount {
    host: FakeHost,
    unmount: Step,
    live: bool,
}

impl Mounted for FakeMount {
    fn unmount(mut self: Box<Self>) -> Result<(), BuildError> {
        self.live = false;
        self.host.step(self.unmount)
    }
}

impl Drop for FakeMount {
    fn drop(&mut self) {
        if self.live {
            let _ = self.host.step(self.unmount);
        }
    }
}

impl InputsMounted for FakeMount {
    fn abort(&self) {
        let _ = self.host.step(Step::AbortInputs);
    }
    fn is_serving(&self) -> bool {
        let aborted = self.host.calls().contains(&Step::AbortInputs);
        !aborted && !self.host.read(|s| s.daemon_dies)
    }
    fn settle(&self) -> super::Settling<'_> {
        Box::pin(async {})
    }
    fn store_trouble(&self, _stalled: Duration) -> Option<String> {
        self.host.read(|s| s.store_trouble.clone())
    }
    fn stats(&self) -> StatsSnapshot {
        StatsSnapshot::default()
    }
    fn read_profile(&self) -> tvix_oci_fuse::ReadProfile {
        tvix_oci_fuse::ReadProfile::default()
    }
    fn into_mounted(self: Box<Self>) -> Box<dyn Mounted> {
        self
    }
}

/// The fake's cgroup: records its removal when dropped.
#[derive(Debug)]
struct FakeCgroup(FakeHost);

impl Accounting for FakeHost {
    fn cgroup(&self, _id: &str) -> Option<Box<dyn BuildAccount>> {
        self.step(Step::Cgroup).ok()?;
        Some(Box::new(FakeCgroup(self.clone())))
    }
}

impl BuildAccount for FakeCgroup {
    fn runc_path(&self) -> PathBuf {
        PathBuf::from("/fake/cgroup")
    }
    fn usage(&self) -> Usage {
        self.0.read(|s| Usage {
            cpu: s.cpu,
            peak_memory: s.peak_memory,
        })
    }
}

impl Drop for FakeCgroup {
    fn drop(&mut self) {
        let _ = self.0.step(Step::RemoveCgroup);
    }
}

/// The fake's ids, held by the build: records their freeing when dropped.
#[derive(Debug)]
struct FakeSlot(FakeHost);

impl Drop for FakeSlot {
    fn drop(&mut self) {
        let _ = self.0.step(Step::FreeIds);
    }
}

impl Ids for FakeHost {
    fn check(&self) -> Result<(), BuildError> {
        Ok(())
    }

    /// The container's root and its build user are both this process's
    /// user, so the skeleton is written without root.
    fn take(&self) -> Result<BuildIds, BuildError> {
        self.step(Step::TakeIds)?;
        let (uid, gid) = (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        );
        let one = |container_id, host_id| IdMapping {
            container_id,
            host_id,
            size: 1,
        };
        Ok(BuildIds {
            mappings: IdMappings {
                uid: vec![one(0, uid), one(BUILD_UID, uid)],
                gid: vec![one(0, gid), one(BUILD_GID, gid)],
            },
            rootfs: None,
            held: Box::new(FakeSlot(self.clone())),
        })
    }
}
