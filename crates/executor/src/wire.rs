//! The executor's values as `tvix_oci_build.v1` events and back: what the
//! server's [`crate::events::EventSink`] sends, and what a client makes of
//! `Completed` (the same [`BuildResult`], so its JSON is a local run's) and
//! of `PhaseChanged` (the same [`Phase`], for the same progress display).

use std::collections::BTreeMap;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use tvix_oci_spec::proto::events::{self as ev, build_event::Event};

use crate::grpc::code_of;
use crate::runc::{LogStream, Phase};
use crate::{Accounting, BuildError, BuildResult, Figures, OutputInfo};

pub(crate) fn started(build_id: &str) -> Event {
    Event::Started(ev::Started {
        build_id: build_id.to_owned(),
    })
}

pub(crate) fn log(stream: LogStream, data: Vec<u8>) -> Event {
    let stream = match stream {
        LogStream::Stdout => ev::log::Stream::Stdout,
        LogStream::Stderr => ev::log::Stream::Stderr,
    };
    Event::Log(ev::Log {
        stream: stream.into(),
        data: data.into(),
    })
}

pub(crate) fn logs_dropped(lines: u64, bytes: u64) -> Event {
    Event::LogsDropped(ev::LogsDropped { lines, bytes })
}

pub(crate) fn phase(phase: Phase) -> Event {
    use ev::phase_changed::Phase as P;
    let (p, queue_position) = match phase {
        Phase::Queued { position } => (P::Queued, position),
        Phase::Mounting => (P::Mounting, 0),
        Phase::Running => (P::Running, 0),
        Phase::Ingesting => (P::Ingesting, 0),
    };
    Event::Phase(ev::PhaseChanged {
        phase: p.into(),
        queue_position,
    })
}

/// The executor's [`Phase`] a `PhaseChanged` names (`None` for one this
/// client does not know).
pub fn phase_of(p: &ev::PhaseChanged) -> Option<Phase> {
    use ev::phase_changed::Phase as P;
    Some(match p.phase() {
        P::Queued => Phase::Queued {
            position: p.queue_position,
        },
        P::Mounting => Phase::Mounting,
        P::Running => Phase::Running,
        P::Ingesting => Phase::Ingesting,
        P::Unspecified => return None,
    })
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

pub(crate) fn progress(f: &Figures) -> Event {
    Event::Progress(ev::Progress {
        elapsed_ms: ms(f.elapsed),
        input_bytes_fetched: f.input_bytes_fetched,
        cpu_ms: f.cpu.map(ms),
        peak_memory_bytes: f.peak_memory,
    })
}

/// A `RefscanResult` per output, then `Completed`.
pub(crate) fn completed(r: &BuildResult, dropped: u64) -> Vec<Event> {
    let mut events: Vec<Event> = r
        .build
        .outputs_needles
        .iter()
        .enumerate()
        .map(|(i, found)| {
            Event::RefscanResult(ev::RefscanResult {
                output_index: i as u64,
                found_needles: found.clone(),
            })
        })
        .collect();
    let outputs = r.outputs.iter().map(output_info).collect();
    let a = &r.accounting;
    events.push(Event::Completed(ev::Completed {
        build: Some((&r.build).into()),
        outputs,
        accounting: Some(ev::Accounting {
            wall_ns: ns(a.wall),
            to_first_instruction_ns: a.to_first_instruction.map(ns),
            run_wall_ns: ns(a.run_wall),
            cpu_ns: ns(a.cpu),
            peak_memory_bytes: a.peak_memory,
            max_rss_bytes: a.max_rss,
            input_bytes_fetched: a.input_bytes_fetched,
            input_bytes_served: a.input_bytes_served,
            input_bytes_prefetched: a.input_bytes_prefetched,
            input_bytes_prefetched_used: a.input_bytes_prefetched_used,
        }),
        log_lines_dropped: dropped,
    }));
    events
}

fn output_info(o: &OutputInfo) -> ev::OutputInfo {
    ev::OutputInfo {
        nar_sha256: Bytes::copy_from_slice(&o.nar_sha256),
        nar_size: o.nar_size,
        needle_paths: o
            .needle_paths
            .iter()
            .map(|(i, p)| (*i as u64, Bytes::copy_from_slice(p.as_os_str().as_bytes())))
            .collect(),
    }
}

/// Whose fault `e` is, as `Failed` says it.
pub fn fault_of(e: &BuildError) -> ev::failed::Fault {
    use ev::failed::Fault;
    match e {
        BuildError::NotAllowed(_) => Fault::Request,
        _ if e.is_build_failure() => Fault::Build,
        _ if e.is_store_failure() => Fault::Store,
        _ => Fault::Host,
    }
}

pub(crate) fn failed(e: &BuildError, dropped: u64) -> Event {
    let (exit_code, signal) = match e {
        BuildError::Failed { code, .. } => (Some(*code), None),
        BuildError::Signaled { signal, .. } => (None, Some(*signal)),
        BuildError::OutOfMemory { .. } => (None, Some(libc::SIGKILL)),
        _ => (None, None),
    };
    Event::Failed(ev::Failed {
        message: e.to_string(),
        exit_code,
        signal,
        fault: fault_of(e).into(),
        status_code: code_of(e) as i32,
        log_lines_dropped: dropped,
    })
}

/// Why a `Completed` event cannot be read as a [`BuildResult`].
#[derive(Debug, thiserror::Error)]
pub enum CompletedError {
    #[error("Completed has no build")]
    NoBuild,
    #[error("Completed's build: {0}")]
    Build(#[from] tvix_oci_spec::InvalidBuild),
    #[error("Completed has {infos} outputs' figures for {outputs} outputs")]
    OutputsCount { infos: usize, outputs: usize },
    #[error("Completed's outputs[{0}].nar_sha256 is not 32 bytes")]
    NarHash(usize),
}

/// The [`BuildResult`] a `Completed` event carries, checked: a valid
/// build, and 32-byte NAR hashes for each of its outputs. Missing
/// accounting reads as zeros.
pub fn result_of(c: ev::Completed) -> Result<BuildResult, CompletedError> {
    let build = tvix_oci_spec::Build::try_from(c.build.ok_or(CompletedError::NoBuild)?)?;
    if c.outputs.len() != build.outputs.len() {
        return Err(CompletedError::OutputsCount {
            infos: c.outputs.len(),
            outputs: build.outputs.len(),
        });
    }
    let outputs = c
        .outputs
        .into_iter()
        .enumerate()
        .map(|(i, o)| {
            let nar_sha256 = o.nar_sha256[..]
                .try_into()
                .map_err(|_| CompletedError::NarHash(i))?;
            let needle_paths: BTreeMap<usize, PathBuf> = o
                .needle_paths
                .into_iter()
                .map(|(n, p)| {
                    (
                        n as usize,
                        PathBuf::from(std::ffi::OsString::from_vec(p.into())),
                    )
                })
                .collect();
            Ok(OutputInfo {
                nar_sha256,
                nar_size: o.nar_size,
                needle_paths,
            })
        })
        .collect::<Result<Vec<_>, CompletedError>>()?;
    let a = c.accounting.unwrap_or_default();
    let accounting = Accounting {
        wall: Duration::from_nanos(a.wall_ns),
        to_first_instruction: a.to_first_instruction_ns.map(Duration::from_nanos),
        run_wall: Duration::from_nanos(a.run_wall_ns),
        cpu: Duration::from_nanos(a.cpu_ns),
        peak_memory: a.peak_memory_bytes,
        max_rss: a.max_rss_bytes,
        input_bytes_fetched: a.input_bytes_fetched,
        input_bytes_served: a.input_bytes_served,
        input_bytes_prefetched: a.input_bytes_prefetched,
        input_bytes_prefetched_used: a.input_bytes_prefetched_used,
    };
    Ok(BuildResult {
        build,
        outputs,
        accounting,
    })
}
