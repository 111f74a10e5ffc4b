//! Stage 2, [`Sandbox`]: what one build's container runs in — its bundle
//! directory and skeleton, the host paths it may read (cloned read-only),
//! the inputs mounted lazily through FUSE and the overlay that makes the
//! inputs dir writable. The fields are declared in teardown order (Rust
//! drops them first to last): the mounts go before the bundle they are in.

use std::sync::Arc;

use tracing::{debug, info, warn};
use tvix_oci_castore::B3Digest;
use tvix_oci_fuse::{BlobCache, MountOptions, ViewPlan, ViewUnavailable};
use tvix_oci_spec::{BuildRequest, BundleLayout};

use crate::bundle_dir::BundleDir;
use crate::faults::HostError;
use crate::profiles::{Profile, profile_key};
use crate::ro_paths::RoClones;
use crate::seam::{InputsCall, InputsMounted, Mounted, OverlayCall, ViewCall};
use crate::{BuildError, Executor};

use super::Prepared;

/// Remote input blobs of at least this many bytes are served to the build
/// as they arrive (`MountOptions::stream_from`).
const STREAM_FROM: u64 = 1 << 20;

/// The mounts of a running build, torn down after its container: the
/// overlay, then the inputs under it (a kernel view where the store dir is
/// writable is both: `inputs`, mounted as the overlay).
#[derive(Debug)]
pub(crate) struct Mounts {
    pub overlay: Option<Box<dyn Mounted>>,
    pub inputs: Box<dyn InputsMounted>,
    /// With learned prefetch: the build's shape and the profile it was
    /// given.
    pub profile: Option<(B3Digest, Profile)>,
}

/// The inputs mounted through FUSE, and the prefetch profile they were
/// given (build shape, profile).
type FuseInputs = (Box<dyn InputsMounted>, Option<(B3Digest, Profile)>);

/// A build's bundle with everything mounted in it.
#[derive(Debug)]
pub(crate) struct Sandbox {
    /// Taken by [`Sandbox::run`], which unmounts them once the container is
    /// gone; dropped here only when the build stops before that.
    pub mounts: Option<Mounts>,
    /// The host paths bound read-only, detached before the bundle goes.
    pub _ro_clones: RoClones,
    pub layout: BundleLayout,
    /// Removed last, once nothing is mounted below it.
    pub bundle: BundleDir,
}

impl Sandbox {
    /// Stage 2: makes build `id`'s bundle under the executor's bundle root,
    /// finishing `prepared.spec` with what depends on its path, and mounts
    /// the inputs (as `view` when there is one and it mounts, else through
    /// FUSE) and the overlay. On failure, what was made is removed.
    pub(crate) fn create(
        exec: &Executor,
        prepared: &mut Prepared,
        req: &BuildRequest,
        id: &str,
        view: Option<ViewPlan>,
    ) -> Result<Self, BuildError> {
        let config = exec.config();
        let mut bundle = BundleDir::create(&config.bundle_root, id, config.keep_bundle)?;
        let layout = BundleLayout::new(bundle.path());
        let spec = &mut prepared.spec;
        let ro_clones = match &prepared.rootless {
            Some(r) => {
                bundle.set_rootless(r.clone());
                spec.overlay_in_container = Some(bundle.path().to_owned());
                spec.ro_mounts = crate::ro_paths::rootless_mounts(&prepared.ro_paths)?;
                RoClones::default()
            }
            None => {
                let (clones, mounts) = RoClones::attach(&layout, &prepared.ro_paths)?;
                spec.ro_mounts = mounts;
                clones
            }
        };
        layout
            .write_skeleton(req, spec)
            .map_err(HostError::Skeleton)?;
        let mut sandbox = Self {
            mounts: None,
            _ro_clones: ro_clones,
            layout,
            bundle,
        };
        sandbox.mounts = Some(sandbox.mount(exec, req, prepared.rootless.is_some(), view)?);
        Ok(sandbox)
    }

    /// Mounts the inputs at `inputs/` and, as root when the inputs dir is
    /// writable, the overlay over them at `store/` (rootless, the
    /// container mounts it itself).
    fn mount(
        &self,
        exec: &Executor,
        req: &BuildRequest,
        rootless: bool,
        view: Option<ViewPlan>,
    ) -> Result<Mounts, BuildError> {
        let l = &self.layout;
        let mounts = &exec.host().mounts;
        let writable = req.inputs_dir_is_scratch() && !rootless;
        let overlay_call = OverlayCall {
            lower: &l.inputs(),
            upper: &l.upper(),
            work: &l.work(),
            target: &l.store(),
        };
        let viewed = view.and_then(|plan| {
            let call = ViewCall {
                plan: &plan,
                at: &l.inputs(),
                overlay: writable.then_some(overlay_call),
            };
            mounts
                .view(call)
                .inspect_err(|e| warn!("the inputs go through FUSE: {e}"))
                .ok()
        });
        // A kernel view is the writable overlay itself where there is one.
        let (inputs, profile, overlay) = match viewed {
            Some(v) => {
                debug!("the inputs are a kernel view");
                (v, None, None)
            }
            None => {
                let (inputs, profile) = self.mount_fuse(exec, req)?;
                let overlay = match writable {
                    true => Some(mounts.overlay(overlay_call)?),
                    false => None,
                };
                (inputs, profile, overlay)
            }
        };
        Ok(Mounts {
            overlay,
            inputs,
            profile,
        })
    }

    /// The inputs through FUSE, with the profile of learned prefetch when
    /// it is on.
    fn mount_fuse(&self, exec: &Executor, req: &BuildRequest) -> Result<FuseInputs, BuildError> {
        // Without a shared cache, the build's own lives in its bundle, so
        // it goes with the bundle, even after a crash (the stale cleanup).
        let cache = match &exec.config().blob_cache {
            Some(c) => c.clone(),
            None => {
                let dir = self.bundle.path().join("blob-cache");
                let cache = BlobCache::open(&dir, u64::MAX)
                    .map_err(|source| HostError::BlobCache { dir, source })?;
                Arc::new(cache)
            }
        };
        // Passthrough, not no-open: each build gets a new mount, whose
        // first reads no-open would copy through the daemon (and cache a
        // second time); passthrough reads the blob cache's files at native
        // speed from the first byte (BENCHMARKS.md, issue 19).
        // Big remote blobs are read as they arrive; the run settles before
        // the build is judged, so a corrupt one is the store's fault.
        let mut mount_opts = MountOptions {
            cache: Some(cache),
            no_open: false,
            stream_from: STREAM_FROM,
            ..MountOptions::default()
        };
        let profile = exec.config().prefetch_profiles.as_ref().map(|store| {
            let key = profile_key(req);
            let profile = store.load(&key);
            mount_opts.record_reads = true;
            mount_opts.prefetch_blobs = profile.clone();
            (key, profile)
        });
        let (blobs, dirs) = exec.stores();
        let inputs = exec.host().mounts.inputs(InputsCall {
            blobs,
            dirs,
            inputs: req.inputs().to_vec(),
            at: &self.layout.inputs(),
            options: &mount_opts,
        })?;
        Ok((inputs, profile))
    }
}

/// The kernel view of `req`'s inputs, its trees written, when the executor
/// has a view cache and the build runs as root; `None` (the build then
/// gets FUSE) when it cannot be made, saying why where that is news.
pub(crate) async fn plan_view(
    exec: &Executor,
    req: &BuildRequest,
    rootless: bool,
) -> Option<ViewPlan> {
    let cache = exec.config().kernel_view.as_ref()?;
    if rootless {
        return None;
    }
    let (blobs, dirs) = exec.stores();
    match cache.plan(blobs, &*dirs, req.inputs()).await {
        Ok(plan) => Some(plan),
        // The usual reasons: a remote store, or a cache elsewhere.
        Err(e @ (ViewUnavailable::NoLocalFiles | ViewUnavailable::OtherFileSystem { .. })) => {
            debug!("the inputs go through FUSE: {e}");
            None
        }
        Err(e) => {
            info!("the inputs go through FUSE: {e}");
            None
        }
    }
}
