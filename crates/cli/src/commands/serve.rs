//! `tvix-oci-build serve`: the store's castore services and the
//! BuildService, under both the tvix and the snix package names, and our
//! own `tvix_oci_build.v1.BuildService` (the build's events streamed as it
//! runs), on one gRPC listener, so tvix and snix clients, and `run
//! --remote`, can upload inputs, send builds and read the outputs back;
//! with `--http`, the page watching the builds beside it (`crate::web`).

use std::sync::Arc;

use anyhow::Context;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tvix_oci_castore::blobservice::BlobService;
use tvix_oci_castore::directoryservice::DirectoryService;
use tvix_oci_castore::grpc::{ServeOptions, castore_routes_with};
use tvix_oci_executor::Executor;
use tvix_oci_executor::grpc::GrpcBuildServer;
use tvix_oci_executor::watch::{Registry, WatchLimits};

use crate::args::ExecArgs;
use crate::commands::shutdown_signal;
use crate::exit::{HOST, INVALID, exit};
use crate::web::Web;

/// Serves until Ctrl-C or SIGTERM. Builds in flight are then stopped and
/// cleaned up (their clients see the call fail). An upload silent for
/// `upload_idle` is dropped. With `http`, the page watching the builds
/// is served there too.
pub async fn serve(
    listen: &str,
    http: Option<&str>,
    upload_idle: std::time::Duration,
    args: &ExecArgs,
    blobs: Arc<dyn BlobService>,
    dirs: Arc<dyn DirectoryService>,
) -> anyhow::Result<()> {
    let mut config = args.config(&*blobs);
    // One cache for all its builds (each build alone would fetch its
    // inputs again).
    let cache_dir = crate::store::data_dir().join("blob-cache");
    let cache = tvix_oci_fuse::BlobCache::open(&cache_dir, args.blob_cache_size)
        .map_err(|e| exit(HOST, format!("the blob cache {}: {e}", cache_dir.display())))?;
    config.blob_cache = Some(Arc::new(cache));
    let exec = Arc::new(Executor::new(config, blobs.clone(), dirs.clone()));
    exec.recover();
    // A clash of the build id pool with a host account refuses to start.
    exec.check_host().map_err(|e| exit(HOST, e))?;
    let mut builds = GrpcBuildServer::new(exec).with_limits(args.limits.limits());
    let web = match http {
        Some(addr) => {
            let registry = Registry::new(WatchLimits::default());
            builds = builds.with_registry(registry.clone());
            Some(Web::bind(addr, registry).await.map_err(|e| exit(HOST, e))?)
        }
        None => None,
    };
    let routes = castore_routes_with(blobs, dirs, ServeOptions { upload_idle })
        .add_service(builds.clone().into_service())
        .add_service(builds.clone().into_events_service())
        .add_service(builds.into_snix_service());
    // Uploads from clients far away: the receive window grows with the
    // bandwidth-delay product as it is measured, so a server with many
    // clients near by keeps small buffers (clients, which hold one
    // connection per store, use fixed large windows: castore's grpc).
    let server = Server::builder()
        .http2_adaptive_window(Some(true))
        .add_routes(routes);
    if let Some(path) = listen.strip_prefix("unix:") {
        let path = path.trim_start_matches("//");
        if std::fs::symlink_metadata(path).is_ok() {
            return Err(exit(
                INVALID,
                format!("--listen {listen}: {path} already exists; remove it first"),
            ));
        }
        let listener = tokio::net::UnixListener::bind(path)
            .map_err(|e| exit(HOST, format!("cannot listen on {path}: {e}")))?;
        let _socket = RemoveOnDrop(path.into());
        println!("listening on grpc+unix://{path}");
        let web = announce(web);
        until_signal(
            server.serve_with_incoming(UnixListenerStream::new(listener)),
            web,
        )
        .await?;
    } else {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| exit(HOST, format!("cannot listen on {listen}: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| exit(HOST, format!("cannot listen on {listen}: {e}")))?;
        println!("listening on grpc+http://{addr}");
        let web = announce(web);
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        until_signal(server.serve_with_incoming(incoming), web).await?;
    }
    Ok(())
}

/// Prints where the page is served (after the gRPC address, which
/// comes first), and serves it.
fn announce(web: Option<Web>) -> impl std::future::Future<Output = anyhow::Result<()>> {
    if let Some(w) = &web {
        println!("watching on http://{}", w.addr());
    }
    async move {
        match web {
            Some(w) => w.run().await,
            None => std::future::pending().await,
        }
    }
}

/// Runs the server (and the page, `web`) until Ctrl-C or SIGTERM. The
/// server is dropped then rather than drained, so builds in flight do not
/// hold up the exit: the runtime's shutdown drops them, and their guards
/// clean up.
async fn until_signal(
    server: impl std::future::Future<Output = Result<(), tonic::transport::Error>>,
    web: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    tokio::select! {
        r = server => r.context("serving"),
        r = web => r,
        _ = shutdown_signal() => {
            eprintln!("stopping: builds in flight are cancelled and cleaned up");
            Ok(())
        }
    }
}

/// Removes the unix socket file when serving ends.
struct RemoveOnDrop(std::path::PathBuf);
impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
