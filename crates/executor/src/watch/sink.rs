//! [`Watched`]: the [`LogSink`] a registered build reports through. It
//! hands every call on to the build's own sink first (the event stream,
//! the server log), then records it in the build's registry entry, so
//! what a gRPC client sees and what the page shows come from the same
//! calls. Its drop ends the build in the registry, so a cancelled build
//! (its future dropped) is shown as such, never as running for ever.

use std::sync::{Arc, Mutex};

use super::entry::Entry;
use super::outcome::Outcome;
use super::{Registry, lock};
use crate::runc::{LogSink, LogStream, Phase};
use crate::{BuildError, BuildResult, Figures};

/// A build's sink in front of `inner`; see the module.
pub struct Watched<'a> {
    registry: Registry,
    id: u64,
    entry: Arc<Mutex<Entry>>,
    inner: &'a dyn LogSink,
}

impl std::fmt::Debug for Watched<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watched")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl<'a> Watched<'a> {
    pub(super) fn new(
        registry: Registry,
        id: u64,
        entry: Arc<Mutex<Entry>>,
        inner: &'a dyn LogSink,
    ) -> Self {
        Self {
            registry,
            id,
            entry,
            inner,
        }
    }

    /// The build ended with `result`: its outcome and final figures are
    /// recorded (and it moves to the recent builds when this is dropped).
    pub fn finish(&self, result: &Result<BuildResult, BuildError>) {
        let mut e = lock(&self.entry);
        if !e.finished() {
            e.end(Outcome::of(result), result.as_ref().ok());
        }
    }
}

impl LogSink for Watched<'_> {
    fn log(&self, stream: LogStream, data: &[u8]) {
        self.inner.log(stream, data);
        lock(&self.entry).log(stream, data);
    }

    fn phase(&self, phase: Phase) {
        self.inner.phase(phase);
        lock(&self.entry).phase(phase);
    }

    fn progress(&self, figures: &Figures) {
        self.inner.progress(figures);
        lock(&self.entry).progress(figures);
    }

    fn started(&self, build_id: &str) {
        self.inner.started(build_id);
        lock(&self.entry).started(build_id);
    }
}

impl Drop for Watched<'_> {
    fn drop(&mut self) {
        {
            let mut e = lock(&self.entry);
            if !e.finished() {
                e.end(Outcome::cancelled(), None);
            }
        }
        self.registry.retire(self.id);
    }
}
