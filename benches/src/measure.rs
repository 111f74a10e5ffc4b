//! What the input benchmarks measure on a tree, wherever it is (local disk
//! or a FUSE mount): `stat` of every file, open to first byte, sequential
//! reads, and a whole-tree read.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Every non-directory below `root`, sorted.
pub fn files_below(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_owned()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => todo.push(e.path()),
                Ok(_) => out.push(e.path()),
                Err(_) => {}
            }
        }
    }
    out.sort();
    out
}

/// The `q` quantile (0..=1) of `v`.
pub fn percentile(v: &mut [Duration], q: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[((v.len() as f64 - 1.0) * q).round() as usize]
}

/// Reads `p` to its end; its size and the time it took.
pub fn read_all(p: &Path) -> Res<(u64, Duration)> {
    let t = Instant::now();
    let mut f = std::fs::File::open(p)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        n += k as u64;
    }
    Ok((n, t.elapsed()))
}

/// The time of each `stat` (no symlink followed) of `paths`.
pub fn stat_each(paths: &[PathBuf]) -> Res<Vec<Duration>> {
    paths
        .iter()
        .map(|p| {
            let t = Instant::now();
            std::fs::symlink_metadata(p)?;
            Ok(t.elapsed())
        })
        .collect()
}

/// The time from open to the first byte read of each of `paths`.
pub fn first_byte_each(paths: &[PathBuf]) -> Res<Vec<Duration>> {
    let mut one = [0u8; 1];
    paths
        .iter()
        .map(|p| {
            let t = Instant::now();
            let mut f = std::fs::File::open(p)?;
            f.read_exact(&mut one)?;
            Ok(t.elapsed())
        })
        .collect()
}

/// Reads every regular file of `files` with `threads` readers (as a
/// parallel `tar c | wc -c` would); the bytes and the time.
pub fn read_tree(files: &[PathBuf], threads: usize) -> Res<(u64, Duration)> {
    let t = Instant::now();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let total = std::sync::atomic::AtomicU64::new(0);
    let failed = std::sync::Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(p) = files.get(i) else { break };
                    if p.is_symlink() {
                        continue;
                    }
                    match read_all(p) {
                        Ok((n, _)) => {
                            total.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                        }
                        Err(e) => {
                            *failed.lock().unwrap_or_else(|p| p.into_inner()) =
                                Some(format!("{}: {e}", p.display()));
                            break;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e.into());
    }
    Ok((total.into_inner(), t.elapsed()))
}
