//! Cleaning up after a process that died mid-build (SIGKILL, a crash): its
//! bundles under the bundle root, the mounts in them and its containers.
//! A bundle is stale when the process whose id is in its name is gone.

use std::path::Path;

use tracing::{info, warn};

use crate::rootless::Rootless;

/// The pid in a bundle name `tob-<pid>-<n>-<nonce>`.
fn owner_pid(name: &str) -> Option<u32> {
    name.strip_prefix("tob-")?.split('-').next()?.parse().ok()
}

use tvix_oci_sys::process::alive;

/// Detaches the read-only clones of host paths in bundle `dir` (see
/// [`crate::ro_paths`]), each with its whole tree. First, and as a whole:
/// a FUSE mount inside one is the host's, whose connection must not be
/// aborted like the build's inputs.
fn detach_ro_clones(dir: &Path) {
    let ro = dir.join(tvix_oci_spec::BundleLayout::RO);
    let depth = ro.components().count() + 1;
    let mut tops: Vec<_> = tvix_oci_sys::mountinfo::mounts_below(&ro)
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.mount_point.components().count() == depth)
        .map(|m| m.mount_point)
        .collect();
    tops.dedup();
    for t in tops {
        if let Err(err) = tvix_oci_sys::mount::detach(&t) {
            warn!(path = %t.display(), "detaching a stale read-only clone: {err}");
        }
    }
}

/// Removes the stale bundles under `root`: deletes their containers,
/// aborts and detaches their mounts (deepest first), removes the
/// directories (`rootless`: runc's state and the builds' files are those
/// of rootless builds). Returns how many were cleaned.
pub fn cleanup_stale(root: &Path, runc: &Path, rootless: Option<&Rootless>) -> usize {
    let Ok(rd) = std::fs::read_dir(root) else {
        return 0;
    };
    let mut cleaned = 0;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = owner_pid(&name) else {
            continue;
        };
        if pid == std::process::id() || alive(pid) {
            continue;
        }
        let dir = e.path();
        warn!(bundle = %dir.display(), "cleaning up after a build of a process that died");
        let mut delete = std::process::Command::new(runc);
        if let Some(r) = rootless {
            delete.arg("--root").arg(&r.runc_root);
        }
        let _ = delete
            .args(["delete", "--force", &name])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        detach_ro_clones(&dir);
        let mut mounts = tvix_oci_sys::mountinfo::mounts_below(&dir).unwrap_or_default();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.mount_point.components().count()));
        for m in &mounts {
            if m.fs_type.starts_with("fuse") {
                let _ = tvix_oci_fuse::abort_connection(&m.mount_point);
            }
            let detached = if m.fs_type.starts_with("fuse") {
                tvix_oci_fuse::detach(&m.mount_point)
            } else {
                tvix_oci_sys::mount::detach(&m.mount_point).map_err(std::io::Error::from)
            };
            if let Err(err) = detached {
                warn!(path = %m.mount_point.display(), "detaching a stale mount: {err}");
            }
        }
        if tvix_oci_sys::mountinfo::mounts_below(&dir).is_ok_and(|m| m.is_empty()) {
            let removed = crate::bundle_dir::remove_tree(&dir)
                .or_else(|e| rootless.map_or(Err(e), |r| r.remove_tree(&dir)));
            match removed {
                Ok(()) => cleaned += 1,
                Err(err) => warn!(bundle = %dir.display(), "removing a stale bundle: {err}"),
            }
        }
    }
    // Their cgroups (the executor's parent of runc's, per hierarchy).
    for parent in crate::cgroup::parents() {
        for e in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if owner_pid(&name).is_some_and(|pid| pid != std::process::id() && !alive(pid)) {
                crate::cgroup::remove_cgroup(&e.path());
            }
        }
    }
    if cleaned > 0 {
        info!(cleaned, "stale bundles removed");
    }
    cleaned
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pids() {
        assert_eq!(owner_pid("tob-123-4-abcd"), Some(123));
        assert_eq!(owner_pid("other"), None);
        assert_eq!(owner_pid("tob-x-1"), None);
    }

    #[test]
    fn removes_dead_owners_bundles_only() {
        let tmp = tempfile::tempdir().unwrap();
        // pid 2^22+1 is above the kernel's pid_max: never alive.
        let dead = tmp.path().join("tob-4194305-0-00");
        let mine = tmp.path().join(format!("tob-{}-0-00", std::process::id()));
        let other = tmp.path().join("not-a-bundle");
        for d in [&dead, &mine, &other] {
            std::fs::create_dir_all(d.join("root/etc")).unwrap();
        }
        assert_eq!(
            cleanup_stale(tmp.path(), Path::new("/nonexistent/runc"), None),
            1
        );
        assert!(!dead.exists() && mine.exists() && other.exists());
    }
}
