//! Store fixtures shared by the integration tests: every backend, the gRPC
//! ones over a real loopback server.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use tokio_stream::wrappers::UnixListenerStream;
use tvix_oci_castore::blobservice::{BlobService, MemoryBlobService};
use tvix_oci_castore::directoryservice::{DirectoryService, MemoryDirectoryService};
use tvix_oci_castore::{grpc, open_blob_service, open_directory_service};
use tvix_oci_testkit::s3server::S3Server;

/// A backend under test.
#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Memory,
    Local,
    GrpcTcp,
    GrpcUnix,
    GrpcSnix,
    /// `objectstore+memory:///`
    ObjMemory,
    /// `objectstore+file:///…`
    ObjFile,
    /// `objectstore+s3://…` on a real S3 server (s3s-fs) on loopback.
    ObjS3,
}

/// The S3 server for a test, or `None` (the test returns) when `s3s-fs`
/// is not installed outside CI; in CI (`CI` set) its absence fails.
pub fn s3_server() -> Option<S3Server> {
    match S3Server::start().unwrap() {
        Some(s) => Some(s),
        None => {
            let reason = "s3s-fs is not installed (.ci/install-deps installs it)";
            assert!(
                !tvix_oci_testkit::in_ci(),
                "CI must run this test, but it would be skipped: {reason}"
            );
            println!("SKIPPED: {reason}");
            None
        }
    }
}

/// Keeps what a backend needs alive (temp dirs, the server task).
pub struct Stores {
    pub blobs: Arc<dyn BlobService>,
    pub dirs: Arc<dyn DirectoryService>,
    _tmp: Option<tempfile::TempDir>,
    _server: Option<tokio::task::JoinHandle<()>>,
    pub s3: Option<S3Server>,
}

impl Drop for Stores {
    fn drop(&mut self) {
        if let Some(s) = &self._server {
            s.abort();
        }
    }
}

/// Serves `blobs` and `dirs` on loopback TCP; returns the base URL.
pub async fn serve_tcp(
    blobs: Arc<dyn BlobService>,
    dirs: Arc<dyn DirectoryService>,
) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_routes(grpc::castore_routes(blobs, dirs))
            .serve_with_incoming(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            )
            .await
            .unwrap();
    });
    (format!("grpc+http://{addr}"), task)
}

impl Backend {
    /// The stores, or `None` when the backend's server is not installed
    /// (see [`s3_server`]).
    pub async fn open(self) -> Option<Stores> {
        let mem_b: Arc<dyn BlobService> = Arc::new(MemoryBlobService::default());
        let mem_d: Arc<dyn DirectoryService> = Arc::new(MemoryDirectoryService::default());
        Some(match self {
            Backend::Memory => Stores {
                blobs: open_blob_service("memory://").await.unwrap(),
                dirs: open_directory_service("memory://").await.unwrap(),
                _tmp: None,
                _server: None,
                s3: None,
            },
            Backend::Local => {
                let tmp = tempfile::tempdir().unwrap();
                let p = tmp.path().display();
                Stores {
                    blobs: open_blob_service(&format!("objects://{p}/blobs"))
                        .await
                        .unwrap(),
                    dirs: open_directory_service(&format!("redb://{p}/dirs.redb"))
                        .await
                        .unwrap(),
                    _tmp: Some(tmp),
                    _server: None,
                    s3: None,
                }
            }
            Backend::GrpcTcp | Backend::GrpcSnix => {
                let (url, task) = serve_tcp(mem_b, mem_d).await;
                let url = match self {
                    Backend::GrpcSnix => format!("{url}?package=snix"),
                    _ => url,
                };
                Stores {
                    blobs: open_blob_service(&url).await.unwrap(),
                    dirs: open_directory_service(&url).await.unwrap(),
                    _tmp: None,
                    _server: Some(task),
                    s3: None,
                }
            }
            Backend::GrpcUnix => {
                let tmp = tempfile::tempdir().unwrap();
                let sock = tmp.path().join("castore.sock");
                let listener = tokio::net::UnixListener::bind(&sock).unwrap();
                let task = tokio::spawn(async move {
                    tonic::transport::Server::builder()
                        .add_routes(grpc::castore_routes(mem_b, mem_d))
                        .serve_with_incoming(UnixListenerStream::new(listener))
                        .await
                        .unwrap();
                });
                let url = format!("grpc+unix://{}", sock.display());
                Stores {
                    blobs: open_blob_service(&url).await.unwrap(),
                    dirs: open_directory_service(&url).await.unwrap(),
                    _tmp: Some(tmp),
                    _server: Some(task),
                    s3: None,
                }
            }
            Backend::ObjMemory => Stores {
                blobs: open_blob_service("objectstore+memory:///").await.unwrap(),
                dirs: open_directory_service("objectstore+memory:///")
                    .await
                    .unwrap(),
                _tmp: None,
                _server: None,
                s3: None,
            },
            Backend::ObjFile => {
                let tmp = tempfile::tempdir().unwrap();
                let url = format!("objectstore+file://{}/store", tmp.path().display());
                Stores {
                    blobs: open_blob_service(&url).await.unwrap(),
                    dirs: open_directory_service(&url).await.unwrap(),
                    _tmp: Some(tmp),
                    _server: None,
                    s3: None,
                }
            }
            Backend::ObjS3 => {
                let s3 = s3_server()?;
                let url = s3.url("suite");
                Stores {
                    blobs: open_blob_service(&url).await.unwrap(),
                    dirs: open_directory_service(&url).await.unwrap(),
                    _tmp: None,
                    _server: None,
                    s3: Some(s3),
                }
            }
        })
    }
}
