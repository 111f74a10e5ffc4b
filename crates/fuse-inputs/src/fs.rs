//! The FUSE filesystem: thin handlers over [`InputsFs`]'s helpers. Each
//! helper returns `Result<_, Errno>`; each handler makes exactly one reply.
//!
//! Content never changes, so everything is cached by the kernel for as long
//! as it likes (long TTLs, `FOPEN_KEEP_CACHE`, `FOPEN_CACHE_DIR`,
//! readdirplus, cached symlinks). A file whose blob is a local file (the
//! embedded store, or the blob cache) is opened with FUSE passthrough where
//! the kernel has it, so reads never reach this process.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};
use tokio::io::AsyncReadExt;
use tracing::{debug, error, warn};
use tvix_oci_castore::B3Digest;
use tvix_oci_castore::blobservice::BlobService;
use tvix_oci_castore::directoryservice::DirectoryService;

use crate::cache::BlobCache;
use crate::inodes::{Children, Inode, InodeKind, InodeTable};
use crate::stats::Stats;

/// How long the kernel may cache entries and attributes: content is
/// immutable for the life of the mount.
const TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// The attributes of a negative entry: node id 0 is "no such name" to the
/// kernel; the rest is never read.
fn negative_attr() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}
/// mtime of everything, as in the Nix store.
const MTIME: Duration = Duration::from_secs(1);

/// An open file.
#[derive(Debug)]
pub(crate) enum Handle {
    /// Reads go straight to the backing file in the kernel. Shared by all
    /// opens of one inode: the kernel refuses two backing files for one
    /// inode at a time (EBUSY, seen by the reader as EIO).
    Passthrough(Arc<BackingId>),
    /// Reads come here and are served from a local file.
    File(std::fs::File),
    /// Reads come here and are served from the store at an offset, never
    /// past the declared size.
    Ranges(B3Digest, u64),
}

/// The filesystem state shared by the FUSE worker threads.
#[derive(Debug)]
pub(crate) struct InputsFs {
    pub(crate) inodes: Arc<InodeTable>,
    pub(crate) blobs: Arc<dyn BlobService>,
    pub(crate) dirs: Arc<dyn DirectoryService>,
    pub(crate) cache: Arc<BlobCache>,
    pub(crate) rt: tokio::runtime::Handle,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) want_passthrough: bool,
    pub(crate) fetch_timeout: Duration,
    /// A fetch receiving no byte for this long fails.
    pub(crate) fetch_idle: Duration,
    pub(crate) stats: Arc<Stats>,
    /// Cancelled when the mount is torn down: store calls in flight end.
    pub(crate) closing: tokio_util::sync::CancellationToken,
    passthrough: AtomicBool,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    /// The backing file of each inode open with passthrough.
    backing: Mutex<HashMap<u64, std::sync::Weak<BackingId>>>,
    next_fh: AtomicU64,
}

impl InputsFs {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        inodes: Arc<InodeTable>,
        blobs: Arc<dyn BlobService>,
        dirs: Arc<dyn DirectoryService>,
        cache: Arc<BlobCache>,
        rt: tokio::runtime::Handle,
        (uid, gid): (u32, u32),
        want_passthrough: bool,
        (fetch_timeout, fetch_idle): (Duration, Duration),
        stats: Arc<Stats>,
        closing: tokio_util::sync::CancellationToken,
    ) -> Self {
        Self {
            inodes,
            blobs,
            dirs,
            cache,
            rt,
            uid,
            gid,
            want_passthrough,
            fetch_timeout,
            fetch_idle,
            stats,
            closing,
            passthrough: AtomicBool::new(false),
            handles: Mutex::new(HashMap::new()),
            backing: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
        }
    }

    pub(crate) fn inode(&self, ino: INodeNo) -> Result<Arc<Inode>, Errno> {
        self.inodes.get(ino.0).ok_or(Errno::ENOENT)
    }

    pub(crate) fn attr(&self, ino: u64, inode: &Inode) -> FileAttr {
        let (kind, perm, size) = match &inode.kind {
            InodeKind::Root(_) | InodeKind::Directory { .. } => (FileType::Directory, 0o555, 0),
            InodeKind::File {
                size, executable, ..
            } => (
                FileType::RegularFile,
                if *executable { 0o555 } else { 0o444 },
                *size,
            ),
            InodeKind::Symlink(t) => (FileType::Symlink, 0o777, t.as_bytes().len() as u64),
        };
        let t = UNIX_EPOCH + MTIME;
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind,
            perm,
            nlink: 1,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 64 * 1024,
            flags: 0,
        }
    }

    /// Runs a store call for the requester `pid` with the fetch timeout,
    /// from a FUSE thread. A failure, a timeout or a panic in the store is
    /// EIO for the reader (logged with the path), never a dead worker
    /// thread. The call is dropped, and EIO answered, as soon as the
    /// requester is SIGKILLed or gone ([`crate::reader`]) or the mount goes
    /// away: a process blocked on a hung store can always be killed.
    fn block_on<T, E: std::fmt::Display>(
        &self,
        what: &str,
        ino: u64,
        pid: u32,
        f: impl Future<Output = Result<T, E>>,
    ) -> Result<T, Errno> {
        let timeout = self.fetch_timeout;
        let closing = self.closing.clone();
        let run = std::panic::AssertUnwindSafe(|| {
            self.rt.block_on(async move {
                tokio::select! {
                    r = tokio::time::timeout(timeout, f) => Ok(r),
                    // Unmounting: give up on the store at once.
                    _ = closing.cancelled() => Err(Some("abandoned, the mount is going away")),
                    _ = crate::reader::given_up(pid) => Err(None),
                }
            })
        });
        let path = || self.inodes.path(ino).display().to_string();
        let started = std::time::Instant::now();
        let call = self.stats.store_call(|| format!("{what} for {}", path()));
        let res = std::panic::catch_unwind(run);
        drop(call);
        let failure = match res {
            Ok(Ok(Ok(Ok(v)))) => return Ok(v),
            Ok(Ok(Ok(Err(e)))) => e.to_string(),
            Ok(Ok(Err(_))) => format!("timed out after {timeout:?}"),
            Ok(Err(Some(why))) => why.to_owned(),
            Ok(Err(None)) => {
                // Not the store's failure (yet): a call it was slow to
                // answer, which the reader stopped waiting for.
                let waited = started.elapsed();
                debug!(path = %path(), "{what}: abandoned after {waited:?}, the reader was killed");
                self.stats
                    .store_abandoned(waited, || format!("{what} for {}", path()));
                return Err(Errno::EIO);
            }
            Err(_) => "the store panicked".to_owned(),
        };
        error!(path = %path(), "{what}: {failure}");
        self.stats
            .store_failed(|| format!("{what} for {}: {failure}", path()));
        Err(Errno::EIO)
    }

    fn children(&self, ino: u64, pid: u32) -> Result<Arc<Children>, Errno> {
        let res = self.inodes.children(ino, |digest, size, by| {
            use tvix_oci_castore::{ClosureError, StoreError};
            let dirs = self.dirs.clone();
            let d = *digest;
            let what = format!("fetching directory {d}");
            let dir = self.block_on(&what, ino, pid, async move {
                let dir = dirs
                    .get(&d)
                    .await?
                    .ok_or(StoreError::Closure(ClosureError::Missing(d)))?;
                // The size its node declares, or the store lies.
                tvix_oci_castore::directoryservice::check_size(&dir, size, || by)?;
                Ok::<_, StoreError>(dir)
            })?;
            self.stats.dirs_fetched.fetch_add(1, Ordering::Relaxed);
            Ok::<_, Errno>(dir)
        })?;
        res.ok_or(Errno::ENOTDIR)
    }

    pub(crate) fn do_lookup(
        &self,
        parent: INodeNo,
        name: &OsStr,
        pid: u32,
    ) -> Result<FileAttr, Errno> {
        let children = self.children(parent.0, pid)?;
        let ino = children.get(name.as_bytes()).ok_or(Errno::ENOENT)?;
        let inode = self.inode(INodeNo(ino))?;
        Ok(self.attr(ino, &inode))
    }

    /// `.`, `..` and the children, from `offset` on, with attributes;
    /// lazily, so listing a big directory in many calls stays linear.
    /// Yields (offset of the next entry, inode, attributes, name).
    fn listing(
        &self,
        ino: INodeNo,
        offset: u64,
        pid: u32,
    ) -> Result<impl Iterator<Item = (u64, u64, FileAttr, Vec<u8>)> + '_, Errno> {
        let inode = self.inode(ino)?;
        let children = self.children(ino.0, pid)?;
        let parent = self.inode(INodeNo(inode.parent))?;
        let total = children.entries().len() as u64 + 2;
        Ok((offset.min(total)..total).filter_map(move |i| {
            let (child, attr, name) = match i {
                0 => (ino.0, self.attr(ino.0, &inode), b".".to_vec()),
                1 => (
                    inode.parent,
                    self.attr(inode.parent, &parent),
                    b"..".to_vec(),
                ),
                _ => {
                    let (name, child) = children.entries().get(usize::try_from(i - 2).ok()?)?;
                    let c = self.inodes.get(*child)?;
                    (*child, self.attr(*child, &c), name.as_bytes().to_vec())
                }
            };
            Some((i + 1, child, attr, name))
        }))
    }

    /// A local file holding the blob: the store's own (trusted) file, or the
    /// cache's, fetching and checking it first. Either has the size the
    /// node declares (what `stat` says), or the open fails.
    fn local_file(
        &self,
        ino: u64,
        pid: u32,
        digest: &B3Digest,
        size: u64,
    ) -> Result<std::fs::File, Errno> {
        if let Some(p) = self.blobs.local_path(digest)
            && let Ok(f) = std::fs::File::open(&p)
        {
            let len = f.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
            if len != size {
                let failure = format!(
                    "blob {digest}: the store's file {} has {len} bytes, {size} declared",
                    p.display()
                );
                let path = self.inodes.path(ino).display().to_string();
                error!(path = %path, "opening: {failure}");
                self.stats
                    .store_failed(|| format!("opening {path}: {failure}"));
                return Err(Errno::EIO);
            }
            return Ok(f);
        }
        let (cache, blobs, d, idle) = (
            self.cache.clone(),
            self.blobs.clone(),
            *digest,
            self.fetch_idle,
        );
        let what = format!("fetching blob {digest}");
        let (f, fetched) = self.block_on(&what, ino, pid, async move {
            cache.get_or_fetch(&*blobs, &d, size, idle).await
        })?;
        // Counted once per blob fetched, not per open of a cached one.
        if fetched {
            self.stats.blobs_fetched.fetch_add(1, Ordering::Relaxed);
            self.stats.bytes_fetched.fetch_add(size, Ordering::Relaxed);
        }
        Ok(f)
    }

    /// Opens a file; `open_backing` registers a backing file with the
    /// kernel for passthrough (only called when passthrough was agreed).
    pub(crate) fn do_open(
        &self,
        ino: INodeNo,
        flags: OpenFlags,
        pid: u32,
        open_backing: &dyn Fn(&std::fs::File) -> std::io::Result<BackingId>,
    ) -> Result<(u64, Arc<Handle>), Errno> {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return Err(Errno::EROFS);
        }
        let inode = self.inode(ino)?;
        let InodeKind::File { digest, size, .. } = &inode.kind else {
            return Err(Errno::EISDIR);
        };
        // Trusted stores with cheap range reads are read in place; anything
        // else is made a local file first (and then passed through).
        let handle = if self.blobs.range_reads() && self.blobs.local_path(digest).is_none() {
            Handle::Ranges(*digest, *size)
        } else {
            let file = self.local_file(ino.0, pid, digest, *size)?;
            if self.passthrough.load(Ordering::Relaxed) {
                let mut backing = self.backing.lock().unwrap_or_else(|p| p.into_inner());
                match backing.get(&ino.0).and_then(std::sync::Weak::upgrade) {
                    Some(id) => Handle::Passthrough(id),
                    None => match open_backing(&file) {
                        Ok(id) => {
                            let id = Arc::new(id);
                            backing.insert(ino.0, Arc::downgrade(&id));
                            Handle::Passthrough(id)
                        }
                        Err(e) => {
                            // e.g. a backing file on a stacked filesystem.
                            warn!(digest = %digest, "passthrough refused, serving reads here: {e}");
                            Handle::File(file)
                        }
                    },
                }
            } else {
                Handle::File(file)
            }
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let handle = Arc::new(handle);
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fh, handle.clone());
        Ok((fh, handle))
    }

    pub(crate) fn do_release(&self, fh: FileHandle) {
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh.0);
    }

    pub(crate) fn do_read(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        pid: u32,
    ) -> Result<Vec<u8>, Errno> {
        let handle = self
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh.0)
            .cloned()
            .ok_or(Errno::EBADF)?;
        let mut buf = vec![0u8; size as usize];
        let n = match &*handle {
            Handle::File(f) => read_full_at(f, &mut buf, offset).map_err(|e| {
                error!(path = %self.inodes.path(ino.0).display(), "reading: {e}");
                Errno::EIO
            })?,
            Handle::Ranges(digest, declared) => {
                let (blobs, d, declared) = (self.blobs.clone(), *digest, *declared);
                // What stat promised: up to the declared size, no further.
                let len = declared.saturating_sub(offset).min(buf.len() as u64) as usize;
                let what = format!("reading blob {d}");
                let data = self.block_on(&what, ino.0, pid, async move {
                    let mut r = blobs.open_read_at(&d, offset).await?.ok_or_else(|| {
                        std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            format!("blob {d} is not in the store"),
                        )
                    })?;
                    let mut out = Vec::with_capacity(len);
                    (&mut r).take(len as u64).read_to_end(&mut out).await?;
                    if out.len() < len {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!(
                                "blob {d}: the store has {} bytes, {declared} declared",
                                offset + out.len() as u64
                            ),
                        ));
                    }
                    Ok::<_, std::io::Error>(out)
                })?;
                let n = data.len();
                buf[..n].copy_from_slice(&data);
                n
            }
            Handle::Passthrough(_) => return Err(Errno::EIO), // the kernel reads these itself
        };
        buf.truncate(n);
        self.stats
            .bytes_served
            .fetch_add(n as u64, Ordering::Relaxed);
        Ok(buf)
    }
}

/// Reads until `buf` is full or EOF.
fn read_full_at(f: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

impl Filesystem for InputsFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        for flag in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_MAX_PAGES,
            InitFlags::FUSE_SPLICE_READ,
        ] {
            let _ = config.add_capabilities(flag);
        }
        let _ = config.set_max_readahead(1 << 20);
        // Passthrough needs the kernel's support, and a stacking depth left
        // for the overlay the executor puts on top: FUSE at depth 1, the
        // overlay at 2, the kernel's maximum.
        if self.want_passthrough
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok()
        {
            self.passthrough.store(true, Ordering::Relaxed);
        }
        self.stats
            .passthrough
            .store(self.passthrough.load(Ordering::Relaxed), Ordering::Relaxed);
        debug!(
            passthrough = self.passthrough.load(Ordering::Relaxed),
            "FUSE session started"
        );
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.do_lookup(parent, name, req.pid()) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            // The inputs never change: a name not there never will be. A
            // zero node id with a timeout is a negative entry the kernel
            // keeps, so a compiler searching its include path asks once.
            Err(e) if e == Errno::ENOENT => {
                self.stats.negative_lookups.fetch_add(1, Ordering::Relaxed);
                reply.entry(&TTL, &negative_attr(), Generation(0))
            }
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.inode(ino) {
            Ok(inode) => reply.attr(&TTL, &self.attr(ino.0, &inode)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.inode(ino).map(|i| match &i.kind {
            InodeKind::Symlink(t) => Ok(t.as_bytes().to_vec()),
            _ => Err(Errno::EINVAL),
        }) {
            Ok(Ok(t)) => reply.data(&t),
            Ok(Err(e)) | Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self
            .inode(ino)
            .map(|i| matches!(i.kind, InodeKind::Root(_) | InodeKind::Directory { .. }))
        {
            Ok(true) => reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR,
            ),
            Ok(false) => reply.error(Errno::ENOTDIR),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        match self.listing(ino, offset, req.pid()) {
            Ok(entries) => {
                for (next, child, attr, name) in entries {
                    if reply.add(INodeNo(child), next, attr.kind, OsStr::from_bytes(&name)) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdirplus(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        match self.listing(ino, offset, req.pid()) {
            Ok(entries) => {
                for (next, child, attr, name) in entries {
                    if reply.add(
                        INodeNo(child),
                        next,
                        OsStr::from_bytes(&name),
                        &TTL,
                        &attr,
                        Generation(0),
                    ) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.do_open(ino, flags, req.pid(), &|f| reply.open_backing(f)) {
            Ok((fh, handle)) => match &*handle {
                // The kernel refuses KEEP_CACHE with passthrough: the page
                // cache is the backing file's own.
                Handle::Passthrough(id) => {
                    reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), id)
                }
                _ => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
            },
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        match self.do_read(ino, fh, offset, size, req.pid()) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.do_release(fh);
        reply.ok();
    }

    // Nothing to flush or sync in a read-only tree. ENOSYS, which the
    // kernel takes as success for the caller's close() or fsync() and as a
    // sign to send no more of them (one round trip per mount, not one per
    // close), answered without fuser's default "[Not Implemented]" warning.
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let files = self.inodes.len() as u64;
        reply.statfs(0, 0, 0, files, 0, 4096, 255, 4096);
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        reply.error(Errno::NO_XATTR);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        if size == 0 {
            reply.size(0)
        } else {
            reply.data(&[])
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        match self.inode(ino) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    // Everything that would change the tree: read-only. (The kernel already
    // says EROFS for a read-only mount; these make it explicit.)

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mknod(
        &self,
        _req: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _m: u32,
        _u: u32,
        _r: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mkdir(&self, _req: &Request, _p: INodeNo, _n: &OsStr, _m: u32, _u: u32, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }

    fn unlink(&self, _req: &Request, _p: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn rmdir(&self, _req: &Request, _p: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn symlink(&self, _req: &Request, _p: INodeNo, _n: &OsStr, _t: &Path, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }

    fn rename(
        &self,
        _req: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _np: INodeNo,
        _nn: &OsStr,
        _f: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn link(&self, _req: &Request, _i: INodeNo, _np: INodeNo, _nn: &OsStr, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }

    fn create(
        &self,
        _req: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _m: u32,
        _u: u32,
        _f: i32,
        reply: fuser::ReplyCreate,
    ) {
        reply.error(Errno::EROFS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _i: INodeNo,
        _n: &OsStr,
        _v: &[u8],
        _f: i32,
        _p: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn removexattr(&self, _req: &Request, _i: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }
}
