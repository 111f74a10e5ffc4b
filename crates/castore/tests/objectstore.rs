//! The object-storage backends beyond the shared suite: multipart uploads
//! of big blobs, the layout on disk, corrupt and missing objects caught
//! on read, a closure fetched concurrently in the order of a plain walk,
//! and URLs that are refused. S3 cases run against s3s-fs on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use common::s3_server;
use futures::TryStreamExt;
use tvix_oci_castore::blobservice::{KNOWN_PUT_MAX, SINGLE_PUT_MAX, read_to_end};
use tvix_oci_castore::directoryservice::DirectoryService;
use tvix_oci_castore::{
    B3Digest, ClosureError, Directory, Node, PathComponent, StoreError, open_blob_service,
    open_directory_service,
};

fn name(s: &str) -> PathComponent {
    PathComponent::try_from(s).unwrap()
}

/// The file an object of `kind` ("blobs/whole" or "directories") is kept
/// in under a store root on disk.
fn object_file(root: &Path, kind: &str, d: &B3Digest) -> PathBuf {
    let hex = d.to_hex();
    root.join(kind).join(&hex[..2]).join(hex)
}

/// A blob past the single-PUT limit goes up in parts and comes back whole,
/// at its key; a second write of it finds it there.
async fn big_blob(url: &str, root: &Path) {
    let blobs = open_blob_service(url).await.unwrap();
    let len = 2 * SINGLE_PUT_MAX as usize + 12_345;
    let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    let digest = B3Digest::of(&data);
    for _ in 0..2 {
        let mut w = blobs.open_write().await.unwrap();
        for chunk in data.chunks(1 << 20) {
            w.write(Bytes::copy_from_slice(chunk)).await.unwrap();
        }
        assert_eq!(w.close().await.unwrap(), digest);
    }
    assert_eq!(read_to_end(&*blobs, &digest).await.unwrap().unwrap(), data);
    let file = object_file(root, "blobs/whole", &digest);
    assert_eq!(std::fs::read(&file).unwrap(), data, "{}", file.display());
}

#[tokio::test]
async fn big_blob_file() {
    let tmp = tempfile::tempdir().unwrap();
    big_blob(
        &format!("objectstore+file://{}", tmp.path().display()),
        tmp.path(),
    )
    .await;
}

#[tokio::test]
async fn big_blob_s3() {
    let Some(s3) = s3_server() else { return };
    big_blob(&s3.url("big/p"), &s3.bucket_dir().join("big/p")).await;
}

#[tokio::test]
async fn corrupt_blob_fails_the_read_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let blobs = open_blob_service(&format!("objectstore+file://{}", tmp.path().display()))
        .await
        .unwrap();
    let d = blobs
        .put(Bytes::from_static(b"the real bytes"))
        .await
        .unwrap();
    let file = object_file(tmp.path(), "blobs/whole", &d);
    std::fs::write(&file, b"other bytes!!!").unwrap();
    let err = read_to_end(&*blobs, &d).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
    assert!(err.to_string().contains(&d.to_hex()), "{err}");
    // At an offset too: the skipped bytes are checked as well.
    let mut r = blobs.open_read_at(&d, 5).await.unwrap().unwrap();
    let err = tokio::io::AsyncReadExt::read_to_end(&mut r, &mut Vec::new())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
}

/// leaf <- mid <- root; `wide` children under root.
fn tree(wide: usize) -> Vec<Directory> {
    let mut leaf = Directory::new();
    leaf.add(
        name("f"),
        Node::File {
            digest: B3Digest::of(b""),
            size: 0,
            executable: false,
        },
    )
    .unwrap();
    let mut mid = Directory::new();
    mid.add(name("leaf"), leaf.as_node()).unwrap();
    let mut out = vec![leaf.clone(), mid.clone()];
    let mut root = Directory::new();
    root.add(name("mid"), mid.as_node()).unwrap();
    for i in 0..wide {
        let mut d = Directory::new();
        d.add(name(&format!("n{i}")), leaf.as_node()).unwrap();
        root.add(name(&format!("w{i:03}")), d.as_node()).unwrap();
        out.push(d);
    }
    out.push(root);
    out
}

async fn put_all(dirs: &dyn DirectoryService, closure: &[Directory]) -> B3Digest {
    let mut p = dirs.put_multiple_start();
    for d in closure {
        p.put(d.clone()).await.unwrap();
    }
    p.close().await.unwrap()
}

/// The concurrent fetch yields what a one-at-a-time walk yields.
async fn wide_closure(url: &str) {
    let closure = tree(100);
    let reference = open_directory_service("memory://").await.unwrap();
    let root = put_all(&*reference, &closure).await;
    let dirs = open_directory_service(url).await.unwrap();
    assert_eq!(put_all(&*dirs, &closure).await, root);
    let want: Vec<Directory> = reference.get_recursive(&root).try_collect().await.unwrap();
    let got: Vec<Directory> = dirs.get_recursive(&root).try_collect().await.unwrap();
    assert_eq!(got.len(), 103);
    assert_eq!(got, want);
}

#[tokio::test]
async fn wide_closure_memory() {
    wide_closure("objectstore+memory:///some/prefix").await;
}

#[tokio::test]
async fn wide_closure_s3() {
    let Some(s3) = s3_server() else { return };
    wide_closure(&s3.url("dirs")).await;
}

#[tokio::test]
async fn missing_corrupt_and_lying_directories_are_caught() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = open_directory_service(&format!("objectstore+file://{}", tmp.path().display()))
        .await
        .unwrap();
    let closure = tree(1);
    let (leaf, mid) = (&closure[0], &closure[1]);
    let root = put_all(&*dirs, &closure).await;

    // A child gone: the closure names it.
    let leaf_file = object_file(tmp.path(), "directories", &leaf.digest());
    let saved = std::fs::read(&leaf_file).unwrap();
    std::fs::remove_file(&leaf_file).unwrap();
    let err = dirs
        .get_recursive(&root)
        .try_collect::<Vec<_>>()
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Closure(ClosureError::Missing(d)) if d == leaf.digest()),
        "{err}"
    );

    // Other bytes under its key: not a directory, or another one.
    std::fs::write(&leaf_file, b"\xff\xff not protobuf").unwrap();
    let err = dirs.get(&leaf.digest()).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidDirectory { .. }), "{err}");
    assert!(err.to_string().contains(&leaf.digest().to_hex()), "{err}");
    std::fs::write(&leaf_file, mid.encode()).unwrap();
    let err = dirs.get(&leaf.digest()).await.unwrap_err();
    assert!(matches!(err, StoreError::WrongDigest { .. }), "{err}");
    std::fs::write(&leaf_file, saved).unwrap();

    // A parent declaring another size for its child: the closure fails.
    let mut liar = Directory::new();
    liar.add(
        name("x"),
        Node::Directory {
            digest: leaf.digest(),
            size: leaf.size() + 5,
        },
    )
    .unwrap();
    let liar = dirs.put(liar).await.unwrap();
    let err = dirs
        .get_recursive(&liar)
        .try_collect::<Vec<_>>()
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Closure(ClosureError::DeclaredSize { .. })),
        "{err}"
    );
}

#[tokio::test]
async fn bad_urls_are_refused_naming_the_fault() {
    for (url, says) in [
        ("objectstore+s3:///prefix", "bucket"),
        ("objectstore+s3://b/p?endpoit=http://x", "endpoit"),
        ("objectstore+file:///tmp/x?foo=1", "foo"),
        ("objectstore+file://", "absolute path"),
        ("objectstore+gcs://b/p", "objectstore+gcs"),
    ] {
        let err = open_blob_service(url).await.unwrap_err().to_string();
        assert!(err.contains(says), "{url}: {err}");
        let err = open_directory_service(url).await.unwrap_err().to_string();
        assert!(err.contains(says), "{url}: {err}");
    }
    // A secret in the URL is not repeated in the message.
    let url = "objectstore+s3://b/p?secret_access_key=hunter2&bogus=1";
    let err = open_blob_service(url).await.unwrap_err().to_string();
    assert!(err.contains("bogus") && !err.contains("hunter2"), "{err}");
}

/// A big blob's upload cancelled at any point leaves nothing at its key,
/// and its parts are aborted: the server keeps no part files.
#[tokio::test]
async fn cancelled_upload_leaves_nothing() {
    let Some(s3) = s3_server() else { return };
    let blobs = open_blob_service(&s3.url("cancel")).await.unwrap();
    let data = Bytes::from(vec![7u8; 3 * SINGLE_PUT_MAX as usize]);
    let digest = B3Digest::of(&data);
    for ms in [0, 5, 20, 60] {
        let mut w = blobs.open_write().await.unwrap();
        w.write(data.clone()).await.unwrap();
        let cut = tokio::time::timeout(std::time::Duration::from_millis(ms), w.close()).await;
        if cut.is_ok() {
            continue; // finished in time: nothing cancelled
        }
        assert!(
            !blobs.has(&digest).await.unwrap(),
            "cancelled after {ms} ms"
        );
    }
    // The aborts run in the background: give them a moment.
    let parts = || {
        walkdir::WalkDir::new(s3.bucket_dir().parent().unwrap())
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with(".upload_id-"))
            .count()
    };
    let start = std::time::Instant::now();
    while parts() > 0 && start.elapsed() < std::time::Duration::from_secs(5) {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    if parts() > 0 {
        for e in walkdir::WalkDir::new(s3.bucket_dir().parent().unwrap()) {
            eprintln!("{}", e.unwrap().path().display());
        }
    }
    assert_eq!(
        parts(),
        0,
        "part files left in {}",
        s3.bucket_dir().display()
    );
}

/// A big file (`len` bytes) imported from disk is hashed first and sent
/// to its key from the file (no temp file; in one PUT up to
/// `KNOWN_PUT_MAX`, in parts beyond): it comes back whole, a second import
/// finds it there, and a writer told a digest its bytes do not have
/// stores nothing.
async fn big_file_digest_first(url: &str, root: &Path, len: usize) {
    use tvix_oci_castore::import::{ImportOptions, import_path};
    let tree = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..len).map(|i| (i * 13 % 253) as u8).collect();
    std::fs::write(tree.path().join("big"), &data).unwrap();
    let digest = B3Digest::of(&data);
    let blobs = open_blob_service(url).await.unwrap();
    assert!(blobs.digest_first_from().is_some_and(|f| f <= len as u64));
    let dirs = open_directory_service(url).await.unwrap();
    for _ in 0..2 {
        let node = import_path(
            blobs.clone(),
            &*dirs,
            &tree.path().join("big"),
            &ImportOptions::default(),
        )
        .await
        .unwrap();
        assert!(matches!(node, Node::File { digest: d, .. } if d == digest));
    }
    assert_eq!(read_to_end(&*blobs, &digest).await.unwrap().unwrap(), data);
    let file = object_file(root, "blobs/whole", &digest);
    assert_eq!(std::fs::read(&file).unwrap(), data, "{}", file.display());
    assert!(
        blobs
            .open_write_known(&digest, len as u64)
            .await
            .unwrap()
            .is_none()
    );

    // Other bytes than announced (a file changed between its reads), or
    // fewer: the close fails naming the digest, nothing is at the key.
    let mut other = data.clone();
    other[len / 2] ^= 1;
    let claimed = B3Digest::of(&other);
    for bytes in [&data[..], &other[..len - 1]] {
        let mut w = blobs
            .open_write_known(&claimed, len as u64)
            .await
            .unwrap()
            .unwrap();
        for chunk in bytes.chunks(1 << 20) {
            w.write(Bytes::copy_from_slice(chunk)).await.unwrap();
        }
        let err = w.close().await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
        assert!(err.to_string().contains(&claimed.to_hex()), "{err}");
        assert!(!blobs.has(&claimed).await.unwrap());
    }
    // More bytes than announced fail the write.
    let mut w = blobs.open_write_known(&claimed, 10).await.unwrap().unwrap();
    let err = w.write(Bytes::from_static(&[0; 11])).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
}

#[tokio::test]
async fn big_file_digest_first_file() {
    let tmp = tempfile::tempdir().unwrap();
    big_file_digest_first(
        &format!("objectstore+file://{}", tmp.path().display()),
        tmp.path(),
        2 * SINGLE_PUT_MAX as usize + 12_345,
    )
    .await;
}

#[tokio::test]
async fn big_file_digest_first_s3() {
    let Some(s3) = s3_server() else { return };
    for (i, len) in [
        2 * SINGLE_PUT_MAX as usize + 12_345,
        KNOWN_PUT_MAX as usize + 12_345,
    ]
    .into_iter()
    .enumerate()
    {
        let prefix = format!("known/p{i}");
        big_file_digest_first(&s3.url(&prefix), &s3.bucket_dir().join(&prefix), len).await;
    }
}
