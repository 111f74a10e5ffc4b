//! The embedded persistent blob store (`objects:///path`): one plain file per
//! blob at `<root>/<first 2 hex digits>/<64 hex digits>`, read-only (mtime
//! 1 s, as in the Nix store), written
//! atomically (temp file in `<root>/tmp`, fsync, rename), so a blob that is
//! there is complete and a crash leaves no partial one under its name. Temp
//! files are named after the process writing them, and those of processes
//! that died are removed at the next open ([`crate::tempfiles`]).

use std::io::{self, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use super::{BlobReader, BlobService, BlobWriter};
use crate::B3Digest;
use crate::error::blob_io;

/// Blobs as files under a root directory.
#[derive(Clone, Debug)]
pub struct ObjectsBlobService {
    root: PathBuf,
}

impl ObjectsBlobService {
    /// Opens (creating it if needed) the store at `root`, removing temp
    /// files of writes a dead process left unfinished (live processes'
    /// writes are untouched).
    pub fn open(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(root.join("tmp")).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("creating blob store {}: {e}", root.display()),
            )
        })?;
        let removed = crate::tempfiles::sweep(&root.join("tmp"));
        if removed > 0 {
            tracing::info!(
                removed,
                "removed temp files of dead writers in {}",
                root.display()
            );
        }
        Ok(Self { root })
    }

    /// Where the blob `digest` is (or would be) kept.
    pub fn blob_path(&self, digest: &B3Digest) -> PathBuf {
        let hex = digest.to_hex();
        self.root.join(&hex[..2]).join(hex)
    }
}

#[async_trait]
impl BlobService for ObjectsBlobService {
    async fn has(&self, digest: &B3Digest) -> io::Result<bool> {
        tokio::fs::try_exists(self.blob_path(digest))
            .await
            .map_err(|e| blob_io(digest, "stat", e))
    }

    async fn open_read_at(&self, digest: &B3Digest, offset: u64) -> io::Result<Option<BlobReader>> {
        let mut file = match tokio::fs::File::open(self.blob_path(digest)).await {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(blob_io(digest, "open", e)),
        };
        if offset > 0 {
            file.seek(SeekFrom::Start(offset))
                .await
                .map_err(|e| blob_io(digest, "seek", e))?;
        }
        Ok(Some(Box::new(file)))
    }

    fn range_reads(&self) -> bool {
        true
    }

    async fn open_write(&self) -> io::Result<Box<dyn BlobWriter>> {
        let tmp_dir = self.root.join("tmp");
        let (file, path) = tokio::task::spawn_blocking(move || {
            tempfile::Builder::new()
                .prefix(&crate::tempfiles::owned_prefix("blob"))
                .tempfile_in(&tmp_dir)
                .map(|t| t.into_parts())
        })
        .await
        .map_err(io::Error::other)?
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("creating a temp file in {}: {e}", self.root.display()),
            )
        })?;
        Ok(Box::new(ObjectsWriter {
            store: self.clone(),
            file: tokio::fs::File::from_std(file),
            path,
            hasher: blake3::Hasher::new(),
        }))
    }

    fn local_path(&self, digest: &B3Digest) -> Option<PathBuf> {
        let p = self.blob_path(digest);
        p.exists().then_some(p)
    }

    fn local_root(&self) -> Option<PathBuf> {
        Some(self.root.clone())
    }
}

struct ObjectsWriter {
    store: ObjectsBlobService,
    file: tokio::fs::File,
    /// Deletes the temp file when dropped before `close` renamed it.
    path: tempfile::TempPath,
    hasher: blake3::Hasher,
}

fn tmp_io(path: &Path, what: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

#[async_trait]
impl BlobWriter for ObjectsWriter {
    async fn write(&mut self, data: Bytes) -> io::Result<()> {
        self.hasher.update(&data);
        self.file
            .write_all(&data)
            .await
            .map_err(|e| tmp_io(&self.path, "writing", e))
    }

    async fn close(self: Box<Self>) -> io::Result<B3Digest> {
        let ObjectsWriter {
            store,
            mut file,
            path,
            hasher,
        } = *self;
        let digest = B3Digest::from(hasher.finalize());
        file.flush()
            .await
            .map_err(|e| tmp_io(&path, "writing", e))?;
        file.sync_all()
            .await
            .map_err(|e| tmp_io(&path, "syncing", e))?;
        let std_file = file.into_std().await;
        let dest = store.blob_path(&digest);
        tokio::task::spawn_blocking(move || persist(std_file, path, &dest))
            .await
            .map_err(io::Error::other)?
            .map_err(|e| blob_io(&digest, "storing", e))?;
        Ok(digest)
    }
}

/// Read-only, with the Nix store's mtime (1 s): so a kernel view of the
/// inputs can link the file as it is (`tvix_oci_fuse::kernel_view`). The
/// mtime is set once the file has its name (a temp file's is its age to
/// a sweep).
fn persist(file: std::fs::File, path: tempfile::TempPath, dest: &Path) -> io::Result<()> {
    file.set_permissions(std::fs::Permissions::from_mode(0o444))?;
    if dest.exists() {
        return Ok(()); // same bytes already there; `path` deletes the temp file
    }
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)?;
    }
    path.persist(dest).map_err(|e| e.error)?;
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1);
    file.set_times(std::fs::FileTimes::new().set_accessed(t).set_modified(t))
}
