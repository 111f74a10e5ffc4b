//! Uploads to real (memory) stores, counted by a wrapper: a second upload
//! of the same tree sends nothing, a changed file only its blob and the
//! directories, and a file changed between hashing and sending fails,
//! naming it.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};

use std::io;

use async_trait::async_trait;
use tvix_oci_castore::blobservice::{BlobReader, BlobWriter, MemoryBlobService};
use tvix_oci_castore::directoryservice::MemoryDirectoryService;

use super::*;

/// A memory blob store counting the blobs written to it.
#[derive(Debug, Default)]
struct Counted {
    inner: MemoryBlobService,
    writes: AtomicU64,
}

#[async_trait]
impl BlobService for Counted {
    async fn has(&self, digest: &B3Digest) -> io::Result<bool> {
        self.inner.has(digest).await
    }

    async fn open_read_at(&self, digest: &B3Digest, offset: u64) -> io::Result<Option<BlobReader>> {
        self.inner.open_read_at(digest, offset).await
    }

    async fn open_write(&self) -> io::Result<Box<dyn BlobWriter>> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.open_write().await
    }
}

fn tree(root: &Path) {
    std::fs::create_dir_all(root.join("a/b")).unwrap();
    std::fs::write(root.join("one"), b"one").unwrap();
    std::fs::write(root.join("a/two"), b"two").unwrap();
    std::fs::write(root.join("a/b/same"), b"one").unwrap();
    std::os::unix::fs::symlink("one", root.join("link")).unwrap();
}

#[tokio::test]
async fn a_second_upload_sends_nothing_and_a_change_only_what_changed() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("t");
    tree(&root);
    let counted = Arc::new(Counted::default());
    let blobs: Arc<dyn BlobService> = counted.clone();
    let dirs = MemoryDirectoryService::default();
    let opts = ImportOptions::default();

    let (node, sent) = upload_path(&root, &opts, &blobs, &dirs).await.unwrap();
    // Two distinct contents; three directories.
    assert_eq!(
        sent,
        Sent {
            blobs: 2,
            bytes: 6,
            blobs_there: 0,
            dirs: 3
        }
    );
    assert_eq!(counted.writes.load(Ordering::Relaxed), 2);
    // What arrived is the tree an import makes, whole.
    let local_blobs: Arc<dyn BlobService> = Arc::new(MemoryBlobService::default());
    let local_dirs = MemoryDirectoryService::default();
    let imported = import_path(local_blobs, &local_dirs, &root, &opts)
        .await
        .unwrap();
    assert_eq!(node, imported);
    let Node::Directory { digest, .. } = node else {
        panic!("{node:?}")
    };
    let closure: Vec<_> = dirs.get_recursive(&digest).try_collect().await.unwrap();
    assert_eq!(closure.len(), 3);

    let (again, sent) = upload_path(&root, &opts, &blobs, &dirs).await.unwrap();
    assert_eq!(again, imported);
    assert_eq!(
        sent,
        Sent {
            blobs_there: 2,
            ..Sent::default()
        }
    );
    assert_eq!(
        counted.writes.load(Ordering::Relaxed),
        2,
        "nothing sent again"
    );

    std::fs::write(root.join("a/two"), b"2").unwrap();
    let (_, sent) = upload_path(&root, &opts, &blobs, &dirs).await.unwrap();
    assert_eq!(
        sent,
        Sent {
            blobs: 1,
            bytes: 1,
            blobs_there: 1,
            dirs: 3
        }
    );
    assert_eq!(counted.writes.load(Ordering::Relaxed), 3);
}

#[tokio::test]
async fn a_file_changed_after_it_was_hashed_fails_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("f");
    std::fs::write(&file, b"before").unwrap();
    let blobs: Arc<dyn BlobService> = Arc::new(MemoryBlobService::default());
    let digest = B3Digest::of(b"before");
    // Same size, other bytes.
    std::fs::write(&file, b"after!").unwrap();
    let err = send_file(&blobs, &file, &digest, 6).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&format!(
            "{} changed while it was uploaded (blake3 {digest}",
            file.display()
        )),
        "{msg}"
    );
    // Another size.
    std::fs::write(&file, b"longer now").unwrap();
    let err = send_file(&blobs, &file, &digest, 6).await.unwrap_err();
    assert!(
        err.to_string().contains("6 bytes when hashed, more now"),
        "{err}"
    );
    // A symlink put in its place is not followed.
    std::fs::remove_file(&file).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", &file).unwrap();
    let err = send_file(&blobs, &file, &digest, 6).await.unwrap_err();
    assert!(format!("{err:#}").contains("opening"), "{err:#}");
}
