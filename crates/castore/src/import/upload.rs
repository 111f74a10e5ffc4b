//! Storing one file: opened and read through its producer's
//! [`FileSource`] on a blocking thread, each chunk handed to the blob
//! writer and queued for the observer, its length checked against what
//! it was when opened.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::observe::FileMsg;
use super::{CHUNK, FileSource, IngestionError};
use crate::blobservice::BlobService;
use crate::{B3Digest, Node};

/// One file to store.
pub(super) struct Upload<E> {
    pub rt: tokio::runtime::Handle,
    pub blobs: Arc<dyn BlobService>,
    pub path: PathBuf,
    pub source: Box<dyn FileSource<Error = E>>,
    /// Where its bytes go to be observed, if anywhere.
    pub seen: Option<mpsc::Sender<FileMsg>>,
    pub permit: OwnedSemaphorePermit,
    pub deadline: Option<Instant>,
    /// Set when the ingestion was given up: stop reading.
    pub cancelled: Arc<AtomicBool>,
}

impl<E: 'static> Upload<E> {
    /// Stores the file (blocking: run on a blocking thread) and returns
    /// its node. The permit is released once the file is stored and, if
    /// observed, seen.
    pub(super) fn run(mut self) -> Result<Node, IngestionError<E>> {
        let meta = self.source.open().map_err(IngestionError::Producer)?;
        self.tell(FileMsg::Start(meta));
        let first = self
            .blobs
            .digest_first_from()
            .is_some_and(|f| meta.size >= f)
            && self.source.rewind().map_err(IngestionError::Producer)?;
        let digest = if first {
            self.hash_then_store(meta.size)?
        } else {
            let mut writer = self.store(self.blobs.open_write())?;
            self.read_through(meta.size, |up, data| {
                up.tell(FileMsg::Chunk(data.clone()));
                up.store(writer.write(data))
            })?;
            self.store(writer.close())?
        };
        let permit = Some(self.permit);
        if let Some(seen) = &self.seen {
            let _ = seen.blocking_send(FileMsg::End(permit));
        }
        Ok(Node::File {
            digest,
            size: meta.size,
            executable: meta.executable,
        })
    }

    /// Hashes the file (and shows it to the observer), then, unless the
    /// store has that blob already, reads it once more into a writer
    /// that knows its digest: a store that wants the digest first (see
    /// [`BlobService::digest_first_from`]) keeps nothing aside.
    fn hash_then_store(&mut self, size: u64) -> Result<B3Digest, IngestionError<E>> {
        let mut hasher = blake3::Hasher::new();
        self.read_through(size, |up, data| {
            hasher.update(&data);
            up.tell(FileMsg::Chunk(data));
            Ok(())
        })?;
        let digest = B3Digest::from(hasher.finalize());
        let Some(mut writer) = self.store(self.blobs.open_write_known(&digest, size))? else {
            return Ok(digest); // there already
        };
        if !self.source.rewind().map_err(IngestionError::Producer)? {
            return Err(IngestionError::Task(format!(
                "{}: could not be read a second time",
                self.path.display()
            )));
        }
        self.read_through(size, |up, data| up.store(writer.write(data)))?;
        // Bytes that changed between the reads fail the close (the
        // blob is not stored), naming the path.
        self.store(writer.close())
    }

    /// Reads the file from where it is to its end, each chunk handed to
    /// `each`; `size` is its length when opened, and reading more or
    /// fewer bytes fails with [`IngestionError::Changed`].
    fn read_through(
        &mut self,
        size: u64,
        mut each: impl FnMut(&Self, Bytes) -> Result<(), IngestionError<E>>,
    ) -> Result<(), IngestionError<E>> {
        let mut read = 0u64;
        loop {
            if self.cancelled.load(Ordering::Relaxed) {
                return Err(IngestionError::Task("cancelled".into()));
            }
            // The last read asks for one byte past the length when
            // opened: a file that grew is read that far only.
            let want = size.saturating_sub(read).clamp(1, CHUNK as u64) as usize;
            let mut buf = BytesMut::zeroed(want);
            let n = self
                .source
                .read(&mut buf)
                .map_err(IngestionError::Producer)?;
            if n == 0 {
                break;
            }
            read += n as u64;
            if read > size {
                break;
            }
            buf.truncate(n);
            each(self, buf.freeze())?;
        }
        if read != size {
            return Err(IngestionError::Changed {
                path: self.path.clone(),
                stat: size,
                read,
            });
        }
        Ok(())
    }

    /// Queues `msg` for the observer (which is gone only when the
    /// ingestion failed).
    fn tell(&self, msg: FileMsg) {
        if let Some(seen) = &self.seen {
            let _ = seen.blocking_send(msg);
        }
    }

    /// Runs a blob store call, until the deadline at most.
    fn store<T>(&self, call: impl Future<Output = io::Result<T>>) -> Result<T, IngestionError<E>> {
        store_call(&self.rt, &self.path, self.deadline, call)
    }
}

/// Runs a store call on `rt` for `path`, until `deadline` at most; its
/// failure is the store's.
fn store_call<T, E>(
    rt: &tokio::runtime::Handle,
    path: &Path,
    deadline: Option<Instant>,
    call: impl Future<Output = io::Result<T>>,
) -> Result<T, IngestionError<E>> {
    let res = rt.block_on(async {
        match deadline {
            Some(at) => tokio::time::timeout_at(at.into(), call).await.ok(),
            None => Some(call.await),
        }
    });
    match res {
        None => Err(IngestionError::StoreTimedOut {
            path: path.to_owned(),
        }),
        Some(Err(source)) => Err(IngestionError::Blob {
            path: path.to_owned(),
            source,
        }),
        Some(Ok(v)) => Ok(v),
    }
}
