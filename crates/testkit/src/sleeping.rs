//! [`SleepingStore`]: a blob and directory store that never answers — the
//! worst store a client can meet, for the tests of its timeouts.

use std::io;
use std::sync::Mutex;

use async_trait::async_trait;
use tvix_oci_castore::blobservice::{BlobReader, BlobService, BlobWriter};
use tvix_oci_castore::directoryservice::{DirectoryPutter, DirectoryService};
use tvix_oci_castore::{B3Digest, Directory, StoreError};

/// Every call waits forever; with [`SleepingStore::trickling`], a read
/// first sends a few bytes, then waits forever.
#[derive(Debug, Default)]
pub struct SleepingStore {
    trickle: bool,
    /// The write ends of readers, kept open so they never end.
    held: Mutex<Vec<tokio::io::DuplexStream>>,
}

impl SleepingStore {
    /// A store whose reads send their first bytes, then hang.
    pub fn trickling() -> Self {
        Self {
            trickle: true,
            ..Self::default()
        }
    }
}

#[async_trait]
impl BlobService for SleepingStore {
    async fn has(&self, _: &B3Digest) -> io::Result<bool> {
        futures::future::pending().await
    }
    async fn open_read_at(&self, _: &B3Digest, _: u64) -> io::Result<Option<BlobReader>> {
        if !self.trickle {
            futures::future::pending::<()>().await;
        }
        let (r, mut w) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut w, b"the first bytes").await?;
        if let Ok(mut held) = self.held.lock() {
            held.push(w);
        }
        Ok(Some(Box::new(r)))
    }
    async fn open_write(&self) -> io::Result<Box<dyn BlobWriter>> {
        futures::future::pending().await
    }
}

#[async_trait]
impl DirectoryService for SleepingStore {
    async fn get(&self, _: &B3Digest) -> Result<Option<Directory>, StoreError> {
        futures::future::pending().await
    }
    async fn put(&self, _: Directory) -> Result<B3Digest, StoreError> {
        futures::future::pending().await
    }
    fn put_multiple_start(&self) -> Box<dyn DirectoryPutter + '_> {
        Box::new(SleepingPutter)
    }
}

struct SleepingPutter;

#[async_trait]
impl DirectoryPutter for SleepingPutter {
    async fn put(&mut self, _: Directory) -> Result<(), StoreError> {
        futures::future::pending().await
    }
    async fn close(&mut self) -> Result<B3Digest, StoreError> {
        futures::future::pending().await
    }
}
