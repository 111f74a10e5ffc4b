//! Nix's base32 ("nix-base32"): the alphabet `0-9a-z` without `e o u t`,
//! read from the last 5-bit group of the input to the first. Store path
//! hashes, `.attr-` file names and the NAR hashes Nix prints use it; no
//! general base32 crate speaks it, because of that reversed bit order.

/// The 32 characters, in value order.
pub const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// The length of `n` bytes in nix-base32.
pub const fn encoded_len(n: usize) -> usize {
    (n * 8).div_ceil(5)
}

/// `bytes` in nix-base32.
pub fn encode(bytes: &[u8]) -> String {
    let len = encoded_len(bytes.len());
    let mut out = String::with_capacity(len);
    for n in (0..len).rev() {
        let b = n * 5;
        let i = b / 8;
        let j = b % 8;
        let lo = u16::from(bytes[i]) >> j;
        let hi = bytes.get(i + 1).map_or(0, |&c| u16::from(c) << (8 - j));
        out.push(char::from(ALPHABET[usize::from((lo | hi) & 0x1f)]));
    }
    out
}

/// Why a string is not nix-base32.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{0:?} is not a nix-base32 character (at offset {1})")]
    BadChar(char, usize),
    #[error("nix-base32 of length {0} does not encode whole bytes")]
    BadLength(usize),
}

/// Decodes nix-base32 `s` (any length that encodes whole bytes; bits past
/// the last byte must be zero).
pub fn decode(s: &str) -> Result<Vec<u8>, DecodeError> {
    let n = s.len() * 5 / 8;
    if encoded_len(n) != s.len() {
        return Err(DecodeError::BadLength(s.len()));
    }
    let mut out = vec![0u8; n];
    for (k, c) in s.chars().rev().enumerate() {
        let v = ALPHABET
            .iter()
            .position(|&a| char::from(a) == c)
            .ok_or(DecodeError::BadChar(c, s.len() - 1 - k))? as u16;
        let b = k * 5;
        let i = b / 8;
        let j = b % 8;
        let shifted = v << j;
        if let Some(x) = out.get_mut(i) {
            *x |= (shifted & 0xff) as u8;
        } else if shifted != 0 {
            return Err(DecodeError::BadChar(c, s.len() - 1 - k));
        }
        let carry = (shifted >> 8) as u8;
        if carry != 0 {
            match out.get_mut(i + 1) {
                Some(x) => *x |= carry,
                None => return Err(DecodeError::BadChar(c, s.len() - 1 - k)),
            }
        }
    }
    Ok(out)
}

/// Whether `c` is in the alphabet.
pub fn is_char(c: u8) -> bool {
    ALPHABET.contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_values() {
        assert_eq!(encode(&[]), "");
        assert_eq!(encode(&[0x1f]), "0z");
        // sha256("big"): the name of the passAsFile file Nix writes for
        // the attribute `big` (peer-requests' pass-as-file fixture).
        use sha2::Digest;
        assert_eq!(
            encode(&sha2::Sha256::digest(b"big")),
            "1lak0mvllw8rv9i9ygkglvhqsq19qi9ynl4bi7gbf69ab5nzw89a"
        );
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(decode("0e"), Err(DecodeError::BadChar('e', 1)));
        assert_eq!(decode("000"), Err(DecodeError::BadLength(3)));
        // "zz" would need 10 bits in one byte.
        assert!(decode("zz").is_err());
    }

    proptest! {
        #[test]
        fn round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let s = encode(&bytes);
            prop_assert_eq!(s.len(), encoded_len(bytes.len()));
            prop_assert_eq!(decode(&s), Ok(bytes));
        }

        #[test]
        fn decode_never_panics(s in "[0-9a-z]{0,60}") {
            let _ = decode(&s);
        }
    }
}
