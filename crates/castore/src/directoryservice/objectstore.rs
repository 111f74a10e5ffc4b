//! The object-storage directory store (`objectstore+s3://BUCKET/PREFIX`,
//! `objectstore+file:///PATH`, `objectstore+memory:///`; see
//! [`crate::objectstore`] for the URLs and the layout): each directory one
//! object under its digest, so builders behind a load balancer share one
//! store that no single process holds.
//!
//! The store is not trusted: each directory read is decoded, validated and
//! hashed, and a closure is checked root first ([`RootFirst`]: order and
//! declared sizes) as it is fetched, up to [`FETCHES_IN_FLIGHT`] objects at
//! a time. A closure is written leaves first, one level at a time (each
//! level's objects concurrently), so a directory that can be seen always
//! has its whole closure stored; a failed or abandoned Put stores nothing
//! of the level it was at and, being content-addressed, leaves only
//! complete subtrees.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::stream::{BoxStream, FuturesOrdered};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use url::Url;

use super::{BatchPutter, BatchStore, DirectoryPutter, DirectoryService, RootFirst, decode_stored};
use crate::objectstore::{Bucket, Kind};
use crate::{B3Digest, ClosureError, Directory, StoreError};

/// Directory objects fetched at once by [`DirectoryService::get_recursive`].
pub const FETCHES_IN_FLIGHT: usize = 16;
/// Directory objects written at once by a Put.
pub const PUTS_IN_FLIGHT: usize = 16;
/// The largest directory object read (the gRPC message limit).
const MAX_DIRECTORY_BYTES: u64 = crate::grpc::MAX_MESSAGE_SIZE as u64;

/// Directories as objects in an object store.
#[derive(Clone, Debug)]
pub struct ObjectStoreDirectoryService {
    bucket: Arc<Bucket>,
}

impl ObjectStoreDirectoryService {
    /// Opens the store an `objectstore+…` URL names. Nothing is contacted
    /// yet: a store that is not there fails the first call.
    pub fn open(url: &Url) -> Result<Self, StoreError> {
        Ok(Self {
            bucket: Arc::new(Bucket::open(url)?),
        })
    }

    /// The directory's key as a URL (for messages and tests).
    pub fn directory_url(&self, digest: &B3Digest) -> String {
        self.bucket.show(&self.bucket.key(Kind::Directory, digest))
    }

    fn err(&self, digest: &B3Digest, what: &str, e: object_store::Error) -> StoreError {
        let key = self.bucket.key(Kind::Directory, digest);
        let e = self
            .bucket
            .io_err(&format!("directory {digest}: {what}"), &key, e);
        StoreError::io(format!("directory store {}", self.bucket.show(&key)), e)
    }

    /// The object's bytes, at most [`MAX_DIRECTORY_BYTES`], or `None`.
    async fn fetch(&self, digest: &B3Digest) -> Result<Option<Vec<u8>>, StoreError> {
        let key = self.bucket.key(Kind::Directory, digest);
        let got = match self.bucket.store.get(&key).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.err(digest, "reading", e)),
        };
        let mut stream = got.into_stream();
        let mut buf = Vec::new();
        while let Some(chunk) = stream
            .try_next()
            .await
            .map_err(|e| self.err(digest, "reading", e))?
        {
            if (buf.len() + chunk.len()) as u64 > MAX_DIRECTORY_BYTES {
                return Err(StoreError::io(
                    format!("directory store {}", self.directory_url(digest)),
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!(
                            "directory {digest}: object larger than {MAX_DIRECTORY_BYTES} bytes"
                        ),
                    ),
                ));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(Some(buf))
    }
}

#[async_trait]
impl DirectoryService for ObjectStoreDirectoryService {
    async fn get(&self, digest: &B3Digest) -> Result<Option<Directory>, StoreError> {
        let Some(bytes) = self.fetch(digest).await? else {
            return Ok(None);
        };
        decode_stored(&bytes, digest).map(Some)
    }

    async fn put(&self, dir: Directory) -> Result<B3Digest, StoreError> {
        let digest = dir.digest();
        self.put_batch(vec![(digest, dir)]).await?;
        Ok(digest)
    }

    fn get_recursive(&self, root: &B3Digest) -> BoxStream<'_, Result<Directory, StoreError>> {
        Box::pin(futures::stream::unfold(
            Fetch::new(self, *root),
            Fetch::next,
        ))
    }

    fn put_multiple_start(&self) -> Box<dyn DirectoryPutter + '_> {
        Box::new(BatchPutter::new(self))
    }
}

type Fetched<'a> = BoxFuture<'a, (B3Digest, Result<Option<Directory>, StoreError>)>;

/// A closure being fetched: breadth first, root first, each digest once,
/// with up to [`FETCHES_IN_FLIGHT`] gets at a time, yielded in the order
/// they were asked for (the order a one-at-a-time walk yields).
struct Fetch<'a> {
    svc: &'a ObjectStoreDirectoryService,
    root: B3Digest,
    todo: VecDeque<B3Digest>,
    seen: HashSet<B3Digest>,
    in_flight: FuturesOrdered<Fetched<'a>>,
    /// `None` once the stream ended or failed.
    check: Option<RootFirst>,
}

impl<'a> Fetch<'a> {
    fn new(svc: &'a ObjectStoreDirectoryService, root: B3Digest) -> Self {
        Self {
            svc,
            root,
            todo: VecDeque::from([root]),
            seen: HashSet::from([root]),
            in_flight: FuturesOrdered::new(),
            check: Some(RootFirst::new(root)),
        }
    }

    async fn next(mut self) -> Option<(Result<Directory, StoreError>, Self)> {
        let check = self.check.as_mut()?;
        while self.in_flight.len() < FETCHES_IN_FLIGHT {
            let Some(d) = self.todo.pop_front() else {
                break;
            };
            let svc = self.svc;
            self.in_flight
                .push_back(Box::pin(async move { (d, svc.get(&d).await) }));
        }
        let Some((digest, got)) = self.in_flight.next().await else {
            // All fetched: the check ends the stream, or fails it.
            let check = self.check.take()?;
            return check.finish().err().map(|e| (Err(e.into()), self));
        };
        let res = match got {
            Ok(Some(dir)) => check.add(&dir).map(|_| dir).map_err(StoreError::from),
            // A missing root is an empty stream; a missing child is an error.
            Ok(None) if digest == self.root => return None,
            Ok(None) => Err(ClosureError::Missing(digest).into()),
            Err(e) => Err(e),
        };
        match &res {
            Ok(dir) => {
                for (_, child, _) in dir.directories() {
                    if self.seen.insert(*child) {
                        self.todo.push_back(*child);
                    }
                }
            }
            Err(_) => self.check = None,
        }
        Some((res, self))
    }
}

#[async_trait]
impl BatchStore for ObjectStoreDirectoryService {
    /// Writes `dirs` (leaves first, as a putter checked them) one level at
    /// a time: a leaf's level is 0, a parent's one more than its highest
    /// child's in the batch.
    async fn put_batch(&self, dirs: Vec<(B3Digest, Directory)>) -> Result<(), StoreError> {
        let mut level: HashMap<B3Digest, usize> = HashMap::new();
        let mut levels: Vec<Vec<(B3Digest, Vec<u8>)>> = Vec::new();
        for (digest, dir) in &dirs {
            let l = dir
                .directories()
                .filter_map(|(_, child, _)| level.get(child).map(|l| l + 1))
                .max()
                .unwrap_or(0);
            level.insert(*digest, l);
            if levels.len() <= l {
                levels.resize_with(l + 1, Vec::new);
            }
            levels[l].push((*digest, dir.encode()));
        }
        for objects in levels {
            futures::stream::iter(objects)
                .map(|(digest, bytes)| async move {
                    let key = self.bucket.key(Kind::Directory, &digest);
                    self.bucket
                        .store
                        .put(&key, bytes.into())
                        .await
                        .map(drop)
                        .map_err(|e| self.err(&digest, "storing", e))
                })
                .buffer_unordered(PUTS_IN_FLIGHT)
                .try_collect::<()>()
                .await?;
        }
        Ok(())
    }
}
