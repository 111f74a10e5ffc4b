//! The NAR of a node already in the castore, streamed into a
//! [`NarWriter`]: directories fetched one at a time, blobs read in chunks
//! through a [`CheckedReader`](tvix_oci_castore::blobservice::CheckedReader)
//! (never more than the size the node declares, verified against its
//! digest), so no NAR and no whole file is ever held in memory. What a
//! fixed output declared in another algorithm than the ingestion's SHA-256
//! is checked with.

use tokio::io::AsyncReadExt;
use tvix_oci_castore::blobservice::{BlobService, open_checked};
use tvix_oci_castore::directoryservice::DirectoryService;
use tvix_oci_castore::{B3Digest, Node, PathComponent, StoreError};

use crate::nar::{NarSink, NarWriter};

/// Why the NAR of a node could not be produced. Names the entry (its path
/// below the node, `.` for the node itself) and the digest at fault.
#[derive(Debug, thiserror::Error)]
pub enum NarNodeError {
    #[error("{path}: blob {digest} is not in the store")]
    MissingBlob { path: String, digest: B3Digest },
    #[error("{path}: directory {digest} is not in the store")]
    MissingDirectory { path: String, digest: B3Digest },
    #[error("{path}: reading blob {digest}: {source}")]
    Read {
        path: String,
        digest: B3Digest,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: directory {digest}: {source}")]
    Store {
        path: String,
        digest: B3Digest,
        #[source]
        source: StoreError,
    },
}

/// What is left to write: a node (named when it is a directory entry), or
/// the close of a directory (and of its entry, when named).
enum Step {
    Node(String, Option<PathComponent>, Node),
    CloseDir { named: bool },
}

/// Feeds the NAR of `node` into `nar`, which must be fresh (just the magic
/// written): the node is the NAR's root, its own name is no part of it.
pub async fn write_node<S: NarSink>(
    nar: &mut NarWriter<S>,
    node: &Node,
    blobs: &dyn BlobService,
    dirs: &dyn DirectoryService,
) -> Result<(), NarNodeError> {
    let mut todo = vec![Step::Node(".".into(), None, node.clone())];
    let mut buf = vec![0u8; 64 << 10];
    while let Some(step) = todo.pop() {
        let (path, name, node) = match step {
            Step::CloseDir { named } => {
                nar.directory_end();
                if named {
                    nar.entry_end();
                }
                continue;
            }
            Step::Node(path, name, node) => (path, name, node),
        };
        if let Some(n) = &name {
            nar.entry_start(n.as_bytes());
        }
        match node {
            Node::Symlink { target } => nar.symlink(target.as_bytes()),
            Node::File {
                digest,
                size,
                executable,
            } => write_file(nar, blobs, &path, &digest, size, executable, &mut buf).await?,
            Node::Directory { digest, .. } => {
                let dir = dirs
                    .get(&digest)
                    .await
                    .map_err(|source| NarNodeError::Store {
                        path: path.clone(),
                        digest,
                        source,
                    })?
                    .ok_or_else(|| NarNodeError::MissingDirectory {
                        path: path.clone(),
                        digest,
                    })?;
                nar.directory_start();
                todo.push(Step::CloseDir {
                    named: name.is_some(),
                });
                // Popped in name order, as NAR entries go.
                let first = todo.len();
                for (n, child) in dir.nodes() {
                    let p = if path == "." {
                        n.to_string()
                    } else {
                        format!("{path}/{n}")
                    };
                    todo.push(Step::Node(p, Some(n.clone()), child.clone()));
                }
                todo[first..].reverse();
                continue;
            }
        }
        if name.is_some() {
            nar.entry_end();
        }
    }
    Ok(())
}

/// One regular file, its blob streamed and checked.
async fn write_file<S: NarSink>(
    nar: &mut NarWriter<S>,
    blobs: &dyn BlobService,
    path: &str,
    digest: &B3Digest,
    size: u64,
    executable: bool,
    buf: &mut [u8],
) -> Result<(), NarNodeError> {
    let read_err = |source| NarNodeError::Read {
        path: path.to_owned(),
        digest: *digest,
        source,
    };
    let mut rd = open_checked(blobs, digest, size)
        .await
        .map_err(read_err)?
        .ok_or_else(|| NarNodeError::MissingBlob {
            path: path.to_owned(),
            digest: *digest,
        })?;
    nar.file_start(executable, size);
    loop {
        let n = rd.read(buf).await.map_err(read_err)?;
        if n == 0 {
            break;
        }
        nar.file_data(&buf[..n]);
    }
    if nar.file_end() {
        return Ok(());
    }
    Err(read_err(std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        format!("the blob is shorter than the {size} bytes its node declares"),
    )))
}
