//! `tvix-oci-build ls DIGEST[/PATH]`: a directory's entries (mode, size,
//! digest, name), or the one entry a file or symlink is.

use anyhow::Context;
use tvix_oci_castore::blobservice::BlobService;
use tvix_oci_castore::directoryservice::DirectoryService;
use tvix_oci_castore::{Node, PathComponent};

use crate::browse::resolve;
use crate::exit::{HOST, exit};

pub async fn ls(
    spec: &str,
    blobs: &dyn BlobService,
    dirs: &dyn DirectoryService,
) -> anyhow::Result<()> {
    match resolve(spec, blobs, dirs).await? {
        Node::Directory { digest, .. } => {
            let dir = dirs
                .get(&digest)
                .await?
                .with_context(|| format!("directory {digest} is missing"))?;
            for (name, node) in dir.nodes() {
                println!("{}", line(name, node));
            }
        }
        other => println!(
            "{}",
            line(
                &PathComponent::try_from("-").map_err(|e| exit(HOST, e))?,
                &other
            )
        ),
    }
    Ok(())
}

fn line(name: &PathComponent, node: &Node) -> String {
    match node {
        Node::Directory { digest, .. } => format!("d          {digest} {name}/"),
        Node::File {
            digest,
            size,
            executable,
        } => {
            format!(
                "{} {size:>9} {digest} {name}",
                if *executable { "x" } else { "-" }
            )
        }
        Node::Symlink { target } => format!("l          {:64} {name} -> {target}", ""),
    }
}
