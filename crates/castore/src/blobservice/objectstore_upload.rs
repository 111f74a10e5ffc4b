//! Writing one blob to object storage. Its key is its digest, known only
//! once the last byte is written, and an object must never be seen there
//! before it is complete, so nothing is sent before [`BlobWriter::close`]:
//!
//! - up to [`SINGLE_PUT_MAX`] bytes are kept in memory and sent in one PUT,
//!   which stores the object whole or not at all;
//! - a larger blob goes to an unnamed temp file (`$TMPDIR`; unlinked from
//!   the start, so a crash leaves nothing behind), then, unless the key
//!   holds it already, to the key in a multipart upload of up to
//!   [`PARTS_IN_FLIGHT`] parts at a time, hashed again as it is read back
//!   and completed only when that digest matches. An upload that fails or
//!   is dropped is aborted: its parts were never visible.

use std::io::{self, SeekFrom};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use futures::stream::FuturesUnordered;
use object_store::path::Path;
use object_store::{MultipartUpload, ObjectStoreExt, PutPayloadMut};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::BlobWriter;
use crate::B3Digest;
use crate::objectstore::{Bucket, Kind};

/// The largest blob sent in one PUT; larger ones are multipart uploads.
pub const SINGLE_PUT_MAX: u64 = 8 << 20;
/// Parts of a multipart upload sent at once.
pub const PARTS_IN_FLIGHT: usize = 4;
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
                bucket
                    .store
                    .put(&key, payload.freeze())
                    .await
                    .map_err(|e| bucket.io_err(&format!("blob {digest}: storing"), &key, e))?;
            }
            Some(file) => upload_parts(&bucket, &key, file, len, &digest).await?,
        }
        Ok(digest)
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
    let mut upload = Unfinished(Some(upload));
    let res = match send_parts(&mut upload, &mut file, part_size(len), digest).await {
        Ok(()) => match upload.get()?.complete().await {
            Ok(_) => {
                upload.0 = None; // complete: nothing to abort
                return Ok(());
            }
            Err(e) => Err(err("completing upload", e)),
        },
        Err(Sent::Store(e)) => Err(err("uploading", e)),
        Err(Sent::Io(e)) => Err(e),
    };
    if let Some(mut u) = upload.0.take() {
        let _ = u.abort().await;
    }
    res
}

enum Sent {
    Store(object_store::Error),
    Io(io::Error),
}

/// Reads `file` into parts of `part` bytes, up to [`PARTS_IN_FLIGHT`] sent
/// at once, hashing it again: a temp file whose bytes changed fails the
/// upload before it completes.
async fn send_parts(
    upload: &mut Unfinished,
    file: &mut tokio::fs::File,
    part: usize,
    digest: &B3Digest,
) -> Result<(), Sent> {
    let mut again = blake3::Hasher::new();
    let mut in_flight = FuturesUnordered::new();
    loop {
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
        while in_flight.len() >= PARTS_IN_FLIGHT {
            in_flight.try_next().await.map_err(Sent::Store)?;
        }
        in_flight.push(upload.get().map_err(Sent::Io)?.put_part(buf.into()));
    }
    while in_flight.try_next().await.map_err(Sent::Store)?.is_some() {}
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

/// A multipart upload not yet completed: aborted in the background when
/// dropped (a cancelled write), so its parts do not linger.
struct Unfinished(Option<Box<dyn MultipartUpload>>);

impl Unfinished {
    fn get(&mut self) -> io::Result<&mut Box<dyn MultipartUpload>> {
        self.0
            .as_mut()
            .ok_or_else(|| io::Error::other("the multipart upload is gone"))
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some(mut u) = self.0.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                let _ = u.abort().await;
            });
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
