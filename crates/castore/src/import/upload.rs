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

use bytes::BytesMut;
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::observe::FileMsg;
use super::{CHUNK, FileSource, IngestionError};
use crate::Node;
use crate::blobservice::BlobService;

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
        let mut writer = self.store(self.blobs.open_write())?;
        let mut read = 0u64;
        loop {
            if self.cancelled.load(Ordering::Relaxed) {
                return Err(IngestionError::Task("cancelled".into()));
            }
            // The last read asks for one byte past the length when
            // opened: a file that grew is read that far only.
            let want = meta.size.saturating_sub(read).clamp(1, CHUNK as u64) as usize;
            let mut buf = BytesMut::zeroed(want);
            let n = self
                .source
                .read(&mut buf)
                .map_err(IngestionError::Producer)?;
            if n == 0 {
                break;
            }
            read += n as u64;
            if read > meta.size {
                break;
            }
            buf.truncate(n);
            let data = buf.freeze();
            self.tell(FileMsg::Chunk(data.clone()));
            self.store(writer.write(data))?;
        }
        if read != meta.size {
            return Err(IngestionError::Changed {
                path: self.path,
                stat: meta.size,
                read,
            });
        }
        let digest = self.store(writer.close())?;
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
