//! Order checks for streams of directories, the rules tvix and snix stores
//! enforce: a Put sends a closure leaves first, the root last, each directory
//! only referring to directories sent before it, with matching sizes; a
//! recursive Get sends the root first, then each directory only after one
//! that refers to it.

use std::collections::{HashMap, HashSet};

use crate::{B3Digest, ClosureError, Directory};

/// Checks a closure sent leaves first (a Put).
#[derive(Debug, Default)]
pub struct LeavesFirst {
    /// Size of every directory accepted so far.
    seen: HashMap<B3Digest, u64>,
    /// Child digests of every directory accepted so far.
    children: HashMap<B3Digest, Vec<B3Digest>>,
    last: Option<B3Digest>,
}

impl LeavesFirst {
    /// Accepts `dir` if every child it refers to was accepted before, with
    /// the size it claims. Returns its digest.
    pub fn add(&mut self, dir: &Directory) -> Result<B3Digest, ClosureError> {
        let digest = dir.digest();
        let mut kids = Vec::new();
        for (name, child, size) in dir.directories() {
            match self.seen.get(child) {
                None => {
                    return Err(ClosureError::ChildNotSent {
                        parent: digest,
                        name: name.to_string(),
                        child: *child,
                    });
                }
                Some(&recorded) if recorded != size => {
                    return Err(ClosureError::WrongSize {
                        parent: digest,
                        name: name.to_string(),
                        specified: size,
                        recorded,
                    });
                }
                Some(_) => kids.push(*child),
            }
        }
        self.seen.insert(digest, dir.size());
        self.children.insert(digest, kids);
        self.last = Some(digest);
        Ok(digest)
    }

    /// The root (the last directory), once every directory sent is
    /// reachable from it.
    pub fn finish(self) -> Result<B3Digest, ClosureError> {
        let root = self.last.ok_or(ClosureError::Empty)?;
        let mut reached = HashSet::from([root]);
        let mut todo = vec![root];
        while let Some(d) = todo.pop() {
            for c in self.children.get(&d).into_iter().flatten() {
                if reached.insert(*c) {
                    todo.push(*c);
                }
            }
        }
        if let Some(stray) = self.seen.keys().find(|d| !reached.contains(d)) {
            return Err(ClosureError::Disconnected(*stray, root));
        }
        Ok(root)
    }
}

/// Checks that `dir`, fetched for a node declaring `declared` (described
/// by `by`, e.g. "the root node" or a parent's entry), has that size: a
/// store serving a directory under a node of another size lies.
pub fn check_size(
    dir: &Directory,
    declared: u64,
    by: impl FnOnce() -> String,
) -> Result<(), ClosureError> {
    if dir.size() == declared {
        return Ok(());
    }
    Err(ClosureError::DeclaredSize {
        digest: dir.digest(),
        computed: dir.size(),
        declared,
        by: by(),
    })
}

/// Who refers to a directory, for [`ClosureError::DeclaredSize`].
pub fn entry_of(parent: &B3Digest, name: &impl std::fmt::Display) -> String {
    format!("directory {parent}'s entry {:?}", name.to_string())
}

/// Checks a closure received root first (a recursive Get): the order, and
/// that every directory has the size each node referring to it declares
/// (the root node's too, given to [`RootFirst::with_size`]).
#[derive(Debug)]
pub struct RootFirst {
    root: B3Digest,
    root_size: Option<u64>,
    /// Referred to but not yet received: the size declared, and by whom.
    expected: HashMap<B3Digest, (u64, String)>,
    /// Received, with their computed sizes.
    received: HashMap<B3Digest, u64>,
}

impl RootFirst {
    /// Expects the closure of `root`, whatever the root's size.
    pub fn new(root: B3Digest) -> Self {
        Self {
            root,
            root_size: None,
            expected: HashMap::new(),
            received: HashMap::new(),
        }
    }

    /// Expects the closure of the root node `root` of size `size`.
    pub fn with_size(root: B3Digest, size: u64) -> Self {
        Self {
            root_size: Some(size),
            ..Self::new(root)
        }
    }

    /// Accepts `dir` if it is the root (first) or was referred to by a
    /// directory received before, with a matching size.
    pub fn add(&mut self, dir: &Directory) -> Result<B3Digest, ClosureError> {
        let digest = dir.digest();
        if self.received.is_empty() {
            if digest != self.root {
                return Err(ClosureError::WrongRoot {
                    expected: self.root,
                    actual: digest,
                });
            }
            if let Some(size) = self.root_size {
                check_size(dir, size, || "the root node".to_owned())?;
            }
        } else {
            match self.expected.remove(&digest) {
                None => return Err(ClosureError::Unexpected(digest)),
                Some((size, by)) => check_size(dir, size, || by)?,
            }
        }
        self.received.insert(digest, dir.size());
        for (name, child, size) in dir.directories() {
            let by = || entry_of(&digest, name);
            // Met before: the size declared here must be the same.
            let known = match self.received.get(child) {
                Some(&computed) => Some((computed, "received".to_owned())),
                None => self.expected.get(child).cloned(),
            };
            match known {
                Some((other, _)) if other != size => {
                    return Err(ClosureError::DeclaredSize {
                        digest: *child,
                        computed: other,
                        declared: size,
                        by: by(),
                    });
                }
                Some(_) => {}
                None => {
                    self.expected.insert(*child, (size, by()));
                }
            }
        }
        Ok(digest)
    }

    /// Succeeds when everything referred to was received.
    pub fn finish(self) -> Result<(), ClosureError> {
        if self.received.is_empty() {
            return Err(ClosureError::Empty);
        }
        match self.expected.keys().next() {
            Some(missing) => Err(ClosureError::Missing(*missing)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Node, PathComponent};

    fn dir_with(children: &[(&str, &Directory)]) -> Directory {
        let mut d = Directory::new();
        for (n, c) in children {
            d.add(PathComponent::try_from(*n).unwrap(), c.as_node())
                .unwrap();
        }
        d
    }

    #[test]
    fn leaves_first() {
        let leaf = Directory::new();
        let mid = dir_with(&[("a", &leaf)]);
        let root = dir_with(&[("m", &mid), ("l", &leaf)]);
        let mut v = LeavesFirst::default();
        for d in [&leaf, &mid, &root] {
            v.add(d).unwrap();
        }
        assert_eq!(v.finish().unwrap(), root.digest());

        let mut v = LeavesFirst::default();
        let err = v.add(&mid).unwrap_err();
        assert!(matches!(err, ClosureError::ChildNotSent { .. }), "{err}");

        let mut v = LeavesFirst::default();
        v.add(&leaf).unwrap();
        v.add(&mid).unwrap();
        v.add(&dir_with(&[("x", &leaf)])).unwrap();
        assert!(matches!(v.finish(), Err(ClosureError::Disconnected(..))));
    }

    #[test]
    fn wrong_size_is_named() {
        let leaf = dir_with(&[("a", &Directory::new())]);
        let mut bad = Directory::new();
        bad.add(
            PathComponent::try_from("keep").unwrap(),
            Node::Directory {
                digest: leaf.digest(),
                size: 1,
            },
        )
        .unwrap();
        let mut v = LeavesFirst::default();
        v.add(&Directory::new()).unwrap();
        v.add(&leaf).unwrap();
        let err = v.add(&bad).unwrap_err().to_string();
        assert!(
            err.contains("\"keep\" has wrong size, specified 1, recorded 2"),
            "{err}"
        );
    }

    #[test]
    fn root_first() {
        let leaf = Directory::new();
        let mid = dir_with(&[("a", &leaf)]);
        let root = dir_with(&[("m", &mid)]);
        let mut v = RootFirst::new(root.digest());
        for d in [&root, &mid, &leaf] {
            v.add(d).unwrap();
        }
        v.finish().unwrap();

        let mut v = RootFirst::new(root.digest());
        assert!(matches!(v.add(&mid), Err(ClosureError::WrongRoot { .. })));
        let mut v = RootFirst::new(root.digest());
        v.add(&root).unwrap();
        assert!(matches!(v.add(&leaf), Err(ClosureError::Unexpected(_))));
        let mut v = RootFirst::new(root.digest());
        v.add(&root).unwrap();
        assert!(matches!(v.finish(), Err(ClosureError::Missing(_))));
    }

    #[test]
    fn root_size_and_sizes_met_twice_are_checked() {
        let leaf = dir_with(&[("a", &Directory::new())]);
        let root = dir_with(&[("m", &leaf)]);
        let mut v = RootFirst::with_size(root.digest(), root.size() + 1);
        let err = v.add(&root).unwrap_err();
        assert!(
            matches!(&err, ClosureError::DeclaredSize { declared, computed, .. }
                if *declared == root.size() + 1 && *computed == root.size()),
            "{err}"
        );
        assert!(err.to_string().contains("the root node"), "{err}");
        assert!(err.to_string().contains(&root.digest().to_hex()), "{err}");

        // A second parent declaring another size for a directory received.
        let mut lying = Directory::new();
        lying
            .add(
                PathComponent::try_from("again").unwrap(),
                Node::Directory {
                    digest: leaf.digest(),
                    size: 7,
                },
            )
            .unwrap();
        let top = dir_with(&[("l", &leaf), ("x", &lying)]);
        let mut v = RootFirst::with_size(top.digest(), top.size());
        v.add(&top).unwrap();
        v.add(&leaf).unwrap();
        let err = v.add(&lying).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&leaf.digest().to_hex()) && msg.contains(&lying.digest().to_hex()),
            "{msg}"
        );
        assert!(msg.contains("declares 7"), "{msg}");
    }
}
