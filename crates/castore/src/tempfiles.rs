//! Temp files of writes that never finished. A blob is written to a temp
//! file and renamed into place; a process killed mid-write leaves the temp
//! file behind, owned by nobody. Stores sweep them when opened; only old
//! ones, since another process sharing the directory may be writing.

use std::path::Path;
use std::time::{Duration, SystemTime};

/// How old an unfinished temp file must be to be removed.
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
        .filter(|e| {
            e.metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| now.duration_since(t).is_ok_and(|d| d > age))
        })
        .filter(|e| std::fs::remove_file(e.path()).is_ok())
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
}
