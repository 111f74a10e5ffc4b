//! `cat`, `export` and `mount` against a store that lies (the castore's
//! `lying` server): each lie is the store's fault (exit 3), named by the
//! digest, and leaves nothing: no byte printed by `cat`, nothing at the
//! export destination, a reader of a hung store through `mount` dies at
//! SIGKILL, and a SIGKILLed `mount`'s private cache is removed by the next
//! mount whatever its TMPDIR.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use std::time::{Duration, Instant};

use tvix_oci_castore::lying::{Lie, LyingServer, LyingStore};
use tvix_oci_castore::{B3Digest, Directory, Node, PathComponent};

const SIZE: usize = 300_001;

fn pc(s: &str) -> PathComponent {
    PathComponent::try_from(s).unwrap()
}

/// A store with a directory holding one file per lie, and `badsize`, an
/// entry declaring 5 for a directory of size 2. Returns the server, the
/// root digest and each file's blob digest.
fn lying_store() -> (LyingServer, B3Digest, Vec<(&'static str, B3Digest)>) {
    let mut store = LyingStore::default();
    let mut root = Directory::new();
    let mut blobs = Vec::new();
    for (i, (name, lie)) in [
        ("endless", Lie::Endless),
        ("longer", Lie::Longer(1)),
        ("shorter", Lie::Shorter(1)),
        ("corrupt", Lie::Corrupt),
        ("hang", Lie::HangAfter(1000)),
    ]
    .into_iter()
    .enumerate()
    {
        let data: Vec<u8> = (0..SIZE).map(|j| ((i * 7 + j) % 251) as u8).collect();
        let d = store.blob(data, lie);
        root.add(
            pc(name),
            Node::File {
                digest: d,
                size: SIZE as u64,
                executable: false,
            },
        )
        .unwrap();
        blobs.push((name, d));
    }
    let x = store.blob(&b"x"[..], Lie::None);
    let mut sub = Directory::new();
    sub.add(
        pc("x"),
        Node::File {
            digest: x,
            size: 1,
            executable: false,
        },
    )
    .unwrap();
    let sub = store.dir(sub);
    blobs.push(("badsize", sub));
    root.add(
        pc("badsize"),
        Node::Directory {
            digest: sub,
            size: 5,
        },
    )
    .unwrap();
    let root_digest = store.dir(root);
    (LyingServer::start(store), root_digest, blobs)
}

fn tool(data: &Path, url: &str) -> Command {
    let mut c = common::bin(data);
    c.env("BLOB_SERVICE_ADDR", url)
        .env("DIRECTORY_SERVICE_ADDR", url);
    c
}

/// Runs `c`, killing it after `limit` (a lie that is not caught runs long).
fn run_bounded(mut c: Command, limit: Duration) -> Output {
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    // Count stdout without keeping it: an endless cat would be gigabytes.
    let counter = std::thread::spawn(move || {
        let mut n = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(k) = stdout.read(&mut buf) {
            if k == 0 {
                break;
            }
            n += k as u64;
        }
        n
    });
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut out = child.wait_with_output().unwrap();
    let n = counter.join().unwrap();
    out.stdout = n.to_string().into_bytes();
    out
}

#[test]
fn cat_of_each_lie_exits_3_naming_the_digest_and_prints_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, root, blobs) = lying_store();
    for (name, digest) in blobs.iter().filter(|(n, _)| *n != "hang") {
        let mut c = tool(tmp.path(), server.url());
        let path = if *name == "badsize" {
            format!("{root}/badsize/x")
        } else {
            format!("{root}/{name}")
        };
        c.args(["cat", &path]);
        let out = run_bounded(c, Duration::from_secs(60));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{name}: {err}");
        assert!(err.contains(&digest.to_hex()), "{name}: {err}");
        if *name != "badsize" {
            assert!(err.contains("300001"), "{name}: {err}");
        }
        assert_eq!(out.stdout, b"0", "{name}: bytes were printed");
    }
}

#[test]
fn export_of_each_lie_exits_3_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, root, blobs) = lying_store();
    let out_dir = tmp.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    for (name, digest) in blobs.iter().filter(|(n, _)| *n != "hang") {
        let dest = out_dir.join(name);
        let mut c = tool(tmp.path(), server.url());
        c.args(["export", &format!("{root}/{name}")]).arg(&dest);
        let out = run_bounded(c, Duration::from_secs(60));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{name}: {err}");
        assert!(err.contains(&digest.to_hex()), "{name}: {err}");
        let left: Vec<PathBuf> = std::fs::read_dir(&out_dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "{name}: left {left:?}");
    }
}

/// `mount in=ROOT MNT` with `TMPDIR=tmpdir`, once it says it is mounted;
/// its stderr goes to `log`.
fn start_mount(
    data: &Path,
    url: &str,
    root: &B3Digest,
    mnt: &Path,
    tmpdir: &Path,
    log: &Path,
) -> Child {
    let child = tool(data, url)
        .env("TMPDIR", tmpdir)
        .args(["mount", &format!("in={root}")])
        .arg(mnt)
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !std::fs::read_to_string(log).unwrap().contains("mounted at") {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never mounted: {}",
            std::fs::read_to_string(log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

fn ends_within(child: &mut Child, limit: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if child.try_wait().unwrap().is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// The largest file below `dir`.
fn largest(dir: &Path) -> u64 {
    let mut max = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let m = e.metadata().unwrap();
        max = max.max(if m.is_dir() {
            largest(&e.path())
        } else {
            m.len()
        });
    }
    max
}

/// The private blob caches of process `pid`.
fn caches_of(pid: u32) -> Vec<PathBuf> {
    let root = tvix_oci_fuse::private_cache_root();
    std::fs::read_dir(root)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .starts_with(&format!("tvix-oci-blob-cache-{pid}-"))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn mount_of_a_hung_store_lets_a_sigkilled_reader_die_and_a_killed_mounts_cache_is_swept() {
    tvix_oci_testkit::require!(root, fuse);
    let tmp = tempfile::tempdir().unwrap();
    let (server, root, _) = lying_store();
    let mount_point = common::MountPoint::new(tmp.path().join("mnt"));
    let mnt = mount_point.0.clone();
    let (t1, t2) = (tmp.path().join("t1"), tmp.path().join("t2"));
    std::fs::create_dir(&t1).unwrap();
    std::fs::create_dir(&t2).unwrap();
    let mut first = start_mount(tmp.path(), server.url(), &root, &mnt, &t1, &t1.join("log"));

    // A reader blocked on the hung blob dies at SIGKILL.
    let mut reader = Command::new("cat")
        .arg(mnt.join("in/hang"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert!(reader.try_wait().unwrap().is_none(), "cat did not block");
    reader.kill().unwrap();
    assert!(
        ends_within(&mut reader, Duration::from_secs(5)),
        "the SIGKILLed reader still waits on the store"
    );
    // A lying blob through the mount: EIO, and its cache holds no more
    // than declared.
    let err = std::fs::read(mnt.join("in/endless")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let caches = caches_of(first.id());
    assert_eq!(caches.len(), 1, "{caches:?}");
    let biggest = largest(&caches[0]);
    assert!(biggest <= SIZE as u64, "{biggest}");

    // SIGKILL the mount: its cache stays, until the next mount (another
    // TMPDIR) sweeps it and detaches the dead mount.
    let first_pid = first.id();
    first.kill().unwrap();
    first.wait().unwrap();
    assert_eq!(caches_of(first_pid).len(), 1);
    let log2 = t2.join("log");
    let mut second = start_mount(tmp.path(), server.url(), &root, &mnt, &t2, &log2);
    assert!(
        caches_of(first_pid).is_empty(),
        "the dead mount's cache is left"
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(second.id() as i32, libc::SIGINT) };
    assert!(ends_within(&mut second, Duration::from_secs(20)));
    let log = std::fs::read_to_string(&log2).unwrap();
    assert_eq!(second.wait().unwrap().code(), Some(0), "{log}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let left: Vec<&str> = mounts
        .lines()
        .filter(|l| l.contains(mnt.to_str().unwrap()))
        .collect();
    assert!(left.is_empty(), "still mounted: {left:?}");
    assert!(caches_of(second.id()).is_empty(), "its own cache is left");
}
