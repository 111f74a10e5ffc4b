//! The castore: a content-addressed store of blobs and directories (BLAKE3),
//! wire-compatible with tvix.castore.v1 and snix.castore.v1.
//!
//! - Data model: [`B3Digest`], [`PathComponent`], [`Node`], [`Directory`],
//!   validated once at the wire boundary ([`proto`]).
//! - Stores: [`blobservice::BlobService`] and
//!   [`directoryservice::DirectoryService`], with in-memory, embedded
//!   persistent, object-storage (S3, files) and gRPC backends opened from URLs ([`open_blob_service`],
//!   [`open_directory_service`]), and a gRPC server ([`grpc`]).
//! - [`import::ingest_entries`] ingests a tree from any producer's stream
//!   of entries, [`import::import_path`] a filesystem tree through it;
//!   [`export::export_node`] writes one back out.

pub mod blobservice;
mod digest;
mod directory;
pub mod directoryservice;
mod error;
pub mod export;
pub mod grpc;
pub mod import;
#[cfg(feature = "test-util")]
pub mod lying;
mod node;
pub mod objectstore;
mod open;
mod path;
pub mod proto;
pub mod tempfiles;

pub use digest::{B3_LEN, B3Digest, DigestError};
pub use directory::{Directory, DirectoryError};
pub use error::{ClosureError, StoreError};
pub use node::{Node, NodeError};
pub use open::{
    open_blob_service, open_blob_service_with, open_directory_service, open_directory_service_with,
};
pub use path::{NameError, PathComponent, SymlinkTarget};
