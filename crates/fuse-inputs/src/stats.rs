//! [`Stats`]: what a mount fetched and served, for accounting (the executor
//! reports the bytes of inputs a build actually read).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

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
}

/// A copy of [`Stats`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub dirs_fetched: u64,
    pub blobs_fetched: u64,
    pub bytes_fetched: u64,
    pub bytes_served: u64,
    pub passthrough: bool,
}

impl Stats {
    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            dirs_fetched: self.dirs_fetched.load(Ordering::Relaxed),
            blobs_fetched: self.blobs_fetched.load(Ordering::Relaxed),
            bytes_fetched: self.bytes_fetched.load(Ordering::Relaxed),
            bytes_served: self.bytes_served.load(Ordering::Relaxed),
            passthrough: self.passthrough.load(Ordering::Relaxed),
        }
    }
}
