//! The store commands: opening the configured stores, import and export.

use std::path::PathBuf;
use std::sync::Arc;

use tvix_oci_castore::blobservice::BlobService;
use tvix_oci_castore::directoryservice::DirectoryService;
use tvix_oci_castore::export::export_node;
use tvix_oci_castore::import::{ImportOptions, import_path};
use tvix_oci_castore::{Node, open_blob_service, open_directory_service};

use crate::args::{Cli, Command};

/// Where the embedded store lives by default.
fn data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("tvix-oci-build");
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/tvix-oci-build");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/share/tvix-oci-build"),
        None => PathBuf::from("/var/lib/tvix-oci-build"),
    }
}

pub async fn open_stores(
    cli: &Cli,
) -> anyhow::Result<(Arc<dyn BlobService>, Arc<dyn DirectoryService>)> {
    let dir = data_dir();
    let b = cli
        .blob_service_addr
        .clone()
        .unwrap_or_else(|| format!("objects://{}/blobs", dir.display()));
    let d = cli
        .directory_service_addr
        .clone()
        .unwrap_or_else(|| format!("redb://{}/directories.redb", dir.display()));
    let blobs = open_blob_service(&b).await?;
    let dirs = open_directory_service(&d).await?;
    Ok((blobs, dirs))
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Spec { request, limits } = &cli.command {
        return crate::browse::spec(request, &limits.limits());
    }
    let (blobs, dirs) = open_stores(&cli)
        .await
        .map_err(|e| crate::exit::exit(crate::exit::HOST, e))?;
    match &cli.command {
        Command::Run(args) => crate::run::run(args, blobs, dirs).await?,
        Command::Spec { .. } => {}
        Command::Ls { node } => crate::browse::ls(node, &*blobs, &*dirs).await?,
        Command::Cat { node } => crate::browse::cat(node, &*blobs, &*dirs).await?,
        Command::Mount { args } => crate::browse::mount(args, blobs, dirs).await?,
        Command::Import { paths } => {
            let progress = crate::progress::Progress::new();
            for p in paths {
                let opts = ImportOptions {
                    observer: progress.import(p),
                    ..ImportOptions::default()
                };
                let node = import_path(blobs.clone(), &*dirs, p, &opts).await?;
                println!("{}\t{}", p.display(), describe(&node));
            }
        }
        Command::Serve { listen, exec } => crate::serve::serve(listen, exec, blobs, dirs).await?,
        Command::Export { digest, dest } => {
            let node = crate::browse::resolve(digest, &*blobs, &*dirs).await?;
            export_node(blobs, &*dirs, &node, dest).await?;
        }
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
