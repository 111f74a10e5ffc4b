//! [`Entry`]: one build as the [`super::Registry`] keeps it — its summary
//! (phase, figures, outcome), the last log lines within the limits, and
//! its watchers, each with a bounded buffer that is never waited on.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::outcome::Outcome;
use super::{WatchEvent, WatchLimits};
use crate::runc::{LogStream, Phase};
use crate::{BuildResult, Figures};

#[derive(Debug)]
struct Watcher {
    tx: mpsc::Sender<WatchEvent>,
    /// Events dropped since it was last told (shared with its
    /// subscription, which tells the rest at the end).
    missed: Arc<AtomicU64>,
}

/// One build; see the module.
#[derive(Debug)]
pub(super) struct Entry {
    id: u64,
    peer: String,
    build_id: Option<String>,
    phase: Option<Phase>,
    started_unix_ms: u64,
    started: Instant,
    /// Set when it ended.
    wall: Option<Duration>,
    figures: Figures,
    outcome: Option<Outcome>,
    /// The last lines, each its stream and text, and their bytes.
    log: VecDeque<(&'static str, String)>,
    log_bytes: usize,
    /// Lines seen in all, and those forgotten to stay within the limits.
    lines: u64,
    forgotten: u64,
    /// The line being written, per stream.
    partial: [Vec<u8>; 2],
    watchers: Vec<Watcher>,
    limits: WatchLimits,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Entry {
    pub(super) fn new(id: u64, peer: &str, limits: WatchLimits) -> Self {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            id,
            peer: peer.to_owned(),
            build_id: None,
            phase: None,
            started_unix_ms: ms(now),
            started: Instant::now(),
            wall: None,
            figures: Figures::default(),
            outcome: None,
            log: VecDeque::new(),
            log_bytes: 0,
            lines: 0,
            forgotten: 0,
            partial: Default::default(),
            watchers: Vec::new(),
            limits,
        }
    }

    pub(super) fn summary(&self) -> Value {
        let phase = match self.phase {
            None => "requested",
            Some(Phase::Queued { .. }) => "queued",
            Some(Phase::Mounting) => "mounting",
            Some(Phase::Running) => "running",
            Some(Phase::Ingesting) => "ingesting",
        };
        let queue_position = match self.phase {
            Some(Phase::Queued { position }) => Some(position),
            _ => None,
        };
        let f = &self.figures;
        let outcome = self.outcome.as_ref().map(Outcome::to_json);
        json!({
            "id": self.id,
            "build_id": self.build_id,
            "peer": self.peer,
            "phase": phase,
            "queue_position": queue_position,
            "started_unix_ms": self.started_unix_ms,
            "wall_ms": ms(self.wall.unwrap_or_else(|| self.started.elapsed())),
            "cpu_ms": f.cpu.map(ms),
            "peak_memory_bytes": f.peak_memory,
            "input_bytes_fetched": f.input_bytes_fetched,
            "log_lines": self.lines,
            "log_lines_forgotten": self.forgotten,
            "outcome": outcome,
        })
    }

    /// The summary, a note of the lines forgotten, and the lines kept.
    pub(super) fn backlog(&self) -> Vec<WatchEvent> {
        let mut events = vec![WatchEvent::new("build", &self.summary())];
        if self.forgotten > 0 {
            let note = json!({"lines": self.forgotten, "forgotten": true});
            events.push(WatchEvent::new("dropped", &note));
        }
        events.extend(
            self.log
                .iter()
                .map(|(stream, text)| line_event(stream, text)),
        );
        events
    }

    pub(super) fn finished(&self) -> bool {
        self.outcome.is_some()
    }

    pub(super) fn watchers(&self) -> usize {
        self.watchers.len()
    }

    /// Adds a watcher receiving through `tx`; the count of events it
    /// missed and was not yet told of.
    pub(super) fn watch(&mut self, tx: mpsc::Sender<WatchEvent>) -> Arc<AtomicU64> {
        let missed = Arc::new(AtomicU64::new(0));
        let watcher = Watcher {
            tx,
            missed: missed.clone(),
        };
        self.watchers.push(watcher);
        missed
    }

    /// Hands the event `make` makes to every watcher with room for it
    /// (first telling one that missed events how many); one without room
    /// misses it; one gone is forgotten. The event is made only if some
    /// watcher has room: a watcher that reads nothing costs a build
    /// writing much a counter per line.
    fn broadcast(&mut self, make: impl FnOnce() -> WatchEvent) {
        let (mut make, mut event) = (Some(make), None);
        self.watchers.retain(|w| {
            if w.tx.is_closed() {
                return false;
            }
            let missed = w.missed.load(Ordering::Relaxed);
            // This is the watcher's only sender: the room seen stays.
            if w.tx.capacity() < 1 + usize::from(missed > 0) {
                w.missed.fetch_add(1, Ordering::Relaxed);
                return true;
            }
            if missed > 0 {
                let _ = w.tx.try_send(missed_note(missed));
                w.missed.store(0, Ordering::Relaxed);
            }
            if let Some(make) = make.take() {
                event = Some(make());
            }
            if let Some(e) = &event {
                let _ = w.tx.try_send(e.clone());
            }
            true
        });
    }

    /// The summary changed: watchers get it.
    fn changed(&mut self) {
        if self.watchers.is_empty() {
            return;
        }
        let summary = self.summary();
        self.broadcast(|| WatchEvent::new("build", &summary));
    }

    pub(super) fn started(&mut self, build_id: &str) {
        self.build_id = Some(build_id.to_owned());
        self.changed();
    }

    pub(super) fn phase(&mut self, phase: Phase) {
        if phase == Phase::Ingesting {
            self.flush();
        }
        self.phase = Some(phase);
        self.changed();
    }

    pub(super) fn progress(&mut self, figures: &Figures) {
        self.figures = *figures;
        self.changed();
    }

    pub(super) fn log(&mut self, stream: LogStream, data: &[u8]) {
        let mut lines = Vec::new();
        let partial = &mut self.partial[stream as usize];
        crate::logs::split_lines(partial, data, false, |l| lines.push(l));
        for line in lines {
            self.line(stream, &line);
        }
    }

    /// What is left of unfinished lines, as lines.
    fn flush(&mut self) {
        for stream in [LogStream::Stdout, LogStream::Stderr] {
            let rest = std::mem::take(&mut self.partial[stream as usize]);
            if !rest.is_empty() {
                self.line(stream, &rest);
            }
        }
    }

    fn line(&mut self, stream: LogStream, line: &[u8]) {
        // The build's pty ends its lines with \r\n.
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let text = String::from_utf8_lossy(line).into_owned();
        let stream = match stream {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        };
        self.lines += 1;
        // Its JSON only for watchers there are: a build writing much with
        // nobody watching pays for the copy kept, no more.
        if !self.watchers.is_empty() {
            self.broadcast(|| line_event(stream, &text));
        }
        self.log_bytes += text.len();
        self.log.push_back((stream, text));
        while self.log.len() > self.limits.log_lines || self.log_bytes > self.limits.log_bytes {
            let Some((_, old)) = self.log.pop_front() else {
                break;
            };
            self.log_bytes -= old.len();
            self.forgotten += 1;
        }
    }

    /// The build ended as `outcome`, with `result`'s figures when it has
    /// them; its watchers get their last events and are let go.
    pub(super) fn end(&mut self, outcome: Outcome, result: Option<&BuildResult>) {
        self.flush();
        self.wall = Some(self.started.elapsed());
        if let Some(r) = result {
            let a = &r.accounting;
            self.wall = Some(a.wall);
            self.figures.cpu = Some(a.cpu);
            self.figures.peak_memory = a.peak_memory.or(self.figures.peak_memory);
            self.figures.input_bytes_fetched = a.input_bytes_fetched;
        }
        self.outcome = Some(outcome);
        self.changed();
        self.watchers.clear();
    }
}

/// The `dropped` event telling a watcher it missed `lines` events.
pub(super) fn missed_note(lines: u64) -> WatchEvent {
    WatchEvent::new("dropped", &json!({ "lines": lines }))
}

fn line_event(stream: &str, text: &str) -> WatchEvent {
    WatchEvent::new("log", &json!({"stream": stream, "text": text}))
}
