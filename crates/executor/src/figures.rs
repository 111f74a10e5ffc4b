//! [`Figures`]: what a running build has used so far, read cheaply while
//! its container runs (atomic counters of the inputs' FUSE daemon, two
//! small files of its cgroup) and handed to its [`LogSink`] about every
//! [`PROGRESS_EVERY`]. Not given while it runs: the largest resident set
//! (known only once the builder is reaped) and the bytes the outputs
//! will take (known only once they are ingested).

use std::future::Future;
use std::time::{Duration, Instant};

use crate::runc::LogSink;

/// How often a running build's [`Figures`] are taken.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// A running build's use of resources so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Figures {
    /// Since its container started.
    pub elapsed: Duration,
    /// Bytes of inputs fetched from the store.
    pub input_bytes_fetched: u64,
    /// CPU time of the build's cgroup (`None` without one: rootless).
    pub cpu: Option<Duration>,
    /// Peak memory of the build's cgroup (`None` without one, or where
    /// the kernel keeps no peak).
    pub peak_memory: Option<u64>,
}

/// Runs `fut` to its end, handing `logs` the figures `take` reads every
/// [`PROGRESS_EVERY`] (the first after one period) meanwhile. `started`
/// is when the container started.
pub(crate) async fn with_progress<F: Future>(
    fut: F,
    logs: &dyn LogSink,
    started: Instant,
    take: impl Fn() -> Figures,
) -> F::Output {
    tokio::pin!(fut);
    let first = tokio::time::Instant::now() + PROGRESS_EVERY;
    let mut every = tokio::time::interval_at(first, PROGRESS_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            out = &mut fut => return out,
            _ = every.tick() => {
                let figures = Figures { elapsed: started.elapsed(), ..take() };
                logs.progress(&figures);
            }
        }
    }
}
