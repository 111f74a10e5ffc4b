//! The persistent map from a Nix store path (with its NAR hash, as Nix's
//! database has it) to the castore node it was imported as, so that a
//! second `build` reusing an input imports nothing. One small file per
//! path in a directory per store (`<data dir>/nix-paths/<key of the
//! store URLs>/<base name>`), written atomically: no lock, any number of
//! concurrent builds. An entry counts only when its NAR hash is still
//! the path's (a path deleted and rebuilt differently misses) and the
//! store still holds its node's root.

use std::path::{Path, PathBuf};

use prost::Message;
use sha2::Digest;
use tvix_oci_castore::blobservice::BlobService;
use tvix_oci_castore::directoryservice::DirectoryService;
use tvix_oci_castore::{Node, PathComponent, proto};
use tvix_oci_nix::StorePath;

/// The map of one store.
#[derive(Debug, Clone)]
pub struct NixPaths {
    dir: PathBuf,
}

impl NixPaths {
    /// The map under `data_dir` for the store at these URLs.
    pub fn new(data_dir: &Path, blob_url: &str, dir_url: &str) -> Self {
        let key = sha2::Sha256::digest(format!("{blob_url}\n{dir_url}").as_bytes());
        let key: String = key[..12].iter().map(|b| format!("{b:02x}")).collect();
        Self {
            dir: data_dir.join("nix-paths").join(key),
        }
    }

    /// The node `path` was imported as, when its NAR hash is still
    /// `nar_hash` and the store still has it.
    pub async fn get(
        &self,
        path: &StorePath,
        nar_hash: &str,
        blobs: &dyn BlobService,
        dirs: &dyn DirectoryService,
    ) -> Option<Node> {
        let b = std::fs::read(self.dir.join(path.base_name())).ok()?;
        let nl = b.iter().position(|&c| c == b'\n')?;
        if &b[..nl] != nar_hash.as_bytes() {
            return None;
        }
        let (_, node) = Node::from_proto(proto::Node::decode(&b[nl + 1..]).ok()?).ok()?;
        let present = match &node {
            Node::Directory { digest, .. } => matches!(dirs.get(digest).await, Ok(Some(_))),
            Node::File { digest, .. } => blobs.has(digest).await.unwrap_or(false),
            Node::Symlink { .. } => true,
        };
        present.then_some(node)
    }

    /// Records `node` for `path`; failing to is only logged (the map is
    /// a cache).
    pub fn put(&self, path: &StorePath, nar_hash: &str, node: &Node) {
        if let Err(e) = self.try_put(path, nar_hash, node) {
            tracing::warn!("cannot record {path} in {}: {e}", self.dir.display());
        }
    }

    fn try_put(&self, path: &StorePath, nar_hash: &str, node: &Node) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let name = PathComponent::try_from(path.base_name())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        let mut b = nar_hash.as_bytes().to_vec();
        b.push(b'\n');
        b.extend_from_slice(&node.to_proto(&name).encode_to_vec());
        let tmp = self
            .dir
            .join(format!(".{}.{}", path.base_name(), std::process::id()));
        std::fs::write(&tmp, &b)?;
        std::fs::rename(&tmp, self.dir.join(path.base_name())).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    }
}

/// The NAR hashes Nix's database records for `paths`, in order
/// (`nix-store --query --hash`).
pub fn nar_hashes(paths: &[StorePath]) -> std::io::Result<Vec<String>> {
    if paths.is_empty() {
        return Ok(vec![]);
    }
    let out = std::process::Command::new("nix-store")
        .args(["--query", "--hash"])
        .args(paths.iter().map(|p| p.absolute()))
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Vec<String> = text.lines().map(str::to_owned).collect();
    if !out.status.success() || v.len() != paths.len() {
        return Err(std::io::Error::other(format!(
            "nix-store --query --hash: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tvix_oci_castore::blobservice::MemoryBlobService;
    use tvix_oci_castore::directoryservice::MemoryDirectoryService;

    #[tokio::test]
    async fn entries_count_only_with_their_nar_hash_and_their_node() {
        let tmp = tempfile::tempdir().unwrap();
        let map = NixPaths::new(tmp.path(), "objects:///a", "redb:///b");
        let blobs = MemoryBlobService::default();
        let dirs = MemoryDirectoryService::default();
        let p = StorePath::from_base_name("i72sh5s677q84k6rwyjdpx0p2j0x962f-busybox").unwrap();
        let link = Node::Symlink {
            target: "x".try_into().unwrap(),
        };
        assert_eq!(map.get(&p, "sha256:a", &blobs, &dirs).await, None);
        map.put(&p, "sha256:a", &link);
        assert_eq!(map.get(&p, "sha256:a", &blobs, &dirs).await, Some(link));
        // The path was rebuilt differently: its hash moved on.
        assert_eq!(map.get(&p, "sha256:b", &blobs, &dirs).await, None);
        // Another store: another map.
        let other = NixPaths::new(tmp.path(), "objects:///c", "redb:///b");
        assert_eq!(other.get(&p, "sha256:a", &blobs, &dirs).await, None);
        // A node the store lost.
        let digest = blobs.put(b"hi".to_vec().into()).await.unwrap();
        let file = Node::File {
            digest,
            size: 2,
            executable: false,
        };
        map.put(&p, "sha256:a", &file);
        assert_eq!(
            map.get(&p, "sha256:a", &blobs, &dirs).await,
            Some(file.clone())
        );
        let empty = MemoryBlobService::default();
        assert_eq!(map.get(&p, "sha256:a", &empty, &dirs).await, None);
    }
}
