//! The stores every command works on: the embedded one under the data dir
//! by default, or the URLs the flags and `BLOB_SERVICE_ADDR` /
//! `DIRECTORY_SERVICE_ADDR` name, opened with the store timeouts.

use std::path::PathBuf;
use std::sync::Arc;

use tvix_oci_castore::blobservice::BlobService;
use tvix_oci_castore::directoryservice::DirectoryService;
use tvix_oci_castore::{open_blob_service_with, open_directory_service_with};

use crate::args::Cli;

/// Where the embedded store lives by default.
pub fn data_dir() -> PathBuf {
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
