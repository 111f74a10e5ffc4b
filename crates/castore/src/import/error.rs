//! Why an ingestion failed: [`IngestionError`], the core's, which keeps
//! the producer's own errors apart from the store's (a producer maps it
//! to its error type, deciding whose fault each is by variant); and
//! [`ImportError`], [`import_path`](super::import_path)'s.

use std::io;
use std::path::{Path, PathBuf};

use crate::{DirectoryError, NameError, StoreError};

/// Why [`ingest_entries`](super::ingest_entries) failed. Paths are
/// relative to the tree's root.
#[derive(Debug, thiserror::Error)]
pub enum IngestionError<E> {
    /// The producer failed: listing the tree or reading a file.
    #[error(transparent)]
    Producer(E),
    /// The store's fault: opening, writing or closing a blob failed.
    #[error("{}: storing the blob: {source}", path.display())]
    Blob {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The store's fault: a call was pending when the deadline came.
    #[error("{}: the store did not answer in time", path.display())]
    StoreTimedOut { path: PathBuf },
    /// The store's fault: putting the directories failed.
    #[error("storing the directories: {0}")]
    Store(#[source] StoreError),
    /// The file's length when read differs from its length when opened.
    #[error("{}: changed while ingested: {stat} bytes when opened, {read} read", path.display())]
    Changed { path: PathBuf, stat: u64, read: u64 },
    /// An entry's name or a symlink's target the castore cannot hold.
    #[error("{}: {err}", path.display())]
    Name { path: PathBuf, err: NameError },
    /// A directory the castore cannot hold (a name twice, too big).
    #[error("{}: {err}", path.display())]
    Directory { path: PathBuf, err: DirectoryError },
    /// The producer's stream broke the order [`Entry`](super::Entry)
    /// documents: a bug in the producer.
    #[error("{}: the entries are out of order: {msg}", path.display())]
    Malformed { path: PathBuf, msg: &'static str },
    /// A task of the ingestion died or was cancelled.
    #[error("the ingestion task failed: {0}")]
    Task(String),
}

/// Why an import failed. Names the path at fault.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: is a {kind}; only regular files, directories and symlinks can be imported", path.display())]
    Unsupported { path: PathBuf, kind: &'static str },
    #[error("{}: {err}", path.display())]
    Name { path: PathBuf, err: NameError },
    #[error("{}: {err}", path.display())]
    Directory { path: PathBuf, err: DirectoryError },
    #[error("{}: storing the blob: {source}", path.display())]
    Blob {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: changed while imported: {stat} bytes when opened, {read} read", path.display())]
    Changed { path: PathBuf, stat: u64, read: u64 },
    #[error("storing the directories: {0}")]
    Store(#[from] StoreError),
}

impl ImportError {
    /// The import error for `e`, met ingesting the tree at `root`.
    pub(super) fn from_ingestion(root: &Path, e: IngestionError<ImportError>) -> Self {
        let abs = |rel: PathBuf| {
            if rel.as_os_str().is_empty() {
                root.to_owned()
            } else {
                root.join(rel)
            }
        };
        match e {
            IngestionError::Producer(e) => e,
            IngestionError::Blob { path, source } => ImportError::Blob {
                path: abs(path),
                source,
            },
            IngestionError::StoreTimedOut { path } => ImportError::Blob {
                path: abs(path),
                source: io::ErrorKind::TimedOut.into(),
            },
            IngestionError::Store(e) => ImportError::Store(e),
            IngestionError::Changed { path, stat, read } => ImportError::Changed {
                path: abs(path),
                stat,
                read,
            },
            IngestionError::Name { path, err } => ImportError::Name {
                path: abs(path),
                err,
            },
            IngestionError::Directory { path, err } => ImportError::Directory {
                path: abs(path),
                err,
            },
            e @ (IngestionError::Malformed { .. } | IngestionError::Task(_)) => ImportError::Io {
                path: root.to_owned(),
                source: io::Error::other(e.to_string()),
            },
        }
    }
}
