//! `build --out-link PATH`: each output of a build written out as a
//! directory tree (the castore has no Nix store to point a symlink into),
//! named as `nix-build` names its result links. Each tree appears only once
//! it was written and verified (`export_node`), and never over anything.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tvix_oci_castore::Node;
use tvix_oci_castore::blobservice::BlobService;
use tvix_oci_castore::directoryservice::DirectoryService;
use tvix_oci_castore::export::{ExportError, export_node};

use crate::exit::{HOST, INVALID, exit};

/// Where output `output` of the `index`-th derivation (from 0) goes, as
/// `nix-build -o base` names it: `base`, then `-<index + 1>` for the
/// second and later derivations, then `-<output>` unless it is `out`.
pub fn destination(base: &Path, index: usize, output: &str) -> PathBuf {
    let mut s = OsString::from(base.as_os_str());
    if index > 0 {
        s.push(format!("-{}", index + 1));
    }
    if output != "out" {
        s.push(format!("-{output}"));
    }
    PathBuf::from(s)
}

/// Fails with exit 2, naming it, when the destination of one of
/// `outputs` of the `index`-th derivation exists already.
pub fn check_free<'a>(
    base: &Path,
    index: usize,
    outputs: impl IntoIterator<Item = &'a String>,
) -> anyhow::Result<()> {
    let taken: BTreeSet<String> = outputs
        .into_iter()
        .map(|o| destination(base, index, o))
        .filter(|d| std::fs::symlink_metadata(d).is_ok())
        .map(|d| d.display().to_string())
        .collect();
    if taken.is_empty() {
        return Ok(());
    }
    let verb = if taken.len() == 1 { "exists" } else { "exist" };
    Err(exit(
        INVALID,
        format!(
            "--out-link: {} {verb} already; remove or choose another PATH",
            taken.into_iter().collect::<Vec<_>>().join(", ")
        ),
    ))
}

/// Writes each output node of the `index`-th derivation to its
/// destination; returns the destinations by output name. A destination
/// that appeared meanwhile is exit 2; a store failing to give a blob or
/// directory exit 3, naming the output.
pub async fn write(
    base: &Path,
    index: usize,
    nodes: &BTreeMap<String, Node>,
    blobs: Arc<dyn BlobService>,
    dirs: &dyn DirectoryService,
) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let mut done = BTreeMap::new();
    for (name, node) in nodes {
        let dest = destination(base, index, name);
        export_node(blobs.clone(), dirs, node, &dest)
            .await
            .map_err(|e| match &e {
                ExportError::Io { path, source }
                    if path == &dest && source.kind() == std::io::ErrorKind::AlreadyExists =>
                {
                    exit(
                        INVALID,
                        format!("--out-link: {} exists already", dest.display()),
                    )
                }
                _ => exit(
                    HOST,
                    format!("writing output {name} to {}: {e}", dest.display()),
                ),
            })?;
        done.insert(name.clone(), dest);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_are_named_as_nix_build_names_result_links() {
        let b = Path::new("/tmp/result");
        assert_eq!(destination(b, 0, "out"), Path::new("/tmp/result"));
        assert_eq!(destination(b, 0, "dev"), Path::new("/tmp/result-dev"));
        assert_eq!(destination(b, 1, "out"), Path::new("/tmp/result-2"));
        assert_eq!(destination(b, 2, "lib"), Path::new("/tmp/result-3-lib"));
    }
}
