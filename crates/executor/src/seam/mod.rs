//! The host seam: everything a build does to the host beyond its own
//! bundle directory, behind four small traits — the OCI [`Runtime`] (runc),
//! the [`Mounts`] (the inputs through FUSE, the overlay), the
//! [`Accounting`] of a build (its cgroup) and the [`Ids`] it runs as (a
//! slot of the build id pool). [`Host::linux`] is the real host; with the
//! `fake-host` feature (and in this crate's tests), `fake::FakeHost`
//! records every call and can be told to fail any of them or to write
//! outputs, so the pipeline's decisions run on any machine, without root,
//! runc or FUSE.
//!
//! Each handle a trait returns is a guard: dropping it undoes what made it
//! (unmounts, removes the cgroup, frees the ids), so the pipeline's
//! teardown order stays the order of its fields.

use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tvix_oci_castore::blobservice::BlobService;
use tvix_oci_castore::directoryservice::DirectoryService;
use tvix_oci_castore::{Node, PathComponent};
use tvix_oci_fuse::{MountOptions, StatsSnapshot, ViewPlan};
use tvix_oci_spec::IdMappings;

use crate::BuildError;
use crate::cgroup::Usage;
use crate::logs::LogSink;
use crate::runc::{Process, RunLimits, RunOutcome};

#[cfg(any(test, feature = "fake-host"))]
pub mod fake;
mod linux;

/// The real host, or a fake one: what the executor builds on.
#[derive(Clone, Debug)]
pub struct Host {
    pub runtime: Arc<dyn Runtime>,
    pub mounts: Arc<dyn Mounts>,
    pub accounting: Arc<dyn Accounting>,
    pub ids: Arc<dyn Ids>,
}

/// One run of a container: what [`Runtime::run`] needs.
pub struct RunCall<'a> {
    /// The runtime, as [`Runtime::locate`] found it.
    pub runtime: &'a Path,
    /// The runtime's state dir (`--root`), when not its default.
    pub state_root: Option<&'a Path>,
    /// The container's id (the build's).
    pub id: &'a str,
    /// The bundle directory, its `config.json` written.
    pub bundle: &'a Path,
    pub logs: &'a dyn LogSink,
    pub limits: RunLimits,
    pub process: Process<'a>,
    /// Called just before a limit's kill (the executor aborts the inputs'
    /// FUSE connection there).
    pub on_stop: &'a (dyn Fn() + Sync),
}

impl Debug for RunCall<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunCall")
            .field("runtime", &self.runtime)
            .field("id", &self.id)
            .field("bundle", &self.bundle)
            .field("process", &self.process)
            .finish_non_exhaustive()
    }
}

/// The OCI runtime.
#[async_trait::async_trait]
pub trait Runtime: Send + Sync + Debug {
    /// The runtime `configured` names (a path, or a name on `PATH`), found
    /// and judged fit to run builds; errors say what to install or change.
    fn locate(&self, configured: &Path) -> Result<PathBuf, BuildError>;

    /// Runs the container to its end. Contract: when this returns, or its
    /// future is dropped, the container is gone (deleted, its processes
    /// killed); when dropped, `on_stop` is called before the container is
    /// deleted (so a builder blocked on the inputs dies at once). The build's own failures (exit code, signal, a limit) are
    /// its errors, as [`crate::runc::run`] says them.
    async fn run(&self, call: RunCall<'_>) -> Result<RunOutcome, BuildError>;
}

/// A mount of the sandbox. Dropping it unmounts (detaching when busy);
/// [`Mounted::unmount`] says whether that worked.
pub trait Mounted: Send + Sync + Debug {
    fn unmount(self: Box<Self>) -> Result<(), BuildError>;
}

/// What [`InputsMounted::settle`] returns.
pub type Settling<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;

/// The inputs' FUSE mount, and what its daemon saw.
pub trait InputsMounted: Mounted {
    /// Aborts the connection: readers get ENOTCONN, nothing waits on the
    /// store any more.
    fn abort(&self);
    /// Whether the daemon still serves (false once aborted or dead).
    fn is_serving(&self) -> bool;
    /// Resolves once every blob served to the build before it was
    /// verified (a big blob read as it arrived) has been checked, so
    /// [`Self::store_trouble`] tells of a corrupt one.
    fn settle(&self) -> Settling<'_>;
    /// The first store call that failed, or the oldest pending for at
    /// least `stalled`.
    fn store_trouble(&self, stalled: Duration) -> Option<String>;
    /// What the daemon fetched and served so far.
    fn stats(&self) -> StatsSnapshot;
    /// The blobs readers used (when recorded) and what was prefetched.
    fn read_profile(&self) -> tvix_oci_fuse::ReadProfile;
    /// This mount as a plain [`Mounted`], to unmount it.
    fn into_mounted(self: Box<Self>) -> Box<dyn Mounted>;
}

/// The stores and the inputs a FUSE mount serves.
pub struct InputsCall<'a> {
    pub blobs: Arc<dyn BlobService>,
    pub dirs: Arc<dyn DirectoryService>,
    pub inputs: Vec<(PathComponent, Node)>,
    /// An existing empty directory.
    pub at: &'a Path,
    pub options: &'a MountOptions,
}

impl Debug for InputsCall<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InputsCall")
            .field("inputs", &self.inputs.len())
            .field("at", &self.at)
            .finish_non_exhaustive()
    }
}

/// A kernel view of the inputs, ready to mount.
#[derive(Clone, Copy, Debug)]
pub struct ViewCall<'a> {
    pub plan: &'a ViewPlan,
    /// Where it goes read-only (an existing empty directory).
    pub at: &'a Path,
    /// Where the store dir is writable: the overlay it is mounted as
    /// instead (at the overlay's target, its lower layers the view's),
    /// so the caller mounts none.
    pub overlay: Option<OverlayCall<'a>>,
}

/// The overlay's directories.
#[derive(Clone, Copy, Debug)]
pub struct OverlayCall<'a> {
    pub lower: &'a Path,
    pub upper: &'a Path,
    pub work: &'a Path,
    pub target: &'a Path,
}

/// Mounting the sandbox's file systems.
pub trait Mounts: Send + Sync + Debug {
    /// Mounts the inputs lazily (must be called within a tokio runtime).
    fn inputs(&self, call: InputsCall<'_>) -> Result<Box<dyn InputsMounted>, BuildError>;
    /// Mounts the inputs as a kernel view (no daemon: nothing to abort,
    /// settle or count), as the writable overlay too when the call has
    /// one. An error is the view's alone: the caller may mount them
    /// through FUSE instead.
    fn view(&self, call: ViewCall<'_>) -> Result<Box<dyn InputsMounted>, BuildError>;
    /// Mounts the overlay that makes the inputs dir writable.
    fn overlay(&self, call: OverlayCall<'_>) -> Result<Box<dyn Mounted>, BuildError>;
}

/// A build's cgroup, removed when dropped.
pub trait BuildAccount: Send + Sync + Debug {
    /// The path runc puts the container's own cgroup at (below this one).
    fn runc_path(&self) -> PathBuf;
    /// What the build used so far.
    fn usage(&self) -> Usage;
}

/// What a build's resources are counted and limited in.
pub trait Accounting: Send + Sync + Debug {
    /// Build `id`'s own cgroup; `None` where the host gives none (its
    /// limits then go to runc's cgroup, and no usage is read).
    fn cgroup(&self, id: &str) -> Option<Box<dyn BuildAccount>>;
}

/// The host ids a build runs as, held until dropped.
#[derive(Debug)]
pub struct BuildIds {
    pub mappings: IdMappings,
    /// Where the build's root skeleton goes (the slot's own), if not the
    /// bundle's.
    pub rootfs: Option<PathBuf>,
    /// What holds the ids (freed when dropped).
    pub held: Box<dyn Debug + Send + Sync>,
}

/// The ids builds run as (as root; rootless builds map their own).
pub trait Ids: Send + Sync + Debug {
    /// Checks the ids are the build's alone (no account of the host among
    /// them), without taking any.
    fn check(&self) -> Result<(), BuildError>;
    /// Takes free ids for one build.
    fn take(&self) -> Result<BuildIds, BuildError>;
}

impl Host {
    /// The real host: runc, FUSE and overlayfs mounts, cgroup v2 and the
    /// build id pool as `config` sets them.
    pub fn linux(config: &crate::ExecutorConfig) -> Self {
        linux::host(config)
    }
}
