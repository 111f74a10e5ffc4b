//! The fetch behind a [`Stream`]: started by a read (holding a read
//! permit) or in the background by read-ahead or a prefetch (holding a
//! background permit, never a reader's), bounded by the mount's fetch
//! timeout and its going away, and answered to the readers that join it.
//!
//! A stream's failure is the store's fault for the mount only once a
//! reader meets it: a read answered EIO, or bytes served before the blob
//! turned out corrupt. A background fetch no reader used fails quietly, and
//! no fetch counts as a store call in flight unless a reader waits on it.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use fuser::Errno;
use futures::FutureExt;
use tracing::{debug, error};
use tvix_oci_castore::B3Digest;

use crate::fetch::Fetcher;
use crate::stream::Stream;

impl Fetcher {
    /// The stream of blob `digest` (declared of `size` bytes) of inode
    /// `ino` (0: none, for a prefetch), and whether it was started here;
    /// `for_reader`: a reader waits for it (a read permit), else a
    /// background one.
    pub(crate) fn stream(
        self: &Arc<Self>,
        ino: u64,
        digest: B3Digest,
        size: u64,
        for_reader: bool,
    ) -> (Arc<Stream>, bool) {
        let (stream, new) = self.streams.get_or_new(digest, size);
        if new {
            let (me, s) = (self.clone(), stream.clone());
            self.rt
                .spawn(async move { me.run_stream(s, ino, for_reader).await });
        }
        (stream, new)
    }

    async fn run_stream(self: Arc<Self>, s: Arc<Stream>, ino: u64, for_reader: bool) {
        let permits = match for_reader {
            true => &self.limit,
            false => &self.background,
        };
        let fetch = async {
            let _permit = permits.acquire().await.map_err(std::io::Error::other)?;
            self.cache
                .get_or_fetch_into(&*self.blobs, &s.digest, s.size, self.idle, Some(&s))
                .await
        };
        let res = tokio::select! {
            r = tokio::time::timeout(self.timeout, std::panic::AssertUnwindSafe(fetch).catch_unwind()) => match r {
                Ok(Ok(Ok(v))) => Ok(v),
                Ok(Ok(Err(e))) => Err(e.to_string()),
                Ok(Err(_)) => Err("the store panicked".to_owned()),
                Err(_) => Err(format!("timed out after {:?}", self.timeout)),
            },
            _ = self.closing.cancelled() => Err("abandoned, the mount is going away".to_owned()),
        };
        match res {
            Ok((file, fetched)) => {
                if fetched {
                    self.stats.blobs_fetched.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .bytes_fetched
                        .fetch_add(s.size, Ordering::Relaxed);
                }
                s.finish(file);
            }
            Err(why) => {
                let path = match ino {
                    0 => "a prefetch".to_owned(),
                    _ => self.inodes.path(ino).display().to_string(),
                };
                s.fail(format!("fetching blob {} for {path}: {why}", s.digest));
                if s.served_unverified() {
                    self.met_failure(&s);
                } else {
                    debug!(digest = %s.digest, "fetch no reader used yet: {why}");
                }
            }
        }
        self.streams.ended(&s);
    }

    /// A reader met the failure of `s`: the store's fault for the mount.
    fn met_failure(&self, s: &Stream) {
        let why = s.failure().unwrap_or("the fetch failed");
        error!("{why}");
        self.stats.store_failed(|| why.to_owned());
    }

    /// Up to `size` bytes at `offset` of `stream` if they are here now
    /// (counted as served); `None` while they are still to come.
    pub(crate) fn read_streamed_now(
        &self,
        stream: &Stream,
        offset: u64,
        size: u32,
    ) -> Option<Result<Vec<u8>, Errno>> {
        let res = stream.try_read(offset, size)?;
        Some(self.answered(stream, res))
    }

    /// Up to `size` bytes at `offset` of `stream`, for reader `pid`, once
    /// they are here (counted as served; a reader waiting counts as a store
    /// call in flight); EIO if the reader is killed first.
    pub(crate) async fn read_streamed(
        &self,
        stream: &Stream,
        offset: u64,
        size: u32,
        pid: u32,
    ) -> Result<Vec<u8>, Errno> {
        if let Some(res) = self.read_streamed_now(stream, offset, size) {
            return res;
        }
        let waiting = self
            .stats
            .store_call(|| format!("fetching blob {} (read as it arrives)", stream.digest));
        let res = tokio::select! {
            r = stream.read(offset, size) => r,
            _ = crate::reader::given_up(pid) => return Err(Errno::EIO),
        };
        drop(waiting);
        self.answered(stream, res)
    }

    fn answered(&self, stream: &Stream, res: Result<Vec<u8>, Errno>) -> Result<Vec<u8>, Errno> {
        match &res {
            Ok(data) => {
                self.stats
                    .bytes_served
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
            }
            Err(_) if stream.failure().is_some() => self.met_failure(stream),
            Err(_) => {}
        }
        res
    }
}
