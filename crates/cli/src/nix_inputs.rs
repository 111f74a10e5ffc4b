//! The inputs of a derivation, from the local Nix store: the paths it
//! reads directly, their closure (`nix-store --query --requisites`), and
//! their import into the castore (skipping what [`NixPaths`] knows).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use futures::StreamExt;
use tvix_oci_castore::Node;
use tvix_oci_castore::blobservice::BlobService;
use tvix_oci_castore::directoryservice::DirectoryService;
use tvix_oci_castore::import::{ImportOptions, import_path};
use tvix_oci_nix::{Derivation, StorePath};

use crate::commands::read_drv;
use crate::exit::{HOST, INVALID, exit};
use crate::nix_paths::NixPaths;
use crate::progress::Progress;

/// The store paths the build reads directly: its input sources and the
/// used outputs of its input derivations (whose `.drv` files are read
/// from the store). Paths absent from /nix/store are listed in `missing`.
pub fn input_roots(
    drv: &Derivation,
    missing: &mut BTreeSet<String>,
) -> anyhow::Result<BTreeSet<StorePath>> {
    let mut roots: BTreeSet<StorePath> = drv.input_sources.clone();
    for (p, outs) in &drv.input_derivations {
        let file = PathBuf::from(p.absolute());
        if std::fs::symlink_metadata(&file).is_err() {
            missing.insert(p.absolute());
            continue;
        }
        let input = read_drv(&file)?;
        for o in outs {
            let path = input
                .outputs
                .get(o)
                .and_then(|x| x.path.clone())
                .ok_or_else(|| {
                    exit(
                        INVALID,
                        format!("input derivation {p} has no output {o:?} with a store path"),
                    )
                })?;
            roots.insert(path);
        }
    }
    for r in &roots {
        if std::fs::symlink_metadata(r.absolute()).is_err() {
            missing.insert(r.absolute());
        }
    }
    Ok(roots)
}

/// The closure of `roots` in the local Nix store, with each path's NAR
/// hash where Nix's database could be read (else the hashes are asked of
/// `nix-store` when they are needed).
pub struct Closure {
    pub paths: BTreeSet<StorePath>,
    pub hashes: Option<BTreeMap<StorePath, String>>,
}

/// The closure of `roots`: from Nix's database in one query, or else from
/// `nix-store --query --requisites`.
pub fn closure_with_hashes(roots: &BTreeSet<StorePath>) -> anyhow::Result<Closure> {
    match crate::nix_db::closure(roots) {
        Ok(hashes) => Ok(Closure {
            paths: hashes.keys().cloned().collect(),
            hashes: Some(hashes),
        }),
        Err(e) => {
            tracing::debug!("asking nix-store instead: {e:#}");
            Ok(Closure {
                paths: closure(roots)?,
                hashes: None,
            })
        }
    }
}

/// The closure of `roots` in the local Nix store.
pub fn closure(roots: &BTreeSet<StorePath>) -> anyhow::Result<BTreeSet<StorePath>> {
    if roots.is_empty() {
        return Ok(BTreeSet::new());
    }
    let out = std::process::Command::new("nix-store")
        .args(["--query", "--requisites"])
        .args(roots.iter().map(|p| p.absolute()))
        .output()
        .map_err(|e| {
            exit(
                HOST,
                format!("cannot run nix-store to find the input closure: {e}"),
            )
        })?;
    if !out.status.success() {
        return Err(exit(
            HOST,
            format!(
                "nix-store --query --requisites failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut set = roots.clone();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let p = StorePath::from_absolute(line)
            .map_err(|e| exit(HOST, format!("nix-store printed {line:?}: {e}")))?;
        set.insert(p);
    }
    Ok(set)
}

/// Map lookups in flight at once.
const MAP_LOOKUPS: usize = 64;

/// Imports each path of `paths` from /nix/store, but those `map` knows;
/// returns the nodes and how many were imported.
pub async fn import_all(
    closure: &Closure,
    map: &NixPaths,
    progress: &Progress,
    blobs: &Arc<dyn BlobService>,
    dirs: &Arc<dyn DirectoryService>,
) -> anyhow::Result<(BTreeMap<StorePath, Node>, usize)> {
    let list: Vec<StorePath> = closure.paths.iter().cloned().collect();
    // Without Nix's NAR hashes the map cannot be trusted: import all.
    let hashes = match &closure.hashes {
        // Every path of a closure read from the database has its hash.
        Some(h) => list.iter().filter_map(|p| h.get(p).cloned()).collect(),
        None => {
            let t = std::time::Instant::now();
            let hashes = crate::nix_paths::nar_hashes(&list).unwrap_or_else(|e| {
                tracing::warn!("not reusing imported inputs: {e}");
                vec![]
            });
            tracing::debug!("nix-store --query --hash: {:?}", t.elapsed());
            hashes
        }
    };
    // The map first, many lookups at once (each asks the stores whether
    // the node is still there: a round trip per path, which overlap).
    let by_index = &hashes;
    let known: Vec<Option<Node>> = futures::stream::iter(list.iter().enumerate())
        .map(|(i, p)| async move {
            match by_index.get(i) {
                Some(h) => map.get(p, h, &**blobs, &**dirs).await,
                None => None,
            }
        })
        .buffered(MAP_LOOKUPS)
        .collect()
        .await;
    let mut m = BTreeMap::new();
    let mut imported = 0;
    for ((i, p), known) in list.iter().enumerate().zip(known) {
        let hash = hashes.get(i);
        if let Some(node) = known {
            m.insert(p.clone(), node);
            continue;
        }
        let local = PathBuf::from(p.absolute());
        let opts = ImportOptions {
            observer: progress.import(&local),
            ..ImportOptions::default()
        };
        let node = import_path(blobs.clone(), &**dirs, &local, &opts)
            .await
            .with_context(|| format!("importing input {p}"))?;
        if let Some(h) = hash {
            map.put(p, h, &node);
        }
        imported += 1;
        m.insert(p.clone(), node);
    }
    Ok((m, imported))
}
