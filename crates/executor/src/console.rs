//! The builder's log stream as Nix gives it: [`Pty`], one pseudo-terminal
//! in raw mode whose slave is the builder's stdout and stderr (so what it
//! writes to both arrives in write order, and `isatty(1)` and `isatty(2)`
//! are true), and [`become_subreaper`], which lets the executor wait for a
//! builder that `runc run --detach` left behind.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;

use crate::BuildError;
use crate::faults::InfraError;

/// A pseudo-terminal pair, both ends closed on drop and close-on-exec
/// (a child gets the slave only through its stdio).
#[derive(Debug)]
pub struct Pty {
    /// What the executor reads the log from.
    pub master: File,
    /// What the builder writes to.
    pub slave: OwnedFd,
}

fn os_error(what: &'static str) -> BuildError {
    InfraError::Log {
        what,
        source: std::io::Error::last_os_error(),
    }
    .into()
}

impl Pty {
    /// Opens a pty in raw mode, as Nix does (`cfmakeraw`: no `\n` to
    /// `\r\n`, no echo, no signals from control characters).
    pub fn open() -> Result<Self, BuildError> {
        // Both ends close-on-exec from the start (not set after, when
        // another thread's fork, another build's runc, could inherit
        // them and hold this build's log open).
        let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
        // SAFETY: plain flags; the fd returned is new.
        let m = unsafe { libc::posix_openpt(flags) };
        if m < 0 {
            return Err(os_error("opening a pseudo-terminal"));
        }
        // SAFETY: posix_openpt returned a fresh fd that nothing else owns.
        let master = unsafe { OwnedFd::from_raw_fd(m) };
        // SAFETY: master is an open pty master.
        if unsafe { libc::unlockpt(master.as_raw_fd()) } != 0 {
            return Err(os_error("unlocking the pseudo-terminal"));
        }
        // The slave by the master's own ioctl (Linux 4.13), not by name.
        // SAFETY: master is an open pty master; the flags are valid.
        let s = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, flags) };
        if s < 0 {
            return Err(os_error("opening the pseudo-terminal's slave"));
        }
        // SAFETY: the ioctl returned a fresh fd that nothing else owns.
        let slave = unsafe { OwnedFd::from_raw_fd(s) };
        // SAFETY: termios is plain data, filled by tcgetattr.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: slave is an open terminal; t is a valid pointer.
        if unsafe { libc::tcgetattr(slave.as_raw_fd(), &mut t) } != 0 {
            return Err(os_error("reading the pseudo-terminal's attributes"));
        }
        // SAFETY: t is a valid termios.
        unsafe { libc::cfmakeraw(&mut t) };
        // SAFETY: slave is an open terminal; t is a valid termios.
        if unsafe { libc::tcsetattr(slave.as_raw_fd(), libc::TCSANOW, &t) } != 0 {
            return Err(os_error("putting the pseudo-terminal in raw mode"));
        }
        Ok(Self {
            master: File::from(master),
            slave,
        })
    }
}

/// Makes this process the reaper of its orphaned descendants
/// (`PR_SET_CHILD_SUBREAPER`), once: the builder that `runc run --detach`
/// starts outlives runc and becomes the executor's child, which it then
/// waits for by pid (never `wait(-1)`, so no other child's status is
/// taken). An orphan of another child is left a zombie until the process
/// ends; the executor's own children (runc) leave none.
pub fn become_subreaper() -> Result<(), BuildError> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        // SAFETY: PR_SET_CHILD_SUBREAPER takes one integer argument.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
            Err(format!(
                "making the executor the reaper of its builders (PR_SET_CHILD_SUBREAPER): {}",
                std::io::Error::last_os_error()
            ))
        } else {
            Ok(())
        }
    })
    .clone()
    .map_err(|e| InfraError::Reaper(e).into())
}
