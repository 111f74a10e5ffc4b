//! Running a bundle with runc: `runc run --detach`, the builder reaped by
//! the executor, its stdout and stderr one pseudo-terminal streamed to a
//! [`LogSink`] as they come (see [`run`]), with a timeout, a silence limit
//! and a log size limit. A [`Container`] guard runs
//! `runc delete --force` when dropped, so a cancelled or failed build never
//! leaves a container behind.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::BuildError;

/// Which stream a log chunk came from. The builder's stdout and stderr
/// are one pseudo-terminal, as in Nix: its output, and runc's own
/// messages, all come as [`LogStream::Stderr`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// The steps of a build that take time, in the order the executor reaches
/// them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for one of the executor's build slots: `position` 1 is the
    /// next build to start. Reported when the build starts waiting and
    /// again when its place changes; not at all when a slot is free.
    Queued { position: u64 },
    /// Writing the bundle, mounting the inputs and the overlay.
    Mounting,
    /// The container runs.
    Running,
    /// Reading the outputs into the castore.
    Ingesting,
}

/// Receives the build's output as it comes, in chunks of any size, and
/// the executor's progress through the [`Phase`]s. Its methods are called
/// from the build's own task: they must not block (a sink that cannot keep
/// up drops, it does not wait).
pub trait LogSink: Send + Sync {
    fn log(&self, stream: LogStream, data: &[u8]);
    /// The build reached `phase`. Does nothing unless overridden.
    fn phase(&self, _phase: Phase) {}
    /// The running build's figures so far, about every
    /// [`crate::PROGRESS_EVERY`] while its container runs. Does nothing
    /// unless overridden.
    fn progress(&self, _figures: &crate::Figures) {}
    /// The build got its id (once, before any phase; the id names its
    /// bundle, container and cgroup, and its log span). Does nothing unless
    /// overridden.
    fn started(&self, _build_id: &str) {}
}

/// A sink that drops everything.
#[derive(Debug, Default)]
pub struct NoLogs;
impl LogSink for NoLogs {
    fn log(&self, _: LogStream, _: &[u8]) {}
}

/// Limits on one run.
#[derive(Clone, Copy, Debug)]
pub struct RunLimits {
    pub timeout: Option<Duration>,
    pub max_silent: Option<Duration>,
    pub log_limit: u64,
}

/// How the run went, when it ran to the end.
#[derive(Debug)]
pub struct RunOutcome {
    /// CPU time of runc and the build (user + system).
    pub cpu: Duration,
    /// Largest resident set of the build's processes, in bytes.
    pub max_rss: u64,
    pub wall: Duration,
    /// When runc had started the build's process (it writes its pid file
    /// right after releasing the process to exec), if it got that far.
    pub process_started: Option<Instant>,
}

/// A container that is deleted (`runc delete --force`) when dropped.
#[derive(Debug)]
pub struct Container {
    runc: PathBuf,
    /// runc's `--root` (its state dir), when not its default.
    state_root: Option<PathBuf>,
    id: String,
    live: bool,
}

impl Container {
    /// Names container `id`; nothing runs yet. `state_root` is runc's
    /// `--root` (rootless builds keep their state there).
    pub fn new(runc: &Path, state_root: Option<&Path>, id: &str) -> Self {
        Self {
            runc: runc.to_owned(),
            state_root: state_root.map(Path::to_owned),
            id: id.to_owned(),
            live: true,
        }
    }

    /// A runc command with the global options.
    fn command(&self) -> Command {
        let mut c = Command::new(&self.runc);
        if let Some(r) = &self.state_root {
            c.arg("--root").arg(r);
        }
        c
    }

    fn runc(&self, args: &[&str]) -> std::io::Result<std::process::Output> {
        self.command().args(args).stdin(Stdio::null()).output()
    }

    /// Kills the container's init, and with it its PID namespace. (Not
    /// `--all`: on cgroup v1 that signals every process of the container's
    /// cgroup, which must never be a shared one.)
    pub fn kill(&self) {
        let _ = self.runc(&["kill", &self.id, "KILL"]);
    }

    /// Deletes the container, killing what still runs in it.
    pub fn delete(&mut self) {
        if !std::mem::take(&mut self.live) {
            return;
        }
        match self.runc(&["delete", "--force", &self.id]) {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                let err = String::from_utf8_lossy(&o.stderr);
                // Already gone (runc run deletes on exit) is fine.
                if !err.contains("does not exist") {
                    warn!(id = %self.id, "runc delete: {}", err.trim());
                }
            }
            Err(e) => warn!(id = %self.id, "runc delete: {e}"),
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.delete();
    }
}

/// The last lines of the log, for error messages.
#[derive(Debug, Default)]
struct Tail(Vec<u8>);

impl Tail {
    const KEEP: usize = 16 * 1024;
    const LINES: usize = 25;

    fn push(&mut self, data: &[u8]) {
        self.0.extend_from_slice(data);
        if self.0.len() > 2 * Self::KEEP {
            self.0.drain(..self.0.len() - Self::KEEP);
        }
    }

    fn lines(&self) -> String {
        let text = String::from_utf8_lossy(&self.0);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(Self::LINES)..].join("\n")
    }
}

/// What ended the wait.
enum Stop {
    Exited(Waited),
    TimedOut,
    Silent,
    LogLimit,
}

fn pump(
    mut r: impl Read + Send + 'static,
    stream: LogStream,
    tx: mpsc::Sender<(LogStream, Vec<u8>)>,
) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.blocking_send((stream, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
    });
}

/// Makes `cmd` run with address space randomization off, as Nix runs its
/// builders (`personality(ADDR_NO_RANDOMIZE)`, for reproducibility).
/// runc 1.1 has no way to set it (its spec's `linux.personality` is
/// ignored, and later runc only takes the execution domain), but the
/// personality is inherited across fork and exec, and runc leaves it as
/// it is: set in runc's process, it is the builder's.
fn no_aslr(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec only the async-signal-safe
    // personality(2) runs, on this process's own state.
    unsafe {
        cmd.pre_exec(|| {
            let current = libc::personality(0xffff_ffff);
            if current == -1
                || libc::personality(
                    (current as libc::c_ulong) | libc::ADDR_NO_RANDOMIZE as libc::c_ulong,
                ) == -1
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Waits for `pid` and returns its status and resource usage.
fn wait4(pid: u32) -> std::io::Result<(std::process::ExitStatus, libc::rusage)> {
    let mut status = 0;
    // SAFETY: rusage is plain data, filled by the kernel.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: pid is our child; status and usage are valid pointers.
        let rc = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
        if rc >= 0 {
            return Ok((std::process::ExitStatus::from_raw(status), usage));
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn tv(t: libc::timeval) -> Duration {
    Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
}

/// Why runc could not exec the build's command, from what it said before
/// the build started (`runc run failed: unable to start container process:
/// exec: "/x": stat /x: no such file or directory`, runc 1.1 and later),
/// as the rest of the sentence "the builder X ...". `None` when runc failed
/// for another reason (its own, or the host's).
pub fn exec_failure(said: &str) -> Option<&'static str> {
    let line = said
        .lines()
        .find(|l| l.contains("unable to start container process: exec: "))?;
    let why = &line[line.find("unable to start container process: exec: ")?..];
    if why.contains("no such file or directory") || why.contains("not a directory") {
        Some("does not exist in the sandbox")
    } else if why.contains("executable file not found in $PATH") {
        Some("is not on the sandbox's PATH")
    } else if why.contains("permission denied") {
        Some(
            "is not an executable file in the sandbox (a directory, or a file without the executable bit)",
        )
    } else {
        None
    }
}

/// Why runc could not enter the build's working dir `cwd` (absolute, as
/// in the container), from what it said before the build started (runc
/// 1.1.5: `error during container init: mkdir /nix/store/x/f: not a
/// directory` when a component is a file of an input, `... permission
/// denied` below a read-only input; `chdir to cwd ("/x") set in
/// config.json failed`), as the rest of the sentence "the working dir X
/// ...". `None` when runc failed for another reason.
pub fn cwd_failure(said: &str, cwd: &str) -> Option<&'static str> {
    let line = said
        .lines()
        .find(|l| l.contains("unable to start container process: "))?;
    let chdir = format!("chdir to cwd (\\\"{cwd}\\\")");
    let on_the_way = line
        .split("error during container init: mkdir ")
        .nth(1)
        .is_some_and(|rest| {
            let path = rest.split(": ").next().unwrap_or_default();
            // The component that failed: the dir itself or one above it.
            cwd == path || cwd.strip_prefix(path).is_some_and(|r| r.starts_with('/'))
        });
    if !on_the_way && !line.contains(&chdir) {
        return None;
    }
    if line.contains("not a directory") {
        Some("is, or is below, a file in the sandbox")
    } else if line.contains("permission denied") || line.contains("read-only file system") {
        Some("does not exist and cannot be made in the sandbox (below a read-only input)")
    } else if line.contains("no such file or directory") {
        Some("does not exist in the sandbox")
    } else {
        None
    }
}

/// What the container runs: its command (named when runc cannot exec it)
/// and its working dir, absolute as in the container (named when runc
/// cannot enter it).
#[derive(Clone, Copy, Debug)]
pub struct Process<'a> {
    pub builder: &'a str,
    pub cwd: &'a str,
}

/// How long a builder that closed its stdout and stderr (every holder of
/// the log's pty gone) may take to exit before it is killed, as Nix kills
/// it: long enough for one that is exiting anyway, so that a normal build
/// pays no `runc kill`.
const CLOSED_LOG_GRACE: Duration = Duration::from_millis(100);

/// What the wait for runc and the builder found.
enum Waited {
    /// runc failed before releasing the builder (its status).
    RuncFailed(std::process::ExitStatus),
    /// The builder's own status; the CPU time and the largest resident
    /// set (bytes) of runc and the builder.
    Builder(std::process::ExitStatus, Duration, u64),
}

/// Waits for runc (`runc_pid`, started with `--detach`), then for the
/// builder it left behind, whose pid is in `pid_file` and which this
/// process reaps as its subreaper.
fn wait_both(runc_pid: u32, pid_file: &Path) -> Result<Waited, String> {
    let (status, runc_usage) = wait4(runc_pid).map_err(|e| format!("waiting for runc: {e}"))?;
    if !status.success() {
        return Ok(Waited::RuncFailed(status));
    }
    let text = std::fs::read_to_string(pid_file)
        .map_err(|e| format!("reading runc's pid file {}: {e}", pid_file.display()))?;
    let pid: u32 = text.trim().parse().map_err(|_| {
        format!(
            "runc's pid file {} holds {text:?}, not a pid",
            pid_file.display()
        )
    })?;
    let (status, usage) =
        wait4(pid).map_err(|e| format!("waiting for the builder (pid {pid}): {e}"))?;
    let cpu = [runc_usage, usage]
        .iter()
        .map(|u| tv(u.ru_utime) + tv(u.ru_stime))
        .sum();
    let max_rss = (usage.ru_maxrss.max(runc_usage.ru_maxrss).max(0) as u64) * 1024;
    Ok(Waited::Builder(status, cpu, max_rss))
}

/// Runs the bundle at `bundle` as container `container` and waits for it.
/// `process` says what it runs, to name it when runc cannot start it.
/// When a limit stops the build, `on_stop` runs just before the container
/// is killed (the executor aborts the FUSE connection there, so a process
/// blocked on a hung store dies at once).
///
/// As in Nix, the builder's stdin is `/dev/null` and its stdout and
/// stderr one pseudo-terminal (the executor's `console::Pty`): what it writes to
/// either comes to `sink` in write order, as [`LogStream::Stderr`], with
/// runc's own messages. runc runs `--detach` so that the builder inherits
/// the pty itself (in the foreground runc would copy two pipes of its
/// own); the executor reaps the builder as runc's subreaper. A builder
/// that closes its stdout and stderr is killed, as Nix kills it.
pub async fn run(
    container: &Container,
    bundle: &Path,
    sink: &dyn LogSink,
    limits: RunLimits,
    process: Process<'_>,
    on_stop: &(dyn Fn() + Sync),
) -> Result<RunOutcome, BuildError> {
    let start = Instant::now();
    let pid_file = bundle.join("runc.pid");
    crate::console::become_subreaper()?;
    let pty = crate::console::Pty::open()?;
    let end = || {
        pty.slave
            .try_clone()
            .map(Stdio::from)
            .map_err(|e| BuildError::infra(format!("duplicating the log's pseudo-terminal: {e}")))
    };
    let mut cmd = container.command();
    cmd.arg("run")
        .arg("--detach")
        .arg("--bundle")
        .arg(bundle)
        .arg("--pid-file")
        .arg(&pid_file)
        .arg(&container.id)
        .stdin(Stdio::null())
        .stdout(end()?)
        .stderr(end()?);
    no_aslr(&mut cmd);
    let child = cmd
        .spawn()
        .map_err(|e| BuildError::infra(format!("starting {}: {e}", container.runc.display())))?;
    // Only runc and the builder hold the slave now: the log ends when they
    // all closed it.
    drop(cmd);
    let crate::console::Pty { master, slave } = pty;
    drop(slave);
    let (tx, mut rx) = mpsc::channel(64);
    pump(master, LogStream::Stderr, tx);
    let runc_pid = child.id();
    // Reaped by wait4 below (for its resource usage), not through `child`.
    drop(child);
    let waited_pid_file = pid_file.clone();
    let mut waiter = tokio::task::spawn_blocking(move || wait_both(runc_pid, &waited_pid_file));

    let mut tail = Tail::default();
    let mut logged = 0u64;
    let mut last_output = Instant::now();
    let mut process_started = None;
    let mut log_closed: Option<Instant> = None;
    let mut poll = tokio::time::interval(Duration::from_millis(1));
    let far = Duration::from_secs(100 * 365 * 24 * 3600);
    let stop = loop {
        let timeout_at = limits.timeout.map_or(start + far, |t| start + t);
        let silent_at = limits.max_silent.map_or(start + far, |t| last_output + t);
        let closed_at = log_closed.map_or(start + far, |t| t + CLOSED_LOG_GRACE);
        tokio::select! {
            res = &mut waiter => {
                let waited = res
                    .map_err(|e| BuildError::infra(format!("waiting for runc: {e}")))?
                    .map_err(BuildError::infra)?;
                break Stop::Exited(waited);
            }
            msg = rx.recv(), if log_closed.is_none() => match msg {
                Some((stream, data)) => {
                    last_output = Instant::now();
                    logged += data.len() as u64;
                    tail.push(&data);
                    sink.log(stream, &data);
                    if logged > limits.log_limit {
                        break Stop::LogLimit;
                    }
                }
                None => log_closed = Some(Instant::now()),
            },
            _ = poll.tick(), if process_started.is_none() => {
                if pid_file.exists() {
                    process_started = Some(Instant::now());
                }
            }
            _ = tokio::time::sleep_until(closed_at.into()), if log_closed.is_some() => {
                debug!(id = %container.id, "the builder closed its stdout and stderr: killed, as Nix does");
                container.kill();
                // Its status (SIGKILL) is what the build ends with.
                log_closed = Some(start + far);
            }
            _ = tokio::time::sleep_until(timeout_at.into()) => break Stop::TimedOut,
            _ = tokio::time::sleep_until(silent_at.into()) => break Stop::Silent,
        }
    };
    let waited = match stop {
        Stop::Exited(w) => w,
        other => {
            on_stop();
            container.kill();
            // Keep draining the log until the builder is gone, so that
            // nothing writing to it stays blocked on a full pty.
            loop {
                tokio::select! {
                    _ = &mut waiter => break,
                    Some((_, data)) = rx.recv() => {
                        if !matches!(other, Stop::LogLimit) {
                            tail.push(&data);
                        }
                    }
                }
            }
            let log_tail = tail.lines();
            return Err(match other {
                Stop::TimedOut => BuildError::TimedOut {
                    after: limits.timeout.unwrap_or_default(),
                    log_tail,
                },
                Stop::Silent => BuildError::Silent {
                    after: limits.max_silent.unwrap_or_default(),
                    log_tail,
                },
                _ => BuildError::LogLimit {
                    limit: limits.log_limit,
                },
            });
        }
    };
    // The rest of the log, now that the build is gone.
    if log_closed.is_none() {
        while let Ok(Some((stream, data))) =
            tokio::time::timeout(Duration::from_millis(200), rx.recv()).await
        {
            tail.push(&data);
            sink.log(stream, &data);
        }
    }
    let (status, cpu, max_rss) = match waited {
        Waited::Builder(s, c, m) => (s, c, m),
        // runc failed before the build ran: its exit code is runc's, not
        // the build's — unless what failed was the exec of the request's
        // own command or the entry into its working dir.
        Waited::RuncFailed(status) => {
            let said = tail.lines();
            if let Some(problem) = exec_failure(&said) {
                return Err(BuildError::Builder {
                    command: process.builder.to_owned(),
                    problem,
                });
            }
            if let Some(problem) = cwd_failure(&said, process.cwd) {
                return Err(BuildError::WorkingDir {
                    dir: process.cwd.to_owned(),
                    problem,
                });
            }
            return Err(BuildError::infra(format!(
                "{} failed before starting the build ({status}): {said}",
                container.runc.display(),
            )));
        }
    };
    debug!(id = %container.id, ?status, "the builder exited");
    let outcome = RunOutcome {
        cpu,
        max_rss,
        wall: start.elapsed(),
        process_started: process_started.or_else(|| pid_file.exists().then(Instant::now)),
    };
    match (status.code(), status.signal()) {
        (Some(0), _) => Ok(outcome),
        (Some(code), _) => Err(BuildError::Failed {
            code,
            log_tail: tail.lines(),
        }),
        (None, Some(signal)) => Err(BuildError::Signaled {
            signal,
            log_tail: tail.lines(),
        }),
        (None, None) => Err(BuildError::infra("the builder ended without a status")),
    }
}

#[cfg(test)]
mod tests {
    use super::{cwd_failure, exec_failure};

    /// What runc 1.1.5 (Debian 12) prints for a working dir it cannot
    /// enter, checked by running it (`run --workdir`).
    #[test]
    fn working_dirs_that_fail_are_told_from_runc_failing() {
        let said = |cause: &str| {
            format!(
                "time=\"2026-12-03T18:36:18Z\" level=error msg=\"runc run failed: unable to start container process: error during container init: {cause}\""
            )
        };
        let file = said("mkdir /nix/store/bb/bin/busybox: not a directory");
        assert_eq!(
            cwd_failure(&file, "/nix/store/bb/bin/busybox"),
            Some("is, or is below, a file in the sandbox")
        );
        assert_eq!(
            cwd_failure(&file, "/nix/store/bb/bin/busybox/sub"),
            Some("is, or is below, a file in the sandbox")
        );
        // Another path failing is not the working dir's doing.
        assert_eq!(cwd_failure(&file, "/nix/store/bb/bin/busy"), None);
        assert_eq!(cwd_failure(&file, "/build"), None);
        let ro = said("mkdir /nix/store/bb/nothere: permission denied");
        assert!(cwd_failure(&ro, "/nix/store/bb/nothere").is_some_and(|p| p.contains("read-only")));
        let chdir =
            said("chdir to cwd (\\\"/x\\\") set in config.json failed: no such file or directory");
        assert_eq!(
            cwd_failure(&chdir, "/x"),
            Some("does not exist in the sandbox")
        );
        assert_eq!(
            cwd_failure(&said("mkdir /x: no space left on device"), "/x"),
            None
        );
    }

    /// What runc 1.1.5 (Debian 12) prints, checked by running it.
    #[test]
    fn execs_that_fail_are_told_from_runc_failing() {
        let said = |cause: &str| {
            format!(
                "time=\"2026-12-01T20:04:59Z\" level=error msg=\"runc run failed: unable to start container process: exec: \\\"/x\\\": {cause}\""
            )
        };
        let missing = "does not exist in the sandbox";
        assert_eq!(
            exec_failure(&said("stat /x: no such file or directory")),
            Some(missing)
        );
        assert_eq!(
            exec_failure(&said("stat /x: not a directory")),
            Some(missing)
        );
        assert!(
            exec_failure(&said("permission denied"))
                .is_some_and(|p| p.starts_with("is not an executable file"))
        );
        assert_eq!(
            exec_failure(&said("executable file not found in $PATH")),
            Some("is not on the sandbox's PATH")
        );
        for other in [
            "time=\"x\" level=error msg=\"runc run failed: unable to start container process: error during container init: error mounting \\\"proc\\\": permission denied\"",
            "level=error msg=\"cannot create the container\"",
            "",
        ] {
            assert_eq!(exec_failure(other), None, "{other}");
        }
    }
}
