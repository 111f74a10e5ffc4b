//! A build's result in Nix's terms: per output its store path, the NAR
//! hash as Nix prints it (`sha256:<nix-base32>`), the NAR size and the
//! references as store paths (the needles found, mapped back through the
//! request's needle list), with the field names of `nix path-info --json`.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::base32;
use crate::request::NixRequest;

/// One output as Nix would register it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NixOutput {
    pub path: String,
    #[serde(rename = "narHash")]
    pub nar_hash: String,
    #[serde(rename = "narSize")]
    pub nar_size: u64,
    /// Sorted store paths.
    pub references: Vec<String>,
}

/// What the executor found for one output (request order).
#[derive(Clone, Debug)]
pub struct BuiltOutput {
    pub nar_sha256: [u8; 32],
    pub nar_size: u64,
    /// Indices into the request's refscan needles.
    pub needles: Vec<u64>,
}

/// Why a result does not fit its request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResultError {
    #[error("the build returned {got} outputs for {want} requested")]
    OutputCount { got: usize, want: usize },
    #[error("output {output} names needle {index}, but the request has {len} needles")]
    NeedleIndex {
        output: String,
        index: u64,
        len: usize,
    },
}

/// `sha256:<nix-base32>`, as `nix-store --query --hash` prints it.
pub fn nar_hash_string(sha256: &[u8; 32]) -> String {
    format!("sha256:{}", base32::encode(sha256))
}

/// The outputs by name, from the executor's per-output results.
pub fn nix_outputs(
    req: &NixRequest,
    built: &[BuiltOutput],
) -> Result<BTreeMap<String, NixOutput>, ResultError> {
    if built.len() != req.outputs.len() {
        return Err(ResultError::OutputCount {
            got: built.len(),
            want: req.outputs.len(),
        });
    }
    let mut out = BTreeMap::new();
    for ((name, path), b) in req.outputs.iter().zip(built) {
        let mut refs = BTreeSet::new();
        for &i in &b.needles {
            let p = req
                .needle_paths
                .get(usize::try_from(i).unwrap_or(usize::MAX))
                .ok_or_else(|| ResultError::NeedleIndex {
                    output: name.clone(),
                    index: i,
                    len: req.needle_paths.len(),
                })?;
            refs.insert(p.absolute());
        }
        out.insert(
            name.clone(),
            NixOutput {
                path: path.absolute(),
                nar_hash: nar_hash_string(&b.nar_sha256),
                nar_size: b.nar_size,
                references: refs.into_iter().collect(),
            },
        );
    }
    Ok(out)
}
