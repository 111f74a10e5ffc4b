//! The remote blob store client (`grpc+http://host:port`,
//! `grpc+unix:///path`), speaking `tvix.castore.v1` or `snix.castore.v1`.
//!
//! The protocol has no range reads: a read at an offset streams the blob
//! from its start and skips. Every read is verified against the digest.
//! Every wait on the store is bounded ([`StoreTimeouts`]).

use std::io;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use url::Url;

use super::verify::verified_at;
use super::{BlobReader, BlobService, BlobWriter};
use crate::grpc::{Package, StoreTimeouts, Waits, client, connect};
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
    waits: Waits,
}

fn status_io(url: &str, digest: Option<&B3Digest>, s: &tonic::Status) -> io::Error {
    let kind = match s.code() {
        tonic::Code::NotFound => io::ErrorKind::NotFound,
        tonic::Code::InvalidArgument => io::ErrorKind::InvalidInput,
        tonic::Code::Unavailable => io::ErrorKind::ConnectionRefused,
        tonic::Code::DeadlineExceeded => io::ErrorKind::TimedOut,
        // Our server says so when its own backing store served bytes that
        // do not match their digest.
        tonic::Code::DataLoss => io::ErrorKind::InvalidData,
        _ => io::ErrorKind::Other,
    };
    let about = digest.map(|d| format!("blob {d}: ")).unwrap_or_default();
    io::Error::new(
        kind,
        format!("{about}store {url}: {:?}: {}", s.code(), s.message()),
    )
}

impl GrpcBlobService {
    /// Connects to the store at `url`, with the default timeouts (the
    /// URL's parameters override them).
    pub async fn connect(url: &Url) -> Result<Self, StoreError> {
        Self::connect_with(url, StoreTimeouts::default()).await
    }

    /// Connects to the store at `url`, with `timeouts` unless the URL's
    /// parameters say otherwise.
    pub async fn connect_with(url: &Url, timeouts: StoreTimeouts) -> Result<Self, StoreError> {
        let (channel, package, waits) = connect(url, "blob", timeouts).await?;
        Ok(Self {
            channel,
            package,
            url: url.as_str().to_owned(),
            waits,
        })
    }

    /// Uses an existing channel, with the default timeouts.
    pub fn from_channel(channel: Channel, package: Package, url: &str) -> Self {
        Self {
            channel,
            package,
            url: url.to_owned(),
            waits: Waits {
                kind: "blob",
                url: url.to_owned(),
                t: StoreTimeouts::default(),
            },
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
        let call = async {
            let res: Result<tonic::Response<proto::StatBlobResponse>, _> = self
                .ready()
                .await?
                .unary(
                    tonic::Request::new(req),
                    path,
                    tonic_prost::ProstCodec::default(),
                )
                .await;
            io::Result::Ok(res)
        };
        let res = self
            .waits
            .first(|| format!("answer Stat of blob {digest}"), call)
            .await
            .map_err(|t| t.into_io())??;
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
        let call = async {
            let res: Result<tonic::Response<tonic::Streaming<proto::BlobChunk>>, _> = self
                .ready()
                .await?
                .server_streaming(
                    tonic::Request::new(req),
                    path,
                    tonic_prost::ProstCodec::default(),
                )
                .await;
            io::Result::Ok(res)
        };
        let res = self
            .waits
            .first(|| format!("answer Read of blob {digest}"), call)
            .await
            .map_err(|t| t.into_io())??;
        let stream = match res {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == tonic::Code::NotFound => return Ok(None),
            Err(s) => return Err(status_io(&self.url, Some(digest), &s)),
        };
        let url = self.url.clone();
        let d = *digest;
        let stream = self
            .waits
            .idle_stream(stream, format!("send the next chunk of blob {digest}"));
        let bytes = stream.map(move |r| match r {
            Ok(Ok(chunk)) => Ok(chunk.data),
            Ok(Err(s)) => Err(status_io(&url, Some(&d), &s)),
            Err(t) => Err(t.into_io()),
        });
        verified_at(bytes, *digest, offset).await.map(Some)
    }

    async fn open_write(&self) -> io::Result<Box<dyn BlobWriter>> {
        let (tx, rx) = mpsc::channel::<proto::BlobChunk>(4);
        let mut client = self
            .waits
            .first(|| "get ready for a blob upload".to_owned(), self.ready())
            .await
            .map_err(|t| t.into_io())??;
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
            waits: self.waits.clone(),
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
    waits: Waits,
}

impl GrpcWriter {
    /// The upload's reply; `what` names it for a timeout.
    async fn finish(
        &mut self,
        what: impl FnOnce() -> String,
    ) -> io::Result<proto::PutBlobResponse> {
        self.tx = None;
        let task = self
            .task
            .as_mut()
            .ok_or_else(|| io::Error::other("blob writer already closed"))?;
        let res = self
            .waits
            .first(what, task)
            .await
            .map_err(|t| t.into_io())?;
        self.task = None;
        match res {
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
                Some(tx) => self
                    .waits
                    .idle(
                        || "take the next chunk of a blob upload".to_owned(),
                        tx.send(proto::BlobChunk { data: chunk }),
                    )
                    .await
                    .map_err(|t| t.into_io())?
                    .is_ok(),
                None => false,
            };
            if !sent {
                // The upload ended early: its result says why.
                self.finish(|| "answer a blob upload it ended early".to_owned())
                    .await?;
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
        let resp = self
            .finish(|| format!("answer Put of blob {local}"))
            .await?;
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
