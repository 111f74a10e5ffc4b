//! The gRPC server side: any [`BlobService`] and [`DirectoryService`] served
//! under both `tvix.castore.v1` and `snix.castore.v1`, so tvix and snix
//! clients alike can use our stores. Everything a client sends is validated
//! (directories, closure order, digests) before it is stored. An upload
//! that goes silent is dropped after [`ServeOptions::upload_idle`], and
//! what it had sent is discarded (no temp file is left).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use tokio_util::io::ReaderStream;
use tonic::{Request, Response, Status, Streaming};

use crate::blobservice::{BlobService, VerifyingReader};
use crate::directoryservice::DirectoryService;
use crate::proto::{self, snix};
use crate::{B3Digest, Directory, StoreError};

/// Bytes per `BlobChunk` sent by Read.
const READ_CHUNK: usize = 256 * 1024;

/// How the castore services are served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServeOptions {
    /// How long an upload (`BlobService.Put`, `DirectoryService.Put`) may
    /// send nothing before it is dropped, with what it had sent.
    pub upload_idle: Duration,
}

impl ServeOptions {
    /// The default [`Self::upload_idle`]: 60 s.
    pub const DEFAULT_UPLOAD_IDLE: Duration = Duration::from_secs(60);
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            upload_idle: Self::DEFAULT_UPLOAD_IDLE,
        }
    }
}

/// Serves a [`BlobService`] over gRPC.
#[derive(Clone, Debug)]
pub struct GrpcBlobServer {
    blobs: Arc<dyn BlobService>,
    upload_idle: Duration,
}

/// Serves a [`DirectoryService`] over gRPC.
#[derive(Clone, Debug)]
pub struct GrpcDirectoryServer {
    dirs: Arc<dyn DirectoryService>,
    upload_idle: Duration,
}

/// The next message of an upload, or `DEADLINE_EXCEEDED` when the client
/// sent nothing for `idle`.
async fn next_upload<T>(
    stream: &mut Streaming<T>,
    idle: Duration,
    what: &str,
) -> Result<Option<T>, Status> {
    match tokio::time::timeout(idle, stream.next()).await {
        Ok(Some(m)) => m.map(Some),
        Ok(None) => Ok(None),
        Err(_) => Err(Status::deadline_exceeded(format!(
            "{what} sent nothing for {}: dropped, nothing of it was stored",
            super::timeouts::secs(idle)
        ))),
    }
}

fn digest_arg(b: &[u8]) -> Result<B3Digest, Status> {
    B3Digest::try_from(b).map_err(|e| Status::invalid_argument(format!("invalid digest: {e}")))
}

fn io_status(e: std::io::Error) -> Status {
    match e.kind() {
        std::io::ErrorKind::NotFound => Status::not_found(e.to_string()),
        std::io::ErrorKind::InvalidInput => Status::invalid_argument(e.to_string()),
        _ => Status::internal(e.to_string()),
    }
}

fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::Closure(_) | StoreError::InvalidDirectory { .. } => {
            Status::invalid_argument(e.to_string())
        }
        _ => Status::internal(e.to_string()),
    }
}

type ChunkStream = BoxStream<'static, Result<proto::BlobChunk, Status>>;
type DirStream = BoxStream<'static, Result<proto::Directory, Status>>;

impl GrpcBlobServer {
    /// Serves `blobs`.
    pub fn new(blobs: Arc<dyn BlobService>) -> Self {
        Self {
            blobs,
            upload_idle: ServeOptions::DEFAULT_UPLOAD_IDLE,
        }
    }

    /// Drops an upload silent for `idle` (default 60 s).
    pub fn with_upload_idle(self, idle: Duration) -> Self {
        Self {
            upload_idle: idle,
            ..self
        }
    }

    async fn stat(&self, req: proto::StatBlobRequest) -> Result<proto::StatBlobResponse, Status> {
        let digest = digest_arg(&req.digest)?;
        match self.blobs.has(&digest).await.map_err(io_status)? {
            true => Ok(proto::StatBlobResponse::default()),
            false => Err(Status::not_found(format!("blob {digest} not found"))),
        }
    }

    async fn read(&self, req: proto::ReadBlobRequest) -> Result<ChunkStream, Status> {
        let digest = digest_arg(&req.digest)?;
        let reader = self
            .blobs
            .open_read(&digest)
            .await
            .map_err(io_status)?
            .ok_or_else(|| Status::not_found(format!("blob {digest} not found")))?;
        // The backing store is not trusted either (a remote one, a disk that
        // rots): the bytes are hashed as they go out, and a mismatch ends
        // the stream with DATA_LOSS instead of a clean end.
        let reader = VerifyingReader::new(reader, digest);
        let stream = ReaderStream::with_capacity(reader, READ_CHUNK).map(|r| {
            r.map(|data| proto::BlobChunk { data }).map_err(|e| {
                if e.kind() == std::io::ErrorKind::InvalidData {
                    Status::data_loss(e.to_string())
                } else {
                    io_status(e)
                }
            })
        });
        Ok(stream.boxed())
    }

    async fn put(
        &self,
        mut stream: Streaming<proto::BlobChunk>,
    ) -> Result<proto::PutBlobResponse, Status> {
        // Dropping `w` on an early return (an error, the client gone, or
        // the idle limit) discards the temp file.
        let mut w = self.blobs.open_write().await.map_err(io_status)?;
        while let Some(chunk) =
            next_upload(&mut stream, self.upload_idle, "the blob upload").await?
        {
            w.write(chunk.data).await.map_err(io_status)?;
        }
        let digest = w.close().await.map_err(io_status)?;
        Ok(proto::PutBlobResponse {
            digest: digest.into(),
        })
    }
}

impl GrpcDirectoryServer {
    /// Serves `dirs`.
    pub fn new(dirs: Arc<dyn DirectoryService>) -> Self {
        Self {
            dirs,
            upload_idle: ServeOptions::DEFAULT_UPLOAD_IDLE,
        }
    }

    /// Drops an upload silent for `idle` (default 60 s).
    pub fn with_upload_idle(self, idle: Duration) -> Self {
        Self {
            upload_idle: idle,
            ..self
        }
    }

    async fn get(&self, req: proto::GetDirectoryRequest) -> Result<DirStream, Status> {
        let Some(proto::get_directory_request::ByWhat::Digest(d)) = req.by_what else {
            return Err(Status::invalid_argument(
                "GetDirectoryRequest has no digest",
            ));
        };
        let digest = digest_arg(&d)?;
        let not_found = || Status::not_found(format!("directory {digest} not found"));
        if !req.recursive {
            let dir = self
                .dirs
                .get(&digest)
                .await
                .map_err(store_status)?
                .ok_or_else(not_found)?;
            return Ok(futures::stream::iter([Ok(proto::Directory::from(dir))]).boxed());
        }
        let dirs = self.dirs.clone();
        // Look at the first item before answering, so a missing root is
        // NOT_FOUND rather than an empty stream.
        let mut stream = owned_recursive(dirs, digest);
        match stream.next().await {
            None => Err(not_found()),
            Some(Err(e)) => Err(store_status(e)),
            Some(Ok(first)) => Ok(futures::stream::iter([Ok(first)])
                .chain(stream)
                .map(|r| r.map(proto::Directory::from).map_err(store_status))
                .boxed()),
        }
    }

    async fn put(
        &self,
        mut stream: Streaming<proto::Directory>,
    ) -> Result<proto::PutDirectoryResponse, Status> {
        let mut putter = self.dirs.put_multiple_start();
        while let Some(p) =
            next_upload(&mut stream, self.upload_idle, "the directory upload").await?
        {
            let digest = B3Digest::of(&prost::Message::encode_to_vec(&p));
            let dir = Directory::try_from(p).map_err(|err| {
                Status::invalid_argument(format!("directory {digest} is invalid: {err}"))
            })?;
            putter.put(dir).await.map_err(store_status)?;
        }
        let root = putter.close().await.map_err(store_status)?;
        Ok(proto::PutDirectoryResponse {
            root_digest: root.into(),
        })
    }
}

/// `get_recursive` borrows the service; this owns it for a `'static` stream.
fn owned_recursive(
    dirs: Arc<dyn DirectoryService>,
    root: B3Digest,
) -> BoxStream<'static, Result<Directory, StoreError>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        let mut s = dirs.get_recursive(&root);
        while let Some(item) = s.next().await {
            if tx.send(item).await.is_err() {
                break;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
}

/// Implements one package's generated service traits by delegating to the
/// inherent methods above.
macro_rules! serve_package {
    ($pkg:ident) => {
        #[tonic::async_trait]
        impl $pkg::blob_service_server::BlobService for GrpcBlobServer {
            type ReadStream = ChunkStream;

            async fn stat(
                &self,
                r: Request<proto::StatBlobRequest>,
            ) -> Result<Response<proto::StatBlobResponse>, Status> {
                GrpcBlobServer::stat(self, r.into_inner())
                    .await
                    .map(Response::new)
            }

            async fn read(
                &self,
                r: Request<proto::ReadBlobRequest>,
            ) -> Result<Response<ChunkStream>, Status> {
                GrpcBlobServer::read(self, r.into_inner())
                    .await
                    .map(Response::new)
            }

            async fn put(
                &self,
                r: Request<Streaming<proto::BlobChunk>>,
            ) -> Result<Response<proto::PutBlobResponse>, Status> {
                GrpcBlobServer::put(self, r.into_inner())
                    .await
                    .map(Response::new)
            }
        }

        #[tonic::async_trait]
        impl $pkg::directory_service_server::DirectoryService for GrpcDirectoryServer {
            type GetStream = DirStream;

            async fn get(
                &self,
                r: Request<proto::GetDirectoryRequest>,
            ) -> Result<Response<DirStream>, Status> {
                GrpcDirectoryServer::get(self, r.into_inner())
                    .await
                    .map(Response::new)
            }

            async fn put(
                &self,
                r: Request<Streaming<proto::Directory>>,
            ) -> Result<Response<proto::PutDirectoryResponse>, Status> {
                GrpcDirectoryServer::put(self, r.into_inner())
                    .await
                    .map(Response::new)
            }
        }
    };
}

serve_package!(proto);
serve_package!(snix);

/// The castore services under both package names, ready to serve:
/// `Server::builder().add_routes(castore_routes(blobs, dirs)).serve(addr)`.
pub fn castore_routes(
    blobs: Arc<dyn BlobService>,
    dirs: Arc<dyn DirectoryService>,
) -> tonic::service::Routes {
    castore_routes_with(blobs, dirs, ServeOptions::default())
}

/// [`castore_routes`] with `opts`.
pub fn castore_routes_with(
    blobs: Arc<dyn BlobService>,
    dirs: Arc<dyn DirectoryService>,
    opts: ServeOptions,
) -> tonic::service::Routes {
    use super::MAX_MESSAGE_SIZE as M;
    let b = GrpcBlobServer::new(blobs).with_upload_idle(opts.upload_idle);
    let d = GrpcDirectoryServer::new(dirs).with_upload_idle(opts.upload_idle);
    tonic::service::Routes::new(
        proto::blob_service_server::BlobServiceServer::new(b.clone())
            .max_decoding_message_size(M)
            .max_encoding_message_size(M),
    )
    .add_service(
        snix::blob_service_server::BlobServiceServer::new(b)
            .max_decoding_message_size(M)
            .max_encoding_message_size(M),
    )
    .add_service(
        proto::directory_service_server::DirectoryServiceServer::new(d.clone())
            .max_decoding_message_size(M)
            .max_encoding_message_size(M),
    )
    .add_service(
        snix::directory_service_server::DirectoryServiceServer::new(d)
            .max_decoding_message_size(M)
            .max_encoding_message_size(M),
    )
}
