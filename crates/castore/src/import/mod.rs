//! Ingesting trees into the castore: one core, many producers.
//!
//! Whatever a tree comes from — a local path ([`import_path`]), a build
//! output walked with `openat2` (the executor), an archive — it reaches
//! the store the same way: its producer sends a stream of [`Entry`]s, in
//! the order of the tree's NAR serialisation, to one consumer,
//! [`ingest_entries`], which reads each file once, writes it through the
//! [`BlobService`](crate::blobservice::BlobService)'s writer, assembles the
//! directories bottom-up and puts them through the
//! [`DirectoryService`](crate::directoryservice::DirectoryService), leaves
//! first. An [`Observer`] sees every name, byte and symlink target in NAR
//! order as it passes, so a NAR hasher or a reference scanner needs no
//! second pass over the tree.
//!
//! Files are read and stored up to [`IngestOptions::concurrency`] at a
//! time; the observer still sees them one after the other, in order.

use std::path::{Path, PathBuf};
use std::time::Instant;

mod error;
mod fs;
mod ingest;
mod observe;
mod upload;

#[cfg(test)]
mod tests;

pub use error::{ImportError, IngestionError};
pub use fs::{FileObserver, ImportObserver, ImportOptions, NoObserver, import_path};
pub use ingest::ingest_entries;
pub use observe::{Observer, PIECE};

/// The most bytes of a file read, stored and observed at once.
pub const CHUNK: usize = 1 << 20;

/// One entry of a tree, as a producer sends it to [`ingest_entries`].
///
/// Paths are relative to the tree's root (empty for the root itself); an
/// entry's name is its path's last component. The stream is in NAR order:
/// an [`Entry::Directory`] is followed by its entries sorted by name
/// (bytewise), each in full, then by its [`Entry::DirectoryEnd`]. A tree
/// whose root is a file or a symlink is that one entry.
pub enum Entry<E> {
    /// A directory begins.
    Directory { path: PathBuf },
    /// The directory begun last (at `path`) is complete.
    DirectoryEnd { path: PathBuf },
    /// A regular file; the consumer opens and reads it through `source`.
    File {
        path: PathBuf,
        source: Box<dyn FileSource<Error = E>>,
    },
    /// A symlink, with its target as stored (not followed).
    Symlink { path: PathBuf, target: Vec<u8> },
}

impl<E> Entry<E> {
    /// The entry's path below the root.
    pub fn path(&self) -> &Path {
        match self {
            Entry::Directory { path }
            | Entry::DirectoryEnd { path }
            | Entry::File { path, .. }
            | Entry::Symlink { path, .. } => path,
        }
    }
}

impl<E> std::fmt::Debug for Entry<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            Entry::Directory { .. } => "Directory",
            Entry::DirectoryEnd { .. } => "DirectoryEnd",
            Entry::File { .. } => "File",
            Entry::Symlink { .. } => "Symlink",
        };
        f.debug_tuple(kind).field(&self.path()).finish()
    }
}

/// What a file is, as its source found it when opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileMeta {
    pub executable: bool,
    /// Its length when opened: reading more or fewer bytes is an
    /// [`IngestionError::Changed`].
    pub size: u64,
}

/// A file's contents, as its producer reads them. Both calls run on a
/// blocking thread, so they may block; errors are the producer's own and
/// come back as [`IngestionError::Producer`].
pub trait FileSource: Send + 'static {
    /// The producer's error.
    type Error;
    /// Opens the file (once, before any read) and says what it is.
    fn open(&mut self) -> Result<FileMeta, Self::Error>;
    /// Reads the next bytes into `buf`; 0 at the end.
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error>;
    /// Goes back to the first byte, to read the file once more: whether
    /// it could (by default it cannot). A store that wants a big blob's
    /// digest before its bytes ([`BlobService::digest_first_from`]) then
    /// gets the file hashed first and sent on the second read, checked
    /// against the first.
    ///
    /// [`BlobService::digest_first_from`]: crate::blobservice::BlobService::digest_first_from
    fn rewind(&mut self) -> Result<bool, Self::Error> {
        Ok(false)
    }
}

/// How [`ingest_entries`] runs.
#[derive(Clone, Copy, Debug)]
pub struct IngestOptions {
    /// Files read and stored at once. With 1, each file is stored before
    /// the next entry is taken, so the first error in NAR order is the
    /// one returned.
    pub concurrency: usize,
    /// When every store call must have answered by: one still pending
    /// then fails with [`IngestionError::StoreTimedOut`].
    pub deadline: Option<Instant>,
}

impl Default for IngestOptions {
    fn default() -> Self {
        Self {
            concurrency: 32,
            deadline: None,
        }
    }
}
