//! The spec crate: a build request in, an OCI runtime bundle out.
//!
//! - [`BuildRequest`]: a tvix.build.v1 request, validated once at the wire
//!   ([`proto`]) or JSON ([`json`]) boundary within [`RequestLimits`],
//!   every problem reported.
//! - [`make_spec`]: the runtime `config.json` for a request (pure, no IO).
//! - [`BundleLayout`]: every path of a bundle, where each output will be
//!   found on the host, and the one function that writes a bundle skeleton.

mod bundle;
pub mod codec;
pub mod json;
mod limits;
pub mod path;
mod pathset;
mod problems;
pub mod proto;
mod request;
mod seccomp;
mod spec;
mod validate;

pub use bundle::BundleError;
pub use bundle::{BundleLayout, scratch_name};
pub use limits::RequestLimits;
pub use problems::{Problem, Problems};
pub use request::{Build, BuildConstraints, BuildRequest, InvalidBuild};
pub use spec::{
    BUILD_GID, BUILD_UID, DEFAULT_NOFILE, DEFAULT_PIDS_LIMIT, IdMapping, IdMappings, OCI_VERSION,
    ResourceLimits, Rlimit, RoMount, SpecError, SpecOptions, make_spec, to_config_json,
};

/// This host's system as Nix names it (`x86_64-linux`): what a request's
/// `constraints.system` must be to run here.
pub fn host_system() -> String {
    format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS)
}
