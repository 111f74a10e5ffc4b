//! Helpers shared by the binary's tests.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

pub mod http;
pub mod watch;

/// The binary under test: this build's, or `TVIX_OCI_BUILD` (to measure a
/// release build with the same tests, as the benchmarks take it).
pub fn bin(data: &Path) -> Command {
    let exe = std::env::var_os("TVIX_OCI_BUILD")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_tvix-oci-build").into());
    let mut c = Command::new(exe);
    c.env("XDG_DATA_HOME", data)
        .env_remove("BLOB_SERVICE_ADDR")
        .env_remove("DIRECTORY_SERVICE_ADDR");
    c
}

/// Why builds cannot run here, if they cannot (what
/// `require!(root, fuse, runc, busybox)` checks), for a test that does
/// more than build.
pub fn can_build() -> Option<String> {
    use tvix_oci_testkit::Need::*;
    tvix_oci_testkit::missing(&[Root, Fuse, Runc, Busybox])
}

#[allow(unused_imports)]
pub use tvix_oci_testkit::skip_or_fail;

/// A dir holding bin/busybox, the build's toolchain.
pub fn busybox_tree(tmp: &Path) -> std::path::PathBuf {
    let t = tmp.join("bb");
    std::fs::create_dir_all(t.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", t.join("bin/busybox")).unwrap();
    t
}

/// `run` with the store under `data` and `bb` (see [`busybox_tree`]) as
/// the input `busybox`; the caller adds the rest.
pub fn run_with_busybox(data: &Path, bb: &Path) -> Command {
    let mut c = bin(data);
    c.arg("run")
        .arg("--input")
        .arg(format!("busybox={}", bb.display()));
    c
}

/// Fails when anything of a build is left under `bundles`: a bundle
/// directory, a mount, or a runc container.
pub fn assert_nothing_left(bundles: &Path) {
    let left = leftovers(bundles);
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// What builds left under `bundles`: bundle directories, mounts, runc
/// containers.
pub fn leftovers(bundles: &Path) -> Vec<String> {
    let mut left: Vec<String> = std::fs::read_dir(bundles)
        .map(|rd| {
            rd.flatten()
                .map(|e| format!("bundle {}", e.path().display()))
                .collect()
        })
        .unwrap_or_default();
    let root = bundles.to_str().unwrap();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    left.extend(
        mounts
            .lines()
            .filter(|l| l.contains(root))
            .map(|l| format!("mount {l}")),
    );
    let list = Command::new("runc")
        .args(["list", "--format", "json"])
        .output()
        .unwrap();
    if String::from_utf8_lossy(&list.stdout).contains(root) {
        left.push(format!(
            "a container: {}",
            String::from_utf8_lossy(&list.stdout)
        ));
    }
    left
}

/// The cgroup directories named after build `id`, anywhere under
/// /sys/fs/cgroup.
pub fn cgroups_of(id: &str) -> Vec<String> {
    let out = Command::new("find")
        .args(["/sys/fs/cgroup", "-maxdepth", "5", "-type", "d", "-name"])
        .arg(format!("*{id}*"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// `import PATH` into the store under `data`; the digest it prints.
pub fn import_digest(data: &Path, path: &Path) -> String {
    let out = bin(data).arg("import").arg(path).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .nth(2)
        .unwrap()
        .to_owned()
}

/// A mount point a test mounts on through the CLI: whatever is still
/// mounted there when the test ends (a `mount` it SIGKILLed, a failed
/// assertion before the unmount) is detached, so a failing test leaves no
/// FUSE mount behind. The test's own checks of the unmount come first.
#[derive(Debug)]
pub struct MountPoint(pub std::path::PathBuf);

impl MountPoint {
    /// Makes the empty directory `path` to mount on.
    pub fn new(path: std::path::PathBuf) -> Self {
        std::fs::create_dir(&path).unwrap();
        Self(path)
    }
}

impl Drop for MountPoint {
    fn drop(&mut self) {
        // Fails (EINVAL) when nothing is mounted there: nothing to do.
        let _ = tvix_oci_sys::mount::detach(&self.0);
    }
}

/// Starts `serve` on a free loopback port with the store under `data`,
/// bundles under `bundles` and `extra` flags; the child and the URL it
/// says it listens on.
pub fn spawn_serve(data: &Path, bundles: &Path, extra: &[&str]) -> (std::process::Child, String) {
    spawn_serve_with_log(data, bundles, extra, std::process::Stdio::inherit())
}

/// [`spawn_serve`] with the server's log (its stderr) going to `log`.
pub fn spawn_serve_with_log(
    data: &Path,
    bundles: &Path,
    extra: &[&str],
    log: std::process::Stdio,
) -> (std::process::Child, String) {
    let (child, mut lines) = spawn_serve_lines(data, bundles, extra, log, 1);
    (child, lines.remove(0))
}

/// [`spawn_serve_with_log`], reading the first `count` lines it prints
/// (the store URL, then with `--http` the page's): the child and the URLs
/// they name.
pub fn spawn_serve_lines(
    data: &Path,
    bundles: &Path,
    extra: &[&str],
    log: std::process::Stdio,
    count: usize,
) -> (std::process::Child, Vec<String>) {
    use std::io::BufRead;
    let mut child = bin(data)
        .args(["serve", "--listen", "127.0.0.1:0", "--bundle-root"])
        .arg(bundles)
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let urls = (0..count)
        .map(|_| {
            let mut line = String::new();
            out.read_line(&mut line).unwrap();
            let url = line
                .trim()
                .strip_prefix("listening on ")
                .or_else(|| line.trim().strip_prefix("watching on "));
            url.unwrap_or_else(|| panic!("unexpected line {line:?}"))
                .to_owned()
        })
        .collect();
    (child, urls)
}

/// A `serve` process on a free port, killed and reaped when dropped.
pub struct Serve {
    pub child: std::process::Child,
    /// Its store URL (`grpc+http://127.0.0.1:PORT`).
    pub url: String,
}

impl Serve {
    /// `serve` with its embedded store under `data`, its bundles under
    /// `bundles`, and `extra` flags.
    pub fn start(data: &Path, bundles: &Path, extra: &[&str]) -> Serve {
        let (child, url) = spawn_serve(data, bundles, extra);
        Serve { child, url }
    }

    /// [`Serve::start`] with the page watching it (`--http` on a free
    /// loopback port); the server and the page's URL (`http://IP:PORT`).
    pub fn start_watched(data: &Path, bundles: &Path, extra: &[&str]) -> (Serve, String) {
        let extra = [&["--http", "127.0.0.1:0"], extra].concat();
        let inherit = std::process::Stdio::inherit();
        let (child, mut urls) = spawn_serve_lines(data, bundles, &extra, inherit, 2);
        let web = urls.pop().unwrap();
        let url = urls.pop().unwrap();
        (Serve { child, url }, web)
    }

    /// Its address as a tonic client takes it.
    pub fn http(&self) -> String {
        self.url.replace("grpc+http://", "http://")
    }

    /// Its castore, as a client opens it.
    pub async fn stores(
        &self,
    ) -> (
        std::sync::Arc<dyn tvix_oci_castore::blobservice::BlobService>,
        std::sync::Arc<dyn tvix_oci_castore::directoryservice::DirectoryService>,
    ) {
        (
            tvix_oci_castore::open_blob_service(&self.url)
                .await
                .unwrap(),
            tvix_oci_castore::open_directory_service(&self.url)
                .await
                .unwrap(),
        )
    }

    /// A tvix.build.v1 client of it.
    pub async fn builds(
        &self,
    ) -> tvix_oci_spec::proto::build_service_client::BuildServiceClient<tonic::transport::Channel>
    {
        tvix_oci_spec::proto::build_service_client::BuildServiceClient::connect(self.http())
            .await
            .unwrap()
    }

    /// Uploads a busybox tree (see [`busybox_tree`]) through its castore
    /// services, as a tvix client uploads its inputs; its node.
    pub async fn upload_busybox(&self, tmp: &Path) -> tvix_oci_castore::Node {
        let (blobs, dirs) = self.stores().await;
        let bb = busybox_tree(tmp);
        tvix_oci_castore::import::import_path(blobs, &*dirs, &bb, &Default::default())
            .await
            .unwrap()
    }
}

impl Drop for Serve {
    /// SIGTERM first, so a build still running (a test that failed
    /// mid-build) is cleaned up by the server itself.
    fn drop(&mut self) {
        tvix_oci_testkit::stop(&mut self.child, std::time::Duration::from_secs(10));
    }
}

/// A Nix-like request running `script` with busybox (its node, see
/// [`Serve::upload_busybox`]) as its one input at `nix/store/busybox`.
pub fn busybox_request(
    busybox: &tvix_oci_castore::Node,
    outputs: &[&str],
    script: &str,
) -> tvix_oci_spec::proto::BuildRequest {
    tvix_oci_testkit::ShRequest::new(busybox, script)
        .store_writable()
        .outputs(outputs)
        .needles(&["busybox"])
        .proto()
}
