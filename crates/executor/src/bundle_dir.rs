//! [`BundleDir`]: the directory of one build's bundle, removed on drop
//! (unless kept for debugging), after everything mounted in it is gone.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tracing::warn;

use crate::BuildError;
use crate::faults::HostError;
use crate::rootless::Rootless;

/// A bundle directory under the bundle root (0700).
#[derive(Debug)]
pub struct BundleDir {
    path: PathBuf,
    keep: bool,
    /// Rootless: what the build wrote belongs to its sub-ids, removed from
    /// inside a user namespace.
    rootless: Option<Rootless>,
}

impl BundleDir {
    /// Creates `root/id` (and `root`, 0700, if missing). The root must be
    /// this process's user's: no one else may reach into a bundle.
    pub fn create(root: &Path, id: &str, keep: bool) -> Result<Self, BuildError> {
        let host = |source: std::io::Error| HostError::Bundle {
            root: root.to_owned(),
            source,
        };
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(root)
            .map_err(host)?;
        let meta = std::fs::symlink_metadata(root).map_err(host)?;
        let me = nix::unistd::geteuid().as_raw();
        if !meta.is_dir() || meta.uid() != me {
            return Err(HostError::BundleRoot {
                root: root.to_owned(),
                me,
                owner: meta.uid(),
            }
            .into());
        }
        let path = std::path::absolute(root).map_err(host)?.join(id);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(host)?;
        Ok(Self {
            path,
            keep,
            rootless: None,
        })
    }

    /// Removes the bundle as `r`'s container root when dropped.
    pub fn set_rootless(&mut self, r: Rootless) {
        self.rootless = Some(r);
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
        if let Ok(ms) = tvix_oci_sys::mountinfo::mounts_below(&self.path)
            && !ms.is_empty()
        {
            warn!(path = %self.path.display(), "not removing the bundle: still mounted: {ms:?}");
            return;
        }
        let removed = match &self.rootless {
            Some(r) => remove_tree(&self.path).or_else(|_| r.remove_tree(&self.path)),
            None => remove_tree(&self.path),
        };
        if let Err(e) = removed {
            warn!(path = %self.path.display(), "removing the bundle: {e}");
        }
    }
}

/// Removes the tree at `path`. When that fails for want of permission (not
/// root, and the build left a directory without write permission), the
/// directories of ours in it get owner rwx and the removal is tried again.
/// Never follows a symlink.
pub(crate) fn remove_tree(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            for entry in walkdir::WalkDir::new(path)
                .follow_links(false)
                .into_iter()
                .flatten()
            {
                if entry.file_type().is_dir()
                    && let Ok(meta) = entry.metadata()
                    && meta.permissions().mode() & 0o700 != 0o700
                {
                    let mode = meta.permissions().mode() | 0o700;
                    let _ = std::fs::set_permissions(
                        entry.path(),
                        std::fs::Permissions::from_mode(mode),
                    );
                }
            }
            std::fs::remove_dir_all(path)
        }
        other => other,
    }
}
