//! Writing a castore node back out to the filesystem: the eager
//! materialization that lazy FUSE inputs are compared against, and the way
//! to get outputs out of the store.
//!
//! Files get mode 0755 or 0644 by their executable bit; blobs are copied
//! concurrently, directories are created before their contents.
//!
//! The store is not trusted: every blob is read through a
//! [`CheckedReader`] (never more than its declared size, verified against
//! its digest), every directory is checked against the size its node
//! declares, and the tree is written under a temp name beside the
//! destination and renamed into place only once all of it was verified.
//! A failed export leaves nothing at the destination (and no temp tree).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::TryStreamExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::blobservice::{BlobService, CheckedReader};
use crate::directoryservice::{DirectoryService, RootFirst};
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
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A blob store sending no byte for this long fails the export.
pub const IDLE_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Writes `node` to `dest`, which must not exist yet. `dest` appears only
/// once everything below it was read and verified; on error nothing is
/// left there.
pub async fn export_node(
    blobs: Arc<dyn BlobService>,
    dirs: &dyn DirectoryService,
    node: &Node,
    dest: &Path,
) -> Result<(), ExportError> {
    let io_at = |path: &Path| {
        let path = path.to_owned();
        move |source| ExportError::Io { path, source }
    };
    if tokio::fs::symlink_metadata(dest).await.is_ok() {
        return Err(io_at(dest)(io::Error::from(io::ErrorKind::AlreadyExists)));
    }
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = dest.file_name().unwrap_or(OsStr::new("export"));
    let mut prefix = OsStr::new(".").to_owned();
    prefix.push(name);
    prefix.push(".export-");
    // Removed on drop: on error, and after the rename on success.
    let stage = tempfile::Builder::new()
        .prefix(&prefix)
        .tempdir_in(&parent)
        .map_err(io_at(&parent))?;
    let staged = stage.path().join("node");
    export_into(blobs, dirs, node, &staged, dest).await?;
    rename_noreplace(&staged, dest).map_err(io_at(dest))?;
    stage.close().map_err(io_at(&parent))?;
    Ok(())
}

/// Renames `from` to `to`, failing if `to` exists.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other);
    let (f, t) = (c(from)?, c(to)?);
    // SAFETY: valid NUL-terminated paths; renameat2 only reads them.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The verified closure of directory node `digest` of `size`, by digest.
async fn closure_of(
    dirs: &dyn DirectoryService,
    digest: &B3Digest,
    size: u64,
    dest: &Path,
) -> Result<HashMap<B3Digest, Directory>, ExportError> {
    let all: Vec<Directory> = dirs.get_recursive(digest).try_collect().await?;
    if all.is_empty() {
        return Err(ExportError::MissingDirectory {
            path: dest.to_owned(),
            digest: *digest,
        });
    }
    // Whatever the backend checked: order, and every size declared.
    let mut check = RootFirst::with_size(*digest, size);
    for d in &all {
        check.add(d).map_err(StoreError::from)?;
    }
    check.finish().map_err(StoreError::from)?;
    Ok(all.into_iter().map(|d| (d.digest(), d)).collect())
}

/// Writes `node` at `staged`; errors name the path below `dest`.
async fn export_into(
    blobs: Arc<dyn BlobService>,
    dirs: &dyn DirectoryService,
    node: &Node,
    staged: &Path,
    dest: &Path,
) -> Result<(), ExportError> {
    let closure = match node {
        Node::Directory { digest, size } => closure_of(dirs, digest, *size, dest).await?,
        _ => HashMap::new(),
    };
    let shown = |p: &Path| dest.join(p.strip_prefix(staged).unwrap_or(p));
    let permits = Arc::new(Semaphore::new(16));
    let mut files = JoinSet::new();
    let mut todo = vec![(staged.to_owned(), node.clone())];
    while let Some((path, node)) = todo.pop() {
        match node {
            Node::Directory { digest, .. } => {
                let dir = closure
                    .get(&digest)
                    .ok_or_else(|| ExportError::MissingDirectory {
                        path: shown(&path),
                        digest,
                    })?;
                tokio::fs::create_dir(&path)
                    .await
                    .map_err(|source| ExportError::Io {
                        path: shown(&path),
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
                        path: shown(&path),
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
                            path: shown(&path),
                            source: io::Error::other("export cancelled"),
                        })?;
                let blobs = blobs.clone();
                let shown = shown(&path);
                files.spawn(async move {
                    let res = write_file(&*blobs, &path, &shown, &digest, size, executable).await;
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
    shown: &Path,
    digest: &B3Digest,
    size: u64,
    executable: bool,
) -> Result<(), ExportError> {
    let io = |source| ExportError::Io {
        path: shown.to_owned(),
        source,
    };
    let reader =
        blobs
            .open_read(digest)
            .await
            .map_err(io)?
            .ok_or_else(|| ExportError::MissingBlob {
                path: shown.to_owned(),
                digest: *digest,
            })?;
    // Never more than the declared size on disk; verified before the rename.
    let mut reader = CheckedReader::new(reader, *digest, size).idle_limit(IDLE_LIMIT);
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if executable { 0o755 } else { 0o644 })
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .await
        .map_err(io)?;
    tokio::io::copy(&mut reader, &mut file).await.map_err(io)?;
    tokio::io::AsyncWriteExt::flush(&mut file)
        .await
        .map_err(io)?;
    Ok(())
}
