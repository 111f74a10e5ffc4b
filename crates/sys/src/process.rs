//! Processes: whether this process is root, and whether a process of a
//! given pid still lives (to tell a dead owner's leftovers — temp files,
//! bundles, caches named after its pid — from a live one's).

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Whether process `pid` exists in this pid namespace. Signal 0 checks
/// without sending; EPERM means it exists but is another user's. A pid
/// that is not a valid one (0, negative, past `i32`) is not alive.
pub fn alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if raw <= 0 {
        return false;
    }
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None) {
        Ok(()) => true,
        Err(e) => e != nix::errno::Errno::ESRCH,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_lives_and_impossible_pids_do_not() {
        assert!(alive(std::process::id()));
        assert!(!alive(0), "pid 0 is a process group, not a process");
        assert!(!alive(u32::MAX));
        // Above the kernel's largest pid_max (2^22): never a process.
        assert!(!alive((1 << 22) + 1));
    }

    #[test]
    fn a_reaped_child_is_gone() {
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawning true");
        let pid = child.id();
        child.wait().expect("waiting for true");
        assert!(!alive(pid), "pid {pid} reaped but alive");
    }
}
