//! Mounting and unmounting, through `nix`: a filesystem with its options,
//! an unmount that detaches what is busy (never left behind), and a lazy
//! detach of a whole tree; and read-only clones of a mount tree attached
//! elsewhere (the new mount API).

use std::ffi::{CString, c_uint};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
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

/// A detached copy of the mount tree at `path`, every mount below it
/// included (`open_tree(OPEN_TREE_CLONE|AT_RECURSIVE)`; a path that is
/// not a mount point is cloned as a bind mount of it). It is gone when
/// the descriptor is closed unless [`attach`]ed. The error names the path.
pub fn clone_tree(path: &Path) -> io::Result<OwnedFd> {
    let p = cstring(path)?;
    let flags = libc::OPEN_TREE_CLONE
        | libc::OPEN_TREE_CLOEXEC
        | libc::AT_RECURSIVE as c_uint
        | libc::AT_SYMLINK_NOFOLLOW as c_uint;
    // SAFETY: p is a valid C string; the kernel returns a new fd or -1.
    let fd =
        check_rc(unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, p.as_ptr(), flags) })
            .map_err(|e| named(e, "cloning the mount tree at", path))?;
    // SAFETY: fd is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// Makes every mount of `tree` (from [`clone_tree`]) read-only, `nosuid`,
/// `nodev` (unless `device`) and private (`mount_setattr(AT_RECURSIVE)`).
pub fn set_read_only(tree: &OwnedFd, device: bool) -> io::Result<()> {
    let mut set = libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOSUID;
    if !device {
        set |= libc::MOUNT_ATTR_NODEV;
    }
    // c_ulong is 32 bits on some targets.
    #[allow(clippy::unnecessary_cast)]
    let attr = libc::mount_attr {
        attr_set: set,
        attr_clr: 0,
        propagation: libc::MS_PRIVATE as u64,
        userns_fd: 0,
    };
    // SAFETY: attr lives across the call and its size is passed.
    check_rc(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_RECURSIVE,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    })
    .map(drop)
}

/// Attaches `tree` (from [`clone_tree`]) at `target` (`move_mount`). The
/// error names the target.
pub fn attach(tree: &OwnedFd, target: &Path) -> io::Result<()> {
    let t = cstring(target)?;
    // SAFETY: t is a valid C string, tree an open_tree fd.
    check_rc(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    })
    .map(drop)
    .map_err(|e| named(e, "attaching a mount at", target))
}

fn cstring(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|e| named(io::Error::other(e), "the path", p))
}

fn check_rc(rc: libc::c_long) -> io::Result<libc::c_long> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn named(e: io::Error, what: &str, p: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", p.display()))
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
