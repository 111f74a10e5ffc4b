//! [`Registry`]: the builds a server runs and ran lately, for a page that
//! watches the builder (`tvix-oci-build serve --http`).
//!
//! It lives in the library, beside the event stream, because it is fed the
//! same way: every build of a [`crate::grpc::GrpcBuildServer`] given a
//! registry ([`crate::grpc::GrpcBuildServer::with_registry`]) — the unary
//! tvix and snix `DoBuild` and the streaming `Build` alike — reports
//! through a [`Watched`] sink placed in front of its own
//! [`LogSink`](crate::runc::LogSink), so
//! the page sees the same lines, phases and figures a gRPC client does.
//! The HTTP side only reads: [`Registry::list`] and
//! [`Registry::subscribe`].
//!
//! Everything is bounded ([`WatchLimits`]): the finished builds kept, the
//! log lines and bytes kept per build (the oldest go first, counted), the
//! watchers per build and each watcher's buffer. A watcher that cannot
//! keep up never slows a build: events past its buffer are dropped and it
//! is told how many.

mod entry;
mod outcome;
mod sink;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::Stream;

use entry::Entry;
pub use sink::Watched;

/// One event for a watcher: its kind (`build`, the build's summary as it
/// changed; `log`, one line; `dropped`, lines it missed; `end`, the last
/// summary) and its JSON data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    pub kind: &'static str,
    pub data: Arc<str>,
}

impl WatchEvent {
    fn new(kind: &'static str, data: &Value) -> Self {
        Self {
            kind,
            data: data.to_string().into(),
        }
    }
}

/// The bounds of a [`Registry`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchLimits {
    /// Finished builds kept (the oldest is forgotten first).
    pub recent: usize,
    /// Log lines kept per build, and their bytes at most (the oldest lines
    /// go first); a line is at most [`crate::logs::LINE_PIECE`] bytes.
    pub log_lines: usize,
    pub log_bytes: usize,
    /// Watchers of one running build at once.
    pub watchers: usize,
    /// Events waiting unread per watcher before its events are dropped.
    pub watcher_buffer: usize,
}

impl Default for WatchLimits {
    fn default() -> Self {
        Self {
            recent: 50,
            log_lines: 2000,
            log_bytes: 1 << 20,
            watchers: 16,
            watcher_buffer: 1024,
        }
    }
}

/// Why a build cannot be watched.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WatchError {
    #[error(
        "no build {id} on this server: it never ran here, or it is older than the last {recent} finished builds kept"
    )]
    Unknown { id: u64, recent: usize },
    #[error("build {id} already has {max} watchers, the most allowed; close one and retry")]
    TooManyWatchers { id: u64, max: usize },
}

/// The builds of a server, running and recent; see the module. Cheap to
/// clone (all clones are the same registry).
#[derive(Clone, Debug)]
pub struct Registry {
    inner: Arc<Mutex<Inner>>,
    limits: WatchLimits,
}

#[derive(Debug, Default)]
struct Inner {
    running: BTreeMap<u64, Arc<Mutex<Entry>>>,
    /// Newest first.
    recent: VecDeque<(u64, Arc<Mutex<Entry>>)>,
}

/// Locks `m`, taking the state of a holder that panicked as it was.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Registry {
    /// An empty registry keeping at most `limits` (each at least 1).
    pub fn new(limits: WatchLimits) -> Self {
        let limits = WatchLimits {
            recent: limits.recent.max(1),
            log_lines: limits.log_lines.max(1),
            log_bytes: limits.log_bytes.max(1),
            watchers: limits.watchers.max(1),
            watcher_buffer: limits.watcher_buffer.max(2),
        };
        Self {
            inner: Arc::default(),
            limits,
        }
    }

    /// Its bounds.
    pub fn limits(&self) -> WatchLimits {
        self.limits
    }

    /// Registers build `id` (the server's request number, unique for the
    /// server's life) from `peer` as running; its events go to the
    /// returned sink, which also hands them on to `sink`. Dropping the
    /// sink ends the build here (as cancelled, unless
    /// [`Watched::finish`] said how it ended) and moves it to the recent
    /// builds.
    pub fn begin<'a>(
        &self,
        id: u64,
        peer: &str,
        sink: &'a dyn crate::runc::LogSink,
    ) -> Watched<'a> {
        let entry = Arc::new(Mutex::new(Entry::new(id, peer, self.limits)));
        lock(&self.inner).running.insert(id, entry.clone());
        Watched::new(self.clone(), id, entry, sink)
    }

    /// Moves build `id` from the running to the recent ones, forgetting
    /// the oldest past the limit.
    fn retire(&self, id: u64) {
        let mut inner = lock(&self.inner);
        if let Some(entry) = inner.running.remove(&id) {
            inner.recent.push_front((id, entry));
            inner.recent.truncate(self.limits.recent);
        }
    }

    fn entry(&self, id: u64) -> Option<Arc<Mutex<Entry>>> {
        let inner = lock(&self.inner);
        inner.running.get(&id).cloned().or_else(|| {
            let found = inner.recent.iter().find(|(i, _)| *i == id);
            found.map(|(_, e)| e.clone())
        })
    }

    /// The builds as JSON: `running` and `recent` (newest first), each
    /// its summary (see [`Registry::summary`]), and `recent_kept`, how
    /// many finished builds are kept.
    pub fn list(&self) -> Value {
        let (running, recent): (Vec<_>, Vec<_>) = {
            let inner = lock(&self.inner);
            let running = inner.running.values().rev().cloned().collect();
            let recent = inner.recent.iter().map(|(_, e)| e.clone()).collect();
            (running, recent)
        };
        let summaries = |v: Vec<Arc<Mutex<Entry>>>| -> Vec<Value> {
            v.iter().map(|e| lock(e).summary()).collect()
        };
        json!({
            "running": summaries(running),
            "recent": summaries(recent),
            "recent_kept": self.limits.recent,
        })
    }

    /// Build `id`'s summary: `id`, `build_id` (the executor's, once it
    /// started), `peer`, `phase`, `queue_position`, `started_unix_ms`,
    /// `wall_ms`, `cpu_ms`, `peak_memory_bytes`, `input_bytes_fetched`,
    /// `log_lines`, `log_lines_forgotten` and `outcome` (null while it
    /// runs; else `ok`, `summary`, `exit_code`, `signal`, `fault`).
    pub fn summary(&self, id: u64) -> Result<Value, WatchError> {
        let entry = self.entry(id).ok_or(self.unknown(id))?;
        Ok(lock(&entry).summary())
    }

    fn unknown(&self, id: u64) -> WatchError {
        WatchError::Unknown {
            id,
            recent: self.limits.recent,
        }
    }

    /// Watches build `id`: its summary and the log lines kept so far,
    /// then, while it runs, its events as they happen, and last its final
    /// summary (see [`Subscription`]).
    pub fn subscribe(&self, id: u64) -> Result<Subscription, WatchError> {
        let entry = self.entry(id).ok_or(self.unknown(id))?;
        let (backlog, live, missed) = {
            let mut e = lock(&entry);
            let backlog = e.backlog();
            if e.finished() {
                (backlog, None, Arc::default())
            } else if e.watchers() >= self.limits.watchers {
                let max = self.limits.watchers;
                return Err(WatchError::TooManyWatchers { id, max });
            } else {
                let (tx, rx) = mpsc::channel(self.limits.watcher_buffer);
                (backlog, Some(rx), e.watch(tx))
            }
        };
        Ok(Subscription {
            backlog,
            live,
            missed,
            entry,
        })
    }
}

/// What a watcher of one build gets: the summary and the lines kept so
/// far, then the events as they happen until the build ends (none for a
/// finished build), then a `dropped` event if it missed any it was not
/// yet told of, and the `end` event with the final summary
/// ([`Subscription::into_stream`]). The events come in the order they
/// happened, none twice.
#[derive(Debug)]
pub struct Subscription {
    backlog: Vec<WatchEvent>,
    live: Option<mpsc::Receiver<WatchEvent>>,
    missed: Arc<AtomicU64>,
    entry: Arc<Mutex<Entry>>,
}

impl Subscription {
    /// Every event in order, ending with `end` once the build ends.
    pub fn into_stream(self) -> impl Stream<Item = WatchEvent> + Send + 'static {
        use tokio_stream::StreamExt;
        let Subscription {
            backlog,
            live,
            missed,
            entry,
        } = self;
        // A finished build's: a channel already closed.
        let live = live.unwrap_or_else(|| mpsc::channel(1).1);
        // Read once the live events are over: the build let its watchers
        // go, so nothing changes these any more.
        let end = tokio_stream::iter([0, 1]).filter_map(move |i| match i {
            0 => match missed.load(Ordering::Relaxed) {
                0 => None,
                n => Some(entry::missed_note(n)),
            },
            _ => Some(WatchEvent::new("end", &lock(&entry).summary())),
        });
        tokio_stream::iter(backlog)
            .chain(tokio_stream::wrappers::ReceiverStream::new(live))
            .chain(end)
    }
}
