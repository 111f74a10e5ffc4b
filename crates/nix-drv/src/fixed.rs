//! The check Nix makes of a fixed-output derivation's output: its hash
//! must be the one the derivation declares. Such a build gets the network
//! because its result is known in advance, so the check is what keeps it
//! honest; a mismatch fails the build, as in Nix.

use crate::derivation::{FixedOutput, HashMode};
use crate::result::nar_hash_string;
use crate::store_path::StorePath;

/// What was found of the output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    /// The sha256 of its NAR (always known).
    Nar([u8; 32]),
    /// For a flat hash: the sha256 of the file's contents, or `None` when
    /// the output is not a regular, non-executable file.
    Flat(Option<[u8; 32]>),
}

/// Why a fixed output fails its check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FixedError {
    #[error("hash mismatch in fixed-output derivation {path}: specified {want}, got {got}")]
    Mismatch {
        path: String,
        want: String,
        got: String,
    },
    #[error("fixed output {0} should be a non-executable regular file, since its hash is flat")]
    NotAFlatFile(String),
    #[error(
        "fixed output {path}: hash {algo} in mode {mode:?} is not supported (only sha256, flat or recursive)"
    )]
    Unsupported {
        path: String,
        algo: String,
        mode: HashMode,
    },
    #[error("fixed output {path}: the declared hash {hash:?} is not 64 hex digits")]
    BadHash { path: String, hash: String },
}

/// What the check needs hashed: `Some(true)` the flat file, `Some(false)`
/// the NAR; an error where the declaration cannot be checked.
pub fn needs_flat(fo: &FixedOutput, path: &StorePath) -> Result<bool, FixedError> {
    expected(fo, path).map(|_| fo.mode == HashMode::Flat)
}

fn expected(fo: &FixedOutput, path: &StorePath) -> Result<[u8; 32], FixedError> {
    if fo.algo != "sha256" || fo.mode == HashMode::Text {
        return Err(FixedError::Unsupported {
            path: path.absolute(),
            algo: fo.algo.clone(),
            mode: fo.mode,
        });
    }
    let bad = || FixedError::BadHash {
        path: path.absolute(),
        hash: fo.hash.clone(),
    };
    let h = fo.hash.as_bytes();
    if h.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, pair) in h.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).map_err(|_| bad())?;
        out[i] = u8::from_str_radix(s, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// Checks `found` against the declaration.
pub fn check(fo: &FixedOutput, path: &StorePath, found: Found) -> Result<(), FixedError> {
    let want = expected(fo, path)?;
    let got = match (fo.mode, found) {
        (HashMode::Recursive, Found::Nar(h)) => h,
        (HashMode::Flat, Found::Flat(Some(h))) => h,
        (HashMode::Flat, Found::Flat(None)) => {
            return Err(FixedError::NotAFlatFile(path.absolute()));
        }
        _ => {
            return Err(FixedError::Unsupported {
                path: path.absolute(),
                algo: fo.algo.clone(),
                mode: fo.mode,
            });
        }
    };
    if got == want {
        return Ok(());
    }
    Err(FixedError::Mismatch {
        path: path.absolute(),
        want: nar_hash_string(&want),
        got: nar_hash_string(&got),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn fo(mode: HashMode, hash: &str) -> FixedOutput {
        FixedOutput {
            mode,
            algo: "sha256".into(),
            hash: hash.into(),
        }
    }

    #[test]
    fn flat_and_recursive() {
        let p = StorePath::from_base_name("z3fkxq776sczc1iblcgcwmgdy9xfqyd2-fod").unwrap();
        let hi: [u8; 32] = Sha256::digest(b"hi\n").into();
        let hex = "98ea6e4f216f2fb4b69fff9b3a44842c38686ca685f3f55dc48c5d3fb1107be4";
        let flat = fo(HashMode::Flat, hex);
        assert_eq!(check(&flat, &p, Found::Flat(Some(hi))), Ok(()));
        assert!(needs_flat(&flat, &p).unwrap());
        let e = check(&flat, &p, Found::Flat(Some([0; 32]))).unwrap_err();
        assert!(
            e.to_string().contains("hash mismatch") && e.to_string().contains("-fod"),
            "{e}"
        );
        assert!(matches!(
            check(&flat, &p, Found::Flat(None)),
            Err(FixedError::NotAFlatFile(_))
        ));
        let rec = fo(HashMode::Recursive, hex);
        assert_eq!(check(&rec, &p, Found::Nar(hi)), Ok(()));
        assert!(check(&rec, &p, Found::Nar([1; 32])).is_err());
        assert!(matches!(
            check(&fo(HashMode::Flat, "xyz"), &p, Found::Flat(Some(hi))),
            Err(FixedError::BadHash { .. })
        ));
        let sha1 = FixedOutput {
            algo: "sha1".into(),
            ..flat.clone()
        };
        assert!(matches!(
            needs_flat(&sha1, &p),
            Err(FixedError::Unsupported { .. })
        ));
    }
}
