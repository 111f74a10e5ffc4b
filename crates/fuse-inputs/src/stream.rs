//! Streamed fetches: a big blob's bytes are served as they arrive, so the
//! first byte of a 200 MiB blob from a store far away costs a round trip,
//! not the whole transfer.
//!
//! **The guarantee.** A blob of at least [`crate::MountOptions::stream_from`]
//! bytes is written in order into a temp file of the cache while its digest
//! is computed, and a read is answered from that file as soon as the range
//! it asks for has arrived: before the blob is verified. When the last byte
//! is in, the digest is checked. A blob that is not what its digest says
//! (or a store that stops sending) is the store's fault: every read waiting
//! and every later one gets EIO, nothing is cached, and the failure is
//! recorded for the mount's [`crate::InputsMount::store_trouble`]. A build
//! that read such a blob therefore fails as the store's fault even when it
//! exited 0: the executor waits with [`crate::InputsMount::settle`] for
//! every blob served unverified to be checked before it judges the build.
//! Smaller blobs are checked whole before any of their bytes is served.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use fuser::Errno;
use tokio::sync::watch;
use tvix_oci_castore::B3Digest;

/// How far a streamed fetch got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Progress {
    /// This many bytes from the start are in the file (not yet verified).
    Have(u64),
    /// Whole and checked against the digest.
    Verified,
    /// The store failed (or lied): no read is served any more.
    Failed,
}

/// One blob being fetched, readable as it arrives.
#[derive(Debug)]
pub(crate) struct Stream {
    pub(crate) digest: B3Digest,
    /// The declared size: no read goes past it.
    pub(crate) size: u64,
    /// The file the bytes go to (set before the first byte is counted).
    file: OnceLock<std::fs::File>,
    progress: watch::Sender<Progress>,
    /// Whether a byte was served before the blob was verified.
    served_unverified: AtomicBool,
}

impl Stream {
    fn new(digest: B3Digest, size: u64) -> Self {
        Self {
            digest,
            size,
            file: OnceLock::new(),
            progress: watch::Sender::new(Progress::Have(0)),
            served_unverified: AtomicBool::new(false),
        }
    }

    /// The fetch opened the file its bytes go to (`file` reads it).
    pub(crate) fn started(&self, file: std::fs::File) {
        let _ = self.file.set(file);
    }

    /// The first `n` bytes are in the file.
    pub(crate) fn wrote(&self, n: u64) {
        self.progress.send_replace(Progress::Have(n));
    }

    /// The fetch ended: with the blob's (verified) file, or failed.
    pub(crate) fn finish(&self, file: Option<std::fs::File>) {
        let end = match file {
            Some(f) => {
                // A blob found whole in the cache was never streamed here.
                let _ = self.file.set(f);
                Progress::Verified
            }
            None => Progress::Failed,
        };
        self.progress.send_replace(end);
    }

    /// Up to `size` bytes at `offset`, never past the declared size, if
    /// they are here now; `None` if they are still to come.
    pub(crate) fn try_read(&self, offset: u64, size: u32) -> Option<Result<Vec<u8>, Errno>> {
        let end = self.end_of(offset, size);
        let now = *self.progress.borrow();
        self.answer(now, offset, end)
    }

    /// Up to `size` bytes at `offset`, once they are here.
    pub(crate) async fn read(&self, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let end = self.end_of(offset, size);
        let mut rx = self.progress.subscribe();
        let now = *rx
            .wait_for(|p| !matches!(p, Progress::Have(n) if *n < end))
            .await
            .map_err(|_| Errno::EIO)?;
        self.answer(now, offset, end).unwrap_or(Err(Errno::EIO))
    }

    fn end_of(&self, offset: u64, size: u32) -> u64 {
        self.size.min(offset.saturating_add(u64::from(size)))
    }

    fn answer(&self, now: Progress, offset: u64, end: u64) -> Option<Result<Vec<u8>, Errno>> {
        let len = end.saturating_sub(offset);
        match now {
            Progress::Failed => return Some(Err(Errno::EIO)),
            Progress::Have(n) if n < end => return None,
            Progress::Have(_) if len > 0 => {
                self.served_unverified.store(true, Ordering::Relaxed);
            }
            _ => {}
        }
        if len == 0 {
            return Some(Ok(Vec::new()));
        }
        let Some(file) = self.file.get() else {
            return Some(Err(Errno::EIO));
        };
        let mut buf = vec![0u8; len as usize];
        Some(match crate::fetch::read_full_at(file, &mut buf, offset) {
            Ok(n) if n as u64 == len => Ok(buf),
            // Fewer bytes than were counted as written: not ours to serve.
            Ok(_) | Err(_) => Err(Errno::EIO),
        })
    }

    /// Whether the fetch ended (either way).
    fn ended(&self) -> bool {
        !matches!(*self.progress.borrow(), Progress::Have(_))
    }

    /// Resolves once the fetch ended.
    pub(crate) async fn until_ended(&self) {
        let mut rx = self.progress.subscribe();
        let _ = rx.wait_for(|p| !matches!(p, Progress::Have(_))).await;
    }
}

/// The streamed fetches of one mount, running or ended with bytes served
/// unverified from them (until [`Self::settle`] sees them ended).
#[derive(Debug, Default)]
pub(crate) struct Streams {
    running: Mutex<HashMap<B3Digest, Arc<Stream>>>,
}

impl Streams {
    /// The stream of `digest` running now, or a new one and `true` (the
    /// caller must start its fetch).
    pub(crate) fn get_or_new(&self, digest: B3Digest, size: u64) -> (Arc<Stream>, bool) {
        let mut m = self.lock();
        if let Some(s) = m.get(&digest) {
            return (s.clone(), false);
        }
        let s = Arc::new(Stream::new(digest, size));
        m.insert(digest, s.clone());
        (s, true)
    }

    /// The fetch of `stream` ended: later opens find the blob in the cache
    /// (or fetch it again).
    pub(crate) fn ended(&self, stream: &Arc<Stream>) {
        let mut m = self.lock();
        if m.get(&stream.digest)
            .is_some_and(|s| Arc::ptr_eq(s, stream))
        {
            m.remove(&stream.digest);
        }
    }

    /// Waits until every running stream that served a byte unverified has
    /// ended, verified or failed (a failure is then in the mount's store
    /// trouble). Each fetch is bounded by the mount's fetch timeout.
    pub(crate) async fn settle(&self) {
        loop {
            let pending: Vec<Arc<Stream>> = self
                .lock()
                .values()
                .filter(|s| s.served_unverified.load(Ordering::Relaxed) && !s.ended())
                .cloned()
                .collect();
            if pending.is_empty() {
                return;
            }
            for s in pending {
                s.until_ended().await;
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<B3Digest, Arc<Stream>>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn stream_over(data: &[u8]) -> (Stream, std::fs::File) {
        let mut w = tempfile::tempfile().unwrap();
        w.write_all(data).unwrap();
        let s = Stream::new(B3Digest::of(data), data.len() as u64);
        s.started(w.try_clone().unwrap());
        (s, w)
    }

    #[tokio::test]
    async fn a_range_is_served_once_it_has_arrived_and_never_after_a_failure() {
        let (s, _w) = stream_over(b"0123456789");
        assert!(s.try_read(0, 4).is_none(), "nothing counted as written yet");
        s.wrote(4);
        assert_eq!(s.try_read(0, 4).unwrap().unwrap(), b"0123");
        assert!(s.try_read(2, 4).is_none(), "byte 5 is not here yet");
        let later = s.read(6, 100);
        s.wrote(10);
        // Never past the declared size.
        assert_eq!(later.await.unwrap(), b"6789");
        assert_eq!(s.try_read(10, 4).unwrap().unwrap(), b"");
        assert!(s.served_unverified.load(Ordering::Relaxed));
        s.finish(None);
        assert_eq!(s.try_read(0, 4).unwrap().unwrap_err(), Errno::EIO);
        assert_eq!(s.read(0, 4).await.unwrap_err(), Errno::EIO);
    }

    #[tokio::test]
    async fn settle_waits_only_for_streams_that_served_unverified_bytes() {
        let streams = Arc::new(Streams::default());
        let (quiet, _) = streams.get_or_new(B3Digest::of(b"a"), 1);
        // Never read: settling does not wait for it.
        tokio::time::timeout(std::time::Duration::from_secs(5), streams.settle())
            .await
            .unwrap();
        let (read, fresh) = streams.get_or_new(B3Digest::of(b"b"), 2);
        assert!(fresh);
        assert!(!streams.get_or_new(B3Digest::of(b"b"), 2).1, "one per blob");
        read.started(tempfile::tempfile().unwrap());
        read.wrote(0);
        let mut w = read.file.get().unwrap().try_clone().unwrap();
        w.write_all(b"bb").unwrap();
        read.wrote(2);
        read.try_read(0, 1).unwrap().unwrap();
        let settling = tokio::spawn({
            let streams = streams.clone();
            async move { streams.settle().await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!settling.is_finished(), "waits for the blob to be checked");
        read.finish(Some(tempfile::tempfile().unwrap()));
        streams.ended(&read);
        tokio::time::timeout(std::time::Duration::from_secs(5), settling)
            .await
            .unwrap()
            .unwrap();
        assert!(streams.get_or_new(B3Digest::of(b"b"), 2).1, "ended: gone");
        assert!(!streams.get_or_new(quiet.digest, 1).1, "still running");
    }
}
