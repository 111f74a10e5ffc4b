//! The kernel view of the inputs: for a store whose blobs are all plain
//! files on this machine (the embedded `objects://` store), the inputs
//! are shown by a read-only overlayfs alone, with no FUSE daemon, so every
//! lookup, stat, open and read after the first is answered by the kernel's
//! own caches at native speed (BENCHMARKS.md, issue 19). As composefs
//! does, with a directory tree in place of its EROFS image:
//!
//! - a **metadata layer**, one tree per castore directory, cached here by
//!   its digest and size (`<cache>/layer/t/<hex>.<size>`): real directories and symlinks, and
//!   for each file an empty sparse file of its size marked overlayfs
//!   `metacopy`, redirected to its blob;
//! - the blob store's own directory as a **data-only layer** (below `::`),
//!   never listed, only reached through those redirects; above it, as the
//!   first data-only layer, short names for the same files (hard links in
//!   `<cache>/data`, where the cache and the store share a file system),
//!   so a file's redirect fits in its inode;
//! - a tiny **top layer** per mount: one entry per input (a directory
//!   redirected to its cached tree, a file redirected to its blob, a
//!   symlink), and a whiteout hiding the cache's `t`.
//!
//! The build sees the same names, contents, modes (0444/0555), owner
//! (root) and mtime (1) as through FUSE; nothing is fetched and nothing
//! is counted as fetched. A view is refused ([`ViewUnavailable`]) — and
//! the caller falls back to FUSE — when the store has no local files, a
//! blob or directory is missing, a tree has more than `max_entries`
//! entries, or the kernel lacks data-only layers (Linux 6.5+, as root).
//!
//! The trees are written once and never changed (a new one goes in by
//! rename), as overlayfs asks of its lower layers. They are not evicted:
//! each entry costs one inode (a file's xattrs fit in it on ext4).

mod tree;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use futures::TryStreamExt;
use tracing::{info, warn};
use tvix_oci_castore::blobservice::BlobService;
use tvix_oci_castore::directoryservice::DirectoryService;
use tvix_oci_castore::{B3Digest, Directory, Node, PathComponent};
use tvix_oci_sys::mount::MsFlags;

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
/// The kind of the probe's scratch dir.
const PROBE: &str = "probe";

/// The cache's directory that is the views' metadata layer: it holds
/// only [`TREES`] (scratch work goes beside it, never into it).
const LAYER: &str = "layer";
/// The name of the trees' directory in the metadata layer, hidden by a
/// whiteout in each view.
const TREES: &str = "t";
/// The cache's directory of short names for blob files (hard links), the
/// first data-only layer.
const LINKS: &str = "data";
/// Hex digits of a blob's digest its short name has: a redirect of at most
/// 24 bytes leaves a file's two overlay xattrs in its ext4 inode (256
/// bytes); the long one, `/ab/<64 hex>`, costs each file a 4 KiB block
/// and an extra read at each first lookup (BENCHMARKS.md, issue 19).
const SHORT_HEX: usize = 22;

/// Why a kernel view was not made (the caller then serves the inputs
/// through FUSE), naming what is at fault.
#[derive(Debug, thiserror::Error)]
pub enum ViewUnavailable {
    #[error("the blob store keeps no blobs as local files")]
    NoLocalFiles,
    #[error("this kernel cannot mount it: {0}")]
    Unsupported(String),
    #[error("blob {digest} ({size} bytes) is not a local file of that size")]
    MissingBlob { digest: B3Digest, size: u64 },
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

/// The blob store's directory, as the data-only layer.
#[derive(Clone, Debug)]
pub(crate) struct DataLayer {
    root: PathBuf,
    blobs: Arc<dyn BlobService>,
    /// The short names' directory.
    links: PathBuf,
}

impl DataLayer {
    /// The redirect (absolute in the data-only layers) to blob `digest`,
    /// checked to be a file of `size` bytes: its short name, linked to the
    /// blob's file if need be, or else (another file holds that name, or
    /// the store is on another file system) its path in the store.
    pub(crate) fn redirect(
        &self,
        digest: &B3Digest,
        size: u64,
    ) -> Result<Vec<u8>, ViewUnavailable> {
        let missing = || ViewUnavailable::MissingBlob {
            digest: *digest,
            size,
        };
        let path = self.blobs.local_path(digest).ok_or_else(missing)?;
        let rel = path.strip_prefix(&self.root).map_err(|_| missing())?;
        let blob = match std::fs::metadata(&path) {
            Ok(m) if m.is_file() && m.len() == size => m,
            _ => return Err(missing()),
        };
        let short = &digest.to_hex()[..SHORT_HEX];
        let link = self.links.join(short);
        let same = |m: &std::fs::Metadata| m.dev() == blob.dev() && m.ino() == blob.ino();
        let linked = match std::fs::symlink_metadata(&link) {
            Ok(m) => same(&m),
            Err(_) => {
                std::fs::hard_link(&path, &link).is_ok()
                    || std::fs::symlink_metadata(&link).is_ok_and(|m| same(&m))
            }
        };
        let mut r = b"/".to_vec();
        match linked {
            true => r.extend_from_slice(short.as_bytes()),
            false => r.extend_from_slice(rel.as_os_str().as_bytes()),
        }
        Ok(r)
    }
}

/// One entry of a view's top layer.
#[derive(Clone, Debug)]
enum TopEntry {
    /// Redirected to the cached tree of this directory (its name).
    Dir(String),
    File {
        redirect: Vec<u8>,
        size: u64,
        executable: bool,
    },
    Symlink(Vec<u8>),
}

/// What [`ViewCache::plan`] made ready: everything a view of some inputs
/// needs is on disk; [`ViewPlan::mount`] mounts it (no store call).
#[derive(Clone, Debug)]
pub struct ViewPlan {
    /// The metadata layer.
    layer: PathBuf,
    /// The short names of blob files.
    links: PathBuf,
    data: PathBuf,
    entries: Vec<(PathComponent, TopEntry)>,
}

/// The metadata trees of kernel views, cached on disk by directory digest.
#[derive(Debug)]
pub struct ViewCache {
    root: PathBuf,
    max_entries: u64,
    /// Whether this kernel mounts data-only layers, found once.
    supported: OnceLock<Result<(), String>>,
    /// The trees being written by this process, one writer each.
    writing: Mutex<HashMap<B3Digest, Arc<tokio::sync::Mutex<()>>>>,
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
        for d in [LAYER, LINKS, "tmp"].map(|d| root.join(d)) {
            std::fs::create_dir_all(&d)
                .and_then(|()| {
                    std::fs::set_permissions(
                        &d,
                        std::os::unix::fs::PermissionsExt::from_mode(0o700),
                    )
                })
                .map_err(|e| io::Error::new(e.kind(), format!("creating {}: {e}", d.display())))?;
        }
        let trees = root.join(LAYER).join(TREES);
        std::fs::create_dir_all(&trees)
            .map_err(|e| io::Error::new(e.kind(), format!("creating {}: {e}", trees.display())))?;
        sweep_tmp(&root.join("tmp"));
        Ok(Self {
            root,
            max_entries: DEFAULT_MAX_ENTRIES,
            supported: OnceLock::new(),
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
        let data_root = blobs.local_root().ok_or(ViewUnavailable::NoLocalFiles)?;
        opt_path(&data_root)?;
        opt_path(&self.root)?;
        self.check_supported()?;
        let data = DataLayer {
            root: data_root.clone(),
            blobs,
            links: self.root.join(LINKS),
        };
        let mut entries = Vec::with_capacity(inputs.len());
        for (name, node) in inputs {
            let e = match node {
                Node::Directory { digest, size } => {
                    TopEntry::Dir(self.ensure_tree(&data, dirs, *digest, *size).await?)
                }
                Node::File {
                    digest,
                    size,
                    executable,
                } => TopEntry::File {
                    redirect: data.redirect(digest, *size)?,
                    size: *size,
                    executable: *executable,
                },
                Node::Symlink { target } => TopEntry::Symlink(target.as_bytes().to_vec()),
            };
            entries.push((name.clone(), e));
        }
        Ok(ViewPlan {
            layer: self.root.join(LAYER),
            links: self.root.join(LINKS),
            data: data_root,
            entries,
        })
    }

    /// The tree of directory `root` in the cache, written if not there:
    /// by one caller at a time in this process (others wait, then find
    /// it), into a scratch dir of its own, renamed into place whole. The
    /// write stops when this future is dropped (its build cancelled).
    async fn ensure_tree(
        &self,
        data: &DataLayer,
        dirs: &dyn DirectoryService,
        root: B3Digest,
        size: u64,
    ) -> Result<String, ViewUnavailable> {
        let name = Self::tree_name(&root, size);
        let dest = self.tree(&name);
        if dest.is_dir() {
            return Ok(name);
        }
        let lock = self
            .writing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(root)
            .or_default()
            .clone();
        let held = lock.lock().await;
        let r = self.write_once(data, dirs, root, size, &dest).await;
        drop(held);
        let mut writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        if Arc::strong_count(&lock) <= 2 {
            writing.remove(&root);
        }
        r.map(|()| name)
    }

    async fn write_once(
        &self,
        data: &DataLayer,
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
            .tempdir_in(self.root.join("tmp"))
            .map_err(|e| ViewUnavailable::io("making a scratch dir in", &self.root, e))?;
        let (data, max, dest) = (data.clone(), self.max_entries, dest.to_owned());
        let cancel = Arc::new(AtomicBool::new(false));
        let _cancel_on_drop = CancelOnDrop(cancel.clone());
        let written = tokio::task::spawn_blocking(move || {
            // Removed with everything in it when this returns, unless
            // renamed into place; nothing else writes in it.
            let tmp = scratch.path().join("tree");
            let n = tree::write_tree(&closure, root, &tmp, &data, max, &cancel)?;
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

    /// Whether this kernel mounts a data-only layer with a metacopy file
    /// redirected into it, tried once in the cache.
    fn check_supported(&self) -> Result<(), ViewUnavailable> {
        self.supported
            .get_or_init(|| probe(&self.root).map_err(|e| e.to_string()))
            .clone()
            .map_err(ViewUnavailable::Unsupported)
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
    for kind in [SCRATCH, PROBE] {
        tvix_oci_castore::tempfiles::sweep_owned_dirs(tmp, kind);
    }
}

/// Mounts a one-file view in a scratch dir of `cache` and reads it back.
fn probe(cache: &Path) -> Result<(), ViewUnavailable> {
    let scratch = tempfile::Builder::new()
        .prefix(&tvix_oci_castore::tempfiles::owned_prefix(PROBE))
        .tempdir_in(cache.join("tmp"))
        .map_err(|e| ViewUnavailable::io("making a scratch dir in", cache, e))?;
    let dir = scratch.path();
    let r = (|| {
        let (top, data, mnt) = (dir.join("top"), dir.join("data"), dir.join("mnt"));
        for d in [&top, &data, &mnt] {
            std::fs::create_dir_all(d).map_err(|e| ViewUnavailable::io("creating", d, e))?;
        }
        let blob = data.join("b");
        std::fs::write(&blob, b"ok").map_err(|e| ViewUnavailable::io("writing", &blob, e))?;
        tree::meta_file(&top.join("f"), 2, false, b"/b")?;
        let opts = format!(
            "lowerdir={}::{},metacopy=on,redirect_dir=follow",
            opt_path(&top)?,
            opt_path(&data)?
        );
        mount_overlay(&mnt, &opts)?;
        let read = std::fs::read(mnt.join("f"));
        let _ = tvix_oci_sys::mount::unmount_or_detach(&mnt);
        match read {
            Ok(b) if b == b"ok" => Ok(()),
            Ok(b) => Err(ViewUnavailable::Unsupported(format!(
                "a metacopy file read {b:?}, not its data"
            ))),
            Err(e) => Err(ViewUnavailable::io("reading through", &mnt, e)),
        }
    })();
    if let Err(e) = &r {
        warn!("inputs go through FUSE: the kernel view cannot be mounted here: {e}");
    }
    r
}

fn mount_overlay(at: &Path, opts: &str) -> Result<(), ViewUnavailable> {
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    tvix_oci_sys::mount::mount("overlay", at, "overlay", flags, Some(opts))
        .map_err(|e| ViewUnavailable::io("mounting an overlay at", at, io::Error::other(e)))
}

impl ViewPlan {
    /// Mounts the view at `at` (an existing empty directory), its top
    /// layer written at `top` (which must not exist; removed on unmount).
    pub fn mount(&self, top: &Path, at: &Path) -> Result<KernelView, ViewUnavailable> {
        let r = self.write_top(top).and_then(|()| {
            let opts = format!(
                "lowerdir={}:{}::{}::{},metacopy=on,redirect_dir=follow",
                opt_path(top)?,
                opt_path(&self.layer)?,
                opt_path(&self.links)?,
                opt_path(&self.data)?
            );
            mount_overlay(at, &opts)
        });
        if let Err(e) = r {
            remove_tree(top);
            return Err(e);
        }
        Ok(KernelView {
            at: Some(at.to_owned()),
            top: top.to_owned(),
        })
    }

    fn write_top(&self, top: &Path) -> Result<(), ViewUnavailable> {
        std::fs::create_dir(top).map_err(|e| ViewUnavailable::io("creating", top, e))?;
        let mut hides_trees = false;
        for (name, e) in &self.entries {
            hides_trees |= name.as_bytes() == TREES.as_bytes();
            let p = top.join(OsStr::from_bytes(name.as_bytes()));
            match e {
                TopEntry::Dir(tree) => {
                    let redirect = format!("/{TREES}/{tree}");
                    tree::redirect_dir(&p, redirect.as_bytes())?
                }
                TopEntry::File {
                    redirect,
                    size,
                    executable,
                } => tree::meta_file(&p, *size, *executable, redirect)?,
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
        tree::seal_dir(top)
    }
}

/// A mounted kernel view: unmounted (detached if busy), and its top layer
/// removed, when dropped.
#[derive(Debug)]
pub struct KernelView {
    at: Option<PathBuf>,
    top: PathBuf,
}

impl KernelView {
    /// Where it is mounted.
    pub fn path(&self) -> Option<&Path> {
        self.at.as_deref()
    }

    /// Unmounts (lazily if busy) and removes the top layer.
    pub fn unmount(mut self) -> io::Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> io::Result<()> {
        let Some(at) = self.at.take() else {
            return Ok(());
        };
        let r = tvix_oci_sys::mount::unmount_or_detach(&at);
        remove_tree(&self.top);
        match r {
            Ok(true) => {
                warn!(path = %at.display(), "kernel view busy; detached");
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(e) => Err(io::Error::other(format!(
                "unmounting {}: {e}",
                at.display()
            ))),
        }
    }
}

impl Drop for KernelView {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            warn!("{e}");
        }
    }
}
