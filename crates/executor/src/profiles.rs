//! Learned prefetch, the executor's half: each build's profile (the input
//! blobs it read, first use first) kept under a key naming the build's
//! shape — its inputs and its command — so the next build of that shape
//! has its inputs fetched at mount time, racing the build
//! ([`tvix_oci_fuse::MountOptions::prefetch_blobs`]).
//!
//! Profiles are files in a directory (`ExecutorConfig::prefetch_profiles`),
//! one per key, 40 bytes per blob (digest, size), written whole to a temp
//! file and renamed, and only when the build read something else than the
//! profile said. A profile is only a hint: a damaged or foreign file is
//! ignored (and replaced), and a blob it names that is not an input is
//! fetched but never served.

use std::io::Write;
use std::path::{Path, PathBuf};

use tvix_oci_castore::{B3Digest, Node};
use tvix_oci_fuse::MAX_PROFILE_BLOBS;
use tvix_oci_spec::BuildRequest;

/// First bytes of a profile file.
const MAGIC: &[u8] = b"tvix-oci-build prefetch profile v1\n";
/// Bytes per blob in a profile file.
const ENTRY: usize = 40;

/// A profile: the blobs a build read, first use first.
pub type Profile = Vec<(B3Digest, u64)>;

/// Why a profile could not be kept. Names the file.
#[derive(Debug, thiserror::Error)]
#[error("prefetch profile {}: {source}", path.display())]
pub struct ProfileError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// The profiles kept in one directory.
#[derive(Clone, Debug)]
pub struct ProfileStore {
    dir: PathBuf,
}

/// The key of `req`'s shape: its inputs (names and nodes) and its command
/// line. The same inputs and command read much the same files.
pub fn profile_key(req: &BuildRequest) -> B3Digest {
    let mut h = Vec::with_capacity(4096);
    h.extend_from_slice(MAGIC);
    for (name, node) in req.inputs() {
        h.extend_from_slice(&(name.as_bytes().len() as u64).to_le_bytes());
        h.extend_from_slice(name.as_bytes());
        match node {
            Node::Directory { digest, size } => {
                h.extend_from_slice(b"d");
                h.extend_from_slice(digest.as_bytes());
                h.extend_from_slice(&size.to_le_bytes());
            }
            Node::File {
                digest,
                size,
                executable,
            } => {
                h.extend_from_slice(if *executable { b"x" } else { b"f" });
                h.extend_from_slice(digest.as_bytes());
                h.extend_from_slice(&size.to_le_bytes());
            }
            Node::Symlink { target } => {
                h.extend_from_slice(b"l");
                h.extend_from_slice(&(target.as_bytes().len() as u64).to_le_bytes());
                h.extend_from_slice(target.as_bytes());
            }
        }
    }
    for arg in req.command_args() {
        h.extend_from_slice(&(arg.len() as u64).to_le_bytes());
        h.extend_from_slice(arg.as_bytes());
    }
    B3Digest::of(&h)
}

impl ProfileStore {
    /// The profiles in `dir` (created, mode 0700, at the first save).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    fn path(&self, key: &B3Digest) -> PathBuf {
        self.dir.join(key.to_hex())
    }

    /// The profile kept for `key`; empty if there is none, or the file is
    /// not one (it is then replaced at the next save).
    pub fn load(&self, key: &B3Digest) -> Profile {
        let path = self.path(key);
        let max = (MAGIC.len() + MAX_PROFILE_BLOBS * ENTRY) as u64;
        let data = match std::fs::metadata(&path) {
            Ok(m) if m.len() <= max => std::fs::read(&path).unwrap_or_default(),
            _ => return Vec::new(),
        };
        parse(&data).unwrap_or_else(|| {
            tracing::warn!(path = %path.display(), "not a prefetch profile; ignored");
            Vec::new()
        })
    }

    /// Keeps `profile` for `key`, unless it is what `before` said.
    /// Returns whether it wrote.
    pub fn save(
        &self,
        key: &B3Digest,
        before: &Profile,
        profile: &Profile,
    ) -> Result<bool, ProfileError> {
        if profile == before || profile.is_empty() {
            return Ok(false);
        }
        let path = self.path(key);
        let err = |source| ProfileError {
            path: path.clone(),
            source,
        };
        let mut data = Vec::with_capacity(MAGIC.len() + profile.len() * ENTRY);
        data.extend_from_slice(MAGIC);
        for (d, size) in profile.iter().take(MAX_PROFILE_BLOBS) {
            data.extend_from_slice(d.as_bytes());
            data.extend_from_slice(&size.to_le_bytes());
        }
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.dir)
                .map_err(|source| ProfileError {
                    path: self.dir.clone(),
                    source,
                })?;
        }
        let mut tmp = tempfile::Builder::new()
            .prefix(".profile-")
            .tempfile_in(&self.dir)
            .map_err(err)?;
        tmp.write_all(&data).map_err(err)?;
        tmp.persist(&path).map_err(|e| err(e.error))?;
        Ok(true)
    }

    /// Where the profiles are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The blobs of a profile file, or `None` if it is not one.
fn parse(data: &[u8]) -> Option<Profile> {
    let body = data.strip_prefix(MAGIC)?;
    if body.len() % ENTRY != 0 {
        return None;
    }
    body.chunks_exact(ENTRY)
        .map(|e| {
            let digest: [u8; 32] = e[..32].try_into().ok()?;
            let size = u64::from_le_bytes(e[32..].try_into().ok()?);
            Some((B3Digest::from(digest), size))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_when_changed_loaded_back_and_damage_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        let store = ProfileStore::new(tmp.path().join("p"));
        let key = B3Digest::of(b"shape");
        assert!(store.load(&key).is_empty());
        let p = vec![(B3Digest::of(b"a"), 1), (B3Digest::of(b"b"), 1 << 40)];
        assert!(store.save(&key, &Vec::new(), &p).unwrap());
        assert_eq!(store.load(&key), p);
        // The same again: not written.
        assert!(!store.save(&key, &p, &p).unwrap());
        // A damaged file is no profile, and is replaced by the next save.
        std::fs::write(
            store.path(&key),
            b"tvix-oci-build prefetch profile v1\nshort",
        )
        .unwrap();
        assert!(store.load(&key).is_empty());
        assert!(store.save(&key, &Vec::new(), &p).unwrap());
        assert_eq!(store.load(&key), p);
        // No temp file left.
        assert_eq!(std::fs::read_dir(store.dir()).unwrap().count(), 1);
    }
}
