//! The overlay that makes the inputs dir writable: lower = the FUSE inputs,
//! upper = `outputs/upper`. An [`Overlay`] unmounts on drop.

use std::io;
use std::path::{Path, PathBuf};

use tracing::warn;
use tvix_oci_sys::mount::MsFlags;

/// A mounted overlay.
#[derive(Debug)]
pub struct Overlay {
    target: Option<PathBuf>,
}

impl Overlay {
    /// Mounts `lower` + `upper` (with `work`) at `target`.
    pub fn mount(lower: &Path, upper: &Path, work: &Path, target: &Path) -> io::Result<Self> {
        // userxattr-free, metacopy off: upper-layer contents are plain files
        // we ingest; index and redirect_dir off keep the upper layer simple.
        let opts = format!(
            "lowerdir={},upperdir={},workdir={},index=off,metacopy=off,redirect_dir=off",
            lower.display(),
            upper.display(),
            work.display()
        );
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        tvix_oci_sys::mount::mount("overlay", target, "overlay", flags, Some(&opts))?;
        Ok(Self {
            target: Some(target.to_owned()),
        })
    }

    /// Unmounts (lazily if busy).
    pub fn unmount(mut self) -> io::Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> io::Result<()> {
        let Some(t) = self.target.take() else {
            return Ok(());
        };
        if tvix_oci_sys::mount::unmount_or_detach(&t)? {
            warn!(path = %t.display(), "overlay busy; detached");
        }
        Ok(())
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            warn!("{e}");
        }
    }
}
