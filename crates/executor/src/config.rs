//! [`ExecutorConfig`]: what the user of an executor sets. Its default does
//! no IO (one build at a time, as root, no sandbox shell); what this host
//! offers — its cores, the account it runs as, a static busybox — is
//! filled in by an explicit [`ExecutorConfig::probed`]. What the host can
//! run is checked by the executor when it builds (or
//! `Executor::check_host`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tvix_oci_fuse::{BlobCache, ViewCache};
use tvix_oci_spec::SpecOptions;

use crate::idpool::IdPoolConfig;
use crate::ingest::IngestLimits;

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
    /// Builds that may wait for a slot at once; one more is refused at
    /// once as [`BuildError::Busy`](crate::BuildError::Busy) (gRPC
    /// `RESOURCE_EXHAUSTED`), so a load balancer can send it elsewhere.
    /// `None`: no bound.
    pub max_queued: Option<usize>,
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
    /// Learned prefetch ([`crate::profiles`]): each build's inputs read are
    /// kept here under its shape, and fetched at mount time by the next
    /// build of that shape. `None` (the default): off.
    pub prefetch_profiles: Option<crate::profiles::ProfileStore>,
    /// The kernel view of the inputs ([`tvix_oci_fuse::kernel_view`]): with
    /// a cache for its trees (on the blob store's file system), a build
    /// whose input blobs are all local files (the embedded `objects://`
    /// store) as root sees its inputs as hard-linked trees, no FUSE
    /// daemon, at native speed once its trees are written; any other build, or one whose view
    /// cannot be made, gets FUSE. `None` (the default): always FUSE.
    pub kernel_view: Option<Arc<ViewCache>>,
    /// Resource limits and the like for the container.
    pub spec: SpecOptions,
    /// Run builds rootless (see [`crate::rootless`]); probed: when the
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

impl ExecutorConfig {
    /// The default, with what this host offers filled in: as many build
    /// slots as cores, rootless unless root (bundles then in the user's
    /// runtime dir), and a static busybox as the sandbox shell where one
    /// is installed.
    pub fn probed() -> Self {
        let rootless = !tvix_oci_sys::process::is_root();
        Self {
            bundle_root: crate::rootless::default_bundle_root(),
            sandbox_shell: ["/bin/busybox", "/usr/bin/busybox"]
                .iter()
                .map(PathBuf::from)
                .find(|p| p.is_file()),
            concurrency: std::thread::available_parallelism().map_or(1, |n| n.get()),
            rootless,
            ..Self::default()
        }
    }
}

impl Default for ExecutorConfig {
    /// One build at a time, as root, bundles in root's default bundle
    /// root, no sandbox shell: nothing probed (see
    /// [`ExecutorConfig::probed`]).
    fn default() -> Self {
        Self {
            bundle_root: std::env::temp_dir().join("tvix-oci-build"),
            runtime: PathBuf::from("runc"),
            sandbox_shell: None,
            concurrency: 1,
            max_queued: None,
            keep_bundle: false,
            timeout: None,
            max_silent_time: None,
            log_limit: 100 << 20,
            ingest_limits: IngestLimits::default(),
            blob_cache: None,
            prefetch_profiles: None,
            kernel_view: None,
            spec: SpecOptions::default(),
            rootless: false,
            allowed_ro_paths: Vec::new(),
            id_pool: IdPoolConfig::default(),
        }
    }
}
