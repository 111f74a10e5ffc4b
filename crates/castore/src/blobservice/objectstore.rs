//! The object-storage blob store (`objectstore+s3://BUCKET/PREFIX`,
//! `objectstore+file:///PATH`, `objectstore+memory:///`; see
//! [`crate::objectstore`] for the URLs and the layout): each blob one
//! object under its digest, so a farm of builders shares one store that
//! no single process holds.
//!
//! The store is not trusted: every read is verified against the digest
//! ([`super::VerifyingReader`]), and a read at an offset fetches the blob from its
//! start to do so ([`BlobService::range_reads`] is `false`). Writes go to
//! the digest's key only once the blob is complete and its digest known
//! (see [`super::objectstore_upload`]), so a key that exists holds the
//! whole blob and a crash leaves nothing under it.

use std::io;
use std::sync::Arc;

use async_trait::async_trait;
use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use url::Url;

use super::objectstore_upload::{KnownUpload, SINGLE_PUT_MAX, Upload};
use super::verify::verified_at;
use super::{BlobReader, BlobService, BlobWriter};
use crate::objectstore::{Bucket, Kind};
use crate::{B3Digest, StoreError};

/// Blobs as objects in an object store.
#[derive(Clone, Debug)]
pub struct ObjectStoreBlobService {
    bucket: Arc<Bucket>,
}

impl ObjectStoreBlobService {
    /// Opens the store an `objectstore+…` URL names. Nothing is contacted
    /// yet: a store that is not there fails the first call.
    pub fn open(url: &Url) -> Result<Self, StoreError> {
        Ok(Self {
            bucket: Arc::new(Bucket::open(url)?),
        })
    }

    /// The blob's key as a URL (for messages and tests).
    pub fn blob_url(&self, digest: &B3Digest) -> String {
        self.bucket.show(&self.bucket.key(Kind::Blob, digest))
    }
}

#[async_trait]
impl BlobService for ObjectStoreBlobService {
    async fn has(&self, digest: &B3Digest) -> io::Result<bool> {
        let key = self.bucket.key(Kind::Blob, digest);
        match self.bucket.store.head(&key).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.bucket.io_err(&format!("blob {digest}: stat"), &key, e)),
        }
    }

    async fn open_read_at(&self, digest: &B3Digest, offset: u64) -> io::Result<Option<BlobReader>> {
        let key = self.bucket.key(Kind::Blob, digest);
        let what = format!("blob {digest}: reading");
        let got = match self.bucket.store.get(&key).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.bucket.io_err(&what, &key, e)),
        };
        let bucket = self.bucket.clone();
        let bytes = got
            .into_stream()
            .map_err(move |e| bucket.io_err(&what, &key, e));
        verified_at(bytes, *digest, offset).await.map(Some)
    }

    async fn open_write(&self) -> io::Result<Box<dyn BlobWriter>> {
        Ok(Box::new(Upload::new(self.bucket.clone())))
    }

    /// A blob past one PUT: known first, it goes to its key without a
    /// temp file (`objectstore_upload.rs`).
    fn digest_first_from(&self) -> Option<u64> {
        Some(SINGLE_PUT_MAX + 1)
    }

    async fn open_write_known(
        &self,
        digest: &B3Digest,
        size: u64,
    ) -> io::Result<Option<Box<dyn BlobWriter>>> {
        let up = KnownUpload::start(self.bucket.clone(), *digest, size).await?;
        Ok(up.map(|u| Box::new(u) as Box<dyn BlobWriter>))
    }
}
