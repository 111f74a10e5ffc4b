//! The FUSE filesystem: thin handlers over [`InputsFs`]'s helpers. Each
//! helper returns `Result<_, Errno>`; each handler makes exactly one reply,
//! from its worker thread, or — for an open whose blob must be fetched —
//! from the task that fetched it, so no worker thread waits on the store
//! for a blob.
//!
//! Content never changes, so everything is cached by the kernel for as long
//! as it likes (long TTLs, `FOPEN_KEEP_CACHE`, directories opened without
//! asking and their listings cached, readdirplus, cached symlinks,
//! negative entries). A file whose blob is a local file (the embedded
//! store, or the blob cache) is opened with FUSE passthrough where the
//! kernel has it, so reads never reach this process; its backing file is
//! kept across opens ([`crate::backing`]).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};
use tracing::debug;
use tvix_oci_castore::B3Digest;

use crate::fetch::Fetcher;
use crate::files::reply_opened;
use crate::inodes::{Children, Inode, InodeKind, InodeTable};
use crate::opens::{Handle, Opens};

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

/// What an open needs next.
pub(crate) enum Opening {
    /// Answered: the handle's number and itself.
    Done(u64, Arc<Handle>),
    /// The blob is only in the store: fetch it, then [`InputsFs::finish_open`].
    Fetch(B3Digest, u64),
}

impl InputsFs {
    /// How an open of a blob only the store has goes on: a big one is
    /// opened at once and served as it arrives; a small one is fetched
    /// (and checked) first.
    pub(crate) fn open_absent(&self, ino: u64, digest: B3Digest, size: u64) -> Opening {
        if size < self.fetcher.stream_from {
            return Opening::Fetch(digest, size);
        }
        let (stream, _) = self.fetcher.stream(ino, digest, size, true);
        let (fh, h) = self.opens.add_streamed(ino, stream);
        Opening::Done(fh, h)
    }
}

/// The filesystem state shared by the FUSE worker threads.
#[derive(Debug)]
pub(crate) struct InputsFs {
    pub(crate) inodes: Arc<InodeTable>,
    pub(crate) fetcher: Arc<Fetcher>,
    pub(crate) rt: tokio::runtime::Handle,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) want_passthrough: bool,
    /// Queue directories' files for read-ahead when they are listed.
    pub(crate) read_ahead: bool,
    /// Let the kernel open files without asking, where it can.
    pub(crate) want_no_open: bool,
    pub(crate) no_open: AtomicBool,
    pub(crate) passthrough: AtomicBool,
    /// Whether the kernel opens directories without asking (we answer
    /// ENOSYS to its first `opendir`, which it offered to take as "never
    /// ask again").
    no_opendir: AtomicBool,
    pub(crate) opens: Arc<Opens>,
}

impl InputsFs {
    pub(crate) fn new(
        fetcher: Arc<Fetcher>,
        rt: tokio::runtime::Handle,
        (uid, gid): (u32, u32),
        (want_passthrough, want_no_open): (bool, bool),
        read_ahead: bool,
    ) -> Self {
        Self {
            inodes: fetcher.inodes.clone(),
            fetcher,
            rt,
            uid,
            gid,
            want_passthrough,
            read_ahead,
            want_no_open,
            no_open: AtomicBool::new(false),
            passthrough: AtomicBool::new(false),
            no_opendir: AtomicBool::new(false),
            opens: Arc::new(Opens::new()),
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

    fn children(&self, ino: u64, pid: u32) -> Result<Arc<Children>, Errno> {
        let res = self.inodes.children(ino, |digest, size, by| {
            let what = format!("fetching directory {digest}");
            let fetch = self.fetcher.directory(*digest, size, by);
            // On this thread: a lookup has nothing to do until it is here.
            let dir = self
                .rt
                .block_on(self.fetcher.guarded(&what, ino, pid, fetch))?;
            self.fetcher
                .stats
                .dirs_fetched
                .fetch_add(1, Ordering::Relaxed);
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
    /// Yields (offset of the next entry, inode, attributes, name). A first
    /// listing queues the directory's files for read-ahead.
    fn listing(
        &self,
        ino: INodeNo,
        offset: u64,
        pid: u32,
    ) -> Result<impl Iterator<Item = (u64, u64, FileAttr, Vec<u8>)> + '_, Errno> {
        let inode = self.inode(ino)?;
        let children = self.children(ino.0, pid)?;
        if offset == 0 && self.read_ahead {
            self.queue_files(&children);
        }
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

    /// Queues for read-ahead the blobs of the files listed in `children`
    /// that only the store has.
    fn queue_files(&self, children: &Children) {
        let f = &self.fetcher;
        let files =
            children
                .entries()
                .iter()
                .filter_map(|(_, ino)| match &self.inodes.get(*ino)?.kind {
                    InodeKind::File { digest, size, .. }
                        if *size > 0
                            && f.blobs.local_path(digest).is_none()
                            && !f.blobs.range_reads() =>
                    {
                        Some((*ino, *digest, *size))
                    }
                    _ => None,
                });
        f.read_ahead(files);
    }
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
        // Directories need no state here: once the kernel may open them
        // without asking, it stops sending opendir and releasedir (two
        // round trips per directory a `find` walks).
        if config
            .add_capabilities(InitFlags::FUSE_NO_OPENDIR_SUPPORT)
            .is_ok()
        {
            self.no_opendir.store(true, Ordering::Relaxed);
        }
        // Files too, where asked: every open of a known file then costs
        // nothing here, and its pages stay cached by the kernel; reads
        // come here instead of passing through.
        if self.want_no_open
            && config
                .add_capabilities(InitFlags::FUSE_NO_OPEN_SUPPORT)
                .is_ok()
        {
            self.no_open.store(true, Ordering::Relaxed);
        }
        // Passthrough needs the kernel's support, and a stacking depth left
        // for the overlay the executor puts on top: FUSE at depth 1, the
        // overlay at 2, the kernel's maximum.
        if self.want_passthrough
            && !self.no_open.load(Ordering::Relaxed)
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok()
        {
            self.passthrough.store(true, Ordering::Relaxed);
        }
        self.fetcher
            .stats
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
                self.fetcher
                    .stats
                    .negative_lookups
                    .fetch_add(1, Ordering::Relaxed);
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
            // The kernel then opens directories itself, keeping their
            // listings cached (FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR).
            Ok(true) if self.no_opendir.load(Ordering::Relaxed) => reply.error(Errno::ENOSYS),
            Ok(true) => reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR,
            ),
            Ok(false) => reply.error(Errno::ENOTDIR),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, _nlookup: u64) {
        // Evicted by the kernel: no open file of it is left, and a new
        // lookup makes a new kernel inode. Its backing file may go.
        self.opens.backings.forget(ino.0);
        self.opens.files.forget(ino.0);
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
        if self.no_open.load(Ordering::Relaxed) {
            // A readable file: "no open needed", and the kernel asks no
            // more (this open and every later one succeed in the kernel).
            return match self.openable(ino, flags) {
                Ok(_) => reply.error(Errno::ENOSYS),
                Err(e) => reply.error(e),
            };
        }
        match self.start_open(ino, flags, &|f| reply.open_backing(f)) {
            Ok(Opening::Done(fh, handle)) => reply_opened(reply, fh, &handle),
            Ok(Opening::Fetch(digest, size)) => {
                // Answered by the task once the blob is here: this thread
                // goes on serving other requests meanwhile.
                let (fetcher, opens) = (self.fetcher.clone(), self.opens.clone());
                let passthrough = self.passthrough.load(Ordering::Relaxed);
                let pid = req.pid();
                self.rt.spawn(async move {
                    match fetcher.fetch(ino.0, pid, digest, size).await {
                        Ok(file) => {
                            let open_backing = |f: &std::fs::File| reply.open_backing(f);
                            let (fh, handle) = opens.open_local(
                                ino.0,
                                file,
                                passthrough.then_some(&open_backing as _),
                                &fetcher.stats,
                            );
                            reply_opened(reply, fh, &handle)
                        }
                        Err(e) => reply.error(e),
                    }
                });
            }
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
        if fh.0 == 0 && self.no_open.load(Ordering::Relaxed) {
            return self.read_unopened(ino, offset, size, req.pid(), reply);
        }
        if let Some(stream) = self.opens.streamed(fh.0) {
            return self.read_stream(stream, offset, size, req.pid(), reply);
        }
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
