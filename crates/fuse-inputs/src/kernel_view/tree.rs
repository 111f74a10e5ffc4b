//! A kernel view's tree, written to disk: a castore directory as real
//! directories and symlinks, and each file a hard link to its blob's file
//! ([`super::blobs`]). Everything has the attributes the FUSE view shows:
//! root's, mode 0444/0555 (0555 for directories), mtime 1 s after the
//! epoch, as in the Nix store.
//!
//! Written with plain file system calls, no daemon and no image format:
//! mounted, the kernel answers every lookup, stat, open and read as for
//! any directory of its own.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, FileTimes, Permissions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tvix_oci_castore::{B3Digest, Directory, Node};
use xattr::FileExt;

use super::ViewUnavailable;
use super::blobs::{BlobFiles, MTIME_SECS};

const REDIRECT: &str = "trusted.overlay.redirect";

fn at<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(io::Error) -> ViewUnavailable + 'a {
    super::io_at(what, path)
}

/// Gives `path` (opened as `f`) the view's times and `mode`.
fn finish(f: &File, path: &Path, mode: u32) -> Result<(), ViewUnavailable> {
    f.set_permissions(Permissions::from_mode(mode))
        .map_err(at(path, "setting the mode of"))?;
    let t: SystemTime = UNIX_EPOCH + Duration::from_secs(MTIME_SECS);
    f.set_times(FileTimes::new().set_accessed(t).set_modified(t))
        .map_err(at(path, "setting the times of"))
}

/// Writes a directory at `path` standing for the castore directory whose
/// redirect is `redirect` (an absolute path in a lower layer), empty.
pub(crate) fn redirect_dir(path: &Path, redirect: &[u8]) -> Result<(), ViewUnavailable> {
    std::fs::create_dir(path).map_err(at(path, "creating"))?;
    let f = File::open(path).map_err(at(path, "opening"))?;
    f.set_xattr(REDIRECT, redirect)
        .map_err(at(path, "setting the overlay redirect of"))?;
    finish(&f, path, 0o555)
}

/// Writes an empty directory at `path` (a mount point).
pub(crate) fn empty_dir(path: &Path) -> Result<(), ViewUnavailable> {
    std::fs::create_dir(path).map_err(at(path, "creating"))?;
    seal_dir(path)
}

/// Writes blob `digest`'s file at `path` (a hard link to it).
pub(crate) fn file(
    blobs: &BlobFiles,
    path: &Path,
    digest: &B3Digest,
    size: u64,
    executable: bool,
) -> Result<(), ViewUnavailable> {
    blobs.place(digest, size, executable, path)
}

/// Writes a symlink to `target` at `path`, with the view's times.
pub(crate) fn symlink(path: &Path, target: &[u8]) -> Result<(), ViewUnavailable> {
    std::os::unix::fs::symlink(OsStr::from_bytes(target), path).map_err(at(path, "creating"))?;
    let t = nix::sys::time::TimeSpec::from_duration(Duration::from_secs(MTIME_SECS));
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| at(path, "setting the times of")(e.into()))
}

/// Sets a directory's final mode and times once its entries are written.
pub(crate) fn seal_dir(path: &Path) -> Result<(), ViewUnavailable> {
    let f = File::open(path).map_err(at(path, "opening"))?;
    finish(&f, path, 0o555)
}

/// Writes out everything of the file system `path` is on (`syncfs`).
pub(crate) fn sync_fs(path: &Path) -> Result<(), ViewUnavailable> {
    let f = File::open(path).map_err(at(path, "opening"))?;
    // SAFETY: `f` is an open descriptor for the call's duration.
    match unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&f)) } {
        0 => Ok(()),
        _ => Err(at(path, "syncing the file system of")(
            io::Error::last_os_error(),
        )),
    }
}

/// What a tree walk does next.
enum Step {
    Enter(PathBuf, B3Digest),
    Seal(PathBuf),
}

/// Writes the castore directory `root` (found, with everything below it,
/// in `closure`) at `dest`, which must not exist. At most `max_entries`
/// entries are written (a directory met twice is written twice): past
/// that, [`ViewUnavailable::TooLarge`]. Stops when `cancel` is set.
/// Iterative, so no tree is too deep for the stack (one too deep for
/// `PATH_MAX` fails as IO).
pub(crate) fn write_tree(
    closure: &HashMap<B3Digest, Directory>,
    root: B3Digest,
    dest: &Path,
    blobs: &BlobFiles,
    max_entries: u64,
    cancel: &AtomicBool,
) -> Result<u64, ViewUnavailable> {
    let mut written = 0u64;
    let mut steps = vec![Step::Enter(dest.to_owned(), root)];
    while let Some(step) = steps.pop() {
        let (path, digest) = match step {
            Step::Seal(path) => {
                seal_dir(&path)?;
                continue;
            }
            Step::Enter(path, digest) => (path, digest),
        };
        let dir = closure
            .get(&digest)
            .ok_or(ViewUnavailable::MissingDirectory(digest))?;
        std::fs::create_dir(&path).map_err(at(&path, "creating"))?;
        steps.push(Step::Seal(path.clone()));
        for (name, node) in dir.nodes() {
            written += 1;
            if written.is_multiple_of(1024) && cancel.load(Ordering::Relaxed) {
                return Err(ViewUnavailable::Cancelled);
            }
            if written > max_entries {
                return Err(ViewUnavailable::TooLarge {
                    root,
                    max: max_entries,
                });
            }
            let child = path.join(OsStr::from_bytes(name.as_bytes()));
            match node {
                Node::Directory { digest, .. } => steps.push(Step::Enter(child, *digest)),
                Node::File {
                    digest,
                    size,
                    executable,
                } => file(blobs, &child, digest, *size, *executable)?,
                Node::Symlink { target } => symlink(&child, target.as_bytes())?,
            }
        }
    }
    Ok(written)
}
