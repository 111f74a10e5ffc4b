//! `serve --http ADDR`: a small page to watch the builder, over plain
//! HTTP/1 (browsers speak no cleartext HTTP/2, which the gRPC listener
//! needs). The page (index.html, app.js, style.css: no build step, in the
//! binary) reads the server's [`Registry`] through two endpoints:
//!
//! - `GET /api/builds`: the running and recent builds as JSON
//!   ([`Registry::list`]); `GET /api/builds/ID`: one build's summary.
//! - `GET /api/builds/ID/events`: server-sent events of one build — its
//!   summary, the log lines kept, then its events live, then `end`
//!   ([`tvix_oci_executor::watch::Subscription`]).
//!
//! An unknown build answers 404 saying so. There is no authentication:
//! bind it to loopback, or put it behind a proxy that has (SECURITY.md).
//! Requests naming another host than an address or `localhost` are
//! refused, so a web site cannot read the page through DNS rebinding.

use std::convert::Infallible;
use std::net::SocketAddr;

use anyhow::Context;
use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio_stream::StreamExt;
use tvix_oci_executor::watch::{Registry, WatchError};

/// The page's listener and the registry it shows.
#[derive(Debug)]
pub struct Web {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    registry: Registry,
}

impl Web {
    /// Listens on `addr` (as given, nothing else), showing `registry`.
    pub async fn bind(addr: &str, registry: Registry) -> anyhow::Result<Web> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on --http {addr}"))?;
        let addr = listener
            .local_addr()
            .with_context(|| format!("cannot listen on --http {addr}"))?;
        if !addr.ip().is_loopback() {
            tracing::warn!(
                "--http {addr} is not a loopback address: anyone who reaches it sees every build and its log (no authentication; see SECURITY.md)"
            );
        }
        Ok(Web {
            listener,
            addr,
            registry,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves the page until the future is dropped.
    pub async fn run(self) -> anyhow::Result<()> {
        axum::serve(self.listener, router(self.registry))
            .await
            .context("serving the page (--http)")
    }
}

const INDEX: &str = include_str!("index.html");
const APP: &str = include_str!("app.js");
const STYLE: &str = include_str!("style.css");

/// Scripts and styles from the page's own origin only: a log line that
/// somehow became markup still could not run a script.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

fn router(registry: Registry) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP) }),
        )
        .route(
            "/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .route("/api/builds", get(list))
        .route("/api/builds/{id}", get(one))
        .route("/api/builds/{id}/events", get(events))
        .fallback(|req: Request| async move {
            let msg = format!("no page {} here: try / or /api/builds", req.uri().path());
            text(StatusCode::NOT_FOUND, msg)
        })
        .layer(middleware::from_fn(local_hosts_only))
        .with_state(registry)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let headers = [
        (header::CONTENT_TYPE, content_type),
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::CACHE_CONTROL, "no-cache"),
    ];
    (headers, body).into_response()
}

/// A message (which may echo the request's path) as plain text, never
/// sniffed as anything else.
fn text(status: StatusCode, msg: String) -> Response {
    let headers = [
        (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ];
    (status, headers, msg + "\n").into_response()
}

fn json(value: &serde_json::Value) -> Response {
    let headers = [
        (header::CONTENT_TYPE, "application/json"),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ];
    (headers, value.to_string()).into_response()
}

/// The answer to a build id in the path that is not a number.
fn not_a_number(id: &str) -> Response {
    let msg = format!(
        "no build {id:?} on this server: a build is named by its number (the id in /api/builds)"
    );
    text(StatusCode::NOT_FOUND, msg)
}

fn refused(e: WatchError) -> Response {
    let status = match e {
        WatchError::Unknown { .. } => StatusCode::NOT_FOUND,
        WatchError::TooManyWatchers { .. } => StatusCode::SERVICE_UNAVAILABLE,
    };
    text(status, e.to_string())
}

async fn list(State(registry): State<Registry>) -> Response {
    json(&registry.list())
}

async fn one(State(registry): State<Registry>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse() else {
        return not_a_number(&id);
    };
    match registry.summary(id) {
        Ok(v) => json(&v),
        Err(e) => refused(e),
    }
}

async fn events(State(registry): State<Registry>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse() else {
        return not_a_number(&id);
    };
    let subscription = match registry.subscribe(id) {
        Ok(s) => s,
        Err(e) => return refused(e),
    };
    // The kinds are fixed words and the data one line of JSON (its
    // newlines and carriage returns escaped), as SSE needs.
    let events = subscription
        .into_stream()
        .map(|e| Ok::<_, Infallible>(Event::default().event(e.kind).data(&*e.data)));
    let headers = [(header::CACHE_CONTROL, "no-store")];
    (headers, Sse::new(events).keep_alive(KeepAlive::default())).into_response()
}

/// Refuses a request whose `Host` is a name other than `localhost`: a
/// web page cannot then reach the server by pointing a name it owns at
/// this address (DNS rebinding). An address, or no `Host`, passes.
async fn local_hosts_only(req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned());
    match host {
        Some(h) if !host_allowed(&h) => text(
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "Host {h:?} refused: this page answers only requests to an IP address or localhost (a proxy in front must pass one)"
            ),
        ),
        _ => next.run(req).await,
    }
}

/// Whether `host` (a `Host` header: name or address, and maybe a port)
/// is an IP address or `localhost`.
fn host_allowed(host: &str) -> bool {
    if host.parse::<SocketAddr>().is_ok() || host.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::host_allowed;

    #[test]
    fn only_addresses_and_localhost_are_hosts_allowed() {
        for ok in [
            "127.0.0.1:8080",
            "127.0.0.1",
            "[::1]:80",
            "::1",
            "localhost:9",
            "LOCALHOST",
        ] {
            assert!(host_allowed(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "127.0.0.1.nip.io:80",
            "",
        ] {
            assert!(!host_allowed(bad), "{bad:?}");
        }
    }
}
