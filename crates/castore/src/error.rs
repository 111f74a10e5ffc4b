//! Errors of the stores. Every variant names what it is about: the store
//! URL, the path on disk, or the digest.

use std::io;
use std::path::PathBuf;

use crate::{B3Digest, DirectoryError};

/// An error from a directory store, or from opening a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("directory {digest} is invalid: {err}")]
    InvalidDirectory {
        digest: B3Digest,
        err: DirectoryError,
    },
    #[error("invalid directory closure: {0}")]
    Closure(#[from] ClosureError),
    #[error("asked the store for directory {expected}, it returned {actual}")]
    WrongDigest {
        expected: B3Digest,
        actual: B3Digest,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("database {path}: {msg}")]
    Database { path: PathBuf, msg: String },
    #[error("store {url}: {code:?}: {msg}")]
    Grpc {
        url: String,
        code: tonic::Code,
        msg: String,
    },
    #[error("invalid store URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    /// A remote store did not answer in time.
    #[error(transparent)]
    Timeout(#[from] crate::grpc::Timeout),
    /// The embedded database is open in another process (redb allows one).
    #[error("{}", in_use(path, holder.as_ref()))]
    InUse {
        path: PathBuf,
        holder: Option<crate::directoryservice::Holder>,
    },
}

fn in_use(path: &std::path::Path, holder: Option<&crate::directoryservice::Holder>) -> String {
    let p = path.display();
    match holder {
        Some(h) => {
            let addr = match h.listening.first() {
                Some(a) => format!("its gRPC address ({a})"),
                None => "its gRPC address (grpc+http://…)".to_owned(),
            };
            format!(
                "the directory store {p} is in use by process {} ({}); use {addr} as the store, or stop it",
                h.pid, h.command
            )
        }
        None => format!(
            "the directory store {p} is in use by another process, which could not be found \
             (it may belong to another user or pid namespace); use that process's gRPC address \
             as the store, or stop it"
        ),
    }
}

impl StoreError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        StoreError::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn grpc(url: &str, status: &tonic::Status) -> Self {
        StoreError::Grpc {
            url: url.to_owned(),
            code: status.code(),
            msg: status.message().to_owned(),
        }
    }

    pub(crate) fn url(url: &str, reason: impl Into<String>) -> Self {
        StoreError::Url {
            url: url.to_owned(),
            reason: reason.into(),
        }
    }
}

/// Why a stream of directories is not a valid closure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClosureError {
    #[error("directory {parent} refers to child {name:?} ({child}), which was not sent before it")]
    ChildNotSent {
        parent: B3Digest,
        name: String,
        child: B3Digest,
    },
    #[error(
        "directory {parent}: {name:?} has wrong size, specified {specified}, recorded {recorded}"
    )]
    WrongSize {
        parent: B3Digest,
        name: String,
        specified: u64,
        recorded: u64,
    },
    #[error("directory {digest} has size {computed}, but {by} declares {declared}")]
    DeclaredSize {
        digest: B3Digest,
        computed: u64,
        declared: u64,
        /// Who declared it: a parent's entry, or the root node.
        by: String,
    },
    #[error("directory {0} was sent but is not referred to by any directory before it")]
    Unexpected(B3Digest),
    #[error("the first directory sent is {actual}, not the requested root {expected}")]
    WrongRoot {
        expected: B3Digest,
        actual: B3Digest,
    },
    #[error("directory {0} is referred to but was never sent")]
    Missing(B3Digest),
    #[error("directory {0} is not connected to the root {1}")]
    Disconnected(B3Digest, B3Digest),
    #[error("no directories were sent")]
    Empty,
}

/// An `io::Error` that names the blob it is about.
pub(crate) fn blob_io(digest: &B3Digest, what: &str, err: io::Error) -> io::Error {
    io::Error::new(err.kind(), format!("blob {digest}: {what}: {err}"))
}
