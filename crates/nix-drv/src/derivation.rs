//! [`Derivation`]: what a `.drv` file says, typed. Parsing is in
//! [`crate::aterm`]; this module holds the type and what follows from it
//! (fixed-output or not, the output paths, ATerm printing).

use std::collections::{BTreeMap, BTreeSet};

use crate::store_path::StorePath;

/// One output of a derivation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    /// Where it lands (input-addressed and fixed-output derivations know
    /// it; floating content-addressed ones leave it empty).
    pub path: Option<StorePath>,
    /// `""`, or for a content-addressed output e.g. `sha256` (flat),
    /// `r:sha256` (recursive, NAR) or `text:sha256`.
    pub hash_algo: String,
    /// The expected hash in hex, for a fixed output; else `""`.
    pub hash: String,
}

/// How a fixed output's hash is taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashMode {
    /// Of the file's contents (`outputHashMode = "flat"`).
    Flat,
    /// Of the NAR (`"recursive"`, `r:` in the drv).
    Recursive,
    /// Of a text file (`text:`).
    Text,
}

/// A fixed output's expectation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FixedOutput {
    pub mode: HashMode,
    /// `sha256`, `sha1`, `sha512`, `md5`.
    pub algo: String,
    /// Hex.
    pub hash: String,
}

/// A parsed `.drv`: `Derive([outputs],[inputDrvs],[inputSrcs],system,
/// builder,[args],[env])`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Derivation {
    /// By output name (`out`, `dev`…).
    pub outputs: BTreeMap<String, Output>,
    /// Input derivations, each with the outputs of it this one uses.
    pub input_derivations: BTreeMap<StorePath, BTreeSet<String>>,
    /// Input sources (plain store paths).
    pub input_sources: BTreeSet<StorePath>,
    pub system: String,
    pub builder: String,
    pub args: Vec<String>,
    /// The environment, as bytes (Nix strings need not be UTF-8).
    pub env: BTreeMap<String, Vec<u8>>,
}

impl Derivation {
    /// The fixed output's expectation, for a fixed-output derivation: a
    /// single output `out` carrying a hash.
    pub fn fixed_output(&self) -> Option<FixedOutput> {
        if self.outputs.len() != 1 {
            return None;
        }
        let o = self.outputs.get("out")?;
        if o.hash.is_empty() {
            return None;
        }
        let (mode, algo) = if let Some(a) = o.hash_algo.strip_prefix("r:") {
            (HashMode::Recursive, a)
        } else if let Some(a) = o.hash_algo.strip_prefix("text:") {
            (HashMode::Text, a)
        } else {
            (HashMode::Flat, o.hash_algo.as_str())
        };
        Some(FixedOutput {
            mode,
            algo: algo.to_owned(),
            hash: o.hash.clone(),
        })
    }

    /// `structuredAttrs`: the JSON in `__json`, when the derivation uses
    /// `__structuredAttrs = true`.
    pub fn structured_attrs(&self) -> Option<&[u8]> {
        self.env.get("__json").map(Vec::as_slice)
    }

    /// The system features the derivation requires of its builder
    /// (`requiredSystemFeatures`: a list in the structured attributes, or
    /// else words of the environment variable), as Nix reads them.
    pub fn required_system_features(&self) -> std::collections::BTreeSet<String> {
        if let Some(raw) = self.structured_attrs() {
            let v: serde_json::Value = serde_json::from_slice(raw).unwrap_or_default();
            return v
                .get("requiredSystemFeatures")
                .and_then(serde_json::Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|f| f.as_str().map(str::to_owned))
                .collect();
        }
        self.env
            .get("requiredSystemFeatures")
            .map(|v| {
                String::from_utf8_lossy(v)
                    .split_ascii_whitespace()
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The derivation in ATerm, as Nix writes it (sorted, escaped).
    pub fn to_aterm(&self) -> Vec<u8> {
        let mut w = Vec::new();
        w.extend_from_slice(b"Derive([");
        for (i, (name, o)) in self.outputs.iter().enumerate() {
            sep(&mut w, i);
            w.push(b'(');
            string(&mut w, name.as_bytes());
            w.push(b',');
            string(
                &mut w,
                o.path
                    .as_ref()
                    .map(|p| p.absolute())
                    .unwrap_or_default()
                    .as_bytes(),
            );
            w.push(b',');
            string(&mut w, o.hash_algo.as_bytes());
            w.push(b',');
            string(&mut w, o.hash.as_bytes());
            w.push(b')');
        }
        w.extend_from_slice(b"],[");
        for (i, (p, outs)) in self.input_derivations.iter().enumerate() {
            sep(&mut w, i);
            w.push(b'(');
            string(&mut w, p.absolute().as_bytes());
            w.extend_from_slice(b",[");
            for (j, o) in outs.iter().enumerate() {
                sep(&mut w, j);
                string(&mut w, o.as_bytes());
            }
            w.extend_from_slice(b"])");
        }
        w.extend_from_slice(b"],[");
        for (i, p) in self.input_sources.iter().enumerate() {
            sep(&mut w, i);
            string(&mut w, p.absolute().as_bytes());
        }
        w.extend_from_slice(b"],");
        string(&mut w, self.system.as_bytes());
        w.push(b',');
        string(&mut w, self.builder.as_bytes());
        w.extend_from_slice(b",[");
        for (i, a) in self.args.iter().enumerate() {
            sep(&mut w, i);
            string(&mut w, a.as_bytes());
        }
        w.extend_from_slice(b"],[");
        for (i, (k, v)) in self.env.iter().enumerate() {
            sep(&mut w, i);
            w.push(b'(');
            string(&mut w, k.as_bytes());
            w.push(b',');
            string(&mut w, v);
            w.push(b')');
        }
        w.extend_from_slice(b"])");
        w
    }
}

fn sep(w: &mut Vec<u8>, i: usize) {
    if i > 0 {
        w.push(b',');
    }
}

/// A string in Nix's ATerm escaping: `"` `\` newline, CR and tab escaped.
fn string(w: &mut Vec<u8>, s: &[u8]) {
    w.push(b'"');
    for &c in s {
        match c {
            b'"' => w.extend_from_slice(b"\\\""),
            b'\\' => w.extend_from_slice(b"\\\\"),
            b'\n' => w.extend_from_slice(b"\\n"),
            b'\r' => w.extend_from_slice(b"\\r"),
            b'\t' => w.extend_from_slice(b"\\t"),
            _ => w.push(c),
        }
    }
    w.push(b'"');
}
