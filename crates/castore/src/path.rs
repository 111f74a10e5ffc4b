//! Validated names: [`PathComponent`] is one entry name inside a Directory
//! (or the name of a root node), and [`SymlinkTarget`] a symlink's target.
//! Both are checked once, when built, so the rest of the crate can trust them.

use std::fmt;

use bytes::Bytes;

/// Why a name or target is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("a name must not be empty")]
    Empty,
    #[error("a name must not be {0:?}")]
    Dot(String),
    #[error("name {0:?} contains a slash")]
    Slash(String),
    #[error("name {0:?} contains a NUL byte")]
    Nul(String),
    #[error("a symlink target must not be empty")]
    EmptyTarget,
    #[error("symlink target {0:?} contains a NUL byte")]
    NulInTarget(String),
}

/// One path component: non-empty, not `.` or `..`, no `/`, no NUL (the rules
/// tvix and snix enforce). Arbitrary other bytes, including non-UTF-8, are
/// allowed. Orders bytewise.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PathComponent(Bytes);

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl PathComponent {
    /// The raw bytes of the name.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The name as shared `Bytes`.
    pub fn to_bytes(&self) -> Bytes {
        self.0.clone()
    }
}

impl TryFrom<Bytes> for PathComponent {
    type Error = NameError;
    fn try_from(b: Bytes) -> Result<Self, NameError> {
        match b.as_ref() {
            [] => Err(NameError::Empty),
            b"." | b".." => Err(NameError::Dot(lossy(&b))),
            n if n.contains(&b'/') => Err(NameError::Slash(lossy(n))),
            n if n.contains(&0) => Err(NameError::Nul(lossy(n))),
            _ => Ok(Self(b)),
        }
    }
}

impl TryFrom<&[u8]> for PathComponent {
    type Error = NameError;
    fn try_from(b: &[u8]) -> Result<Self, NameError> {
        Self::try_from(Bytes::copy_from_slice(b))
    }
}

impl TryFrom<&str> for PathComponent {
    type Error = NameError;
    fn try_from(s: &str) -> Result<Self, NameError> {
        Self::try_from(s.as_bytes())
    }
}

impl AsRef<[u8]> for PathComponent {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Display for PathComponent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

impl fmt::Debug for PathComponent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

/// A symlink target: non-empty, no NUL. It may be absolute or contain `..`:
/// it is data, never followed by the castore.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SymlinkTarget(Bytes);

impl SymlinkTarget {
    /// The raw bytes of the target.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The target as shared `Bytes`.
    pub fn to_bytes(&self) -> Bytes {
        self.0.clone()
    }
}

impl TryFrom<Bytes> for SymlinkTarget {
    type Error = NameError;
    fn try_from(b: Bytes) -> Result<Self, NameError> {
        if b.is_empty() {
            Err(NameError::EmptyTarget)
        } else if b.contains(&0) {
            Err(NameError::NulInTarget(lossy(&b)))
        } else {
            Ok(Self(b))
        }
    }
}

impl TryFrom<&[u8]> for SymlinkTarget {
    type Error = NameError;
    fn try_from(b: &[u8]) -> Result<Self, NameError> {
        Self::try_from(Bytes::copy_from_slice(b))
    }
}

impl TryFrom<&str> for SymlinkTarget {
    type Error = NameError;
    fn try_from(s: &str) -> Result<Self, NameError> {
        Self::try_from(s.as_bytes())
    }
}

impl AsRef<[u8]> for SymlinkTarget {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Display for SymlinkTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

impl fmt::Debug for SymlinkTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_names() {
        for n in [&b"a"[..], b"...", b"with space", b"\xff\xfe", b".keep"] {
            assert!(PathComponent::try_from(n).is_ok(), "{n:?}");
        }
    }

    #[test]
    fn invalid_names() {
        assert_eq!(PathComponent::try_from(""), Err(NameError::Empty));
        assert!(matches!(
            PathComponent::try_from("."),
            Err(NameError::Dot(_))
        ));
        assert!(matches!(
            PathComponent::try_from(".."),
            Err(NameError::Dot(_))
        ));
        assert!(matches!(
            PathComponent::try_from("a/b"),
            Err(NameError::Slash(_))
        ));
        assert!(matches!(
            PathComponent::try_from("a\0b"),
            Err(NameError::Nul(_))
        ));
    }

    #[test]
    fn targets() {
        assert!(SymlinkTarget::try_from("/nix/store/x").is_ok());
        assert!(SymlinkTarget::try_from("../..").is_ok());
        assert_eq!(SymlinkTarget::try_from(""), Err(NameError::EmptyTarget));
        assert!(SymlinkTarget::try_from("a\0").is_err());
    }
}
