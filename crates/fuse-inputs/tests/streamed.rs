//! Big blobs from a remote store served as they arrive: the first bytes
//! before the last, and a blob found corrupt at its end is the store's
//! fault, seen by [`InputsMount::settle`] and `store_trouble`. Needs
//! /dev/fuse and root (CI has both); skips saying why elsewhere.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tvix_oci_castore::blobservice::{BlobService, MemoryBlobService};
use tvix_oci_castore::directoryservice::{DirectoryService, MemoryDirectoryService};
use tvix_oci_castore::{B3Digest, Node, PathComponent};
use tvix_oci_fuse::{BlobCache, InputsMount, MountOptions, mount};
use tvix_oci_testkit::{Fault, FaultyBlobs};

const BIG: usize = 4 << 20;

fn big() -> Vec<u8> {
    (0..BIG as u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8)
        .collect()
}

struct Setup {
    _tmp: tempfile::TempDir,
    mnt: std::path::PathBuf,
    cache: Arc<BlobCache>,
    digest: B3Digest,
    data: Vec<u8>,
}

/// A 4 MiB blob behind a remote store misbehaving as `fault`, mounted as
/// `big.bin` with `no_open` as given.
async fn mount_big(fault: Fault, no_open: bool) -> (Setup, InputsMount) {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let cache = Arc::new(BlobCache::open(tmp.path().join("cache"), 1 << 30).unwrap());
    let data = big();
    let inner = Arc::new(MemoryBlobService::default());
    let digest = inner.put(bytes::Bytes::from(data.clone())).await.unwrap();
    let blobs: Arc<dyn BlobService> = FaultyBlobs::new(inner)
        .reads(fault, Some(digest))
        .remote()
        .shared();
    let dirs: Arc<dyn DirectoryService> = Arc::new(MemoryDirectoryService::default());
    let node = Node::File {
        digest,
        size: BIG as u64,
        executable: false,
    };
    let opts = MountOptions {
        cache: Some(cache.clone()),
        no_open,
        stream_from: 1 << 20,
        // A stalled store is given up on only after a minute: a read
        // answered before that was answered from what had arrived.
        fetch_idle: Duration::from_secs(60),
        ..MountOptions::default()
    };
    let inputs = vec![(PathComponent::try_from("big.bin").unwrap(), node)];
    let m = mount(blobs, dirs, inputs, &mnt, &opts).unwrap();
    let s = Setup {
        _tmp: tmp,
        mnt,
        cache,
        digest,
        data,
    };
    (s, m)
}

/// `len` bytes at `offset` of `path`, read in a thread (a read blocked on
/// FUSE must not block the runtime serving it).
async fn read_at(path: &Path, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut f = std::fs::File::open(path)?;
        f.seek(SeekFrom::Start(offset))?;
        let mut buf = vec![0u8; len];
        f.read_exact(&mut buf)?;
        Ok(buf)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn first_bytes_of_a_big_blob_come_before_the_last() {
    tvix_oci_testkit::require!(root, fuse);
    for no_open in [true, false] {
        // The store sends 1 MiB, then nothing.
        let (s, m) = mount_big(Fault::HangAfter(1 << 20), no_open).await;
        let path = s.mnt.join("big.bin");
        let t = Instant::now();
        let head = tokio::time::timeout(Duration::from_secs(20), read_at(&path, 0, 4096))
            .await
            .expect("the first bytes wait for the rest of the blob")
            .unwrap();
        assert_eq!(head, s.data[..4096], "no_open {no_open}");
        let inside = read_at(&path, 512 << 10, 4096).await.unwrap();
        assert_eq!(inside, s.data[512 << 10..(512 << 10) + 4096]);
        assert!(t.elapsed() < Duration::from_secs(20));
        // Nothing is cached from an unfinished blob.
        assert!(!s.cache.path(&s.digest).exists());
        m.unmount().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_big_blob_found_corrupt_at_its_end_is_the_stores_fault() {
    tvix_oci_testkit::require!(root, fuse);
    for no_open in [true, false] {
        // Its last byte is wrong, and the last 64 KiB come 2 s late.
        let (s, m) = mount_big(Fault::CorruptSlowTail(2000), no_open).await;
        let path = s.mnt.join("big.bin");
        // Served before it is verified: the head arrives, and is right…
        let t = Instant::now();
        let head = read_at(&path, 0, 4096).await.unwrap();
        assert_eq!(head, s.data[..4096]);
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(m.store_trouble(Duration::from_secs(60)), None, "not yet");
        // …but the end is held until the blob is checked: a reader of the
        // whole file never gets it (or EOF) from a corrupt blob.
        let err = read_at(&path, 0, BIG).await.unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
        tokio::time::timeout(Duration::from_secs(30), m.settle())
            .await
            .expect("settles once the blob is checked");
        let trouble = m.store_trouble(Duration::from_secs(60)).unwrap();
        assert!(trouble.contains(&s.digest.to_hex()), "{trouble}");
        assert!(!s.cache.path(&s.digest).exists());
        m.unmount().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn settle_waits_for_a_blob_read_unverified_and_then_tells() {
    tvix_oci_testkit::require!(root, fuse);
    let (s, m) = mount_big(Fault::CorruptSlowTail(2000), false).await;
    read_at(&s.mnt.join("big.bin"), 0, 16).await.unwrap();
    // The reader is done; only settling finds the blob corrupt.
    assert_eq!(m.store_trouble(Duration::from_secs(60)), None);
    m.settle().await;
    let trouble = m.store_trouble(Duration::from_secs(60)).unwrap();
    assert!(trouble.contains(&s.digest.to_hex()), "{trouble}");
    m.unmount().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn background_fetches_neither_fail_the_mount_nor_hold_up_reads() {
    tvix_oci_testkit::require!(root, fuse);
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let inner = Arc::new(MemoryBlobService::default());
    let mut dir = tvix_oci_castore::Directory::new();
    let mut stalled = Vec::new();
    for name in ["big1"] {
        let mut data = big();
        data[0] = name.as_bytes()[3];
        let d = inner.put(bytes::Bytes::from(data)).await.unwrap();
        stalled.push(d);
        let node = Node::File {
            digest: d,
            size: BIG as u64,
            executable: false,
        };
        dir.add(PathComponent::try_from(name).unwrap(), node)
            .unwrap();
    }
    let small = inner
        .put(bytes::Bytes::from_static(b"small"))
        .await
        .unwrap();
    let node = Node::File {
        digest: small,
        size: 5,
        executable: false,
    };
    dir.add(PathComponent::try_from("small").unwrap(), node)
        .unwrap();
    let dirs: Arc<dyn DirectoryService> = Arc::new(MemoryDirectoryService::default());
    dirs.put(dir.clone()).await.unwrap();
    // The big one stalls after 1 MiB.
    let blobs: Arc<dyn BlobService> = FaultyBlobs::new(inner)
        .reads(Fault::HangAfter(1 << 20), Some(stalled[0]))
        .remote()
        .shared();
    let opts = MountOptions {
        stream_from: 1 << 20,
        // One read and one background fetch at a time.
        fetch_concurrency: 1,
        fetch_idle: Duration::from_secs(60),
        ..MountOptions::default()
    };
    let inputs = vec![(PathComponent::try_from("d").unwrap(), dir.as_node())];
    let m = mount(blobs, dirs, inputs, &mnt, &opts).unwrap();
    // Listing starts read-ahead of the big one, which stalls holding the
    // one background permit.
    std::fs::read_dir(mnt.join("d")).unwrap().for_each(drop);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let p = mnt.join("d/small");
    let got = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::task::spawn_blocking(move || std::fs::read(p)),
    )
    .await
    .expect("a read waits behind read-ahead")
    .unwrap()
    .unwrap();
    assert_eq!(got, b"small");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // No reader waits on the stalled ones: no store trouble.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(m.store_trouble(Duration::from_secs(1)), None);
    m.unmount().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_streamed_blob_is_read_whole_and_cached_once_verified() {
    tvix_oci_testkit::require!(root, fuse);
    for no_open in [true, false] {
        let (s, m) = mount_big(Fault::None, no_open).await;
        let path = s.mnt.join("big.bin");
        let (a, b) = tokio::join!(read_at(&path, 0, BIG), read_at(&path, 0, BIG));
        assert!(a.unwrap() == s.data && b.unwrap() == s.data);
        m.settle().await;
        assert_eq!(m.store_trouble(Duration::from_secs(60)), None);
        assert_eq!(m.stats().blobs_fetched, 1, "one fetch for both readers");
        assert!(s.cache.path(&s.digest).exists());
        m.unmount().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_executable_served_as_it_arrives_runs_and_runs_itself() {
    tvix_oci_testkit::require!(root, fuse, busybox);
    for no_open in [true, false] {
        let tmp = tempfile::tempdir().unwrap();
        let mnt = tmp.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let bb = std::fs::read("/bin/busybox").unwrap();
        let size = bb.len() as u64;
        let inner = Arc::new(MemoryBlobService::default());
        let digest = inner.put(bytes::Bytes::from(bb)).await.unwrap();
        let blobs: Arc<dyn BlobService> = FaultyBlobs::new(inner).remote().shared();
        let dirs: Arc<dyn DirectoryService> = Arc::new(MemoryDirectoryService::default());
        let node = Node::File {
            digest,
            size,
            executable: true,
        };
        let opts = MountOptions {
            no_open,
            stream_from: 1,
            ..MountOptions::default()
        };
        let inputs = vec![(PathComponent::try_from("busybox").unwrap(), node)];
        let m = mount(blobs, dirs, inputs, &mnt, &opts).unwrap();
        let bb = mnt.join("busybox");
        // The shell, running from the file still being fetched, runs it
        // again once it is whole (another open of an inode open with reads
        // served here).
        let again = format!("sleep 0.2; {} echo hi | cat", bb.display());
        let out = tokio::process::Command::new(&bb)
            .args(["sh", "-c", &again])
            .output()
            .await
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "hi\n",
            "no_open {no_open}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        m.settle().await;
        assert_eq!(m.store_trouble(Duration::from_secs(60)), None);
        m.unmount().unwrap();
    }
}
