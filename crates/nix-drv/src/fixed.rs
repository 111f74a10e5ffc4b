//! The check Nix makes of a fixed-output derivation's output: its hash
//! must be the one the derivation declares. Such a build gets the network
//! because its result is known in advance, so the check is what keeps it
//! honest; a mismatch fails the build, as in Nix.

use crate::derivation::{FixedOutput, HashMode};
use sha2::Digest;

use crate::base32;
use crate::store_path::StorePath;

/// A hash algorithm a fixed output may declare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algo {
    Sha1,
    Sha256,
    Sha512,
}

impl Algo {
    fn parse(s: &str) -> Option<Algo> {
        match s {
            "sha1" => Some(Algo::Sha1),
            "sha256" => Some(Algo::Sha256),
            "sha512" => Some(Algo::Sha512),
            _ => None,
        }
    }

    /// Digest length in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            Algo::Sha1 => 20,
            Algo::Sha256 => 32,
            Algo::Sha512 => 64,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Algo::Sha1 => "sha1",
            Algo::Sha256 => "sha256",
            Algo::Sha512 => "sha512",
        }
    }

    /// The digest of `data` (for a flat file's contents).
    pub fn hasher(self) -> Hasher {
        match self {
            Algo::Sha1 => Hasher::Sha1(sha1::Sha1::new()),
            Algo::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algo::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }
}

/// A running digest of one of the [`Algo`]s.
#[derive(Debug)]
pub enum Hasher {
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha1(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    pub fn finish(self) -> Vec<u8> {
        match self {
            Hasher::Sha1(h) => h.finalize().to_vec(),
            Hasher::Sha256(h) => h.finalize().to_vec(),
            Hasher::Sha512(h) => h.finalize().to_vec(),
        }
    }
}

/// What was found of the output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// For a recursive hash: the digest (in the declared algorithm) of its
    /// NAR.
    Nar(Vec<u8>),
    /// For a flat hash: the digest (in the declared algorithm) of the
    /// file's contents, or `None` when the output is not a regular,
    /// non-executable file.
    Flat(Option<Vec<u8>>),
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
        "fixed output {path}: hash {algo} in mode {mode:?} is not supported (sha1, sha256 or sha512, flat or recursive)"
    )]
    Unsupported {
        path: String,
        algo: String,
        mode: HashMode,
    },
    #[error(
        "fixed output {path}: the declared hash {hash:?} is not a {algo} in hex, nix-base32, base64 or SRI"
    )]
    BadHash {
        path: String,
        algo: String,
        hash: String,
    },
    #[error("illegal path references in fixed-output derivation {path}: {}", .refs.join(", "))]
    References { path: String, refs: Vec<String> },
}

/// What the check needs hashed with `algo`: `Ok((true, algo))` the flat
/// file's contents, `Ok((false, algo))` the output's NAR (as Nix 2.8 does
/// for `outputHashMode = "recursive"` in any of the three); an error where
/// the declaration cannot be checked.
pub fn needs_flat(fo: &FixedOutput, path: &StorePath) -> Result<(bool, Algo), FixedError> {
    expected(fo, path).map(|(a, _)| (fo.mode == HashMode::Flat, a))
}

/// A hash as Nix's `Hash::parseAny` reads one of `algo`: optionally
/// prefixed `algo:` or in SRI form `algo-<base64>`, else told apart by its
/// length: hex, nix-base32 or base64.
pub fn parse_hash(algo: &str, s: &str) -> Option<Vec<u8>> {
    let a = Algo::parse(algo)?;
    let n = a.digest_len();
    if let Some(b64) = s.strip_prefix(&format!("{algo}-")) {
        return decode_base64(b64, n);
    }
    let s = s.strip_prefix(&format!("{algo}:")).unwrap_or(s);
    if s.len() == 2 * n {
        return data_encoding::HEXLOWER_PERMISSIVE.decode(s.as_bytes()).ok();
    }
    if s.len() == base32::encoded_len(n) {
        return base32::decode(s).ok().filter(|b| b.len() == n);
    }
    decode_base64(s, n)
}

fn decode_base64(s: &str, n: usize) -> Option<Vec<u8>> {
    data_encoding::BASE64
        .decode(s.as_bytes())
        .ok()
        .filter(|b| b.len() == n)
}

fn expected(fo: &FixedOutput, path: &StorePath) -> Result<(Algo, Vec<u8>), FixedError> {
    let unsupported = || FixedError::Unsupported {
        path: path.absolute(),
        algo: fo.algo.clone(),
        mode: fo.mode,
    };
    let algo = Algo::parse(&fo.algo).ok_or_else(unsupported)?;
    if fo.mode == HashMode::Text {
        return Err(unsupported());
    }
    let h = parse_hash(&fo.algo, &fo.hash).ok_or_else(|| FixedError::BadHash {
        path: path.absolute(),
        algo: fo.algo.clone(),
        hash: fo.hash.clone(),
    })?;
    Ok((algo, h))
}

/// Checks `found` against the declaration.
pub fn check(fo: &FixedOutput, path: &StorePath, found: Found) -> Result<(), FixedError> {
    let (algo, want) = expected(fo, path)?;
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
    let show = |h: &[u8]| format!("{}:{}", algo.name(), base32::encode(h));
    Err(FixedError::Mismatch {
        path: path.absolute(),
        want: show(&want),
        got: show(&got),
    })
}

/// A fixed output refers to nothing (Nix 2.8 fails such a build too).
pub fn check_no_references(path: &StorePath, refs: &[String]) -> Result<(), FixedError> {
    if refs.is_empty() {
        return Ok(());
    }
    Err(FixedError::References {
        path: path.absolute(),
        refs: refs.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Sha256, Sha512};

    fn fo(mode: HashMode, algo: &str, hash: &str) -> FixedOutput {
        FixedOutput {
            mode,
            algo: algo.into(),
            hash: hash.into(),
        }
    }

    #[test]
    fn flat_and_recursive() {
        let p = StorePath::from_base_name("z3fkxq776sczc1iblcgcwmgdy9xfqyd2-fod").unwrap();
        let hi = Sha256::digest(b"hi\n").to_vec();
        let hex = "98ea6e4f216f2fb4b69fff9b3a44842c38686ca685f3f55dc48c5d3fb1107be4";
        let flat = fo(HashMode::Flat, "sha256", hex);
        assert_eq!(check(&flat, &p, Found::Flat(Some(hi.clone()))), Ok(()));
        assert_eq!(needs_flat(&flat, &p).unwrap(), (true, Algo::Sha256));
        let e = check(&flat, &p, Found::Flat(Some(vec![0; 32]))).unwrap_err();
        assert!(
            e.to_string().contains("hash mismatch") && e.to_string().contains("-fod"),
            "{e}"
        );
        assert!(matches!(
            check(&flat, &p, Found::Flat(None)),
            Err(FixedError::NotAFlatFile(_))
        ));
        let rec = fo(HashMode::Recursive, "sha256", hex);
        assert_eq!(check(&rec, &p, Found::Nar(hi.clone())), Ok(()));
        assert!(check(&rec, &p, Found::Nar(vec![1; 32])).is_err());
        assert!(matches!(
            check(
                &fo(HashMode::Flat, "sha256", "xyz"),
                &p,
                Found::Flat(Some(hi))
            ),
            Err(FixedError::BadHash { .. })
        ));
        // Recursive in sha1 and sha512 too (Nix 2.8 builds both): the NAR
        // is hashed in the declared algorithm.
        for (algo, n) in [(Algo::Sha1, 20), (Algo::Sha512, 64)] {
            let rec = fo(HashMode::Recursive, algo.name(), &"0".repeat(2 * n));
            assert_eq!(needs_flat(&rec, &p).unwrap(), (false, algo));
            assert_eq!(check(&rec, &p, Found::Nar(vec![0; n])), Ok(()));
            let e = check(&rec, &p, Found::Nar(vec![1; n])).unwrap_err();
            assert!(e.to_string().contains(&format!("{}:", algo.name())), "{e}");
        }
        for (mode, algo) in [(HashMode::Flat, "md5"), (HashMode::Text, "sha256")] {
            assert!(matches!(
                needs_flat(&fo(mode, algo, hex), &p),
                Err(FixedError::Unsupported { .. })
            ));
        }
    }

    #[test]
    fn every_encoding_nix_reads() {
        let d = Sha256::digest(b"hi\n").to_vec();
        let hex = "98ea6e4f216f2fb4b69fff9b3a44842c38686ca685f3f55dc48c5d3fb1107be4";
        let b32 = base32::encode(&d);
        let b64 = data_encoding::BASE64.encode(&d);
        for s in [
            hex.to_owned(),
            hex.to_uppercase(),
            format!("sha256:{hex}"),
            b32.clone(),
            format!("sha256:{b32}"),
            b64.clone(),
            format!("sha256-{b64}"),
        ] {
            assert_eq!(parse_hash("sha256", &s).as_deref(), Some(&d[..]), "{s}");
        }
        assert_eq!(parse_hash("sha256", &format!("sha512-{b64}")), None);
        assert_eq!(parse_hash("sha256", &hex[2..]), None);
        let d5 = Sha512::digest(b"hi\n").to_vec();
        let p = StorePath::from_base_name("z3fkxq776sczc1iblcgcwmgdy9xfqyd2-fod").unwrap();
        let f = fo(
            HashMode::Flat,
            "sha512",
            &format!("sha512-{}", data_encoding::BASE64.encode(&d5)),
        );
        assert_eq!(needs_flat(&f, &p).unwrap(), (true, Algo::Sha512));
        let mut h = Algo::Sha512.hasher();
        h.update(b"hi\n");
        assert_eq!(check(&f, &p, Found::Flat(Some(h.finish()))), Ok(()));
        let e = check(&f, &p, Found::Flat(Some(vec![0; 64]))).unwrap_err();
        assert!(e.to_string().contains("specified sha512:"), "{e}");
        let s1 = fo(
            HashMode::Flat,
            "sha1",
            "55ca6286e3e4f4fba5d0448333fa99fc5a404a73",
        );
        let mut h = needs_flat(&s1, &p).unwrap().1.hasher();
        h.update(b"hi\n");
        assert_eq!(check(&s1, &p, Found::Flat(Some(h.finish()))), Ok(()));
    }

    #[test]
    fn a_fixed_output_refers_to_nothing() {
        let p = StorePath::from_base_name("z3fkxq776sczc1iblcgcwmgdy9xfqyd2-fod").unwrap();
        assert_eq!(check_no_references(&p, &[]), Ok(()));
        let e = check_no_references(&p, &["/nix/store/x-bb".into()]).unwrap_err();
        assert!(
            e.to_string().contains("-fod") && e.to_string().contains("x-bb"),
            "{e}"
        );
    }
}
