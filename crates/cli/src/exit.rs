//! Exit codes: 0 built, 1 the build failed, 2 the request is invalid,
//! 3 the host or the store failed. An [`Exit`] carries its code through
//! `anyhow`; any other error is 3.

use std::fmt;
use std::path::Path;

/// An error with the exit code it should end the process with.
#[derive(Debug)]
pub struct Exit {
    pub code: u8,
    pub msg: String,
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for Exit {}

pub const BUILD_FAILED: u8 = 1;
pub const INVALID: u8 = 2;
pub const HOST: u8 = 3;

/// An error ending the process with `code`.
pub fn exit(code: u8, msg: impl fmt::Display) -> anyhow::Error {
    anyhow::Error::new(Exit {
        code,
        msg: msg.to_string(),
    })
}

/// The code an error ends the process with.
pub fn code_of(e: &anyhow::Error) -> u8 {
    e.downcast_ref::<Exit>().map_or(HOST, |x| x.code)
}

/// The code a failed build ends the process with: [`BUILD_FAILED`] for the
/// build's fault, [`INVALID`] for a request asking what this builder's
/// operator does not allow, [`HOST`] for the host's or the store's.
pub fn code_of_build(e: &tvix_oci_executor::BuildError) -> u8 {
    if e.is_build_failure() {
        BUILD_FAILED
    } else if matches!(e, tvix_oci_executor::BuildError::NotAllowed(_)) {
        INVALID
    } else {
        HOST
    }
}

/// Fails with [`INVALID`], naming `path`, when a path the user gave does
/// not exist (the request's fault, as `run --input` says, not the host's).
pub fn must_exist(path: &Path) -> anyhow::Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(exit(INVALID, format!("{} does not exist", path.display())))
        }
        _ => Ok(()),
    }
}
