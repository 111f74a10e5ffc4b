//! Mounting and unmounting, through `nix`: a filesystem with its options,
//! an unmount that detaches what is busy (never left behind), and a lazy
//! detach of a whole tree.

use std::io;
use std::path::Path;

pub use nix::mount::MsFlags;

/// A mount call that failed: what it tried (naming the path) and the
/// system's answer, its errno kept.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct MountError {
    pub what: String,
    #[source]
    pub source: io::Error,
}

impl MountError {
    /// The errno of the failed call.
    pub fn raw_os_error(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

impl From<MountError> for io::Error {
    fn from(e: MountError) -> Self {
        io::Error::new(e.source.kind(), e)
    }
}

fn io_err(what: String, e: nix::errno::Errno) -> MountError {
    MountError {
        what,
        source: io::Error::from(e),
    }
}

/// Mounts `fstype` from `source` at `target` with `flags` and the
/// filesystem's `data` options. The error names the target.
pub fn mount(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), MountError> {
    nix::mount::mount(Some(source), target, Some(fstype), flags, data)
        .map_err(|e| io_err(format!("mounting {fstype} at {}", target.display()), e))
}

/// Unmounts `target`; when it is busy, detaches it instead (gone from the
/// tree at once, freed when its last user lets go). Returns whether it had
/// to detach. The error names the target.
pub fn unmount_or_detach(target: &Path) -> Result<bool, MountError> {
    use nix::mount::{MntFlags, umount2};
    let Err(first) = umount2(target, MntFlags::empty()) else {
        return Ok(false);
    };
    match umount2(target, MntFlags::MNT_DETACH) {
        Ok(()) => Ok(true),
        Err(_) => Err(io_err(format!("unmounting {}", target.display()), first)),
    }
}

/// Detaches `target` with every mount below it (`MNT_DETACH`).
pub fn detach(target: &Path) -> Result<(), MountError> {
    nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH)
        .map_err(|e| io_err(format!("detaching {}", target.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_target() {
        let missing = Path::new("/nonexistent/tvix-oci-sys-test");
        let e = unmount_or_detach(missing).unwrap_err();
        assert!(
            e.to_string().contains("/nonexistent/tvix-oci-sys-test"),
            "{e}"
        );
        let e = detach(missing).unwrap_err();
        assert!(e.to_string().starts_with("detaching /nonexistent/"), "{e}");
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}");
        let e = mount("none", missing, "tmpfs", MsFlags::empty(), None).unwrap_err();
        assert!(
            e.to_string().starts_with("mounting tmpfs at /nonexistent/"),
            "{e}"
        );
    }
}
