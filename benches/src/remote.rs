//! A remote store as users run one: `tvix-oci-build serve` in a process of
//! its own, on an embedded store of its own, reached over loopback TCP —
//! directly, or through [`DelayProxy`], which holds every byte back for
//! half a round trip in each direction (what `tc netem` would do, without
//! slowing the host's whole loopback device for everything else).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use tvix_oci_castore::blobservice::BlobService;
use tvix_oci_castore::directoryservice::DirectoryService;
use tvix_oci_castore::{Node, StoreError, open_blob_service, open_directory_service};

use crate::copy;

/// The `tvix-oci-build` binary of this build profile: `$TVIX_OCI_BUILD`
/// if set, else built now with the cargo that runs this benchmark (a
/// no-op when it is up to date), next to this program's own directory.
pub fn cli_binary() -> io::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("TVIX_OCI_BUILD") {
        return Ok(bin.into());
    }
    // This program is target/<profile dir>/deps/<name>-<hash>.
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| io::Error::other(format!("{}: not in a cargo target dir", exe.display())))?;
    let dir_name = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("release");
    let profile = if dir_name == "debug" { "dev" } else { dir_name };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target_dir = profile_dir.parent().unwrap_or(profile_dir);
    let status = Command::new(&cargo)
        .args([
            "build",
            "--locked",
            "-p",
            "tvix-oci-build",
            "--profile",
            profile,
        ])
        .arg("--target-dir")
        .arg(target_dir)
        .status()?;
    if !status.success() {
        return Err(io::Error::other(format!(
            "building tvix-oci-build ({profile}) failed: {status}; \
             or set TVIX_OCI_BUILD to a built binary"
        )));
    }
    Ok(profile_dir.join("tvix-oci-build"))
}

/// `tvix-oci-build serve` on an embedded store under a directory; stopped
/// (SIGTERM, then waited for) when dropped.
#[derive(Debug)]
pub struct Served {
    child: Child,
    addr: SocketAddr,
    /// Where its page is served (`--http`), if it is.
    web: Option<SocketAddr>,
}

impl Served {
    /// Starts `bin serve` with its store under `dir` and waits until it
    /// says where it listens.
    pub fn start(bin: &Path, dir: &Path) -> io::Result<Self> {
        Self::start_with(bin, dir, &[])
    }

    /// [`Served::start`] with `extra` flags of `serve`; with `--http`, it
    /// also waits until it says where its page is.
    pub fn start_with(bin: &Path, dir: &Path, extra: &[&str]) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let d = dir.display();
        let mut cmd = Command::new(bin);
        // SAFETY: prctl is async-signal-safe; nothing else runs between
        // fork and exec.
        unsafe {
            // Ends with this program, even when it is killed.
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .arg("--blob-service-addr")
            .arg(format!("objects://{d}/blobs"))
            .arg("--directory-service-addr")
            .arg(format!("redb://{d}/dirs.redb"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let Some(out) = child.stdout.take() else {
            return Err(io::Error::other("serve: no stdout"));
        };
        let mut line = String::new();
        let mut out = BufReader::new(out);
        out.read_line(&mut line)?;
        let mut web_line = String::new();
        if extra.contains(&"--http") {
            out.read_line(&mut web_line)?;
        }
        let web = web_line
            .trim()
            .strip_prefix("watching on http://")
            .and_then(|a| a.parse().ok());
        // Whatever it prints later goes on to ours (a closed pipe would
        // fail its writes).
        thread::spawn(move || io::copy(&mut out, &mut io::stdout()));
        let addr = line
            .trim()
            .strip_prefix("listening on grpc+http://")
            .and_then(|a| a.parse().ok());
        match addr {
            Some(addr) => Ok(Self { child, addr, web }),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                Err(io::Error::other(format!(
                    "{} serve did not say where it listens (its first line: {line:?})",
                    bin.display()
                )))
            }
        }
    }

    /// Its URL, reached directly.
    pub fn url(&self) -> String {
        format!("grpc+http://{}", self.addr)
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where its page is served, when started with `--http`.
    pub fn web(&self) -> Option<SocketAddr> {
        self.web
    }

    /// Copies `nodes`, and everything below them, from the stores `from`
    /// into the served one.
    pub async fn upload<'n>(
        &self,
        nodes: impl IntoIterator<Item = &'n Node>,
        from: (&Arc<dyn BlobService>, &dyn DirectoryService),
    ) -> Result<(), Box<dyn std::error::Error>> {
        let (blobs, dirs) = stores_at(&self.url()).await?;
        for node in nodes {
            copy::upload(node, from, (&blobs, &*dirs)).await?;
        }
        Ok(())
    }
}

/// The blob and directory stores behind one gRPC URL.
pub async fn stores_at(
    url: &str,
) -> Result<(Arc<dyn BlobService>, Arc<dyn DirectoryService>), StoreError> {
    Ok((
        open_blob_service(url).await?,
        open_directory_service(url).await?,
    ))
}

impl Drop for Served {
    fn drop(&mut self) {
        // SAFETY: kill has no memory preconditions; the pid is our child's,
        // not yet waited for.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// A way to `served` with `rtt` added to every round trip: the URL to
/// open stores at, and the proxy to keep while they are used (none for a
/// zero `rtt`: then the URL is the server's own).
pub fn route(served: &Served, rtt: Duration) -> io::Result<(String, Option<DelayProxy>)> {
    if rtt.is_zero() {
        return Ok((served.url(), None));
    }
    let proxy = DelayProxy::start(served.addr(), rtt)?;
    Ok((proxy.url(), Some(proxy)))
}

/// A TCP proxy on loopback in front of `target` that delivers every byte
/// half of `rtt` after it arrived, in each direction, so a request and its
/// answer take `rtt` longer. Threads and a sleep, not tokio timers: those
/// round up to the next millisecond. Stops accepting when dropped; open
/// connections end with the server or the client.
#[derive(Debug)]
pub struct DelayProxy {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl DelayProxy {
    pub fn start(target: SocketAddr, rtt: Duration) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                delayed_pipe(client, server, rtt / 2);
                delayed_pipe(s2, c2, rtt / 2);
            }
        });
        Ok(Self { addr, stop })
    }

    /// The URL of the store behind it.
    pub fn url(&self) -> String {
        format!("grpc+http://{}", self.addr)
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accepting thread so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Copies `from` to `to`, each read delivered `delay` after it arrived
/// (reading goes on meanwhile, so the delay adds latency, not a cap on
/// throughput).
fn delayed_pipe(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    thread::spawn(move || {
        let mut buf = vec![0u8; 256 << 10];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    });
    thread::spawn(move || {
        for (due, data) in rx {
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            }
            if to.write_all(&data).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
