//! The store commands: opening the configured stores, import and export.

use std::path::PathBuf;
use std::sync::Arc;

use tvix_oci_castore::blobservice::BlobService;
use tvix_oci_castore::directoryservice::DirectoryService;
use tvix_oci_castore::export::export_node;
use tvix_oci_castore::import::{ImportOptions, import_path};
use tvix_oci_castore::{Node, open_blob_service_with, open_directory_service_with};

use crate::args::{Cli, Command};

/// Where the embedded store lives by default.
fn data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("tvix-oci-build");
    }
    if tvix_oci_sys::process::is_root() {
        return PathBuf::from("/var/lib/tvix-oci-build");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/share/tvix-oci-build"),
        None => PathBuf::from("/var/lib/tvix-oci-build"),
    }
}

/// The blob and directory store URLs the flags name.
pub fn store_urls(cli: &Cli) -> (String, String) {
    let dir = data_dir();
    let b = cli
        .blob_service_addr
        .clone()
        .unwrap_or_else(|| format!("objects://{}/blobs", dir.display()));
    let d = cli
        .directory_service_addr
        .clone()
        .unwrap_or_else(|| format!("redb://{}/directories.redb", dir.display()));
    (b, d)
}

pub async fn open_stores(
    cli: &Cli,
) -> anyhow::Result<(Arc<dyn BlobService>, Arc<dyn DirectoryService>)> {
    let (b, d) = store_urls(cli);
    let blobs = open_blob_service_with(&b, cli.store_timeouts()).await?;
    let dirs = open_directory_service_with(&d, cli.store_timeouts()).await?;
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
        Command::Build(args) => {
            let (b, d) = store_urls(&cli);
            let map = crate::nix_paths::NixPaths::new(&data_dir(), &b, &d);
            crate::build::build(args, &map, blobs, dirs).await?
        }
        Command::Spec { .. } => {}
        Command::Ls { node } => crate::browse::ls(node, &*blobs, &*dirs).await?,
        Command::Cat { node } => crate::browse::cat(node, &*blobs, &*dirs).await?,
        Command::Mount { args } => crate::browse::mount(args, blobs, dirs).await?,
        Command::Import { paths } => {
            let progress = crate::progress::Progress::new();
            for p in paths {
                crate::exit::must_exist(p)?;
                let opts = ImportOptions {
                    observer: progress.import(p),
                    ..ImportOptions::default()
                };
                let node = import_path(blobs.clone(), &*dirs, p, &opts).await?;
                println!("{}\t{}", p.display(), describe(&node));
            }
        }
        Command::Serve {
            listen,
            upload_idle_timeout,
            exec,
        } => crate::serve::serve(listen, *upload_idle_timeout, exec, blobs, dirs).await?,
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
