//! [`EventSink`]: a build's [`LogSink`] turned into the events of
//! `tvix_oci_build.v1.BuildService/Build` (see its proto), for a client
//! watching the build. The sink never blocks the build: events go into an
//! unbounded channel, but log lines only while fewer than `buffer` of them
//! wait there unread; past that, lines are dropped and counted, and a
//! `LogsDropped` event says how many once the client catches up (and the
//! last event says how many in all). Other events are few (phases, one
//! progress a second), so they are never dropped.
//!
//! The [`EventStream`] is the channel's other end; dropping it aborts the
//! task running the build (see [`EventStream::cancels`]), which cleans up
//! as any dropped build does.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::sync::mpsc;
use tvix_oci_spec::proto::events::{BuildEvent, build_event::Event};

use crate::grpc::TracingLogs;
use crate::runc::{LogSink, LogStream, Phase};
use crate::{BuildError, BuildResult, Figures, wire};

/// The longest piece of a line sent as one `Log` event.
pub use crate::logs::LINE_PIECE;

/// Log lines waiting unread before lines are dropped, by default.
pub const LOG_BUFFER: usize = 4096;

/// Bytes of log lines waiting unread before lines are dropped, whatever
/// the count: a client that reads nothing holds at most this much of the
/// server's memory per build.
pub const LOG_BUFFER_BYTES: usize = 8 << 20;

/// A build's sink sending its events; see the module.
#[derive(Debug)]
pub struct EventSink {
    tx: mpsc::UnboundedSender<BuildEvent>,
    /// `Log` events sent but not yet taken by the [`EventStream`], and
    /// their bytes.
    unread: Arc<AtomicUsize>,
    unread_bytes: Arc<AtomicUsize>,
    buffer: usize,
    state: Mutex<State>,
    /// The server's own log of the build (its lines, and its id).
    server_log: TracingLogs,
}

#[derive(Debug, Default)]
struct State {
    /// The line being written, per stream.
    partial: [Vec<u8>; 2],
    /// Dropped since the last `LogsDropped`.
    lines: u64,
    bytes: u64,
    /// Dropped in all.
    total: u64,
}

/// The events of one build, in order; see the module.
#[derive(Debug)]
pub struct EventStream {
    rx: mpsc::UnboundedReceiver<BuildEvent>,
    unread: Arc<AtomicUsize>,
    unread_bytes: Arc<AtomicUsize>,
    build: Option<tokio::task::AbortHandle>,
}

/// A sink keeping up to `buffer` log lines unread (at least one; and at
/// most [`LOG_BUFFER_BYTES`] of them), the
/// build's lines also in the server's log (`server_log`), and the stream
/// its events go to.
pub fn channel(buffer: usize, server_log: TracingLogs) -> (EventSink, EventStream) {
    let (tx, rx) = mpsc::unbounded_channel();
    let unread = Arc::new(AtomicUsize::new(0));
    let unread_bytes = Arc::new(AtomicUsize::new(0));
    let sink = EventSink {
        tx,
        unread: unread.clone(),
        unread_bytes: unread_bytes.clone(),
        buffer: buffer.max(1),
        state: Mutex::default(),
        server_log,
    };
    let stream = EventStream {
        rx,
        unread,
        unread_bytes,
        build: None,
    };
    (sink, stream)
}

impl EventSink {
    /// The server's log of this build.
    pub fn server_log(&self) -> &TracingLogs {
        &self.server_log
    }

    fn send(&self, event: Event) {
        // The client gone, the build is being cancelled: nothing to tell.
        let _ = self.tx.send(BuildEvent { event: Some(event) });
    }

    /// Sends `LogsDropped` if lines were dropped since the last one.
    fn report_drops(&self, st: &mut State) {
        if st.lines > 0 {
            self.send(wire::logs_dropped(st.lines, st.bytes));
            (st.lines, st.bytes) = (0, 0);
        }
    }

    /// Sends one line (or piece), or drops it when the buffer is full.
    fn line(&self, st: &mut State, stream: LogStream, data: Vec<u8>) {
        let full = self.unread.load(Ordering::Relaxed) >= self.buffer
            || self.unread_bytes.load(Ordering::Relaxed) + data.len() > LOG_BUFFER_BYTES;
        if full {
            st.lines += 1;
            st.bytes += data.len() as u64;
            st.total += 1;
            return;
        }
        self.report_drops(st);
        self.unread.fetch_add(1, Ordering::Relaxed);
        self.unread_bytes.fetch_add(data.len(), Ordering::Relaxed);
        self.send(wire::log(stream, data));
    }

    /// Sends what is left of unfinished lines, and the count of lines
    /// dropped: the log is over (the build reached ingestion or its end).
    fn flush(&self, st: &mut State) {
        for stream in [LogStream::Stdout, LogStream::Stderr] {
            let rest = std::mem::take(&mut st.partial[stream as usize]);
            if !rest.is_empty() {
                self.line(st, stream, rest);
            }
        }
        self.report_drops(st);
    }

    /// Sends the build's last events: a `RefscanResult` per output then
    /// `Completed`, or `Failed`.
    pub fn finish(&self, result: &Result<BuildResult, BuildError>) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        self.flush(&mut st);
        match result {
            Ok(r) => {
                for event in wire::completed(r, st.total) {
                    self.send(event);
                }
            }
            Err(e) => self.send(wire::failed(e, st.total)),
        }
    }
}

impl LogSink for EventSink {
    fn started(&self, build_id: &str) {
        self.server_log.started(build_id);
        self.send(wire::started(build_id));
    }

    fn log(&self, stream: LogStream, data: &[u8]) {
        self.server_log.log(stream, data);
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        let st = &mut *st;
        let mut lines = Vec::new();
        crate::logs::split_lines(&mut st.partial[stream as usize], data, true, |l| {
            lines.push(l)
        });
        for line in lines {
            self.line(st, stream, line);
        }
    }

    fn phase(&self, phase: Phase) {
        if let Ok(mut st) = self.state.lock() {
            if phase == Phase::Ingesting {
                self.flush(&mut st);
            }
            self.send(wire::phase(phase));
        }
    }

    fn progress(&self, figures: &Figures) {
        self.send(wire::progress(figures));
    }
}

impl EventStream {
    /// Makes dropping this stream abort `build`, the task running the
    /// build whose events it carries.
    pub fn cancels(mut self, build: tokio::task::AbortHandle) -> Self {
        self.build = Some(build);
        self
    }
}

impl tokio_stream::Stream for EventStream {
    type Item = BuildEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<BuildEvent>> {
        let polled = self.rx.poll_recv(cx);
        if let Poll::Ready(Some(BuildEvent {
            event: Some(Event::Log(l)),
        })) = &polled
        {
            self.unread.fetch_sub(1, Ordering::Relaxed);
            self.unread_bytes.fetch_sub(l.data.len(), Ordering::Relaxed);
        }
        polled
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        if let Some(build) = self.build.take() {
            build.abort();
        }
    }
}

#[cfg(test)]
#[path = "events_tests.rs"]
mod tests;
