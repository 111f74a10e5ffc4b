//! Store paths: `/nix/store/<hash>-<name>`, the 32-character nix-base32
//! hash part (20 bytes) and the name. Derivations name their outputs and
//! inputs by store path; the build request names inputs by base name and
//! offers hash parts as refscan needles.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::base32;

/// Nix's store directory; the only one supported.
pub const STORE_DIR: &str = "/nix/store";
/// Length of the hash part.
pub const HASH_LEN: usize = 32;
/// Longest name Nix accepts.
pub const MAX_NAME_LEN: usize = 211;

/// A valid store path below [`STORE_DIR`].
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StorePath {
    /// `<hash>-<name>`.
    base: String,
}

/// Why a string is not a store path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorePathError {
    #[error("store path {0:?} is not below {STORE_DIR}/")]
    NotInStore(String),
    #[error("store path {0:?} has no 32-character nix-base32 hash part followed by '-'")]
    BadHash(String),
    #[error(
        "store path {0:?} has a name that is empty, longer than {MAX_NAME_LEN}, starts with '.' or holds a character outside [A-Za-z0-9+-._?=]"
    )]
    BadName(String),
}

fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"+-._?=".contains(&c))
}

impl StorePath {
    /// Parses an absolute store path (`/nix/store/<hash>-<name>`, nothing
    /// below it).
    pub fn from_absolute(s: &str) -> Result<Self, StorePathError> {
        let base = s
            .strip_prefix(STORE_DIR)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| StorePathError::NotInStore(s.to_owned()))?;
        Self::from_base_name(base).map_err(|e| match e {
            StorePathError::BadHash(_) => StorePathError::BadHash(s.to_owned()),
            StorePathError::BadName(_) => StorePathError::BadName(s.to_owned()),
            other => other,
        })
    }

    /// Parses `<hash>-<name>`.
    pub fn from_base_name(base: &str) -> Result<Self, StorePathError> {
        let b = base.as_bytes();
        if b.len() <= HASH_LEN
            || b[HASH_LEN] != b'-'
            || !b[..HASH_LEN].iter().all(|&c| base32::is_char(c))
        {
            return Err(StorePathError::BadHash(base.to_owned()));
        }
        if !name_ok(&base[HASH_LEN + 1..]) {
            return Err(StorePathError::BadName(base.to_owned()));
        }
        Ok(Self {
            base: base.to_owned(),
        })
    }

    /// The path Nix makes from a fingerprint's type (`source`,
    /// `output:out`, `text`…) and inner sha256 (for `source`, of the NAR):
    /// `sha256("<type>:sha256:<hex>:/nix/store:<name>")` compressed to 20
    /// bytes by XOR, in nix-base32.
    pub fn make(kind: &str, inner_sha256: &[u8; 32], name: &str) -> Result<Self, StorePathError> {
        let hex: String = inner_sha256.iter().map(|b| format!("{b:02x}")).collect();
        let fp = format!("{kind}:sha256:{hex}:{STORE_DIR}:{name}");
        let h = Sha256::digest(fp.as_bytes());
        let mut c = [0u8; 20];
        for (i, b) in h.iter().enumerate() {
            c[i % 20] ^= b;
        }
        Self::from_base_name(&format!("{}-{name}", base32::encode(&c)))
    }

    /// `<hash>-<name>`: how the build request names it.
    pub fn base_name(&self) -> &str {
        &self.base
    }

    /// The 32-character hash part: the refscan needle.
    pub fn hash_part(&self) -> &str {
        &self.base[..HASH_LEN]
    }

    /// The name after the hash.
    pub fn name(&self) -> &str {
        &self.base[HASH_LEN + 1..]
    }

    /// `/nix/store/<hash>-<name>`.
    pub fn absolute(&self) -> String {
        format!("{STORE_DIR}/{}", self.base)
    }

    /// `nix/store/<hash>-<name>`: the path relative to the build's root.
    pub fn relative(&self) -> String {
        format!("{}/{}", &STORE_DIR[1..], self.base)
    }
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{STORE_DIR}/{}", self.base)
    }
}

impl fmt::Debug for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorePath({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts() {
        let p = StorePath::from_absolute("/nix/store/i72sh5s677q84k6rwyjdpx0p2j0x962f-busybox")
            .unwrap();
        assert_eq!(p.hash_part(), "i72sh5s677q84k6rwyjdpx0p2j0x962f");
        assert_eq!(p.name(), "busybox");
        assert_eq!(
            p.relative(),
            "nix/store/i72sh5s677q84k6rwyjdpx0p2j0x962f-busybox"
        );
        assert_eq!(p.to_string(), p.absolute());
    }

    #[test]
    fn make_matches_nix() {
        // The busybox tree of ../shared/peer-requests: its NAR's sha256 and
        // the name give the path both peers and Nix computed.
        let nar: [u8; 32] = [
            0xf1, 0x2e, 0x59, 0xea, 0x3f, 0x1e, 0x4d, 0xba, 0x32, 0x87, 0x03, 0xde, 0xc8, 0xa6,
            0x98, 0x1f, 0xac, 0x90, 0xb1, 0x88, 0x01, 0x34, 0xe8, 0x59, 0xaf, 0x0f, 0x58, 0x9e,
            0x0a, 0x9f, 0x45, 0x1e,
        ];
        let p = StorePath::make("source", &nar, "busybox").unwrap();
        assert_eq!(p.base_name(), "i72sh5s677q84k6rwyjdpx0p2j0x962f-busybox");
    }

    #[test]
    fn rejects() {
        let h = "i72sh5s677q84k6rwyjdpx0p2j0x962f";
        for (s, want) in [
            ("/tmp/x".to_owned(), "not below"),
            (format!("/nix/store/{h}"), "hash part"),
            (format!("/nix/store/{h}-"), "name"),
            (format!("/nix/store/{h}-.hidden"), "name"),
            (format!("/nix/store/{h}-a/b"), "name"),
            (format!("/nix/store/{h}-a b"), "name"),
            (
                "/nix/store/e72sh5s677q84k6rwyjdpx0p2j0x962f-x".to_owned(),
                "hash part",
            ),
            (format!("/nix/store/{h}-{}", "a".repeat(212)), "name"),
            (
                "/nix/store/ÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿÿ-x".to_owned(),
                "hash part",
            ),
        ] {
            let e = StorePath::from_absolute(&s).unwrap_err().to_string();
            assert!(
                e.contains(want) && e.contains(s.get(..6).unwrap_or(&s)),
                "{s}: {e}"
            );
        }
    }
}
