//! Ingesting a build's outputs into the castore, safely and in one pass.
//!
//! Each output is walked from a directory handle (`output_walk.rs`:
//! `openat2` to it, `O_NOFOLLOW` below, nothing outside it read, no
//! symlink followed), and the walk is a producer for the castore's
//! ingestion core ([`tvix_oci_castore::import::ingest_entries`]): each
//! file's bytes are read once, and that read feeds the blob store and the
//! core's observers, the NAR hash ([`NarHasher`]) and the reference
//! scanner ([`NeedleScan`]). What is stored is canonical: only the
//! executable bit survives. Before any byte is read, a census
//! (`census.rs`) of all the build's outputs checks them against the
//! [`IngestLimits`], so an output past a limit is refused at once, not
//! after the rest was read and stored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tvix_oci_castore::Node;
use tvix_oci_castore::blobservice::BlobService;
use tvix_oci_castore::directoryservice::DirectoryService;
/// The bytes of a file read (and handed to the blob writer) at once; and
/// the pieces in which each chunk goes to the NAR hash and the reference
/// scanner, one after the other, so the scanner reads what SHA-256 has
/// just read from the core's own cache (8% faster over the whole pass:
/// `cargo bench -p tvix-oci-benches --bench micro -- one_pass`).
pub use tvix_oci_castore::import::{CHUNK, PIECE};
use tvix_oci_castore::import::{IngestOptions, ingest_entries};

pub use crate::ingest_error::{Cap, IngestError};
use crate::nar::NarHasher;
use crate::refscan::Needles;
use crate::refscan_observer::NeedleScan;

/// Entries the walk of an output may send ahead of their storing (each
/// file among them holds an open descriptor).
const AHEAD: usize = 64;

/// Caps on what a build's outputs may hold, so a build cannot exhaust the
/// host or the store while its outputs are read. Checked first by a census
/// of all outputs (sizes and names only, listing stops at the first entry
/// past the cap), then again as the walk goes: nothing past a cap is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IngestLimits {
    /// Bytes of file contents.
    pub max_bytes: u64,
    /// Files, directories and symlinks.
    pub max_entries: u64,
    /// Directory nesting below an output.
    pub max_depth: u32,
    /// When ingestion must have ended (the build's timeout covers it).
    pub deadline: Option<Deadline>,
}

/// An instant ingestion must end by, and the timeout that set it (named
/// in errors).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadline {
    pub at: Instant,
    pub timeout: Duration,
}

impl Default for IngestLimits {
    fn default() -> Self {
        Self {
            max_bytes: 64 << 30,
            max_entries: 1_000_000,
            max_depth: 256,
            deadline: None,
        }
    }
}

impl IngestLimits {
    /// What is left of these caps after an output used `bytes` and
    /// `entries` (the depth cap and the deadline hold for every output).
    pub fn less(self, bytes: u64, entries: u64) -> Self {
        Self {
            max_bytes: self.max_bytes.saturating_sub(bytes),
            max_entries: self.max_entries.saturating_sub(entries),
            ..self
        }
    }
}

/// One output, ingested.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngestedOutput {
    pub node: Node,
    /// SHA-256 of the output's NAR serialisation.
    pub nar_sha256: [u8; 32],
    pub nar_size: u64,
    /// Index of each needle found, with the first path (relative to the
    /// output, empty for the output itself) it was found in.
    pub needles: BTreeMap<usize, PathBuf>,
    /// Bytes of file contents and entries read.
    pub bytes: u64,
    pub entries: u64,
}

/// Where one output is: at `rel` below the trusted directory `base` (the
/// overlay's upper dir or a scratch dir); `output` is its path in the
/// request, for messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputAt {
    pub base: PathBuf,
    pub rel: String,
    pub output: String,
}

/// Ingests the outputs of one build, in order, under one budget of
/// `limits` for all of them: a census of every output first, so none is
/// read or stored when together they are past a limit.
pub async fn ingest_outputs(
    outs: &[OutputAt],
    blobs: Arc<dyn BlobService>,
    dirs: &dyn DirectoryService,
    needles: Arc<Needles>,
    limits: IngestLimits,
) -> Result<Vec<IngestedOutput>, IngestError> {
    // Each output is checked against what the ones before it left; the
    // error names the build's whole limit.
    let whole = |e| match e {
        IngestError::Limit {
            output, path, what, ..
        } => IngestError::Limit {
            output,
            path,
            what,
            limit: what.of(&limits),
        },
        other => other,
    };
    let mut left = limits;
    for o in outs {
        let (bytes, entries) = crate::census::census(o, left).await.map_err(whole)?;
        left = left.less(bytes, entries);
    }
    let mut got = Vec::with_capacity(outs.len());
    let mut left = limits;
    for o in outs {
        let g = walk_output(o.clone(), blobs.clone(), dirs, needles.clone(), left)
            .await
            .map_err(whole)?;
        left = left.less(g.bytes, g.entries);
        got.push(g);
    }
    Ok(got)
}

/// Ingests output `output`, found at `rel` below the trusted directory
/// `base` (the overlay's upper dir or a scratch dir), into the stores,
/// scanning it for `needles`: [`ingest_outputs`] of one output.
pub async fn ingest_output(
    base: &Path,
    rel: &str,
    output: &str,
    blobs: Arc<dyn BlobService>,
    dirs: &dyn DirectoryService,
    needles: Arc<Needles>,
    limits: IngestLimits,
) -> Result<IngestedOutput, IngestError> {
    let at = OutputAt {
        base: base.to_owned(),
        rel: rel.to_owned(),
        output: output.to_owned(),
    };
    let mut got = ingest_outputs(&[at], blobs, dirs, needles, limits).await?;
    got.pop().ok_or_else(|| IngestError::Task {
        output: output.to_owned(),
        msg: "no result".into(),
    })
}

/// Reads one output (checking the limits again as it goes) into the
/// stores: the walk of the output is the producer, the castore's
/// ingestion core the consumer, the NAR hash and the reference scanner
/// its observers. Files are stored one at a time, so the first error in
/// the output's NAR order is the one returned.
async fn walk_output(
    at: OutputAt,
    blobs: Arc<dyn BlobService>,
    dirs: &dyn DirectoryService,
    needles: Arc<Needles>,
    limits: IngestLimits,
) -> Result<IngestedOutput, IngestError> {
    let output = at.output.clone();
    let output = output.as_str();
    let (tx, rx) = mpsc::channel(AHEAD);
    let producer = tokio::task::spawn_blocking(move || crate::output_walk::walk(&at, limits, &tx));
    let opts = IngestOptions {
        concurrency: 1,
        deadline: limits.deadline.map(|d| d.at),
    };
    let observers = (NarHasher::new(), NeedleScan::new(needles));
    let ingested = ingest_entries(blobs, dirs, rx, observers, &opts).await;
    // The walk ends once its entries are taken or the consumer is gone.
    let (bytes, entries) = producer.await.map_err(|e| IngestError::Task {
        output: output.to_owned(),
        msg: e.to_string(),
    })?;
    let timeout = limits.deadline.map_or(Duration::ZERO, |d| d.timeout);
    let (node, (nar, scan)) =
        ingested.map_err(|e| IngestError::from_ingestion(output, timeout, e))?;
    let (nar_sha256, nar_size) = nar.finish();
    Ok(IngestedOutput {
        node,
        nar_sha256,
        nar_size,
        needles: scan.into_found(),
        bytes,
        entries,
    })
}
