//! A gRPC store that accepts connections and never answers makes every
//! client call fail in bounded time, with an error naming the store and
//! what it waited for: a bare TCP listener that never speaks, and a real
//! gRPC server whose store never answers (so HTTP/2 works, calls hang).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};
use tvix_oci_testkit::SleepingStore;

use bytes::Bytes;
use futures::StreamExt;
use tokio::io::AsyncReadExt;
use tvix_oci_castore::{B3Digest, Directory, open_blob_service, open_directory_service};

/// Accepts connections and holds them, never reading or writing.
async fn silent_listener() -> (String, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    (format!("grpc+http://{addr}"), task)
}

/// Runs `f`, which must fail within a few seconds (the store's timeout is
/// 1 s); its error message.
async fn fails_soon<T: std::fmt::Debug, E: std::fmt::Display>(
    what: &str,
    f: impl Future<Output = Result<T, E>>,
) -> String {
    let start = Instant::now();
    let res = tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: still waiting after 20 s"));
    let err = res.expect_err(what).to_string();
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "{what}: took {:?}",
        start.elapsed()
    );
    err
}

fn assert_names(err: &str, kind: &str, url: &str, what: &str) {
    let expect = format!("the {kind} store {url} did not {what}");
    assert!(err.contains(&expect), "{err:?} lacks {expect:?}");
    assert!(err.contains("within 1 s"), "{err}");
}

/// Every call of both clients against the store at `base`.
async fn every_call_times_out(base: &str, read_starts: bool) {
    let url = format!("{base}?timeout=1&idle_timeout=1&connect_timeout=1");
    let blobs = open_blob_service(&url).await.unwrap();
    let dirs = open_directory_service(&url).await.unwrap();
    let d = B3Digest::of(b"anything");

    let err = fails_soon("has", blobs.has(&d)).await;
    assert_names(&err, "blob", &url, &format!("answer Stat of blob {d}"));

    let read = async {
        let mut r = blobs.open_read(&d).await?.expect("a reader");
        r.read_to_end(&mut Vec::new()).await
    };
    let err = fails_soon("read", read).await;
    let what = match read_starts {
        true => format!("send the next chunk of blob {d}"),
        false => format!("answer Read of blob {d}"),
    };
    assert_names(&err, "blob", &url, &what);

    // Big enough to fill the flow control windows when nobody reads.
    let big = Bytes::from(vec![7u8; 64 << 20]);
    let err = fails_soon("put", blobs.put(big)).await;
    assert!(
        err.contains(&format!("the blob store {url} did not")),
        "{err}"
    );

    let err = fails_soon("get", dirs.get(&d)).await;
    assert_names(
        &err,
        "directory",
        &url,
        &format!("answer Get of directory {d}"),
    );

    let err = fails_soon("get_recursive", async {
        dirs.get_recursive(&d).next().await.expect("an item")
    })
    .await;
    assert_names(
        &err,
        "directory",
        &url,
        &format!("answer Get of directory {d}"),
    );

    let dir = Directory::default();
    let root = dir.digest();
    let err = fails_soon("directory put", dirs.put(dir)).await;
    assert_names(
        &err,
        "directory",
        &url,
        &format!("answer Put of the closure of directory {root}"),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_listener_that_never_speaks() {
    let (url, task) = silent_listener().await;
    every_call_times_out(&url, false).await;
    task.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_grpc_server_whose_store_never_answers() {
    let sleeping = Arc::new(SleepingStore::trickling());
    let (url, task) = common::serve_tcp(sleeping.clone(), sleeping).await;
    every_call_times_out(&url, true).await;
    task.abort();
}

#[tokio::test]
async fn bad_timeout_parameters_are_refused() {
    for q in [
        "timeout=0",
        "idle_timeout=-1",
        "connect_timeout=soon",
        "timeouts=3",
    ] {
        let url = format!("grpc+http://127.0.0.1:1?{q}");
        let err = open_blob_service(&url).await.unwrap_err().to_string();
        assert!(err.contains(&url), "{err}");
    }
}
