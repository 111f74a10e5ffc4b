//! The executor: runs a tvix.build.v1 `BuildRequest` end to end and returns
//! a `Build` — inputs mounted lazily through FUSE, an overlay to make the
//! inputs dir writable, runc, and one-pass ingestion of the outputs with
//! reference scanning.
//!
//! ```no_run
//! # async fn f(blobs: std::sync::Arc<dyn tvix_oci_castore::blobservice::BlobService>,
//! #            dirs: std::sync::Arc<dyn tvix_oci_castore::directoryservice::DirectoryService>,
//! #            req: tvix_oci_spec::BuildRequest) -> Result<(), Box<dyn std::error::Error>> {
//! use tvix_oci_executor::{Executor, ExecutorConfig, runc::NoLogs};
//! let exec = Executor::new(ExecutorConfig::probed(), blobs, dirs);
//! exec.recover(); // what a killed process left behind
//! let result = exec.build(&req, &NoLogs).await?;
//! println!("{:?}", result.build.outputs);
//! # Ok(()) }
//! ```

mod bundle_dir;
mod census;
pub mod cgroup;
mod config;
mod console;
mod error;
pub mod events;
mod executor;
pub mod faults;
mod figures;
pub mod grpc;
pub mod grpc_events;
pub mod host;
pub mod idpool;
pub mod ingest;
mod ingest_error;
pub mod logs;
pub mod nar;
pub mod nar_node;
mod output_walk;
mod overlay;
mod pipeline;
pub mod profiles;
mod queue;
pub mod refscan;
mod refscan_mask;
pub mod refscan_observer;
mod result;
pub mod ro_paths;
pub mod rootless;
pub mod runc;
mod runc_failure;
pub mod runtime_version;
pub mod seam;
mod stale;
mod tracing_logs;
pub mod watch;
pub mod wire;

pub use config::ExecutorConfig;
pub use error::BuildError;
pub use executor::Executor;
pub use faults::{HostError, InfraError, StoreFault};
pub use figures::{Figures, PROGRESS_EVERY};
pub use result::{Accounting, BuildResult, OutputInfo};
pub use seam::Host;
pub use stale::cleanup_stale;
