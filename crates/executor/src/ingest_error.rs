//! [`IngestError`]: why an output could not be ingested, naming the output
//! and the path below it, each variant saying whose fault it is (the
//! build's, the host's or the store's), so the executor classifies by type
//! rather than by guessing from an `io::ErrorKind`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::stat::SFlag;
use tvix_oci_castore::StoreError;
use tvix_oci_castore::import::IngestionError;

/// Why an output could not be ingested. Names the output and the path
/// below it; [`IngestError::is_build_failure`] says whose fault it is, by
/// variant.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The build's fault.
    #[error("the build did not produce output {0}")]
    Missing(String),
    /// The build's fault: outputs are read without following symlinks, so
    /// one on the way to an output (`path`, from the sandbox's root) is
    /// refused.
    #[error(
        "output {output}: {} is a symlink; outputs are read without following symlinks",
        path.display()
    )]
    SymlinkOnTheWay { output: String, path: PathBuf },
    /// The build's fault: it left an output the executor may not read.
    #[error("output {output}{}: {source}{}", at(path), unreadable_hint(source))]
    Unreadable {
        output: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "output {output}{} is a {kind}; outputs may hold only files, directories and symlinks",
        at(path)
    )]
    Special {
        output: String,
        path: PathBuf,
        kind: &'static str,
    },
    /// The host's fault: reading the output failed.
    #[error("output {output}{}: {source}", at(path))]
    Io {
        output: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("output {output}{} changed while it was read", at(path))]
    Changed { output: String, path: PathBuf },
    #[error("output {output}{}: {msg}", at(path))]
    Invalid {
        output: String,
        path: PathBuf,
        msg: String,
    },
    #[error(
        "output {output}{}: the build's outputs exceed the limit of {limit} {what}",
        at(path)
    )]
    Limit {
        output: String,
        path: PathBuf,
        what: Cap,
        limit: u64,
    },
    /// The build's fault: its run and the ingestion of its outputs took
    /// longer than its timeout.
    #[error(
        "output {output}{}: ingesting the outputs ran past the build's timeout of {timeout:?}",
        at(path)
    )]
    TimedOut {
        output: String,
        path: PathBuf,
        timeout: Duration,
    },
    /// The store's fault: writing a blob failed.
    #[error("output {output}{}: storing the blob: {source}", at(path))]
    BlobStore {
        output: String,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The store's fault: a call was pending when the deadline came.
    #[error(
        "output {output}{}: the store did not answer before the build's timeout of {timeout:?} ran out",
        at(path)
    )]
    StoreTimedOut {
        output: String,
        path: PathBuf,
        timeout: Duration,
    },
    /// The store's fault.
    #[error("output {output}: storing directories: {source}")]
    Store {
        output: String,
        source: Box<StoreError>,
    },
    /// The host's fault: the ingestion task died.
    #[error("output {output}: the ingestion task failed: {msg}")]
    Task { output: String, msg: String },
}

/// Which of the [`IngestLimits`](crate::ingest::IngestLimits) an output
/// went past.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cap {
    Bytes,
    Entries,
    Depth,
}

impl Cap {
    /// This cap's value in `limits`.
    pub fn of(self, limits: &crate::ingest::IngestLimits) -> u64 {
        match self {
            Cap::Bytes => limits.max_bytes,
            Cap::Entries => limits.max_entries,
            Cap::Depth => limits.max_depth.into(),
        }
    }
}

impl std::fmt::Display for Cap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Cap::Bytes => "bytes",
            Cap::Entries => "entries",
            Cap::Depth => "levels of directories",
        })
    }
}

/// Where in an output: nothing for the output itself.
fn at(path: &Path) -> String {
    if path.as_os_str().is_empty() {
        String::new()
    } else {
        format!(" at {}", path.display())
    }
}

fn unreadable_hint(_: &std::io::Error) -> &'static str {
    " (the executor reads outputs as itself: rootless, that is another user than the build's, so outputs must be readable by others)"
}

impl IngestError {
    /// Whether the build is at fault: it made an output the rules refuse,
    /// one the executor may not read, or ran out of time. Not: the host
    /// failed to read it, or the store to store it.
    pub fn is_build_failure(&self) -> bool {
        match self {
            IngestError::Missing(_)
            | IngestError::SymlinkOnTheWay { .. }
            | IngestError::Unreadable { .. }
            | IngestError::Special { .. }
            | IngestError::Changed { .. }
            | IngestError::Invalid { .. }
            | IngestError::Limit { .. }
            | IngestError::TimedOut { .. } => true,
            IngestError::Io { .. }
            | IngestError::BlobStore { .. }
            | IngestError::StoreTimedOut { .. }
            | IngestError::Store { .. }
            | IngestError::Task { .. } => false,
        }
    }

    /// Whether the store is at fault: it failed, or took too long, to
    /// store an output.
    pub fn is_store_failure(&self) -> bool {
        matches!(
            self,
            IngestError::BlobStore { .. }
                | IngestError::StoreTimedOut { .. }
                | IngestError::Store { .. }
        )
    }

    /// An error reading `path` of `output`: the build's fault when the
    /// executor may not read it (EACCES), the host's otherwise.
    pub(crate) fn reading(output: &str, path: &Path, source: std::io::Error) -> Self {
        let (output, path) = (output.to_owned(), path.to_owned());
        if source.raw_os_error() == Some(libc::EACCES) {
            IngestError::Unreadable {
                output,
                path,
                source,
            }
        } else {
            IngestError::Io {
                output,
                path,
                source,
            }
        }
    }
}

impl IngestError {
    /// The error for `e`, met by the ingestion core storing output
    /// `output` (whose build's timeout is `timeout`): the walk's own
    /// errors as they are, the store's the store's.
    pub(crate) fn from_ingestion(
        output: &str,
        timeout: Duration,
        e: IngestionError<IngestError>,
    ) -> Self {
        let output = output.to_owned();
        match e {
            IngestionError::Producer(e) => e,
            IngestionError::Blob { path, source } => IngestError::BlobStore {
                output,
                path,
                source,
            },
            IngestionError::StoreTimedOut { path } => IngestError::StoreTimedOut {
                output,
                path,
                timeout,
            },
            IngestionError::Store(e) => IngestError::Store {
                output,
                source: Box::new(e),
            },
            IngestionError::Changed { path, .. } => IngestError::Changed { output, path },
            IngestionError::Name { path, err } => IngestError::Invalid {
                output,
                path,
                msg: err.to_string(),
            },
            IngestionError::Directory { path, err } => IngestError::Invalid {
                output,
                path,
                msg: err.to_string(),
            },
            e @ (IngestionError::Malformed { .. } | IngestionError::Task(_)) => IngestError::Task {
                output,
                msg: e.to_string(),
            },
        }
    }
}

pub(crate) fn kind_of(mode: u32) -> &'static str {
    match SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFIFO => "FIFO",
        SFlag::S_IFSOCK => "socket",
        SFlag::S_IFCHR => "character device",
        SFlag::S_IFBLK => "block device",
        _ => "special file",
    }
}
