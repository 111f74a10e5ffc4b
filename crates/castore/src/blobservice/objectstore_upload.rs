//! Writing one blob to object storage. Its key is its digest, known only
//! once the last byte is written, and an object must never be seen there
//! before it is complete, so nothing is sent before [`BlobWriter::close`]:
//!
//! - up to [`SINGLE_PUT_MAX`] bytes are kept in memory and sent in one PUT,
//!   which stores the object whole or not at all;
//! - a larger blob goes to an unnamed temp file (`$TMPDIR`; unlinked from
//!   the start, so a crash leaves nothing behind), then, unless the key
//!   holds it already, to the key in a multipart upload of up to
//!   [`PARTS_IN_FLIGHT`] parts at a time (and [`PART_BUDGET_MIB`] of parts
//!   in memory for all uploads to the store), hashed again as it is read back
//!   and completed only when that digest matches. An upload that fails or
//!   is dropped is aborted: its parts were never visible.
//!
//! A writer that knows the blob's digest and size before its bytes
//! ([`KnownUpload`], for a file that can be read twice: once to hash it,
//! once to send it) needs no temp file: unless the key holds the blob
//! already, the bytes are hashed on the way and go up to
//! [`KNOWN_PUT_MAX`] into memory, sent in one PUT once they hash to that
//! digest, beyond it straight into the parts of a multipart upload,
//! completed only once they hash to that digest.

use std::io::{self, SeekFrom};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use object_store::path::Path;
use object_store::{MultipartUpload, ObjectStoreExt, PutPayloadMut};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::BlobWriter;
use crate::B3Digest;
use crate::objectstore::{Bucket, Kind};

/// The largest blob sent in one PUT; larger ones are multipart uploads.
pub const SINGLE_PUT_MAX: u64 = 8 << 20;
/// The largest blob sent in one PUT when its digest is known first
/// (`open_write_known`): held in memory (within [`PART_BUDGET_MIB`]) and
/// checked there before it is sent, it saves the server a copy of every
/// part into the object at the end (rclone's cutoff is 200 MiB).
pub const KNOWN_PUT_MAX: u64 = 128 << 20;
/// Parts of one multipart upload sent at once.
pub const PARTS_IN_FLIGHT: usize = 4;
/// MiB of parts (and of blobs up to [`KNOWN_PUT_MAX`]) held in memory at
/// once by all uploads to one store.
pub const PART_BUDGET_MIB: u32 = 128;
/// S3 allows 10,000 parts of at least 5 MiB (but the last).
const MAX_PARTS: u64 = 10_000;

/// The size of each part of a multipart upload of `len` bytes.
fn part_size(len: u64) -> usize {
    let size = len.div_ceil(MAX_PARTS).max(SINGLE_PUT_MAX);
    usize::try_from(size).unwrap_or(usize::MAX)
}

/// One blob being written (see the module docs).
pub(super) struct Upload {
    bucket: Arc<Bucket>,
    hasher: blake3::Hasher,
    len: u64,
    /// The bytes while they fit [`SINGLE_PUT_MAX`].
    mem: Vec<Bytes>,
    /// The bytes once they do not.
    spill: Option<tokio::fs::File>,
}

impl Upload {
    pub(super) fn new(bucket: Arc<Bucket>) -> Self {
        Self {
            bucket,
            hasher: blake3::Hasher::new(),
            len: 0,
            mem: Vec::new(),
            spill: None,
        }
    }

    /// The temp file, created (with the bytes so far) on first use.
    async fn spill(&mut self) -> io::Result<&mut tokio::fs::File> {
        if self.spill.is_none() {
            let file = tokio::task::spawn_blocking(tempfile::tempfile)
                .await
                .map_err(io::Error::other)?
                .map_err(|e| spill_err("creating", e))?;
            let mut file = tokio::fs::File::from_std(file);
            for chunk in std::mem::take(&mut self.mem) {
                file.write_all(&chunk)
                    .await
                    .map_err(|e| spill_err("writing", e))?;
            }
            self.spill = Some(file);
        }
        self.spill
            .as_mut()
            .ok_or_else(|| io::Error::other("the blob's temp file is gone"))
    }
}

fn spill_err(what: &str, e: io::Error) -> io::Error {
    let dir = std::env::temp_dir();
    io::Error::new(
        e.kind(),
        format!("{what} a blob's temp file in {}: {e}", dir.display()),
    )
}

#[async_trait]
impl BlobWriter for Upload {
    async fn write(&mut self, data: Bytes) -> io::Result<()> {
        self.hasher.update(&data);
        self.len += data.len() as u64;
        if self.spill.is_none() && self.len <= SINGLE_PUT_MAX {
            self.mem.push(data);
            return Ok(());
        }
        self.spill()
            .await?
            .write_all(&data)
            .await
            .map_err(|e| spill_err("writing", e))
    }

    async fn close(self: Box<Self>) -> io::Result<B3Digest> {
        let Upload {
            bucket,
            hasher,
            len,
            mem,
            spill,
        } = *self;
        let digest = B3Digest::from(hasher.finalize());
        let key = bucket.key(Kind::Blob, &digest);
        match spill {
            None => {
                let mut payload = PutPayloadMut::new();
                mem.into_iter().for_each(|b| payload.push(b));
                // On the runtime, beside the HTTP connection's task: a
                // writer driven from a blocking thread (the import's)
                // would hand every step across threads.
                let (store, at) = (bucket.store.clone(), key.clone());
                tokio::spawn(async move { store.put(&at, payload.freeze()).await })
                    .await
                    .map_err(io::Error::other)?
                    .map_err(|e| bucket.io_err(&format!("blob {digest}: storing"), &key, e))?;
            }
            Some(file) => upload_parts(&bucket, &key, file, len, &digest).await?,
        }
        Ok(digest)
    }
}

/// A blob whose digest and size are known before its bytes (see the
/// module docs): written straight into a multipart upload to its key.
pub(super) struct KnownUpload {
    bucket: Arc<Bucket>,
    digest: B3Digest,
    key: Path,
    size: u64,
    part: usize,
    /// Sent in one PUT (no multipart upload).
    whole: bool,
    hasher: blake3::Hasher,
    len: u64,
    /// The part (or the whole blob) being filled, one allocation of its
    /// size (freed whole: many 1 MiB chunks held at once would linger
    /// in the allocator's per-thread arenas), and its share of the
    /// store's part budget.
    filling: Vec<u8>,
    permit: Option<OwnedSemaphorePermit>,
    upload: Unfinished,
}

impl KnownUpload {
    /// The writer for the blob `digest` of `size` bytes, or `None` when
    /// its key holds it already (same digest, same bytes).
    pub(super) async fn start(
        bucket: Arc<Bucket>,
        digest: B3Digest,
        size: u64,
    ) -> io::Result<Option<Self>> {
        let key = bucket.key(Kind::Blob, &digest);
        let err = |what: &str, e| bucket.io_err(&format!("blob {digest}: {what}"), &key, e);
        match bucket.store.head(&key).await {
            Ok(_) => return Ok(None),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(err("stat", e)),
        }
        let whole = size <= KNOWN_PUT_MAX;
        let upload = if whole {
            None
        } else {
            let up = bucket
                .store
                .put_multipart(&key)
                .await
                .map_err(|e| err("starting upload", e))?;
            Some(up)
        };
        Ok(Some(Self {
            part: if whole {
                usize::try_from(size).unwrap_or(usize::MAX)
            } else {
                part_size(size)
            },
            whole,
            bucket,
            digest,
            key,
            size,
            hasher: blake3::Hasher::new(),
            len: 0,
            filling: Vec::new(),
            permit: None,
            upload: Unfinished {
                upload,
                parts: JoinSet::new(),
            },
        }))
    }

    fn err(&self, what: &str, e: object_store::Error) -> io::Error {
        self.bucket
            .io_err(&format!("blob {}: {what}", self.digest), &self.key, e)
    }

    /// Sends the part filled so far, once fewer than [`PARTS_IN_FLIGHT`]
    /// are on their way.
    async fn send_part(&mut self) -> io::Result<()> {
        while self.upload.parts.len() >= PARTS_IN_FLIGHT {
            self.joined().await?;
        }
        let body = Bytes::from(std::mem::take(&mut self.filling));
        let permit = self.permit.take();
        let sent = self.upload.get()?.put_part(body.into());
        self.upload.parts.spawn(async move {
            let res = sent.await;
            drop(permit);
            res
        });
        Ok(())
    }

    /// Waits for the next part task to end.
    async fn joined(&mut self) -> io::Result<()> {
        match joined(self.upload.parts.join_next().await) {
            Ok(()) => Ok(()),
            Err(Sent::Store(e)) => Err(self.err("uploading", e)),
            Err(Sent::Io(e)) => Err(e),
        }
    }
}

#[async_trait]
impl BlobWriter for KnownUpload {
    async fn write(&mut self, data: Bytes) -> io::Result<()> {
        self.hasher.update(&data);
        self.len += data.len() as u64;
        if self.len > self.size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "blob {}: more than its {} bytes written; not stored",
                    self.digest, self.size
                ),
            ));
        }
        let mut data = &data[..];
        while !data.is_empty() {
            if self.permit.is_none() {
                let mib = u32::try_from(self.part.div_ceil(1 << 20))
                    .map_or(PART_BUDGET_MIB, |m| m.min(PART_BUDGET_MIB));
                let permit = self
                    .bucket
                    .part_budget
                    .clone()
                    .acquire_many_owned(mib)
                    .await
                    .map_err(io::Error::other)?;
                self.permit = Some(permit);
                self.filling.reserve_exact(self.part);
            }
            let take = data.len().min(self.part - self.filling.len());
            let (now, rest) = data.split_at(take);
            self.filling.extend_from_slice(now);
            data = rest;
            if self.filling.len() == self.part && !self.whole {
                self.send_part().await?;
            }
        }
        Ok(())
    }

    async fn close(mut self: Box<Self>) -> io::Result<B3Digest> {
        let actual = B3Digest::from(self.hasher.finalize());
        if self.len != self.size || actual != self.digest {
            let msg = format!(
                "blob {}: the bytes written ({} bytes, {actual}) are not the {} bytes announced; not stored",
                self.digest, self.len, self.size
            );
            self.upload.abort().await;
            return Err(io::Error::new(io::ErrorKind::InvalidData, msg));
        }
        if self.whole {
            let payload = Bytes::from(std::mem::take(&mut self.filling));
            // On the runtime, beside the HTTP connection's task (see
            // `Upload::close`).
            let (store, at, permit) = (
                self.bucket.store.clone(),
                self.key.clone(),
                self.permit.take(),
            );
            let res = tokio::spawn(async move {
                let res = store.put(&at, payload.into()).await;
                drop(permit);
                res
            })
            .await
            .map_err(io::Error::other)?;
            return match res {
                Ok(_) => Ok(self.digest),
                Err(e) => Err(self.err("storing", e)),
            };
        }
        if !self.filling.is_empty() || self.len == 0 {
            self.send_part().await?;
        }
        while !self.upload.parts.is_empty() {
            self.joined().await?;
        }
        match self.upload.get()?.complete().await {
            Ok(_) => {
                self.upload.upload = None; // complete: nothing to abort
                Ok(self.digest)
            }
            Err(e) => Err(self.err("completing upload", e)),
        }
    }
}

/// Sends the temp `file` (`len` bytes hashing to `digest`) to `key` in a
/// multipart upload, unless the key holds it already.
async fn upload_parts(
    bucket: &Bucket,
    key: &Path,
    mut file: tokio::fs::File,
    len: u64,
    digest: &B3Digest,
) -> io::Result<()> {
    let err = |what: &str, e| bucket.io_err(&format!("blob {digest}: {what}"), key, e);
    match bucket.store.head(key).await {
        Ok(_) => return Ok(()), // same digest, same bytes
        Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(err("stat", e)),
    }
    file.seek(SeekFrom::Start(0))
        .await
        .map_err(|e| spill_err("rewinding", e))?;
    let upload = bucket
        .store
        .put_multipart(key)
        .await
        .map_err(|e| err("starting upload", e))?;
    let mut upload = Unfinished {
        upload: Some(upload),
        parts: JoinSet::new(),
    };
    let res = match send_parts(
        &mut upload,
        &bucket.part_budget,
        &mut file,
        part_size(len),
        digest,
    )
    .await
    {
        Ok(()) => match upload.get()?.complete().await {
            Ok(_) => {
                upload.upload = None; // complete: nothing to abort
                return Ok(());
            }
            Err(e) => Err(err("completing upload", e)),
        },
        Err(Sent::Store(e)) => Err(err("uploading", e)),
        Err(Sent::Io(e)) => Err(e),
    };
    upload.abort().await;
    res
}

enum Sent {
    Store(object_store::Error),
    Io(io::Error),
}

/// Reads `file` into parts of `part` bytes, each sent by a task of its
/// own, up to [`PARTS_IN_FLIGHT`] at once and within the store's
/// [`PART_BUDGET_MIB`], hashing it again: a temp file whose bytes changed
/// fails the upload before it completes.
async fn send_parts(
    upload: &mut Unfinished,
    budget: &Arc<Semaphore>,
    file: &mut tokio::fs::File,
    part: usize,
    digest: &B3Digest,
) -> Result<(), Sent> {
    let mib =
        u32::try_from(part.div_ceil(1 << 20)).map_or(PART_BUDGET_MIB, |m| m.min(PART_BUDGET_MIB));
    let mut again = blake3::Hasher::new();
    loop {
        while upload.parts.len() >= PARTS_IN_FLIGHT {
            joined(upload.parts.join_next().await)?;
        }
        let permit = budget
            .clone()
            .acquire_many_owned(mib)
            .await
            .map_err(|e| Sent::Io(io::Error::other(e)))?;
        let mut buf = Vec::with_capacity(part);
        (&mut *file)
            .take(part as u64)
            .read_to_end(&mut buf)
            .await
            .map_err(|e| Sent::Io(spill_err("reading", e)))?;
        if buf.is_empty() {
            break;
        }
        again.update(&buf);
        let sent = upload.get().map_err(Sent::Io)?.put_part(buf.into());
        upload.parts.spawn(async move {
            let res = sent.await;
            drop(permit);
            res
        });
    }
    while let Some(res) = upload.parts.join_next().await {
        joined(Some(res))?;
    }
    let actual = B3Digest::from(again.finalize());
    if actual != *digest {
        return Err(Sent::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "blob {digest}: its temp file changed before upload (now {actual}); not stored"
            ),
        )));
    }
    Ok(())
}

/// The outcome of one part's task.
fn joined(
    res: Option<Result<object_store::Result<()>, tokio::task::JoinError>>,
) -> Result<(), Sent> {
    match res {
        None | Some(Ok(Ok(()))) => Ok(()),
        Some(Ok(Err(e))) => Err(Sent::Store(e)),
        Some(Err(e)) => Err(Sent::Io(io::Error::other(e))),
    }
}

/// A multipart upload not yet completed and the tasks sending its parts.
/// Aborted when dropped (a cancelled write), in the background: the part
/// tasks finish first (each bounded by the store's request timeouts), so
/// no part lands after the abort.
struct Unfinished {
    upload: Option<Box<dyn MultipartUpload>>,
    parts: JoinSet<object_store::Result<()>>,
}

impl Unfinished {
    fn get(&mut self) -> io::Result<&mut Box<dyn MultipartUpload>> {
        self.upload
            .as_mut()
            .ok_or_else(|| io::Error::other("the multipart upload is gone"))
    }

    /// Waits for the part tasks, then aborts the upload (best effort: a
    /// store that fails it keeps the parts until its lifecycle rule
    /// removes them).
    async fn abort(&mut self) {
        stop(std::mem::take(&mut self.parts), self.upload.take()).await;
    }
}

async fn stop(
    mut parts: JoinSet<object_store::Result<()>>,
    upload: Option<Box<dyn MultipartUpload>>,
) {
    // Parts already sent are let finish: one cut off mid-request could
    // still land on the server after the abort, outliving it.
    while parts.join_next().await.is_some() {}
    if let Some(mut u) = upload {
        let _ = u.abort().await;
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        let (parts, upload) = (std::mem::take(&mut self.parts), self.upload.take());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(stop(parts, upload));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_fit_the_s3_limits() {
        assert_eq!(part_size(1), 8 << 20);
        assert_eq!(part_size(64 << 30), 8 << 20);
        // 1 TiB: 10,000 parts of 110 MB.
        let p = part_size(1 << 40) as u64;
        assert!(p >= 5 << 20 && (1u64 << 40).div_ceil(p) <= MAX_PARTS, "{p}");
    }
}
