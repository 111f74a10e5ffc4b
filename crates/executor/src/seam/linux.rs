//! The host seam on Linux: runc through [`crate::runc`], the inputs through
//! [`tvix_oci_fuse`], the overlay through [`crate::overlay`], cgroups
//! through [`crate::cgroup`] and the build id pool through
//! [`crate::idpool`] — each judged or opened once, at the first build that
//! needs it (until then every build checks again, so a fixed host needs no
//! restart).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tvix_oci_fuse::{InputsMount, KernelView, StatsSnapshot};

use super::{
    Accounting, BuildAccount, BuildIds, Host, Ids, InputsCall, InputsMounted, Mounted, Mounts,
    OverlayCall, RunCall, Runtime, ViewCall,
};
use crate::cgroup::{BuildCgroup, Usage};
use crate::idpool::{IdPool, IdPoolConfig};
use crate::overlay::Overlay;
use crate::pipeline::OnDrop;
use crate::runc::{Container, RunOutcome};
use crate::{BuildError, HostError, InfraError};

pub(super) fn host(config: &crate::ExecutorConfig) -> Host {
    Host {
        runtime: Arc::new(Runc::default()),
        mounts: Arc::new(LinuxMounts),
        accounting: Arc::new(Cgroups),
        ids: Arc::new(IdPoolIds {
            config: config.id_pool.clone(),
            pool: OnceLock::new(),
        }),
    }
}

/// runc, its version judged once (a warning logged once).
#[derive(Debug, Default)]
struct Runc {
    verdict: OnceLock<Result<(), String>>,
}

#[async_trait::async_trait]
impl Runtime for Runc {
    fn locate(&self, configured: &Path) -> Result<PathBuf, BuildError> {
        let runc = crate::host::find_runtime(configured)?;
        let verdict = self.verdict.get_or_init(|| {
            crate::runtime_version::check(&runc).map(|warning| {
                if let Some(w) = warning {
                    tracing::warn!("{w}");
                }
            })
        });
        verdict.clone().map_err(HostError::RuntimeUnfit)?;
        Ok(runc)
    }

    async fn run(&self, call: RunCall<'_>) -> Result<RunOutcome, BuildError> {
        // Deleted when dropped: at the end of the run, or when this future
        // is dropped.
        let mut container = Container::new(call.runtime, call.state_root, call.id);
        // Dropped first when this future is: the inputs' connection aborted
        // before the container is deleted, so a builder blocked on a hung
        // store dies at once and `runc delete` does not wait on it.
        let abort_first = OnDrop(Some(call.on_stop));
        let ran = crate::runc::run(
            &container,
            call.bundle,
            call.logs,
            call.limits,
            call.process,
            call.on_stop,
        )
        .await;
        abort_first.disarm();
        container.delete();
        ran
    }
}

#[derive(Debug)]
struct LinuxMounts;

impl Mounts for LinuxMounts {
    fn inputs(&self, call: InputsCall<'_>) -> Result<Box<dyn InputsMounted>, BuildError> {
        let m = tvix_oci_fuse::mount(call.blobs, call.dirs, call.inputs, call.at, call.options)
            .map_err(InfraError::MountInputs)?;
        Ok(Box::new(FuseInputs(m)))
    }

    fn view(&self, c: ViewCall<'_>) -> Result<Box<dyn InputsMounted>, BuildError> {
        let v = match c.overlay {
            Some(o) => c.plan.mount_writable(o.target, o.upper, o.work),
            None => c.plan.mount(c.at),
        };
        let v = v.map_err(InfraError::MountView)?;
        Ok(Box::new(View(v)))
    }

    fn overlay(&self, c: OverlayCall<'_>) -> Result<Box<dyn Mounted>, BuildError> {
        let o = Overlay::mount(c.lower, c.upper, c.work, c.target).map_err(InfraError::Overlay)?;
        Ok(Box::new(o))
    }
}

#[derive(Debug)]
struct FuseInputs(InputsMount);

impl Mounted for FuseInputs {
    fn unmount(self: Box<Self>) -> Result<(), BuildError> {
        Ok(self.0.unmount().map_err(InfraError::UnmountInputs)?)
    }
}

impl InputsMounted for FuseInputs {
    fn abort(&self) {
        self.0.abort();
    }
    fn is_serving(&self) -> bool {
        self.0.is_serving()
    }
    fn settle(&self) -> super::Settling<'_> {
        Box::pin(self.0.settle())
    }
    fn store_trouble(&self, stalled: Duration) -> Option<String> {
        self.0.store_trouble(stalled)
    }
    fn stats(&self) -> StatsSnapshot {
        self.0.stats()
    }
    fn read_profile(&self) -> tvix_oci_fuse::ReadProfile {
        self.0.read_profile()
    }
    fn into_mounted(self: Box<Self>) -> Box<dyn Mounted> {
        self
    }
}

/// The inputs as a kernel view: no daemon, so nothing to abort, wait for
/// or count, and the store cannot fail under the build.
#[derive(Debug)]
struct View(KernelView);

impl Mounted for View {
    fn unmount(self: Box<Self>) -> Result<(), BuildError> {
        Ok(self.0.unmount().map_err(InfraError::UnmountView)?)
    }
}

impl InputsMounted for View {
    fn abort(&self) {}
    fn is_serving(&self) -> bool {
        true
    }
    fn settle(&self) -> super::Settling<'_> {
        Box::pin(async {})
    }
    fn store_trouble(&self, _stalled: Duration) -> Option<String> {
        None
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

impl Mounted for Overlay {
    fn unmount(self: Box<Self>) -> Result<(), BuildError> {
        Ok(Overlay::unmount(*self).map_err(InfraError::Overlay)?)
    }
}

#[derive(Debug)]
struct Cgroups;

impl Accounting for Cgroups {
    fn cgroup(&self, id: &str) -> Option<Box<dyn BuildAccount>> {
        BuildCgroup::create(id).map(|c| Box::new(c) as Box<dyn BuildAccount>)
    }
}

impl BuildAccount for BuildCgroup {
    fn runc_path(&self) -> PathBuf {
        BuildCgroup::runc_path(self)
    }
    fn usage(&self) -> Usage {
        BuildCgroup::usage(self)
    }
}

/// The build id pool, opened (its range checked against the host's
/// accounts) at the first build that needs it.
#[derive(Debug)]
struct IdPoolIds {
    config: IdPoolConfig,
    pool: OnceLock<IdPool>,
}

impl IdPoolIds {
    fn pool(&self) -> Result<&IdPool, BuildError> {
        if let Some(p) = self.pool.get() {
            return Ok(p);
        }
        let p = IdPool::open(self.config.clone()).map_err(HostError::IdPool)?;
        Ok(self.pool.get_or_init(|| p))
    }
}

impl Ids for IdPoolIds {
    fn check(&self) -> Result<(), BuildError> {
        self.pool().map(|_| ())
    }

    fn take(&self) -> Result<BuildIds, BuildError> {
        let slot = self.pool()?.take().map_err(HostError::IdPool)?;
        Ok(BuildIds {
            mappings: slot.mappings(),
            rootfs: Some(slot.rootfs()),
            held: Box::new(slot),
        })
    }
}
