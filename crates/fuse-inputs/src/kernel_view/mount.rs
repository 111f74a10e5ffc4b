//! Mounting a planned kernel view, in one of two forms:
//!
//! - **read-only** ([`ViewPlan::mount`]): the view's top directory (one
//!   entry per input) cloned read-only at the mount point, and each input
//!   directory's cached tree cloned read-only onto its entry. No overlay,
//!   no daemon: a lookup, open or read is the file system's own.
//! - **writable** ([`ViewPlan::mount_writable`]): one overlay whose lower
//!   layers are the top directory over the cache's trees (each input a
//!   directory redirected to its tree) and whose upper layer is the
//!   caller's: for a store dir the build writes its outputs into. (An
//!   overlay does not see mounts below its lower directory, so the
//!   read-only form cannot be stacked on.)
//!
//! A read-only view of more than [`MAX_CLONED_TREES`] input directories
//! is one read-only overlay instead (no mount per input). Each way the
//! top directory is written per mount, in a scratch dir of the cache
//! (files in it are hard links to blob files, so it must be on their file
//! system), and removed when the view goes.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use tracing::warn;
use tvix_oci_castore::{B3Digest, PathComponent};
use tvix_oci_sys::mount::MsFlags;

use super::blobs::BlobFiles;
use super::{TREES, ViewUnavailable, opt_path, tree};

/// The kind (see `tvix_oci_castore::tempfiles`) of top directories'
/// scratch dirs.
pub(crate) const TOP: &str = "top";
/// Input directories a read-only view mounts as clones at most (one
/// mount each; the system allows 100,000 per mount namespace by
/// default): past that, one read-only overlay.
pub const MAX_CLONED_TREES: usize = 256;

/// One entry of a view's top directory.
#[derive(Clone, Debug)]
pub(crate) enum TopEntry {
    /// The cached tree of this directory (its name in the trees' dir).
    Dir(String),
    /// A blob's file (made ready by `BlobFiles::prepare`).
    File {
        digest: B3Digest,
        size: u64,
        executable: bool,
    },
    Symlink(Vec<u8>),
}

/// What [`super::ViewCache::plan`] made ready: everything a view of some
/// inputs needs is on disk; mounting it only links the input files' blob
/// files (no fetch).
#[derive(Clone, Debug)]
pub struct ViewPlan {
    /// The cache's layer directory (holding the trees' dir).
    pub(crate) layer: PathBuf,
    pub(crate) blobs: BlobFiles,
    pub(crate) entries: Vec<(PathComponent, TopEntry)>,
}

impl ViewPlan {
    /// Mounts the view read-only at `at` (an existing empty directory):
    /// as clones of the trees, or, for more than [`MAX_CLONED_TREES`]
    /// input directories, as one read-only overlay.
    pub fn mount(&self, at: &Path) -> Result<KernelView, ViewUnavailable> {
        let dirs = self
            .entries
            .iter()
            .filter(|(_, e)| matches!(e, TopEntry::Dir(_)));
        if dirs.count() > MAX_CLONED_TREES {
            return self.mount_overlay(at, None);
        }
        let top = self.write_top(false)?;
        let mut view = KernelView {
            at: None,
            trees: Vec::new(),
            top: Some(top),
        };
        attach_read_only(&view.top_dir(), at)?;
        view.at = Some(at.to_owned());
        for (name, e) in &self.entries {
            if let TopEntry::Dir(tree) = e {
                let target = at.join(OsStr::from_bytes(name.as_bytes()));
                attach_read_only(&self.layer.join(TREES).join(tree), &target)?;
                view.trees.push(target);
            }
        }
        Ok(view)
    }

    /// Mounts the view at `at` (an existing empty directory) as one
    /// overlay with `upper` (and its `work` dir, both existing, empty, on
    /// one file system) as its writable upper layer. Renaming an input's
    /// directory there copies it (`EXDEV` to `rename`, which `mv` answers
    /// by copying): the upper layer holds plain files only, never a
    /// redirect into the cache.
    pub fn mount_writable(
        &self,
        at: &Path,
        upper: &Path,
        work: &Path,
    ) -> Result<KernelView, ViewUnavailable> {
        self.mount_overlay(at, Some((upper, work)))
    }

    /// One overlay of the top directory over the cache's trees, read-only
    /// or with `rw` (upper, work).
    fn mount_overlay(
        &self,
        at: &Path,
        rw: Option<(&Path, &Path)>,
    ) -> Result<KernelView, ViewUnavailable> {
        let top = self.write_top(true)?;
        let top_dir = top.path().join("top");
        let mut opts = format!(
            "lowerdir={}:{},redirect_dir=follow",
            opt_path(&top_dir)?,
            opt_path(&self.layer)?,
        );
        let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        match rw {
            Some((upper, work)) => opts.push_str(&format!(
                ",upperdir={},workdir={},index=off,metacopy=off",
                opt_path(upper)?,
                opt_path(work)?
            )),
            None => flags |= MsFlags::MS_RDONLY,
        }
        tvix_oci_sys::mount::mount("overlay", at, "overlay", flags, Some(&opts))
            .map_err(|e| ViewUnavailable::io("mounting an overlay at", at, e.into()))?;
        Ok(KernelView {
            at: Some(at.to_owned()),
            trees: Vec::new(),
            top: Some(top),
        })
    }

    /// Writes the top directory, `top` in a scratch dir of its own (so a
    /// sweep judges it by its owner, never by its mtime of 1): one entry
    /// per input (for an overlay, a directory redirected to its tree, and
    /// a whiteout hiding the trees' dir; else an empty directory to mount
    /// its tree on).
    fn write_top(&self, overlay: bool) -> Result<tempfile::TempDir, ViewUnavailable> {
        let scratch = tempfile::Builder::new()
            .prefix(&tvix_oci_castore::tempfiles::owned_prefix(TOP))
            .tempdir_in(&self.blobs.tmp)
            .map_err(|e| ViewUnavailable::io("making a scratch dir in", &self.blobs.tmp, e))?;
        let top = scratch.path().join("top");
        std::fs::create_dir(&top).map_err(|e| ViewUnavailable::io("creating", &top, e))?;
        let mut hides_trees = !overlay;
        for (name, e) in &self.entries {
            hides_trees |= name.as_bytes() == TREES.as_bytes();
            let p = top.join(OsStr::from_bytes(name.as_bytes()));
            match e {
                TopEntry::Dir(tree) if overlay => {
                    tree::redirect_dir(&p, format!("/{TREES}/{tree}").as_bytes())?
                }
                TopEntry::Dir(_) => tree::empty_dir(&p)?,
                TopEntry::File {
                    digest,
                    size,
                    executable,
                } => self.blobs.place(digest, *size, *executable, &p)?,
                TopEntry::Symlink(t) => tree::symlink(&p, t)?,
            }
        }
        // An input named like the trees' dir hides it already.
        if !hides_trees {
            let w = top.join(TREES);
            nix::sys::stat::mknod(
                &w,
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::empty(),
                nix::sys::stat::makedev(0, 0),
            )
            .map_err(|e| ViewUnavailable::io("making the whiteout", &w, e.into()))?;
        }
        tree::seal_dir(&top)?;
        Ok(scratch)
    }
}

/// Clones `src` read-only, `nosuid`, `nodev` and private, and attaches
/// the clone at `at`.
fn attach_read_only(src: &Path, at: &Path) -> Result<(), ViewUnavailable> {
    let clone = tvix_oci_sys::mount::clone_tree(src)
        .and_then(|t| tvix_oci_sys::mount::set_read_only(&t, false).map(|()| t))
        .map_err(|e| ViewUnavailable::io("cloning read-only", src, e))?;
    tvix_oci_sys::mount::attach(&clone, at)
        .map_err(|e| ViewUnavailable::io("mounting a tree at", at, e))
}

/// A mounted kernel view: unmounted (detached if busy), and its top
/// directory removed, when dropped.
#[derive(Debug)]
pub struct KernelView {
    at: Option<PathBuf>,
    /// The trees mounted on the top's entries (read-only form).
    trees: Vec<PathBuf>,
    /// The top directory's scratch dir: removed after the unmount, kept
    /// (for the sweep once this process is gone) if the view had to be
    /// detached, since an overlay may still read it.
    top: Option<tempfile::TempDir>,
}

impl KernelView {
    /// Where it is mounted.
    pub fn path(&self) -> Option<&Path> {
        self.at.as_deref()
    }

    fn top_dir(&self) -> PathBuf {
        match &self.top {
            Some(t) => t.path().join("top"),
            None => PathBuf::new(),
        }
    }

    /// Unmounts (lazily if busy) and removes the top directory.
    pub fn unmount(mut self) -> std::io::Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> std::io::Result<()> {
        let mut detached = false;
        for t in self.trees.drain(..).rev() {
            match tvix_oci_sys::mount::unmount_or_detach(&t) {
                Ok(d) => detached |= d,
                Err(e) => warn!("{e}"),
            }
        }
        let r = match self.at.take() {
            None => Ok(()),
            Some(at) => match tvix_oci_sys::mount::unmount_or_detach(&at) {
                Ok(true) => {
                    warn!(path = %at.display(), "kernel view busy; detached");
                    detached = true;
                    Ok(())
                }
                Ok(false) => Ok(()),
                Err(e) => {
                    detached = true;
                    Err(e.into())
                }
            },
        };
        if let Some(top) = self.top.take()
            && detached
        {
            let _ = top.keep();
        }
        r
    }
}

impl Drop for KernelView {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            warn!("{e}");
        }
    }
}
