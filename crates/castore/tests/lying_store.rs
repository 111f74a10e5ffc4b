//! A store may lie: about a blob's length (a stream that never ends, one
//! byte more or less than declared), its bytes, a directory's size, or by
//! going silent. `export` fails naming the digest and both sizes, writes
//! no more than declared, and leaves nothing at the destination; our
//! server checks what its own backing store serves; `import` holds a file
//! to the size stat gave.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use tvix_oci_castore::blobservice::{BlobReader, BlobService, BlobWriter, MemoryBlobService};
use tvix_oci_castore::directoryservice::{DirectoryService, MemoryDirectoryService};
use tvix_oci_castore::export::export_node;
use tvix_oci_castore::import::{ImportError, ImportOptions, import_path};
use tvix_oci_castore::lying::{Lie, LyingServer, LyingStore};
use tvix_oci_castore::{
    B3Digest, Directory, Node, PathComponent, open_blob_service, open_directory_service,
};

/// The size of the blob the lies are told about (issue #13's figure).
const SIZE: usize = 300_001;

fn data() -> Vec<u8> {
    (0..SIZE).map(|i| (i % 251) as u8).collect()
}

fn pc(s: &str) -> PathComponent {
    PathComponent::try_from(s).unwrap()
}

/// A directory `{f: the blob, served with lie}` in a lying store.
fn tree_with(lie: Lie) -> (LyingStore, B3Digest, Node) {
    let mut store = LyingStore::default();
    let digest = store.blob(data(), lie);
    let mut dir = Directory::new();
    dir.add(
        pc("f"),
        Node::File {
            digest,
            size: SIZE as u64,
            executable: false,
        },
    )
    .unwrap();
    let node = dir.as_node();
    store.dir(dir);
    (store, digest, node)
}

async fn open(url: &str) -> (Arc<dyn BlobService>, Arc<dyn DirectoryService>) {
    (
        open_blob_service(url).await.unwrap(),
        open_directory_service(url).await.unwrap(),
    )
}

/// Everything in `dir`, recursively (to find temp trees left behind).
fn entries(dir: &Path) -> Vec<std::path::PathBuf> {
    walkdir::WalkDir::new(dir)
        .min_depth(1)
        .into_iter()
        .flatten()
        .map(|e| e.path().to_owned())
        .collect()
}

/// Bytes of all files below `dir`.
fn disk_usage(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn export_of_each_lying_blob_fails_naming_it_and_leaves_nothing() {
    for (lie, want) in [
        (Lie::Endless, &["more than the 300001 bytes declared"][..]),
        (
            Lie::Longer(1),
            &["more than the 300001 bytes declared (300002 received)"],
        ),
        // Our gRPC client finds the digest wrong first, then the sizes are added.
        (Lie::Shorter(1), &["300000", "300001"]),
        (Lie::Corrupt, &["hash to"]),
    ] {
        let (store, digest, node) = tree_with(lie);
        let server = LyingServer::start(store);
        let (blobs, dirs) = open(server.url()).await;
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("out");
        let watch = tmp.path().to_owned();
        // Disk usage sampled while the export runs: never past the size.
        let peak = tokio::spawn(async move {
            let mut peak = 0;
            loop {
                peak = peak.max(disk_usage(&watch));
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                if peak > (SIZE as u64) * 2 {
                    return peak;
                }
            }
        });
        let err = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            export_node(blobs, &*dirs, &node, &dest),
        )
        .await
        .unwrap_or_else(|_| panic!("{lie:?}: export did not end"))
        .unwrap_err();
        peak.abort();
        let msg = err.to_string();
        assert!(msg.contains(&digest.to_hex()), "{lie:?}: {msg}");
        for w in want {
            assert!(msg.contains(w), "{lie:?}: {msg}");
        }
        assert!(msg.contains("the store"), "{lie:?}: {msg}");
        assert!(!dest.exists(), "{lie:?}: the destination exists");
        assert_eq!(
            entries(tmp.path()),
            Vec::<std::path::PathBuf>::new(),
            "{lie:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn export_from_an_honest_store_is_whole_and_leaves_no_temp_tree() {
    let (store, _, node) = tree_with(Lie::None);
    let server = LyingServer::start(store);
    let (blobs, dirs) = open(server.url()).await;
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("out");
    export_node(blobs, &*dirs, &node, &dest).await.unwrap();
    assert_eq!(std::fs::read(dest.join("f")).unwrap(), data());
    assert_eq!(entries(tmp.path()), vec![dest.clone(), dest.join("f")]);
    // An existing destination is refused and left as it was.
    let (blobs, dirs) = open(server.url()).await;
    let err = export_node(blobs, &*dirs, &node, &dest).await.unwrap_err();
    assert!(err.to_string().contains("exists"), "{err}");
    assert_eq!(std::fs::read(dest.join("f")).unwrap(), data());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_directory_of_the_wrong_size_is_refused_naming_both_digests() {
    let mut store = LyingStore::default();
    let blob = store.blob(&b"x"[..], Lie::None);
    let mut child = Directory::new();
    child
        .add(
            pc("f"),
            Node::File {
                digest: blob,
                size: 1,
                executable: false,
            },
        )
        .unwrap();
    let child_digest = store.dir(child.clone());
    // The parent's entry declares 5; the child's size is 2.
    let mut parent = Directory::new();
    parent
        .add(
            pc("sub"),
            Node::Directory {
                digest: child_digest,
                size: 5,
            },
        )
        .unwrap();
    let parent_node = parent.as_node();
    let parent_digest = store.dir(parent);
    let server = LyingServer::start(store);
    let tmp = tempfile::tempdir().unwrap();

    let (blobs, dirs) = open(server.url()).await;
    let err = export_node(blobs, &*dirs, &parent_node, &tmp.path().join("a"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&child_digest.to_hex()), "{err}");
    assert!(err.contains(&parent_digest.to_hex()), "{err}");
    assert!(
        err.contains("size 2") && err.contains("declares 5"),
        "{err}"
    );

    // A root node declaring another size than its directory has.
    let (blobs, dirs) = open(server.url()).await;
    let wrong_root = Node::Directory {
        digest: child_digest,
        size: 3,
    };
    let err = export_node(blobs, &*dirs, &wrong_root, &tmp.path().join("b"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&child_digest.to_hex()), "{err}");
    assert!(
        err.contains("the root node declares 3") && err.contains("size 2"),
        "{err}"
    );
    assert_eq!(entries(tmp.path()), Vec::<std::path::PathBuf>::new());
}

/// A backing store that flips the first byte of what it serves.
#[derive(Debug, Default)]
struct Rotten(MemoryBlobService);

#[async_trait]
impl BlobService for Rotten {
    async fn has(&self, d: &B3Digest) -> io::Result<bool> {
        self.0.has(d).await
    }
    async fn open_read_at(&self, d: &B3Digest, off: u64) -> io::Result<Option<BlobReader>> {
        let Some(mut r) = self.0.open_read_at(d, off).await? else {
            return Ok(None);
        };
        let mut buf = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut r, &mut buf).await?;
        buf[0] ^= 0xff;
        Ok(Some(Box::new(io::Cursor::new(buf))))
    }
    async fn open_write(&self) -> io::Result<Box<dyn BlobWriter>> {
        self.0.open_write().await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn our_server_ends_the_stream_with_an_error_when_its_store_rots() {
    let backing = Arc::new(Rotten::default());
    let digest = backing.0.put(Bytes::from(data())).await.unwrap();
    let (url, server) =
        common::serve_tcp(backing, Arc::new(MemoryDirectoryService::default())).await;
    // A raw client, as a foreign one: it gets an error, never a clean end.
    let channel = tonic::transport::Endpoint::from_shared(url.replace("grpc+http", "http"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c = tvix_oci_castore::proto::blob_service_client::BlobServiceClient::new(channel);
    let mut stream = c
        .read(tvix_oci_castore::proto::ReadBlobRequest {
            digest: digest.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    while let Some(item) = stream.next().await {
        last = Some(item);
    }
    let status = last.unwrap().unwrap_err();
    assert_eq!(status.code(), tonic::Code::DataLoss, "{status:?}");
    assert!(status.message().contains(&digest.to_hex()), "{status:?}");
    server.abort();
}

#[tokio::test]
async fn a_file_that_grows_while_imported_fails_naming_it() {
    // /proc files say 0 bytes and have more: the shape of a growing file.
    let blobs: Arc<dyn BlobService> = Arc::new(MemoryBlobService::default());
    let dirs = MemoryDirectoryService::default();
    let path = Path::new("/proc/self/status");
    let err = import_path(blobs, &dirs, path, &ImportOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            ImportError::Changed {
                stat: 0,
                read: 1,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("/proc/self/status"), "{err}");
}
