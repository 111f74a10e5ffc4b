//! [`BuildError`]: why a build did not produce a result, in two classes —
//! the build's own fault (it failed, timed out, broke the rules) and the
//! host's or the store's (an infrastructure failure, worth retrying) —
//! and the request's, where it asks for what this builder does not allow.
//! Of the infrastructure failures, the store's are told from the host's
//! ([`BuildError::is_store_failure`]).

use std::time::Duration;

use crate::faults::{HostError, InfraError, StoreFault};
use crate::ingest::IngestError;

/// Why a build did not produce a result.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("the build failed with exit code {code}{}", tail_suffix(.log_tail))]
    Failed { code: i32, log_tail: String },
    #[error("the build was killed by signal {signal}{}", tail_suffix(.log_tail))]
    Signaled { signal: i32, log_tail: String },
    #[error("the build was killed for using more than its memory limit of {limit} bytes{}", tail_suffix(.log_tail))]
    OutOfMemory { limit: u64, log_tail: String },
    #[error("the build timed out after {after:?}{}", tail_suffix(.log_tail))]
    TimedOut { after: Duration, log_tail: String },
    #[error("the build was silent for {after:?} and was killed{}", tail_suffix(.log_tail))]
    Silent { after: Duration, log_tail: String },
    #[error("the build wrote more than {limit} bytes of log and was killed")]
    LogLimit { limit: u64 },
    #[error("build modified input {0}")]
    ModifiedInput(String),
    /// The request's command could not be started in the container (runc
    /// could not exec it): the build's fault, named.
    #[error("the builder {command} {problem}")]
    Builder {
        command: String,
        /// E.g. "does not exist in the sandbox".
        problem: &'static str,
    },
    /// The request's working dir could not be entered in the container
    /// (a file of an input on its way, say): the build's fault, named.
    #[error("the working dir {dir} {problem}")]
    WorkingDir {
        dir: String,
        /// E.g. "is, or is below, a file in the sandbox".
        problem: &'static str,
    },
    #[error(transparent)]
    Output(#[from] IngestError),
    /// The request asks for what this builder's operator does not allow
    /// (a host path to bind): the request's fault here, though another
    /// builder may allow it.
    #[error("{0}")]
    NotAllowed(String),
    /// Every build slot is taken and as many builds as the executor
    /// queues already wait: not the build's fault, nor the host's; another
    /// builder (or this one later) will take it.
    #[error(
        "this builder is busy: its {slots} build slots are taken and {queued} builds wait already (--queue); try another builder, or again later"
    )]
    Busy { slots: usize, queued: usize },
    /// This host cannot run the build until its operator changes
    /// something.
    #[error("this host cannot run the build: {0}")]
    Host(#[from] HostError),
    /// This machine failed while it ran the build: worth retrying.
    #[error("infrastructure failure: {0}")]
    Infrastructure(#[from] InfraError),
    /// The store failed or hung serving the build's inputs: the store's
    /// fault, worth retrying (said as an infrastructure failure).
    #[error("infrastructure failure: {0}")]
    Store(#[from] StoreFault),
}

fn tail_suffix(tail: &str) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!("; last log lines:\n{tail}")
    }
}

impl BuildError {
    /// Whether the fault is the build's (a retry would fail the same way),
    /// rather than the host's or the store's.
    pub fn is_build_failure(&self) -> bool {
        match self {
            BuildError::Failed { .. }
            | BuildError::Signaled { .. }
            | BuildError::OutOfMemory { .. }
            | BuildError::TimedOut { .. }
            | BuildError::Silent { .. }
            | BuildError::LogLimit { .. }
            | BuildError::ModifiedInput(_)
            | BuildError::Builder { .. }
            | BuildError::WorkingDir { .. } => true,
            BuildError::Output(e) => e.is_build_failure(),
            BuildError::NotAllowed(_)
            | BuildError::Busy { .. }
            | BuildError::Host(_)
            | BuildError::Infrastructure(_)
            | BuildError::Store(_) => false,
        }
    }

    /// Whether the fault is the store's: it failed or hung serving the
    /// inputs, or taking the outputs.
    pub fn is_store_failure(&self) -> bool {
        match self {
            BuildError::Store(_) => true,
            BuildError::Output(e) => e.is_store_failure(),
            _ => false,
        }
    }
}
