//! Nix derivations for tvix-oci-build: parse a `.drv` ([`aterm::parse`])
//! into a [`Derivation`], turn it into the tvix.build.v1 BuildRequest
//! that runs it the way Nix's sandbox does ([`request`]), and report the
//! result in Nix's terms ([`result`]). Store paths and nix-base32 are
//! here too, since both sides need them.

pub mod aterm;
pub mod base32;
pub mod checks;
pub mod derivation;
pub mod export;
pub mod fixed;
pub mod request;
pub mod result;
pub mod store_path;
pub mod structured;

pub use aterm::{ParseError, parse};
pub use derivation::{Derivation, FixedOutput, HashMode, Output};
pub use store_path::{StorePath, StorePathError};
