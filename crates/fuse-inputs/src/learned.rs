//! Learned prefetch, the mount's half: which blobs the readers used, in
//! the order first used (the profile a caller keeps for the next build of
//! the same shape), and fetching a profile's blobs at mount time, racing
//! the readers, counting what was fetched ahead and what of it was used.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use tvix_oci_castore::B3Digest;

use crate::fetch::Fetcher;

/// Blobs recorded at most (a profile of more is cut there): 40 bytes each
/// when kept.
pub const MAX_PROFILE_BLOBS: usize = 1 << 20;

/// What the readers of one mount used, and what was fetched for them ahead.
#[derive(Debug, Default)]
pub(crate) struct ReadLog {
    /// Record reads at all.
    on: bool,
    read: Mutex<Order>,
    /// Blobs the prefetch fetched (not already local), and their sizes.
    prefetched: Mutex<HashMap<B3Digest, u64>>,
}

#[derive(Debug, Default)]
struct Order {
    seen: HashSet<B3Digest>,
    list: Vec<(B3Digest, u64)>,
}

/// The learned-prefetch figures of a mount.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadProfile {
    /// The blobs the readers opened or read, first use first (empty unless
    /// [`crate::MountOptions::record_reads`]).
    pub read: Vec<(B3Digest, u64)>,
    /// Bytes fetched ahead by a prefetch ([`crate::MountOptions::prefetch_blobs`]
    /// or [`crate::MountOptions::prefetch`]; blobs not already local).
    pub bytes_prefetched: u64,
    /// Of those, the bytes of blobs a reader then used (needs
    /// `record_reads`).
    pub bytes_prefetched_used: u64,
}

impl ReadLog {
    pub(crate) fn new(on: bool) -> Self {
        Self {
            on,
            ..Self::default()
        }
    }

    /// A reader opened or read blob `d` of `size` bytes.
    pub(crate) fn note(&self, d: &B3Digest, size: u64) {
        if !self.on {
            return;
        }
        let mut o = self.read.lock().unwrap_or_else(|p| p.into_inner());
        if o.list.len() < MAX_PROFILE_BLOBS && o.seen.insert(*d) {
            o.list.push((*d, size));
        }
    }

    fn prefetched(&self, d: B3Digest, size: u64) {
        let mut p = self.prefetched.lock().unwrap_or_else(|p| p.into_inner());
        p.insert(d, size);
    }

    /// The figures so far.
    pub(crate) fn profile(&self) -> ReadProfile {
        let read = self
            .read
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .list
            .clone();
        let prefetched = self.prefetched.lock().unwrap_or_else(|p| p.into_inner());
        let used = read
            .iter()
            .filter_map(|(d, _)| prefetched.get(d))
            .sum::<u64>();
        ReadProfile {
            read,
            bytes_prefetched: prefetched.values().sum(),
            bytes_prefetched_used: used,
        }
    }
}

impl Fetcher {
    /// Fetches `blobs` into the cache ([`Fetcher::fetch_ahead`]), in their
    /// order, as many at once as reads may (`concurrency`), until done or
    /// the mount goes away; each fetched here is logged as prefetched.
    pub(crate) async fn prefetch_blobs(
        self: Arc<Self>,
        blobs: Vec<(B3Digest, u64)>,
        log: Arc<ReadLog>,
        concurrency: usize,
    ) {
        let work = futures::stream::iter(blobs).for_each_concurrent(
            concurrency.clamp(1, crate::fetch::MAX_CONCURRENCY),
            |(digest, size)| {
                let (me, log) = (self.clone(), log.clone());
                async move {
                    if me.fetch_ahead(0, digest, size).await {
                        log.prefetched(digest, size);
                    }
                }
            },
        );
        tokio::select! {
            _ = work => {}
            _ = self.closing.cancelled() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_kept_once_in_first_use_order_and_used_prefetches_counted() {
        let (a, b, c) = (B3Digest::of(b"a"), B3Digest::of(b"b"), B3Digest::of(b"c"));
        let log = ReadLog::new(true);
        log.note(&b, 2);
        log.note(&a, 1);
        log.note(&b, 2);
        log.prefetched(a, 10);
        log.prefetched(c, 100);
        let p = log.profile();
        assert_eq!(p.read, vec![(b, 2), (a, 1)]);
        assert_eq!((p.bytes_prefetched, p.bytes_prefetched_used), (110, 10));
        let off = ReadLog::new(false);
        off.note(&a, 1);
        assert!(off.profile().read.is_empty());
    }
}
