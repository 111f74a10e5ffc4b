//! `tvix-oci-build run --remote URL`: the same `run`, built on a `serve`
//! at `URL` (`grpc+http://HOST:PORT` or `grpc+unix:///PATH`) through its
//! streaming `tvix_oci_build.v1.BuildService/Build`. Local `--input` paths
//! are uploaded into the server's store first, only what it lacks
//! (`crate::upload`); each build's log streams to
//! stderr as the server sends it, its phases on the spinner; the result is
//! the `BuildResult` the `Completed` event carries, printed as a local run
//! prints it, with the same exit codes. Ctrl-C drops the streams, which
//! cancels the builds on the server.
//!
//! A build is tried again (`--retries`, after 0.5 s, 1 s, 2 s, …) when its
//! try ended for a reason another builder behind the same address, or the
//! same one a little later, may not have: refused as busy
//! (`RESOURCE_EXHAUSTED`, `serve --queue`) or unavailable, its stream
//! broken or ended without a result (a builder killed mid-build), or a
//! failure its server calls its host's or its store's. Builds are hermetic,
//! so running one again is safe; the build's own failures and the
//! request's are never retried, and a build whose stream broke after it
//! started running is tried once more only (a build that kills its
//! builder must not take the farm down one builder after another).

use std::time::Duration;

use tokio_stream::StreamExt;
use tvix_oci_castore::grpc::{StoreTimeouts, open_channel};
use tvix_oci_castore::{open_blob_service_with, open_directory_service_with};
use tvix_oci_executor::BuildResult;
use tvix_oci_executor::runc::{LogSink, LogStream, Phase};
use tvix_oci_executor::wire::{phase_of, result_of};
use tvix_oci_spec::BuildRequest;
use tvix_oci_spec::proto::events::build_service_client::BuildServiceClient;
use tvix_oci_spec::proto::events::{self as ev, build_event::Event, failed::Fault};

use super::report::{Failure, report};
use super::run::{build_sinks, print_requests, requests, shutdown_signal};
use crate::args::RunArgs;
use crate::exit::{BUILD_FAILED, HOST, INVALID, exit};
use crate::progress::{BuildProgress, Progress};

/// Largest message received: the `Completed` of a build, which echoes its
/// request (up to the default request limit, 64 MiB) next to its outputs.
const MAX_MESSAGE: usize = 256 << 20;

/// Runs `args` on the server at `url`, connecting within `timeouts`.
pub async fn run_remote(args: &RunArgs, url: &str, timeouts: StoreTimeouts) -> anyhow::Result<()> {
    let host = |e: tvix_oci_castore::StoreError| exit(HOST, format!("--remote {url}: {e}"));
    let blobs = open_blob_service_with(url, timeouts).await.map_err(host)?;
    let dirs = open_directory_service_with(url, timeouts)
        .await
        .map_err(host)?;
    let progress = Progress::new();
    let requests = requests(args, &progress, &blobs, &dirs, true).await?;
    if args.dry_run {
        print_requests(&requests);
        return Ok(());
    }
    let client = client(url, timeouts).await?;
    let sinks = build_sinks(&progress, requests.len());
    let builds = futures::future::join_all(
        requests
            .iter()
            .zip(&sinks)
            .map(|(r, s)| build(client.clone(), r, s, args.retries)),
    );
    let results = tokio::select! {
        r = builds => r,
        _ = shutdown_signal() => return Err(exit(HOST, format!("interrupted; the builds on {url} were cancelled"))),
    };
    drop(sinks);
    drop(blobs);
    report(results)
}

/// The client of the event stream of the server at `url`.
pub(crate) async fn client(
    url: &str,
    timeouts: StoreTimeouts,
) -> anyhow::Result<BuildServiceClient<tonic::transport::Channel>> {
    let channel = open_channel(url, timeouts)
        .await
        .map_err(|e| exit(HOST, format!("--remote {url}: {e}")))?;
    Ok(BuildServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(usize::MAX))
}

/// How a try of a build ended without a result.
enum Try {
    /// For a reason another try may not meet.
    Again(Failure),
    /// As `Again`, but the build had run: tried again only if it is the
    /// first try.
    AgainOnce(Failure),
    /// For good: the build's fault, the request's, or the result's.
    Final(Failure),
}

/// Builds `req` on the server `client` talks to, its events shown on
/// `sink`, trying again up to `retries` times (see the module docs); its
/// result, or why there is none.
pub(crate) async fn build(
    client: BuildServiceClient<tonic::transport::Channel>,
    req: &BuildRequest,
    sink: &BuildProgress,
    retries: u32,
) -> Result<BuildResult, Failure> {
    let mut tried = 0;
    loop {
        match build_once(client.clone(), req, sink).await {
            Ok(r) => return Ok(r),
            Err(Try::Again(f)) if tried < retries => {
                tried += 1;
                let wait = backoff(tried);
                let note = format!(
                    "[{}; trying again in {wait:?} ({tried} of {retries})]\n",
                    f.msg
                );
                sink.log(LogStream::Stderr, note.as_bytes());
                tokio::time::sleep(wait).await;
            }
            Err(Try::AgainOnce(f)) if tried == 0 && retries > 0 => {
                tried += 1;
                let wait = backoff(tried);
                let note = format!("[{}; trying once more in {wait:?}]\n", f.msg);
                sink.log(LogStream::Stderr, note.as_bytes());
                tokio::time::sleep(wait).await;
            }
            Err(Try::Again(f) | Try::AgainOnce(f) | Try::Final(f)) => return Err(f),
        }
    }
}

/// The wait before try `tried + 1`: 0.5 s doubling to 16 s at most, give
/// or take a quarter, so clients refused together do not come back
/// together.
fn backoff(tried: u32) -> Duration {
    let base = Duration::from_millis(500) * (1 << tried.saturating_sub(1).min(5));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    // 0.75x to 1.25x.
    base.mul_f64(0.75 + f64::from(nanos % 1000) / 2000.0)
}

/// One try of [`build`].
async fn build_once(
    mut client: BuildServiceClient<tonic::transport::Channel>,
    req: &BuildRequest,
    sink: &BuildProgress,
) -> Result<BuildResult, Try> {
    let mut events = client
        .build(tvix_oci_spec::proto::BuildRequest::from(req))
        .await
        .map_err(refused)?
        .into_inner();
    let mut running = false;
    while let Some(event) = events.next().await {
        let event = event.map_err(|s| broken(&s, running))?;
        match event.event {
            Some(Event::Log(l)) => sink.log(stream_of(&l), &l.data),
            Some(Event::Phase(p)) => {
                running |= matches!(phase_of(&p), Some(Phase::Running));
                if let Some(phase) = phase_of(&p) {
                    sink.phase(phase);
                }
            }
            Some(Event::LogsDropped(d)) => {
                let note = format!(
                    "[{} log lines ({} bytes) dropped by the server: this client read too slowly]\n",
                    d.lines, d.bytes
                );
                sink.log(LogStream::Stderr, note.as_bytes());
            }
            Some(Event::Completed(c)) => {
                return result_of(c).map_err(|e| {
                    Try::Final(Failure {
                        code: HOST,
                        msg: format!("the server's result is invalid: {e}"),
                    })
                });
            }
            Some(Event::Failed(f)) => return Err(failed(f)),
            Some(Event::Started(_) | Event::Progress(_) | Event::RefscanResult(_)) | None => {}
        }
    }
    let f = Failure {
        code: HOST,
        msg: "the server ended the build's stream without its result".into(),
    };
    Err(match running {
        true => Try::AgainOnce(f),
        false => Try::Again(f),
    })
}

/// A stream that ended in `s` before the build's result: worth another
/// try only when the connection or the server broke (not, e.g., a result
/// too large for this client), once only when the build had run.
fn broken(s: &tonic::Status, running: bool) -> Try {
    let f = Failure {
        code: HOST,
        msg: format!("the server broke off the build: {}", s.message()),
    };
    match (s.code(), running) {
        (tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal, false) => {
            Try::Again(f)
        }
        (tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal, true) => {
            Try::AgainOnce(f)
        }
        _ => Try::Final(f),
    }
}

fn stream_of(l: &ev::Log) -> LogStream {
    match l.stream() {
        ev::log::Stream::Stdout => LogStream::Stdout,
        _ => LogStream::Stderr,
    }
}

/// A call the server refused before building: 2 for a request it finds
/// invalid, 3 otherwise (unreachable, busy, no such service...); worth
/// another try when it was busy or could not be reached.
fn refused(s: tonic::Status) -> Try {
    let code = match s.code() {
        tonic::Code::InvalidArgument => INVALID,
        _ => HOST,
    };
    let f = Failure {
        code,
        msg: format!("the server refused the build: {}", s.message()),
    };
    match s.code() {
        tonic::Code::Unavailable
        | tonic::Code::ResourceExhausted
        | tonic::Code::Unknown
        | tonic::Code::Internal => Try::Again(f),
        _ => Try::Final(f),
    }
}

/// A build that ended in `Failed`: 1 for the build's fault, 2 for the
/// request's, 3 for the host's or the store's (worth another try).
fn failed(f: ev::Failed) -> Try {
    let fault = f.fault();
    let failure = |code| Failure {
        code,
        msg: f.message,
    };
    match fault {
        Fault::Build => Try::Final(failure(BUILD_FAILED)),
        Fault::Request => Try::Final(failure(INVALID)),
        Fault::Host | Fault::Store => Try::Again(failure(HOST)),
        Fault::Unspecified => Try::Final(failure(HOST)),
    }
}
