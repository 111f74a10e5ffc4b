//! [`Queue`]: the wait for one of the executor's build slots, made
//! visible. The slots are a fair (first come, first served) semaphore; a
//! build that must wait takes a ticket, and its place in line — the
//! tickets ahead of it still waiting, plus one — goes to its [`LogSink`]
//! as [`Phase::Queued`] when it starts waiting and whenever it changes.

use std::collections::BTreeSet;
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
    waiting: Mutex<BTreeSet<u64>>,
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
            w.remove(&self.ticket);
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
            if let Some(max) = max_queued
                && w.len() >= max
            {
                return Err(BuildError::Busy {
                    slots: total,
                    queued: w.len(),
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
        self.waiting
            .lock()
            .map_or(1, |w| w.range(..ticket).count() as u64 + 1)
    }
}
