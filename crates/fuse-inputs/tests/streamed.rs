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
        let (s, m) = mount_big(Fault::Corrupt, no_open).await;
        let path = s.mnt.join("big.bin");
        // Served before it is verified: the reader may get bytes…
        let head = read_at(&path, 0, 16).await;
        // …but once settled, the mount names the blob as the store's fault.
        tokio::time::timeout(Duration::from_secs(30), m.settle())
            .await
            .expect("settles once the blob is checked");
        let trouble = m.store_trouble(Duration::from_secs(60));
        let trouble = trouble.unwrap_or_else(|| panic!("no trouble after {head:?}"));
        assert!(trouble.contains(&s.digest.to_hex()), "{trouble}");
        // Nothing more is served from it, and nothing is cached.
        let err = read_at(&path, (BIG - 4096) as u64, 4096).await.unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
        assert!(!s.cache.path(&s.digest).exists());
        m.unmount().unwrap();
    }
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
