//! Checks of the host against a request's constraints, before anything is
//! mounted: the system, the memory, the runtime (the read-only paths:
//! [`crate::ro_paths`]).

use std::path::{Path, PathBuf};

use tvix_oci_spec::BuildRequest;

use crate::BuildError;
use crate::faults::HostError;

/// This host's system, in Nix's spelling (`x86_64-linux`).
pub use tvix_oci_spec::host_system;

/// MemAvailable from /proc/meminfo, in bytes.
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The runtime binary: `runtime` itself when it has a slash, else found on
/// PATH.
pub fn find_runtime(runtime: &Path) -> Result<PathBuf, BuildError> {
    if runtime.components().count() > 1 {
        return if runtime.is_file() {
            Ok(runtime.to_owned())
        } else {
            Err(HostError::RuntimeMissing(runtime.to_owned()).into())
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(runtime))
        .find(|p| p.is_file())
        .ok_or_else(|| HostError::RuntimeNotOnPath(runtime.to_owned()).into())
}

/// Refuses a request this host cannot run, saying why.
pub fn check(req: &BuildRequest) -> Result<(), BuildError> {
    let c = req.constraints();
    let system = host_system();
    if c.system != system {
        return Err(HostError::System {
            wanted: c.system.clone(),
            host: system,
        }
        .into());
    }
    if c.min_memory > 0
        && let Some(avail) = available_memory()
        && avail < c.min_memory
    {
        return Err(HostError::Memory {
            needed: c.min_memory,
            available: avail,
        }
        .into());
    }
    // The read-only paths: crate::ro_paths, against the operator's list.
    Ok(())
}

/// This process's `RLIMIT_NOFILE`, which a build inherits as Nix's builder
/// inherits the daemon's.
pub fn open_files() -> Result<tvix_oci_spec::Rlimit, BuildError> {
    // SAFETY: rlimit is plain data, filled by the kernel.
    let mut r: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: a valid resource and a valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(HostError::OpenFiles(std::io::Error::last_os_error()).into());
    }
    Ok(tvix_oci_spec::Rlimit {
        soft: r.rlim_cur,
        hard: r.rlim_max,
    })
}
