//! The remote blob store client (`grpc+http://host:port`,
//! `grpc+unix:///path`), speaking `tvix.castore.v1` or `snix.castore.v1`.
//!
//! The protocol has no range reads: a read at an offset streams the blob
//! from its start and skips. Every read is verified against the digest.

use std::io;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::io::StreamReader;
use tonic::transport::Channel;
use url::Url;

use super::{BlobReader, BlobService, BlobWriter, VerifyingReader};
use crate::grpc::{Package, client, connect};
use crate::proto;
use crate::{B3Digest, StoreError};

/// Largest chunk sent in one `BlobChunk`.
const CHUNK: usize = 1024 * 1024;

/// A blob store reached over gRPC.
#[derive(Clone, Debug)]
pub struct GrpcBlobService {
    channel: Channel,
    package: Package,
    url: String,
}

fn status_io(url: &str, digest: Option<&B3Digest>, s: &tonic::Status) -> io::Error {
    let kind = match s.code() {
        tonic::Code::NotFound => io::ErrorKind::NotFound,
        tonic::Code::InvalidArgument => io::ErrorKind::InvalidInput,
        tonic::Code::Unavailable => io::ErrorKind::ConnectionRefused,
        tonic::Code::DeadlineExceeded => io::ErrorKind::TimedOut,
        _ => io::ErrorKind::Other,
    };
    let about = digest.map(|d| format!("blob {d}: ")).unwrap_or_default();
    io::Error::new(
        kind,
        format!("{about}store {url}: {:?}: {}", s.code(), s.message()),
    )
}

impl GrpcBlobService {
    /// Connects to the store at `url`.
    pub async fn connect(url: &Url) -> Result<Self, StoreError> {
        let (channel, package) = connect(url).await?;
        Ok(Self::from_channel(channel, package, url.as_str()))
    }

    /// Uses an existing channel.
    pub fn from_channel(channel: Channel, package: Package, url: &str) -> Self {
        Self {
            channel,
            package,
            url: url.to_owned(),
        }
    }

    async fn ready(&self) -> io::Result<tonic::client::Grpc<Channel>> {
        let mut c = client(self.channel.clone());
        c.ready().await.map_err(|e| {
            io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("store {}: {e}", self.url),
            )
        })?;
        Ok(c)
    }
}

#[async_trait]
impl BlobService for GrpcBlobService {
    async fn has(&self, digest: &B3Digest) -> io::Result<bool> {
        let req = proto::StatBlobRequest {
            digest: (*digest).into(),
            ..Default::default()
        };
        let path = self.package.path("BlobService", "Stat");
        let res: Result<tonic::Response<proto::StatBlobResponse>, _> = self
            .ready()
            .await?
            .unary(
                tonic::Request::new(req),
                path,
                tonic_prost::ProstCodec::default(),
            )
            .await;
        match res {
            Ok(_) => Ok(true),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
            Err(s) => Err(status_io(&self.url, Some(digest), &s)),
        }
    }

    async fn open_read_at(&self, digest: &B3Digest, offset: u64) -> io::Result<Option<BlobReader>> {
        let req = proto::ReadBlobRequest {
            digest: (*digest).into(),
        };
        let path = self.package.path("BlobService", "Read");
        let res: Result<tonic::Response<tonic::Streaming<proto::BlobChunk>>, _> = self
            .ready()
            .await?
            .server_streaming(
                tonic::Request::new(req),
                path,
                tonic_prost::ProstCodec::default(),
            )
            .await;
        let stream = match res {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == tonic::Code::NotFound => return Ok(None),
            Err(s) => return Err(status_io(&self.url, Some(digest), &s)),
        };
        let url = self.url.clone();
        let d = *digest;
        let bytes = stream.map(move |r| match r {
            Ok(chunk) => Ok(chunk.data),
            Err(s) => Err(status_io(&url, Some(&d), &s)),
        });
        let mut reader = VerifyingReader::new(StreamReader::new(bytes), *digest);
        if offset > 0 {
            let mut skip = tokio::io::AsyncReadExt::take(&mut reader, offset);
            tokio::io::copy(&mut skip, &mut tokio::io::sink()).await?;
        }
        Ok(Some(Box::new(reader)))
    }

    async fn open_write(&self) -> io::Result<Box<dyn BlobWriter>> {
        let (tx, rx) = mpsc::channel::<proto::BlobChunk>(4);
        let mut client = self.ready().await?;
        let path = self.package.path("BlobService", "Put");
        let task = tokio::spawn(async move {
            let res: Result<tonic::Response<proto::PutBlobResponse>, tonic::Status> = client
                .client_streaming(
                    tonic::Request::new(ReceiverStream::new(rx)),
                    path,
                    tonic_prost::ProstCodec::default(),
                )
                .await;
            res.map(|r| r.into_inner())
        });
        Ok(Box::new(GrpcWriter {
            tx: Some(tx),
            task: Some(task),
            hasher: blake3::Hasher::new(),
            url: self.url.clone(),
        }))
    }
}

type PutTask = tokio::task::JoinHandle<Result<proto::PutBlobResponse, tonic::Status>>;

struct GrpcWriter {
    tx: Option<mpsc::Sender<proto::BlobChunk>>,
    /// Aborted on drop, which resets the stream: an unfinished blob is never
    /// completed on the server.
    task: Option<PutTask>,
    hasher: blake3::Hasher,
    url: String,
}

impl GrpcWriter {
    async fn finish(&mut self) -> io::Result<proto::PutBlobResponse> {
        self.tx = None;
        let task = self
            .task
            .take()
            .ok_or_else(|| io::Error::other("blob writer already closed"))?;
        match task.await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(s)) => Err(status_io(&self.url, None, &s)),
            Err(e) => Err(io::Error::other(format!(
                "store {}: upload task failed: {e}",
                self.url
            ))),
        }
    }
}

#[async_trait]
impl BlobWriter for GrpcWriter {
    async fn write(&mut self, mut data: Bytes) -> io::Result<()> {
        self.hasher.update(&data);
        while !data.is_empty() {
            let chunk = data.split_to(data.len().min(CHUNK));
            let sent = match &self.tx {
                Some(tx) => tx.send(proto::BlobChunk { data: chunk }).await.is_ok(),
                None => false,
            };
            if !sent {
                // The upload ended early: its result says why.
                self.finish().await?;
                return Err(io::Error::other(format!(
                    "store {}: upload ended early",
                    self.url
                )));
            }
        }
        Ok(())
    }

    async fn close(mut self: Box<Self>) -> io::Result<B3Digest> {
        let local = B3Digest::from(self.hasher.finalize());
        let resp = self.finish().await?;
        let remote = B3Digest::try_from(&resp.digest).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("store {}: bad digest in reply: {e}", self.url),
            )
        })?;
        if remote != local {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("blob {local}: store {} says it stored {remote}", self.url),
            ));
        }
        Ok(local)
    }
}

impl Drop for GrpcWriter {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
