//! The generated protobuf types and gRPC stubs of `tvix.build.v1`. Wire
//! types: nothing in them is validated; convert them into
//! [`crate::BuildRequest`] at the boundary.

#[allow(missing_docs, missing_debug_implementations, clippy::all)]
mod generated {
    tonic::include_proto!("tvix.build.v1");
}

pub use generated::*;
