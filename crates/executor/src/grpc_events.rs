//! `tvix_oci_build.v1.BuildService/Build` on [`GrpcBuildServer`]: the
//! request DoBuild takes, validated as DoBuild validates it (a refused
//! request answers `INVALID_ARGUMENT` before any event), then built in a
//! task of its own while its events stream to the client (see
//! [`crate::events`]). The build runs whether or not the client reads, so
//! a slow client never slows it; dropping the stream aborts the task and
//! the build is cleaned up as any cancelled build. The server log gets
//! the same lines as for DoBuild (each log line, one line per finished
//! build).

use std::sync::atomic::Ordering;

use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};
use tvix_oci_spec::BuildRequest;
use tvix_oci_spec::proto::{self, events};

use crate::events::{EventStream, LOG_BUFFER, channel};
use crate::grpc::{GrpcBuildServer, REQUESTS, TracingLogs, validate};

/// The stream `Build` answers with.
pub type BuildEvents =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<events::BuildEvent, Status>> + Send>>;

impl GrpcBuildServer {
    /// `tvix_oci_build.v1.BuildService`, ready to add to a tonic router,
    /// decoding messages up to the request limit.
    pub fn into_events_service(self) -> events::build_service_server::BuildServiceServer<Self> {
        let (max, max_encoding) = (self.max_decoding(), self.max_encoding());
        events::build_service_server::BuildServiceServer::new(self)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max_encoding)
    }

    /// Starts building validated request number `n` from `peer` in a task
    /// of its own; its events, up to `buffer` log lines kept unread. The
    /// task ends when the build does, or when the stream is dropped.
    pub fn build_events(
        &self,
        n: u64,
        peer: Option<std::net::SocketAddr>,
        req: BuildRequest,
        buffer: usize,
    ) -> EventStream {
        let (sink, stream) = channel(buffer, TracingLogs::new(n));
        let server = self.clone();
        let task = tokio::spawn(async move {
            let result = server
                .build_logged(n, peer, &req, &sink, sink.server_log())
                .await;
            sink.finish(&result);
        });
        stream.cancels(task.abort_handle())
    }
}

#[tonic::async_trait]
impl events::build_service_server::BuildService for GrpcBuildServer {
    type BuildStream = BuildEvents;

    async fn build(
        &self,
        request: Request<proto::BuildRequest>,
    ) -> Result<Response<BuildEvents>, Status> {
        let n = REQUESTS.fetch_add(1, Ordering::Relaxed) + 1;
        let peer = request.remote_addr();
        let (req, limits) = (request.into_inner(), self.limits());
        let req = validate(n, move || BuildRequest::validate(req, &limits)).await?;
        let events = self.build_events(n, peer, req, LOG_BUFFER).map(Ok);
        Ok(Response::new(Box::pin(events)))
    }
}
