//! The inode table: stable inode numbers for castore nodes, allocated
//! lazily. Inode 1 is the root, listing the inputs; a directory's children
//! get their numbers (all at once) the first time the directory is listed
//! or looked into, which is also when its `Directory` is fetched. Numbers
//! are never reused for the life of the mount. Pure logic: the fetch is a
//! closure, so this is testable without a kernel or a store.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use tvix_oci_castore::{B3Digest, Directory, Node, PathComponent, SymlinkTarget};

/// The root inode's number.
pub const ROOT_INO: u64 = 1;

/// The entries of a directory: names sorted bytewise, each with its inode.
#[derive(Debug)]
pub struct Children(Vec<(PathComponent, u64)>);

impl Children {
    /// The inode named `name`.
    pub fn get(&self, name: &[u8]) -> Option<u64> {
        self.0
            .binary_search_by(|(n, _)| n.as_bytes().cmp(name))
            .ok()
            .map(|i| self.0[i].1)
    }

    /// All entries, in order.
    pub fn entries(&self) -> &[(PathComponent, u64)] {
        &self.0
    }
}

/// What an inode is.
#[derive(Debug)]
pub enum InodeKind {
    /// The root: the inputs, known from the start.
    Root(Arc<Children>),
    /// A castore directory of the size its node declares; its children
    /// once fetched.
    Directory {
        digest: B3Digest,
        size: u64,
        children: Mutex<Option<Arc<Children>>>,
    },
    File {
        digest: B3Digest,
        size: u64,
        executable: bool,
    },
    Symlink(SymlinkTarget),
}

/// One inode: what it is and where it hangs (for messages).
#[derive(Debug)]
pub struct Inode {
    pub parent: u64,
    pub name: Option<PathComponent>,
    pub kind: InodeKind,
}

/// Why an inode table cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum InodeError {
    #[error("input {0:?} is given twice")]
    DuplicateInput(PathComponent),
}

/// All inodes of a mount.
#[derive(Debug)]
pub(crate) struct InodeTable {
    inodes: RwLock<Vec<Arc<Inode>>>,
}

fn kind_of(node: &Node) -> InodeKind {
    match node {
        Node::Directory { digest, size } => InodeKind::Directory {
            digest: *digest,
            size: *size,
            children: Mutex::new(None),
        },
        Node::File {
            digest,
            size,
            executable,
        } => InodeKind::File {
            digest: *digest,
            size: *size,
            executable: *executable,
        },
        Node::Symlink { target } => InodeKind::Symlink(target.clone()),
    }
}

impl InodeTable {
    /// A table whose root lists `inputs`.
    pub fn new(mut inputs: Vec<(PathComponent, Node)>) -> Result<Self, InodeError> {
        inputs.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some(w) = inputs.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(InodeError::DuplicateInput(w[0].0.clone()));
        }
        let mut inodes = Vec::with_capacity(inputs.len() + 1);
        let children = inputs
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (n.clone(), ROOT_INO + 1 + i as u64))
            .collect();
        inodes.push(Arc::new(Inode {
            parent: ROOT_INO,
            name: None,
            kind: InodeKind::Root(Arc::new(Children(children))),
        }));
        for (name, node) in inputs {
            inodes.push(Arc::new(Inode {
                parent: ROOT_INO,
                name: Some(name),
                kind: kind_of(&node),
            }));
        }
        Ok(Self {
            inodes: RwLock::new(inodes),
        })
    }

    /// The inode `ino`, if allocated.
    pub fn get(&self, ino: u64) -> Option<Arc<Inode>> {
        let idx = usize::try_from(ino.checked_sub(1)?).ok()?;
        self.inodes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(idx)
            .cloned()
    }

    /// Number of inodes allocated so far.
    pub fn len(&self) -> usize {
        self.inodes.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The children of directory inode `ino`, fetching its `Directory` with
    /// `fetch` the first time (once, even when asked from several threads).
    /// `fetch` gets the digest, the size the node declares, and who
    /// declares it (the root node, or the parent's entry), to check it.
    /// `Ok(None)` when `ino` is not a directory.
    pub fn children<E>(
        &self,
        ino: u64,
        fetch: impl FnOnce(&B3Digest, u64, String) -> Result<Directory, E>,
    ) -> Result<Option<Arc<Children>>, E> {
        let Some(inode) = self.get(ino) else {
            return Ok(None);
        };
        let (digest, size, slot) = match &inode.kind {
            InodeKind::Root(c) => return Ok(Some(c.clone())),
            InodeKind::Directory {
                digest,
                size,
                children,
            } => (digest, *size, children),
            _ => return Ok(None),
        };
        let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = slot.as_ref() {
            return Ok(Some(c.clone()));
        }
        let name = inode
            .name
            .as_ref()
            .map(|n| n.to_string())
            .unwrap_or_default();
        let by = match self.get(inode.parent).as_deref().map(|p| &p.kind) {
            Some(InodeKind::Directory { digest: parent, .. }) => {
                tvix_oci_castore::directoryservice::entry_of(parent, &name)
            }
            _ => format!("the root node {name:?}"),
        };
        let dir = fetch(digest, size, by)?;
        let mut inodes = self.inodes.write().unwrap_or_else(|p| p.into_inner());
        let first = inodes.len() as u64 + 1;
        let mut entries = Vec::with_capacity(dir.len());
        for (i, (name, node)) in dir.nodes().enumerate() {
            inodes.push(Arc::new(Inode {
                parent: ino,
                name: Some(name.clone()),
                kind: kind_of(node),
            }));
            entries.push((name.clone(), first + i as u64));
        }
        let c = Arc::new(Children(entries));
        *slot = Some(c.clone());
        Ok(Some(c))
    }

    /// The path of `ino` below the mount root, for messages.
    pub fn path(&self, ino: u64) -> PathBuf {
        let mut parts = Vec::new();
        let mut cur = ino;
        let mut seen = HashMap::new();
        while let Some(i) = self.get(cur) {
            let Some(name) = &i.name else { break };
            if seen.insert(cur, ()).is_some() {
                break;
            }
            parts.push(std::ffi::OsStr::from_bytes(name.as_bytes()).to_owned());
            cur = i.parent;
        }
        parts.iter().rev().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn pc(s: &str) -> PathComponent {
        PathComponent::try_from(s).unwrap()
    }

    fn file() -> Node {
        Node::File {
            digest: B3Digest::of(b"x"),
            size: 1,
            executable: false,
        }
    }

    #[test]
    fn lazy_stable_numbers() {
        let mut sub = Directory::new();
        sub.add(pc("b"), file()).unwrap();
        sub.add(pc("a"), file()).unwrap();
        let t = InodeTable::new(vec![(pc("zz"), file()), (pc("dir"), sub.as_node())]).unwrap();
        let root = t
            .children::<()>(ROOT_INO, |_, _, _| unreachable!())
            .unwrap()
            .unwrap();
        assert_eq!(root.get(b"dir"), Some(2));
        assert_eq!(root.get(b"zz"), Some(3));
        assert_eq!(t.len(), 3);

        let fetches = AtomicUsize::new(0);
        let fetch = |d: &B3Digest, size: u64, by: String| {
            fetches.fetch_add(1, Ordering::SeqCst);
            assert_eq!(*d, sub.digest());
            assert_eq!(size, sub.size());
            assert_eq!(by, "the root node \"dir\"");
            Ok::<_, ()>(sub.clone())
        };
        let c = t.children(2, fetch).unwrap().unwrap();
        assert_eq!(c.get(b"a"), Some(4));
        assert_eq!(c.get(b"b"), Some(5));
        // The second time it is not fetched again and the numbers stay.
        let c2 = t.children(2, |_, _, _| Err(())).unwrap().unwrap();
        assert_eq!(c2.get(b"b"), Some(5));
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        assert_eq!(t.path(5), PathBuf::from("dir/b"));
        assert!(
            t.children::<()>(3, |_, _, _| unreachable!())
                .unwrap()
                .is_none()
        );
        assert!(t.get(99).is_none());
        assert!(t.get(0).is_none());
    }

    #[test]
    fn duplicate_inputs_are_refused() {
        let err = InodeTable::new(vec![(pc("a"), file()), (pc("a"), file())]).unwrap_err();
        assert!(err.to_string().contains("\"a\""));
    }

    #[test]
    fn failed_fetch_can_be_retried() {
        let t = InodeTable::new(vec![(pc("d"), Directory::new().as_node())]).unwrap();
        assert!(
            t.children(2, |_, _, _| Err::<Directory, _>("store down"))
                .is_err()
        );
        let c = t
            .children(2, |_, _, _| Ok::<_, ()>(Directory::new()))
            .unwrap()
            .unwrap();
        assert!(c.entries().is_empty());
    }
}
