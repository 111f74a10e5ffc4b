//! [`Farm`]: a build farm on one machine, as docs/deploy.md describes one —
//! `serve` builders sharing one castore in object storage, behind nginx as
//! their gRPC load balancer (`grpc_pass`, least connections) — for the
//! tests and benchmarks of scale-out. Every process dies with the farm
//! (and with the thread that started it); each builder has its own data
//! dir (blob cache) and bundle root, and logs to a file the tests read.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One `serve` of the farm.
#[derive(Debug)]
pub struct Builder {
    child: Option<Child>,
    /// `127.0.0.1:PORT`, what nginx forwards to.
    pub addr: String,
    /// Its log (stderr), appended to across restarts.
    pub log: PathBuf,
    pub data: PathBuf,
    pub bundles: PathBuf,
}

/// nginx balancing gRPC over the builders.
#[derive(Debug)]
struct Nginx {
    child: Child,
}

/// Builders behind nginx, sharing the store at `store`.
#[derive(Debug)]
pub struct Farm {
    pub builders: Vec<Builder>,
    nginx: Option<Nginx>,
    /// `grpc+http://127.0.0.1:PORT`: nginx, the farm's one address.
    pub url: String,
    cli: PathBuf,
    store: String,
    extra: Vec<String>,
}

/// A process that dies with the thread that started it.
fn command(exe: &Path) -> Command {
    let mut cmd = Command::new(exe);
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_listening(child: &mut Child, port: u16, what: &str) -> io::Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if let Some(status) = child.try_wait()? {
            return Err(io::Error::other(format!("{what} exited: {status}")));
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(io::Error::other(format!("{what} did not listen on {port}")))
}

impl Farm {
    /// `n` builders of `cli` (`tvix-oci-build`) over the store at `store`
    /// (blobs and directories), each with `extra` flags (e.g. `--jobs 2`),
    /// under `dir`, behind nginx; `Ok(None)` when nginx is not installed.
    pub fn start(
        cli: &Path,
        dir: &Path,
        store: &str,
        n: usize,
        extra: &[&str],
    ) -> io::Result<Option<Farm>> {
        let Some(nginx) = which("nginx") else {
            return Ok(None);
        };
        let mut farm = Farm {
            builders: Vec::new(),
            nginx: None,
            url: String::new(),
            cli: cli.to_owned(),
            store: store.to_owned(),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
        };
        for i in 0..n {
            let b = Builder {
                child: None,
                addr: String::new(),
                log: dir.join(format!("builder-{i}.log")),
                data: dir.join(format!("builder-{i}")),
                bundles: dir.join(format!("bundles-{i}")),
            };
            farm.builders.push(b);
            farm.restart(i)?;
        }
        let port = free_port()?;
        let conf = dir.join("nginx");
        std::fs::create_dir_all(&conf)?;
        std::fs::write(
            conf.join("nginx.conf"),
            nginx_conf(&conf, port, &farm.builders),
        )?;
        let mut child = command(&nginx)
            .arg("-p")
            .arg(&conf)
            .arg("-c")
            .arg(conf.join("nginx.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        let up = wait_listening(&mut child, port, "nginx");
        farm.nginx = Some(Nginx { child });
        up?;
        farm.url = format!("grpc+http://127.0.0.1:{port}");
        Ok(Some(farm))
    }

    /// Kills builder `i` at once (SIGKILL), mid-build or not.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.builders[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// (Re)starts builder `i` on its own data dir and bundle root, at the
    /// address it had (nginx's upstream), once it listens.
    pub fn restart(&mut self, i: usize) -> io::Result<()> {
        self.kill(i);
        let b = &mut self.builders[i];
        let port = match b.addr.rsplit_once(':') {
            Some((_, p)) => p.parse().map_err(io::Error::other)?,
            None => free_port()?,
        };
        let log = File::options().create(true).append(true).open(&b.log)?;
        let mut child = command(&self.cli)
            .env("XDG_DATA_HOME", &b.data)
            .env_remove("BLOB_SERVICE_ADDR")
            .env_remove("DIRECTORY_SERVICE_ADDR")
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--bundle-root")
            .arg(&b.bundles)
            .args(["--blob-service-addr", &self.store])
            .args(["--directory-service-addr", &self.store])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let up = wait_listening(&mut child, port, "serve");
        b.child = Some(child);
        b.addr = format!("127.0.0.1:{port}");
        up
    }

    /// The builds builder `i` finished so far, by its log.
    pub fn finished(&self, i: usize) -> usize {
        self.log_lines(i, "build finished")
    }

    /// Lines of builder `i`'s log containing `what`.
    pub fn log_lines(&self, i: usize, what: &str) -> usize {
        File::open(&self.builders[i].log)
            .map(|f| {
                BufReader::new(f)
                    .lines()
                    .map_while(Result::ok)
                    .filter(|l| l.contains(what))
                    .count()
            })
            .unwrap_or(0)
    }

    /// Builder `i`'s own address, `grpc+http://127.0.0.1:PORT`.
    pub fn builder_url(&self, i: usize) -> String {
        format!("grpc+http://{}", self.builders[i].addr)
    }
}

impl Drop for Farm {
    fn drop(&mut self) {
        if let Some(mut n) = self.nginx.take() {
            let _ = n.child.kill();
            let _ = n.child.wait();
        }
        for i in 0..self.builders.len() {
            // A builder killed and not restarted (a test that failed before
            // it did) comes back once, which removes what it left.
            if self.builders[i].child.is_none() && !self.builders[i].addr.is_empty() {
                let _ = self.restart(i);
            }
            // SIGTERM first: serve cancels its builds, cleans up and exits.
            if let Some(mut c) = self.builders[i].child.take() {
                crate::stop(&mut c, Duration::from_secs(10));
            }
        }
    }
}

/// nginx's configuration: gRPC over cleartext HTTP/2 on `port`, each call
/// to the builder with the fewest open ones; a builder that fails a
/// connection is skipped for 2 s. Calls may be long (a build streams its
/// log for as long as it runs) and requests large.
fn nginx_conf(prefix: &Path, port: u16, builders: &[Builder]) -> String {
    let servers: String = builders
        .iter()
        .map(|b| format!("        server {} max_fails=1 fail_timeout=2s;\n", b.addr))
        .collect();
    let p = prefix.display();
    format!(
        "daemon off;
master_process off;
pid {p}/nginx.pid;
error_log {p}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {p}/body;
    proxy_temp_path {p}/proxy;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;
    upstream builders {{
        least_conn;
{servers}    }}
    server {{
        listen 127.0.0.1:{port} http2;
        client_max_body_size 0;
        grpc_read_timeout 1h;
        grpc_send_timeout 1h;
        location / {{
            grpc_pass grpc://builders;
        }}
    }}
}}
"
    )
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
