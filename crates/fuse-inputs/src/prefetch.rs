//! Background prefetch: fetch every blob below some paths into the cache
//! while the build runs, so later opens are local. Only worth it for remote
//! stores; blobs the store keeps as local files are skipped.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::{StreamExt, TryStreamExt};
use tracing::{debug, warn};
use tvix_oci_castore::blobservice::BlobService;
use tvix_oci_castore::directoryservice::{DirectoryService, RootFirst};
use tvix_oci_castore::{B3Digest, Node, PathComponent};

use crate::cache::BlobCache;
use crate::stats::Stats;

/// Blobs fetched at once.
const CONCURRENCY: usize = 8;

/// The node at `path` below the inputs, walking directories by `get`.
async fn resolve(
    dirs: &dyn DirectoryService,
    roots: &[(PathComponent, Node)],
    path: &std::path::Path,
) -> Option<Node> {
    use std::os::unix::ffi::OsStrExt;
    let mut parts = path.iter();
    let first = parts.next()?;
    let mut node = roots
        .iter()
        .find(|(n, _)| n.as_bytes() == first.as_bytes())?
        .1
        .clone();
    for part in parts {
        let Node::Directory { digest, .. } = node else {
            return None;
        };
        let dir = dirs.get(&digest).await.ok()??;
        let name = PathComponent::try_from(part.as_bytes()).ok()?;
        node = dir.get(&name)?.clone();
    }
    Some(node)
}

/// Fetches every blob below each of `paths` into `cache`.
pub(crate) async fn prefetch(
    blobs: Arc<dyn BlobService>,
    dirs: Arc<dyn DirectoryService>,
    cache: Arc<BlobCache>,
    roots: Vec<(PathComponent, Node)>,
    paths: Vec<PathBuf>,
    idle: std::time::Duration,
    stats: Arc<Stats>,
) {
    let mut files: Vec<(B3Digest, u64)> = Vec::new();
    for p in &paths {
        match resolve(&*dirs, &roots, p).await {
            Some(Node::File { digest, size, .. }) => files.push((digest, size)),
            Some(Node::Directory { digest, size }) => {
                let closure: Result<Vec<_>, _> = dirs.get_recursive(&digest).try_collect().await;
                // The store is held to the sizes declared, the root's too.
                let closure = closure.and_then(|all| {
                    let mut check = RootFirst::with_size(digest, size);
                    for d in &all {
                        check.add(d)?;
                    }
                    check.finish()?;
                    Ok(all)
                });
                match closure {
                    Ok(all) => {
                        for d in all {
                            for (_, n) in d.nodes() {
                                if let Node::File { digest, size, .. } = n {
                                    files.push((*digest, *size));
                                }
                            }
                        }
                    }
                    Err(e) => warn!(path = %p.display(), "prefetch: {e}"),
                }
            }
            _ => debug!(path = %p.display(), "prefetch: nothing to fetch there"),
        }
    }
    files.sort();
    files.dedup();
    files.retain(|(d, _)| blobs.local_path(d).is_none());
    futures::stream::iter(files)
        .for_each_concurrent(CONCURRENCY, |(digest, size)| {
            let (blobs, cache, stats) = (blobs.clone(), cache.clone(), stats.clone());
            async move {
                if cache.get(&digest, size).is_some() {
                    return;
                }
                match cache.get_or_fetch(&*blobs, &digest, size, idle).await {
                    Ok((_, true)) => {
                        stats.blobs_fetched.fetch_add(1, Ordering::Relaxed);
                        stats.bytes_fetched.fetch_add(size, Ordering::Relaxed);
                    }
                    Ok((_, false)) => {}
                    Err(e) => warn!(digest = %digest, "prefetch: {e}"),
                }
            }
        })
        .await;
}
