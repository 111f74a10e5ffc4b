//! Stores that answer late: wrappers adding a fixed delay to every call,
//! to stand for a remote store at a given round-trip time. The delay is a
//! thread sleep (precise to tens of microseconds), not a tokio timer (which
//! rounds up to the next millisecond and so would add up to 1 ms).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tvix_oci_castore::blobservice::{BlobReader, BlobService, BlobWriter};
use tvix_oci_castore::directoryservice::{DirectoryPutter, DirectoryService};
use tvix_oci_castore::{B3Digest, Directory, StoreError};

/// Waits `d` without holding up the runtime.
async fn delay(d: Duration) {
    let _ = tokio::task::spawn_blocking(move || std::thread::sleep(d)).await;
}

/// A blob store whose every call first waits `delay`.
#[derive(Debug, Clone)]
pub struct SlowBlobs(pub Arc<dyn BlobService>, pub Duration);

#[async_trait]
impl BlobService for SlowBlobs {
    async fn has(&self, d: &B3Digest) -> io::Result<bool> {
        delay(self.1).await;
        self.0.has(d).await
    }
    async fn open_read_at(&self, d: &B3Digest, off: u64) -> io::Result<Option<BlobReader>> {
        delay(self.1).await;
        self.0.open_read_at(d, off).await
    }
    async fn open_write(&self) -> io::Result<Box<dyn BlobWriter>> {
        self.0.open_write().await
    }
}

/// A directory store whose every get first waits `delay`.
#[derive(Debug, Clone)]
pub struct SlowDirs(pub Arc<dyn DirectoryService>, pub Duration);

#[async_trait]
impl DirectoryService for SlowDirs {
    async fn get(&self, d: &B3Digest) -> Result<Option<Directory>, StoreError> {
        delay(self.1).await;
        self.0.get(d).await
    }
    async fn put(&self, dir: Directory) -> Result<B3Digest, StoreError> {
        self.0.put(dir).await
    }
    fn put_multiple_start(&self) -> Box<dyn DirectoryPutter + '_> {
        self.0.put_multiple_start()
    }
}
