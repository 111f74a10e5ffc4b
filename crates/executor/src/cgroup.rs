//! A cgroup per build for accounting: the executor makes
//! `tvix-oci-build/<id>` itself and has runc put the container in
//! `tvix-oci-build/<id>/build`. runc removes its own cgroup when the
//! container ends, but the parent stays, and with it the container's CPU
//! time and peak memory (both hierarchical, on cgroup v1 and v2), which the
//! executor reads before removing the parent. Best effort: where no cgroup
//! can be made (rootless, no cgroupfs), accounting falls back to `wait4`'s
//! resource usage.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::{debug, warn};

/// The cgroup under every hierarchy's root that holds the builds'.
pub const PARENT: &str = "tvix-oci-build";

/// The cgroup filesystems mounted here: (mount point, is v2, controllers).
fn hierarchies() -> Vec<(PathBuf, bool, Vec<String>)> {
    let Ok(mounts) = tvix_oci_sys::mountinfo::mounts() else {
        return Vec::new();
    };
    mounts
        .into_iter()
        .filter_map(|m| match m.fs_type.as_str() {
            "cgroup2" => Some((m.mount_point, true, Vec::new())),
            "cgroup" => {
                let controllers = m.super_options.split(',').map(String::from).collect();
                Some((m.mount_point, false, controllers))
            }
            _ => None,
        })
        .collect()
}

/// One build's cgroup, removed (with what runc left in it) when dropped.
#[derive(Debug)]
pub struct BuildCgroup {
    id: String,
    /// Where the figures are read: v2's, or v1's memory and cpuacct.
    v2: Option<PathBuf>,
    memory: Option<PathBuf>,
    cpuacct: Option<PathBuf>,
    /// Every hierarchy's `tvix-oci-build/<id>`, to remove.
    all: Vec<PathBuf>,
}

/// What the container used, read from its cgroup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub cpu: Option<Duration>,
    pub peak_memory: Option<u64>,
}

impl BuildCgroup {
    /// Makes the build's cgroup where it can; `None` where no cgroup
    /// filesystem is writable. The hybrid layout's v2 mount (no
    /// controllers, next to v1's) is left alone: runc uses v1 there.
    pub fn create(id: &str) -> Option<Self> {
        let hs = hierarchies();
        let unified = hs
            .iter()
            .any(|(mp, v2, _)| *v2 && mp == Path::new("/sys/fs/cgroup"));
        let mut cg = BuildCgroup {
            id: id.to_owned(),
            v2: None,
            memory: None,
            cpuacct: None,
            all: Vec::new(),
        };
        for (mp, v2, ctrls) in hs {
            let dir = mp.join(PARENT).join(id);
            // runc makes the build's cgroup in every hierarchy (the hybrid
            // layout's v2 mount too): all are removed.
            cg.all.push(dir.clone());
            if v2 != unified {
                continue;
            }
            let wanted = v2 || ctrls.iter().any(|c| c == "memory" || c == "cpuacct");
            if !wanted {
                continue; // runc makes it; it is only removed
            }
            if let Err(e) = std::fs::create_dir_all(&dir) {
                debug!(path = %dir.display(), "no cgroup for accounting: {e}");
                continue;
            }
            if v2 {
                cg.v2 = Some(dir.clone());
            }
            if ctrls.iter().any(|c| c == "memory") {
                cg.memory = Some(dir.clone());
            }
            if ctrls.iter().any(|c| c == "cpuacct") {
                cg.cpuacct = Some(dir);
            }
        }
        (cg.v2.is_some() || cg.memory.is_some() || cg.cpuacct.is_some()).then_some(cg)
    }

    /// The cgroup path runc gets: a child of ours.
    pub fn runc_path(&self) -> PathBuf {
        Path::new("/").join(PARENT).join(&self.id).join("build")
    }

    /// What the container used, once it has ended.
    pub fn usage(&self) -> Usage {
        let read = |p: PathBuf| std::fs::read_to_string(p).ok();
        let num = |p: PathBuf| read(p).and_then(|s| s.trim().parse::<u64>().ok());
        match &self.v2 {
            Some(d) => Usage {
                cpu: read(d.join("cpu.stat")).and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("usage_usec "))
                        .and_then(|v| v.trim().parse().ok())
                        .map(Duration::from_micros)
                }),
                peak_memory: num(d.join("memory.peak")),
            },
            None => Usage {
                cpu: self
                    .cpuacct
                    .as_ref()
                    .and_then(|d| num(d.join("cpuacct.usage")))
                    .map(Duration::from_nanos),
                peak_memory: self
                    .memory
                    .as_ref()
                    .and_then(|d| num(d.join("memory.max_usage_in_bytes"))),
            },
        }
    }
}

impl Drop for BuildCgroup {
    fn drop(&mut self) {
        for dir in &self.all {
            remove_cgroup(dir);
        }
    }
}

/// Removes a cgroup dir and its child cgroups, deepest first (a cgroup is
/// removed with rmdir, and only once it has no processes and no children).
pub fn remove_cgroup(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&e.path());
            }
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => warn!(path = %dir.display(), "removing a build's cgroup: {e}"),
    }
}

/// Every hierarchy's `tvix-oci-build` dir, for the stale cleanup.
pub fn parents() -> Vec<PathBuf> {
    hierarchies()
        .into_iter()
        .map(|(mp, ..)| mp.join(PARENT))
        .filter(|p| p.is_dir())
        .collect()
}
