//! Clean paths: the relative paths of a build request (`build`,
//! `nix/store/abc-out`) and the absolute host paths of `available_ro_paths`,
//! checked once so the rest of the crate can compare them component-wise.

use std::fmt;

/// A clean relative path: non-empty, no leading or trailing `/`, no empty,
/// `.` or `..` component, no NUL.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CleanPath(String);

impl CleanPath {
    /// Checks `s`; the error says what is wrong in a few words.
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        if s.is_empty() {
            return Err("is empty");
        }
        if s.contains('\0') {
            return Err("contains a NUL byte");
        }
        if s.starts_with('/') {
            return Err("must be relative (it starts with /)");
        }
        if s.ends_with('/') {
            return Err("ends with /");
        }
        for c in s.split('/') {
            match c {
                "" => return Err("has an empty component (//)"),
                "." => return Err("has a . component"),
                ".." => return Err("has a .. component"),
                _ => {}
            }
        }
        Ok(Self(s.to_owned()))
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The components.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// Whether `self` is `other` or below it.
    pub fn starts_with(&self, other: &CleanPath) -> bool {
        self.strip_prefix(other).is_some()
    }

    /// Whether `self` is strictly below `other`.
    pub fn is_below(&self, other: &CleanPath) -> bool {
        self.strip_prefix(other).is_some_and(|r| !r.is_empty())
    }

    /// What is left of `self` below `other` ("" when equal), or `None` when
    /// `self` is not `other` or below it.
    pub fn strip_prefix(&self, other: &CleanPath) -> Option<&str> {
        let rest = self.0.strip_prefix(other.0.as_str())?;
        if rest.is_empty() {
            Some("")
        } else {
            rest.strip_prefix('/')
        }
    }

    /// The last component.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// The first component.
    pub fn first(&self) -> &str {
        self.0.split('/').next().unwrap_or(&self.0)
    }
}

impl fmt::Display for CleanPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A clean absolute path (a host path), not `/` itself.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AbsPath(CleanPath);

impl AbsPath {
    /// Checks `s`; the error says what is wrong in a few words.
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        let rest = s.strip_prefix('/').ok_or("must be absolute")?;
        if rest.is_empty() {
            return Err("must not be / itself");
        }
        CleanPath::parse(rest).map(Self)
    }

    /// The path without its leading `/`.
    pub fn relative(&self) -> &CleanPath {
        &self.0
    }

    /// The path with its leading `/`.
    pub fn to_host(&self) -> String {
        format!("/{}", self.0)
    }
}

impl fmt::Display for AbsPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean() {
        for ok in ["a", "nix/store", "a/b c/d", "..a", "a.."] {
            assert!(CleanPath::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "/a", "a/", "a//b", "./a", "a/..", "a/./b", "a\0b"] {
            assert!(CleanPath::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prefixes() {
        let p = |s| CleanPath::parse(s).unwrap();
        assert_eq!(p("nix/store/x").strip_prefix(&p("nix/store")), Some("x"));
        assert_eq!(p("nix/store").strip_prefix(&p("nix/store")), Some(""));
        assert_eq!(p("nix/storex").strip_prefix(&p("nix/store")), None);
        assert!(p("nix/store/x").is_below(&p("nix")));
        assert!(!p("nix").is_below(&p("nix")));
        assert_eq!(p("a/b/c").file_name(), "c");
        assert_eq!(p("a/b/c").first(), "a");
    }

    #[test]
    fn absolute() {
        assert_eq!(AbsPath::parse("/dev/kvm").unwrap().to_host(), "/dev/kvm");
        for bad in ["/", "dev/kvm", "/dev/", "/a/../b", ""] {
            assert!(AbsPath::parse(bad).is_err(), "{bad}");
        }
    }
}
