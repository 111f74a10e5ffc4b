//! Stage 4, [`collect`]: what the build left becomes its result — the
//! inputs checked untouched, then every output ingested into the castore
//! with its NAR hash and the references found in it, under one budget of
//! the ingestion limits and the build's deadline.

use std::sync::Arc;

use tvix_oci_castore::PathComponent;
use tvix_oci_spec::{Build, BuildRequest, BundleLayout};

use super::decide::{modified_input, output_location};
use crate::faults::InfraError;
use crate::ingest::{Deadline, IngestLimits, OutputAt, ingest_outputs};
use crate::refscan::Needles;
use crate::{BuildError, Executor, OutputInfo};

/// The outputs of a build, in the request's order.
#[derive(Debug)]
pub(crate) struct Collected {
    pub build: Build,
    pub outputs: Vec<OutputInfo>,
}

/// Stage 4 for `req`, built in the bundle at `layout`: fails when the
/// build wrote into an input, or an output is missing, forbidden or past
/// a limit (`limits`, its deadline counting from the run's start).
pub(crate) async fn collect(
    exec: &Executor,
    req: &BuildRequest,
    layout: &BundleLayout,
    limits: IngestLimits,
) -> Result<Collected, BuildError> {
    if req.inputs_dir_is_scratch() {
        check_inputs_untouched(layout, req)?;
    }
    let needles = Arc::new(Needles::new(req.refscan_needles()));
    let at = req
        .outputs()
        .iter()
        .map(|out| {
            let (base, rel) = output_location(layout, req, out)?;
            let output = out.to_string();
            Ok(OutputAt { base, rel, output })
        })
        .collect::<Result<Vec<_>, BuildError>>()?;
    let (blobs, dirs) = exec.stores();
    let ingested = ingest_outputs(&at, blobs, &*dirs, needles, limits).await?;
    let mut collected = Collected {
        build: Build {
            request: req.clone(),
            outputs: Vec::new(),
            outputs_needles: Vec::new(),
        },
        outputs: Vec::new(),
    };
    for (out, got) in req.outputs().iter().zip(ingested) {
        let name =
            PathComponent::try_from(out.file_name()).map_err(|e| InfraError::OutputName {
                output: out.to_string(),
                msg: e.to_string(),
            })?;
        let b = &mut collected.build;
        b.outputs.push((name, got.node));
        b.outputs_needles
            .push(got.needles.keys().map(|&i| i as u64).collect());
        collected.outputs.push(OutputInfo {
            nar_sha256: got.nar_sha256,
            nar_size: got.nar_size,
            needle_paths: got.needles,
        });
    }
    Ok(collected)
}

/// The ingestion limits of a build whose run started at `started`: its
/// timeout covers the ingestion of its outputs too.
pub(crate) fn limits_from(
    limits: IngestLimits,
    timeout: Option<std::time::Duration>,
    started: std::time::Instant,
) -> IngestLimits {
    IngestLimits {
        deadline: timeout.map(|timeout| Deadline {
            at: started + timeout,
            timeout,
        }),
        ..limits
    }
}

/// Fails when the overlay's upper layer holds an entry named like an
/// input: the build wrote into, deleted or replaced it.
fn check_inputs_untouched(layout: &BundleLayout, req: &BuildRequest) -> Result<(), BuildError> {
    let upper = layout.upper();
    let rd = std::fs::read_dir(&upper).map_err(|source| InfraError::Io {
        path: upper.clone(),
        source,
    })?;
    let names: Vec<_> = rd.flatten().map(|e| e.file_name()).collect();
    match modified_input(names.iter().map(|n| n.as_os_str()), req.inputs()) {
        Some(name) => Err(BuildError::ModifiedInput(name)),
        None => Ok(()),
    }
}
