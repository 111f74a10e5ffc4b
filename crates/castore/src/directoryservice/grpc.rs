//! The remote directory store client (`grpc+http://host:port`,
//! `grpc+unix:///path`), speaking `tvix.castore.v1` or `snix.castore.v1`.
//! Everything received is validated: each Directory, its digest, and the
//! order of a recursive Get. Every wait on the store is bounded
//! ([`StoreTimeouts`]).

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use url::Url;

use super::{DirectoryPutter, DirectoryService, LeavesFirst, RootFirst, expect_digest};
use crate::grpc::{Package, StoreTimeouts, Waits, client, connect};
use crate::proto;
use crate::{B3Digest, Directory, StoreError};

/// One message of a Get stream, or the store's silence.
type Message = Result<Result<proto::Directory, tonic::Status>, crate::grpc::Timeout>;
/// A Get stream with its idle timeout.
type Received = BoxStream<'static, Message>;

/// A directory store reached over gRPC.
#[derive(Clone, Debug)]
pub struct GrpcDirectoryService {
    channel: Channel,
    package: Package,
    url: String,
    waits: Waits,
}

impl GrpcDirectoryService {
    /// Connects to the store at `url`, with the default timeouts (the
    /// URL's parameters override them).
    pub async fn connect(url: &Url) -> Result<Self, StoreError> {
        Self::connect_with(url, StoreTimeouts::default()).await
    }

    /// Connects to the store at `url`, with `timeouts` unless the URL's
    /// parameters say otherwise.
    pub async fn connect_with(url: &Url, timeouts: StoreTimeouts) -> Result<Self, StoreError> {
        let (channel, package, waits) = connect(url, "directory", timeouts).await?;
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
                kind: "directory",
                url: url.to_owned(),
                t: StoreTimeouts::default(),
            },
        }
    }

    /// The stream of a Get, each message given the idle timeout.
    async fn get_stream(
        &self,
        digest: &B3Digest,
        recursive: bool,
    ) -> Result<Option<Received>, StoreError> {
        let req = proto::GetDirectoryRequest {
            by_what: Some(proto::get_directory_request::ByWhat::Digest(
                (*digest).into(),
            )),
            recursive,
        };
        let call = async {
            let mut c = client(self.channel.clone());
            c.ready()
                .await
                .map_err(|e| StoreError::url(&self.url, format!("not ready: {e}")))?;
            let path = self.package.path("DirectoryService", "Get");
            Ok::<_, StoreError>(
                c.server_streaming(
                    tonic::Request::new(req),
                    path,
                    tonic_prost::ProstCodec::default(),
                )
                .await,
            )
        };
        let res = self
            .waits
            .first(|| format!("answer Get of directory {digest}"), call)
            .await??;
        let what = match recursive {
            true => format!("send the next directory of the closure of {digest}"),
            false => format!("send directory {digest}"),
        };
        match res {
            Ok(r) => Ok(Some(self.waits.idle_stream(r.into_inner(), what))),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(StoreError::grpc(&self.url, &s)),
        }
    }

    fn check(&self, received: Message) -> Result<Directory, StoreError> {
        let p = received?.map_err(|s| StoreError::grpc(&self.url, &s))?;
        let digest = B3Digest::of(&prost::Message::encode_to_vec(&p));
        Directory::try_from(p).map_err(|err| StoreError::InvalidDirectory { digest, err })
    }
}

#[async_trait]
impl DirectoryService for GrpcDirectoryService {
    async fn get(&self, digest: &B3Digest) -> Result<Option<Directory>, StoreError> {
        let Some(mut stream) = self.get_stream(digest, false).await? else {
            return Ok(None);
        };
        let Some(first) = stream.next().await else {
            return Ok(None);
        };
        expect_digest(self.check(first)?, digest).map(Some)
    }

    async fn put(&self, dir: Directory) -> Result<B3Digest, StoreError> {
        let mut p = self.put_multiple_start();
        p.put(dir).await?;
        p.close().await
    }

    fn get_recursive(&self, root: &B3Digest) -> BoxStream<'_, Result<Directory, StoreError>> {
        let root = *root;
        Box::pin(recursive_get(self, root).flatten())
    }

    fn put_multiple_start(&self) -> Box<dyn DirectoryPutter + '_> {
        Box::new(GrpcPutter {
            svc: self,
            check: LeavesFirst::default(),
            tx: None,
            task: None,
        })
    }
}

/// The recursive Get as a stream of checked directories.
fn recursive_get(
    svc: &GrpcDirectoryService,
    root: B3Digest,
) -> futures::stream::Once<impl Future<Output = BoxStream<'_, Result<Directory, StoreError>>>> {
    futures::stream::once(async move {
        let stream = match svc.get_stream(&root, true).await {
            Ok(Some(s)) => s,
            Ok(None) => return futures::stream::empty().boxed(),
            Err(e) => return futures::stream::iter([Err(e)]).boxed(),
        };
        let state = (stream, Some(RootFirst::new(root)));
        futures::stream::unfold(state, move |(mut stream, check)| async move {
            let mut check = check?;
            match stream.next().await {
                None => check
                    .finish()
                    .err()
                    .map(|e| (Err(e.into()), (stream, None))),
                Some(item) => {
                    let res = svc.check(item).and_then(|d| {
                        check.add(&d)?;
                        Ok(d)
                    });
                    let next = if res.is_ok() { Some(check) } else { None };
                    Some((res, (stream, next)))
                }
            }
        })
        .boxed()
    })
}

type PutTask = tokio::task::JoinHandle<Result<proto::PutDirectoryResponse, tonic::Status>>;

struct GrpcPutter<'a> {
    svc: &'a GrpcDirectoryService,
    check: LeavesFirst,
    tx: Option<mpsc::Sender<proto::Directory>>,
    /// Aborted on drop: an unfinished closure is never completed remotely.
    task: Option<PutTask>,
}

impl GrpcPutter<'_> {
    async fn start(&mut self) -> Result<mpsc::Sender<proto::Directory>, StoreError> {
        if let Some(tx) = &self.tx {
            return Ok(tx.clone());
        }
        let (tx, rx) = mpsc::channel(16);
        let mut c = client(self.svc.channel.clone());
        self.svc
            .waits
            .first(|| "get ready for a directory upload".to_owned(), c.ready())
            .await?
            .map_err(|e| StoreError::url(&self.svc.url, format!("not ready: {e}")))?;
        let path = self.svc.package.path("DirectoryService", "Put");
        self.task = Some(tokio::spawn(async move {
            c.client_streaming(
                tonic::Request::new(ReceiverStream::new(rx)),
                path,
                tonic_prost::ProstCodec::default(),
            )
            .await
            .map(|r| r.into_inner())
        }));
        self.tx = Some(tx.clone());
        Ok(tx)
    }

    /// The upload's reply; `what` names it for a timeout.
    async fn finish(
        &mut self,
        what: impl FnOnce() -> String,
    ) -> Result<proto::PutDirectoryResponse, StoreError> {
        self.tx = None;
        let task = self.task.as_mut().ok_or(crate::ClosureError::Empty)?;
        let res = self.svc.waits.first(what, task).await?;
        self.task = None;
        match res {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(s)) => Err(StoreError::grpc(&self.svc.url, &s)),
            Err(e) => Err(StoreError::url(
                &self.svc.url,
                format!("upload task failed: {e}"),
            )),
        }
    }
}

#[async_trait]
impl DirectoryPutter for GrpcPutter<'_> {
    async fn put(&mut self, dir: Directory) -> Result<(), StoreError> {
        self.check.add(&dir)?;
        let tx = self.start().await?;
        let sent = self
            .svc
            .waits
            .idle(
                || "take the next directory of an upload".to_owned(),
                tx.send(proto::Directory::from(&dir)),
            )
            .await?;
        if sent.is_err() {
            // The stream ended early: its result says why.
            self.finish(|| "answer a directory upload it ended early".to_owned())
                .await?;
            return Err(StoreError::url(
                &self.svc.url,
                "directory upload ended early",
            ));
        }
        Ok(())
    }

    async fn close(&mut self) -> Result<B3Digest, StoreError> {
        let root = std::mem::take(&mut self.check).finish()?;
        let resp = self
            .finish(|| format!("answer Put of the closure of directory {root}"))
            .await?;
        let remote = B3Digest::try_from(&resp.root_digest).map_err(|e| {
            StoreError::url(&self.svc.url, format!("bad root digest in reply: {e}"))
        })?;
        if remote != root {
            return Err(StoreError::WrongDigest {
                expected: root,
                actual: remote,
            });
        }
        Ok(root)
    }
}

impl Drop for GrpcPutter<'_> {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}
