//! One behaviour suite for every store backend: memory, embedded local
//! (objects + redb), gRPC over TCP, a unix socket, and the snix package
//! name, each against a real loopback server, and object storage in
//! memory, in files and on a real S3 server (s3s-fs) on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::Backend;
use futures::TryStreamExt;
use rstest::rstest;
use rstest_reuse::{apply, template};
use tokio::io::AsyncReadExt;
use tvix_oci_castore::blobservice::read_to_end;
use tvix_oci_castore::{B3Digest, ClosureError, Directory, Node, PathComponent, StoreError};

#[template]
#[rstest]
#[case::memory(Backend::Memory)]
#[case::local(Backend::Local)]
#[case::grpc_tcp(Backend::GrpcTcp)]
#[case::grpc_unix(Backend::GrpcUnix)]
#[case::grpc_snix(Backend::GrpcSnix)]
#[case::objectstore_memory(Backend::ObjMemory)]
#[case::objectstore_file(Backend::ObjFile)]
#[case::objectstore_s3(Backend::ObjS3)]
#[tokio::test]
async fn backends(#[case] backend: Backend) {}

fn name(s: &str) -> PathComponent {
    PathComponent::try_from(s).unwrap()
}

fn file_node(data: &[u8]) -> Node {
    Node::File {
        digest: B3Digest::of(data),
        size: data.len() as u64,
        executable: false,
    }
}

#[apply(backends)]
async fn blob_roundtrip(#[case] backend: Backend) {
    let Some(s) = backend.open().await else {
        return;
    };
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let digest = B3Digest::of(&data);
    assert!(!s.blobs.has(&digest).await.unwrap());
    assert!(s.blobs.open_read(&digest).await.unwrap().is_none());

    let mut w = s.blobs.open_write().await.unwrap();
    for chunk in data.chunks(700_000) {
        w.write(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    assert_eq!(w.close().await.unwrap(), digest);
    assert!(s.blobs.has(&digest).await.unwrap());
    assert_eq!(
        read_to_end(&*s.blobs, &digest).await.unwrap().unwrap(),
        data
    );

    // Reads at an offset, including at and past the end.
    for off in [1u64, 1_048_577, 2_999_999, 3_000_000, 4_000_000] {
        let mut r = s.blobs.open_read_at(&digest, off).await.unwrap().unwrap();
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        let start = (off as usize).min(data.len());
        assert_eq!(got, &data[start..], "offset {off}");
    }
}

#[apply(backends)]
async fn empty_blob_and_put(#[case] backend: Backend) {
    let Some(s) = backend.open().await else {
        return;
    };
    let d = s.blobs.put(Bytes::new()).await.unwrap();
    assert_eq!(
        d.to_hex(),
        "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
    );
    assert_eq!(read_to_end(&*s.blobs, &d).await.unwrap().unwrap(), b"");
    let d = s
        .blobs
        .put(Bytes::from_static(b"Hello World!"))
        .await
        .unwrap();
    assert_eq!(
        d.to_hex(),
        "5ca7815adcb484e9a136c11efe69c1d530176d549b5d18d038eb5280b4b3470c"
    );
}

#[apply(backends)]
async fn dropped_writer_stores_nothing(#[case] backend: Backend) {
    let Some(s) = backend.open().await else {
        return;
    };
    let mut w = s.blobs.open_write().await.unwrap();
    w.write(Bytes::from_static(b"never finished"))
        .await
        .unwrap();
    drop(w);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(!s.blobs.has(&B3Digest::of(b"never finished")).await.unwrap());
}

/// leaf <- mid <- root, and root also holds leaf directly.
fn closure() -> (Directory, Directory, Directory) {
    let mut leaf = Directory::new();
    leaf.add(name(".keep"), file_node(b"")).unwrap();
    let mut mid = Directory::new();
    mid.add(name("leaf"), leaf.as_node()).unwrap();
    mid.add(name("f"), file_node(b"x")).unwrap();
    let mut root = Directory::new();
    root.add(name("mid"), mid.as_node()).unwrap();
    root.add(name("again"), leaf.as_node()).unwrap();
    (leaf, mid, root)
}

#[apply(backends)]
async fn directory_closure(#[case] backend: Backend) {
    let Some(s) = backend.open().await else {
        return;
    };
    let (leaf, mid, root) = closure();
    assert!(s.dirs.get(&root.digest()).await.unwrap().is_none());
    let none: Vec<Directory> = s
        .dirs
        .get_recursive(&root.digest())
        .try_collect()
        .await
        .unwrap();
    assert!(none.is_empty());

    let mut p = s.dirs.put_multiple_start();
    for d in [&leaf, &mid, &root] {
        p.put(d.clone()).await.unwrap();
    }
    assert_eq!(p.close().await.unwrap(), root.digest());
    drop(p);

    assert_eq!(s.dirs.get(&mid.digest()).await.unwrap().unwrap(), mid);
    let all: Vec<Directory> = s
        .dirs
        .get_recursive(&root.digest())
        .try_collect()
        .await
        .unwrap();
    // Root first, breadth-first by name, each digest once.
    assert_eq!(all, vec![root.clone(), leaf.clone(), mid.clone()]);
    assert_eq!(root.size(), 2 * 2 + mid.size() + leaf.size());
}

#[apply(backends)]
async fn put_rejects_child_never_sent(#[case] backend: Backend) {
    let Some(s) = backend.open().await else {
        return;
    };
    let (_, mid, _) = closure();
    let mut p = s.dirs.put_multiple_start();
    let err = p.put(mid.clone()).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Closure(ClosureError::ChildNotSent { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("\"leaf\""), "{err}");
    drop(p);
    assert!(s.dirs.get(&mid.digest()).await.unwrap().is_none());
}

#[apply(backends)]
async fn single_put_and_get(#[case] backend: Backend) {
    let Some(s) = backend.open().await else {
        return;
    };
    let (leaf, ..) = closure();
    assert_eq!(s.dirs.put(leaf.clone()).await.unwrap(), leaf.digest());
    assert_eq!(s.dirs.get(&leaf.digest()).await.unwrap(), Some(leaf));
}
