//! Writing a castore node back out to the filesystem: the eager
//! materialization that lazy FUSE inputs are compared against, and the way
//! to get outputs out of the store.
//!
//! Files get mode 0755 or 0644 by their executable bit; blobs are copied
//! concurrently, directories are created before their contents.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::TryStreamExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::blobservice::BlobService;
use crate::directoryservice::DirectoryService;
use crate::{B3Digest, Directory, Node, StoreError};

/// Why an export failed. Names the path and digest at fault.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: blob {digest} is not in the store", path.display())]
    MissingBlob { path: PathBuf, digest: B3Digest },
    #[error("{}: directory {digest} is not in the store", path.display())]
    MissingDirectory { path: PathBuf, digest: B3Digest },
    #[error("{}: blob {digest} has {actual} bytes, the node says {expected}", path.display())]
    WrongSize {
        path: PathBuf,
        digest: B3Digest,
        expected: u64,
        actual: u64,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Writes `node` to `dest`, which must not exist yet.
pub async fn export_node(
    blobs: Arc<dyn BlobService>,
    dirs: &dyn DirectoryService,
    node: &Node,
    dest: &Path,
) -> Result<(), ExportError> {
    let mut closure = HashMap::new();
    if let Node::Directory { digest, .. } = node {
        let all: Vec<Directory> = dirs.get_recursive(digest).try_collect().await?;
        if all.is_empty() {
            return Err(ExportError::MissingDirectory {
                path: dest.to_owned(),
                digest: *digest,
            });
        }
        closure.extend(all.into_iter().map(|d| (d.digest(), d)));
    }
    let permits = Arc::new(Semaphore::new(16));
    let mut files = JoinSet::new();
    let mut todo = vec![(dest.to_owned(), node.clone())];
    while let Some((path, node)) = todo.pop() {
        match node {
            Node::Directory { digest, .. } => {
                let dir = closure
                    .get(&digest)
                    .ok_or_else(|| ExportError::MissingDirectory {
                        path: path.clone(),
                        digest,
                    })?;
                tokio::fs::create_dir(&path)
                    .await
                    .map_err(|source| ExportError::Io {
                        path: path.clone(),
                        source,
                    })?;
                for (name, child) in dir.nodes() {
                    let os = OsStr::from_bytes(name.as_bytes());
                    todo.push((path.join(os), child.clone()));
                }
            }
            Node::Symlink { target } => {
                let t = OsStr::from_bytes(target.as_bytes()).to_owned();
                tokio::fs::symlink(&t, &path)
                    .await
                    .map_err(|source| ExportError::Io {
                        path: path.clone(),
                        source,
                    })?;
            }
            Node::File {
                digest,
                size,
                executable,
            } => {
                let permit =
                    permits
                        .clone()
                        .acquire_owned()
                        .await
                        .map_err(|_| ExportError::Io {
                            path: path.clone(),
                            source: io::Error::other("export cancelled"),
                        })?;
                let blobs = blobs.clone();
                files.spawn(async move {
                    let res = write_file(&*blobs, &path, &digest, size, executable).await;
                    drop(permit);
                    res
                });
            }
        }
        // Reap finished copies as we go, failing fast.
        while let Some(done) = files.try_join_next() {
            done.map_err(|e| ExportError::Io {
                path: dest.to_owned(),
                source: io::Error::other(e),
            })??;
        }
    }
    while let Some(done) = files.join_next().await {
        done.map_err(|e| ExportError::Io {
            path: dest.to_owned(),
            source: io::Error::other(e),
        })??;
    }
    Ok(())
}

async fn write_file(
    blobs: &dyn BlobService,
    path: &Path,
    digest: &B3Digest,
    size: u64,
    executable: bool,
) -> Result<(), ExportError> {
    let io = |source| ExportError::Io {
        path: path.to_owned(),
        source,
    };
    let mut reader =
        blobs
            .open_read(digest)
            .await
            .map_err(io)?
            .ok_or_else(|| ExportError::MissingBlob {
                path: path.to_owned(),
                digest: *digest,
            })?;
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if executable { 0o755 } else { 0o644 })
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .await
        .map_err(io)?;
    let actual = tokio::io::copy(&mut reader, &mut file).await.map_err(io)?;
    if actual != size {
        return Err(ExportError::WrongSize {
            path: path.to_owned(),
            digest: *digest,
            expected: size,
            actual,
        });
    }
    tokio::io::AsyncWriteExt::flush(&mut file)
        .await
        .map_err(io)?;
    Ok(())
}
