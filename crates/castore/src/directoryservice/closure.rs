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

/// Checks a closure received root first (a recursive Get).
#[derive(Debug)]
pub struct RootFirst {
    root: B3Digest,
    /// Referred to but not yet received, with the size the referrer claims.
    expected: HashMap<B3Digest, u64>,
    received: HashSet<B3Digest>,
}

impl RootFirst {
    /// Expects the closure of `root`.
    pub fn new(root: B3Digest) -> Self {
        Self {
            root,
            expected: HashMap::new(),
            received: HashSet::new(),
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
        } else {
            match self.expected.remove(&digest) {
                None => return Err(ClosureError::Unexpected(digest)),
                Some(size) if size != dir.size() => {
                    return Err(ClosureError::WrongSize {
                        parent: digest,
                        name: String::new(),
                        specified: size,
                        recorded: dir.size(),
                    });
                }
                Some(_) => {}
            }
        }
        self.received.insert(digest);
        for (_, child, size) in dir.directories() {
            if !self.received.contains(child) {
                self.expected.insert(*child, size);
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
}
