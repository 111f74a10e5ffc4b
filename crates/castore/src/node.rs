//! [`Node`]: one entry of the castore (a directory, a file or a symlink),
//! apart from its name. Names live beside nodes: as keys of a
//! [`crate::Directory`], or paired with a root node as a build input/output.

use bytes::Bytes;

use crate::proto;
use crate::{B3Digest, DigestError, NameError, PathComponent, SymlinkTarget};

/// A castore entry. Directories and files point to their content by digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Node {
    /// A directory: the digest of its [`crate::Directory`] and its size
    /// (twice the number of entries below it, recursively).
    Directory { digest: B3Digest, size: u64 },
    /// A regular file: the digest of its blob, its size in bytes and whether
    /// it is executable.
    File {
        digest: B3Digest,
        size: u64,
        executable: bool,
    },
    /// A symbolic link, never followed by the castore.
    Symlink { target: SymlinkTarget },
}

/// Why a wire node is invalid. Names the node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    #[error("a node has an invalid name: {0}")]
    Name(NameError),
    #[error("node {name:?} has an invalid digest: {err}")]
    Digest { name: String, err: DigestError },
    #[error("symlink {name:?} has an invalid target: {err}")]
    Target { name: String, err: NameError },
    #[error("a Node message has no directory, file or symlink set")]
    Unset,
}

impl Node {
    /// The kind as a word, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Node::Directory { .. } => "directory",
            Node::File { .. } => "file",
            Node::Symlink { .. } => "symlink",
        }
    }

    /// The wire form, named `name`.
    pub fn to_proto(&self, name: &PathComponent) -> proto::Node {
        let name = name.to_bytes();
        let node = match self {
            Node::Directory { digest, size } => {
                proto::node::Node::Directory(proto::DirectoryNode {
                    name,
                    digest: (*digest).into(),
                    size: *size,
                })
            }
            Node::File {
                digest,
                size,
                executable,
            } => proto::node::Node::File(proto::FileNode {
                name,
                digest: (*digest).into(),
                size: *size,
                executable: *executable,
            }),
            Node::Symlink { target } => proto::node::Node::Symlink(proto::SymlinkNode {
                name,
                target: target.to_bytes(),
            }),
        };
        proto::Node { node: Some(node) }
    }

    /// Validates a wire node into its name and [`Node`].
    pub fn from_proto(p: proto::Node) -> Result<(PathComponent, Node), NodeError> {
        match p.node.ok_or(NodeError::Unset)? {
            proto::node::Node::Directory(d) => Self::from_directory_node(d),
            proto::node::Node::File(f) => Self::from_file_node(f),
            proto::node::Node::Symlink(s) => Self::from_symlink_node(s),
        }
    }

    pub(crate) fn from_directory_node(
        d: proto::DirectoryNode,
    ) -> Result<(PathComponent, Node), NodeError> {
        let (name, digest) = name_and_digest(d.name, &d.digest)?;
        Ok((
            name,
            Node::Directory {
                digest,
                size: d.size,
            },
        ))
    }

    pub(crate) fn from_file_node(f: proto::FileNode) -> Result<(PathComponent, Node), NodeError> {
        let (name, digest) = name_and_digest(f.name, &f.digest)?;
        let node = Node::File {
            digest,
            size: f.size,
            executable: f.executable,
        };
        Ok((name, node))
    }

    pub(crate) fn from_symlink_node(
        s: proto::SymlinkNode,
    ) -> Result<(PathComponent, Node), NodeError> {
        let name = PathComponent::try_from(s.name).map_err(NodeError::Name)?;
        let target = SymlinkTarget::try_from(s.target).map_err(|err| NodeError::Target {
            name: name.to_string(),
            err,
        })?;
        Ok((name, Node::Symlink { target }))
    }
}

fn name_and_digest(name: Bytes, digest: &Bytes) -> Result<(PathComponent, B3Digest), NodeError> {
    let name = PathComponent::try_from(name).map_err(NodeError::Name)?;
    let digest = B3Digest::try_from(digest).map_err(|err| NodeError::Digest {
        name: name.to_string(),
        err,
    })?;
    Ok((name, digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_all_kinds() {
        let name = PathComponent::try_from("x").unwrap();
        for node in [
            Node::Directory {
                digest: B3Digest::of(b"d"),
                size: 4,
            },
            Node::File {
                digest: B3Digest::of(b"f"),
                size: 3,
                executable: true,
            },
            Node::Symlink {
                target: SymlinkTarget::try_from("/t").unwrap(),
            },
        ] {
            let (n, back) = Node::from_proto(node.to_proto(&name)).unwrap();
            assert_eq!((n, back), (name.clone(), node));
        }
    }

    #[test]
    fn rejects_bad_nodes() {
        assert_eq!(
            Node::from_proto(proto::Node { node: None }),
            Err(NodeError::Unset)
        );
        let short = proto::Node {
            node: Some(proto::node::Node::File(proto::FileNode {
                name: "a".into(),
                digest: vec![0u8; 31].into(),
                size: 0,
                executable: false,
            })),
        };
        let err = Node::from_proto(short).unwrap_err();
        assert_eq!(
            err.to_string(),
            "node \"a\" has an invalid digest: a digest must be 32 bytes, got 31"
        );
    }
}
