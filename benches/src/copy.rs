//! Copying a tree between stores: how the benchmarks fill the store that
//! `serve` runs on with trees they imported locally.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio_stream::StreamExt;
use tvix_oci_castore::blobservice::BlobService;
use tvix_oci_castore::directoryservice::DirectoryService;
use tvix_oci_castore::{B3Digest, Directory, Node};

/// Copies `node` and everything below it from one store to another (the
/// served one): blobs the target lacks, streamed, then the directories,
/// each after the ones it refers to.
pub async fn upload(
    node: &Node,
    from: (&Arc<dyn BlobService>, &dyn DirectoryService),
    to: (&Arc<dyn BlobService>, &dyn DirectoryService),
) -> Result<(), Box<dyn std::error::Error>> {
    let mut files = Vec::new();
    let root = match node {
        Node::Directory { digest, .. } => Some(*digest),
        Node::File { digest, .. } => {
            files.push(*digest);
            None
        }
        Node::Symlink { .. } => None,
    };
    // Every directory of the closure, then an order in which each comes
    // after its children (depth first, children before parents).
    let mut all: HashMap<B3Digest, Directory> = HashMap::new();
    if let Some(root) = root {
        let mut closure = from.1.get_recursive(&root);
        while let Some(dir) = closure.next().await {
            let dir = dir?;
            files.extend(dir.nodes().filter_map(|(_, n)| match n {
                Node::File { digest, .. } => Some(*digest),
                _ => None,
            }));
            all.insert(dir.digest(), dir);
        }
    }
    for digest in files.iter().collect::<HashSet<_>>() {
        if to.0.has(digest).await? {
            continue;
        }
        let mut reader = from
            .0
            .open_read(digest)
            .await?
            .ok_or_else(|| format!("blob {digest} is not in the source store"))?;
        let mut writer = to.0.open_write().await?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = reader.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            writer.write(Bytes::copy_from_slice(&buf[..n])).await?;
        }
        let got = writer.close().await?;
        if got != *digest {
            return Err(format!("blob {digest} arrived as {got}").into());
        }
    }
    if let Some(root) = root {
        let mut putter = to.1.put_multiple_start();
        let mut sent = HashSet::new();
        // (digest, children pushed yet?)
        let mut stack = vec![(root, false)];
        while let Some((digest, expanded)) = stack.pop() {
            if sent.contains(&digest) {
                continue;
            }
            let dir = all
                .get(&digest)
                .ok_or_else(|| format!("directory {digest} is not in the source store"))?;
            if expanded {
                putter.put(dir.clone()).await?;
                sent.insert(digest);
            } else {
                stack.push((digest, true));
                stack.extend(dir.directories().map(|(_, d, _)| (*d, false)));
            }
        }
        let got = putter.close().await?;
        if got != root {
            return Err(format!("directory {root} arrived as {got}").into());
        }
    }
    Ok(())
}
