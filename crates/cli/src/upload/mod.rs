//! The `--input` paths of `run --remote`, sent to the server's store only
//! where it lacks them, as rsync would: each path is first imported into
//! nothing (its files hashed, its directories kept here, nothing stored),
//! then the server is asked for each file's blob and only the missing
//! ones are sent, read again from their files and checked against the
//! digest of the first pass (a file changed in between fails the run,
//! naming it); the directories go, as one closure, only when the server
//! lacks the root's (remote stores take closures whole). A second run of
//! the same inputs sends questions only.

mod first_pass;

use std::collections::HashMap;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use tokio::io::AsyncReadExt;
use tvix_oci_castore::blobservice::BlobService;
use tvix_oci_castore::directoryservice::DirectoryService;
use tvix_oci_castore::import::{ImportOptions, import_path};
use tvix_oci_castore::{B3Digest, Directory, Node, StoreError};

use first_pass::{Closure, HashOnly, Kept};

/// Blobs asked about, or sent, at once.
const AT_ONCE: usize = 8;

/// What an upload sent, and what the server had already.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sent {
    pub blobs: u64,
    pub bytes: u64,
    pub blobs_there: u64,
    pub dirs: u64,
}

/// Uploads `path` (imported with `opts`) to `blobs` and `dirs` where they
/// lack it; its root node and what was sent.
pub async fn upload_path(
    path: &Path,
    opts: &ImportOptions,
    blobs: &Arc<dyn BlobService>,
    dirs: &dyn DirectoryService,
) -> anyhow::Result<(Node, Sent)> {
    let kept = Kept::default();
    let root = import_path(Arc::new(HashOnly), &kept, path, opts).await?;
    let closure = kept.take();
    let mut sent = Sent::default();
    let files = files_of(path, &root, &closure)?;
    let results: Vec<Option<u64>> = futures::stream::iter(files)
        .map(|(digest, (size, file))| async move {
            if blobs.has(&digest).await.with_context(|| {
                format!("asking the server for blob {digest} ({})", file.display())
            })? {
                return Ok(None);
            }
            send_file(blobs, &file, &digest, size).await.map(Some)
        })
        .buffer_unordered(AT_ONCE)
        .try_collect()
        .await?;
    for r in results {
        match r {
            Some(bytes) => (sent.blobs, sent.bytes) = (sent.blobs + 1, sent.bytes + bytes),
            None => sent.blobs_there += 1,
        }
    }
    if let Node::Directory { digest, .. } = &root {
        let there = dirs.get(digest).await.with_context(|| {
            format!(
                "asking the server for directory {digest} ({})",
                path.display()
            )
        })?;
        if there.is_none() {
            sent.dirs = put_closure(dirs, closure.order, *digest)
                .await
                .with_context(|| format!("sending the directories of {}", path.display()))?;
        }
    }
    Ok((root, sent))
}

/// Each distinct blob below `root` (imported from `path`, its directories
/// in `closure`): its size and the first file that holds it.
fn files_of(
    path: &Path,
    root: &Node,
    closure: &Closure,
) -> anyhow::Result<HashMap<B3Digest, (u64, PathBuf)>> {
    let mut files = HashMap::new();
    let mut todo = vec![(path.to_owned(), root.clone())];
    while let Some((at, node)) = todo.pop() {
        match node {
            Node::File { digest, size, .. } => {
                files.entry(digest).or_insert((size, at));
            }
            Node::Directory { digest, .. } => {
                let dir = closure
                    .by_digest
                    .get(&digest)
                    .and_then(|&i| closure.order.get(i))
                    .with_context(|| {
                        format!("directory {digest} of {} was not kept", at.display())
                    })?;
                for (name, child) in dir.nodes() {
                    todo.push((at.join(name.to_string()), child.clone()));
                }
            }
            Node::Symlink { .. } => {}
        }
    }
    Ok(files)
}

/// Sends the file at `path`, which hashed to `digest` and was `size`
/// bytes; the bytes sent. Fails, naming it, if it changed since.
async fn send_file(
    blobs: &Arc<dyn BlobService>,
    path: &Path,
    digest: &B3Digest,
    size: u64,
) -> anyhow::Result<u64> {
    let changed = |what: String| {
        anyhow::anyhow!(
            "{} changed while it was uploaded ({what}): run again",
            path.display()
        )
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("opening {} again to upload it", path.display()))?;
    let mut file = tokio::fs::File::from_std(file);
    let mut writer = blobs
        .open_write()
        .await
        .with_context(|| format!("uploading {}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut sent = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .await
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        sent += n as u64;
        if sent > size {
            return Err(changed(format!("{size} bytes when hashed, more now")));
        }
        writer
            .write(Bytes::copy_from_slice(&buf[..n]))
            .await
            .with_context(|| format!("uploading {}", path.display()))?;
    }
    if sent != size {
        return Err(changed(format!("{size} bytes when hashed, {sent} now")));
    }
    let got = writer
        .close()
        .await
        .with_context(|| format!("uploading {}", path.display()))?;
    if got != *digest {
        return Err(changed(format!("blake3 {digest} when hashed, {got} now")));
    }
    Ok(sent)
}

/// Sends `order` (leaves first, `root` last) as one closure; how many.
async fn put_closure(
    dirs: &dyn DirectoryService,
    order: Vec<Directory>,
    root: B3Digest,
) -> Result<u64, StoreError> {
    let count = order.len() as u64;
    let mut putter = dirs.put_multiple_start();
    for dir in order {
        putter.put(dir).await?;
    }
    let got = putter.close().await?;
    match got == root {
        true => Ok(count),
        false => Err(StoreError::WrongDigest {
            expected: root,
            actual: got,
        }),
    }
}

#[cfg(test)]
mod tests;
