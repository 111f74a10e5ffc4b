//! Learned prefetch on a real mount: a mount records the blobs its readers
//! used, first use first; a later mount given that profile fetches them
//! before they are read and counts what of it was used. Needs /dev/fuse and
//! root (CI has both); skips saying why elsewhere.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use tvix_oci_castore::blobservice::{BlobService, MemoryBlobService};
use tvix_oci_castore::directoryservice::{DirectoryService, MemoryDirectoryService};
use tvix_oci_castore::{B3Digest, Directory, Node, PathComponent};
use tvix_oci_fuse::{BlobCache, MountOptions, mount};
use tvix_oci_testkit::FaultyBlobs;

fn pc(s: &str) -> PathComponent {
    PathComponent::try_from(s).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recorded_profile_is_fetched_ahead_by_the_next_mount() {
    tvix_oci_testkit::require!(root, fuse);
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let inner = Arc::new(MemoryBlobService::default());
    let mut dir = Directory::new();
    let mut blobs_of = Vec::new();
    for (name, len) in [("a", 10usize), ("b", 3 << 20), ("c", 20), ("unread", 30)] {
        let data = vec![name.as_bytes()[0]; len];
        let digest = inner.put(bytes::Bytes::from(data)).await.unwrap();
        let node = Node::File {
            digest,
            size: len as u64,
            executable: false,
        };
        dir.add(pc(name), node).unwrap();
        blobs_of.push((name, digest, len as u64));
    }
    let dirs: Arc<dyn DirectoryService> = Arc::new(MemoryDirectoryService::default());
    dirs.put(dir.clone()).await.unwrap();
    let blobs: Arc<dyn BlobService> = FaultyBlobs::new(inner).remote().shared();
    let inputs = vec![(pc("t"), dir.as_node())];
    let opts = |cache: &str, profile: Vec<(B3Digest, u64)>| MountOptions {
        cache: Some(Arc::new(
            BlobCache::open(tmp.path().join(cache), 1 << 30).unwrap(),
        )),
        record_reads: true,
        read_ahead: false,
        stream_from: 1 << 20,
        prefetch_blobs: profile,
        ..MountOptions::default()
    };

    // First build: reads c, then b (the big one, streamed), then a.
    let m = mount(
        blobs.clone(),
        dirs.clone(),
        inputs.clone(),
        &mnt,
        &opts("c1", vec![]),
    )
    .unwrap();
    for name in ["c", "b", "a", "c"] {
        let p = mnt.join("t").join(name);
        tokio::task::spawn_blocking(move || std::fs::read(p).unwrap())
            .await
            .unwrap();
    }
    let first = m.read_profile();
    m.unmount().unwrap();
    let digest = |n: &str| {
        blobs_of
            .iter()
            .find(|b| b.0 == n)
            .map(|b| (b.1, b.2))
            .unwrap()
    };
    assert_eq!(first.read, vec![digest("c"), digest("b"), digest("a")]);
    assert_eq!(first.bytes_prefetched, 0);

    // Next build, empty cache, with that profile: fetched before it is read.
    let o = opts("c2", first.read.clone());
    let cache = o.cache.clone().unwrap();
    let m = mount(blobs.clone(), dirs.clone(), inputs.clone(), &mnt, &o).unwrap();
    let t = Instant::now();
    while !first.read.iter().all(|(d, s)| cache.get(d, *s).is_some()) {
        assert!(t.elapsed() < Duration::from_secs(20), "not prefetched");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        cache.get(&digest("unread").0, 30).is_none(),
        "only the profile"
    );
    let p = mnt.join("t/a");
    assert_eq!(
        tokio::task::spawn_blocking(move || std::fs::read(p).unwrap())
            .await
            .unwrap(),
        vec![b'a'; 10]
    );
    let second = m.read_profile();
    m.unmount().unwrap();
    assert_eq!(second.bytes_prefetched, 10 + (3 << 20) + 20);
    assert_eq!(second.bytes_prefetched_used, 10);
    assert_eq!(second.read, vec![digest("a")]);
}
