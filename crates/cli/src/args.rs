//! Command-line arguments.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Run hermetic builds of content-addressed inputs in OCI containers, and
/// manage the castore they read from and write to.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// Blob store URL (memory://, objects:///path, grpc+http://host:port,
    /// grpc+unix:///path). Default: the embedded store in the data dir.
    #[arg(long, env = "BLOB_SERVICE_ADDR", global = true)]
    pub blob_service_addr: Option<String>,

    /// Directory store URL (memory://, redb:///path, grpc+http://host:port,
    /// grpc+unix:///path). Default: the embedded store in the data dir.
    #[arg(long, env = "DIRECTORY_SERVICE_ADDR", global = true)]
    pub directory_service_addr: Option<String>,

    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides it.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    pub fn log_level(&self) -> &'static str {
        match self.verbose {
            0 => "warn",
            1 => "debug",
            _ => "trace",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Import local paths into the store and print each root's digest.
    ///
    /// Example: tvix-oci-build import /usr/share/zoneinfo
    Import {
        /// Files, directories or symlinks to import.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Write a stored directory or blob out to a new path.
    ///
    /// Example: tvix-oci-build export 8b5b5d64…810e /tmp/out
    Export {
        /// Digest (hex or base64) of a directory or blob in the store.
        digest: String,
        /// Where to write it; must not exist.
        dest: PathBuf,
    },
}
