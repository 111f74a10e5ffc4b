//! A request's `constraints.available_ro_paths`: only what the operator
//! allowed ([`crate::ExecutorConfig::allowed_ro_paths`], `--allow-ro-path`),
//! bound read-only all the way down.
//!
//! As in Nix (`sandbox-paths`), the admin decides what of the host a build
//! may see, never the request. A path is allowed when it is exactly one of
//! the operator's (no prefixes: allowing `/dev/kvm` allows neither `/dev`
//! nor `/dev/kvm/x`) and is its own real path (no symlink in it).
//!
//! `rbind,ro` makes only the top mount read-only: a writable mount below
//! it stays writable, and runc 1.1 has no `rro`. So, as root, the executor
//! clones the path's mount tree (`open_tree(OPEN_TREE_CLONE|AT_RECURSIVE)`),
//! makes every mount of the clone read-only, `nosuid` and (unless the path
//! is a device node) `nodev`, and private (`mount_setattr(AT_RECURSIVE)`),
//! and attaches it at `<bundle>/ro/<n>` (`move_mount`), which the spec
//! binds at the path. `RoClones` detaches them when dropped; the stale
//! cleanup detaches those a killed executor left.
//!
//! Rootless, the executor cannot clone a host mount, and runc's rbind in
//! the build's user namespace keeps the sub-mounts' own flags (locked): a
//! path with anything mounted below it is refused there, one without is
//! bound `rbind,ro,nosuid,nodev` (no `nodev` for a device) from the host.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use tracing::warn;
use tvix_oci_spec::{BuildRequest, BundleLayout, RoMount};

use crate::BuildError;
use crate::faults::{HostError, InfraError};

/// What an allowed path is on the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    /// A regular file (or a fifo or socket): bound like a file.
    File,
    /// A character or block device: bound without `nodev`.
    Device,
}

/// A requested path this host will bind, and what it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allowed {
    pub path: String,
    pub kind: Kind,
}

/// The operator's list, canonical: each path resolved through symlinks
/// where it exists (so it matches the real path a request must name), as
/// given otherwise (a request naming it is then refused as absent).
pub fn canonical_allow_list(paths: &[PathBuf]) -> Vec<PathBuf> {
    paths
        .iter()
        .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()))
        .collect()
}

/// The refusal of a path the operator did not allow: the request's fault
/// on this builder.
fn not_allowed(path: &str) -> BuildError {
    BuildError::NotAllowed(format!(
        "constraints.available_ro_paths: {path} is not allowed on this builder (the operator allows paths with --allow-ro-path)"
    ))
}

/// Decides one requested path against the canonical allow-list: refused
/// unless it is exactly an allowed path, exists, and is its own real path.
pub fn decide(path: &str, allowed: &[PathBuf]) -> Result<Kind, BuildError> {
    if !allowed
        .iter()
        .any(|a| a.as_os_str().as_bytes() == path.as_bytes())
    {
        return Err(not_allowed(path));
    }
    let meta = std::fs::symlink_metadata(path)
        .map_err(|_| HostError::RoPath(format!("{path} does not exist on this host")))?;
    match std::fs::canonicalize(path) {
        Ok(real) if real.as_os_str().as_bytes() == path.as_bytes() => {}
        Ok(real) => {
            return Err(BuildError::NotAllowed(format!(
                "constraints.available_ro_paths: {path} goes through a symlink (it is {}); only the real paths the operator allows are bound",
                real.display()
            )));
        }
        Err(e) => {
            return Err(HostError::RoPath(format!("resolving {path}: {e}")).into());
        }
    }
    let t = meta.file_type();
    Ok(if t.is_dir() {
        Kind::Dir
    } else if t.is_char_device() || t.is_block_device() {
        Kind::Device
    } else {
        Kind::File
    })
}

/// Decides all of `req`'s paths, before anything is mounted. A path that
/// holds `bundle_root` is refused even if allowed: through it a build
/// would see the other builds' bundles (and its own clone inside itself).
pub fn check(
    req: &BuildRequest,
    allowed: &[PathBuf],
    bundle_root: &Path,
) -> Result<Vec<Allowed>, BuildError> {
    let root = std::fs::canonicalize(bundle_root).unwrap_or_else(|_| bundle_root.to_owned());
    req.constraints()
        .available_ro_paths
        .iter()
        .map(|p| {
            let path = p.to_host();
            let kind = decide(&path, allowed)?;
            if root.starts_with(&path) {
                return Err(HostError::RoPath(format!(
                    "{path} holds this builder's bundle root {}, which no build may see; the operator should allow a path outside it",
                    root.display()
                ))
                .into());
            }
            Ok(Allowed { path, kind })
        })
        .collect()
}

/// Rootless: the host paths themselves, refused where something is
/// mounted below one (its flags would hold in the build).
pub fn rootless_mounts(paths: &[Allowed]) -> Result<Vec<RoMount>, BuildError> {
    let mounts = tvix_oci_sys::mountinfo::mounts().map_err(InfraError::MountTable)?;
    paths
        .iter()
        .map(|a| {
            let below: Vec<_> = mounts
                .iter()
                .filter(|m| m.mount_point.starts_with(&a.path) && m.mount_point != Path::new(&a.path))
                .map(|m| m.mount_point.display().to_string())
                .collect();
            if !below.is_empty() {
                return Err(HostError::RoPath(format!(
                    "{} has mounts below it ({}), which a rootless build cannot bind read-only; run as root or allow a path without mounts below it",
                    a.path,
                    below.join(", ")
                ))
                .into());
            }
            Ok(RoMount {
                path: a.path.clone(),
                source: PathBuf::from(&a.path),
                device: a.kind == Kind::Device,
            })
        })
        .collect()
}

/// The read-only clones attached in one bundle, detached when dropped
/// (declare it before the container, after the bundle directory).
#[derive(Debug, Default)]
pub(crate) struct RoClones {
    attached: Vec<PathBuf>,
}

impl RoClones {
    /// Clones each path recursively read-only at `layout`'s `ro/<n>`.
    pub fn attach(
        layout: &BundleLayout,
        paths: &[Allowed],
    ) -> Result<(Self, Vec<RoMount>), BuildError> {
        let mut clones = Self::default();
        let mut mounts = Vec::new();
        if paths.is_empty() {
            return Ok((clones, mounts));
        }
        let parent = layout.dir().join(BundleLayout::RO);
        std::fs::create_dir(&parent).map_err(|source| HostError::Io {
            path: parent.clone(),
            source,
        })?;
        for (n, a) in paths.iter().enumerate() {
            let target = layout.ro(n);
            let fail = |what: &'static str, source: std::io::Error| HostError::RoBind {
                path: a.path.clone(),
                target: target.clone(),
                what,
                source,
            };
            let created = match a.kind {
                Kind::Dir => std::fs::create_dir(&target),
                _ => std::fs::File::create_new(&target).map(drop),
            };
            created.map_err(|e| fail("creating the mount point", e))?;
            let tree = tvix_oci_sys::mount::clone_tree(Path::new(&a.path))
                .map_err(|e| fail("open_tree", e))?;
            tvix_oci_sys::mount::set_read_only(&tree, a.kind == Kind::Device)
                .map_err(|e| fail("mount_setattr", e))?;
            tvix_oci_sys::mount::attach(&tree, &target).map_err(|e| fail("move_mount", e))?;
            clones.attached.push(target);
            mounts.push(RoMount {
                path: a.path.clone(),
                source: BundleLayout::ro_source(n),
                device: a.kind == Kind::Device,
            });
        }
        Ok((clones, mounts))
    }
}

impl Drop for RoClones {
    fn drop(&mut self) {
        for t in self.attached.iter().rev() {
            // MNT_DETACH takes the clone's whole tree.
            if let Err(e) = tvix_oci_sys::mount::detach(t) {
                warn!(path = %t.display(), "detaching a read-only clone: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(r: Result<Kind, BuildError>) -> String {
        match r {
            Err(BuildError::NotAllowed(m)) => m,
            other => panic!("not refused as not allowed: {other:?}"),
        }
    }

    #[test]
    fn only_exact_allowed_paths_pass() {
        let allowed = canonical_allow_list(&["/dev/null".into()]);
        assert_eq!(decide("/dev/null", &allowed).unwrap(), Kind::Device);
        let m = refused(decide("/dev", &allowed));
        assert_eq!(
            m,
            "constraints.available_ro_paths: /dev is not allowed on this builder (the operator allows paths with --allow-ro-path)"
        );
        refused(decide("/dev/null/x", &allowed));
        refused(decide("/dev/nul", &allowed));
        refused(decide("/etc", &[]));
    }

    #[test]
    fn kinds_and_absent_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().canonicalize().unwrap();
        std::fs::write(dir.join("f"), b"x").unwrap();
        let allowed = canonical_allow_list(&[dir.clone(), dir.join("f"), dir.join("gone")]);
        let s = |p: &Path| p.to_str().unwrap().to_owned();
        assert_eq!(decide(&s(&dir), &allowed).unwrap(), Kind::Dir);
        assert_eq!(decide(&s(&dir.join("f")), &allowed).unwrap(), Kind::File);
        let err = decide(&s(&dir.join("gone")), &allowed).unwrap_err();
        assert!(
            matches!(err, BuildError::Host(HostError::RoPath(ref m)) if m.contains("gone") && m.contains("does not exist")),
            "{err}"
        );
    }

    #[test]
    fn symlinks_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().canonicalize().unwrap();
        std::fs::create_dir(dir.join("real")).unwrap();
        std::os::unix::fs::symlink(dir.join("real"), dir.join("link")).unwrap();
        let link = dir.join("link");
        // The operator's list given through the link resolves to the real path ...
        let allowed = canonical_allow_list(std::slice::from_ref(&link));
        assert_eq!(allowed, [dir.join("real")]);
        refused(decide(link.to_str().unwrap(), &allowed));
        // ... and a literal list naming a symlink still binds nothing through it.
        let m = refused(decide(link.to_str().unwrap(), std::slice::from_ref(&link)));
        assert!(m.contains("symlink") && m.contains("real"), "{m}");
        // A symlink in a parent too.
        std::fs::create_dir(dir.join("real/sub")).unwrap();
        let via = link.join("sub");
        let m = refused(decide(via.to_str().unwrap(), std::slice::from_ref(&via)));
        assert!(m.contains("symlink"), "{m}");
    }
}
