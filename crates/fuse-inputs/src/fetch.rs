//! [`Fetcher`]: every store call of a mount, guarded the same way — a
//! timeout, the mount going away, the reader being killed, a panic in the
//! store — and bounded: at most `fetch_concurrency` blob fetches for reads
//! at once, and as many again for read-ahead. Async, so a FUSE worker
//! thread never waits for a fetch: an open of a blob not yet local is
//! answered from a task once the blob is here and checked.
//!
//! Directories come as closures: the first look at a directory not yet
//! known asks for its closure in one recursive Get (up to
//! [`CLOSURE_DIRS`] directories), so walking an input costs one round
//! trip, not one per directory.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fuser::Errno;
use futures::{FutureExt, StreamExt};
use tracing::{debug, error};
use tvix_oci_castore::blobservice::BlobService;
use tvix_oci_castore::directoryservice::DirectoryService;
use tvix_oci_castore::{B3Digest, ClosureError, Directory, StoreError};

use crate::cache::BlobCache;
use crate::inodes::InodeTable;
use crate::stats::Stats;
use crate::stream::Streams;

/// Directories taken at most from one recursive Get (a bigger closure is
/// fetched in further ones, on first look below)…
pub(crate) const CLOSURE_DIRS: usize = 4096;
/// …and entries in them, at most.
const CLOSURE_ENTRIES: usize = 1 << 20;
/// Blob fetches for reads at once, at most, whatever asked (and as many for
/// read-ahead): 512 streams at once on one connection to `serve` made its
/// HTTP/2 server refuse the connection ("remotely-reset pending-accept
/// streams reached limit"), failing every read in flight.
pub(crate) const MAX_CONCURRENCY: usize = 100;
/// Blobs waiting for read-ahead at most; more are dropped (and fetched
/// when read).
const READ_AHEAD_QUEUE: usize = 1 << 16;

/// The store side of a mount, shared by the FUSE threads and fetch tasks.
#[derive(Debug)]
pub(crate) struct Fetcher {
    pub(crate) inodes: Arc<InodeTable>,
    pub(crate) blobs: Arc<dyn BlobService>,
    pub(crate) dirs: Arc<dyn DirectoryService>,
    pub(crate) cache: Arc<BlobCache>,
    pub(crate) stats: Arc<Stats>,
    /// Cancelled when the mount is torn down: store calls in flight end.
    pub(crate) closing: tokio_util::sync::CancellationToken,
    /// A store call taking longer fails.
    pub(crate) timeout: Duration,
    /// A fetch receiving no byte for this long fails.
    pub(crate) idle: Duration,
    /// Permits for blob fetches for reads.
    pub(crate) limit: tokio::sync::Semaphore,
    /// Permits for fetches no reader waits for yet (read-ahead, prefetch):
    /// as many again, never taking a reader's.
    pub(crate) background: tokio::sync::Semaphore,
    /// Directories received in closures and not yet looked at, by their
    /// (computed) digest.
    known_dirs: Mutex<HashMap<B3Digest, Directory>>,
    read_ahead: tokio::sync::mpsc::Sender<(u64, B3Digest, u64)>,
    /// Blobs of at least this many bytes are served as they arrive
    /// ([`crate::stream`]).
    pub(crate) stream_from: u64,
    /// Their fetches running.
    pub(crate) streams: Arc<Streams>,
    /// Where fetch tasks run (FUSE threads are not in the runtime).
    pub(crate) rt: tokio::runtime::Handle,
    /// The blobs readers used (when recorded), and those fetched ahead.
    pub(crate) read_log: Arc<crate::learned::ReadLog>,
}

/// Where a blob's bytes are, without asking the store.
pub(crate) enum Local {
    /// A local file of the declared size.
    File(std::fs::File),
    /// Only the store has it.
    Absent,
}

impl Fetcher {
    /// A fetcher, and the read-ahead queue for [`Self::run_read_ahead`].
    pub(crate) fn new(
        inodes: Arc<InodeTable>,
        (blobs, dirs): (Arc<dyn BlobService>, Arc<dyn DirectoryService>),
        cache: Arc<BlobCache>,
        stats: Arc<Stats>,
        closing: tokio_util::sync::CancellationToken,
        (timeout, idle, concurrency): (Duration, Duration, usize),
        (stream_from, record_reads, rt): (u64, bool, tokio::runtime::Handle),
    ) -> (Self, tokio::sync::mpsc::Receiver<(u64, B3Digest, u64)>) {
        let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD_QUEUE);
        let f = Self {
            inodes,
            blobs,
            dirs,
            cache,
            stats,
            closing,
            timeout,
            idle,
            limit: tokio::sync::Semaphore::new(concurrency.clamp(1, MAX_CONCURRENCY)),
            background: tokio::sync::Semaphore::new(concurrency.clamp(1, MAX_CONCURRENCY)),
            known_dirs: Mutex::new(HashMap::new()),
            read_ahead: tx,
            stream_from,
            streams: Arc::new(Streams::default()),
            rt,
            read_log: Arc::new(crate::learned::ReadLog::new(record_reads)),
        };
        (f, rx)
    }

    /// Runs store call `f` for the requester `pid` on behalf of inode
    /// `ino` (0: of no file, for a prefetch). A failure, a timeout or a
    /// panic in the store is EIO for the reader (logged with the path, and
    /// recorded for the build's report).
    /// Given up, with EIO, as soon as the requester is SIGKILLed or gone
    /// ([`crate::reader`]) or the mount goes away: a process waiting on a
    /// hung store can always be killed.
    pub(crate) async fn guarded<T, E: std::fmt::Display>(
        &self,
        what: &str,
        ino: u64,
        pid: u32,
        f: impl Future<Output = Result<T, E>>,
    ) -> Result<T, Errno> {
        let timeout = self.timeout;
        // Inode 0: no reader's file (a prefetch of a learned profile).
        let path = || match ino {
            0 => "a prefetch".to_owned(),
            _ => self.inodes.path(ino).display().to_string(),
        };
        let started = std::time::Instant::now();
        let call = self.stats.store_call(|| format!("{what} for {}", path()));
        let res = tokio::select! {
            r = tokio::time::timeout(timeout, std::panic::AssertUnwindSafe(f).catch_unwind()) => Ok(r),
            // Unmounting: give up on the store at once.
            _ = self.closing.cancelled() => Err(Some("abandoned, the mount is going away")),
            _ = crate::reader::given_up(pid) => Err(None),
        };
        drop(call);
        let failure = match res {
            Ok(Ok(Ok(Ok(v)))) => return Ok(v),
            Ok(Ok(Ok(Err(e)))) => e.to_string(),
            Ok(Ok(Err(_))) => "the store panicked".to_owned(),
            Ok(Err(_)) => format!("timed out after {timeout:?}"),
            Err(Some(why)) => why.to_owned(),
            Err(None) => {
                // Not the store's failure (yet): a call it was slow to
                // answer, which the reader stopped waiting for.
                let waited = started.elapsed();
                debug!(path = %path(), "{what}: abandoned after {waited:?}, the reader was killed");
                self.stats
                    .store_abandoned(waited, || format!("{what} for {}", path()));
                return Err(Errno::EIO);
            }
        };
        error!(path = %path(), "{what}: {failure}");
        self.stats
            .store_failed(|| format!("{what} for {}: {failure}", path()));
        Err(Errno::EIO)
    }

    /// The blob's local file if there is one: the store's own (trusted) or
    /// the cache's. A store file of another size than declared is the
    /// store's fault: EIO.
    pub(crate) fn local(&self, ino: u64, digest: &B3Digest, size: u64) -> Result<Local, Errno> {
        if let Some(p) = self.blobs.local_path(digest)
            && let Ok(f) = std::fs::File::open(&p)
        {
            let len = f.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
            if len != size {
                let failure = format!(
                    "blob {digest}: the store's file {} has {len} bytes, {size} declared",
                    p.display()
                );
                let path = self.inodes.path(ino).display().to_string();
                error!(path = %path, "opening: {failure}");
                self.stats
                    .store_failed(|| format!("opening {path}: {failure}"));
                return Err(Errno::EIO);
            }
            return Ok(Local::File(f));
        }
        Ok(self
            .cache
            .get(digest, size)
            .map_or(Local::Absent, Local::File))
    }

    /// The blob fetched into the cache (checked against its digest and
    /// size before anything is read from it) and opened, for a read by
    /// `pid` of inode `ino`; waits for a permit first.
    pub(crate) async fn fetch(
        &self,
        ino: u64,
        pid: u32,
        digest: B3Digest,
        size: u64,
    ) -> Result<std::fs::File, Errno> {
        let what = format!("fetching blob {digest}");
        let (f, fetched) = self
            .guarded(&what, ino, pid, async {
                let _permit = self.limit.acquire().await.map_err(std::io::Error::other)?;
                self.cache
                    .get_or_fetch(&*self.blobs, &digest, size, self.idle)
                    .await
            })
            .await?;
        // Counted once per blob fetched, not per open of a cached one.
        if fetched {
            self.stats.blobs_fetched.fetch_add(1, Ordering::Relaxed);
            self.stats.bytes_fetched.fetch_add(size, Ordering::Relaxed);
        }
        Ok(f)
    }

    /// Directory `digest`, which `by` declares of `size` bytes: from a
    /// closure received before, or else fetched with the closure below it.
    pub(crate) async fn directory(
        &self,
        digest: B3Digest,
        size: u64,
        by: String,
    ) -> Result<Directory, StoreError> {
        let known = self.known_dirs_take(&digest);
        let dir = match known {
            Some(d) => d,
            None => {
                let mut closure = self.dirs.get_recursive(&digest).take(CLOSURE_DIRS);
                let (mut root, mut entries) = (None, 0);
                // Each directory is known by the digest computed here, so
                // what arrived before a failure is still good; a lie in
                // the closure fails only where it is, when looked at.
                while let Some(d) = closure.next().await {
                    let d = match d {
                        Ok(d) => d,
                        Err(e) => {
                            debug!(digest = %digest, "the closure's recursive Get: {e}");
                            break;
                        }
                    };
                    let dd = d.digest();
                    entries += d.len();
                    if dd == digest {
                        root = Some(d);
                    } else {
                        self.known_dirs_insert(dd, d);
                    }
                    if entries > CLOSURE_ENTRIES {
                        break;
                    }
                }
                drop(closure);
                match root {
                    Some(d) => d,
                    None => self
                        .dirs
                        .get(&digest)
                        .await?
                        .ok_or(StoreError::Closure(ClosureError::Missing(digest)))?,
                }
            }
        };
        // The size its node declares, or the store lies.
        tvix_oci_castore::directoryservice::check_size(&dir, size, || by)?;
        Ok(dir)
    }

    /// A directory received before, once (a second place with the same
    /// directory asks the store again): memory goes with what was looked at.
    fn known_dirs_take(&self, d: &B3Digest) -> Option<Directory> {
        let mut m = self.known_dirs.lock().unwrap_or_else(|p| p.into_inner());
        m.remove(d)
    }

    fn known_dirs_insert(&self, d: B3Digest, dir: Directory) {
        let mut m = self.known_dirs.lock().unwrap_or_else(|p| p.into_inner());
        m.insert(d, dir);
    }

    /// Up to `size` bytes at `offset` of the local blob `file` of `ino`
    /// (counted as served).
    pub(crate) fn read_local(
        &self,
        ino: u64,
        file: &std::fs::File,
        offset: u64,
        size: u32,
    ) -> Result<Vec<u8>, Errno> {
        // No bigger than what is left of the file: the kernel asks for
        // whole pages and more, and each buffer is zeroed.
        let declared = match self.inodes.get(ino).map(|i| match i.kind {
            crate::inodes::InodeKind::File { size, .. } => size,
            _ => 0,
        }) {
            Some(d) => d,
            None => return Err(Errno::ENOENT),
        };
        let len = declared.saturating_sub(offset).min(u64::from(size));
        let mut buf = vec![0u8; len as usize];
        let n = read_full_at(file, &mut buf, offset).map_err(|e| {
            error!(path = %self.inodes.path(ino).display(), "reading: {e}");
            Errno::EIO
        })?;
        buf.truncate(n);
        self.stats
            .bytes_served
            .fetch_add(n as u64, Ordering::Relaxed);
        Ok(buf)
    }

    /// Queues blobs (inode, digest, size) to fetch before they are read (a
    /// directory was listed: its files are likely read next). Never waits: past the
    /// queue's length they are left to be fetched when read.
    pub(crate) fn read_ahead(&self, blobs: impl Iterator<Item = (u64, B3Digest, u64)>) {
        for item in blobs {
            if self.read_ahead.try_send(item).is_err() {
                break;
            }
        }
    }

    /// Fetches the queued blobs, `concurrency` at once, until the mount
    /// goes away.
    pub(crate) async fn run_read_ahead(
        self: Arc<Self>,
        rx: tokio::sync::mpsc::Receiver<(u64, B3Digest, u64)>,
        concurrency: usize,
    ) {
        let queue = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let work = queue.for_each_concurrent(
            concurrency.clamp(1, MAX_CONCURRENCY),
            |(ino, digest, size)| {
                let me = self.clone();
                async move {
                    if me.fetch_ahead(ino, digest, size).await {
                        me.stats.bytes_read_ahead.fetch_add(size, Ordering::Relaxed);
                    }
                }
            },
        );
        tokio::select! {
            _ = work => {}
            _ = self.closing.cancelled() => {}
        }
    }
}

impl Fetcher {
    /// Fetches blob `digest` of inode `ino` (0: of none, a prefetch) into
    /// the cache before any reader asks for it: on a background permit
    /// (never a reader's), a big one as a stream a read can join. Whether
    /// it was fetched here (not local already, not joined, not failed). A
    /// failure is left for a read to meet, and report.
    pub(crate) async fn fetch_ahead(
        self: &Arc<Self>,
        ino: u64,
        digest: B3Digest,
        size: u64,
    ) -> bool {
        // Present is enough here: a file from before is checked when read.
        if size == 0
            || self.blobs.local_path(&digest).is_some()
            || self.cache.path(&digest).exists()
        {
            return false;
        }
        if size >= self.stream_from {
            let (s, started) = self.stream(ino, digest, size, false);
            s.until_ended().await;
            return started && s.failure().is_none();
        }
        let Ok(_permit) = self.background.acquire().await else {
            return false;
        };
        match self
            .cache
            .get_or_fetch(&*self.blobs, &digest, size, self.idle)
            .await
        {
            Ok((_, fetched)) => {
                if fetched {
                    self.stats.blobs_fetched.fetch_add(1, Ordering::Relaxed);
                    self.stats.bytes_fetched.fetch_add(size, Ordering::Relaxed);
                }
                fetched
            }
            Err(e) => {
                debug!(digest = %digest, "fetching ahead: {e}");
                false
            }
        }
    }
}

/// Reads until `buf` is full or EOF.
pub(crate) fn read_full_at(
    f: &std::fs::File,
    buf: &mut [u8],
    offset: u64,
) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use tvix_oci_castore::directoryservice::{DirectoryPutter, MemoryDirectoryService};
    use tvix_oci_castore::{Node, PathComponent};

    /// A memory store counting the calls it gets.
    #[derive(Debug, Default)]
    struct Counting {
        inner: MemoryDirectoryService,
        gets: AtomicUsize,
        recursive: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl DirectoryService for Counting {
        async fn get(&self, d: &B3Digest) -> Result<Option<Directory>, StoreError> {
            self.gets.fetch_add(1, Ordering::SeqCst);
            self.inner.get(d).await
        }
        async fn put(&self, dir: Directory) -> Result<B3Digest, StoreError> {
            self.inner.put(dir).await
        }
        fn get_recursive(
            &self,
            root: &B3Digest,
        ) -> futures::stream::BoxStream<'_, Result<Directory, StoreError>> {
            self.recursive.fetch_add(1, Ordering::SeqCst);
            self.inner.get_recursive(root)
        }
        fn put_multiple_start(&self) -> Box<dyn DirectoryPutter + '_> {
            self.inner.put_multiple_start()
        }
    }

    fn pc(s: &str) -> PathComponent {
        PathComponent::try_from(s).unwrap()
    }

    #[tokio::test]
    async fn a_closure_comes_in_one_call_and_each_size_is_still_checked() {
        let (mut b, mut a, mut root) = (Directory::new(), Directory::new(), Directory::new());
        let x = Node::File {
            digest: B3Digest::of(b"x"),
            size: 1,
            executable: false,
        };
        b.add(pc("x"), x).unwrap();
        a.add(pc("b"), b.as_node()).unwrap();
        root.add(pc("a"), a.as_node()).unwrap();
        let store = Arc::new(Counting::default());
        for d in [&b, &a, &root] {
            store.put(d.clone()).await.unwrap();
        }
        let inodes = Arc::new(InodeTable::new(vec![]).unwrap());
        let cache_dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(BlobCache::open(cache_dir.path(), 1 << 20).unwrap());
        let blobs: Arc<dyn BlobService> =
            Arc::new(tvix_oci_castore::blobservice::MemoryBlobService::default());
        let (f, _rx) = Fetcher::new(
            inodes,
            (blobs, store.clone()),
            cache,
            Arc::new(Stats::default()),
            tokio_util::sync::CancellationToken::new(),
            (Duration::from_secs(5), Duration::from_secs(5), 4),
            (1 << 20, false, tokio::runtime::Handle::current()),
        );
        let by = || "the test".to_owned();
        assert_eq!(
            f.directory(root.digest(), root.size(), by()).await.unwrap(),
            root
        );
        assert_eq!(f.directory(a.digest(), a.size(), by()).await.unwrap(), a);
        // Received, but declared of another size: the store's lie is found
        // when looked at, naming who declared it.
        let err = f.directory(b.digest(), 7, by()).await.unwrap_err();
        assert!(err.to_string().contains("the test"), "{err}");
        assert_eq!(store.recursive.load(Ordering::SeqCst), 1);
        assert_eq!(store.gets.load(Ordering::SeqCst), 0);
    }
}
