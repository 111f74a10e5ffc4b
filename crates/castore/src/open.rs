//! Opening stores from URLs, one scheme per backend:
//!
//! | URL | blob store | directory store |
//! | --- | --- | --- |
//! | `memory://` | [`MemoryBlobService`] | [`MemoryDirectoryService`] |
//! | `objects:///var/lib/x/blobs` | [`ObjectsBlobService`] | — |
//! | `redb:///var/lib/x/directories.redb` | — | [`RedbDirectoryService`] |
//! | `grpc+http://127.0.0.1:8000` | [`GrpcBlobService`] | [`GrpcDirectoryService`] |
//! | `grpc+unix:///run/x.sock` | [`GrpcBlobService`] | [`GrpcDirectoryService`] |
//! | `objectstore+s3://BUCKET/PREFIX` | [`ObjectStoreBlobService`] | [`ObjectStoreDirectoryService`] |
//! | `objectstore+file:///var/lib/x` | [`ObjectStoreBlobService`] | [`ObjectStoreDirectoryService`] |
//! | `objectstore+memory:///` | [`ObjectStoreBlobService`] | [`ObjectStoreDirectoryService`] |
//!
//! gRPC URLs take `?package=snix` to speak `snix.castore.v1` instead of
//! the default `tvix.castore.v1`, and bounds on their waits in seconds:
//! `connect_timeout` (default 10), `timeout` (the first answer to a call,
//! default 30) and `idle_timeout` (silence within a stream, default 30);
//! see [`StoreTimeouts`]. Each `memory://` opens a new, empty store.
//! `objectstore+…` URLs and their layout: [`crate::objectstore`].

use std::sync::Arc;

use url::Url;

use crate::StoreError;
use crate::blobservice::{
    BlobService, GrpcBlobService, MemoryBlobService, ObjectStoreBlobService, ObjectsBlobService,
};
use crate::directoryservice::{
    DirectoryService, GrpcDirectoryService, MemoryDirectoryService, ObjectStoreDirectoryService,
    RedbDirectoryService,
};
use crate::grpc::StoreTimeouts;

/// The object store schemes, for messages.
const OBJECTSTORE: &str = "objectstore+s3, objectstore+file, objectstore+memory";

fn parse(url: &str) -> Result<Url, StoreError> {
    Url::parse(url).map_err(|e| StoreError::url(url, e.to_string()))
}

pub(crate) fn local_path(url: &Url) -> Result<std::path::PathBuf, StoreError> {
    if url.host_str().is_some_and(|h| !h.is_empty()) || url.path().len() <= 1 {
        return Err(StoreError::url(
            url.as_str(),
            format!(
                "expected an absolute path, as in {}:///var/lib/store",
                url.scheme()
            ),
        ));
    }
    Ok(url.path().into())
}

/// Opens the blob store at `url` (see the module docs for the schemes).
pub async fn open_blob_service(url: &str) -> Result<Arc<dyn BlobService>, StoreError> {
    open_blob_service_with(url, StoreTimeouts::default()).await
}

/// Opens the blob store at `url`; a gRPC one waits at most `timeouts`
/// (which the URL's own parameters override).
pub async fn open_blob_service_with(
    url: &str,
    timeouts: StoreTimeouts,
) -> Result<Arc<dyn BlobService>, StoreError> {
    let u = parse(url)?;
    Ok(match u.scheme() {
        "memory" => Arc::new(MemoryBlobService::default()),
        "objects" => {
            let path = local_path(&u)?;
            Arc::new(
                ObjectsBlobService::open(&path).map_err(|e| {
                    StoreError::io(format!("opening blob store {}", path.display()), e)
                })?,
            )
        }
        "grpc+http" | "grpc+unix" => Arc::new(GrpcBlobService::connect_with(&u, timeouts).await?),
        s if s.starts_with("objectstore+") => Arc::new(ObjectStoreBlobService::open(&u)?),
        other => {
            return Err(StoreError::url(
                url,
                format!(
                    "unknown blob store scheme {other:?} (memory, objects, grpc+http, grpc+unix, {OBJECTSTORE})"
                ),
            ));
        }
    })
}

/// Opens the directory store at `url` (see the module docs for the schemes).
pub async fn open_directory_service(url: &str) -> Result<Arc<dyn DirectoryService>, StoreError> {
    open_directory_service_with(url, StoreTimeouts::default()).await
}

/// Opens the directory store at `url`; a gRPC one waits at most
/// `timeouts` (which the URL's own parameters override).
pub async fn open_directory_service_with(
    url: &str,
    timeouts: StoreTimeouts,
) -> Result<Arc<dyn DirectoryService>, StoreError> {
    let u = parse(url)?;
    Ok(match u.scheme() {
        "memory" => Arc::new(MemoryDirectoryService::default()),
        "redb" => {
            let path = local_path(&u)?;
            Arc::new(
                tokio::task::spawn_blocking(move || RedbDirectoryService::open(path))
                    .await
                    .map_err(|e| StoreError::url(url, format!("opening failed: {e}")))??,
            )
        }
        "grpc+http" | "grpc+unix" => {
            Arc::new(GrpcDirectoryService::connect_with(&u, timeouts).await?)
        }
        s if s.starts_with("objectstore+") => Arc::new(ObjectStoreDirectoryService::open(&u)?),
        other => {
            return Err(StoreError::url(
                url,
                format!(
                    "unknown directory store scheme {other:?} (memory, redb, grpc+http, grpc+unix, {OBJECTSTORE})"
                ),
            ));
        }
    })
}
