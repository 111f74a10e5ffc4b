//! BLAKE3 digests: the names of everything in the castore.
//!
//! A blob's digest is BLAKE3-256 of its bytes; a Directory's digest is
//! BLAKE3-256 of its canonical protobuf encoding. Humans see lowercase hex;
//! input accepts hex or standard padded base64 (what tvix prints).

use std::fmt;
use std::str::FromStr;

use data_encoding::{BASE64, HEXLOWER, HEXLOWER_PERMISSIVE};

/// Length in bytes of a BLAKE3-256 digest.
pub const B3_LEN: usize = 32;

/// A BLAKE3-256 digest (32 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct B3Digest([u8; B3_LEN]);

/// Why bytes or a string are not a [`B3Digest`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("a digest must be {B3_LEN} bytes, got {0}")]
    InvalidLength(usize),
    #[error("{0:?} is neither 64 hex digits nor 44 characters of base64")]
    InvalidString(String),
}

impl B3Digest {
    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        Self(*blake3::hash(data).as_bytes())
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; B3_LEN] {
        &self.0
    }

    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        HEXLOWER.encode(&self.0)
    }

    /// Standard padded base64, as tvix prints digests.
    pub fn to_base64(&self) -> String {
        BASE64.encode(&self.0)
    }
}

impl From<[u8; B3_LEN]> for B3Digest {
    fn from(b: [u8; B3_LEN]) -> Self {
        Self(b)
    }
}

impl From<blake3::Hash> for B3Digest {
    fn from(h: blake3::Hash) -> Self {
        Self(*h.as_bytes())
    }
}

impl From<B3Digest> for bytes::Bytes {
    fn from(d: B3Digest) -> Self {
        bytes::Bytes::copy_from_slice(&d.0)
    }
}

impl TryFrom<&[u8]> for B3Digest {
    type Error = DigestError;
    fn try_from(b: &[u8]) -> Result<Self, DigestError> {
        <[u8; B3_LEN]>::try_from(b)
            .map(Self)
            .map_err(|_| DigestError::InvalidLength(b.len()))
    }
}

impl TryFrom<&bytes::Bytes> for B3Digest {
    type Error = DigestError;
    fn try_from(b: &bytes::Bytes) -> Result<Self, DigestError> {
        Self::try_from(b.as_ref())
    }
}

impl FromStr for B3Digest {
    type Err = DigestError;
    /// Parses 64 hex digits (either case) or 44 characters of padded base64.
    fn from_str(s: &str) -> Result<Self, DigestError> {
        let bad = || DigestError::InvalidString(s.to_owned());
        let bytes = match s.len() {
            64 => HEXLOWER_PERMISSIVE
                .decode(s.as_bytes())
                .map_err(|_| bad())?,
            44 => BASE64.decode(s.as_bytes()).map_err(|_| bad())?,
            _ => return Err(bad()),
        };
        Self::try_from(bytes.as_slice()).map_err(|_| bad())
    }
}

impl fmt::Display for B3Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for B3Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b3:{}", self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262";

    #[test]
    fn blob_vectors() {
        assert_eq!(B3Digest::of(b"").to_hex(), EMPTY);
        assert_eq!(
            B3Digest::of(b"Hello World!").to_hex(),
            "5ca7815adcb484e9a136c11efe69c1d530176d549b5d18d038eb5280b4b3470c"
        );
    }

    #[test]
    fn parses_hex_and_base64() {
        let d: B3Digest = EMPTY.parse().unwrap();
        assert_eq!(d.to_base64().parse::<B3Digest>().unwrap(), d);
        assert_eq!(EMPTY.to_uppercase().parse::<B3Digest>().unwrap(), d);
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(
            B3Digest::try_from(&[0u8; 31][..]),
            Err(DigestError::InvalidLength(31))
        );
        assert!("abc".parse::<B3Digest>().is_err());
        assert!("z".repeat(64).parse::<B3Digest>().is_err());
        assert!("!".repeat(44).parse::<B3Digest>().is_err());
    }
}
