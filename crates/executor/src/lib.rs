//! The executor: runs a tvix.build.v1 `BuildRequest` end to end. This crate
//! so far holds the output side: [`ingest::ingest_output`] (safe, one-pass
//! ingestion), [`refscan`] (reference scanning) and [`nar`] (NAR hashing).

pub mod ingest;
pub mod nar;
pub mod refscan;
