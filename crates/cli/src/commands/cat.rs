//! `tvix-oci-build cat DIGEST/PATH`: a file's bytes to stdout. The store
//! may lie: it reads through a size-and-digest-checking reader (never past
//! the declared size), and prints a blob of up to [`CAT_VERIFIED`] bytes
//! only once all of it was verified.

use anyhow::Context;
use tvix_oci_castore::Node;
use tvix_oci_castore::blobservice::{BlobService, CheckedReader, read_checked};
use tvix_oci_castore::directoryservice::DirectoryService;

use crate::browse::resolve;
use crate::exit::{HOST, INVALID, exit};

/// Blobs up to this size are read whole and verified before `cat` prints a
/// byte; larger ones stream (bytes may be printed before a mismatch shows).
pub const CAT_VERIFIED: u64 = 64 << 20;

pub async fn cat(
    spec: &str,
    blobs: &dyn BlobService,
    dirs: &dyn DirectoryService,
) -> anyhow::Result<()> {
    let Node::File { digest, size, .. } = resolve(spec, blobs, dirs).await? else {
        return Err(exit(INVALID, format!("{spec} is not a file")));
    };
    let mut out = tokio::io::stdout();
    if size <= CAT_VERIFIED {
        let data = read_checked(blobs, &digest, size)
            .await
            .map_err(|e| exit(HOST, format!("{spec}: {e}; nothing was printed")))?
            .with_context(|| format!("blob {digest} is missing"))?;
        tokio::io::AsyncWriteExt::write_all(&mut out, &data).await?;
    } else {
        let r = blobs
            .open_read(&digest)
            .await?
            .with_context(|| format!("blob {digest} is missing"))?;
        let mut r = CheckedReader::new(r, digest, size);
        tokio::io::copy(&mut r, &mut out).await.map_err(|e| {
            exit(
                HOST,
                format!(
                    "{spec}: {e}; the {} bytes printed before are not verified",
                    r.received()
                ),
            )
        })?;
    }
    tokio::io::AsyncWriteExt::flush(&mut out).await?;
    Ok(())
}
