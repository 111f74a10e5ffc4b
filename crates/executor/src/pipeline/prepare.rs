//! Stage 1, [`Prepared`]: everything decided before anything is made for
//! the build — the host can run it, its read-only paths are allowed, the
//! runtime is fit, and what it runs as — with its `SpecOptions` derived
//! here, once, from the user's configuration.

use std::path::PathBuf;

use tvix_oci_spec::{BuildRequest, ResourceLimits, SpecOptions};

use crate::faults::HostError;
use crate::ro_paths::Allowed;
use crate::rootless::Rootless;
use crate::seam::{BuildAccount, BuildIds};
use crate::{BuildError, Executor, host};

/// What a build runs with. Its cgroup and id slot are held for the build's
/// life: the executor keeps this value until the sandbox is gone.
#[derive(Debug)]
pub(crate) struct Prepared {
    /// The OCI runtime, found on PATH.
    pub runc: PathBuf,
    /// The container's options; only what depends on the bundle's path
    /// (the rootless overlay, the read-only clones) is added by the sandbox.
    pub spec: SpecOptions,
    /// Rootless: the sub-id ranges and runc's state dir.
    pub rootless: Option<Rootless>,
    /// The host paths the request may see, allowed by the operator.
    pub ro_paths: Vec<Allowed>,
    /// As root, the build's own cgroup (to read its usage after runc).
    pub cgroup: Option<Box<dyn BuildAccount>>,
    /// As root, the build's host ids, freed last.
    pub _ids: Option<BuildIds>,
}

impl Executor {
    /// Stage 1 for build `id` of `req`: fails, naming why, before anything
    /// is made on the host but the build's cgroup and id slot.
    pub(crate) fn prepare(&self, req: &BuildRequest, id: &str) -> Result<Prepared, BuildError> {
        host::check(req)?;
        let config = self.config();
        let ro_paths = crate::ro_paths::check(req, self.allowed_ro_paths(), &config.bundle_root)?;
        let runc = self.host().runtime.locate(&config.runtime)?;
        let mut spec = config.spec.clone();
        spec.sandbox_shell = config.sandbox_shell.clone();
        if spec.open_files.is_none() {
            spec.open_files = Some(host::open_files()?);
        }
        // /dev/shm: half of the RAM as in Nix, within the memory limit.
        if spec.shm_bytes.is_none() {
            spec.shm_bytes = spec
                .resources
                .memory_bytes
                .and_then(|m| u64::try_from(m).ok());
        }
        let rootless = match config.rootless {
            true => Some(self.rootless()?),
            false => None,
        };
        let (cgroup, ids) = match &rootless {
            Some(r) => {
                rootless_limits(&spec.resources)?;
                spec.rootless = true;
                spec.user_namespace = Some(tvix_oci_spec::IdMappings {
                    uid: r.uid_mappings.clone(),
                    gid: r.gid_mappings.clone(),
                });
                spec.cgroups_path = None;
                (None, None)
            }
            None => {
                let ids = self.host().ids.take()?;
                spec.user_namespace = Some(ids.mappings.clone());
                if let Some(root) = &ids.rootfs {
                    spec.rootfs = Some(root.clone());
                }
                // runc's cgroup is a child of the build's own, to read
                // the usage after runc removed its own.
                let cgroup = self.host().accounting.cgroup(id);
                spec.cgroups_path = Some(match &cgroup {
                    Some(cg) => cg.runc_path(),
                    None => PathBuf::from(format!("/{}/{id}", crate::cgroup::PARENT)),
                });
                (cgroup, Some(ids))
            }
        };
        Ok(Prepared {
            runc,
            spec,
            rootless,
            ro_paths,
            cgroup,
            _ids: ids,
        })
    }
}

/// A rootless build gets no cgroup, so it cannot have memory or CPU limits
/// (its pids limit is an rlimit, see `make_spec`).
pub(crate) fn rootless_limits(limits: &ResourceLimits) -> Result<(), BuildError> {
    if limits.memory_bytes.is_some() || limits.cpus.is_some() {
        return Err(HostError::RootlessLimits.into());
    }
    Ok(())
}
