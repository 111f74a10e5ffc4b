//! [`BlobService`]: where file contents live, addressed by BLAKE3 digest.
//!
//! One backend per file, opened from a URL by [`crate::open_blob_service`].
//! Readers start at any offset without reading the blob from the start where
//! the backend can; writers hash while writing and return the digest on
//! close. Blob errors are `io::Error`s whose message names the digest.

use std::io;
use std::path::PathBuf;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::AsyncRead;

use crate::B3Digest;

mod grpc;
mod memory;
mod objects;
mod objectstore;
mod objectstore_upload;
mod verify;

pub use grpc::GrpcBlobService;
pub use memory::MemoryBlobService;
pub use objects::ObjectsBlobService;
pub use objectstore::ObjectStoreBlobService;
pub use objectstore_upload::{KNOWN_PUT_MAX, PART_BUDGET_MIB, PARTS_IN_FLIGHT, SINGLE_PUT_MAX};
pub use verify::{BlobLie, CheckedReader, VerifyingReader, open_checked, read_checked};

/// A reader of one blob's bytes.
pub type BlobReader = Box<dyn AsyncRead + Send + Unpin>;

/// A store of blobs. Usable behind `Arc<dyn BlobService>`.
#[async_trait]
pub trait BlobService: Send + Sync + std::fmt::Debug + 'static {
    /// Whether the blob is in the store.
    async fn has(&self, digest: &B3Digest) -> io::Result<bool>;

    /// A reader starting `offset` bytes into the blob (at its end, or past
    /// it, the reader is at EOF), or `None` when the blob is not there.
    /// Backends that are not trusted (remote ones) verify the bytes against
    /// the digest and fail the read with `InvalidData` on a mismatch.
    async fn open_read_at(&self, digest: &B3Digest, offset: u64) -> io::Result<Option<BlobReader>>;

    /// A reader of the whole blob, or `None` when it is not there.
    async fn open_read(&self, digest: &B3Digest) -> io::Result<Option<BlobReader>> {
        self.open_read_at(digest, 0).await
    }

    /// A writer for a new blob. Nothing is visible in the store until
    /// [`BlobWriter::close`] returns; dropping the writer discards it.
    async fn open_write(&self) -> io::Result<Box<dyn BlobWriter>>;

    /// The size from which a blob is best written with its digest known
    /// before its bytes ([`Self::open_write_known`]), by a writer that can
    /// read them twice (a file: once to hash it, once to store it): a
    /// store that would otherwise keep a big blob aside until its digest
    /// is known (object storage, whose keys are digests). `None` (the
    /// default): never.
    fn digest_first_from(&self) -> Option<u64> {
        None
    }

    /// A writer for the blob `digest` of `size` bytes, or `None` when the
    /// store has it already. Closing it fails with `InvalidData` when the
    /// bytes written are not those (a file changed between its reads).
    /// By default [`Self::open_write`], its digest checked on close (a
    /// mismatch is then stored under its own digest, never under
    /// `digest`).
    async fn open_write_known(
        &self,
        digest: &B3Digest,
        _size: u64,
    ) -> io::Result<Option<Box<dyn BlobWriter>>> {
        Ok(Some(Box::new(CheckedOnClose {
            inner: self.open_write().await?,
            digest: *digest,
        })))
    }

    /// Stores `data` in one go.
    async fn put(&self, data: Bytes) -> io::Result<B3Digest> {
        let mut w = self.open_write().await?;
        w.write(data).await?;
        w.close().await
    }

    /// Whether [`Self::open_read_at`] is cheap at any offset (it does not
    /// read the blob from its start) and its bytes need no verification
    /// (a local, trusted backend). Remote stores say `false`: callers then
    /// fetch a blob whole and check it before using any of its bytes.
    fn range_reads(&self) -> bool {
        false
    }

    /// The blob as a plain, complete, read-only file on the local disk, if
    /// this backend keeps it that way (lets callers hand the file to the
    /// kernel, e.g. for FUSE passthrough). `None` otherwise.
    fn local_path(&self, _digest: &B3Digest) -> Option<PathBuf> {
        None
    }

    /// The directory every path [`Self::local_path`] returns is below, if
    /// this backend keeps all its blobs as files there, and only there (lets
    /// callers hand its files to the kernel, e.g. as hard links in a kernel
    /// view). Contract: a blob once there stays there, its bytes unchanged.
    /// `None` otherwise (the default).
    fn local_root(&self) -> Option<PathBuf> {
        None
    }
}

/// Writes one blob. Bytes are hashed as they are written.
#[async_trait]
pub trait BlobWriter: Send {
    /// Appends `data` to the blob.
    async fn write(&mut self, data: Bytes) -> io::Result<()>;

    /// Finishes the blob and returns its digest; after this it is in the
    /// store. A writer can be closed once.
    async fn close(self: Box<Self>) -> io::Result<B3Digest>;
}

/// A writer whose blob must have a given digest.
struct CheckedOnClose {
    inner: Box<dyn BlobWriter>,
    digest: B3Digest,
}

#[async_trait]
impl BlobWriter for CheckedOnClose {
    async fn write(&mut self, data: Bytes) -> io::Result<()> {
        self.inner.write(data).await
    }

    async fn close(self: Box<Self>) -> io::Result<B3Digest> {
        let got = self.inner.close().await?;
        if got != self.digest {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("blob {}: the bytes written hash to {got}", self.digest),
            ));
        }
        Ok(got)
    }
}

/// Reads a whole blob into memory (for small blobs and tests).
pub async fn read_to_end(svc: &dyn BlobService, digest: &B3Digest) -> io::Result<Option<Vec<u8>>> {
    use tokio::io::AsyncReadExt;
    let Some(mut r) = svc.open_read(digest).await? else {
        return Ok(None);
    };
    let mut buf = Vec::new();
    r.read_to_end(&mut buf).await?;
    Ok(Some(buf))
}
