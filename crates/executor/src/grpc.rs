//! The tvix.build.v1 `BuildService` over gRPC, and the same under
//! snix.build.v1 (answering snix's `BuildResponse`): a tvix or snix client sends
//! a `BuildRequest`, the [`Executor`] runs it against the server's castore
//! and answers with the `Build`, whose output nodes the client then reads
//! from the same castore (serve both with
//! `tvix_oci_castore::grpc::castore_routes`).
//!
//! The two answer as their clients read them: tvix.build.v1 requires sorted
//! outputs and names each output node by the output path's last component
//! (tvix finds its outputs by name); snix.build.v1 accepts the outputs in
//! any order (snix sends them in output-name order) and answers in the
//! request's order with anonymous entries (snix refuses a named one).
//!
//! Status codes: `INVALID_ARGUMENT` for a request that fails validation
//! or is over the server's [`RequestLimits`] (the first problems listed,
//! all of them in the server log), `ABORTED` for a build that ran and failed (exit
//! code, signal, timeout, a missing or forbidden output: retrying gives the
//! same answer), `FAILED_PRECONDITION` for a request this host cannot run
//! (another system, too little memory), `UNAVAILABLE` for an infrastructure
//! failure (worth retrying). A client that drops the call, or a server
//! shutting down, cancels the build; the executor cleans up after it.
//!
//! The same server answers our own streaming call,
//! `tvix_oci_build.v1.BuildService/Build`, in [`crate::grpc_events`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tonic::{Request, Response, Status};
use tvix_oci_spec::proto::{self, build_service_server};
use tvix_oci_spec::{BuildRequest, RequestLimits};

use crate::runc::LogSink;
pub use crate::tracing_logs::TracingLogs;
use crate::{BuildError, BuildResult, Executor};

/// Serves `BuildService.DoBuild` with an [`Executor`].
#[derive(Clone, Debug)]
pub struct GrpcBuildServer {
    exec: Arc<Executor>,
    limits: RequestLimits,
    /// Where every build reports too, for a page watching the server.
    registry: Option<crate::watch::Registry>,
}

impl GrpcBuildServer {
    /// A server refusing requests over the default [`RequestLimits`].
    pub fn new(exec: Arc<Executor>) -> Self {
        Self {
            exec,
            limits: RequestLimits::default(),
            registry: None,
        }
    }

    /// Reports every build, whichever service it came by, into
    /// `registry` too (see [`crate::watch`]).
    pub fn with_registry(mut self, registry: crate::watch::Registry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Refuses requests over `limits` instead; the largest message decoded
    /// follows `limits.request_bytes`.
    pub fn with_limits(mut self, limits: RequestLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The largest message decoded: a request of `request_bytes` (a little
    /// more, so that one just over is refused by validation, naming the
    /// limit, rather than by the decoder).
    pub(crate) fn max_decoding(&self) -> usize {
        usize::try_from(self.limits.request_bytes)
            .unwrap_or(usize::MAX)
            .saturating_add(1 << 10)
    }

    /// The largest message sent: an answer echoes its request (tvix's
    /// `Build`, the event stream's `Completed`), so a request as large as
    /// the limit allows plus [`MAX_MESSAGE`] for the outputs.
    pub(crate) fn max_encoding(&self) -> usize {
        self.max_decoding().saturating_add(MAX_MESSAGE)
    }

    /// The service, ready to add to a tonic router, decoding messages up to
    /// the request limit.
    pub fn into_service(self) -> build_service_server::BuildServiceServer<Self> {
        let (max, max_encoding) = (self.max_decoding(), self.max_encoding());
        build_service_server::BuildServiceServer::new(self)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max_encoding)
    }

    /// The service under snix's name, `snix.build.v1.BuildService`.
    pub fn into_snix_service(self) -> proto::snix::build_service_server::BuildServiceServer<Self> {
        let (max, max_encoding) = (self.max_decoding(), self.max_encoding());
        proto::snix::build_service_server::BuildServiceServer::new(self)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max_encoding)
    }

    /// Runs a wire request and answers with the wire result. The request is
    /// validated on a blocking thread (linear in its size, but a request of
    /// many MiB takes a while), so the runtime keeps serving other calls.
    pub async fn do_build(&self, req: proto::BuildRequest) -> Result<proto::Build, Status> {
        self.do_build_for(None, req).await
    }

    /// [`Self::do_build`] for a client at `peer` (named in the log).
    async fn do_build_for(
        &self,
        peer: Option<std::net::SocketAddr>,
        req: proto::BuildRequest,
    ) -> Result<proto::Build, Status> {
        let n = REQUESTS.fetch_add(1, Ordering::Relaxed) + 1;
        let limits = self.limits;
        let req = validate(n, move || BuildRequest::validate(req, &limits)).await?;
        self.build(n, peer, req).await
    }

    /// Builds validated request number `n` from `peer`, answering as
    /// DoBuild does (see [`Self::build_logged`]).
    async fn build(
        &self,
        n: u64,
        peer: Option<std::net::SocketAddr>,
        req: BuildRequest,
    ) -> Result<proto::Build, Status> {
        let logs = TracingLogs::new(n);
        self.build_logged(n, peer, &req, &logs, &logs)
            .await
            .map(|r| proto::Build::from(&r.build))
            .map_err(status_of)
    }

    /// Builds validated request number `n` from `peer` with `sink` (which
    /// reports to `server_log`, the build's lines in the server log, or
    /// is it), and logs one line at info when it ends: the build id, the
    /// peer, the wall time, the outcome (its first line: exit code,
    /// signal, timeout, the output missing...) and the status DoBuild
    /// answers. A call dropped by its client logs nothing here (the
    /// executor logs the cancellation).
    pub(crate) async fn build_logged(
        &self,
        n: u64,
        peer: Option<std::net::SocketAddr>,
        req: &BuildRequest,
        sink: &dyn LogSink,
        server_log: &TracingLogs,
    ) -> Result<BuildResult, BuildError> {
        let peer = peer.map_or_else(|| "local".to_owned(), |p| p.to_string());
        tracing::info!(request = n, %peer, "build requested");
        let started = std::time::Instant::now();
        let watched = self.registry.as_ref().map(|r| r.begin(n, &peer, sink));
        let sink = watched.as_ref().map_or(sink, |w| w as &dyn LogSink);
        let result = self.exec.build(req, sink).await;
        if let Some(w) = &watched {
            w.finish(&result);
        }
        let (outcome, status) = match &result {
            Ok(r) => (
                match r.build.outputs.len() {
                    1 => "built its output".to_owned(),
                    n => format!("built its {n} outputs"),
                },
                tonic::Code::Ok,
            ),
            Err(e) => (outcome_of(e), code_of(e)),
        };
        tracing::info!(
            request = n,
            build = %server_log.build_id().unwrap_or("none"),
            %peer,
            wall = ?started.elapsed(),
            ?status,
            "build finished: {outcome}"
        );
        result
    }

    /// The request limits this server refuses requests over.
    pub(crate) fn limits(&self) -> RequestLimits {
        self.limits
    }
}

/// Problems listed in an INVALID_ARGUMENT status: its message travels in a
/// header (a client refuses more than ~16 KiB as RESOURCE_EXHAUSTED); the
/// server log has them all.
const PROBLEMS_SHOWN: usize = 20;

/// Runs `check`, the validation of request number `n`, off the async
/// threads. Its problems, all of them logged, answer INVALID_ARGUMENT with
/// the first few; a validation that could not run (its thread panicked or
/// was cancelled) answers UNAVAILABLE.
pub(crate) async fn validate<T: Send + 'static>(
    n: u64,
    check: impl FnOnce() -> Result<T, tvix_oci_spec::Problems> + Send + 'static,
) -> Result<T, Status> {
    match tokio::task::spawn_blocking(check).await {
        Ok(Ok(req)) => Ok(req),
        Ok(Err(problems)) => {
            tracing::warn!(request = n, "refused: {problems}");
            Err(Status::invalid_argument(format!(
                "invalid BuildRequest: {}",
                problems.summary(PROBLEMS_SHOWN)
            )))
        }
        Err(e) => Err(Status::unavailable(format!(
            "validating request {n} failed: {e}"
        ))),
    }
}

/// Largest message sent: the answer to a request of many thousand inputs.
pub(crate) const MAX_MESSAGE: usize = 64 << 20;

/// Requests received, all services together (each is numbered in the
/// server log).
pub(crate) static REQUESTS: AtomicU64 = AtomicU64::new(0);

#[tonic::async_trait]
impl build_service_server::BuildService for GrpcBuildServer {
    async fn do_build(
        &self,
        request: Request<proto::BuildRequest>,
    ) -> Result<Response<proto::Build>, Status> {
        let peer = request.remote_addr();
        self.do_build_for(peer, request.into_inner())
            .await
            .map(Response::new)
    }
}

#[tonic::async_trait]
impl proto::snix::build_service_server::BuildService for GrpcBuildServer {
    async fn do_build(
        &self,
        request: Request<proto::BuildRequest>,
    ) -> Result<Response<proto::snix::BuildResponse>, Status> {
        let n = REQUESTS.fetch_add(1, Ordering::Relaxed) + 1;
        let peer = request.remote_addr();
        let (req, limits) = (request.into_inner(), self.limits);
        // Sorted on the blocking thread too, and only when within the
        // limit (one over it is refused by its count, unsorted).
        let moved = Arc::new(AtomicBool::new(false));
        let moved_in = moved.clone();
        let (req, order) = validate(n, move || {
            let (req, order) = match req.outputs.len() <= limits.outputs {
                true => sorted_outputs(req),
                false => (req, Vec::new()),
            };
            moved_in.store(reordered(&order), Ordering::Relaxed);
            BuildRequest::validate(req, &limits).map(|req| (req, order))
        })
        .await
        .map_err(|s| note_sorted(s, moved.load(Ordering::Relaxed)))?;
        let build = self.build(n, peer, req).await?;
        Ok(Response::new(proto::snix::BuildResponse::from_build(
            build, &order,
        )))
    }
}

/// snix's client sends `outputs` in the order of the derivation's output
/// names (`dev` before `out`), not sorted as tvix.build.v1 requires, and
/// pairs the answer with them by position. So a snix request is checked
/// and built with its outputs sorted; `order[j]` is where sorted output
/// `j` stood in the request, to answer in the request's order. Everything
/// else, the needles included, is left as sent.
fn sorted_outputs(mut req: proto::BuildRequest) -> (proto::BuildRequest, Vec<usize>) {
    let mut order: Vec<usize> = (0..req.outputs.len()).collect();
    // Stable: duplicates stay next to each other, for validation to refuse.
    order.sort_by(|&a, &b| req.outputs[a].cmp(&req.outputs[b]));
    if reordered(&order) {
        let mut given: Vec<Option<String>> = req.outputs.drain(..).map(Some).collect();
        req.outputs = order
            .iter()
            .map(|&i| given.get_mut(i).and_then(Option::take).unwrap_or_default())
            .collect();
    }
    (req, order)
}

/// Whether `order` (from [`sorted_outputs`]) moved any output.
fn reordered(order: &[usize]) -> bool {
    order.iter().enumerate().any(|(j, &i)| i != j)
}

/// Says, on a refused request whose outputs were reordered (`moved`), that
/// the indices of outputs it names count in sorted order.
fn note_sorted(s: Status, moved: bool) -> Status {
    if s.code() != tonic::Code::InvalidArgument || !moved {
        return s;
    }
    Status::invalid_argument(format!(
        "{} (snix.build.v1 checks the outputs sorted: an outputs[N] above counts in sorted order)",
        s.message()
    ))
}

/// The first line of why a build failed, without its log tail.
pub(crate) fn outcome_of(e: &BuildError) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or_default();
    first.trim_end_matches("; last log lines:").to_owned()
}

/// The gRPC status a failed build answers with.
pub fn status_of(e: BuildError) -> Status {
    Status::new(code_of(&e), e.to_string())
}

/// The code of [`status_of`].
pub fn code_of(e: &BuildError) -> tonic::Code {
    match e {
        BuildError::Host(_) => tonic::Code::FailedPrecondition,
        BuildError::NotAllowed(_) => tonic::Code::PermissionDenied,
        BuildError::Busy { .. } => tonic::Code::ResourceExhausted,
        _ if e.is_build_failure() => tonic::Code::Aborted,
        _ => tonic::Code::Unavailable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outputs(r: &proto::BuildRequest) -> Vec<&str> {
        r.outputs.iter().map(String::as_str).collect()
    }

    #[test]
    fn snix_outputs_are_sorted_with_their_places_kept() {
        let req = proto::BuildRequest {
            outputs: ["nix/store/x-dev", "nix/store/j-out", "build/log"]
                .map(String::from)
                .into(),
            refscan_needles: vec!["x".into(), "j".into()],
            ..Default::default()
        };
        let (sorted, order) = sorted_outputs(req.clone());
        assert_eq!(
            outputs(&sorted),
            ["build/log", "nix/store/j-out", "nix/store/x-dev"]
        );
        assert_eq!(order, [2, 1, 0]);
        assert_eq!(sorted.refscan_needles, req.refscan_needles);

        // Sorted already: untouched, the identity.
        let (same, order) = sorted_outputs(sorted.clone());
        assert_eq!(same, sorted);
        assert_eq!(order, [0, 1, 2]);
    }

    #[test]
    fn unsorted_duplicates_are_still_refused_and_the_note_says_why_indices_moved() {
        let req = proto::BuildRequest {
            outputs: ["nix/store/b", "nix/store/a", "nix/store/b"]
                .map(String::from)
                .into(),
            ..Default::default()
        };
        let (sorted, order) = sorted_outputs(req);
        let problems = BuildRequest::try_from(sorted).unwrap_err();
        assert!(
            problems
                .0
                .iter()
                .any(|p| p.field == "outputs[2]" && p.problem == "is a duplicate"),
            "{problems}"
        );
        let s = note_sorted(
            Status::invalid_argument(problems.to_string()),
            reordered(&order),
        );
        assert!(
            s.message().contains("counts in sorted order"),
            "{}",
            s.message()
        );
        // Nothing to say when nothing moved, or for another failure.
        let s = note_sorted(Status::invalid_argument("x"), reordered(&[0, 1]));
        assert_eq!(s.message(), "x");
        let s = note_sorted(Status::aborted("x"), reordered(&order));
        assert_eq!(s.message(), "x");
    }
}
