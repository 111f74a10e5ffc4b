//! gRPC plumbing shared by the remote store clients and the server: the
//! connection from a `grpc+http://` / `grpc+unix://` URL, the package
//! name (`tvix.castore.v1` or `snix.castore.v1`) that makes the gRPC paths,
//! and the clients' timeouts ([`StoreTimeouts`]).

use std::str::FromStr;

use hyper_util::rt::TokioIo;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use url::Url;

use crate::StoreError;

mod server;
mod timeouts;

pub use server::{
    GrpcBlobServer, GrpcDirectoryServer, ServeOptions, castore_routes, castore_routes_with,
};
pub(crate) use timeouts::Waits;
pub use timeouts::{StoreTimeouts, Timeout, parse_seconds};

/// The largest message accepted or sent (a Directory with many entries is
/// larger than tonic's 4 MiB default).
pub const MAX_MESSAGE_SIZE: usize = 256 * 1024 * 1024;

/// Which package name a peer speaks: the messages are identical, the gRPC
/// paths differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Package {
    /// `tvix.castore.v1`
    #[default]
    Tvix,
    /// `snix.castore.v1`
    Snix,
}

impl Package {
    /// The gRPC path of `method` on `service`.
    pub(crate) fn path(self, service: &str, method: &str) -> PathAndQuery {
        let pkg = match self {
            Package::Tvix => "tvix",
            Package::Snix => "snix",
        };
        // Only ever built from the constant names below: always a valid path.
        PathAndQuery::from_str(&format!("/{pkg}.castore.v1.{service}/{method}"))
            .unwrap_or_else(|_| PathAndQuery::from_static("/"))
    }
}

/// Reads the query of a store URL: `package=tvix|snix` and the timeouts
/// (`connect_timeout`, `timeout`, `idle_timeout`, in seconds), which
/// override `base`.
pub(crate) fn params_of(
    url: &Url,
    base: StoreTimeouts,
) -> Result<(Package, StoreTimeouts), StoreError> {
    let mut package = Package::default();
    let mut t = base;
    for (k, v) in url.query_pairs() {
        match (&*k, &*v) {
            ("package", "tvix") => package = Package::Tvix,
            ("package", "snix") => package = Package::Snix,
            ("package", other) => {
                return Err(StoreError::url(
                    url.as_str(),
                    format!("package must be \"tvix\" or \"snix\", not {other:?}"),
                ));
            }
            (key, value) => {
                if !timeouts::apply_param(&mut t, url, key, value)? {
                    return Err(StoreError::url(
                        url.as_str(),
                        format!(
                            "unknown parameter {key:?} (package, connect_timeout, timeout, idle_timeout)"
                        ),
                    ));
                }
            }
        }
    }
    Ok((package, t))
}

/// How much of one response (a blob) the server may send ahead of what we
/// have read. A stream moves at most this much per round trip: with
/// hyper's 2 MiB default, one blob from a store 10 ms away came at
/// 156 MiB/s; with this, 840 MiB/s (`cargo bench -p tvix-oci-benches
/// --bench grpc`). hyper's adaptive window reached 365 MiB/s on one big
/// blob but fell to 38 MiB/s on big blobs after many small ones (it probes
/// less often once it thinks the link is stable), so the window is fixed.
const STREAM_WINDOW: u32 = 16 << 20;
/// The same for all of a connection's streams together: at most this much
/// is buffered per store connection.
const CONNECTION_WINDOW: u32 = 32 << 20;

/// Connects to the `kind` (blob or directory) store at a
/// `grpc+http://host:port` or `grpc+unix:///path/to.sock` URL, with
/// receive windows for stores far away ([`STREAM_WINDOW`]), given
/// `connect` to connect (the URL's parameters override `base`).
pub(crate) async fn connect(
    url: &Url,
    kind: &'static str,
    base: StoreTimeouts,
) -> Result<(Channel, Package, Waits), StoreError> {
    let (package, t) = params_of(url, base)?;
    let waits = Waits {
        kind,
        url: url.as_str().to_owned(),
        t,
    };
    let within = |what: &str| waits.timeout(format!("accept a connection ({what})"), t.connect);
    let fail = |e: tonic::transport::Error| {
        let mut msg = e.to_string();
        if let Some(src) = std::error::Error::source(&e) {
            msg = format!("{msg}: {src}");
        }
        StoreError::url(url.as_str(), format!("cannot connect: {msg}"))
    };
    let channel = match url.scheme() {
        "grpc+http" => {
            let host = url
                .host_str()
                .ok_or_else(|| StoreError::url(url.as_str(), "no host"))?;
            let port = url
                .port()
                .ok_or_else(|| StoreError::url(url.as_str(), "no port"))?;
            let endpoint = Endpoint::from_shared(format!("http://{host}:{port}"))
                .map_err(fail)?
                .connect_timeout(t.connect)
                .initial_stream_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW);
            // connect_timeout bounds the TCP connect; the outer timeout
            // the HTTP/2 handshake after it too.
            tokio::time::timeout(t.connect, endpoint.connect())
                .await
                .map_err(|_| within("TCP and HTTP/2"))?
                .map_err(fail)?
        }
        "grpc+unix" => {
            if url.host_str().is_some_and(|h| !h.is_empty()) {
                return Err(StoreError::url(
                    url.as_str(),
                    "a unix socket URL has three slashes: grpc+unix:///path/to.sock",
                ));
            }
            let path = std::path::PathBuf::from(url.path());
            let endpoint = Endpoint::from_static("http://[::]:0")
                .connect_timeout(t.connect)
                .initial_stream_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW);
            let connecting = endpoint.connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            }));
            tokio::time::timeout(t.connect, connecting)
                .await
                .map_err(|_| within("unix socket and HTTP/2"))?
                .map_err(fail)?
        }
        other => {
            return Err(StoreError::url(
                url.as_str(),
                format!("not a gRPC scheme: {other}"),
            ));
        }
    };
    Ok((channel, package, waits))
}

/// A gRPC channel to the server at `url` (`grpc+http://HOST:PORT` or
/// `grpc+unix:///PATH`), connected as the stores connect (within
/// `timeouts.connect`, with their receive windows), for the other services
/// of the same server (its builds). Fails naming the URL.
pub async fn open_channel(url: &str, timeouts: StoreTimeouts) -> Result<Channel, StoreError> {
    let parsed = Url::parse(url).map_err(|e| StoreError::url(url, e.to_string()))?;
    let (channel, _, _) = connect(&parsed, "build server", timeouts).await?;
    Ok(channel)
}

/// A tonic client on `channel` with our message size limits.
pub(crate) fn client(channel: Channel) -> tonic::client::Grpc<Channel> {
    tonic::client::Grpc::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE)
}
