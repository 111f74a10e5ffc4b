//! The kernel view of the inputs: for a store whose blobs are all plain
//! files on this machine (the embedded `objects://` store), the inputs
//! are shown by a read-only overlayfs alone, with no FUSE daemon, so every
//! lookup, stat, open and read after the first is answered by the kernel's
//! own caches at native speed (BENCHMARKS.md, issue 19). As composefs
//! does, with a directory tree in place of its EROFS image:
//!
//! - a **metadata layer**, one tree per castore directory, cached here by
//!   its digest (`<cache>/layer/t/<hex>`): real directories and symlinks, and
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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use futures::TryStreamExt;
use tracing::{debug, info, warn};
use tvix_oci_castore::blobservice::BlobService;
use tvix_oci_castore::directoryservice::DirectoryService;
use tvix_oci_castore::{B3Digest, Directory, Node, PathComponent};
use tvix_oci_sys::mount::MsFlags;

/// Entries one input tree may have in a kernel view by default (each is
/// an inode on disk, written once): far more than any toolchain.
pub const DEFAULT_MAX_ENTRIES: u64 = 2_000_000;

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
    /// Redirected to the cached tree of this directory.
    Dir(B3Digest),
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
    tmp_seq: AtomicU64,
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
            tmp_seq: AtomicU64::new(0),
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

    fn tree(&self, d: &B3Digest) -> PathBuf {
        self.root.join(LAYER).join(TREES).join(d.to_hex())
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
                Node::Directory { digest, .. } => {
                    self.ensure_tree(&data, dirs, *digest).await?;
                    TopEntry::Dir(*digest)
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

    /// The tree of directory `root` in the cache, written if not there.
    async fn ensure_tree(
        &self,
        data: &DataLayer,
        dirs: &dyn DirectoryService,
        root: B3Digest,
    ) -> Result<(), ViewUnavailable> {
        let dest = self.tree(&root);
        if dest.is_dir() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let closure = fetch_closure(dirs, root, self.max_entries).await?;
        // Known before anything is written, so a small closure expanding
        // to a huge tree (a directory met many times) costs no disk.
        if expanded_entries(&closure, root)? > self.max_entries {
            return Err(ViewUnavailable::TooLarge {
                root,
                max: self.max_entries,
            });
        }
        let tmp = self.root.join("tmp").join(format!(
            "{}-{}-{}",
            std::process::id(),
            self.tmp_seq.fetch_add(1, Ordering::Relaxed),
            root.to_hex()
        ));
        let (data, max) = (data.clone(), self.max_entries);
        let written = tokio::task::spawn_blocking(move || {
            let r = tree::write_tree(&closure, root, &tmp, &data, max).and_then(|n| {
                match std::fs::rename(&tmp, &dest) {
                    Ok(()) => Ok(n),
                    // Written meanwhile by another build: the same tree.
                    Err(_) if dest.is_dir() => {
                        remove_tree(&tmp);
                        Ok(n)
                    }
                    Err(e) => Err(ViewUnavailable::io("renaming a tree to", &dest, e)),
                }
            });
            if r.is_err() {
                remove_tree(&tmp);
            }
            r
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
/// directory), checked to agree with one another.
fn expanded_entries(
    closure: &HashMap<B3Digest, Directory>,
    root: B3Digest,
) -> Result<u64, ViewUnavailable> {
    for (digest, dir) in closure {
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
    Ok(root.size() / 2)
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

/// Removes half-written trees of processes no longer alive.
fn sweep_tmp(tmp: &Path) {
    let Ok(rd) = std::fs::read_dir(tmp) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<u32>().ok());
        if pid.is_none_or(|p| !tvix_oci_sys::process::alive(p)) {
            remove_tree(&e.path());
        }
    }
}

/// Mounts a one-file view in a scratch dir of `cache` and reads it back.
fn probe(cache: &Path) -> Result<(), ViewUnavailable> {
    let dir = cache
        .join("tmp")
        .join(format!("{}-probe", std::process::id()));
    remove_tree(&dir);
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
    remove_tree(&dir);
    if let Err(e) = &r {
        debug!("kernel view probe: {e}");
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
                TopEntry::Dir(d) => {
                    let redirect = format!("/{TREES}/{}", d.to_hex());
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
