//! The decisions of the pipeline, as pure functions of what the stages
//! observed: whose fault a run's end is ([`judge`]), where an output is on
//! the host ([`output_location`]), and whether the build touched an input
//! ([`modified_input`]). Nothing here touches the host, so all of it is
//! tested on any machine.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use tvix_oci_castore::{Node, PathComponent};
use tvix_oci_spec::path::CleanPath;
use tvix_oci_spec::{BuildRequest, BundleLayout};

use crate::BuildError;
use crate::faults::{InfraError, StoreFault};
use crate::ingest::IngestError;
use crate::runc::RunOutcome;

/// What was seen around a run, besides its own result.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct RunFacts {
    /// The inputs' FUSE daemon still served at the end.
    pub serving: bool,
    /// The executor aborted the FUSE connection itself (a limit stopped
    /// the build).
    pub aborted: bool,
    /// The store failed or hung while the build read its inputs.
    pub store_trouble: Option<String>,
    /// The build's memory limit, bytes.
    pub memory_limit: Option<i64>,
    /// The most memory its cgroup used.
    pub peak_memory: Option<u64>,
}

/// Whose fault the end of a run is. Inputs the build could not read make
/// any result the store's fault (infrastructure, worth retrying); so does
/// a FUSE daemon that died under it unless the executor aborted it; a
/// SIGKILL at 15/16 of the memory limit or more is the memory limit.
/// Anything else is the run's own result.
pub(crate) fn judge(
    ran: Result<RunOutcome, BuildError>,
    facts: RunFacts,
) -> Result<RunOutcome, BuildError> {
    if let Some(t) = facts.store_trouble {
        return Err(StoreFault::Inputs(t).into());
    }
    if !facts.serving && !facts.aborted {
        return Err(InfraError::FuseGone.into());
    }
    ran.map_err(|e| match e {
        BuildError::Signaled {
            signal: 9,
            log_tail,
        } if killed_at_limit(facts.memory_limit, facts.peak_memory) => BuildError::OutOfMemory {
            limit: facts.memory_limit.unwrap_or_default().max(0) as u64,
            log_tail,
        },
        other => other,
    })
}

/// Whether a peak of `peak` bytes reached the memory limit (the kernel
/// kills a little before the limit itself).
fn killed_at_limit(limit: Option<i64>, peak: Option<u64>) -> bool {
    match (limit, peak) {
        (Some(limit), Some(peak)) => {
            u128::from(peak) * 16 >= u128::from(limit.max(0).unsigned_abs()) * 15
        }
        _ => false,
    }
}

/// Where output `out` of `req` is on the host: a trusted base dir of the
/// bundle at `layout`, and the path below it. An output below a read-only
/// inputs dir cannot have been written: it is missing.
pub(crate) fn output_location(
    layout: &BundleLayout,
    req: &BuildRequest,
    out: &CleanPath,
) -> Result<(PathBuf, String), BuildError> {
    match layout.output_location(req, out) {
        Some((base, rest)) => Ok((base, rest.to_owned())),
        None => Err(BuildError::Output(IngestError::Missing(out.to_string()))),
    }
}

/// The first name in the overlay's upper layer (`upper`, its top-level
/// names) that is an input's: the build wrote into, deleted or replaced
/// that input. `inputs` are sorted by name, as a validated request has
/// them.
pub(crate) fn modified_input<'a>(
    upper: impl IntoIterator<Item = &'a OsStr>,
    inputs: &[(PathComponent, Node)],
) -> Option<String> {
    upper.into_iter().find_map(|name| {
        inputs
            .binary_search_by(|(n, _)| n.as_bytes().cmp(name.as_bytes()))
            .is_ok()
            .then(|| name.to_string_lossy().into_owned())
    })
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
