//! [`Stats`]: what a mount fetched and served, for accounting (the executor
//! reports the bytes of inputs a build actually read), and the store calls
//! in flight or failed, so a build that read through a failing or hung
//! store is reported as the store's fault, not the build's.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Counters of one mount, updated as it works.
#[derive(Debug, Default)]
pub struct Stats {
    /// Directories fetched from the store.
    pub dirs_fetched: AtomicU64,
    /// Blobs fetched from the store into the cache.
    pub blobs_fetched: AtomicU64,
    /// Bytes of those blobs.
    pub bytes_fetched: AtomicU64,
    /// Bytes served by this process's read handler (reads through
    /// passthrough never reach it).
    pub bytes_served: AtomicU64,
    /// Whether the kernel agreed to FUSE passthrough.
    pub passthrough: AtomicBool,
    /// Lookups of names that are not there, answered as a negative entry
    /// the kernel keeps (so the same name again does not come here).
    pub negative_lookups: AtomicU64,
    /// Opens of files answered.
    pub opens: AtomicU64,
    /// Passthrough backing files registered with the kernel (one per inode
    /// opened, kept across its opens).
    pub backing_files: AtomicU64,
    /// Bytes of blobs fetched ahead of a read (their directory was listed).
    pub bytes_read_ahead: AtomicU64,
    /// Store calls that failed, timed out or panicked (each an EIO for a
    /// reader).
    pub store_failures: AtomicU64,
    /// The first of those, described with its path.
    first_failure: Mutex<Option<String>>,
    /// Store calls in flight: id → (started, description).
    in_flight: Mutex<HashMap<u64, (Instant, String)>>,
    /// The longest store call a reader stopped waiting for (it was
    /// killed): how long it had waited, and what it was.
    abandoned: Mutex<Option<(Duration, String)>>,
    next_call: AtomicU64,
}

/// A store call in flight; ends (and leaves the registry) when dropped.
#[derive(Debug)]
pub(crate) struct StoreCall<'a> {
    stats: &'a Stats,
    id: u64,
}

impl Drop for StoreCall<'_> {
    fn drop(&mut self) {
        if let Ok(mut m) = self.stats.in_flight.lock() {
            m.remove(&self.id);
        }
    }
}

/// A copy of a mount's counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub dirs_fetched: u64,
    pub blobs_fetched: u64,
    pub bytes_fetched: u64,
    pub bytes_served: u64,
    pub passthrough: bool,
    pub negative_lookups: u64,
    pub opens: u64,
    pub backing_files: u64,
    pub bytes_read_ahead: u64,
}

impl Stats {
    /// Registers a store call described by `what` until the returned guard
    /// drops.
    pub(crate) fn store_call(&self, what: impl FnOnce() -> String) -> StoreCall<'_> {
        let id = self.next_call.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut m) = self.in_flight.lock() {
            m.insert(id, (Instant::now(), what()));
        }
        StoreCall { stats: self, id }
    }

    /// Records a failed store call.
    pub(crate) fn store_failed(&self, what: impl FnOnce() -> String) {
        if self.store_failures.fetch_add(1, Ordering::Relaxed) == 0
            && let Ok(mut f) = self.first_failure.lock()
        {
            *f = Some(what());
        }
    }

    /// Records a store call given up after `waited` because its reader was
    /// killed (kept if it is the longest so far).
    pub(crate) fn store_abandoned(&self, waited: Duration, what: impl FnOnce() -> String) {
        if let Ok(mut a) = self.abandoned.lock()
            && a.as_ref().is_none_or(|(w, _)| *w < waited)
        {
            *a = Some((waited, what()));
        }
    }

    /// What went wrong with the store so far, if anything: the first failed
    /// call, or else the oldest call in flight for at least `stalled`, or
    /// else the longest one its reader was killed waiting for, if it had
    /// waited at least `stalled`.
    pub fn store_trouble(&self, stalled: Duration) -> Option<String> {
        if let Some(f) = self.first_failure.lock().ok().and_then(|f| f.clone()) {
            return Some(f);
        }
        let oldest = self.in_flight.lock().ok().and_then(|calls| {
            calls
                .values()
                .min_by_key(|(t, _)| *t)
                .map(|(t, what)| (t.elapsed(), what.clone()))
        });
        if let Some((waited, what)) = oldest
            && waited >= stalled
        {
            return Some(format!("{what}: no answer after {waited:.1?}"));
        }
        let abandoned = self.abandoned.lock().ok()?.clone();
        let (waited, what) = abandoned.filter(|(w, _)| *w >= stalled)?;
        Some(format!(
            "{what}: no answer after {waited:.1?} (then its reader was killed)"
        ))
    }

    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            dirs_fetched: self.dirs_fetched.load(Ordering::Relaxed),
            blobs_fetched: self.blobs_fetched.load(Ordering::Relaxed),
            bytes_fetched: self.bytes_fetched.load(Ordering::Relaxed),
            bytes_served: self.bytes_served.load(Ordering::Relaxed),
            passthrough: self.passthrough.load(Ordering::Relaxed),
            negative_lookups: self.negative_lookups.load(Ordering::Relaxed),
            opens: self.opens.load(Ordering::Relaxed),
            backing_files: self.backing_files.load(Ordering::Relaxed),
            bytes_read_ahead: self.bytes_read_ahead.load(Ordering::Relaxed),
        }
    }
}
