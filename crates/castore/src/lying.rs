//! A castore gRPC server that lies, for tests of everything that reads
//! from a store (behind the `test-util` feature). It speaks
//! `tvix.castore.v1` itself, without our server's checks, and serves each
//! blob with the [`Lie`] chosen for it: a stream that never ends, bytes
//! more or fewer than the blob, bytes not matching the digest, a stream
//! that hangs after some bytes. Directories are served as given, so a
//! test makes a directory lie by giving an entry a wrong size.
//!
//! ```ignore
//! let mut store = LyingStore::default();
//! let digest = store.blob(b"data".to_vec(), Lie::Endless);
//! let server = LyingServer::start(store);
//! // BLOB_SERVICE_ADDR=server.url() ...
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use tonic::{Request, Response, Status, Streaming};

use crate::proto;
use crate::{B3Digest, Directory};

/// How a blob is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lie {
    /// Honestly.
    None,
    /// The blob, then `x` bytes without end.
    Endless,
    /// The blob and this many bytes more.
    Longer(u64),
    /// The blob without its last this many bytes.
    Shorter(u64),
    /// Bytes of the blob's length, the first flipped.
    Corrupt,
    /// This many bytes of the blob, then nothing, forever.
    HangAfter(u64),
}

/// What the lying server holds.
#[derive(Debug, Default, Clone)]
pub struct LyingStore {
    blobs: HashMap<B3Digest, (Bytes, Lie)>,
    dirs: HashMap<B3Digest, Directory>,
}

impl LyingStore {
    /// Adds a blob served with `lie`; returns its (true) digest.
    pub fn blob(&mut self, data: impl Into<Bytes>, lie: Lie) -> B3Digest {
        let data = data.into();
        let d = B3Digest::of(&data);
        self.blobs.insert(d, (data, lie));
        d
    }

    /// Adds a directory, served as is; returns its digest.
    pub fn dir(&mut self, dir: Directory) -> B3Digest {
        let d = dir.digest();
        self.dirs.insert(d, dir);
        d
    }
}

const CHUNK: usize = 64 * 1024;

fn chunks(data: Bytes) -> BoxStream<'static, Result<proto::BlobChunk, Status>> {
    let mut parts = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        parts.push(Ok(proto::BlobChunk {
            data: rest.split_to(rest.len().min(CHUNK)),
        }));
    }
    futures::stream::iter(parts).boxed()
}

fn served(data: &Bytes, lie: Lie) -> BoxStream<'static, Result<proto::BlobChunk, Status>> {
    let len = data.len() as u64;
    match lie {
        Lie::None => chunks(data.clone()),
        Lie::Endless => {
            let more = Bytes::from(vec![b'x'; CHUNK]);
            chunks(data.clone())
                .chain(futures::stream::repeat_with(move || {
                    Ok(proto::BlobChunk { data: more.clone() })
                }))
                .boxed()
        }
        Lie::Longer(n) => {
            let mut v = data.to_vec();
            v.resize(data.len() + n as usize, b'x');
            chunks(v.into())
        }
        Lie::Shorter(n) => chunks(data.slice(..(len.saturating_sub(n)) as usize)),
        Lie::Corrupt => {
            let mut v = data.to_vec();
            if let Some(b) = v.first_mut() {
                *b ^= 0xff;
            }
            chunks(v.into())
        }
        Lie::HangAfter(n) => chunks(data.slice(..n.min(len) as usize))
            .chain(futures::stream::pending())
            .boxed(),
    }
}

#[derive(Debug, Clone)]
struct Server(Arc<LyingStore>);

#[tonic::async_trait]
impl proto::blob_service_server::BlobService for Server {
    type ReadStream = BoxStream<'static, Result<proto::BlobChunk, Status>>;

    async fn stat(
        &self,
        r: Request<proto::StatBlobRequest>,
    ) -> Result<Response<proto::StatBlobResponse>, Status> {
        let d = B3Digest::try_from(&r.into_inner().digest[..])
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        match self.0.blobs.contains_key(&d) {
            true => Ok(Response::new(proto::StatBlobResponse::default())),
            false => Err(Status::not_found(format!("blob {d}"))),
        }
    }

    async fn read(
        &self,
        r: Request<proto::ReadBlobRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let d = B3Digest::try_from(&r.into_inner().digest[..])
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (data, lie) = self
            .0
            .blobs
            .get(&d)
            .ok_or_else(|| Status::not_found(format!("blob {d}")))?;
        Ok(Response::new(served(data, *lie)))
    }

    async fn put(
        &self,
        _r: Request<Streaming<proto::BlobChunk>>,
    ) -> Result<Response<proto::PutBlobResponse>, Status> {
        Err(Status::unimplemented("a lying store takes nothing"))
    }
}

#[tonic::async_trait]
impl proto::directory_service_server::DirectoryService for Server {
    type GetStream = BoxStream<'static, Result<proto::Directory, Status>>;

    async fn get(
        &self,
        r: Request<proto::GetDirectoryRequest>,
    ) -> Result<Response<Self::GetStream>, Status> {
        let r = r.into_inner();
        let Some(proto::get_directory_request::ByWhat::Digest(d)) = r.by_what else {
            return Err(Status::invalid_argument("no digest"));
        };
        let root =
            B3Digest::try_from(&d[..]).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if !self.0.dirs.contains_key(&root) {
            return Err(Status::not_found(format!("directory {root}")));
        }
        // Breadth-first, each digest once, sizes as given.
        let mut out = Vec::new();
        let mut todo = VecDeque::from([root]);
        let mut seen = HashSet::from([root]);
        while let Some(d) = todo.pop_front() {
            let Some(dir) = self.0.dirs.get(&d) else {
                continue;
            };
            out.push(Ok(proto::Directory::from(dir)));
            if !r.recursive {
                break;
            }
            for (_, child, _) in dir.directories() {
                if seen.insert(*child) {
                    todo.push_back(*child);
                }
            }
        }
        Ok(Response::new(futures::stream::iter(out).boxed()))
    }

    async fn put(
        &self,
        _r: Request<Streaming<proto::Directory>>,
    ) -> Result<Response<proto::PutDirectoryResponse>, Status> {
        Err(Status::unimplemented("a lying store takes nothing"))
    }
}

/// A [`LyingStore`] served on loopback TCP from a thread of its own (its
/// own tokio runtime), so sync and async tests alike can use it, and child
/// processes can reach it. Stops when dropped.
#[derive(Debug)]
pub struct LyingServer {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LyingServer {
    /// Starts serving `store` on a free port.
    pub fn start(store: LyingStore) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("grpc+http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let store = Server(Arc::new(store));
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let serve = tonic::transport::Server::builder()
                    .add_service(proto::blob_service_server::BlobServiceServer::new(
                        store.clone(),
                    ))
                    .add_service(
                        proto::directory_service_server::DirectoryServiceServer::new(store),
                    )
                    .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
                tokio::select! {
                    _ = serve => {}
                    _ = stopped => {}
                }
            });
            // Streams that never end are cut with the runtime.
            rt.shutdown_background();
        });
        Self {
            url,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The store's URL (`grpc+http://127.0.0.1:PORT`).
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for LyingServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
