//! Temp files of writes that never finished. A blob is written to a temp
//! file and renamed into place; a process killed mid-write leaves the temp
//! file behind, owned by nobody. Stores sweep them when opened.
//!
//! A temp file is named after its owner ([`owned_prefix`]): `KIND.PID.HOST.`
//! then random letters, where HOST tags this boot of this machine and pid
//! namespace. At open, [`sweep`] removes the files whose owner is certainly
//! gone (same HOST tag, PID no longer running) and keeps those of live
//! processes; a file whose owner cannot be judged (another machine or
//! container sharing the directory, an older name without an owner, a
//! previous boot) is removed only once older than [`STALE_AFTER`].

use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

/// How old a temp file of an owner that cannot be judged must be to be
/// removed.
pub const STALE_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Removes the files in `dir` last modified more than `age` ago. Returns
/// how many were removed; errors are skipped (a sweep is best effort).
pub fn remove_stale(dir: &Path, age: Duration) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    let now = SystemTime::now();
    rd.flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter(|e| older_than(e, now, age))
        .filter(|e| std::fs::remove_file(e.path()).is_ok())
        .count()
}

fn older_than(e: &std::fs::DirEntry, now: SystemTime, age: Duration) -> bool {
    e.metadata()
        .and_then(|m| m.modified())
        .is_ok_and(|t| now.duration_since(t).is_ok_and(|d| d > age))
}

/// This boot of this machine, in this pid namespace: 8 hex digits of the
/// BLAKE3 of the kernel's boot id and our pid namespace. Two processes
/// with the same tag see each other's pids.
pub fn host_tag() -> &'static str {
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| {
        let boot = std::fs::read("/proc/sys/kernel/random/boot_id").unwrap_or_default();
        let ns = std::fs::read_link("/proc/self/ns/pid").unwrap_or_default();
        let mut h = blake3::Hasher::new();
        h.update(&boot);
        h.update(b"\0");
        h.update(ns.as_os_str().as_encoded_bytes());
        h.finalize().to_hex()[..8].to_owned()
    })
}

/// The prefix for a temp file of kind `kind` (letters, no dots) owned by
/// this process: `KIND.PID.HOST.`.
pub fn owned_prefix(kind: &str) -> String {
    format!("{kind}.{}.{}.", std::process::id(), host_tag())
}

/// The owner `(pid, host tag)` a temp file's name records, if any.
fn owner_of(name: &str) -> Option<(i32, &str)> {
    let mut parts = name.split('.');
    let _kind = parts.next()?;
    let pid = parts.next()?.parse::<i32>().ok().filter(|p| *p > 0)?;
    let host = parts.next()?;
    parts.next()?;
    Some((pid, host))
}

/// Whether process `pid` exists.
fn alive(pid: i32) -> bool {
    u32::try_from(pid).is_ok_and(tvix_oci_sys::process::alive)
}

/// Removes the temp files in `dir` left by processes that are gone (see
/// the module docs); live processes' files are kept. Returns how many were
/// removed; errors are skipped (a sweep is best effort).
pub fn sweep(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    let now = SystemTime::now();
    rd.flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter(|e| owner_gone(e, now))
        .filter(|e| std::fs::remove_file(e.path()).is_ok())
        .count()
}

/// Whether the owner its name records of temp entry `e` is gone (see the
/// module docs).
fn owner_gone(e: &std::fs::DirEntry, now: SystemTime) -> bool {
    match owner_of(&e.file_name().to_string_lossy()) {
        Some((pid, host)) if host == host_tag() => !alive(pid),
        _ => older_than(e, now, STALE_AFTER),
    }
}

/// Removes the directories in `dir` named `KIND.PID.HOST.…` for `kind`
/// (see [`owned_prefix`]) whose owner is gone, by the rules of [`sweep`];
/// anything else in `dir` is left alone. Returns how many were removed.
pub fn sweep_owned_dirs(dir: &Path, kind: &str) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    let now = SystemTime::now();
    let ours = format!("{kind}.");
    rd.flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter(|e| e.file_name().to_string_lossy().starts_with(&ours))
        .filter(|e| owner_gone(e, now))
        .filter(|e| std::fs::remove_dir_all(e.path()).is_ok())
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_only_old_files() {
        let tmp = tempfile::tempdir().unwrap();
        let old = tmp.path().join("old");
        let new = tmp.path().join("new");
        std::fs::write(&old, b"x").unwrap();
        std::fs::write(&new, b"x").unwrap();
        let f = std::fs::File::options().write(true).open(&old).unwrap();
        f.set_modified(SystemTime::now() - 2 * STALE_AFTER).unwrap();
        assert_eq!(remove_stale(tmp.path(), STALE_AFTER), 1);
        assert!(!old.exists() && new.exists());
    }

    #[test]
    fn names_record_the_owner() {
        let p = owned_prefix("blob");
        let name = format!("{p}Ab3xYz");
        assert_eq!(
            owner_of(&name),
            Some((std::process::id() as i32, host_tag()))
        );
        assert_eq!(owner_of("blob-Ab3xYz"), None);
        assert_eq!(owner_of("blob.x.y.z"), None);
        assert_eq!(owner_of("blob.-4.y.z"), None);
    }

    #[test]
    fn sweeps_dead_owners_and_keeps_live_and_unknown_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        // A child that has exited and been reaped: its pid is gone.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let here = host_tag();
        let files = [
            (format!("blob.{dead}.{here}.aaaaaa"), false),
            // Above the largest pid Linux allows (2^22): never alive.
            (format!("blob.{}.{here}.bbbbbb", 4_194_305), false),
            (format!("{}cccccc", owned_prefix("blob")), true),
            // Another host or container: not judged by pid, and recent.
            (format!("blob.{dead}.0000ffff.dddddd"), true),
            ("blob-eeeeee".to_owned(), true),
        ];
        for (f, _) in &files {
            std::fs::write(d.join(f), b"x").unwrap();
        }
        // The reaped pid may, rarely, have been reused meanwhile.
        let reused = alive(dead as i32);
        let removed = sweep(d);
        for (f, kept) in &files {
            let expect = *kept || (reused && f.contains(&format!(".{dead}.{here}.")));
            assert_eq!(d.join(f).exists(), expect, "{f}");
        }
        assert_eq!(removed, if reused { 1 } else { 2 });
    }
}
