//! `tvix-oci-build mount [NAME=]DIGEST… MOUNTPOINT`: castore nodes mounted
//! lazily through FUSE in the foreground, unmounted at Ctrl-C or SIGTERM.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use tvix_oci_castore::PathComponent;
use tvix_oci_castore::blobservice::BlobService;
use tvix_oci_castore::directoryservice::DirectoryService;

use crate::browse::resolve;
use crate::exit::{HOST, INVALID, exit};

pub async fn mount(
    args: &[String],
    blobs: Arc<dyn BlobService>,
    dirs: Arc<dyn DirectoryService>,
) -> anyhow::Result<()> {
    let (nodes, mountpoint) = args.split_at(args.len().saturating_sub(1));
    let mountpoint = Path::new(&mountpoint[0]);
    let mut inputs = Vec::new();
    for n in nodes {
        let (name, spec) = n
            .split_once('=')
            .unwrap_or((n.split('/').next().unwrap_or(n), n));
        let node = resolve(spec, &*blobs, &*dirs).await?;
        let name = PathComponent::try_from(name).map_err(|e| exit(INVALID, format!("{n}: {e}")))?;
        inputs.push((name, node));
    }
    let m = tvix_oci_fuse::mount(
        blobs,
        dirs,
        inputs,
        mountpoint,
        &tvix_oci_fuse::MountOptions::default(),
    )
    .map_err(|e| {
        use tvix_oci_fuse::MountError as E;
        // The user's choice of mount point is at fault, not the host.
        let code = match &e {
            E::NotEmpty(_) | E::Taken { .. } => INVALID,
            E::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => INVALID,
            _ => HOST,
        };
        exit(code, e)
    })?;
    // Listening before saying so: a Ctrl-C right after the message unmounts.
    let stop = crate::commands::shutdown_signal_now();
    eprintln!("mounted at {}; Ctrl-C to unmount", m.mountpoint().display());
    let _ = std::io::stderr().flush();
    stop.await;
    tokio::task::spawn_blocking(move || m.unmount())
        .await?
        .map_err(|e| exit(HOST, e))?;
    eprintln!("unmounted");
    Ok(())
}
