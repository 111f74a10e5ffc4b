//! The inputs mount against a store that lies (the castore's `lying`
//! server): a blob stream that never ends, one byte more or less than the
//! node declares, other bytes, a directory of the wrong size, a root node
//! of the wrong size, a stream that hangs. Each read fails with EIO, the
//! trouble names the digest, the cache never holds more than declared,
//! and a reader stuck on a hung store dies at SIGKILL, or when the mount
//! goes, within seconds.
//! Needs /dev/fuse and root; skips saying why elsewhere.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tvix_oci_castore::blobservice::BlobService;
use tvix_oci_castore::directoryservice::DirectoryService;
use tvix_oci_castore::lying::{Lie, LyingServer, LyingStore};
use tvix_oci_castore::{
    B3Digest, Directory, Node, PathComponent, open_blob_service, open_directory_service,
};
use tvix_oci_fuse::{BlobCache, InputsMount, MountOptions, mount};

const SIZE: usize = 300_001;

macro_rules! need_fuse {
    () => {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter("tvix_oci_fuse=debug")
            .try_init();
        tvix_oci_testkit::require!(root, fuse);
    };
}

fn pc(s: &str) -> PathComponent {
    PathComponent::try_from(s).unwrap()
}

fn file(digest: B3Digest, size: usize) -> Node {
    Node::File {
        digest,
        size: size as u64,
        executable: false,
    }
}

/// A directory with one file per lie (`endless`, `longer`, …), each a
/// different blob of SIZE bytes, and `badsize`, a directory entry
/// declaring 5 for a directory of size 2.
struct Lies {
    store: LyingStore,
    root: Directory,
    blobs: Vec<(&'static str, B3Digest)>,
    sub: B3Digest,
}

fn lies() -> Lies {
    let mut store = LyingStore::default();
    let mut root = Directory::new();
    let mut blobs = Vec::new();
    for (i, (name, lie)) in [
        ("endless", Lie::Endless),
        ("longer", Lie::Longer(1)),
        ("shorter", Lie::Shorter(1)),
        ("corrupt", Lie::Corrupt),
        ("hang", Lie::HangAfter(1000)),
        ("honest", Lie::None),
    ]
    .into_iter()
    .enumerate()
    {
        let data: Vec<u8> = (0..SIZE).map(|j| ((i * 7 + j) % 251) as u8).collect();
        let d = store.blob(data, lie);
        root.add(pc(name), file(d, SIZE)).unwrap();
        blobs.push((name, d));
    }
    let x = store.blob(&b"x"[..], Lie::None);
    let mut sub = Directory::new();
    sub.add(pc("x"), file(x, 1)).unwrap();
    let sub_digest = store.dir(sub);
    root.add(
        pc("badsize"),
        Node::Directory {
            digest: sub_digest,
            size: 5,
        },
    )
    .unwrap();
    store.dir(root.clone());
    Lies {
        store,
        root,
        blobs,
        sub: sub_digest,
    }
}

struct Fixture {
    _server: LyingServer,
    m: Option<InputsMount>,
    mnt: tempfile::TempDir,
    cache_dir: tempfile::TempDir,
    lies: Lies,
}

impl Fixture {
    fn path(&self, p: &str) -> std::path::PathBuf {
        self.mnt.path().join(p)
    }
    fn digest(&self, name: &str) -> B3Digest {
        self.lies.blobs.iter().find(|(n, _)| *n == name).unwrap().1
    }
    fn m(&self) -> &InputsMount {
        self.m.as_ref().unwrap()
    }
}

async fn setup(root_size: Option<u64>, f: impl FnOnce(&mut MountOptions)) -> Fixture {
    let lies = lies();
    let server = LyingServer::start(lies.store.clone());
    let blobs: Arc<dyn BlobService> = open_blob_service(server.url()).await.unwrap();
    let dirs: Arc<dyn DirectoryService> = open_directory_service(server.url()).await.unwrap();
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(BlobCache::open(cache_dir.path(), 1 << 30).unwrap());
    let mut opts = MountOptions {
        cache: Some(cache),
        ..Default::default()
    };
    f(&mut opts);
    let node = Node::Directory {
        digest: lies.root.digest(),
        size: root_size.unwrap_or(lies.root.size()),
    };
    let mnt = tempfile::tempdir().unwrap();
    let m = mount(blobs, dirs, vec![(pc("in"), node)], mnt.path(), &opts).unwrap();
    Fixture {
        _server: server,
        m: Some(m),
        mnt,
        cache_dir,
        lies,
    }
}

/// The largest file below `dir` (the cache and its temp files).
fn largest(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn each_lying_blob_is_eio_named_by_digest_and_never_cached_past_its_size() {
    need_fuse!();
    // Fetched for a read (files opened in the kernel), and for an open
    // (passthrough): each answered from the task that fetched the blob.
    each_lying_blob_is_eio(|_| {}).await;
    each_lying_blob_is_eio(|o| o.no_open = false).await;
}

async fn each_lying_blob_is_eio(opts: impl FnOnce(&mut MountOptions)) {
    let f = setup(None, opts).await;
    for name in ["endless", "longer", "shorter", "corrupt"] {
        let path = f.path(&format!("in/{name}"));
        // stat says what the node declares.
        assert_eq!(std::fs::metadata(&path).unwrap().len(), SIZE as u64);
        let cache = f.cache_dir.path().to_owned();
        let watch = tokio::spawn(async move {
            let mut peak = 0;
            for _ in 0..2000 {
                peak = peak.max(largest(&cache));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            peak
        });
        let started = Instant::now();
        let p = path.clone();
        let err = tokio::task::spawn_blocking(move || std::fs::read(p))
            .await
            .unwrap()
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(20), "{name}");
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{name}: {err}");
        watch.abort();
        let _ = watch.await;
        assert!(
            largest(f.cache_dir.path()) <= SIZE as u64,
            "{name}: the cache holds more than declared"
        );
        let digest = f.digest(name);
        assert!(
            !f.cache_dir.path().join(digest.to_hex()).exists(),
            "{name}: a lying blob was cached"
        );
        assert_eq!(
            std::fs::read_dir(f.cache_dir.path().join("tmp"))
                .unwrap()
                .count(),
            0,
            "{name}: a temp file was left"
        );
    }
    let trouble = f.m().store_trouble(Duration::from_secs(60)).unwrap();
    assert!(trouble.contains(&f.digest("endless").to_hex()), "{trouble}");
    assert!(trouble.contains("300001"), "{trouble}");
    // The honest one reads whole.
    assert_eq!(
        std::fs::read(f.path("in/honest")).unwrap().len(),
        SIZE,
        "honest"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_directory_of_the_wrong_size_is_eio_naming_both_digests() {
    need_fuse!();
    let f = setup(None, |_| {}).await;
    let p = f.path("in/badsize");
    let err = tokio::task::spawn_blocking(move || {
        std::fs::read_dir(p).and_then(|r| r.collect::<Result<Vec<_>, _>>())
    })
    .await
    .unwrap()
    .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let trouble = f.m().store_trouble(Duration::from_secs(60)).unwrap();
    assert!(trouble.contains(&f.lies.sub.to_hex()), "{trouble}");
    assert!(
        trouble.contains(&f.lies.root.digest().to_hex()),
        "{trouble}"
    );
    assert!(trouble.contains("declares 5"), "{trouble}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_root_node_of_the_wrong_size_is_eio() {
    need_fuse!();
    let f = setup(Some(3), |_| {}).await;
    let p = f.path("in");
    let err = tokio::task::spawn_blocking(move || {
        std::fs::read_dir(p).and_then(|r| r.collect::<Result<Vec<_>, _>>())
    })
    .await
    .unwrap()
    .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let trouble = f.m().store_trouble(Duration::from_secs(60)).unwrap();
    assert!(
        trouble.contains("the root node \"in\" declares 3"),
        "{trouble}"
    );
    assert!(
        trouble.contains(&f.lies.root.digest().to_hex()),
        "{trouble}"
    );
}

/// Starts `cat PATH` and waits until it is blocked in the fetch.
fn blocked_reader(f: &Fixture, path: &Path) -> std::process::Child {
    let child = std::process::Command::new("cat")
        .arg(path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while f.m().store_trouble(Duration::from_millis(300)).is_none() {
        assert!(started.elapsed() < Duration::from_secs(10), "never fetched");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// Whether `child` ends within `limit`.
fn ends_within(child: &mut std::process::Child, limit: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if child.try_wait().unwrap().is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reader_of_a_hung_store_dies_at_sigkill_within_seconds() {
    need_fuse!();
    let f = setup(None, |_| {}).await;
    let path = f.path("in/hang");
    let mut child = tokio::task::block_in_place(|| blocked_reader(&f, &path));
    child.kill().unwrap(); // SIGKILL
    let gone = tokio::task::block_in_place(|| ends_within(&mut child, Duration::from_secs(5)));
    assert!(gone, "the SIGKILLed reader still waits on the store");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reader_of_a_hung_store_is_released_when_the_mount_goes() {
    need_fuse!();
    let mut f = setup(None, |_| {}).await;
    let path = f.path("in/hang");
    let mut child = tokio::task::block_in_place(|| blocked_reader(&f, &path));
    let m = f.m.take().unwrap();
    let started = Instant::now();
    tokio::task::spawn_blocking(move || m.unmount())
        .await
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    let gone = tokio::task::block_in_place(|| ends_within(&mut child, Duration::from_secs(5)));
    if !gone {
        let _ = child.kill();
    }
    assert!(gone, "the reader still waits after the unmount");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_silent_mid_blob_is_eio_at_the_idle_limit() {
    need_fuse!();
    let f = setup(None, |o| o.fetch_idle = Duration::from_secs(1)).await;
    let p = f.path("in/hang");
    let started = Instant::now();
    let err = tokio::task::spawn_blocking(move || std::fs::read(p))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    let trouble = f.m().store_trouble(Duration::from_secs(60)).unwrap();
    assert!(trouble.contains(&f.digest("hang").to_hex()), "{trouble}");
    assert!(trouble.contains("no byte"), "{trouble}");
}

/// A fetch waiting on a hung store holds no FUSE worker thread: with one
/// thread, another file is read at once meanwhile, for a read (files
/// opened in the kernel) and for an open (passthrough).
#[tokio::test(flavor = "multi_thread")]
async fn a_hung_fetch_holds_no_worker_thread() {
    need_fuse!();
    for no_open in [true, false] {
        let f = setup(None, |o| {
            o.threads = 1;
            o.no_open = no_open;
        })
        .await;
        let path = f.path("in/hang");
        let mut child = tokio::task::block_in_place(|| blocked_reader(&f, &path));
        let started = Instant::now();
        let honest = f.path("in/honest");
        let data = tokio::task::spawn_blocking(move || std::fs::read(honest))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(data.len(), SIZE, "no_open: {no_open}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no_open: {no_open}: another read waited {:?} behind the hung fetch",
            started.elapsed()
        );
        child.kill().unwrap();
        let gone = tokio::task::block_in_place(|| ends_within(&mut child, Duration::from_secs(5)));
        assert!(gone, "no_open: {no_open}: the SIGKILLed reader still waits");
    }
}
