//! Whether the process behind a FUSE request still waits for the answer.
//!
//! A process whose request the kernel already handed to us waits for the
//! reply uninterruptibly, even after SIGKILL: while a store call hangs, the
//! reader cannot die. fuser 0.18 answers FUSE_INTERRUPT with ENOSYS itself
//! (it does not pass it on), so instead the daemon watches the requester
//! while a store call is pending, and answers EIO as soon as SIGKILL is
//! pending for it (or it is gone), letting it die.

use std::time::Duration;

/// How often a pending store call looks at its requester.
pub(crate) const POLL: Duration = Duration::from_millis(150);

/// SIGKILL's bit in the pending-signal masks of `/proc/PID/status`.
const SIGKILL_BIT: u64 = 1 << (libc::SIGKILL - 1);

/// Whether `status` (the text of `/proc/PID/status`) shows a process that
/// is dying: SIGKILL pending for the thread or its group, or a zombie.
pub(crate) fn dying(status: &str) -> bool {
    status.lines().any(|l| {
        let Some((key, value)) = l.split_once(':') else {
            return false;
        };
        let value = value.trim();
        match key {
            "SigPnd" | "ShdPnd" => {
                u64::from_str_radix(value, 16).is_ok_and(|mask| mask & SIGKILL_BIT != 0)
            }
            "State" => value.starts_with('Z') || value.starts_with('X'),
            _ => false,
        }
    })
}

/// Whether the requester `pid` (a thread id, as FUSE gives it) no longer
/// waits for an answer: gone, or dying. `0` (a requester from another pid
/// namespace, or none) is never given up on.
pub(crate) fn gone(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(s) => dying(&s),
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

/// Resolves once `pid` no longer waits (see [`gone`]); never for pid 0.
pub(crate) async fn given_up(pid: u32) {
    if pid == 0 {
        return std::future::pending().await;
    }
    loop {
        tokio::time::sleep(POLL).await;
        if gone(pid) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigkill_pending_or_a_zombie_is_dying() {
        let alive = "Name:\tcat\nState:\tD (disk sleep)\nSigPnd:\t0000000000000000\nShdPnd:\t0000000000000000\n";
        assert!(!dying(alive));
        assert!(dying(&alive.replace(
            "ShdPnd:\t0000000000000000",
            "ShdPnd:\t0000000000000100"
        )));
        assert!(dying(&alive.replace(
            "SigPnd:\t0000000000000000",
            "SigPnd:\t0000000000000100"
        )));
        // SIGTERM (bit 15) pending is not dying: the process may handle it.
        assert!(!dying(&alive.replace(
            "ShdPnd:\t0000000000000000",
            "ShdPnd:\t0000000000004000"
        )));
        assert!(dying(&alive.replace("D (disk sleep)", "Z (zombie)")));
    }

    #[test]
    fn a_live_process_waits_and_a_dead_one_is_gone() {
        assert!(!gone(std::process::id()));
        assert!(!gone(0));
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let pid = child.id();
        assert!(!gone(pid));
        child.kill().unwrap();
        // Until reaped it is a zombie, and gone all the same.
        std::thread::sleep(Duration::from_millis(100));
        assert!(gone(pid));
        child.wait().unwrap();
        assert!(gone(pid));
    }
}
