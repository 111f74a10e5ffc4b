//! The causes behind [`BuildError`](crate::BuildError)'s classes that are
//! not the build's fault: [`HostError`] (this host cannot run the build
//! until its operator changes something), [`InfraError`] (a passing
//! failure of this machine, worth retrying) and [`StoreFault`] (the store
//! failed or hung under the build). Each variant says what failed, with
//! the path, runtime or source involved; the class is the enum, not the
//! wording, so callers decide on types and users read one sentence.

use std::io;
use std::path::PathBuf;

use crate::idpool::IdPoolError;

/// Why this host cannot run a build.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("the OCI runtime {} does not exist", .0.display())]
    RuntimeMissing(PathBuf),
    #[error("the OCI runtime {0:?} is not on PATH (install runc, e.g. apt-get install runc)")]
    RuntimeNotOnPath(PathBuf),
    /// The runtime's version is known to be unfit, or it did not say it.
    #[error("{0}")]
    RuntimeUnfit(String),
    #[error("the build is for {wanted}, this host is {host}")]
    System { wanted: String, host: String },
    #[error("the build needs {needed} bytes of memory, {available} are available")]
    Memory { needed: u64, available: u64 },
    #[error("reading the executor's open-files limit (RLIMIT_NOFILE): {0}")]
    OpenFiles(#[source] io::Error),
    #[error("running as uid {uid}, not root, builds run rootless, which needs: {}", .missing.join("; "))]
    Rootless { uid: u32, missing: Vec<String> },
    #[error(
        "memory and CPU limits need a cgroup, which a rootless build does not get; run as root or drop the limits"
    )]
    RootlessLimits,
    #[error(transparent)]
    IdPool(#[from] IdPoolError),
    #[error("creating the bundle under {}: {source}", .root.display())]
    Bundle {
        root: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the bundle root {} is not a directory of uid {me} (owner {owner}); choose another",
        .root.display()
    )]
    BundleRoot { root: PathBuf, me: u32, owner: u32 },
    #[error(transparent)]
    Skeleton(#[from] tvix_oci_spec::BundleError),
    #[error("making the blob cache {}: {source}", .dir.display())]
    BlobCache {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A host path of `constraints.available_ro_paths` cannot be given to
    /// the build as asked.
    #[error("constraints.available_ro_paths: {0}")]
    RoPath(String),
    #[error("binding {path} read-only at {}: {what}: {source}", .target.display())]
    RoBind {
        path: String,
        target: PathBuf,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A failure of this machine while it ran the build, worth retrying.
#[derive(Debug, thiserror::Error)]
pub enum InfraError {
    #[error("mounting the inputs: {0}")]
    MountInputs(#[source] tvix_oci_fuse::MountError),
    #[error("unmounting the inputs: {0}")]
    UnmountInputs(#[source] io::Error),
    #[error("mounting the inputs' kernel view: {0}")]
    MountView(#[source] tvix_oci_fuse::ViewUnavailable),
    #[error("unmounting the inputs' kernel view: {0}")]
    UnmountView(#[source] io::Error),
    /// Mounting or unmounting the overlay (its error names the path).
    #[error("{0}")]
    Overlay(#[source] io::Error),
    #[error("the FUSE connection of the inputs ended mid-build (aborted, or its daemon died)")]
    FuseGone,
    #[error("reading the mount table: {0}")]
    MountTable(#[source] io::Error),
    #[error("{what} for the build's log: {source}")]
    Log {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Reaper(String),
    #[error("starting {}: {source}", .runtime.display())]
    RuntimeStart {
        runtime: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("waiting for runc: {0}")]
    RuntimeWait(String),
    #[error("{} failed before starting the build ({status}): {said}", .runtime.display())]
    RuntimeFailed {
        runtime: PathBuf,
        status: std::process::ExitStatus,
        said: String,
    },
    #[error("the builder ended without a status")]
    NoStatus,
    #[error("waiting for a build slot: {0}")]
    Queue(#[source] tokio::sync::AcquireError),
    #[error("the sandbox was already run")]
    SandboxReused,
    #[error("output {output}: {msg}")]
    OutputName { output: String, msg: String },
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// What a fake host says its failing step did (tests).
    #[error("{0}")]
    Fake(String),
}

/// The store failed or hung serving the build.
#[derive(Debug, thiserror::Error)]
pub enum StoreFault {
    #[error("the store failed while the build read its inputs: {0}")]
    Inputs(String),
}
