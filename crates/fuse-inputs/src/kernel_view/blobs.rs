//! The files a kernel view's trees link to: each blob as an inode with
//! the attributes the FUSE view gives it (root's, mode 0444 or 0555,
//! mtime 1 s), so a tree's file can be a plain hard link and the kernel
//! reads it with no layer in between.
//!
//! A blob not executable is the store's own file (the embedded store
//! writes blobs 0444, mtime 1; one written before that gets its mode and
//! mtime set here, its bytes never changed). An executable one, or one
//! whose store file is not root's (another account could change it), is
//! a copy in `<cache>/data`, checked against its digest as it is made. A
//! file linked as often as the file system allows (65,000 links on ext4:
//! an empty file, a license met in every package) gets a shared copy of
//! its own for the next 65,000 entries, and so on.
//!
//! The store's file is opened without following a symlink, checked on the
//! open handle, and linked from that handle (`linkat(AT_EMPTY_PATH)`): a
//! path swapped meanwhile links nothing else.

use std::ffi::CString;
use std::fs::{File, FileTimes, Permissions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use tvix_oci_castore::B3Digest;
use tvix_oci_castore::blobservice::BlobService;

use super::{ViewUnavailable, io_at};

/// The mtime of everything in the view, as in the Nix store: 1 s.
pub(crate) const MTIME_SECS: u64 = 1;

/// The kind (see `tvix_oci_castore::tempfiles`) of the scratch dirs
/// copies are written in.
pub(crate) const COPY: &str = "copy";

/// Shared copies of one blob at most (each takes the file system's link
/// limit of entries): past that, the view is refused.
const MAX_SHARED_COPIES: u32 = 64;

/// The blob store's files, and the cache's copies of them.
#[derive(Clone, Debug)]
pub(crate) struct BlobFiles {
    pub(crate) blobs: Arc<dyn BlobService>,
    /// The copies' directory, `<cache>/data`.
    pub(crate) copies: PathBuf,
    /// Where copies are written before they are renamed into place.
    pub(crate) tmp: PathBuf,
}

/// The view's mode of a file.
pub(crate) fn file_mode(executable: bool) -> u32 {
    if executable { 0o555 } else { 0o444 }
}

/// Whether `m` already has the view's attributes for a file of `mode`.
fn has_view_attrs(m: &std::fs::Metadata, mode: u32) -> bool {
    m.uid() == 0
        && m.gid() == 0
        && m.mode() & 0o7777 == mode
        && m.mtime() == MTIME_SECS as i64
        && m.mtime_nsec() == 0
}

/// Gives the open file `f` (at `path`) the view's attributes for `mode`.
fn set_view_attrs(f: &File, path: &Path, mode: u32) -> Result<(), ViewUnavailable> {
    f.set_permissions(Permissions::from_mode(mode))
        .map_err(io_at("setting the mode of", path))?;
    let t = UNIX_EPOCH + Duration::from_secs(MTIME_SECS);
    f.set_times(FileTimes::new().set_accessed(t).set_modified(t))
        .map_err(io_at("setting the times of", path))
}

/// Opens `path` for reading if it is a regular file, never following a
/// symlink; `None` if it is not there or not a regular file.
fn open_file(path: &Path) -> Option<(File, std::fs::Metadata)> {
    let f = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .ok()?;
    let m = f.metadata().ok()?;
    m.is_file().then_some((f, m))
}

/// Links the open file `f` at `dest` (the inode itself, whatever its path
/// is now).
fn link_fd(f: &File, dest: &Path) -> io::Result<()> {
    let d = CString::new(dest.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: `d` is a valid C string and `f` an open descriptor; the
    // empty old path with AT_EMPTY_PATH names the descriptor's inode.
    let rc = unsafe {
        libc::linkat(
            f.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            d.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    match rc {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

impl BlobFiles {
    /// Places blob `digest` (`size` bytes) at `dest`, which must not
    /// exist: a hard link to the file that stands for it (see the module
    /// docs), made first if need be.
    pub(crate) fn place(
        &self,
        digest: &B3Digest,
        size: u64,
        executable: bool,
        dest: &Path,
    ) -> Result<(), ViewUnavailable> {
        let (store, f, stands) = self.store_file(digest, size, executable)?;
        if stands {
            match link_fd(&f, dest) {
                Ok(()) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EMLINK) => {}
                Err(e) => return Err(link_error(dest, &store, e)),
            }
        }
        for n in 0..MAX_SHARED_COPIES {
            let (copy, c) = self.shared_copy(&f, digest, size, executable, n)?;
            match link_fd(&c, dest) {
                Ok(()) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EMLINK) => continue,
                Err(e) => return Err(link_error(dest, &copy, e)),
            }
        }
        Err(ViewUnavailable::io(
            "linking (every shared copy is at its link limit)",
            dest,
            io::Error::from_raw_os_error(libc::EMLINK),
        ))
    }

    /// Makes ready what [`Self::place`] links blob `digest` to (the
    /// store's file given the view's attributes, or the first copy), so a
    /// later `place` costs a link.
    pub(crate) fn prepare(
        &self,
        digest: &B3Digest,
        size: u64,
        executable: bool,
    ) -> Result<(), ViewUnavailable> {
        match self.store_file(digest, size, executable)? {
            (_, _, true) => Ok(()),
            (_, f, false) => self.shared_copy(&f, digest, size, executable, 0).map(drop),
        }
    }

    /// The `n`th shared copy of blob `digest`, open, made from `store`
    /// (its store file, open) if it is not there.
    fn shared_copy(
        &self,
        store: &File,
        digest: &B3Digest,
        size: u64,
        executable: bool,
        n: u32,
    ) -> Result<(PathBuf, File), ViewUnavailable> {
        let hex = digest.to_hex();
        let name = match (executable, n) {
            (false, 0) => hex,
            (true, 0) => format!("{hex}.x"),
            (false, n) => format!("{hex}.{n}"),
            (true, n) => format!("{hex}.x.{n}"),
        };
        let copy = self.copies.join(name);
        let mode = file_mode(executable);
        match open_file(&copy) {
            Some((c, m)) if m.len() == size && has_view_attrs(&m, mode) => Ok((copy, c)),
            _ => {
                let c = self.copy(store, digest, size, &copy, mode)?;
                Ok((copy, c))
            }
        }
    }

    /// The store's file of blob `digest`, open, checked (on the handle,
    /// no symlink followed) to be a regular file of `size` bytes; and
    /// whether it can stand for the blob in a view (not `executable`,
    /// root's: it is then given the view's attributes).
    fn store_file(
        &self,
        digest: &B3Digest,
        size: u64,
        executable: bool,
    ) -> Result<(PathBuf, File, bool), ViewUnavailable> {
        let missing = || ViewUnavailable::MissingBlob {
            digest: *digest,
            size,
        };
        let path = self.blobs.local_path(digest).ok_or_else(missing)?;
        let (f, m) = match open_file(&path) {
            Some((f, m)) if m.len() == size => (f, m),
            _ => return Err(missing()),
        };
        if executable || m.uid() != 0 || m.gid() != 0 {
            return Ok((path, f, false));
        }
        let mode = file_mode(false);
        if !has_view_attrs(&m, mode) {
            set_view_attrs(&f, &path, mode)?;
        }
        Ok((path, f, true))
    }

    /// Copies the open blob file `src` to `dest` with the view's
    /// attributes for `mode`, checking its bytes against `digest`, and
    /// replacing `dest` whole (written in a scratch dir of its own, synced,
    /// then renamed). Returns the copy, open.
    fn copy(
        &self,
        src: &File,
        digest: &B3Digest,
        size: u64,
        dest: &Path,
        mode: u32,
    ) -> Result<File, ViewUnavailable> {
        let scratch = tempfile::Builder::new()
            .prefix(&tvix_oci_castore::tempfiles::owned_prefix(COPY))
            .tempdir_in(&self.tmp)
            .map_err(io_at("making a scratch dir in", &self.tmp))?;
        let tmp = scratch.path().join("blob");
        let mut out = File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_at("creating", &tmp))?;
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut copied = 0u64;
        loop {
            // Positioned reads: `src` may be copied more than once.
            let n = src
                .read_at(&mut buf, copied)
                .map_err(io_at("reading the blob file for", dest))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(io_at("writing", &tmp))?;
            copied += n as u64;
        }
        if copied != size || B3Digest::from(hasher.finalize()) != *digest {
            return Err(ViewUnavailable::CorruptBlob { digest: *digest });
        }
        set_view_attrs(&out, &tmp, mode)?;
        out.sync_all().map_err(io_at("syncing", &tmp))?;
        std::fs::rename(&tmp, dest).map_err(io_at("renaming a copy to", dest))?;
        Ok(out)
    }
}

/// A failed link of `src` at `dest`: one across file systems (a cache on
/// another mount of them) is named as such.
fn link_error(dest: &Path, src: &Path, e: io::Error) -> ViewUnavailable {
    match e.raw_os_error() {
        Some(libc::EXDEV) => ViewUnavailable::OtherFileSystem {
            cache: dest.to_owned(),
            store: src.to_owned(),
        },
        _ => ViewUnavailable::io("linking", dest, e),
    }
}
