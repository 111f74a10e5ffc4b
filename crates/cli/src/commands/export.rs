//! `tvix-oci-build export DIGEST[/PATH] DEST`: a node written out as a
//! tree, under a temporary name beside `DEST`, renamed only once every
//! blob and directory was verified (a failure leaves nothing at `DEST`).

use std::path::Path;
use std::sync::Arc;

use tvix_oci_castore::blobservice::BlobService;
use tvix_oci_castore::directoryservice::DirectoryService;
use tvix_oci_castore::export::export_node;

/// Writes the node `spec` names to `dest`.
pub async fn export(
    spec: &str,
    dest: &Path,
    blobs: Arc<dyn BlobService>,
    dirs: &dyn DirectoryService,
) -> anyhow::Result<()> {
    let node = crate::browse::resolve(spec, &*blobs, dirs).await?;
    export_node(blobs, dirs, &node, dest).await?;
    Ok(())
}
