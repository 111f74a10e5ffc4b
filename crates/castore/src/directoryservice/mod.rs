//! [`DirectoryService`]: where directories live, addressed by the digest of
//! their canonical encoding.
//!
//! One backend per file, opened from a URL by
//! [`crate::open_directory_service`]. Closures go in leaves first through a
//! [`DirectoryPutter`] and come out root first from
//! [`DirectoryService::get_recursive`]; both orders are checked.

use std::collections::{HashSet, VecDeque};

use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::{B3Digest, Directory, StoreError};

mod closure;
mod grpc;
mod holder;
mod memory;
mod objectstore;
mod redb;

pub use closure::{LeavesFirst, RootFirst, check_size, entry_of};
pub use grpc::GrpcDirectoryService;
pub use holder::{Holder, find_holder};
pub use memory::MemoryDirectoryService;
pub use objectstore::{FETCHES_IN_FLIGHT, ObjectStoreDirectoryService, PUTS_IN_FLIGHT};
pub use redb::RedbDirectoryService;

/// A store of directories. Usable behind `Arc<dyn DirectoryService>`.
#[async_trait]
pub trait DirectoryService: Send + Sync + std::fmt::Debug + 'static {
    /// The directory with this digest, validated, or `None`.
    async fn get(&self, digest: &B3Digest) -> Result<Option<Directory>, StoreError>;

    /// Stores one directory whose child directories are already stored
    /// (remote tvix/snix stores check this only within one Put stream, so
    /// send whole closures through [`Self::put_multiple_start`]).
    async fn put(&self, dir: Directory) -> Result<B3Digest, StoreError>;

    /// The closure of `root`: the root first, then every directory after one
    /// that refers to it, each digest once. Empty when `root` is not there.
    fn get_recursive(&self, root: &B3Digest) -> BoxStream<'_, Result<Directory, StoreError>> {
        bfs(self, *root)
    }

    /// Starts a Put of a closure, sent leaves first, the root last.
    fn put_multiple_start(&self) -> Box<dyn DirectoryPutter + '_>;
}

/// Takes a closure leaves first and stores it on [`DirectoryPutter::close`].
#[async_trait]
pub trait DirectoryPutter: Send {
    /// Sends the next directory: it may only refer to directories sent
    /// before it in this putter. Order errors are reported here.
    async fn put(&mut self, dir: Directory) -> Result<(), StoreError>;

    /// Finishes the closure and returns the root's digest (the last one
    /// sent). Nothing is stored when this fails.
    async fn close(&mut self) -> Result<B3Digest, StoreError>;
}

/// `dir`, if it is the directory `asked` for: a store answering with
/// another one is at fault.
pub(crate) fn expect_digest(dir: Directory, asked: &B3Digest) -> Result<Directory, StoreError> {
    if dir.digest() != *asked {
        return Err(StoreError::WrongDigest {
            expected: *asked,
            actual: dir.digest(),
        });
    }
    Ok(dir)
}

/// Decodes the stored encoding of directory `digest`, checking that it is
/// valid and that directory.
pub(crate) fn decode_stored(bytes: &[u8], digest: &B3Digest) -> Result<Directory, StoreError> {
    let dir = Directory::decode(bytes).map_err(|err| StoreError::InvalidDirectory {
        digest: *digest,
        err,
    })?;
    expect_digest(dir, digest)
}

/// Breadth-first traversal by `get`, root first, each digest once.
pub(crate) fn bfs<S: DirectoryService + ?Sized>(
    svc: &S,
    root: B3Digest,
) -> BoxStream<'_, Result<Directory, StoreError>> {
    let state = (VecDeque::from([root]), HashSet::from([root]), false);
    Box::pin(futures::stream::unfold(
        state,
        move |(mut todo, mut seen, failed)| async move {
            if failed {
                return None;
            }
            let digest = todo.pop_front()?;
            match svc.get(&digest).await {
                Ok(Some(dir)) => {
                    for (_, child, _) in dir.directories() {
                        if seen.insert(*child) {
                            todo.push_back(*child);
                        }
                    }
                    Some((Ok(dir), (todo, seen, false)))
                }
                // A missing root is an empty stream; a missing child is an error.
                Ok(None) if digest == root => None,
                Ok(None) => Some((
                    Err(StoreError::Closure(crate::ClosureError::Missing(digest))),
                    (todo, seen, true),
                )),
                Err(e) => Some((Err(e), (todo, seen, true))),
            }
        },
    ))
}

/// A store that can write many directories at once (one transaction).
#[async_trait]
pub(crate) trait BatchStore: Send + Sync {
    async fn put_batch(&self, dirs: Vec<(B3Digest, Directory)>) -> Result<(), StoreError>;
}

/// A putter for local stores: checks the order as directories come, keeps
/// them, and writes them all at once on close, so a failed or abandoned
/// closure leaves nothing behind.
pub(crate) struct BatchPutter<'a, S: BatchStore> {
    store: &'a S,
    check: LeavesFirst,
    dirs: Vec<(B3Digest, Directory)>,
}

impl<'a, S: BatchStore> BatchPutter<'a, S> {
    pub(crate) fn new(store: &'a S) -> Self {
        Self {
            store,
            check: LeavesFirst::default(),
            dirs: Vec::new(),
        }
    }
}

#[async_trait]
impl<S: BatchStore> DirectoryPutter for BatchPutter<'_, S> {
    async fn put(&mut self, dir: Directory) -> Result<(), StoreError> {
        let digest = self.check.add(&dir)?;
        self.dirs.push((digest, dir));
        Ok(())
    }

    async fn close(&mut self) -> Result<B3Digest, StoreError> {
        let root = std::mem::take(&mut self.check).finish()?;
        self.store.put_batch(std::mem::take(&mut self.dirs)).await?;
        Ok(root)
    }
}
