//! `tvix-oci-build import PATH…`: local trees into the store, each root's
//! node printed (`PATH\tdirectory DIGEST size N`, or the file's or
//! symlink's), with a progress line on a terminal.

use std::path::PathBuf;
use std::sync::Arc;

use tvix_oci_castore::Node;
use tvix_oci_castore::blobservice::BlobService;
use tvix_oci_castore::directoryservice::DirectoryService;
use tvix_oci_castore::import::{ImportOptions, import_path};

/// Imports each of `paths`; a path that does not exist is the user's
/// fault (exit 2), named.
pub async fn import(
    paths: &[PathBuf],
    blobs: Arc<dyn BlobService>,
    dirs: &dyn DirectoryService,
) -> anyhow::Result<()> {
    let progress = crate::progress::Progress::new();
    for p in paths {
        crate::exit::must_exist(p)?;
        let opts = ImportOptions {
            observer: progress.import(p),
            ..ImportOptions::default()
        };
        let node = import_path(blobs.clone(), dirs, p, &opts).await?;
        println!("{}\t{}", p.display(), describe(&node));
    }
    Ok(())
}

fn describe(node: &Node) -> String {
    match node {
        Node::Directory { digest, size } => format!("directory {digest} size {size}"),
        Node::File {
            digest,
            size,
            executable,
        } => {
            format!(
                "file {digest} size {size}{}",
                if *executable { " executable" } else { "" }
            )
        }
        Node::Symlink { target } => format!("symlink -> {target}"),
    }
}
