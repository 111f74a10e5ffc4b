//! Naming what is in the store on the command line: `DIGEST[/PATH]`, a
//! directory or blob digest and a path below it, resolved to its node
//! (for `ls`, `cat`, `export` and `mount`). The store may lie: every
//! directory on the way is checked against the size its parent declares.

use anyhow::Context;
use tvix_oci_castore::blobservice::BlobService;
use tvix_oci_castore::directoryservice::{DirectoryService, check_size, entry_of};
use tvix_oci_castore::{B3Digest, Node, PathComponent};

use crate::exit::{HOST, INVALID, exit};

/// The most a bare blob (named by its digest alone, so with no declared
/// size) may have: a store streaming without end is cut off there. The
/// largest output a build may produce (`IngestLimits`).
const BARE_BLOB_MAX: u64 = 64 << 30;

/// The node named by `DIGEST[/PATH]`: a directory or blob digest, then a
/// path below the directory.
pub async fn resolve(
    spec: &str,
    blobs: &dyn BlobService,
    dirs: &dyn DirectoryService,
) -> anyhow::Result<Node> {
    let (digest, path) = spec.split_once('/').unwrap_or((spec, ""));
    let digest: B3Digest = digest
        .parse()
        .map_err(|e| exit(INVALID, format!("{spec}: {e}")))?;
    let mut node = if let Some(d) = dirs.get(&digest).await? {
        d.as_node()
    } else if let Some(r) = blobs.open_read(&digest).await? {
        // A bare blob: its size is not in any directory, so count it
        // (streamed, not buffered, bounded); it is not executable.
        let mut r = tokio::io::AsyncReadExt::take(r, BARE_BLOB_MAX + 1);
        let size = tokio::io::copy(&mut r, &mut tokio::io::sink())
            .await
            .with_context(|| format!("reading blob {digest}"))?;
        if size > BARE_BLOB_MAX {
            return Err(exit(
                HOST,
                format!("blob {digest}: the store sent more than {BARE_BLOB_MAX} bytes"),
            ));
        }
        Node::File {
            digest,
            size,
            executable: false,
        }
    } else {
        return Err(exit(
            INVALID,
            format!("{digest} is neither a directory nor a blob in the store"),
        ));
    };
    let mut parent: Option<(B3Digest, String)> = None;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        let Node::Directory { digest, size } = &node else {
            return Err(exit(
                INVALID,
                format!("{spec}: {part:?} is below something that is not a directory"),
            ));
        };
        let dir = dirs
            .get(digest)
            .await?
            .with_context(|| format!("directory {digest} is missing"))?;
        // The size its parent's entry declares, or the store lies.
        if let Some((p, name)) = &parent {
            check_size(&dir, *size, || entry_of(p, name))
                .map_err(|e| exit(HOST, format!("{spec}: {e}")))?;
        }
        parent = Some((*digest, part.to_owned()));
        let name =
            PathComponent::try_from(part).map_err(|e| exit(INVALID, format!("{spec}: {e}")))?;
        node = dir
            .get(&name)
            .cloned()
            .ok_or_else(|| exit(INVALID, format!("{spec}: no {part:?} there")))?;
    }
    Ok(node)
}
