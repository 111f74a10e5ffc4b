//! [`BuildResult`]: what a finished build returns next to the wire
//! `Build` — per output its NAR hash and size and where each needle was
//! found, and the build's [`Accounting`] — and its JSON shape
//! ([`BuildResult::to_json`]), as `tvix-oci-build run` prints it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use tvix_oci_spec::Build;
use tvix_oci_spec::json::JsonBuild;

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
    /// Learned prefetch: bytes of inputs fetched at mount time from the
    /// profile of an earlier build of this shape, and of those the bytes
    /// this build read.
    pub input_bytes_prefetched: u64,
    pub input_bytes_prefetched_used: u64,
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
            input_bytes_prefetched: ran.prefetched.0,
            input_bytes_prefetched_used: ran.prefetched.1,
        }
    }
}

impl BuildResult {
    /// The result as JSON: the `Build` (as [`JsonBuild`]), per output its
    /// NAR hash (hex) and size, the needles found (by value) and the first
    /// path each was found in, and the accounting in milliseconds and
    /// bytes.
    pub fn to_json(&self) -> serde_json::Value {
        let needles = self.build.request.refscan_needles();
        let outputs: Vec<_> = self
            .outputs
            .iter()
            .zip(&self.build.outputs_needles)
            .map(|(o, idx)| {
                let found_in: BTreeMap<_, _> = o
                    .needle_paths
                    .iter()
                    .map(|(i, p)| {
                        let needle = needles.get(*i).cloned().unwrap_or_default();
                        (needle, p.display().to_string())
                    })
                    .collect();
                json!({
                    "nar_sha256": hex(&o.nar_sha256),
                    "nar_size": o.nar_size,
                    "needles": idx.iter().filter_map(|&i| needles.get(i as usize)).collect::<Vec<_>>(),
                    "needles_found_in": found_in,
                })
            })
            .collect();
        let a = &self.accounting;
        let ms = |d: Duration| d.as_millis() as u64;
        json!({
            "build": JsonBuild::from(&self.build),
            "outputs": outputs,
            "accounting": {
                "wall_ms": ms(a.wall),
                "to_first_instruction_ms": a.to_first_instruction.map(ms),
                "run_wall_ms": ms(a.run_wall),
                "cpu_ms": ms(a.cpu),
                "max_rss_bytes": a.max_rss,
                "peak_memory_bytes": a.peak_memory,
                "input_bytes_fetched": a.input_bytes_fetched,
                "input_bytes_served": a.input_bytes_served,
                "input_bytes_prefetched": a.input_bytes_prefetched,
                "input_bytes_prefetched_used": a.input_bytes_prefetched_used,
            },
        })
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
