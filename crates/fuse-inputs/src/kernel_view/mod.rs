//! The kernel view of the inputs: for a store whose blobs are all plain
//! files on this machine (the embedded `objects://` store), the inputs
//! are shown by the kernel alone, with no FUSE daemon and, read-only, no
//! overlay: every lookup, stat, open and read is the file system's own,
//! at native speed (BENCHMARKS.md, issue 19).
//!
//! - Each input directory is a **tree** written once and cached here by
//!   its digest and size (`<cache>/layer/t/<hex>.<size>`): real
//!   directories and symlinks, each file a hard link to its blob's file
//!   (`blobs.rs`: the store's own where it can stand for the blob, else a
//!   copy in `<cache>/data`). So the cache must be on the blob store's
//!   file system.
//! - Each mount writes a tiny **top directory** (one entry per input) and
//!   mounts it with the trees: read-only as clones of the directories
//!   ([`ViewPlan::mount`]: no overlay), or as one overlay with the build's
//!   own upper layer ([`ViewPlan::mount_writable`]: a writable store dir).
//!
//! The build sees the same names, contents, modes (0444/0555), owner
//! (root) and mtime (1) as through FUSE; files with the same blob share an
//! inode (as in a Nix store optimised with hard links). Nothing is fetched
//! and nothing is counted as fetched. A view is refused
//! ([`ViewUnavailable`]) — and the caller falls back to FUSE — when the
//! store has no local files or is on another file system, a blob or
//! directory is missing, or a tree is too large or too repetitive.
//!
//! The trees are written once and never changed (a new one goes in by
//! rename). They are not evicted: each directory costs one inode, each
//! file one directory entry.

mod blobs;
mod mount;
mod tree;

pub use mount::{KernelView, MAX_CLONED_TREES, ViewPlan};

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures::TryStreamExt;
use tracing::{info, warn};
use tvix_oci_castore::blobservice::BlobService;
use tvix_oci_castore::directoryservice::DirectoryService;
use tvix_oci_castore::{B3Digest, Directory, Node, PathComponent};

use blobs::BlobFiles;
use mount::TopEntry;

/// Entries one input tree may have in a kernel view by default (each is
/// an inode on disk, written once): far more than any toolchain.
pub const DEFAULT_MAX_ENTRIES: u64 = 2_000_000;
/// How many times over a tree may name its distinct entries (a directory
/// met twice is written twice) before it is refused, past
/// [`REPEAT_FREE`] entries: so the trees' disk stays within a small
/// multiple of what the store holds.
const MAX_REPEAT: u64 = 4;
const REPEAT_FREE: u64 = 100_000;
/// The kind (see `tvix_oci_castore::tempfiles`) of scratch dirs trees are
/// written in.
const SCRATCH: &str = "tree";
/// The cache's directory that holds only [`TREES`] (scratch work goes
/// beside it, never into it).
const LAYER: &str = "layer";
/// The name of the trees' directory in [`LAYER`], hidden by a whiteout in
/// a stackable view.
const TREES: &str = "t";
/// The cache's directory of blob copies (see [`blobs`]).
const COPIES: &str = "data";
/// The cache's scratch directory.
const TMP: &str = "tmp";
/// The cache's layout version, in `<cache>/version`: a cache of another
/// (an older view's metacopy trees) is emptied when opened.
const VERSION: &str = "2 hard-linked trees\n";

/// Why a kernel view was not made (the caller then serves the inputs
/// through FUSE), naming what is at fault.
#[derive(Debug, thiserror::Error)]
pub enum ViewUnavailable {
    #[error("the blob store keeps no blobs as local files")]
    NoLocalFiles,
    #[error(
        "the view cache {cache} is not on the file system (or mount) of the blob store {store}"
    )]
    OtherFileSystem { cache: PathBuf, store: PathBuf },
    #[error("blob {digest} ({size} bytes) is not a local file of that size")]
    MissingBlob { digest: B3Digest, size: u64 },
    #[error("blob {digest}'s local file does not hash to its digest")]
    CorruptBlob { digest: B3Digest },
    #[error("directory {0} is not in the directory store")]
    MissingDirectory(B3Digest),
    #[error("directory {root} has more than {max} entries below it")]
    TooLarge { root: B3Digest, max: u64 },
    #[error(
        "directory {root} has {expanded} entries below it, but only {distinct} distinct ones (its directories repeat too often to be written out)"
    )]
    Repetitive {
        root: B3Digest,
        expanded: u64,
        distinct: u64,
    },
    #[error("directory {digest} has size {actual}, not the {claimed} its input node gives")]
    NodeSize {
        digest: B3Digest,
        claimed: u64,
        actual: u64,
    },
    #[error("the build was cancelled while its inputs' trees were written")]
    Cancelled,
    #[error(
        "directory {parent} gives its entry {name:?} size {claimed}, but that directory has size {actual}"
    )]
    WrongSize {
        parent: B3Digest,
        name: String,
        claimed: u64,
        actual: u64,
    },
    #[error("path {0} cannot be named in an overlay's options (it holds ',', ':' or '\\')")]
    UnsafePath(PathBuf),
    #[error("the directory store: {0}")]
    Store(#[from] tvix_oci_castore::StoreError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl ViewUnavailable {
    fn io(what: &'static str, path: &Path, source: io::Error) -> Self {
        Self::Io {
            what,
            path: path.to_owned(),
            source,
        }
    }
}

/// An IO error's mapper naming what was done to which path.
pub(crate) fn io_at<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> ViewUnavailable + 'a {
    move |e| ViewUnavailable::io(what, path, e)
}

/// The metadata trees of kernel views, cached on disk by directory digest.
#[derive(Debug)]
pub struct ViewCache {
    root: PathBuf,
    max_entries: u64,
    /// The trees being written by this process, one writer each.
    writing: Writing,
}

/// Trees being written by this process: one lock per tree.
type Writing = Mutex<HashMap<B3Digest, Arc<tokio::sync::Mutex<()>>>>;

/// A caller's place in line to write one tree; the tree's entry goes
/// when the last caller's is dropped (done, failed or cancelled).
struct WriterSlot<'a> {
    writing: &'a Writing,
    root: B3Digest,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl<'a> WriterSlot<'a> {
    fn take(writing: &'a Writing, root: B3Digest) -> Self {
        let lock = writing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(root)
            .or_default()
            .clone();
        Self {
            writing,
            root,
            lock,
        }
    }
}

impl Drop for WriterSlot<'_> {
    fn drop(&mut self) {
        let mut writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        // The map's and this one's: no other caller waits.
        if Arc::strong_count(&self.lock) <= 2 {
            writing.remove(&self.root);
        }
    }
}

/// Tells a tree's writer to stop when dropped.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The overlay option value for `p`, refused if it would need escaping.
fn opt_path(p: &Path) -> Result<&str, ViewUnavailable> {
    match p.to_str() {
        Some(s) if !s.contains([',', ':', '\\']) && p.is_absolute() => Ok(s),
        _ => Err(ViewUnavailable::UnsafePath(p.to_owned())),
    }
}

impl ViewCache {
    /// Opens (creating) the cache at `root`, its own directories closed
    /// to others (`root` itself is left as it is: it may be shared),
    /// removing what writers that died left half-written.
    pub fn open(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = std::path::absolute(root.into())?;
        let version = root.join("version");
        let other_layout = std::fs::read(&version).ok().as_deref() != Some(VERSION.as_bytes());
        if other_layout {
            // Another layout's trees (or none): never mounted by this one.
            for d in [LAYER, COPIES] {
                remove_tree(&root.join(d));
            }
        }
        for d in [LAYER, COPIES, TMP].map(|d| root.join(d)) {
            std::fs::create_dir_all(&d)
                .and_then(|()| {
                    std::fs::set_permissions(
                        &d,
                        std::os::unix::fs::PermissionsExt::from_mode(0o700),
                    )
                })
                .map_err(|e| named(&d, e))?;
        }
        let trees = root.join(LAYER).join(TREES);
        std::fs::create_dir_all(&trees).map_err(|e| named(&trees, e))?;
        if other_layout {
            // Whole or not at all: another process may read it now.
            let tmp = tempfile::NamedTempFile::new_in(root.join(TMP))
                .and_then(|mut f| std::io::Write::write_all(&mut f, VERSION.as_bytes()).map(|()| f))
                .map_err(|e| named(&version, e))?;
            tmp.persist(&version)
                .map_err(|e| named(&version, e.error))?;
        }
        sweep_tmp(&root.join(TMP));
        Ok(Self {
            root,
            max_entries: DEFAULT_MAX_ENTRIES,
            writing: Mutex::default(),
        })
    }

    /// Caps the entries of one input tree (default [`DEFAULT_MAX_ENTRIES`]).
    pub fn with_max_entries(mut self, max: u64) -> Self {
        self.max_entries = max;
        self
    }

    /// Where the cache is.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The name of the tree of directory `d` whose node says `size`: both,
    /// so a node giving a wrong size never finds a tree (it is refused
    /// when one would be written, as FUSE refuses it at its first look).
    fn tree_name(d: &B3Digest, size: u64) -> String {
        format!("{}.{size}", d.to_hex())
    }

    fn tree(&self, name: &str) -> PathBuf {
        self.root.join(LAYER).join(TREES).join(name)
    }

    /// Makes everything a kernel view of `inputs` needs: the tree of each
    /// input directory not cached yet (its closure fetched with one
    /// recursive get, then written), and each input file's blob checked.
    /// Blocking file system work runs off the async threads.
    pub async fn plan(
        &self,
        blobs: Arc<dyn BlobService>,
        dirs: &dyn DirectoryService,
        inputs: &[(PathComponent, Node)],
    ) -> Result<ViewPlan, ViewUnavailable> {
        let store = blobs.local_root().ok_or(ViewUnavailable::NoLocalFiles)?;
        opt_path(&self.root)?;
        let dev = |p: &Path| {
            std::fs::metadata(p)
                .map(|m| m.dev())
                .map_err(io_at("reading", p))
        };
        if dev(&self.root)? != dev(&store)? {
            return Err(ViewUnavailable::OtherFileSystem {
                cache: self.root.clone(),
                store,
            });
        }
        let files = BlobFiles {
            blobs,
            copies: self.root.join(COPIES),
            tmp: self.root.join(TMP),
        };
        let mut entries = Vec::with_capacity(inputs.len());
        for (name, node) in inputs {
            let e = match node {
                Node::Directory { digest, size } => {
                    TopEntry::Dir(self.ensure_tree(&files, dirs, *digest, *size).await?)
                }
                Node::File {
                    digest,
                    size,
                    executable,
                } => TopEntry::File {
                    digest: *digest,
                    size: *size,
                    executable: *executable,
                },
                Node::Symlink { target } => TopEntry::Symlink(target.as_bytes().to_vec()),
            };
            entries.push((name.clone(), e));
        }
        // The input files' blobs made ready (a copy may be made), off the
        // async threads.
        let (ready, to_check) = (files.clone(), entries.clone());
        tokio::task::spawn_blocking(move || {
            to_check.iter().try_for_each(|(_, e)| match e {
                TopEntry::File {
                    digest,
                    size,
                    executable,
                } => ready.prepare(digest, *size, *executable),
                _ => Ok(()),
            })
        })
        .await
        .map_err(|e| {
            ViewUnavailable::io("checking input files", &self.root, io::Error::other(e))
        })??;
        Ok(ViewPlan {
            layer: self.root.join(LAYER),
            blobs: files,
            entries,
        })
    }

    /// The tree of directory `root` in the cache, written if not there:
    /// by one caller at a time in this process (others wait, then find
    /// it), into a scratch dir of its own, renamed into place whole. The
    /// write stops when this future is dropped (its build cancelled).
    async fn ensure_tree(
        &self,
        files: &BlobFiles,
        dirs: &dyn DirectoryService,
        root: B3Digest,
        size: u64,
    ) -> Result<String, ViewUnavailable> {
        let name = Self::tree_name(&root, size);
        let dest = self.tree(&name);
        if dest.is_dir() {
            return Ok(name);
        }
        let slot = WriterSlot::take(&self.writing, root);
        let held = slot.lock.lock().await;
        let r = self.write_once(files, dirs, root, size, &dest).await;
        drop(held);
        r.map(|()| name)
    }

    async fn write_once(
        &self,
        files: &BlobFiles,
        dirs: &dyn DirectoryService,
        root: B3Digest,
        size: u64,
        dest: &Path,
    ) -> Result<(), ViewUnavailable> {
        if dest.is_dir() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let closure = fetch_closure(dirs, root, self.max_entries).await?;
        let actual = closure
            .get(&root)
            .ok_or(ViewUnavailable::MissingDirectory(root))?
            .size();
        if actual != size {
            return Err(ViewUnavailable::NodeSize {
                digest: root,
                claimed: size,
                actual,
            });
        }
        // Known before anything is written: a tree too large, or a small
        // closure naming its directories over and over (which would
        // cost the disk far more than the store), costs no disk.
        let (expanded, distinct) = expanded_entries(&closure, root)?;
        if expanded > self.max_entries {
            return Err(ViewUnavailable::TooLarge {
                root,
                max: self.max_entries,
            });
        }
        if expanded > (MAX_REPEAT * distinct).max(REPEAT_FREE) {
            return Err(ViewUnavailable::Repetitive {
                root,
                expanded,
                distinct,
            });
        }
        let scratch = tempfile::Builder::new()
            .prefix(&tvix_oci_castore::tempfiles::owned_prefix(SCRATCH))
            .tempdir_in(self.root.join(TMP))
            .map_err(|e| ViewUnavailable::io("making a scratch dir in", &self.root, e))?;
        let (files, max, dest) = (files.clone(), self.max_entries, dest.to_owned());
        let cancel = Arc::new(AtomicBool::new(false));
        let _cancel_on_drop = CancelOnDrop(cancel.clone());
        let written = tokio::task::spawn_blocking(move || {
            // Removed with everything in it when this returns, unless
            // renamed into place; nothing else writes in it.
            let tmp = scratch.path().join("tree");
            let n = tree::write_tree(&closure, root, &tmp, &files, max, &cancel)?;
            // On disk before it is found: a tree is never checked again.
            tree::sync_fs(&tmp)?;
            match std::fs::rename(&tmp, &dest) {
                Ok(()) => Ok(n),
                // Written meanwhile by another process: the same tree.
                Err(_) if dest.is_dir() => Ok(n),
                Err(e) => Err(ViewUnavailable::io("renaming a tree to", &dest, e)),
            }
        })
        .await
        .map_err(|e| ViewUnavailable::io("writing a tree", &self.root, io::Error::other(e)))??;
        info!(
            %root,
            entries = written,
            took = ?started.elapsed(),
            "wrote a kernel view tree"
        );
        Ok(())
    }
}

/// The closure of `root`, with at most `max` directories.
async fn fetch_closure(
    dirs: &dyn DirectoryService,
    root: B3Digest,
    max: u64,
) -> Result<HashMap<B3Digest, Directory>, ViewUnavailable> {
    let mut closure = HashMap::new();
    let mut stream = dirs.get_recursive(&root);
    while let Some(d) = stream.try_next().await? {
        if closure.len() as u64 >= max {
            return Err(ViewUnavailable::TooLarge { root, max });
        }
        closure.insert(d.digest(), d);
    }
    if !closure.contains_key(&root) {
        return Err(ViewUnavailable::MissingDirectory(root));
    }
    Ok(closure)
}

/// The entries of the tree `root` once every directory met is written
/// out, from the sizes its closure gives (twice the entries below each
/// directory), checked to agree with one another; and the entries of its
/// distinct directories.
fn expanded_entries(
    closure: &HashMap<B3Digest, Directory>,
    root: B3Digest,
) -> Result<(u64, u64), ViewUnavailable> {
    let mut distinct = 0u64;
    for (digest, dir) in closure {
        distinct += dir.len() as u64;
        for (name, child, claimed) in dir.directories() {
            let actual = closure
                .get(child)
                .ok_or(ViewUnavailable::MissingDirectory(*child))?
                .size();
            if actual != claimed {
                return Err(ViewUnavailable::WrongSize {
                    parent: *digest,
                    name: name.to_string(),
                    claimed,
                    actual,
                });
            }
        }
    }
    let root = closure
        .get(&root)
        .ok_or(ViewUnavailable::MissingDirectory(root))?;
    Ok((root.size() / 2, distinct))
}

/// An error creating `d`, naming it.
fn named(d: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("creating {}: {e}", d.display()))
}

/// Removes a tree written here (its directories are read-only; root may
/// remove them all the same).
fn remove_tree(p: &Path) {
    if let Err(e) = std::fs::remove_dir_all(p)
        && e.kind() != io::ErrorKind::NotFound
    {
        warn!("removing {}: {e}", p.display());
    }
}

/// Removes the scratch dirs of writers no longer alive (and nothing else
/// a shared directory may hold).
fn sweep_tmp(tmp: &Path) {
    for kind in [SCRATCH, mount::TOP, blobs::COPY] {
        tvix_oci_castore::tempfiles::sweep_owned_dirs(tmp, kind);
    }
}
