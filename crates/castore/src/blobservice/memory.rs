//! The in-memory blob store (`memory://`): for tests and short-lived use.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};

use super::{BlobReader, BlobService, BlobWriter};
use crate::B3Digest;

/// Blobs in a hash map. Clones share the same map.
#[derive(Clone, Debug, Default)]
pub struct MemoryBlobService {
    blobs: Arc<RwLock<HashMap<B3Digest, Bytes>>>,
}

impl MemoryBlobService {
    fn get(&self, digest: &B3Digest) -> Option<Bytes> {
        let map = self.blobs.read().unwrap_or_else(|p| p.into_inner());
        map.get(digest).cloned()
    }
}

#[async_trait]
impl BlobService for MemoryBlobService {
    async fn has(&self, digest: &B3Digest) -> io::Result<bool> {
        Ok(self.get(digest).is_some())
    }

    async fn open_read_at(&self, digest: &B3Digest, offset: u64) -> io::Result<Option<BlobReader>> {
        Ok(self.get(digest).map(|b| {
            let start = usize::try_from(offset).unwrap_or(usize::MAX).min(b.len());
            Box::new(io::Cursor::new(b.slice(start..))) as BlobReader
        }))
    }

    fn range_reads(&self) -> bool {
        true
    }

    async fn open_write(&self) -> io::Result<Box<dyn BlobWriter>> {
        Ok(Box::new(MemoryWriter {
            svc: self.clone(),
            buf: BytesMut::new(),
            hasher: blake3::Hasher::new(),
        }))
    }
}

struct MemoryWriter {
    svc: MemoryBlobService,
    buf: BytesMut,
    hasher: blake3::Hasher,
}

#[async_trait]
impl BlobWriter for MemoryWriter {
    async fn write(&mut self, data: Bytes) -> io::Result<()> {
        self.hasher.update(&data);
        self.buf.extend_from_slice(&data);
        Ok(())
    }

    async fn close(self: Box<Self>) -> io::Result<B3Digest> {
        let MemoryWriter { svc, buf, hasher } = *self;
        let digest = B3Digest::from(hasher.finalize());
        let mut map = svc.blobs.write().unwrap_or_else(|p| p.into_inner());
        map.entry(digest).or_insert_with(|| buf.freeze());
        Ok(digest)
    }
}
