//! [`PathSet`]: the paths of one request field as a tree of components, so
//! validation asks "which of them is above this path" or "is any of them at
//! or below this path" in time linear in the path's length, whatever the
//! number of paths: comparing every pair made a request of 300,000 outputs
//! take minutes.

use std::collections::HashMap;

use crate::path::CleanPath;

/// Clean paths, each remembered with its index in the request.
#[derive(Debug)]
pub(crate) struct PathSet<'a> {
    /// (parent node, component) to child node; node 0 is the root.
    children: HashMap<(usize, &'a str), usize>,
    /// Per node: the smallest index of a path ending there.
    here: Vec<Option<usize>>,
    /// Per node: the smallest index of a path ending there or below.
    below: Vec<Option<usize>>,
}

fn min(a: Option<usize>, b: usize) -> Option<usize> {
    Some(a.map_or(b, |a| a.min(b)))
}

impl<'a> PathSet<'a> {
    /// The set of `paths`, each known by `(index, path)`.
    pub(crate) fn new(paths: impl IntoIterator<Item = (usize, &'a CleanPath)>) -> Self {
        let mut s = PathSet {
            children: HashMap::new(),
            here: vec![None],
            below: vec![None],
        };
        for (i, p) in paths {
            let mut node = 0usize;
            for c in p.components() {
                let next = s.here.len();
                node = *s.children.entry((node, c)).or_insert_with(|| next);
                if node == next {
                    s.here.push(None);
                    s.below.push(None);
                }
                s.below[node] = min(s.below[node], i);
            }
            s.here[node] = min(s.here[node], i);
        }
        s
    }

    /// The indices of the paths strictly above `p`, the shortest first.
    pub(crate) fn above(&self, p: &CleanPath) -> Vec<usize> {
        let mut found = Vec::new();
        let mut node = 0usize;
        let mut comps = p.components().peekable();
        while let Some(c) = comps.next() {
            let Some(&n) = self.children.get(&(node, c)) else {
                break;
            };
            node = n;
            if comps.peek().is_some()
                && let Some(i) = self.here[n]
            {
                found.push(i);
            }
        }
        found
    }

    /// The index of a path that is `p` or below it (the smallest such).
    pub(crate) fn at_or_below(&self, p: &CleanPath) -> Option<usize> {
        let mut node = 0usize;
        for c in p.components() {
            node = *self.children.get(&(node, c))?;
        }
        self.below[node]
    }

    /// Whether a path of the set is `p` or above it.
    pub(crate) fn contains_or_above(&self, p: &CleanPath) -> bool {
        let mut node = 0usize;
        for c in p.components() {
            let Some(&n) = self.children.get(&(node, c)) else {
                return false;
            };
            node = n;
            if self.here[n].is_some() {
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(v: &[&str]) -> Vec<CleanPath> {
        v.iter().map(|s| CleanPath::parse(s).unwrap()).collect()
    }

    #[test]
    fn queries() {
        let ps = paths(&["a", "a/b/c", "b", "a/b"]);
        let set = PathSet::new(ps.iter().enumerate());
        let q = |s| CleanPath::parse(s).unwrap();
        assert_eq!(set.above(&q("a/b/c/d")), vec![0, 3, 1]);
        assert_eq!(set.above(&q("a/b")), vec![0]);
        assert_eq!(set.above(&q("a")), Vec::<usize>::new());
        assert_eq!(set.above(&q("ab/c")), Vec::<usize>::new());
        assert_eq!(set.at_or_below(&q("a/b")), Some(1));
        assert_eq!(set.at_or_below(&q("a")), Some(0));
        assert_eq!(set.at_or_below(&q("c")), None);
        assert_eq!(set.at_or_below(&q("a/b/c/d")), None);
        assert!(set.contains_or_above(&q("b")));
        assert!(set.contains_or_above(&q("b/x")));
        assert!(!set.contains_or_above(&q("bx")));
        assert!(!PathSet::new(std::iter::empty()).contains_or_above(&q("a")));
    }
}
