//! The generated protobuf types and gRPC stubs of `tvix.build.v1`, and the
//! `snix.build.v1` service (same request, snix's `BuildResponse`). Wire
//! types: nothing in them is validated; convert them into
//! [`crate::BuildRequest`] at the boundary.

#[allow(missing_docs, missing_debug_implementations, clippy::all)]
mod generated {
    pub mod tvix {
        pub mod build {
            pub mod v1 {
                tonic::include_proto!("tvix.build.v1");
            }
        }
    }
    pub mod snix {
        pub mod build {
            pub mod v1 {
                tonic::include_proto!("snix.build.v1");
            }
        }
    }
}

pub use generated::tvix::build::v1::*;

/// The `snix.build.v1` service and its `BuildResponse`.
pub mod snix {
    pub use super::generated::snix::build::v1::*;
}

impl From<Build> for snix::BuildResponse {
    /// snix's form of a result: each output next to its needles.
    fn from(b: Build) -> Self {
        let mut needles = b.outputs_needles.into_iter();
        snix::BuildResponse {
            outputs: b
                .outputs
                .into_iter()
                .map(|output| snix::build_response::Output {
                    output: Some(output),
                    needles: needles.next().map(|n| n.needles).unwrap_or_default(),
                })
                .collect(),
        }
    }
}
