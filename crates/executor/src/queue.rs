//! [`Queue`]: the wait for one of the executor's build slots, made
//! visible. The slots are a fair (first come, first served) semaphore; a
//! build that must wait takes a ticket, and its place in line — the
//! tickets ahead of it still waiting, plus one — goes to its [`LogSink`]
//! as [`Phase::Queued`] when it starts waiting and whenever it changes.
//!
//! Places are ranked once per change of the line (one pass over it), not
//! once per waiting build and look: with `n` builds waiting, a look costs
//! each of them a map lookup, not a count of the `n` ahead.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};

use crate::BuildError;
use crate::faults::InfraError;
use crate::runc::{LogSink, Phase};

/// How often a waiting build looks at its place in line.
const LOOK_EVERY: Duration = Duration::from_millis(100);

/// The builds waiting for a slot, by ticket.
#[derive(Debug, Default)]
pub(crate) struct Queue {
    next: AtomicU64,
    waiting: Mutex<Line>,
}

/// The tickets in line, and their places as last ranked.
#[derive(Debug, Default)]
struct Line {
    tickets: BTreeSet<u64>,
    /// Bumped by every change of `tickets`.
    changes: u64,
    /// The places of `tickets` at `ranked_at` changes.
    places: HashMap<u64, u64>,
    ranked_at: u64,
}

impl Line {
    fn insert(&mut self, ticket: u64) {
        self.tickets.insert(ticket);
        self.changes += 1;
    }

    fn remove(&mut self, ticket: u64) {
        if self.tickets.remove(&ticket) {
            self.places.remove(&ticket);
            self.changes += 1;
        }
    }

    /// The place of `ticket` (1 for the first), ranking the line again
    /// only if it changed since it was last ranked.
    fn place(&mut self, ticket: u64) -> u64 {
        if self.ranked_at != self.changes || self.places.len() != self.tickets.len() {
            self.places = self.tickets.iter().zip(1..).map(|(&t, p)| (t, p)).collect();
            self.ranked_at = self.changes;
        }
        self.places.get(&ticket).copied().unwrap_or(1)
    }
}

/// A ticket in line; leaves the line when dropped (the build got its slot
/// or was cancelled).
struct InLine<'a> {
    queue: &'a Queue,
    ticket: u64,
}

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        if let Ok(mut w) = self.queue.waiting.lock() {
            w.remove(self.ticket);
        }
    }
}

impl Queue {
    /// A slot of `slots`, at once when one is free; otherwise after waiting
    /// in line, `logs` told the build's place as it changes. Fails only
    /// when `slots` was closed (the executor going away).
    ///
    /// With `max_queued`, a build that would wait behind that many is
    /// refused at once ([`BuildError::Busy`], naming the `total` slots).
    pub(crate) async fn acquire<'s>(
        &self,
        slots: &'s Semaphore,
        (total, max_queued): (usize, Option<usize>),
        logs: &dyn LogSink,
    ) -> Result<SemaphorePermit<'s>, BuildError> {
        if let Ok(permit) = slots.try_acquire() {
            return Ok(permit);
        }
        let ticket = self.next.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut w) = self.waiting.lock() {
            let queued = w.tickets.len();
            if let Some(max) = max_queued
                && queued >= max
            {
                return Err(BuildError::Busy {
                    slots: total,
                    queued,
                });
            }
            w.insert(ticket);
        }
        let in_line = InLine {
            queue: self,
            ticket,
        };
        let acquire = slots.acquire();
        tokio::pin!(acquire);
        let mut look = tokio::time::interval(LOOK_EVERY);
        let mut told = 0;
        loop {
            tokio::select! {
                biased;
                permit = &mut acquire => {
                    drop(in_line);
                    return permit.map_err(|e| InfraError::Queue(e).into());
                }
                _ = look.tick() => {
                    let position = self.position(ticket);
                    if position != told {
                        logs.phase(Phase::Queued { position });
                        told = position;
                    }
                }
            }
        }
    }

    /// The place in line of `ticket`: 1 for the first.
    fn position(&self, ticket: u64) -> u64 {
        self.waiting.lock().map_or(1, |mut w| w.place(ticket))
    }
}

#[cfg(test)]
mod tests {
    use super::Line;

    #[test]
    fn places_follow_the_line_as_it_changes() {
        let mut line = Line::default();
        for t in [3, 5, 9] {
            line.insert(t);
        }
        assert_eq!([3, 5, 9].map(|t| line.place(t)), [1, 2, 3]);
        // One ahead leaves (cancelled): those behind move up.
        line.remove(5);
        assert_eq!([3, 9].map(|t| line.place(t)), [1, 2]);
        line.insert(12);
        line.remove(3);
        assert_eq!([9, 12].map(|t| line.place(t)), [1, 2]);
        // Removing a ticket not in line changes nothing.
        let changes = line.changes;
        line.remove(42);
        assert_eq!(line.changes, changes);
    }
}
