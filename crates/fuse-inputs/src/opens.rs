//! [`Opens`]: the open files of a mount — file handles and the passthrough
//! backing file of each inode — shared by the FUSE threads and the tasks
//! that answer an open once its blob has arrived.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fuser::BackingId;
use tracing::warn;
use tvix_oci_castore::B3Digest;

use crate::backing::Backings;
use crate::stats::Stats;

/// Backing files kept open between opens, at most (each is an open file in
/// the kernel, a few hundred bytes): more than any toolchain's files.
const MAX_KEPT_BACKINGS: usize = 1 << 17;
/// Blob files kept open for reads of files the kernel opened without
/// asking (each is a descriptor of this process, which may be limited to
/// 1,024); past that, one is opened per read.
const MAX_KEPT_FILES: usize = 256;

/// Registers a local file with the kernel as a passthrough backing file.
pub(crate) type OpenBacking<'a> = &'a dyn Fn(&std::fs::File) -> std::io::Result<BackingId>;

/// An open file.
#[derive(Debug)]
pub(crate) enum Handle {
    /// Reads go straight to the backing file in the kernel. Shared by all
    /// opens of one inode: the kernel refuses two backing files for one
    /// inode at a time (EBUSY, seen by the reader as EIO).
    Passthrough(Arc<BackingId>),
    /// Reads come here and are served from a local file.
    File(std::fs::File),
    /// Reads come here and are served from the store at an offset, never
    /// past the declared size.
    Ranges(B3Digest, u64),
    /// Reads come here and are served from a blob as it arrives
    /// ([`crate::stream`]).
    Streamed(Arc<crate::stream::Stream>),
}

impl Handle {
    /// Whether its reads come to this process (not passed through).
    fn served_here(&self) -> bool {
        !matches!(self, Handle::Passthrough(_))
    }
}

/// The open files of one mount.
#[derive(Debug)]
pub(crate) struct Opens {
    /// Each open handle and its inode.
    handles: Mutex<HashMap<u64, (u64, Arc<Handle>)>>,
    /// Handles open per inode whose reads come here (not passthrough):
    /// while any is open, the kernel refuses a passthrough open of the
    /// inode (it fails with EIO: one inode's opens are either all cached
    /// or all passed through), so later opens are served here too.
    served_here: Mutex<HashMap<u64, usize>>,
    /// The backing file of each inode opened with passthrough, kept until
    /// the kernel forgets the inode.
    pub(crate) backings: Backings<BackingId>,
    /// The blob file of each inode read without an open (FUSE no-open),
    /// kept until the kernel forgets the inode.
    pub(crate) files: Backings<std::fs::File>,
    next_fh: AtomicU64,
}

impl Opens {
    pub(crate) fn new() -> Self {
        Self {
            handles: Mutex::new(HashMap::new()),
            served_here: Mutex::new(HashMap::new()),
            backings: Backings::new(MAX_KEPT_BACKINGS),
            files: Backings::new(MAX_KEPT_FILES),
            next_fh: AtomicU64::new(1),
        }
    }

    /// Opens inode `ino` whose blob is the local `file`. With
    /// `open_backing` (passthrough agreed with the kernel), through the
    /// inode's backing file, registered the first time; where the kernel
    /// refuses it (e.g. a backing file on a stacked filesystem), or without
    /// passthrough, reads are served here from `file`.
    pub(crate) fn open_local(
        &self,
        ino: u64,
        file: std::fs::File,
        open_backing: Option<OpenBacking<'_>>,
        stats: &Stats,
    ) -> (u64, Arc<Handle>) {
        // Decided and counted under one lock with `add_streamed`: never a
        // passthrough open beside a streamed one.
        let counts = self.counts();
        let served_here = counts.contains_key(&ino);
        let handle = match open_backing {
            None => Handle::File(file),
            // Not while the inode is open with reads served here.
            Some(_) if served_here => Handle::File(file),
            Some(open_backing) => match self.backings.get_or_open(ino, || open_backing(&file)) {
                Ok((id, made)) => {
                    if made {
                        stats.backing_files.fetch_add(1, Ordering::Relaxed);
                    }
                    Handle::Passthrough(id)
                }
                Err(e) => {
                    warn!(ino, "passthrough refused, serving reads here: {e}");
                    Handle::File(file)
                }
            },
        };
        self.insert(counts, ino, handle)
    }

    /// Opens inode `ino` to read from `stream` as it arrives; through the
    /// inode's backing file instead if it has one now (the blob arrived and
    /// another open passed it through).
    pub(crate) fn add_streamed(
        &self,
        ino: u64,
        stream: Arc<crate::stream::Stream>,
    ) -> (u64, Arc<Handle>) {
        let counts = self.counts();
        let handle = match self.backings.get(ino) {
            Some(id) => Handle::Passthrough(id),
            None => Handle::Streamed(stream),
        };
        self.insert(counts, ino, handle)
    }

    /// Registers `handle` of inode `ino`; its number and itself.
    pub(crate) fn add(&self, ino: u64, handle: Handle) -> (u64, Arc<Handle>) {
        self.insert(self.counts(), ino, handle)
    }

    /// Registers `handle` of `ino`, counted in `counts` (held since the
    /// handle was chosen) if its reads come here.
    fn insert(
        &self,
        mut counts: std::sync::MutexGuard<'_, HashMap<u64, usize>>,
        ino: u64,
        handle: Handle,
    ) -> (u64, Arc<Handle>) {
        if handle.served_here() {
            *counts.entry(ino).or_default() += 1;
        }
        drop(counts);
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let handle = Arc::new(handle);
        self.lock().insert(fh, (ino, handle.clone()));
        (fh, handle)
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<u64, usize>> {
        self.served_here.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The handle numbered `fh`.
    pub(crate) fn get(&self, fh: u64) -> Option<Arc<Handle>> {
        self.lock().get(&fh).map(|(_, h)| h.clone())
    }

    /// The stream behind handle `fh`, if its reads are streamed.
    pub(crate) fn streamed(&self, fh: u64) -> Option<Arc<crate::stream::Stream>> {
        match &*self.lock().get(&fh)?.1 {
            Handle::Streamed(s) => Some(s.clone()),
            _ => None,
        }
    }

    /// Forgets the handle numbered `fh` (the file was closed).
    pub(crate) fn release(&self, fh: u64) {
        let Some((ino, h)) = self.lock().remove(&fh) else {
            return;
        };
        if h.served_here() {
            let mut counts = self.counts();
            if let Some(n) = counts.get_mut(&ino) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(&ino);
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (u64, Arc<Handle>)>> {
        self.handles.lock().unwrap_or_else(|p| p.into_inner())
    }
}
