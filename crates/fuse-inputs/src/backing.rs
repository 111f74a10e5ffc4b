//! [`Backings`]: the passthrough backing file of each inode, kept from its
//! first open until the kernel forgets the inode, so opening a known file
//! again costs one hash lookup instead of opening the blob's file and
//! registering it with the kernel (two ioctls and an open per `open`).
//!
//! Two views of one set: a weak one, which any open of an inode still
//! holding a backing file finds (the kernel refuses a second backing file
//! for an inode while one is in use, EBUSY, seen by the reader as EIO), and
//! a strong one that keeps up to `max_kept` of them alive between opens.
//! A forget only drops the strong reference: an open racing with it still
//! finds the backing file through the weak view.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

/// The backing files of a mount's inodes; `B` is fuser's `BackingId` (any
/// type in tests).
#[derive(Debug)]
pub(crate) struct Backings<B> {
    inner: Mutex<Inner<B>>,
    max_kept: usize,
}

#[derive(Debug)]
struct Inner<B> {
    live: HashMap<u64, Weak<B>>,
    kept: HashMap<u64, Arc<B>>,
}

impl<B> Backings<B> {
    /// Keeps at most `max_kept` backing files alive between opens (each is
    /// an open file in the kernel); past that, a backing file lives as
    /// long as the opens using it, as if nothing were kept.
    pub(crate) fn new(max_kept: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                live: HashMap::new(),
                kept: HashMap::new(),
            }),
            max_kept,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<B>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The backing file of inode `ino`, if it has one alive.
    pub(crate) fn get(&self, ino: u64) -> Option<Arc<B>> {
        self.lock().live.get(&ino).and_then(Weak::upgrade)
    }

    /// The backing file of `ino`: the live one, or else the one `open`
    /// makes (called with the set locked, so two opens of one inode never
    /// make two). Whether a new one was made is the second value.
    pub(crate) fn get_or_open<E>(
        &self,
        ino: u64,
        open: impl FnOnce() -> Result<B, E>,
    ) -> Result<(Arc<B>, bool), E> {
        let mut inner = self.lock();
        if let Some(b) = inner.live.get(&ino).and_then(Weak::upgrade) {
            return Ok((b, false));
        }
        let b = Arc::new(open()?);
        inner.live.insert(ino, Arc::downgrade(&b));
        if inner.kept.len() < self.max_kept {
            inner.kept.insert(ino, b.clone());
        }
        Ok((b, true))
    }

    /// The kernel forgot `ino`: its backing file goes once no open uses it.
    pub(crate) fn forget(&self, ino: u64) {
        let mut inner = self.lock();
        drop(inner.kept.remove(&ino));
        if inner.live.get(&ino).is_some_and(|w| w.strong_count() == 0) {
            inner.live.remove(&ino);
        }
    }

    /// How many backing files are kept between opens.
    #[cfg(test)]
    pub(crate) fn kept(&self) -> usize {
        self.lock().kept.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts the live "backing files".
    struct Counted<'a>(&'a AtomicUsize);
    impl Drop for Counted<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Opens a counted "backing file".
    fn counted<'a>(alive: &'a AtomicUsize) -> impl FnOnce() -> Result<Counted<'a>, ()> {
        move || {
            alive.fetch_add(1, Ordering::SeqCst);
            Ok(Counted(alive))
        }
    }

    /// An open that must not happen: the backing file is there.
    fn none<'a>() -> Result<Counted<'a>, ()> {
        unreachable!("a second backing file for one inode")
    }

    #[test]
    fn kept_across_opens_until_forgotten() {
        let alive = AtomicUsize::new(0);
        let b = Backings::new(10);
        let (h, made) = b.get_or_open(7, counted(&alive)).unwrap();
        assert!(made);
        drop(h); // the file is closed: the backing file stays
        assert!(b.get(7).is_some());
        let (_, made) = b.get_or_open(7, none).unwrap();
        assert!(!made);
        assert_eq!(alive.load(Ordering::SeqCst), 1);
        b.forget(7);
        assert!(b.get(7).is_none());
        assert_eq!(alive.load(Ordering::SeqCst), 0);
        assert_eq!(b.kept(), 0);
    }

    #[test]
    fn a_forget_racing_an_open_keeps_the_one_in_use() {
        let alive = AtomicUsize::new(0);
        let b = Backings::new(10);
        let (h, _) = b.get_or_open(3, counted(&alive)).unwrap();
        b.forget(3);
        // Still open: a new open gets the same one, never a second.
        let (h2, made) = b.get_or_open(3, none).unwrap();
        assert!(!made && Arc::ptr_eq(&h, &h2));
        drop((h, h2));
        assert_eq!(alive.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn past_the_limit_nothing_more_is_kept_and_failures_keep_nothing() {
        let alive = AtomicUsize::new(0);
        let b = Backings::new(2);
        for ino in 0..5 {
            let (h, _) = b.get_or_open(ino, counted(&alive)).unwrap();
            drop(h);
        }
        assert_eq!((b.kept(), alive.load(Ordering::SeqCst)), (2, 2));
        assert!(b.get_or_open(9, || Err::<Counted, _>("refused")).is_err());
        assert!(b.get(9).is_none());
    }
}
