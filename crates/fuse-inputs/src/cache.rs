//! [`BlobCache`]: a local directory of content-addressed blob files, so a
//! blob fetched once from a remote store is read from local disk afterwards,
//! across mounts and builds. Files are written to a temp file, checked
//! against their digest, and renamed into place, so two mounts sharing the
//! cache never see a partial or wrong file. They are not fsynced (one
//! `fsync` per blob was most of the cost of a cold read of thousands of
//! small files): instead a file this process did not write itself (one
//! from before a restart, maybe cut short or zeroed by a crash, or written
//! by another process) is checked against its digest at its first use
//! here, and removed if it is not that blob. The cache is bounded: past
//! its size, the least recently used files are removed (an open file stays
//! readable until closed).

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::io::AsyncReadExt;
use tvix_oci_castore::B3Digest;
use tvix_oci_castore::blobservice::{BlobService, CheckedReader};

use crate::stream::Stream;

/// A bounded, shareable cache of blob files.
#[derive(Debug)]
pub struct BlobCache {
    dir: PathBuf,
    max_bytes: u64,
    used: AtomicU64,
    /// One lock per blob being fetched, so one process fetches it once.
    inflight: Mutex<HashMap<B3Digest, Arc<tokio::sync::Mutex<()>>>>,
    /// Blobs whose file this process wrote or checked against the digest.
    known_good: Mutex<HashSet<B3Digest>>,
}

fn with_path(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

impl BlobCache {
    /// Opens (creating it if needed) the cache at `dir`, holding at most
    /// `max_bytes` (approximately: a fill may overshoot by one blob).
    pub fn open(dir: impl Into<PathBuf>, max_bytes: u64) -> io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(dir.join("tmp")).map_err(|e| with_path(&dir, e))?;
        // Only this user reads the inputs it fetched (a private store's).
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| with_path(&dir, e))?;
        // Fetches a dead process left unfinished.
        tvix_oci_castore::tempfiles::remove_stale(
            &dir.join("tmp"),
            tvix_oci_castore::tempfiles::STALE_AFTER,
        );
        let mut used = 0;
        for e in std::fs::read_dir(&dir).map_err(|e| with_path(&dir, e))? {
            let e = e?;
            if e.file_type()?.is_file() {
                used += e.metadata()?.len();
            }
        }
        Ok(Self {
            dir,
            max_bytes,
            used: AtomicU64::new(used),
            inflight: Mutex::new(HashMap::new()),
            known_good: Mutex::new(HashSet::new()),
        })
    }

    /// Where blob `digest` is kept.
    pub fn path(&self, digest: &B3Digest) -> PathBuf {
        self.dir.join(digest.to_hex())
    }

    /// The cached file of `digest`, opened for reading, if present, of the
    /// declared `size` and (the first time this process uses a file it did
    /// not write) of that digest. Another file there (cut short or zeroed
    /// by a crash) is removed, to be fetched again.
    pub fn get(&self, digest: &B3Digest, size: u64) -> Option<std::fs::File> {
        use std::os::unix::fs::MetadataExt;
        let path = self.path(digest);
        let mut f = std::fs::File::open(&path).ok()?;
        let meta = f.metadata().ok()?;
        let bad = |why: &str| {
            tracing::warn!(path = %path.display(), "cached blob {digest} {why}; fetching it again");
            // Only the file looked at, not one another fetch put there since.
            let same = std::fs::symlink_metadata(&path)
                .is_ok_and(|m| m.ino() == meta.ino() && m.dev() == meta.dev());
            if same && std::fs::remove_file(&path).is_ok() {
                let _ = self
                    .used
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                        Some(u.saturating_sub(meta.len()))
                    });
            }
            None
        };
        if meta.len() != size {
            return bad(&format!("is not {size} bytes"));
        }
        if !self.is_known_good(digest) {
            let mut hash = || {
                let mut h = blake3::Hasher::new();
                io::copy(&mut f, &mut h)?;
                io::Seek::seek(&mut f, io::SeekFrom::Start(0))?;
                Ok::<_, io::Error>(B3Digest::from(h.finalize()))
            };
            // On a runtime's worker: the others go on meanwhile.
            let hashed = match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
                Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(hash),
                _ => hash(),
            };
            match hashed {
                Ok(d) if d == *digest => self.known_good(*digest),
                Ok(d) => return bad(&format!("has the content of {d}")),
                Err(e) => return bad(&format!("cannot be read: {e}")),
            }
        }
        // Recently used: eviction goes by modification time.
        let _ = f.set_modified(SystemTime::now());
        Some(f)
    }

    fn is_known_good(&self, d: &B3Digest) -> bool {
        let good = self.known_good.lock().unwrap_or_else(|p| p.into_inner());
        good.contains(d)
    }

    fn known_good(&self, d: B3Digest) {
        let mut good = self.known_good.lock().unwrap_or_else(|p| p.into_inner());
        good.insert(d);
    }

    /// The cached file of `digest`, fetching it from `blobs` first if
    /// needed. The store is held to the declared `size` and the digest
    /// ([`CheckedReader`]): never more than `size` bytes are written, and a
    /// store sending more, fewer or other bytes, or nothing for `idle`,
    /// fails the fetch with an error naming the digest and both sizes.
    /// Nothing is cached then: the temp file goes with the failed (or
    /// dropped) fetch.
    pub async fn get_or_fetch(
        &self,
        blobs: &dyn BlobService,
        digest: &B3Digest,
        size: u64,
        idle: Duration,
    ) -> io::Result<(std::fs::File, bool)> {
        self.get_or_fetch_into(blobs, digest, size, idle, None)
            .await
    }

    /// [`Self::get_or_fetch`], telling `stream` of each byte as it is
    /// written, so its reader may read it before the blob is verified
    /// ([`crate::stream`]).
    pub(crate) async fn get_or_fetch_into(
        &self,
        blobs: &dyn BlobService,
        digest: &B3Digest,
        size: u64,
        idle: Duration,
        stream: Option<&Stream>,
    ) -> io::Result<(std::fs::File, bool)> {
        if let Some(f) = self.get(digest, size) {
            return Ok((f, false));
        }
        // Someone else may be fetching it: wait for them, then look again.
        let lock = {
            let mut m = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            m.entry(*digest).or_default().clone()
        };
        let guard = lock.lock().await;
        let res = match self.get(digest, size) {
            Some(f) => Ok((f, false)),
            None => self
                .fetch(blobs, digest, size, idle, stream)
                .await
                .map(|f| (f, true)),
        };
        drop(guard);
        self.inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(digest);
        res
    }

    async fn fetch(
        &self,
        blobs: &dyn BlobService,
        digest: &B3Digest,
        size: u64,
        idle: Duration,
        stream: Option<&Stream>,
    ) -> io::Result<std::fs::File> {
        let opened = tokio::time::timeout(idle, blobs.open_read(digest))
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("blob {digest}: the store did not answer for {idle:?}"),
                )
            })??;
        let reader = opened.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("blob {digest} is not in the store"),
            )
        })?;
        let mut reader = CheckedReader::new(reader, *digest, size).idle_limit(idle);
        let tmp_dir = self.dir.join("tmp");
        let mut tmp = tempfile::Builder::new()
            .prefix("fetch-")
            .tempfile_in(&tmp_dir)
            .map_err(|e| with_path(&tmp_dir, e))?;
        if let Some(s) = stream {
            s.started(tmp.reopen().map_err(|e| with_path(tmp.path(), e))?);
        }
        let mut written = 0u64;
        // Small blobs are most: no 256 KiB buffer zeroed for each.
        let mut buf = vec![
            0u8;
            usize::try_from(size)
                .unwrap_or(usize::MAX)
                .clamp(8 << 10, 256 << 10)
        ];
        loop {
            let n = reader.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            tmp.write_all(&buf[..n])?;
            written += n as u64;
            if let Some(s) = stream {
                s.wrote(written);
            }
        }
        let got = reader.received();
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o444))?;
        // Not fsynced: checked by the digest, this process trusts it; any
        // other checks it at first use (`get`).
        let dest = self.path(digest);
        let file = tmp.persist(&dest).map_err(|e| with_path(&dest, e.error))?;
        self.known_good(*digest);
        let used = self.used.fetch_add(got, Ordering::Relaxed) + got;
        if used > self.max_bytes {
            self.evict(digest);
        }
        // Reopen read-only: the handle may be given to the kernel.
        drop(file);
        std::fs::File::open(&dest).map_err(|e| with_path(&dest, e))
    }

    /// Removes the least recently used files until the cache is at 90% of
    /// its size, sparing `keep`.
    fn evict(&self, keep: &B3Digest) {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let keep = keep.to_hex();
        let mut files: Vec<(SystemTime, u64, PathBuf)> = rd
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()) && e.file_name() != keep.as_str())
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                Some((m.modified().ok()?, m.len(), e.path()))
            })
            .collect();
        files.sort();
        let target = self.max_bytes / 10 * 9;
        for (_, len, path) in files {
            if self.used.load(Ordering::Relaxed) <= target {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                self.used.fetch_sub(len, Ordering::Relaxed);
            }
        }
    }

    /// Bytes held (as this process counts them).
    pub fn used_bytes(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tvix_oci_castore::blobservice::MemoryBlobService;

    const IDLE: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn fetches_once_and_evicts_oldest() {
        let tmp = tempfile::tempdir().unwrap();
        let blobs = MemoryBlobService::default();
        let cache = BlobCache::open(tmp.path(), 2500).unwrap();
        let mut digests = Vec::new();
        for i in 0..3u8 {
            let data = Bytes::from(vec![i; 1000]);
            digests.push(blobs.put(data).await.unwrap());
        }
        for d in &digests {
            let (f, fetched) = cache.get_or_fetch(&blobs, d, 1000, IDLE).await.unwrap();
            assert!(fetched);
            assert_eq!(f.metadata().unwrap().len(), 1000);
            // Again: a hit, not a second fetch.
            assert!(!cache.get_or_fetch(&blobs, d, 1000, IDLE).await.unwrap().1);
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // The third fill went past 2500 bytes: the oldest went.
        assert!(cache.get(&digests[0], 1000).is_none());
        assert!(cache.get(&digests[2], 1000).is_some());
        // A cached file of the wrong size (cut short by a crash) is no hit,
        // and is removed.
        assert!(cache.get(&digests[2], 999).is_none());
        assert!(!cache.path(&digests[2]).exists());
        assert!(cache.used_bytes() <= 2500);
    }

    #[tokio::test]
    async fn a_file_from_before_is_checked_at_first_use() {
        let tmp = tempfile::tempdir().unwrap();
        let blobs = MemoryBlobService::default();
        let d = blobs.put(Bytes::from_static(b"abc")).await.unwrap();
        {
            let cache = BlobCache::open(tmp.path(), 1 << 20).unwrap();
            cache.get_or_fetch(&blobs, &d, 3, IDLE).await.unwrap();
        }
        // Another process (after a restart) trusts a good file after one
        // look…
        let cache = BlobCache::open(tmp.path(), 1 << 20).unwrap();
        let mut f = cache.get(&d, 3).unwrap();
        let mut s = String::new();
        std::io::Read::read_to_string(&mut f, &mut s).unwrap();
        assert_eq!(s, "abc", "read from the start after the check");
        // …but a file of the right size and the wrong bytes (zeroed by a
        // crash) is no hit, and is removed.
        let path = cache.path(&d);
        let zeroed = blobs.put(Bytes::from_static(b"\0\0\0")).await.unwrap();
        std::fs::copy(&path, cache.path(&zeroed)).unwrap();
        let cache = BlobCache::open(tmp.path(), 1 << 20).unwrap();
        assert!(cache.get(&zeroed, 3).is_none());
        assert!(!cache.path(&zeroed).exists());
        assert!(cache.get(&d, 3).is_some());
    }

    #[tokio::test]
    async fn wrong_size_is_refused_and_not_cached() {
        let tmp = tempfile::tempdir().unwrap();
        let blobs = MemoryBlobService::default();
        let d = blobs.put(Bytes::from_static(b"abc")).await.unwrap();
        let cache = BlobCache::open(tmp.path(), 1 << 20).unwrap();
        let err = cache.get_or_fetch(&blobs, &d, 4, IDLE).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains(&d.to_hex()));
        assert!(err.to_string().contains("3 bytes, 4 declared"), "{err}");
        assert!(cache.get(&d, 4).is_none());
        // No temp file either.
        assert_eq!(
            std::fs::read_dir(tmp.path().join("tmp")).unwrap().count(),
            0
        );
    }
}
