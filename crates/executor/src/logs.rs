//! The build's log as the executor hands it on: a [`LogSink`] receives
//! the builder's output as it comes and the executor's [`Phase`]s; the
//! last lines are kept for error messages (`Tail`); a reader thread
//! carries a pipe or pty into a channel (`pump`).

use std::io::Read;

use tokio::sync::mpsc;

/// Which stream a log chunk came from. The builder's stdout and stderr
/// are one pseudo-terminal, as in Nix: its output, and runc's own
/// messages, all come as [`LogStream::Stderr`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// The steps of a build that take time, in the order the executor reaches
/// them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for one of the executor's build slots: `position` 1 is the
    /// next build to start. Reported when the build starts waiting and
    /// again when its place changes; not at all when a slot is free.
    Queued { position: u64 },
    /// Writing the bundle, mounting the inputs and the overlay.
    Mounting,
    /// The container runs.
    Running,
    /// Reading the outputs into the castore.
    Ingesting,
}

/// Receives the build's output as it comes, in chunks of any size, and
/// the executor's progress through the [`Phase`]s. Its methods are called
/// from the build's own task: they must not block (a sink that cannot keep
/// up drops, it does not wait).
pub trait LogSink: Send + Sync {
    fn log(&self, stream: LogStream, data: &[u8]);
    /// The build reached `phase`. Does nothing unless overridden.
    fn phase(&self, _phase: Phase) {}
    /// The running build's figures so far, about every
    /// [`crate::PROGRESS_EVERY`] while its container runs. Does nothing
    /// unless overridden.
    fn progress(&self, _figures: &crate::Figures) {}
    /// The build got its id (once, before any phase; the id names its
    /// bundle, container and cgroup, and its log span). Does nothing unless
    /// overridden.
    fn started(&self, _build_id: &str) {}
}

/// A sink that drops everything.
#[derive(Debug, Default)]
pub struct NoLogs;
impl LogSink for NoLogs {
    fn log(&self, _: LogStream, _: &[u8]) {}
}

/// The last lines of the log, for error messages.
#[derive(Debug, Default)]
pub(crate) struct Tail(Vec<u8>);

impl Tail {
    const KEEP: usize = 16 * 1024;
    const LINES: usize = 25;

    pub(crate) fn push(&mut self, data: &[u8]) {
        self.0.extend_from_slice(data);
        if self.0.len() > 2 * Self::KEEP {
            self.0.drain(..self.0.len() - Self::KEEP);
        }
    }

    pub(crate) fn lines(&self) -> String {
        let text = String::from_utf8_lossy(&self.0);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(Self::LINES)..].join("\n")
    }
}

/// The longest piece of a line handed on as one (a log line event, a line
/// of the server's log): a longer line comes in pieces of this size.
pub const LINE_PIECE: usize = 64 << 10;

/// Adds `data` to the partial line `buf`, calling `emit` with each line it
/// completes (with its `\n` when `keep_newline`) and with each piece of
/// [`LINE_PIECE`] bytes of a longer one. Linear in `data`: only new bytes
/// are searched, so a build writing without newlines costs no more.
pub(crate) fn split_lines(
    buf: &mut Vec<u8>,
    data: &[u8],
    keep_newline: bool,
    mut emit: impl FnMut(Vec<u8>),
) {
    let mut rest = data;
    while !rest.is_empty() {
        let room = LINE_PIECE - buf.len();
        let take = match rest.iter().take(room).position(|&b| b == b'\n') {
            Some(nl) => nl + 1,
            None => rest.len().min(room),
        };
        buf.extend_from_slice(&rest[..take]);
        rest = &rest[take..];
        if buf.last() == Some(&b'\n') || buf.len() == LINE_PIECE {
            let mut line = std::mem::take(buf);
            if !keep_newline && line.last() == Some(&b'\n') {
                line.pop();
            }
            emit(line);
        }
    }
}

/// The chunks of a log as [`pump`] sends them.
pub(crate) type LogChunks = mpsc::Receiver<(LogStream, Vec<u8>)>;

/// Reads `r` on a thread of its own until it ends, sending each chunk as
/// `stream` to `tx` (the receiver's backpressure holds the reader).
pub(crate) fn pump(
    mut r: impl Read + Send + 'static,
    stream: LogStream,
    tx: mpsc::Sender<(LogStream, Vec<u8>)>,
) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.blocking_send((stream, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
    });
}
