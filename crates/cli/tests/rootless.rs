//! Rootless builds, run for real by a user this test creates: first what is
//! missing is named, then a build with outputs in `build` and `nix/store`
//! succeeds as that user, then an output the executor may not read fails as
//! the build's fault; nothing is left behind. Needs root (to create the
//! user and open up /dev/fuse and /etc/fuse.conf, restored afterwards),
//! useradd, runuser and newuidmap; skips saying why elsewhere.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{busybox_tree, can_build};

const USER: &str = "tob-rootless-test";

fn skip_reason() -> Option<String> {
    if let Some(why) = can_build() {
        return Some(why);
    }
    for bin in ["useradd", "usermod", "runuser", "newuidmap", "unshare"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {bin}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!("{bin} is not installed"));
        }
    }
    None
}

/// The test user's uid, created (with a sub-id range) if missing.
fn test_user() -> u32 {
    let id = |u: &str| Command::new("id").args(["-u", u]).output().unwrap();
    if !id(USER).status.success() {
        let ok = Command::new("useradd")
            .args(["--no-create-home", "--shell", "/bin/sh", USER])
            .status()
            .unwrap();
        assert!(ok.success(), "useradd failed");
    }
    let subuid = std::fs::read_to_string("/etc/subuid").unwrap_or_default();
    if !subuid.lines().any(|l| l.starts_with(&format!("{USER}:"))) {
        let ok = Command::new("usermod")
            .args([
                "--add-subuids",
                "500000-565535",
                "--add-subgids",
                "500000-565535",
                USER,
            ])
            .status()
            .unwrap();
        assert!(ok.success(), "usermod failed");
    }
    String::from_utf8(id(USER).stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Host settings changed for the test, put back when dropped.
struct HostSettings {
    fuse_conf: Option<String>,
    dev_fuse_mode: u32,
}

impl HostSettings {
    fn save() -> Self {
        HostSettings {
            fuse_conf: std::fs::read_to_string("/etc/fuse.conf").ok(),
            dev_fuse_mode: std::fs::metadata("/dev/fuse").unwrap().permissions().mode() & 0o7777,
        }
    }

    /// What rootless builds need of the host, as a Debian machine with
    /// udev has it (/dev/fuse 0666) plus user_allow_other.
    fn open_up(&self) {
        let conf = self.fuse_conf.clone().unwrap_or_default();
        std::fs::write("/etc/fuse.conf", format!("{conf}\nuser_allow_other\n")).unwrap();
        std::fs::set_permissions("/dev/fuse", std::fs::Permissions::from_mode(0o666)).unwrap();
    }
}

impl Drop for HostSettings {
    fn drop(&mut self) {
        match &self.fuse_conf {
            Some(c) => std::fs::write("/etc/fuse.conf", c).unwrap(),
            None => {
                let _ = std::fs::remove_file("/etc/fuse.conf");
            }
        }
        let mode = std::fs::Permissions::from_mode(self.dev_fuse_mode);
        std::fs::set_permissions("/dev/fuse", mode).unwrap();
    }
}

/// A dir the test user owns.
fn user_dir(path: PathBuf, uid: u32) -> PathBuf {
    std::fs::create_dir_all(&path).unwrap();
    std::os::unix::fs::chown(&path, Some(uid), Some(uid)).unwrap();
    path
}

/// `tvix-oci-build run` as the test user, with a build by flags.
fn run_as_user(bin: &Path, home: &Path, bundles: &Path, bb: &Path, script: &str) -> Output {
    Command::new("runuser")
        .args(["-u", USER, "--", "env", "-i"])
        .arg(format!("HOME={}", home.display()))
        .arg(format!("XDG_DATA_HOME={}/data", home.display()))
        .arg("PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        .arg(bin)
        .arg("run")
        .arg("--bundle-root")
        .arg(bundles)
        .arg("--input")
        .arg(format!("busybox={}", bb.display()))
        .args(["--output", "build/id", "--output", "nix/store/out", "--"])
        .args(["/nix/store/busybox/bin/busybox", "sh", "-c", script])
        .current_dir(home)
        .output()
        .unwrap()
}

fn assert_nothing_left(bundles: &Path) {
    let left: Vec<_> = std::fs::read_dir(bundles)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n != ".runc")
        .collect();
    assert!(left.is_empty(), "bundles left: {left:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(bundles.to_str().unwrap()), "mounts left");
    let list = Command::new("runc")
        .arg("--root")
        .arg(bundles.join(".runc"))
        .args(["list", "-q"])
        .output()
        .unwrap();
    assert!(list.stdout.is_empty(), "containers left: {:?}", list);
}

#[test]
fn a_user_builds_rootless() {
    if let Some(why) = skip_reason() {
        println!("SKIPPED: {why}");
        return;
    }
    let uid = test_user();
    let settings = HostSettings::save();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // The binary where the test user can run it.
    let bin = tmp.path().join("tvix-oci-build");
    std::fs::copy(env!("CARGO_BIN_EXE_tvix-oci-build"), &bin).unwrap();
    let home = user_dir(tmp.path().join("home"), uid);
    let bundles = user_dir(tmp.path().join("bundles"), uid);
    let bb = busybox_tree(tmp.path());
    let script =
        "id -u > /build/id; id -g >> /build/id; mkdir /nix/store/out; echo made > /nix/store/out/f";

    // Without user_allow_other: one sentence saying what is missing.
    let conf = settings.fuse_conf.clone().unwrap_or_default();
    let without: String = conf
        .lines()
        .filter(|l| l.trim() != "user_allow_other")
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write("/etc/fuse.conf", without).unwrap();
    let out = run_as_user(&bin, &home, &bundles, &bb, script);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("rootless") && err.contains("user_allow_other in /etc/fuse.conf"),
        "{err}"
    );

    settings.open_up();
    let out = run_as_user(&bin, &home, &bundles, &bb, script);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["build"]["outputs"][0]["name"], "id");
    assert_eq!(v["build"]["outputs"][1]["name"], "out");
    // The build ran as the build user, 1000:100, inside its namespace.
    let id = v["build"]["outputs"][0]["file"]["digest"].as_str().unwrap();
    let cat = Command::new(&bin)
        .args(["cat", id])
        .env("XDG_DATA_HOME", home.join("data"))
        .output()
        .unwrap();
    // root reads the user's store: the same embedded store files.
    assert_eq!(
        String::from_utf8_lossy(&cat.stdout),
        "1000\n100\n",
        "{cat:?}"
    );
    assert_nothing_left(&bundles);

    // An output the build left unreadable to others: the build's fault,
    // said so; and what it wrote, owned by its sub-ids, is still removed.
    let locked = "echo x > /build/id; mkdir /nix/store/out; echo y > /nix/store/out/f; chmod 700 /nix/store/out";
    let out = run_as_user(&bin, &home, &bundles, &bb, locked);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("readable by others"), "{err}");
    assert_nothing_left(&bundles);
    drop(settings);
}
