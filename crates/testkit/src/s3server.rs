//! A real S3 server for tests and benchmarks: `s3s-fs`, an S3 implementation on a local directory (SigV4
//! signatures checked, multipart uploads, ranges), started on a free
//! loopback port over a temp directory, killed and its data removed when
//! the [`S3Server`] is dropped (killed too when the thread that started it
//! dies, e.g. a test killed by its timeout). `.ci/install-deps` installs it
//! (`cargo install s3s-fs`); `S3S_FS` names another binary.
//!
//! ```ignore
//! let Some(s3) = S3Server::start()? else { return }; // not installed
//! let blobs = open_blob_service(&s3.url("blobs-test")).await?;
//! ```

use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The bucket every server has.
pub const BUCKET: &str = "tob";
const ACCESS_KEY: &str = "tob-test-key";
const SECRET_KEY: &str = "tob-test-secret";

/// A running `s3s-fs` with one bucket, [`BUCKET`].
#[derive(Debug)]
pub struct S3Server {
    child: Child,
    port: u16,
    /// The server's root (removed on drop, after the server is gone).
    dir: Option<tempfile::TempDir>,
}

/// The `s3s-fs` binary: `S3S_FS`, else on `PATH`, else in `$CARGO_HOME/bin`
/// (`~/.cargo/bin`), where `.ci/install-deps` puts it.
pub fn binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("S3S_FS") {
        return Some(p.into());
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let cargo = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    let home = cargo.map(|c| c.join("bin"));
    on_path
        .into_iter()
        .chain(home)
        .map(|d| d.join("s3s-fs"))
        .find(|p| p.is_file())
}

impl S3Server {
    /// Starts a server keeping its data in a temp dir under `$TMPDIR`, or
    /// `Ok(None)` when `s3s-fs` is not installed.
    pub fn start() -> io::Result<Option<Self>> {
        Self::start_in(&std::env::temp_dir())
    }

    /// [`Self::start`] with the data in a temp dir under `parent` (a
    /// benchmark's disk).
    pub fn start_in(parent: &std::path::Path) -> io::Result<Option<Self>> {
        let Some(exe) = binary() else {
            return Ok(None);
        };
        let dir = tempfile::Builder::new()
            .prefix("tob-s3-")
            .tempdir_in(parent)?;
        std::fs::create_dir(dir.path().join(BUCKET))?;
        // A port taken between its probe and the server's bind: try again.
        let mut last = None;
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let mut cmd = Command::new(&exe);
            // SAFETY: prctl is async-signal-safe. The server dies with the
            // thread that started it (a test's or a benchmark's main
            // thread), also when that process is killed before any Drop.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let child = cmd
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
                .arg(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| {
                    io::Error::new(e.kind(), format!("starting {}: {e}", exe.display()))
                })?;
            let mut server = S3Server {
                child,
                port,
                dir: None,
            };
            match server.wait_listening(Duration::from_secs(20)) {
                Ok(()) => {
                    server.dir = Some(dir);
                    return Ok(Some(server));
                }
                Err(e) => last = Some(e), // dropping `server` kills it
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("s3s-fs did not start")))
    }

    fn wait_listening(&mut self, limit: Duration) -> io::Result<()> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait()? {
                return Err(io::Error::other(format!("s3s-fs exited: {status}")));
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(io::Error::other(format!(
            "s3s-fs did not listen on 127.0.0.1:{} within {limit:?}",
            self.port
        )))
    }

    /// `objectstore+s3://tob/PREFIX` with this server's endpoint and keys.
    pub fn url(&self, prefix: &str) -> String {
        format!(
            "objectstore+s3://{BUCKET}/{prefix}?endpoint=http://127.0.0.1:{}&allow_http=true\
             &region=us-east-1&access_key_id={ACCESS_KEY}&secret_access_key={SECRET_KEY}",
            self.port
        )
    }

    /// The CPU time the server used so far (user and system, from
    /// `/proc`; zero where it cannot be read).
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()));
        // Fields after the command's closing parenthesis; utime and stime
        // are the 12th and 13th of them, in clock ticks.
        let ticks: u64 = stat
            .ok()
            .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.to_owned()))
            .map(|rest| {
                rest.split_whitespace()
                    .skip(11)
                    .take(2)
                    .filter_map(|f| f.parse::<u64>().ok())
                    .sum()
            })
            .unwrap_or(0);
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        Duration::from_millis(ticks * 1000 / u64::try_from(hz).unwrap_or(100).max(1))
    }

    /// Where the server keeps the objects of [`BUCKET`] on disk.
    pub fn bucket_dir(&self) -> PathBuf {
        match &self.dir {
            Some(d) => d.path().join(BUCKET),
            None => PathBuf::new(),
        }
    }

    /// Stops the server at once (SIGKILL), as a crash would; its data stays
    /// until the value is dropped.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}
