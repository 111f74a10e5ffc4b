//! The generated protobuf types and gRPC stubs of `tvix.castore.v1`, and the
//! `snix.castore.v1` services (which reuse the same messages: the bytes on
//! the wire are identical, only the gRPC paths differ).
//!
//! These are wire types: nothing in them is validated. Convert them into the
//! domain types ([`crate::Directory`], [`crate::Node`]) at the boundary.

#[allow(missing_docs, missing_debug_implementations, clippy::all)]
mod generated {
    pub mod tvix {
        pub mod castore {
            pub mod v1 {
                tonic::include_proto!("tvix.castore.v1");
            }
        }
    }
    pub mod snix {
        pub mod castore {
            pub mod v1 {
                tonic::include_proto!("snix.castore.v1");
            }
        }
    }
}

pub use generated::tvix::castore::v1::*;

/// The `snix.castore.v1` service stubs (same messages as `tvix.castore.v1`).
pub mod snix {
    pub use super::generated::snix::castore::v1::*;
}

/// Where the `.proto` files of this crate live, for crates that import them
/// (the spec crate's `tvix.build.v1` refers to `tvix.castore.v1.Node`).
pub const PROTO_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/protos");
