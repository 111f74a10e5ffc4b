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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::request::{RequestOptions, build_request};
    use crate::{StorePath, parse};

    fn two_crossed() -> NixRequest {
        let drv = parse(include_bytes!("../tests/fixtures/two-crossed.drv")).unwrap();
        let bb = StorePath::from_base_name("i72sh5s677q84k6rwyjdpx0p2j0x962f-busybox").unwrap();
        let node = tvix_oci_castore::Node::Symlink {
            target: "x".try_into().unwrap(),
        };
        build_request(
            &drv,
            &BTreeMap::from([(bb, node)]),
            &RequestOptions::default(),
        )
        .unwrap()
    }

    #[test]
    fn needles_become_sorted_store_paths_by_output_name() {
        let req = two_crossed();
        // Request order: out (j32i…) then dev (x2l9…); needles: dev, out, bb.
        let built = [
            BuiltOutput {
                nar_sha256: [0; 32],
                nar_size: 1,
                needles: vec![2, 0],
            },
            BuiltOutput {
                nar_sha256: [0xff; 32],
                nar_size: 2,
                needles: vec![],
            },
        ];
        let out = nix_outputs(&req, &built).unwrap();
        assert_eq!(
            out["out"].path,
            "/nix/store/j32iaf6v4qsxf5ygzpr0mbx30p1g056h-two-c"
        );
        assert_eq!(
            out["out"].references,
            [
                "/nix/store/i72sh5s677q84k6rwyjdpx0p2j0x962f-busybox",
                "/nix/store/x2l9dcgwrxy83x61qg07n9ii897cr735-two-c-dev"
            ]
        );
        assert_eq!(out["dev"].nar_size, 2);
        assert_eq!(out["out"].nar_hash, format!("sha256:{}", "0".repeat(52)));
        let j = serde_json::to_value(&out["dev"]).unwrap();
        // 256 bits in 52 digits: the first holds the one bit left over.
        assert_eq!(j["narHash"], format!("sha256:1{}", "z".repeat(51)));
        assert_eq!(j["narSize"], 2);
    }

    #[test]
    fn a_result_that_does_not_fit_is_an_error() {
        let req = two_crossed();
        let one = BuiltOutput {
            nar_sha256: [0; 32],
            nar_size: 1,
            needles: vec![3],
        };
        assert_eq!(
            nix_outputs(&req, std::slice::from_ref(&one)),
            Err(ResultError::OutputCount { got: 1, want: 2 })
        );
        let e = nix_outputs(&req, &[one.clone(), one]).unwrap_err();
        assert!(e.to_string().contains("needle 3"), "{e}");
    }
}
