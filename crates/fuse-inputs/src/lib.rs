//! Castore trees served lazily through FUSE: "mount these castore nodes
//! here". The root lists the named nodes; a directory is fetched on first
//! look, a blob on first open. Local blobs (the embedded store, or the
//! blob cache once a remote blob was fetched and checked) are opened with
//! FUSE passthrough where the kernel has it, so warm reads run at native
//! speed. For a store whose blobs are all local files, [`kernel_view`]
//! shows the same tree with no daemon at all (cached trees of hard links
//! to the blob files, mounted read-only).
//!
//! ```no_run
//! # async fn f(blobs: std::sync::Arc<dyn tvix_oci_castore::blobservice::BlobService>,
//! #            dirs: std::sync::Arc<dyn tvix_oci_castore::directoryservice::DirectoryService>,
//! #            inputs: Vec<(tvix_oci_castore::PathComponent, tvix_oci_castore::Node)>)
//! #            -> Result<(), Box<dyn std::error::Error>> {
//! use tvix_oci_fuse::{mount, MountOptions};
//! let m = mount(blobs, dirs, inputs, "/tmp/inputs".as_ref(), &MountOptions::default())?;
//! // … read /tmp/inputs/<name>/… …
//! m.unmount()?; // or just drop it
//! # Ok(()) }
//! ```

mod backing;
mod cache;
mod fetch;
mod fetch_stream;
mod files;
mod fs;
pub mod handlers;
mod inodes;
pub mod kernel_view;
mod learned;
mod mount;
mod opens;
/// The mount table (kept here for the crates and tests that read it
/// through this crate).
pub use tvix_oci_sys::mountinfo;
mod prefetch;
mod reader;
mod stats;
mod stream;

pub use cache::BlobCache;
pub use inodes::InodeError;
pub use kernel_view::{KernelView, MAX_CLONED_TREES, ViewCache, ViewPlan, ViewUnavailable};
pub use learned::{MAX_PROFILE_BLOBS, ReadProfile};
pub use mount::{
    FSNAME, InputsMount, MountError, MountOptions, abort_connection, detach, mount,
    private_cache_root,
};
pub use stats::StatsSnapshot;
