//! The first pass of an upload (see the parent module): a blob store that
//! only hashes what is written to it, and a directory store keeping here,
//! in order, the closures put into it.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use tvix_oci_castore::blobservice::{BlobReader, BlobService, BlobWriter};
use tvix_oci_castore::directoryservice::{DirectoryPutter, DirectoryService, LeavesFirst};
use tvix_oci_castore::{B3Digest, Directory, StoreError};

/// A blob store that only hashes: the first pass of an upload.
#[derive(Debug)]
pub(super) struct HashOnly;

struct Hashing(blake3::Hasher);

#[async_trait]
impl BlobService for HashOnly {
    async fn has(&self, _: &B3Digest) -> io::Result<bool> {
        Ok(false)
    }

    async fn open_read_at(&self, _: &B3Digest, _: u64) -> io::Result<Option<BlobReader>> {
        Ok(None)
    }

    async fn open_write(&self) -> io::Result<Box<dyn BlobWriter>> {
        Ok(Box::new(Hashing(blake3::Hasher::new())))
    }
}

#[async_trait]
impl BlobWriter for Hashing {
    async fn write(&mut self, data: Bytes) -> io::Result<()> {
        self.0.update(&data);
        Ok(())
    }

    async fn close(self: Box<Self>) -> io::Result<B3Digest> {
        Ok(self.0.finalize().into())
    }
}

/// The directories of one import, leaves first, and where each is.
#[derive(Debug, Default)]
pub(super) struct Closure {
    pub(super) order: Vec<Directory>,
    pub(super) by_digest: HashMap<B3Digest, usize>,
}

/// A directory store keeping, here, the closures put into it: the first
/// pass of an upload.
#[derive(Debug, Default)]
pub(super) struct Kept(Arc<Mutex<Closure>>);

impl Kept {
    pub(super) fn take(&self) -> Closure {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Closure {
    fn add(&mut self, dir: Directory) -> B3Digest {
        let digest = dir.digest();
        if !self.by_digest.contains_key(&digest) {
            self.by_digest.insert(digest, self.order.len());
            self.order.push(dir);
        }
        digest
    }
}

#[async_trait]
impl DirectoryService for Kept {
    async fn get(&self, digest: &B3Digest) -> Result<Option<Directory>, StoreError> {
        let c = self.0.lock().unwrap_or_else(|p| p.into_inner());
        Ok(c.by_digest
            .get(digest)
            .and_then(|&i| c.order.get(i))
            .cloned())
    }

    async fn put(&self, dir: Directory) -> Result<B3Digest, StoreError> {
        Ok(self.0.lock().unwrap_or_else(|p| p.into_inner()).add(dir))
    }

    fn put_multiple_start(&self) -> Box<dyn DirectoryPutter + '_> {
        Box::new(KeptPutter {
            into: self.0.clone(),
            check: LeavesFirst::default(),
            dirs: Vec::new(),
        })
    }
}

struct KeptPutter {
    into: Arc<Mutex<Closure>>,
    check: LeavesFirst,
    dirs: Vec<Directory>,
}

#[async_trait]
impl DirectoryPutter for KeptPutter {
    async fn put(&mut self, dir: Directory) -> Result<(), StoreError> {
        self.check.add(&dir)?;
        self.dirs.push(dir);
        Ok(())
    }

    async fn close(&mut self) -> Result<B3Digest, StoreError> {
        let root = std::mem::take(&mut self.check).finish()?;
        let mut into = self.into.lock().unwrap_or_else(|p| p.into_inner());
        for dir in self.dirs.drain(..) {
            into.add(dir);
        }
        Ok(root)
    }
}
