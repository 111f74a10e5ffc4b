//! Streamed fetches: a big blob's bytes are served as they arrive, so the
//! first byte of a 200 MiB blob from a store far away costs a round trip,
//! not the whole transfer.
//!
//! **The guarantee.** With [`crate::MountOptions::stream_from`] set (the
//! executor sets 1 MiB; the default is off), a blob at least that big is
//! written in order into a temp file of the cache while its digest is
//! computed, and a read is answered from that file as soon as the range it
//! asks for has arrived: before the blob is verified. A range reaching the
//! blob's end (or EOF) waits for the check, so a reader of a whole blob
//! never gets it all from a corrupt one; only a reader of part of it can
//! get bytes of a blob that then fails. A blob that is not what its digest
//! says (or a store that stops sending) fails every waiting and later read
//! with EIO, is never cached, and is the store's fault for the mount
//! ([`crate::InputsMount::store_trouble`]) as soon as a reader met it (a
//! read answered EIO, or bytes served unverified). The executor waits with
//! [`crate::InputsMount::settle`] for every blob served unverified to be
//! checked before it judges a build, so a build that read the head of a
//! corrupt blob fails as the store's fault even when it exited 0. Handles
//! of streamed blobs do not keep the kernel's page cache across opens.
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
    /// Why the fetch failed, once it did.
    failure: OnceLock<String>,
}

impl Stream {
    fn new(digest: B3Digest, size: u64) -> Self {
        Self {
            digest,
            size,
            file: OnceLock::new(),
            progress: watch::Sender::new(Progress::Have(0)),
            served_unverified: AtomicBool::new(false),
            failure: OnceLock::new(),
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

    /// The fetch ended with the blob's (verified) file.
    pub(crate) fn finish(&self, file: std::fs::File) {
        // A blob found whole in the cache was never streamed here.
        let _ = self.file.set(file);
        self.progress.send_replace(Progress::Verified);
    }

    /// The fetch failed, for the reason `why` (which names the blob).
    pub(crate) fn fail(&self, why: String) {
        let _ = self.failure.set(why);
        self.progress.send_replace(Progress::Failed);
    }

    /// Why the fetch failed, if it did.
    pub(crate) fn failure(&self) -> Option<&str> {
        self.failure.get().map(String::as_str)
    }

    /// Whether a reader was served bytes before the blob was verified.
    pub(crate) fn served_unverified(&self) -> bool {
        self.served_unverified.load(Ordering::Relaxed)
    }

    /// Up to `size` bytes at `offset`, never past the declared size, if
    /// they are here now; `None` if they are still to come. A range that
    /// reaches the blob's end (or lies past it) is answered only once the
    /// blob is verified: a reader of a whole blob never gets its end (or
    /// EOF) from a blob that turns out corrupt.
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
            .wait_for(|p| !matches!(p, Progress::Have(n) if *n < end || end >= self.size))
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
            Progress::Have(n) if n < end || end >= self.size => return None,
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
    running: Mutex<HashMap<(B3Digest, u64), Arc<Stream>>>,
}

impl Streams {
    /// The stream of `digest` declared of `size` bytes running now, or a
    /// new one and `true` (the caller must start its fetch). Two sizes
    /// declared for one digest are two streams (one of them fails).
    pub(crate) fn get_or_new(&self, digest: B3Digest, size: u64) -> (Arc<Stream>, bool) {
        let mut m = self.lock();
        if let Some(s) = m.get(&(digest, size)) {
            return (s.clone(), false);
        }
        let s = Arc::new(Stream::new(digest, size));
        m.insert((digest, size), s.clone());
        (s, true)
    }

    /// The fetch of `stream` ended: later opens find the blob in the cache
    /// (or fetch it again).
    pub(crate) fn ended(&self, stream: &Arc<Stream>) {
        let mut m = self.lock();
        let key = (stream.digest, stream.size);
        if m.get(&key).is_some_and(|s| Arc::ptr_eq(s, stream)) {
            m.remove(&key);
        }
    }

    /// Waits until every running stream that served a byte unverified has
    /// ended, verified or failed; the failures, for the mount's store
    /// trouble. Each fetch is bounded by the mount's fetch timeout.
    pub(crate) async fn settle(&self) -> Vec<String> {
        let mut failures = Vec::new();
        loop {
            let pending: Vec<Arc<Stream>> = self
                .lock()
                .values()
                .filter(|s| s.served_unverified.load(Ordering::Relaxed) && !s.ended())
                .cloned()
                .collect();
            if pending.is_empty() {
                return failures;
            }
            for s in pending {
                s.until_ended().await;
                failures.extend(s.failure().map(str::to_owned));
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(B3Digest, u64), Arc<Stream>>> {
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
        let later = s.read(4, 2);
        s.wrote(10);
        assert_eq!(later.await.unwrap(), b"45");
        // The end (and EOF) only once verified.
        assert!(s.try_read(6, 100).is_none());
        assert!(s.try_read(10, 4).is_none());
        assert!(s.served_unverified());
        s.fail("blob b3:… is corrupt".into());
        assert_eq!(s.failure(), Some("blob b3:… is corrupt"));
        assert_eq!(s.try_read(0, 4).unwrap().unwrap_err(), Errno::EIO);
        assert_eq!(s.read(0, 4).await.unwrap_err(), Errno::EIO);
    }

    #[tokio::test]
    async fn the_end_of_a_verified_blob_is_served_never_past_its_size() {
        let (s, _w) = stream_over(b"0123456789");
        let end = s.read(6, 100);
        s.wrote(10);
        s.finish(tempfile::tempfile().unwrap());
        // Served from the file the bytes were written to.
        assert_eq!(end.await.unwrap(), b"6789");
        assert_eq!(s.try_read(10, 4).unwrap().unwrap(), b"");
    }

    #[tokio::test]
    async fn settle_waits_only_for_streams_that_served_unverified_bytes() {
        let streams = Arc::new(Streams::default());
        let (quiet, _) = streams.get_or_new(B3Digest::of(b"a"), 1);
        // Never read: settling does not wait for it.
        tokio::time::timeout(std::time::Duration::from_secs(5), streams.settle())
            .await
            .unwrap();
        // The failure of one that served unverified bytes is told.
        let (bad, _) = streams.get_or_new(B3Digest::of(b"c"), 2);
        let (s, _w) = stream_over(b"cc");
        bad.started(s.file.get().unwrap().try_clone().unwrap());
        bad.wrote(1);
        bad.try_read(0, 1).unwrap().unwrap();
        let settling = tokio::spawn({
            let streams = streams.clone();
            async move { streams.settle().await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        bad.fail("blob c: corrupt".into());
        assert_eq!(settling.await.unwrap(), vec!["blob c: corrupt".to_owned()]);
        streams.ended(&bad);
        let (read, fresh) = streams.get_or_new(B3Digest::of(b"b"), 2);
        assert!(fresh);
        assert!(!streams.get_or_new(B3Digest::of(b"b"), 2).1, "one per blob");
        read.started(tempfile::tempfile().unwrap());
        read.wrote(0);
        let mut w = read.file.get().unwrap().try_clone().unwrap();
        w.write_all(b"bb").unwrap();
        read.wrote(2);
        read.try_read(0, 1).unwrap().unwrap();
        assert!(read.served_unverified());
        let settling = tokio::spawn({
            let streams = streams.clone();
            async move { streams.settle().await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!settling.is_finished(), "waits for the blob to be checked");
        read.finish(tempfile::tempfile().unwrap());
        streams.ended(&read);
        tokio::time::timeout(std::time::Duration::from_secs(5), settling)
            .await
            .unwrap()
            .unwrap();
        assert!(streams.get_or_new(B3Digest::of(b"b"), 2).1, "ended: gone");
        assert!(!streams.get_or_new(quiet.digest, 1).1, "still running");
    }
}
