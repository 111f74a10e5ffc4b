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
}

/// The open files of one mount.
#[derive(Debug)]
pub(crate) struct Opens {
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
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
        let handle = match open_backing {
            None => Handle::File(file),
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
        self.add(handle)
    }

    /// Registers `handle`; its number and itself.
    pub(crate) fn add(&self, handle: Handle) -> (u64, Arc<Handle>) {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let handle = Arc::new(handle);
        self.lock().insert(fh, handle.clone());
        (fh, handle)
    }

    /// The handle numbered `fh`.
    pub(crate) fn get(&self, fh: u64) -> Option<Arc<Handle>> {
        self.lock().get(&fh).cloned()
    }

    /// Forgets the handle numbered `fh` (the file was closed).
    pub(crate) fn release(&self, fh: u64) {
        self.lock().remove(&fh);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Handle>>> {
        self.handles.lock().unwrap_or_else(|p| p.into_inner())
    }
}
