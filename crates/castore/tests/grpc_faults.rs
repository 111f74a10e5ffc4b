//! A remote store is not trusted: corrupted blob bytes and invalid
//! directories are caught by the client, bad uploads by the server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io;

use std::sync::Arc;
use tvix_oci_testkit::{Fault, FaultyBlobs};

use bytes::Bytes;
use futures::TryStreamExt;
use tokio::io::AsyncReadExt;
use tvix_oci_castore::blobservice::MemoryBlobService;
use tvix_oci_castore::directoryservice::MemoryDirectoryService;
use tvix_oci_castore::{Directory, Node, PathComponent, open_blob_service, open_directory_service};

#[tokio::test]
async fn corrupted_remote_blob_is_detected() {
    let (url, server) = common::serve_tcp(
        Arc::new(
            FaultyBlobs::new(Arc::new(MemoryBlobService::default())).reads(Fault::Corrupt, None),
        ),
        Arc::new(MemoryDirectoryService::default()),
    )
    .await;
    let blobs = open_blob_service(&url).await.unwrap();
    let digest = blobs
        .put(Bytes::from_static(b"precious bytes"))
        .await
        .unwrap();
    // Our server checks what its backing store sends and ends the stream
    // with DATA_LOSS, which the client reports as InvalidData, as it does
    // a foreign server's corruption it catches itself. Either way the read
    // never ends cleanly.
    let caught = |err: &io::Error| {
        err.kind() == io::ErrorKind::InvalidData && err.to_string().contains("hash to")
    };
    let mut r = blobs.open_read(&digest).await.unwrap().unwrap();
    let err = r.read_to_end(&mut Vec::new()).await.unwrap_err();
    assert!(caught(&err), "{err}");
    assert!(err.to_string().contains(&digest.to_hex()), "{err}");
    // A read at an offset is checked too: it never ends in a clean EOF.
    let mut r = blobs.open_read_at(&digest, 5).await.unwrap().unwrap();
    let err = r.read_to_end(&mut Vec::new()).await.unwrap_err();
    assert!(caught(&err), "{err}");
    server.abort();
}

#[tokio::test]
async fn server_rejects_bad_directory_put_with_a_clear_error() {
    let (url, server) = common::serve_tcp(
        Arc::new(MemoryBlobService::default()),
        Arc::new(MemoryDirectoryService::default()),
    )
    .await;
    // Talk raw protobuf, as a foreign client could, to bypass our client's checks.
    let channel = tonic::transport::Endpoint::from_shared(url.replace("grpc+http", "http"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c =
        tvix_oci_castore::proto::directory_service_client::DirectoryServiceClient::new(channel);

    let mut child = Directory::new();
    child
        .add(
            PathComponent::try_from("f").unwrap(),
            Node::Symlink {
                target: "x".try_into().unwrap(),
            },
        )
        .unwrap();
    let mut parent = Directory::new();
    parent
        .add(PathComponent::try_from("keep").unwrap(), child.as_node())
        .unwrap();
    let status = c
        .put(futures::stream::iter([
            tvix_oci_castore::proto::Directory::from(&parent),
        ]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("\"keep\"") && status.message().contains("not sent"),
        "{}",
        status.message()
    );

    let unsorted = tvix_oci_castore::proto::Directory {
        symlinks: vec![
            tvix_oci_castore::proto::SymlinkNode {
                name: "b".into(),
                target: "x".into(),
            },
            tvix_oci_castore::proto::SymlinkNode {
                name: "a".into(),
                target: "x".into(),
            },
        ],
        ..Default::default()
    };
    let status = c.put(futures::stream::iter([unsorted])).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("not sorted"),
        "{}",
        status.message()
    );

    // Nothing of either got stored.
    let dirs = open_directory_service(&url).await.unwrap();
    assert!(dirs.get(&parent.digest()).await.unwrap().is_none());
    let none: Vec<Directory> = dirs
        .get_recursive(&parent.digest())
        .try_collect()
        .await
        .unwrap();
    assert!(none.is_empty());
    server.abort();
}

#[tokio::test]
async fn bad_urls_say_what_is_wrong() {
    for (url, want) in [
        ("nope://x", "unknown blob store scheme"),
        ("objects://host/x", "absolute path"),
        ("grpc+http://127.0.0.1:1", "cannot connect"),
        ("grpc+http://127.0.0.1:1?package=foo", "package must be"),
        ("not a url", "invalid store URL"),
    ] {
        let err = open_blob_service(url).await.unwrap_err().to_string();
        assert!(err.contains(want), "{url}: {err}");
        assert!(
            err.contains(url.split('?').next().unwrap()) || url == "not a url",
            "{url}: {err}"
        );
    }
}
