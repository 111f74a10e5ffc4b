//! [`BundleDir`]: the directory of one build's bundle, removed on drop
//! (unless kept for debugging), after everything mounted in it is gone.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use tracing::warn;

use crate::BuildError;

/// A bundle directory under the bundle root (0700).
#[derive(Debug)]
pub struct BundleDir {
    path: PathBuf,
    keep: bool,
}

impl BundleDir {
    /// Creates `root/id` (and `root`, 0700, if missing).
    pub fn create(root: &Path, id: &str, keep: bool) -> Result<Self, BuildError> {
        let host = |e: std::io::Error| {
            BuildError::Host(format!("creating the bundle under {}: {e}", root.display()))
        };
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(root)
            .map_err(host)?;
        let path = root.join(id);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(host)?;
        Ok(Self { path, keep })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for BundleDir {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        // Never recurse into a mount: refuse if anything is still mounted below.
        if let Ok(ms) = tvix_oci_fuse::mountinfo::mounts_below(&self.path)
            && !ms.is_empty()
        {
            warn!(path = %self.path.display(), "not removing the bundle: still mounted: {ms:?}");
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            warn!(path = %self.path.display(), "removing the bundle: {e}");
        }
    }
}
