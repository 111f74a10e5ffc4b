//! [`BuildResult`]: what a finished build returns next to the wire
//! `Build` — per output its NAR hash and size and where each needle was
//! found, and the build's [`Accounting`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use tvix_oci_spec::Build;

/// What one output was, next to the `Build`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputInfo {
    pub nar_sha256: [u8; 32],
    pub nar_size: u64,
    /// For each needle found (index into `refscan_needles`), the first path
    /// below the output it was found in.
    pub needle_paths: BTreeMap<usize, PathBuf>,
}

/// Figures of one build.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Accounting {
    pub wall: Duration,
    /// From the build starting to its process starting in the container
    /// (the end of the executor's and runc's set-up), to within 1 ms.
    pub to_first_instruction: Option<Duration>,
    /// From `runc run` starting to it ending.
    pub run_wall: Duration,
    /// CPU time of the build's processes (its cgroup), or where it has no
    /// cgroup (rootless), of runc and the build (`wait4`).
    pub cpu: Duration,
    /// Peak memory of the build's cgroup, page cache included (`None`
    /// without a cgroup).
    pub peak_memory: Option<u64>,
    /// Largest resident set of one process of the build.
    pub max_rss: u64,
    /// Bytes of inputs fetched from the store, and served by the FUSE
    /// daemon itself (passthrough reads of local blobs bypass it).
    pub input_bytes_fetched: u64,
    pub input_bytes_served: u64,
}

/// A finished build.
#[derive(Clone, Debug)]
pub struct BuildResult {
    pub build: Build,
    /// Per output, in request order.
    pub outputs: Vec<OutputInfo>,
    pub accounting: Accounting,
}

impl Accounting {
    /// The figures of a build that started at `started` and ran as `ran`.
    pub(crate) fn of(started: std::time::Instant, ran: &crate::pipeline::Ran) -> Self {
        let o = &ran.outcome;
        Self {
            wall: started.elapsed(),
            to_first_instruction: o.process_started.map(|t| t - started),
            run_wall: o.wall,
            cpu: ran.usage.cpu.unwrap_or(o.cpu),
            peak_memory: ran.usage.peak_memory,
            max_rss: o.max_rss,
            input_bytes_fetched: ran.fuse.bytes_fetched,
            input_bytes_served: ran.fuse.bytes_served,
        }
    }
}
