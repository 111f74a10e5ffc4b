//! Rootless mode: builds run by a user other than root, the way rootless
//! runc and podman run containers. The container gets a user namespace in
//! which its root is the executor's own user and every other id, the build
//! user (1000:100) among them, comes from the user's range in `/etc/subuid`
//! and `/etc/subgid` (mapped by the setuid `newuidmap`/`newgidmap`). The
//! inputs are mounted through the setuid `fusermount3` with `allow_other`
//! (the build user reads them); the overlay on them is mounted inside the
//! container, where its user namespace may; the dirs the build writes are
//! left ours with mode 0777 (only the container reaches into the 0700
//! bundle). What the build wrote belongs to its sub-id, so the bundle is
//! removed from inside a user namespace of the same mapping (`unshare`).
//! runc keeps its state under the bundle root; no cgroup is made (cgroup v1
//! gives none to a user).
//!
//! [`prepare`] checks all of that up front and names everything missing.

use std::path::{Path, PathBuf};

use tvix_oci_spec::{BUILD_UID, IdMapping};

use crate::BuildError;
use crate::faults::HostError;

/// How a rootless build maps ids and where runc keeps its state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rootless {
    pub uid_mappings: Vec<IdMapping>,
    pub gid_mappings: Vec<IdMapping>,
    /// The executor's own ids, container root.
    pub uid: u32,
    pub gid: u32,
    /// The sub-id ranges mapped from container id 1 on: (first, count).
    pub subuids: (u32, u32),
    pub subgids: (u32, u32),
    /// runc's `--root`: container state, ours rather than root's.
    pub runc_root: PathBuf,
}

/// The first id and count of the range of `user` (name or uid) in a
/// subordinate id file's text (`name:start:count` per line).
pub fn subordinate_range(text: &str, name: &str, id: u32) -> Option<(u32, u32)> {
    text.lines().find_map(|l| {
        let mut f = l.trim().split(':');
        let (who, start, count) = (f.next()?, f.next()?, f.next()?);
        if who != name && who.parse() != Ok(id) {
            return None;
        }
        let (start, count) = (start.parse().ok()?, count.parse::<u32>().ok()?);
        (count > 0).then_some((start, count))
    })
}

/// Sub-ids a user needs: container ids 1 to the build user's.
const NEEDED: u32 = BUILD_UID;

/// The mappings: container root → the executor's own id, ids from 1 on →
/// the sub-id range (at most up to 65535).
pub fn mappings(own: u32, (start, count): (u32, u32)) -> Vec<IdMapping> {
    vec![
        IdMapping {
            container_id: 0,
            host_id: own,
            size: 1,
        },
        IdMapping {
            container_id: 1,
            host_id: start,
            size: count.min(65535),
        },
    ]
}

fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let id: u32 = f.nth(1)?.parse().ok()?;
        (id == uid).then(|| name.to_owned())
    })
}

fn on_path(bin: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|d| d.join(bin).is_file())
}

/// Checks what rootless builds need, and returns how to run them; the
/// error lists everything missing, each with how to fix it.
pub fn prepare(bundle_root: &Path) -> Result<Rootless, BuildError> {
    // SAFETY: these have no preconditions.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let name = user_name(uid).unwrap_or_else(|| uid.to_string());
    let mut missing = Vec::new();
    let mut range = |file: &str| {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let r = subordinate_range(&text, &name, uid).filter(|(_, n)| *n >= NEEDED);
        if r.is_none() {
            missing.push(format!(
                "a range of at least {NEEDED} ids for user {name} in {file} (e.g. usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {name})"
            ));
        }
        r
    };
    let (subuid, subgid) = (range("/etc/subuid"), range("/etc/subgid"));
    for bin in ["newuidmap", "newgidmap", "unshare"] {
        if !on_path(bin) {
            let pkg = if bin == "unshare" {
                "util-linux"
            } else {
                "uidmap"
            };
            missing.push(format!("{bin} on PATH (apt-get install {pkg})"));
        }
    }
    if !on_path("fusermount3") {
        missing.push("fusermount3 on PATH (apt-get install fuse3)".into());
    }
    if nix::unistd::access(
        "/dev/fuse",
        nix::unistd::AccessFlags::R_OK | nix::unistd::AccessFlags::W_OK,
    )
    .is_err()
    {
        missing.push(format!(
            "/dev/fuse readable and writable by uid {uid} (chmod 0666 /dev/fuse, as udev sets it)"
        ));
    }
    let fuse_conf = std::fs::read_to_string("/etc/fuse.conf").unwrap_or_default();
    if !fuse_conf.lines().any(|l| l.trim() == "user_allow_other") {
        missing.push("user_allow_other in /etc/fuse.conf".into());
    }
    match (subuid, subgid) {
        (Some(subuids), Some(subgids)) if missing.is_empty() => Ok(Rootless {
            uid_mappings: mappings(uid, subuids),
            gid_mappings: mappings(gid, subgids),
            uid,
            gid,
            subuids,
            subgids,
            runc_root: bundle_root.join(".runc"),
        }),
        _ => Err(HostError::Rootless { uid, missing }.into()),
    }
}

impl Rootless {
    /// Removes `path` from inside a user namespace with the containers'
    /// mapping, whose root may remove what the build's sub-ids wrote.
    pub fn remove_tree(&self, path: &Path) -> std::io::Result<()> {
        // Root is our own id (--map-root-user), the rest the sub-ids.
        let range = |(start, count): (u32, u32)| format!("{start},1,{}", count.min(65535));
        let out = std::process::Command::new("unshare")
            .args(["--user", "--map-root-user"])
            .args(["--map-users", &range(self.subuids)])
            .args(["--map-groups", &range(self.subgids)])
            .args(["--", "rm", "-rf", "--one-file-system", "--"])
            .arg(path)
            .stdin(std::process::Stdio::null())
            .output()?;
        if out.status.success() && !path.exists() {
            Ok(())
        } else {
            Err(std::io::Error::other(format!(
                "removing {} in a user namespace: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }
}

/// Where bundles go by default: root's under the temp dir; a user's in
/// `$XDG_RUNTIME_DIR`, or a temp dir of the user's own.
pub fn default_bundle_root() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        return std::env::temp_dir().join("tvix-oci-build");
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d).join("tvix-oci-build"),
        None => std::env::temp_dir().join(format!("tvix-oci-build-{uid}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_by_name_or_uid() {
        let text = "alice:100000:65536\n1001:200000:1000\nbob:300000:0\n";
        assert_eq!(
            subordinate_range(text, "alice", 1000),
            Some((100000, 65536))
        );
        assert_eq!(subordinate_range(text, "carol", 1001), Some((200000, 1000)));
        assert_eq!(subordinate_range(text, "bob", 1002), None, "an empty range");
        assert_eq!(subordinate_range(text, "dave", 1003), None);
        assert_eq!(subordinate_range("garbage\n:::\n", "x", 1), None);
    }

    #[test]
    fn root_is_the_executor_and_the_rest_comes_from_the_range() {
        let m = mappings(1234, (100000, 65536));
        assert_eq!(m.iter().find_map(|r| r.host_of(0)), Some(1234));
        assert_eq!(m.iter().find_map(|r| r.host_of(1)), Some(100000));
        assert_eq!(m.iter().find_map(|r| r.host_of(BUILD_UID)), Some(100999));
        assert_eq!(m.iter().find_map(|r| r.host_of(65535)), Some(165534));
        assert_eq!(m.iter().find_map(|r| r.host_of(65536)), None);
        let small = mappings(1234, (100000, 1001));
        assert_eq!(
            small.iter().find_map(|r| r.host_of(BUILD_UID)),
            Some(100999)
        );
        assert_eq!(small.iter().find_map(|r| r.host_of(1002)), None);
    }
}
