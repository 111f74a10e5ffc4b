//! What stalled, vanished and killed processes leave in the embedded store,
//! against the real `serve`: a silent upload is dropped after the idle
//! limit with its temp file, a client that disconnects leaves none, the
//! temp files of a `kill -9`ed server are removed at the store's next open
//! (a live process's are kept), and a second process on the store is told
//! which process holds it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use common::bin;
use tvix_oci_castore::proto::{BlobChunk, blob_service_client::BlobServiceClient};

/// A `serve` process on a free port with its store under `data`, killed
/// when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(data: &Path, extra: &[&str]) -> Server {
        let (child, url) = common::spawn_serve(data, &data.join("bundles"), extra);
        Server { child, url }
    }

    /// Starts a blob upload that sends one chunk and then nothing; the
    /// call's task (its result is the server's answer).
    async fn stalled_upload(
        &self,
    ) -> tokio::task::JoinHandle<
        Result<tonic::Response<tvix_oci_castore::proto::PutBlobResponse>, tonic::Status>,
    > {
        let mut c = BlobServiceClient::connect(self.url.replace("grpc+http://", "http://"))
            .await
            .unwrap();
        let chunk = BlobChunk {
            data: vec![1u8; 1 << 20].into(),
        };
        let stream =
            futures::StreamExt::chain(futures::stream::iter([chunk]), futures::stream::pending());
        tokio::spawn(async move { c.put(stream).await })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The embedded blob store's temp dir for the data dir `data`.
fn temp_dir(data: &Path) -> PathBuf {
    data.join("tvix-oci-build/blobs/tmp")
}

fn temp_files(data: &Path) -> Vec<String> {
    std::fs::read_dir(temp_dir(data))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Waits up to `secs` for `cond`.
async fn eventually(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cond()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_upload_is_dropped_with_its_temp_file() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = Server::start(&data, &["--upload-idle-timeout", "1"]);
    let call = server.stalled_upload().await;
    assert!(
        eventually(10, || temp_files(&data).len() == 1).await,
        "the upload never reached the store: {:?}",
        temp_files(&data)
    );
    let status = tokio::time::timeout(Duration::from_secs(15), call)
        .await
        .expect("the server still holds the silent upload after 15 s")
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("sent nothing for 1 s"),
        "{status:?}"
    );
    assert!(
        eventually(5, || temp_files(&data).is_empty()).await,
        "left: {:?}",
        temp_files(&data)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_disconnects_mid_upload_leaves_no_temp_file() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // The idle limit is far off: only the disconnect can end the upload.
    let server = Server::start(&data, &[]);
    let call = server.stalled_upload().await;
    assert!(eventually(10, || temp_files(&data).len() == 1).await);
    call.abort();
    let _ = call.await;
    assert!(
        eventually(10, || temp_files(&data).is_empty()).await,
        "left: {:?}",
        temp_files(&data)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn temp_files_of_a_killed_server_are_removed_at_the_next_open() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut server = Server::start(&data, &[]);
    let pid = server.child.id();
    let _call = server.stalled_upload().await;
    assert!(eventually(10, || temp_files(&data).len() == 1).await);
    let left = temp_files(&data).remove(0);
    assert!(left.starts_with(&format!("blob.{pid}.")), "{left}");
    server.child.kill().unwrap(); // SIGKILL: nothing of it runs again
    server.child.wait().unwrap();
    assert_eq!(temp_files(&data), std::slice::from_ref(&left));

    // A write in flight of a live process (this one) in the same dir.
    let live = format!(
        "{}abcdef",
        tvix_oci_castore::tempfiles::owned_prefix("blob")
    );
    std::fs::write(temp_dir(&data).join(&live), b"in flight").unwrap();

    // The next start of the store: any command opening it.
    let f = tmp.path().join("f");
    std::fs::write(&f, b"x").unwrap();
    let out = bin(&data).arg("import").arg(&f).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(temp_files(&data), [live]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_process_on_the_embedded_store_is_told_who_holds_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = Server::start(&data, &[]);
    let out = bin(&data)
        .args(["ls", &tvix_oci_castore::B3Digest::of(b"x").to_hex()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    let db = data.join("tvix-oci-build/directories.redb");
    let expect = format!(
        "the directory store {} is in use by process {} (",
        db.display(),
        server.child.id()
    );
    assert!(err.contains(&expect), "{err:?} lacks {expect:?}");
    assert!(err.contains(" serve --listen 127.0.0.1:0"), "{err}");
    assert!(
        err.contains(&format!("use its gRPC address ({})", server.url)),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_directory_upload_is_dropped() {
    use tvix_oci_castore::proto::directory_service_client::DirectoryServiceClient;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = Server::start(&data, &["--upload-idle-timeout", "1"]);
    let mut c = DirectoryServiceClient::connect(server.url.replace("grpc+http://", "http://"))
        .await
        .unwrap();
    let leaf = tvix_oci_castore::proto::Directory::default();
    let stream =
        futures::StreamExt::chain(futures::stream::iter([leaf]), futures::stream::pending());
    let status = tokio::time::timeout(Duration::from_secs(15), c.put(stream))
        .await
        .expect("the server still holds the silent upload after 15 s")
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(
        status
            .message()
            .contains("the directory upload sent nothing for 1 s"),
        "{status:?}"
    );
}
