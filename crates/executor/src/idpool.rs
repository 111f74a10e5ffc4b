//! The build id pool: as root, each build runs in a user namespace of its
//! own whose ids 0..65535 are a slot of host ids no host account uses (by
//! default Nix's `auto-allocate-uids` range), so no host user is the build
//! user (who could then reach into the build through `/proc/PID/root`), and
//! no two builds share ids. A slot is held with `flock` on a lock file
//! under a host-wide directory for the build's life ([`IdSlot`]), so two
//! executors on one host never share one; it is taken only when no process
//! on the host still runs with an id in it. The slot's directory also holds
//! the build's root skeleton, which the container's root (an unprivileged
//! host uid) must reach, whatever the bundle root's parents allow.

use std::fs::File;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tvix_oci_spec::{IdMapping, IdMappings};

/// Ids per build: container ids 0..65535.
pub const SLOT_IDS: u32 = 65536;
/// Nix's `auto-allocate-uids` start-id.
pub const DEFAULT_START: u32 = 872_415_232;
/// Nix's id-count (8388608) in slots.
pub const DEFAULT_SLOTS: u32 = 128;

/// Where the pool is and what it must not clash with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdPoolConfig {
    /// The first host id of the pool.
    pub start: u32,
    /// Host ids in the pool, a multiple of [`SLOT_IDS`].
    pub count: u32,
    /// The host-wide directory of the slots' lock files and root
    /// skeletons, shared by every executor of the host.
    pub dir: PathBuf,
    /// Where `passwd`, `group`, `subuid` and `subgid` are.
    pub etc: PathBuf,
    /// Where the host's processes are listed.
    pub proc: PathBuf,
}

impl Default for IdPoolConfig {
    fn default() -> Self {
        Self {
            start: DEFAULT_START,
            count: DEFAULT_SLOTS * SLOT_IDS,
            dir: PathBuf::from("/run/tvix-oci-build/id-pool"),
            etc: PathBuf::from("/etc"),
            proc: PathBuf::from("/proc"),
        }
    }
}

/// Why the pool cannot give a build its ids. Each names the file or range.
#[derive(Debug, thiserror::Error)]
pub enum IdPoolError {
    #[error(
        "the build id pool {0} is not START:COUNT with COUNT a positive multiple of {SLOT_IDS} ending below 4294967295"
    )]
    Range(String),
    #[error(
        "{what} in {} is inside the build id pool {start}..{end}; choose another with --id-pool",
        file.display()
    )]
    Clash {
        what: String,
        file: PathBuf,
        start: u64,
        end: u64,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "all {slots} slots of the build id pool are busy (held by running builds, or used by processes still running); wait, or give a larger --id-pool"
    )]
    Exhausted { slots: u32 },
}

fn at(path: &Path) -> impl FnOnce(io::Error) -> IdPoolError + '_ {
    move |source| IdPoolError::Io {
        path: path.to_owned(),
        source,
    }
}

/// `START:COUNT` (for `--id-pool`): the pool's first id and its size.
pub fn parse_range(s: &str) -> Result<(u32, u32), IdPoolError> {
    let bad = || IdPoolError::Range(s.to_owned());
    let (a, b) = s.split_once(':').ok_or_else(bad)?;
    let (start, count) = (
        a.trim().parse::<u32>().map_err(|_| bad())?,
        b.trim().parse::<u32>().map_err(|_| bad())?,
    );
    let fits = u64::from(start) + u64::from(count) <= u64::from(u32::MAX);
    if count == 0 || !count.is_multiple_of(SLOT_IDS) || !fits {
        return Err(bad());
    }
    Ok((start, count))
}

/// A pool whose range clashes with no account of the host.
#[derive(Debug)]
pub struct IdPool {
    config: IdPoolConfig,
}

impl IdPool {
    /// Checks the range and the host's `passwd`, `group`, `subuid` and
    /// `subgid` (absent ones are skipped): refuses a pool holding an id or
    /// overlapping a sub-id range of them, naming it.
    pub fn open(config: IdPoolConfig) -> Result<Self, IdPoolError> {
        parse_range(&format!("{}:{}", config.start, config.count))?;
        let (start, end) = (
            u64::from(config.start),
            u64::from(config.start) + u64::from(config.count),
        );
        for (name, what) in [
            ("passwd", "user"),
            ("group", "group"),
            ("subuid", "sub-uid"),
            ("subgid", "sub-gid"),
        ] {
            let file = config.etc.join(name);
            let text = match std::fs::read_to_string(&file) {
                Ok(t) => t,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(at(&file)(e)),
            };
            if let Some(what) = clash(&text, what, start, end) {
                return Err(IdPoolError::Clash {
                    what,
                    file,
                    start,
                    end,
                });
            }
        }
        Ok(Self { config })
    }

    /// Takes the first free slot: one no other build holds and no process
    /// of the host runs in (its ids read from `/proc/*/status`).
    pub fn take(&self) -> Result<IdSlot, IdPoolError> {
        let dir = &self.config.dir;
        std::fs::DirBuilder::new()
            .mode(0o711)
            .recursive(true)
            .create(dir)
            .map_err(at(dir))?;
        // The container roots walk through it to their skeletons.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).map_err(at(dir))?;
        let in_use = ids_in_use(&self.config.proc);
        let slots = self.config.count / SLOT_IDS;
        for i in 0..slots {
            let base = self.config.start + i * SLOT_IDS;
            if in_use
                .iter()
                .any(|&id| (base..=base + (SLOT_IDS - 1)).contains(&id))
            {
                continue;
            }
            let lock = dir.join(format!("{base}.lock"));
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&lock)
                .map_err(at(&lock))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => continue,
                Err(std::fs::TryLockError::Error(e)) => return Err(at(&lock)(e)),
            }
            return IdSlot::prepare(base, dir.join(base.to_string()), file);
        }
        Err(IdPoolError::Exhausted { slots })
    }
}

/// The first id (or sub-id range) of an account file's text inside
/// `start..end`, described: `uid 872415300 of user foo`.
fn clash(text: &str, kind: &str, start: u64, end: u64) -> Option<String> {
    let inside = |id: u64| (start..end).contains(&id);
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.trim().split(':').collect();
        let num = |i: usize| f.get(i)?.trim().parse::<u64>().ok();
        let name = f.first()?;
        match kind {
            "user" => {
                let (uid, gid) = (num(2), num(3));
                if let Some(u) = uid.filter(|&u| inside(u)) {
                    return Some(format!("uid {u} of user {name}"));
                }
                gid.filter(|&g| inside(g))
                    .map(|g| format!("gid {g} of user {name}"))
            }
            "group" => num(2)
                .filter(|&g| inside(g))
                .map(|g| format!("gid {g} of group {name}")),
            _ => {
                let (first, count) = (num(1)?, num(2)?);
                let last = first + count; // exclusive
                (count > 0 && first < end && last > start)
                    .then(|| format!("{kind} range {first}..{last} of user {name}"))
            }
        }
    })
}

/// Every uid and gid (real, effective, saved, filesystem) of every process
/// under `proc`. Processes gone while reading are skipped.
pub fn ids_in_use(proc: &Path) -> Vec<u32> {
    let mut ids = Vec::new();
    let Ok(rd) = std::fs::read_dir(proc) else {
        return ids;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        for l in status.lines() {
            if let Some(rest) = l.strip_prefix("Uid:").or_else(|| l.strip_prefix("Gid:")) {
                ids.extend(
                    rest.split_whitespace()
                        .filter_map(|n| n.parse::<u32>().ok()),
                );
            }
        }
    }
    ids
}

/// One build's slot, held until dropped: the lock, and the directory of
/// its root skeleton (removed on drop, and when the slot is next taken
/// should a killed executor have left it).
#[derive(Debug)]
pub struct IdSlot {
    base: u32,
    dir: PathBuf,
    _lock: File,
}

impl IdSlot {
    fn prepare(base: u32, dir: PathBuf, lock: File) -> Result<Self, IdPoolError> {
        let slot = Self {
            base,
            dir,
            _lock: lock,
        };
        slot.remove_dir()?;
        // Only the slot's container root (its group) walks into it.
        std::fs::DirBuilder::new()
            .mode(0o710)
            .create(&slot.dir)
            .map_err(at(&slot.dir))?;
        std::os::unix::fs::chown(&slot.dir, Some(0), Some(base)).map_err(at(&slot.dir))?;
        Ok(slot)
    }

    /// The host id of container id 0.
    pub fn base(&self) -> u32 {
        self.base
    }

    /// Container ids 0..65535 to the slot, uids and gids alike.
    pub fn mappings(&self) -> IdMappings {
        let m = IdMapping {
            container_id: 0,
            host_id: self.base,
            size: SLOT_IDS,
        };
        IdMappings {
            uid: vec![m],
            gid: vec![m],
        }
    }

    /// Where the build's root skeleton goes.
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("root")
    }

    fn remove_dir(&self) -> Result<(), IdPoolError> {
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(at(&self.dir)(e)),
            _ => Ok(()),
        }
    }
}

impl Drop for IdSlot {
    fn drop(&mut self) {
        if let Err(e) = self.remove_dir() {
            tracing::warn!("removing the build's root skeleton: {e}");
        }
    }
}

#[cfg(test)]
#[path = "idpool_tests.rs"]
mod tests;
