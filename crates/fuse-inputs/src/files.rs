//! Opening and reading files: at once when the blob is local (passed
//! through, or served from its file), from a task once it is fetched and
//! checked when only the store has it. The other half of [`InputsFs`],
//! apart from the directory side in [`crate::fs`].

use std::sync::Arc;
use std::sync::atomic::Ordering;

use fuser::{Errno, FileHandle, FopenFlags, INodeNo, OpenAccMode, OpenFlags, ReplyData, ReplyOpen};
use tokio::io::AsyncReadExt;
use tvix_oci_castore::B3Digest;

use crate::fetch::{Fetcher, Local};
use crate::fs::{InputsFs, Opening};
use crate::inodes::InodeKind;
use crate::opens::{Handle, OpenBacking, Opens};
use crate::stream::Stream;

impl InputsFs {
    /// The blob and size of file `ino`, if it may be opened with `flags`.
    pub(crate) fn openable(
        &self,
        ino: INodeNo,
        flags: OpenFlags,
    ) -> Result<(B3Digest, u64), Errno> {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return Err(Errno::EROFS);
        }
        match self.inode(ino)?.kind {
            InodeKind::File { digest, size, .. } => Ok((digest, size)),
            _ => Err(Errno::EISDIR),
        }
    }

    /// Starts opening a file: answered at once when its blob is local (or
    /// read in place), else the blob to fetch first. `open_backing`
    /// registers a backing file with the kernel for passthrough.
    pub(crate) fn start_open(
        &self,
        ino: INodeNo,
        flags: OpenFlags,
        open_backing: OpenBacking<'_>,
    ) -> Result<Opening, Errno> {
        let (digest, size) = self.openable(ino, flags)?;
        let (digest, size) = (&digest, &size);
        let stats = &self.fetcher.stats;
        stats.opens.fetch_add(1, Ordering::Relaxed);
        self.fetcher.read_log.note(digest, *size);
        // Opened before: the kernel already has its backing file.
        if self.passthrough.load(Ordering::Relaxed)
            && let Some(id) = self.opens.backings.get(ino.0)
        {
            let (fh, h) = self.opens.add(ino.0, Handle::Passthrough(id));
            return Ok(Opening::Done(fh, h));
        }
        // Trusted stores with cheap range reads are read in place.
        let blobs = &self.fetcher.blobs;
        if blobs.range_reads() && blobs.local_path(digest).is_none() {
            let (fh, h) = self.opens.add(ino.0, Handle::Ranges(*digest, *size));
            return Ok(Opening::Done(fh, h));
        }
        match self.fetcher.local(ino.0, digest, *size)? {
            Local::File(file) => {
                let (fh, h) = self.finish_open(ino.0, file, open_backing);
                Ok(Opening::Done(fh, h))
            }
            Local::Absent => Ok(self.open_absent(ino.0, *digest, *size)),
        }
    }

    /// Opens the local `file` of inode `ino` ([`Opens::open_local`]).
    pub(crate) fn finish_open(
        &self,
        ino: u64,
        file: std::fs::File,
        open_backing: OpenBacking<'_>,
    ) -> (u64, Arc<Handle>) {
        let passthrough = self.passthrough.load(Ordering::Relaxed);
        self.opens.open_local(
            ino,
            file,
            passthrough.then_some(open_backing),
            &self.fetcher.stats,
        )
    }

    /// Opens a file, waiting for its blob if it must be fetched (for
    /// callers without a kernel: [`crate::handlers`]).
    pub(crate) fn do_open(
        &self,
        ino: INodeNo,
        flags: OpenFlags,
        pid: u32,
        open_backing: OpenBacking<'_>,
    ) -> Result<(u64, Arc<Handle>), Errno> {
        match self.start_open(ino, flags, open_backing)? {
            Opening::Done(fh, h) => Ok((fh, h)),
            Opening::Fetch(digest, size) => {
                let file = self
                    .rt
                    .block_on(self.fetcher.fetch(ino.0, pid, digest, size))?;
                Ok(self.finish_open(ino.0, file, open_backing))
            }
        }
    }

    pub(crate) fn do_release(&self, fh: FileHandle) {
        self.opens.release(fh.0);
    }

    pub(crate) fn do_read(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        pid: u32,
    ) -> Result<Vec<u8>, Errno> {
        let handle = self.opens.get(fh.0).ok_or(Errno::EBADF)?;
        match &*handle {
            Handle::File(f) => self.fetcher.read_local(ino.0, f, offset, size),
            Handle::Ranges(digest, declared) => {
                self.read_range(ino.0, *digest, *declared, offset, size, pid)
            }
            Handle::Streamed(s) => self
                .rt
                .block_on(self.fetcher.read_streamed(s, offset, size, pid)),
            Handle::Passthrough(_) => Err(Errno::EIO), // the kernel reads these itself
        }
    }

    fn served(&self, buf: Vec<u8>) -> Result<Vec<u8>, Errno> {
        let stats = &self.fetcher.stats;
        stats
            .bytes_served
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(buf)
    }

    /// Up to `size` bytes at `offset` of blob `digest` (of `declared`
    /// bytes), read in place from a store with range reads, never past the
    /// declared size.
    fn read_range(
        &self,
        ino: u64,
        d: B3Digest,
        declared: u64,
        offset: u64,
        size: u32,
        pid: u32,
    ) -> Result<Vec<u8>, Errno> {
        let blobs = self.fetcher.blobs.clone();
        // What stat promised: up to the declared size, no further.
        let len = declared.saturating_sub(offset).min(u64::from(size)) as usize;
        let what = format!("reading blob {d}");
        let read = async move {
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
        };
        // A trusted store read in place: no wait worth a task.
        let data = self
            .rt
            .block_on(self.fetcher.guarded(&what, ino, pid, read))?;
        self.served(data)
    }

    /// A read of a file the kernel opened without asking (no-open): from
    /// the inode's blob file, kept open across reads; when only the store
    /// has the blob, answered by a task once it is fetched and checked.
    pub(crate) fn read_unopened(
        &self,
        ino: INodeNo,
        offset: u64,
        size: u32,
        pid: u32,
        reply: ReplyData,
    ) {
        let (digest, declared) = match self.openable(ino, OpenFlags(libc::O_RDONLY)) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        self.fetcher.read_log.note(&digest, declared);
        let blobs = &self.fetcher.blobs;
        let (fetcher, opens) = (&self.fetcher, &self.opens);
        let res = if let Some(f) = opens.files.get(ino.0) {
            fetcher.read_local(ino.0, &f, offset, size)
        } else if blobs.range_reads() && blobs.local_path(&digest).is_none() {
            self.read_range(ino.0, digest, declared, offset, size, pid)
        } else {
            match self.fetcher.local(ino.0, &digest, declared) {
                Ok(Local::File(f)) => read_kept(fetcher, opens, ino.0, f, (offset, size)),
                Ok(Local::Absent) if declared >= fetcher.stream_from => {
                    let (stream, _) = fetcher.stream(ino.0, digest, declared, true);
                    return self.read_stream(stream, offset, size, pid, reply);
                }
                Ok(Local::Absent) => {
                    let (fetcher, opens) = (fetcher.clone(), opens.clone());
                    self.rt.spawn(async move {
                        let res = match fetcher.fetch(ino.0, pid, digest, declared).await {
                            Ok(f) => read_kept(&fetcher, &opens, ino.0, f, (offset, size)),
                            Err(e) => Err(e),
                        };
                        reply_data(reply, res)
                    });
                    return;
                }
                Err(e) => Err(e),
            }
        };
        reply_data(reply, res)
    }
}

impl InputsFs {
    /// A read from a blob as it arrives: answered here when the range is
    /// in, else by a task once it is.
    pub(crate) fn read_stream(
        &self,
        stream: Arc<Stream>,
        offset: u64,
        size: u32,
        pid: u32,
        reply: ReplyData,
    ) {
        if let Some(res) = self.fetcher.read_streamed_now(&stream, offset, size) {
            return reply_data(reply, res);
        }
        let fetcher = self.fetcher.clone();
        self.rt.spawn(async move {
            let res = fetcher.read_streamed(&stream, offset, size, pid).await;
            reply_data(reply, res)
        });
    }
}

/// A read of `ino` from its blob `file`, which is kept open for the next
/// reads (or the one kept already, if another read raced this one).
fn read_kept(
    fetcher: &Fetcher,
    opens: &Opens,
    ino: u64,
    file: std::fs::File,
    (offset, size): (u64, u32),
) -> Result<Vec<u8>, Errno> {
    let (f, _) = opens.files.get_or_open(ino, || Ok::<_, Errno>(file))?;
    fetcher.read_local(ino, &f, offset, size)
}

/// Answers a read.
fn reply_data(reply: ReplyData, res: Result<Vec<u8>, Errno>) {
    match res {
        Ok(data) => reply.data(&data),
        Err(e) => reply.error(e),
    }
}

/// Answers an open with `handle`, numbered `fh`.
pub(crate) fn reply_opened(reply: ReplyOpen, fh: u64, handle: &Handle) {
    match handle {
        // The kernel refuses KEEP_CACHE with passthrough: the page cache is
        // the backing file's own.
        Handle::Passthrough(id) => {
            reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), id)
        }
        // Not kept: pages of a blob served before it was verified must not
        // outlive a failed check (an open without KEEP_CACHE drops them).
        Handle::Streamed(_) => reply.opened(FileHandle(fh), FopenFlags::empty()),
        _ => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
    }
}
