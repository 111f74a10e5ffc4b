//! Browsing the store without mounting: `ls`, `cat`, and the foreground
//! `mount`; plus `spec`, which shows the config.json a request would run.
//!
//! The store may lie: `cat` reads through a size-and-digest-checking reader
//! (never past the declared size), and prints a blob of up to
//! [`CAT_VERIFIED`] bytes only once all of it was verified.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tvix_oci_castore::blobservice::{BlobService, CheckedReader, read_checked};
use tvix_oci_castore::directoryservice::{DirectoryService, check_size, entry_of};
use tvix_oci_castore::{B3Digest, Node, PathComponent};

use crate::exit::{HOST, INVALID, exit};

/// Blobs up to this size are read whole and verified before `cat` prints a
/// byte; larger ones stream (bytes may be printed before a mismatch shows).
pub const CAT_VERIFIED: u64 = 64 << 20;

/// The most a bare blob (named by its digest alone, so with no declared
/// size) may have: a store streaming without end is cut off there. The
/// largest output a build may produce (`IngestLimits`).
const BARE_BLOB_MAX: u64 = 64 << 30;

/// The node named by `DIGEST[/PATH]`: a directory or blob digest, then a
/// path below the directory.
pub async fn resolve(
    spec: &str,
    blobs: &dyn BlobService,
    dirs: &dyn DirectoryService,
) -> anyhow::Result<Node> {
    let (digest, path) = spec.split_once('/').unwrap_or((spec, ""));
    let digest: B3Digest = digest
        .parse()
        .map_err(|e| exit(INVALID, format!("{spec}: {e}")))?;
    let mut node = if let Some(d) = dirs.get(&digest).await? {
        d.as_node()
    } else if let Some(r) = blobs.open_read(&digest).await? {
        // A bare blob: its size is not in any directory, so count it
        // (streamed, not buffered, bounded); it is not executable.
        let mut r = tokio::io::AsyncReadExt::take(r, BARE_BLOB_MAX + 1);
        let size = tokio::io::copy(&mut r, &mut tokio::io::sink())
            .await
            .with_context(|| format!("reading blob {digest}"))?;
        if size > BARE_BLOB_MAX {
            return Err(exit(
                HOST,
                format!("blob {digest}: the store sent more than {BARE_BLOB_MAX} bytes"),
            ));
        }
        Node::File {
            digest,
            size,
            executable: false,
        }
    } else {
        return Err(exit(
            INVALID,
            format!("{digest} is neither a directory nor a blob in the store"),
        ));
    };
    let mut parent: Option<(B3Digest, String)> = None;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        let Node::Directory { digest, size } = &node else {
            return Err(exit(
                INVALID,
                format!("{spec}: {part:?} is below something that is not a directory"),
            ));
        };
        let dir = dirs
            .get(digest)
            .await?
            .with_context(|| format!("directory {digest} is missing"))?;
        // The size its parent's entry declares, or the store lies.
        if let Some((p, name)) = &parent {
            check_size(&dir, *size, || entry_of(p, name))
                .map_err(|e| exit(HOST, format!("{spec}: {e}")))?;
        }
        parent = Some((*digest, part.to_owned()));
        let name =
            PathComponent::try_from(part).map_err(|e| exit(INVALID, format!("{spec}: {e}")))?;
        node = dir
            .get(&name)
            .cloned()
            .ok_or_else(|| exit(INVALID, format!("{spec}: no {part:?} there")))?;
    }
    Ok(node)
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
    eprintln!("mounted at {}; Ctrl-C to unmount", m.mountpoint().display());
    let _ = std::io::stderr().flush();
    crate::run::shutdown_signal().await;
    tokio::task::spawn_blocking(move || m.unmount())
        .await?
        .map_err(|e| exit(HOST, e))?;
    eprintln!("unmounted");
    Ok(())
}

pub fn spec(request: &Path, limits: &tvix_oci_spec::RequestLimits) -> anyhow::Result<()> {
    let req = crate::run::read_request(request, limits)?;
    // The read-only paths as a root executor binds them (not checked
    // against an allow-list here: nothing runs).
    let ro_mounts = req
        .constraints()
        .available_ro_paths
        .iter()
        .enumerate()
        .map(|(n, p)| {
            let path = p.to_host();
            let device = std::fs::metadata(&path).is_ok_and(|m| {
                use std::os::unix::fs::FileTypeExt;
                m.file_type().is_char_device() || m.file_type().is_block_device()
            });
            tvix_oci_spec::RoMount {
                path,
                source: tvix_oci_spec::BundleLayout::ro_source(n),
                device,
            }
        })
        .collect();
    let opts = tvix_oci_spec::SpecOptions {
        sandbox_shell: tvix_oci_executor::ExecutorConfig::default().sandbox_shell,
        ro_mounts,
        ..Default::default()
    };
    let spec = tvix_oci_spec::make_spec(&req, &opts).map_err(|e| exit(INVALID, e))?;
    println!(
        "{}",
        tvix_oci_spec::to_config_json(&spec).map_err(|e| exit(HOST, e))?
    );
    Ok(())
}
