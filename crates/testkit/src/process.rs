//! [`stop`]: ending a server a test started so that it cleans up after
//! itself — SIGTERM first (`serve` cancels its builds and removes their
//! containers, mounts and bundles), SIGKILL only past a grace period.

use std::process::Child;
use std::time::{Duration, Instant};

/// Stops `child`: SIGTERM, then SIGKILL if it still runs after `grace`;
/// reaped either way.
pub fn stop(child: &mut Child, grace: Duration) {
    if child.try_wait().ok().flatten().is_none()
        && let Ok(pid) = i32::try_from(child.id())
    {
        // SAFETY: kill has no memory preconditions; the pid is our child's,
        // not reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < grace {
            if child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}
