//! Mounting: [`mount`] puts a set of named castore nodes at a directory and
//! returns an [`InputsMount`], which unmounts on drop (and so on error and
//! cancellation). A mount of ours left behind by a killed process is
//! detected and detached on the next mount at the same path.
//!
//! Memory: fuser gives each worker thread a 16 MiB request buffer, zeroed.
//! With glibc's dynamic mmap threshold, once one such buffer is freed the
//! next ones come from the heap, zeroed by hand (every page touched) and
//! kept by the allocator when freed: a build server's resident memory grew
//! by hundreds of MiB over a few hundred builds. The first mount therefore
//! pins the threshold (`mallopt(M_MMAP_THRESHOLD, 4 MiB)`, once per
//! process), so such buffers are always fresh mappings, untouched beyond
//! what a request uses and returned when freed.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fuser::{Config, MountOption, SessionACL};
use tracing::{info, warn};
use tvix_oci_castore::blobservice::BlobService;
use tvix_oci_castore::directoryservice::DirectoryService;
use tvix_oci_castore::{Node, PathComponent};

use crate::cache::BlobCache;
use crate::fetch::Fetcher;
use crate::fs::InputsFs;
use crate::inodes::{InodeError, InodeTable};
use crate::mountinfo;
use crate::prefetch::prefetch;
use crate::stats::{Stats, StatsSnapshot};

/// The source name our mounts carry in mountinfo.
pub const FSNAME: &str = "tvix-oci-inputs";

/// How to mount.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// Owner of every file.
    pub uid: u32,
    pub gid: u32,
    /// Blob cache for remote blobs; `None`: a private one, removed at
    /// unmount, in [`private_cache_root`] (a killed process's is removed by
    /// the next mount of any process of the same user).
    pub cache: Option<Arc<BlobCache>>,
    /// FUSE worker threads.
    pub threads: usize,
    /// Use FUSE passthrough for files on local disk where the kernel can
    /// (and `no_open` is off or the kernel lacks it): reads of their bytes
    /// never reach this process, but every open does.
    pub passthrough: bool,
    /// Let the kernel open files without asking this process (FUSE
    /// no-open) where it can: an open of a known file, and a read of its
    /// cached pages, then cost no round trip; first reads come here (no
    /// passthrough), and the kernel caches the file's pages for the mount.
    pub no_open: bool,
    /// Let other users (the build user) read the mount (`allow_other`).
    pub allow_other: bool,
    /// A store call taking longer fails the read with EIO.
    pub fetch_timeout: Duration,
    /// A blob fetch receiving no byte from the store for this long fails
    /// the read with EIO (well before `fetch_timeout` on a hung store).
    pub fetch_idle: Duration,
    /// Paths below the mount root to fetch into the cache in the
    /// background, everything below each (e.g. `abc-gcc/lib`).
    pub prefetch: Vec<PathBuf>,
    /// Blob fetches for reads at once, at most (more wait their turn); as
    /// many again may run for read-ahead. At most 100 is used: each is a
    /// stream on the store's connection.
    pub fetch_concurrency: usize,
    /// When a directory is listed, fetch its files from a remote store in
    /// the background (a listed directory's files are likely read next).
    pub read_ahead: bool,
    /// Blobs from a remote store of at least this many bytes are served as
    /// they arrive, before they are verified (a range reaching a blob's end
    /// waits for the check); smaller ones only once checked whole. The
    /// default, `u64::MAX`: every blob checked whole first. Whoever sets it
    /// must call [`InputsMount::settle`] before trusting what readers made
    /// (the executor does, with 1 MiB).
    pub stream_from: u64,
    /// Record which blobs readers open or read, first use first
    /// ([`InputsMount::read_profile`]): a profile for learned prefetch.
    pub record_reads: bool,
    /// Blobs to fetch at mount time, in this order, as many at once as
    /// `fetch_concurrency`, racing the readers (a profile recorded by an
    /// earlier mount of the same shape); local ones are skipped.
    pub prefetch_blobs: Vec<(tvix_oci_castore::B3Digest, u64)>,
}

impl Default for MountOptions {
    fn default() -> Self {
        Self {
            uid: 0,
            gid: 0,
            cache: None,
            threads: 4,
            passthrough: true,
            no_open: true,
            allow_other: true,
            fetch_timeout: Duration::from_secs(300),
            fetch_idle: Duration::from_secs(30),
            prefetch: Vec::new(),
            fetch_concurrency: 64,
            read_ahead: true,
            stream_from: u64::MAX,
            record_reads: false,
            prefetch_blobs: Vec::new(),
        }
    }
}

/// Why a mount failed. Names the mount point.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("/dev/fuse is not available: {0}")]
    NoFuse(io::Error),
    #[error("mount point {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("mount point {} is not empty", .0.display())]
    NotEmpty(PathBuf),
    #[error("mount point {} already has a {fs_type} mount of {source_name:?}", path.display())]
    Taken {
        path: PathBuf,
        fs_type: String,
        source_name: String,
    },
    #[error("mounting needs a tokio runtime to fetch from the store")]
    NoRuntime,
    #[error(transparent)]
    Inputs(#[from] InodeError),
}

/// A live mount. Unmounts when dropped.
#[derive(Debug)]
pub struct InputsMount {
    session: Option<fuser::BackgroundSession>,
    /// Ends the store calls in flight when tearing down, so no worker
    /// thread holds up the unmount waiting on a hung store.
    closing: tokio_util::sync::CancellationToken,
    mountpoint: PathBuf,
    stats: Arc<Stats>,
    /// Blobs being served as they arrive.
    streams: Arc<crate::stream::Streams>,
    /// What readers used, and what was fetched for them ahead.
    read_log: Arc<crate::learned::ReadLog>,
    prefetch: Option<tokio::task::JoinHandle<()>>,
    _private_cache: Option<tempfile::TempDir>,
}

fn at(path: &Path) -> impl FnOnce(io::Error) -> MountError + '_ {
    move |source| MountError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The absolute path of `p` without touching `p` itself (a dead FUSE mount
/// there answers ENOTCONN).
fn absolute(p: &Path) -> Result<PathBuf, MountError> {
    let parent = p
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = p.file_name().ok_or_else(|| MountError::Io {
        path: p.to_owned(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "has no file name"),
    })?;
    Ok(parent.canonicalize().map_err(at(p))?.join(name))
}

/// Detaches a mount of ours left at `path` by a process that died.
fn clean_stale(path: &Path) -> Result<(), MountError> {
    for m in mountinfo::mounts().map_err(at(path))? {
        if m.mount_point != path {
            continue;
        }
        if m.fs_type.starts_with("fuse") && m.source == FSNAME {
            warn!(path = %path.display(), "detaching a stale inputs mount");
            let _ = abort_connection(path);
            detach(path).map_err(at(path))?;
        } else {
            return Err(MountError::Taken {
                path: path.to_owned(),
                fs_type: m.fs_type,
                source_name: m.source,
            });
        }
    }
    Ok(())
}

/// Detaches the FUSE mount at `path` (lazy unmount). Not root, the kernel
/// refuses; the setuid `fusermount3 -u -z` then does it, as for any FUSE
/// mount of ours.
pub fn detach(path: &Path) -> io::Result<()> {
    match tvix_oci_sys::mount::detach(path) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            let out = std::process::Command::new("fusermount3")
                .args(["-u", "-z", "--"])
                .arg(path)
                .stdin(std::process::Stdio::null())
                .output()?;
            if out.status.success() {
                Ok(())
            } else {
                Err(io::Error::other(format!(
                    "fusermount3 -u: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )))
            }
        }
        other => other.map_err(io::Error::from),
    }
}

const FUSECTL: &str = "/sys/fs/fuse/connections";

/// Mounts the FUSE control filesystem where it is missing (it is how a
/// connection is aborted); needs root, harmless to try without.
fn ensure_fusectl() {
    let mounted = mountinfo::mounts().is_ok_and(|ms| ms.iter().any(|m| m.fs_type == "fusectl"));
    if !mounted {
        let (flags, target) = (tvix_oci_sys::mount::MsFlags::empty(), Path::new(FUSECTL));
        if let Err(e) = tvix_oci_sys::mount::mount("fusectl", target, "fusectl", flags, None) {
            warn!("cannot mount the FUSE control filesystem: {e}");
        }
    }
}

/// Aborts the FUSE connection behind the mount at `path`, so every reader
/// gets ENOTCONN at once instead of waiting on the daemon. Returns whether
/// a connection was aborted.
pub fn abort_connection(path: &Path) -> bool {
    ensure_fusectl();
    // The connection is named by the minor number of the mount's device,
    // which mountinfo gives even when the daemon is dead.
    let Ok(mounts) = mountinfo::mounts() else {
        return false;
    };
    let Some(m) = mounts
        .iter()
        .rev()
        .find(|m| m.mount_point == path && m.fs_type.starts_with("fuse"))
    else {
        return false;
    };
    std::fs::write(format!("{FUSECTL}/{}/abort", m.minor), "1").is_ok()
}

/// The name of a mount's own blob cache starts with this, then the owning
/// process's pid.
const PRIVATE_CACHE: &str = "tvix-oci-blob-cache-";

/// Where mounts put their private blob caches: one place per user,
/// `/var/tmp/tvix-oci-build-UID/mount-cache`, whatever the environment
/// (`TMPDIR`, `XDG_RUNTIME_DIR` differ between a shell, a service and
/// sudo), so the next mount finds a killed one's cache and removes it. On
/// disk, not a RAM tmpfs like `/run`: a cache holds whole blobs. `/var/tmp`
/// is shared by all users, so the per-user directory must be ours, a real
/// directory of mode 0700; if another user took the name, the temp dir is
/// used instead (swept only by mounts with the same `TMPDIR`).
pub fn private_cache_root() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let base = PathBuf::from(format!("/var/tmp/tvix-oci-build-{uid}"));
    let dir = base.join("mount-cache");
    match own_dir(&base, uid).and_then(|()| own_dir(&dir, uid)) {
        Ok(()) => dir,
        Err(e) => {
            warn!(path = %dir.display(), "cannot keep blob caches there, using the temp dir: {e}");
            std::env::temp_dir()
        }
    }
}

/// Makes `dir` (mode 0700) unless it exists; then checks it is a directory
/// (not a symlink) owned by `uid` and closed to others.
fn own_dir(dir: &Path, uid: u32) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let m = std::fs::symlink_metadata(dir)?;
    if !m.is_dir() || m.uid() != uid || m.mode() & 0o077 != 0 {
        return Err(io::Error::other(format!(
            "{} is not a directory of uid {uid} closed to others",
            dir.display()
        )));
    }
    Ok(())
}

/// Removes the private blob caches in `root` of processes that died
/// without removing them (SIGKILL): those whose pid is no longer alive.
fn sweep_private_caches(root: &Path) {
    let Ok(rd) = std::fs::read_dir(root) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(PRIVATE_CACHE)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !tvix_oci_sys::process::alive(pid) {
            match std::fs::remove_dir_all(e.path()) {
                Ok(()) => {
                    info!(path = %e.path().display(), "removed the blob cache of a process that died")
                }
                Err(err) => {
                    warn!(path = %e.path().display(), "removing a dead process's blob cache: {err}")
                }
            }
        }
    }
}

/// Pins glibc's mmap threshold (see the module docs), once.
fn pin_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        // SAFETY: mallopt only changes allocator parameters; any value is
        // valid for M_MMAP_THRESHOLD up to 32 MiB.
        ONCE.call_once(|| unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        });
    }
}

/// fuser's session settings for `opts`: read-only, no devices or setuid,
/// permissions checked by the kernel.
fn session_config(opts: &MountOptions) -> Config {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(FSNAME.to_owned()),
        MountOption::Subtype(FSNAME.to_owned()),
        MountOption::RO,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoAtime,
        MountOption::DefaultPermissions,
    ];
    config.acl = if opts.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    // Not root, fuser has the setuid fusermount3 mount and unmount.
    config.n_threads = Some(opts.threads.max(1));
    config.clone_fd = opts.threads > 1;
    config
}

/// The mount's blob cache: the one given, or else a private one, made now
/// (the caches of dead processes are swept first).
fn cache_for(
    opts: &MountOptions,
    path: &Path,
) -> Result<(Arc<BlobCache>, Option<tempfile::TempDir>), MountError> {
    Ok(match &opts.cache {
        Some(c) => (c.clone(), None),
        None => {
            let root = private_cache_root();
            sweep_private_caches(&root);
            // Where they were kept before, and where they go as a fallback.
            sweep_private_caches(&std::env::temp_dir());
            let tmp = tempfile::Builder::new()
                .prefix(&format!("{PRIVATE_CACHE}{}-", std::process::id()))
                .tempdir_in(&root)
                .map_err(at(path))?;
            let cache = BlobCache::open(tmp.path(), u64::MAX).map_err(at(path))?;
            (Arc::new(cache), Some(tmp))
        }
    })
}

/// Mounts `inputs` at `mountpoint` (an existing empty directory). Must be
/// called from within a tokio runtime, whose handle serves store calls.
pub fn mount(
    blobs: Arc<dyn BlobService>,
    dirs: Arc<dyn DirectoryService>,
    inputs: Vec<(PathComponent, Node)>,
    mountpoint: &Path,
    opts: &MountOptions,
) -> Result<InputsMount, MountError> {
    let rt = tokio::runtime::Handle::try_current().map_err(|_| MountError::NoRuntime)?;
    pin_mmap_threshold();
    if let Err(e) = std::fs::metadata("/dev/fuse") {
        return Err(MountError::NoFuse(e));
    }
    let path = absolute(mountpoint)?;
    clean_stale(&path)?;
    if std::fs::read_dir(&path)
        .map_err(at(&path))?
        .next()
        .is_some()
    {
        return Err(MountError::NotEmpty(path));
    }
    let (cache, private) = cache_for(opts, &path)?;
    let roots = inputs.clone();
    let inodes = Arc::new(InodeTable::new(inputs)?);
    let stats = Arc::new(Stats::default());
    let closing = tokio_util::sync::CancellationToken::new();
    let (fetcher, read_ahead) = Fetcher::new(
        inodes,
        (blobs.clone(), dirs.clone()),
        cache.clone(),
        stats.clone(),
        closing.clone(),
        (opts.fetch_timeout, opts.fetch_idle, opts.fetch_concurrency),
        (opts.stream_from, opts.record_reads, rt.clone()),
    );
    let fetcher = Arc::new(fetcher);
    let read_log = fetcher.read_log.clone();
    let streams = fetcher.streams.clone();
    let fs = InputsFs::new(
        fetcher.clone(),
        rt.clone(),
        (opts.uid, opts.gid),
        // Passthrough needs CAP_SYS_ADMIN: not root, the kernel refuses it.
        (
            opts.passthrough && tvix_oci_sys::process::is_root(),
            opts.no_open,
        ),
        opts.read_ahead,
    );
    let config = session_config(opts);
    let session = fuser::spawn_mount(fs, &path, &config).map_err(at(&path))?;
    // Ends with the mount (`closing`).
    rt.spawn(
        fetcher
            .clone()
            .run_read_ahead(read_ahead, opts.fetch_concurrency),
    );
    if !opts.prefetch_blobs.is_empty() {
        // Ends with the mount (`closing`).
        rt.spawn(fetcher.clone().prefetch_blobs(
            opts.prefetch_blobs.clone(),
            read_log.clone(),
            opts.fetch_concurrency,
        ));
    }
    info!(path = %path.display(), inputs = roots.len(), "inputs mounted");
    let prefetch = (!opts.prefetch.is_empty()).then(|| {
        rt.spawn(prefetch(
            fetcher.clone(),
            dirs,
            roots,
            opts.prefetch.clone(),
            read_log.clone(),
            opts.fetch_concurrency,
        ))
    });
    Ok(InputsMount {
        session: Some(session),
        closing,
        mountpoint: path,
        stats,
        streams,
        read_log,
        prefetch,
        _private_cache: private,
    })
}

impl InputsMount {
    /// Where it is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// What it fetched and served so far.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// What went wrong with the store while this mount served reads: the
    /// first store call that failed (a reader got EIO), or else the oldest
    /// call pending for at least `stalled`. `None` when the store answered
    /// everything.
    pub fn store_trouble(&self, stalled: std::time::Duration) -> Option<String> {
        self.stats.store_trouble(stalled)
    }

    /// The blobs readers used so far, first use first (with
    /// `record_reads`), and what the prefetch of `prefetch_blobs` fetched
    /// and what of it was used.
    pub fn read_profile(&self) -> crate::ReadProfile {
        self.read_log.profile()
    }

    /// Waits until every blob a reader was served bytes of before it was
    /// verified (`stream_from`) has arrived whole and been checked. Call it
    /// after the readers are done and before trusting what they produced:
    /// a blob that turned out corrupt is then in [`Self::store_trouble`].
    /// Bounded by the fetch timeout; a blob no one read from unverified is
    /// not waited for.
    pub async fn settle(&self) {
        // Recorded here too: a settle never returns before the failure it
        // waited for is told (the fetch's own record may come later).
        for failure in self.streams.settle().await {
            self.stats.store_failed(|| failure);
        }
    }

    /// Whether the FUSE daemon still serves the mount: false once its
    /// session ended, e.g. because the connection was aborted (readers then
    /// get ENOTCONN). Never blocks, even on a hung store.
    pub fn is_serving(&self) -> bool {
        self.session
            .as_ref()
            .is_some_and(|s| !s.guard.is_finished())
    }

    /// Aborts the FUSE connection: readers get ENOTCONN, nothing waits on
    /// the store any more. The mount stays until unmounted. Returns whether
    /// there was a connection to abort.
    pub fn abort(&self) -> bool {
        abort_connection(&self.mountpoint)
    }

    /// Unmounts and waits for the daemon threads to finish. When the mount
    /// is busy, it is aborted and detached instead (never left behind).
    pub fn unmount(mut self) -> io::Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> io::Result<()> {
        if let Some(p) = self.prefetch.take() {
            p.abort();
        }
        self.closing.cancel();
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        // fuser unmounts and joins the worker threads; when the mount is
        // busy, abort the connection (readers get ENOTCONN, the threads
        // end) and detach it instead: it is never left behind.
        match session.umount_and_join() {
            Ok(()) => Ok(()),
            Err(e) => {
                warn!(path = %self.mountpoint.display(), "unmount failed ({e}); aborting and detaching");
                let _ = abort_connection(&self.mountpoint);
                match detach(&self.mountpoint) {
                    Ok(()) => Ok(()),
                    // Already gone: the failed unmount raced with its end.
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
                    Err(e) => Err(io::Error::new(
                        e.kind(),
                        format!("unmounting {}: {e}", self.mountpoint.display()),
                    )),
                }
            }
        }
    }
}

impl Drop for InputsMount {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            warn!("{e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caches_of_dead_processes_are_swept_and_live_ones_kept() {
        let root = tempfile::tempdir().unwrap();
        // pid 2^22+1 is above the kernel's pid_max: never alive.
        let dead = root.path().join(format!("{PRIVATE_CACHE}4194305-test"));
        let mine = root
            .path()
            .join(format!("{PRIVATE_CACHE}{}-test", std::process::id()));
        for d in [&dead, &mine] {
            std::fs::create_dir_all(d.join("tmp")).unwrap();
        }
        sweep_private_caches(root.path());
        assert!(!dead.exists(), "a dead process's cache is swept");
        assert!(mine.exists(), "a live process's cache is kept");
    }

    #[test]
    fn the_private_cache_root_is_the_same_whatever_tmpdir() {
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        let root = private_cache_root();
        assert_eq!(
            root,
            PathBuf::from(format!("/var/tmp/tvix-oci-build-{uid}/mount-cache"))
        );
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::symlink_metadata(&root).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o777), (uid, 0o700));
    }
}
