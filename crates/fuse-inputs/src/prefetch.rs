//! Background prefetch of paths: every blob below some paths is fetched
//! into the cache while the build runs, so later opens are local — the
//! same fetches as a learned profile's ([`Fetcher::prefetch_blobs`]), the
//! paths resolved to blobs first. Blobs the store keeps as local files are
//! skipped.

use std::path::PathBuf;
use std::sync::Arc;

use futures::TryStreamExt;
use tracing::{debug, warn};
use tvix_oci_castore::directoryservice::{DirectoryService, RootFirst};
use tvix_oci_castore::{B3Digest, Node, PathComponent};

use crate::fetch::Fetcher;
use crate::learned::ReadLog;

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

/// Fetches every blob below each of `paths` into the cache, as many at
/// once as `concurrency`.
pub(crate) async fn prefetch(
    fetcher: Arc<Fetcher>,
    dirs: Arc<dyn DirectoryService>,
    roots: Vec<(PathComponent, Node)>,
    paths: Vec<PathBuf>,
    log: Arc<ReadLog>,
    concurrency: usize,
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
    fetcher.prefetch_blobs(files, log, concurrency).await;
}
