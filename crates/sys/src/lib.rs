//! The host's tables, as every crate of the workspace reads and changes
//! them: the mount table ([`mountinfo`]), mounting and unmounting
//! ([`mount`], through `nix`), and processes ([`process`]: who we are,
//! whether a pid lives). One place for each, so the FUSE inputs, the
//! executor and the stores agree on what "still mounted" or "its owner is
//! gone" means.

pub mod mount;
pub mod mountinfo;
pub mod process;
