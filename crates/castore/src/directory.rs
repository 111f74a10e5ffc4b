//! [`Directory`]: a validated castore directory and its digest.
//!
//! Entries are kept in one map ordered by name, so names are unique across
//! the three wire lists by construction and the canonical encoding (each
//! list sorted bytewise) falls out of iteration order. Wire directories are
//! checked once, in `TryFrom<proto::Directory>`.

use std::collections::BTreeMap;

use prost::Message;

use crate::node::NodeError;
use crate::proto;
use crate::{B3Digest, Node, PathComponent};

/// A directory: named [`Node`]s, names unique, ordered bytewise.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Directory {
    nodes: BTreeMap<PathComponent, Node>,
    /// Twice the number of entries, plus the sizes of child directories.
    size: u64,
}

/// Why a Directory (wire or being built) is invalid. Names the entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectoryError {
    #[error("invalid protobuf encoding of a Directory: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("invalid entry in the {list} list: {err}")]
    InvalidNode { list: &'static str, err: NodeError },
    #[error("the {list} list is not sorted: {name:?} comes after {previous:?}")]
    Unsorted {
        list: &'static str,
        name: PathComponent,
        previous: PathComponent,
    },
    #[error("duplicate name {0:?}")]
    Duplicate(PathComponent),
    #[error("the size of the directory overflows at entry {0:?}")]
    SizeOverflow(PathComponent),
}

impl Directory {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an entry. Fails on a name already present or a size overflow;
    /// on failure the directory is unchanged.
    pub fn add(&mut self, name: PathComponent, node: Node) -> Result<(), DirectoryError> {
        let child = match &node {
            Node::Directory { size, .. } => *size,
            _ => 0,
        };
        let size = self
            .size
            .checked_add(2)
            .and_then(|s| s.checked_add(child))
            .ok_or_else(|| DirectoryError::SizeOverflow(name.clone()))?;
        if self.nodes.contains_key(&name) {
            return Err(DirectoryError::Duplicate(name));
        }
        self.nodes.insert(name, node);
        self.size = size;
        Ok(())
    }

    /// The entry named `name`.
    pub fn get(&self, name: &PathComponent) -> Option<&Node> {
        self.nodes.get(name)
    }

    /// All entries, ordered by name.
    pub fn nodes(&self) -> impl ExactSizeIterator<Item = (&PathComponent, &Node)> {
        self.nodes.iter()
    }

    /// The child directories' digests and sizes, ordered by name.
    pub fn directories(&self) -> impl Iterator<Item = (&PathComponent, &B3Digest, u64)> {
        self.nodes.iter().filter_map(|(n, node)| match node {
            Node::Directory { digest, size } => Some((n, digest, *size)),
            _ => None,
        })
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the directory has no entries.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The size a [`Node::Directory`] pointing here must carry: twice the
    /// number of entries below, recursively (what tvix and snix stores
    /// compute and enforce).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The canonical protobuf encoding.
    pub fn encode(&self) -> Vec<u8> {
        proto::Directory::from(self).encode_to_vec()
    }

    /// BLAKE3 of the canonical encoding.
    pub fn digest(&self) -> B3Digest {
        B3Digest::of(&self.encode())
    }

    /// The [`Node`] that refers to this directory.
    pub fn as_node(&self) -> Node {
        Node::Directory {
            digest: self.digest(),
            size: self.size,
        }
    }

    /// Decodes and validates untrusted bytes.
    pub fn decode(buf: &[u8]) -> Result<Self, DirectoryError> {
        Self::try_from(proto::Directory::decode(buf)?)
    }
}

impl From<&Directory> for proto::Directory {
    fn from(d: &Directory) -> Self {
        let mut out = proto::Directory::default();
        for (name, node) in &d.nodes {
            match node.to_proto(name).node {
                Some(proto::node::Node::Directory(n)) => out.directories.push(n),
                Some(proto::node::Node::File(n)) => out.files.push(n),
                Some(proto::node::Node::Symlink(n)) => out.symlinks.push(n),
                None => {}
            }
        }
        out
    }
}

impl From<Directory> for proto::Directory {
    fn from(d: Directory) -> Self {
        (&d).into()
    }
}

/// Checks one wire list: each entry valid, the list strictly sorted.
fn add_list<T>(
    dir: &mut Directory,
    list: &'static str,
    entries: Vec<T>,
    convert: impl Fn(T) -> Result<(PathComponent, Node), NodeError>,
) -> Result<(), DirectoryError> {
    let mut previous: Option<PathComponent> = None;
    for entry in entries {
        let (name, node) =
            convert(entry).map_err(|err| DirectoryError::InvalidNode { list, err })?;
        if let Some(prev) = previous.take() {
            if name == prev {
                return Err(DirectoryError::Duplicate(name));
            }
            if name < prev {
                return Err(DirectoryError::Unsorted {
                    list,
                    name,
                    previous: prev,
                });
            }
        }
        previous = Some(name.clone());
        dir.add(name, node)?;
    }
    Ok(())
}

impl TryFrom<proto::Directory> for Directory {
    type Error = DirectoryError;

    fn try_from(p: proto::Directory) -> Result<Self, DirectoryError> {
        let mut dir = Directory::new();
        add_list(
            &mut dir,
            "directories",
            p.directories,
            Node::from_directory_node,
        )?;
        add_list(&mut dir, "files", p.files, Node::from_file_node)?;
        add_list(&mut dir, "symlinks", p.symlinks, Node::from_symlink_node)?;
        Ok(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SymlinkTarget;

    fn name(s: &str) -> PathComponent {
        PathComponent::try_from(s).unwrap()
    }

    fn keep_dir() -> Directory {
        let mut d = Directory::new();
        d.add(
            name(".keep"),
            Node::File {
                digest: B3Digest::of(b""),
                size: 0,
                executable: false,
            },
        )
        .unwrap();
        d
    }

    #[test]
    fn vectors() {
        let empty = Directory::new();
        assert_eq!(
            empty.digest().to_hex(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        assert_eq!(empty.size(), 0);

        let keep = keep_dir();
        assert_eq!(
            keep.digest().to_hex(),
            "8b5b5d642b646bb8ed504b0862c39413e87e57491497de7bd075953f7b83810e"
        );
        assert_eq!(keep.size(), 2);

        let mut both = keep_dir();
        both.add(name("keep"), keep.as_node()).unwrap();
        both.add(
            name("aa"),
            Node::Symlink {
                target: SymlinkTarget::try_from("/nix/store/somewhereelse").unwrap(),
            },
        )
        .unwrap();
        assert_eq!(
            both.digest().to_hex(),
            "424a7f6ce08d805d15b428062faae96299a1675d708c3a39261afe38cdd04feb"
        );
        assert_eq!(both.size(), 8);
        assert_eq!(Directory::decode(&both.encode()).unwrap(), both);
    }

    fn file(n: &str) -> proto::FileNode {
        proto::FileNode {
            name: n.to_owned().into(),
            digest: B3Digest::of(b"").into(),
            size: 0,
            executable: false,
        }
    }

    #[test]
    fn rejects_unsorted() {
        let p = proto::Directory {
            files: vec![file("b"), file("a")],
            ..Default::default()
        };
        assert_eq!(
            Directory::try_from(p).unwrap_err().to_string(),
            "the files list is not sorted: \"a\" comes after \"b\""
        );
    }

    #[test]
    fn rejects_duplicates_within_and_across_lists() {
        let p = proto::Directory {
            files: vec![file("a"), file("a")],
            ..Default::default()
        };
        assert_eq!(
            Directory::try_from(p).unwrap_err(),
            DirectoryError::Duplicate(name("a"))
        );
        let p = proto::Directory {
            files: vec![file("a")],
            symlinks: vec![proto::SymlinkNode {
                name: "a".into(),
                target: "x".into(),
            }],
            ..Default::default()
        };
        assert_eq!(
            Directory::try_from(p).unwrap_err(),
            DirectoryError::Duplicate(name("a"))
        );
    }

    #[test]
    fn rejects_bad_names_and_digests() {
        for bad in ["..", ".", "a/b", ""] {
            let p = proto::Directory {
                files: vec![file(bad)],
                ..Default::default()
            };
            let err = Directory::try_from(p).unwrap_err();
            assert!(
                matches!(err, DirectoryError::InvalidNode { list: "files", .. }),
                "{bad}: {err}"
            );
        }
        let mut f = file("a");
        f.digest = vec![1u8; 31].into();
        let p = proto::Directory {
            files: vec![f],
            ..Default::default()
        };
        let msg = Directory::try_from(p).unwrap_err().to_string();
        assert!(msg.contains("\"a\"") && msg.contains("got 31"), "{msg}");
    }

    #[test]
    fn rejects_size_overflow() {
        let big = |n: &str| proto::DirectoryNode {
            name: n.to_owned().into(),
            digest: B3Digest::of(b"").into(),
            size: u64::MAX - 1,
        };
        let p = proto::Directory {
            directories: vec![big("a"), big("b")],
            ..Default::default()
        };
        assert_eq!(
            Directory::try_from(p).unwrap_err(),
            DirectoryError::SizeOverflow(name("a"))
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 5000, failure_persistence: None, ..Default::default() })]
        /// Decoding any bytes gives a Directory or a typed error, never a
        /// panic; what decodes re-encodes to the same digest.
        #[test]
        fn decoding_random_bytes_never_panics(buf in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            if let Ok(d) = Directory::decode(&buf) {
                proptest::prop_assert_eq!(Directory::decode(&d.encode()).unwrap(), d);
            }
        }
    }

    #[test]
    fn garbage_bytes_do_not_panic() {
        for buf in [&b"\xff\xff\xff"[..], b"\x0a\x05abc", b"\x12"] {
            assert!(Directory::decode(buf).is_err());
        }
    }
}
