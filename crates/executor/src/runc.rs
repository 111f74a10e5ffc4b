//! Running a bundle with runc: `runc run --detach`, the builder reaped by
//! the executor, its stdout and stderr one pseudo-terminal streamed to a
//! [`LogSink`] as they come (see [`run`]), with a timeout, a silence limit
//! and a log size limit. A [`Container`] guard runs
//! `runc delete --force` when dropped, so a cancelled or failed build never
//! leaves a container behind.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::BuildError;
use crate::faults::InfraError;
use crate::logs::{LogChunks, Tail, pump};
pub use crate::logs::{LogSink, LogStream, NoLogs, Phase};
pub use crate::runc_failure::{cwd_failure, exec_failure};

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

/// What ended the wait.
enum Stop {
    Exited(Waited),
    TimedOut,
    Silent,
    LogLimit,
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
    let pid_file = bundle.join("runc.pid");
    let mut w = Watch::start(container, bundle, &pid_file)?;
    let waited = match w.until_stopped(sink, limits).await? {
        Stop::Exited(waited) => waited,
        other => return Err(w.stopped(other, on_stop, limits).await),
    };
    w.drain(sink).await;
    let (status, cpu, max_rss) = match waited {
        Waited::Builder(s, c, m) => (s, c, m),
        Waited::RuncFailed(status) => return Err(w.runc_failed(status, process)),
    };
    debug!(id = %container.id, ?status, "the builder exited");
    let outcome = RunOutcome {
        cpu,
        max_rss,
        wall: w.start.elapsed(),
        process_started: w
            .process_started
            .or_else(|| pid_file.exists().then(Instant::now)),
    };
    let log_tail = || w.tail.lines();
    match (status.code(), status.signal()) {
        (Some(0), _) => Ok(outcome),
        (Some(code), _) => Err(BuildError::Failed {
            code,
            log_tail: log_tail(),
        }),
        (None, Some(signal)) => Err(BuildError::Signaled {
            signal,
            log_tail: log_tail(),
        }),
        (None, None) => Err(InfraError::NoStatus.into()),
    }
}

/// Starts `runc run --detach` for `container` with one pty as the
/// builder's stdout and stderr; its pid, and the channel its log comes on.
fn start_detached(
    container: &Container,
    bundle: &Path,
    pid_file: &Path,
) -> Result<(u32, LogChunks), BuildError> {
    crate::console::become_subreaper()?;
    let pty = crate::console::Pty::open()?;
    let end = || {
        pty.slave
            .try_clone()
            .map(Stdio::from)
            .map_err(|source| InfraError::Log {
                what: "duplicating the pseudo-terminal",
                source,
            })
    };
    let mut cmd = container.command();
    cmd.arg("run")
        .arg("--detach")
        .arg("--bundle")
        .arg(bundle)
        .arg("--pid-file")
        .arg(pid_file)
        .arg(&container.id)
        .stdin(Stdio::null())
        .stdout(end()?)
        .stderr(end()?);
    no_aslr(&mut cmd);
    let child = cmd.spawn().map_err(|source| InfraError::RuntimeStart {
        runtime: container.runc.clone(),
        source,
    })?;
    // Only runc and the builder hold the slave now: the log ends when they
    // all closed it.
    drop(cmd);
    let crate::console::Pty { master, slave } = pty;
    drop(slave);
    let (tx, rx) = mpsc::channel(64);
    pump(master, LogStream::Stderr, tx);
    // Reaped by wait4 (for its resource usage), not through `child`.
    Ok((child.id(), rx))
}

/// A started run being watched: its log, its limits, its end.
struct Watch<'a> {
    container: &'a Container,
    pid_file: &'a Path,
    start: Instant,
    rx: LogChunks,
    waiter: tokio::task::JoinHandle<Result<Waited, String>>,
    tail: Tail,
    logged: u64,
    last_output: Instant,
    process_started: Option<Instant>,
    /// When every holder of the log's pty closed it.
    log_closed: Option<Instant>,
}

/// How often a build a limit stopped is killed again until it is gone.
const KILL_AGAIN: Duration = Duration::from_secs(2);

/// A time past any limit.
const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

impl<'a> Watch<'a> {
    fn start(
        container: &'a Container,
        bundle: &Path,
        pid_file: &'a Path,
    ) -> Result<Self, BuildError> {
        let start = Instant::now();
        let (runc_pid, rx) = start_detached(container, bundle, pid_file)?;
        let waited = pid_file.to_owned();
        let waiter = tokio::task::spawn_blocking(move || wait_both(runc_pid, &waited));
        Ok(Self {
            container,
            pid_file,
            start,
            rx,
            waiter,
            tail: Tail::default(),
            logged: 0,
            last_output: Instant::now(),
            process_started: None,
            log_closed: None,
        })
    }

    /// Passes the log on to `sink` until the build ends or a limit stops
    /// it; kills a builder that closed its log after a grace.
    async fn until_stopped(
        &mut self,
        sink: &dyn LogSink,
        limits: RunLimits,
    ) -> Result<Stop, BuildError> {
        let mut poll = tokio::time::interval(Duration::from_millis(1));
        let start = self.start;
        loop {
            let timeout_at = limits.timeout.map_or(start + FAR, |t| start + t);
            let silent_at = limits
                .max_silent
                .map_or(start + FAR, |t| self.last_output + t);
            let closed_at = self
                .log_closed
                .map_or(start + FAR, |t| t + CLOSED_LOG_GRACE);
            tokio::select! {
                res = &mut self.waiter => {
                    let waited = res
                        .map_err(|e| InfraError::RuntimeWait(e.to_string()))?
                        .map_err(|e| InfraError::RuntimeWait(e.to_string()))?;
                    return Ok(Stop::Exited(waited));
                }
                msg = self.rx.recv(), if self.log_closed.is_none() => match msg {
                    Some((stream, data)) => {
                        self.last_output = Instant::now();
                        self.logged += data.len() as u64;
                        self.tail.push(&data);
                        sink.log(stream, &data);
                        if self.logged > limits.log_limit {
                            return Ok(Stop::LogLimit);
                        }
                    }
                    None => self.log_closed = Some(Instant::now()),
                },
                _ = poll.tick(), if self.process_started.is_none() => {
                    if self.pid_file.exists() {
                        self.process_started = Some(Instant::now());
                    }
                }
                _ = tokio::time::sleep_until(closed_at.into()), if self.log_closed.is_some() => {
                    debug!(id = %self.container.id, "the builder closed its stdout and stderr: killed, as Nix does");
                    self.container.kill();
                    // Its status (SIGKILL) is what the build ends with.
                    self.log_closed = Some(start + FAR);
                }
                _ = tokio::time::sleep_until(timeout_at.into()) => return Ok(Stop::TimedOut),
                _ = tokio::time::sleep_until(silent_at.into()) => return Ok(Stop::Silent),
            }
        }
    }

    /// A limit stopped the build: `on_stop`, the container killed, its log
    /// drained until the builder is gone; the error saying which limit.
    async fn stopped(
        &mut self,
        stop: Stop,
        on_stop: &(dyn Fn() + Sync),
        limits: RunLimits,
    ) -> BuildError {
        on_stop();
        // Killed now and again until it is gone: a kill sent before runc
        // wrote the container's state fails, and the builder would run on.
        let mut kill = tokio::time::interval(KILL_AGAIN);
        // Keep draining the log until the builder is gone, so that nothing
        // writing to it stays blocked on a full pty.
        loop {
            tokio::select! {
                _ = &mut self.waiter => break,
                _ = kill.tick() => self.container.kill(),
                Some((_, data)) = self.rx.recv() => {
                    if !matches!(stop, Stop::LogLimit) {
                        self.tail.push(&data);
                    }
                }
            }
        }
        let log_tail = self.tail.lines();
        match stop {
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
        }
    }

    /// The rest of the log, now that the build is gone.
    async fn drain(&mut self, sink: &dyn LogSink) {
        if self.log_closed.is_some() {
            return;
        }
        while let Ok(Some((stream, data))) =
            tokio::time::timeout(Duration::from_millis(200), self.rx.recv()).await
        {
            self.tail.push(&data);
            sink.log(stream, &data);
        }
    }

    /// runc failed before the build ran: its exit code is runc's, not the
    /// build's — unless what failed was the exec of the request's own
    /// command or the entry into its working dir.
    fn runc_failed(&self, status: std::process::ExitStatus, process: Process<'_>) -> BuildError {
        let said = self.tail.lines();
        if let Some(problem) = exec_failure(&said) {
            return BuildError::Builder {
                command: process.builder.to_owned(),
                problem,
            };
        }
        if let Some(problem) = cwd_failure(&said, process.cwd) {
            return BuildError::WorkingDir {
                dir: process.cwd.to_owned(),
                problem,
            };
        }
        InfraError::RuntimeFailed {
            runtime: self.container.runc.clone(),
            status,
            said,
        }
        .into()
    }
}
