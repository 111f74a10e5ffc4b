//! The escape suite: real builds whose scripts try to get out of the
//! sandbox, modelled on runc's `mask.bats` and `cwd.bats` and Nix's sandbox
//! tests. Each attempt must fail inside the build, and the build itself is
//! handled cleanly (nothing left behind). The probe script writes one line
//! per attempt to an output, which the test reads back from the castore.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;
use tvix_oci_castore::Node;
use tvix_oci_castore::import::{ImportOptions, import_path};
use tvix_oci_executor::BuildError;
use tvix_oci_executor::runc::NoLogs;
use tvix_oci_spec::proto;

/// A tiny static C program that tries to set an xattr on its argument and
/// prints the errno's name (no busybox applet does).
const SETXATTR_C: &str = r#"
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/xattr.h>
int main(int argc, char **argv) {
    if (setxattr(argv[1], "user.escape", "x", 1, 0) == 0) { puts("ESCAPED set"); return 0; }
    printf("refused %s\n", strerror(errno));
    return 1;
}
"#;

/// Builds the setxattr probe with the host's gcc, statically, into `dir`;
/// `None` (the xattr line skipped, saying why) where gcc cannot.
fn setxattr_probe(dir: &Path) -> Option<()> {
    let src = dir.join("setxattr.c");
    std::fs::write(&src, SETXATTR_C).unwrap();
    let ok = std::process::Command::new("gcc")
        .args(["-static", "-O1", "-o"])
        .arg(dir.join("setxattr"))
        .arg(&src)
        .status()
        .is_ok_and(|s| s.success());
    std::fs::remove_file(&src).unwrap();
    if !ok {
        println!("SKIPPED the xattr attempt: gcc -static is not available");
    }
    ok.then_some(())
}

/// One line per attempt: `name: refused …` or `name: ESCAPED …`, and a few
/// `name: value` observations.
fn probe_script(bb: &str, probes: &str) -> String {
    format!(
        r#"
B=/nix/store/{bb}/bin/busybox
# The fds a process of the build inherits (ls's own, reading /proc, aside):
# a leaked fd of the executor or runc would be one (CVE-2024-21626).
$B ls -l /proc/self/fd > /build/fds-long
try() {{ name=$1; shift; if out=$("$@" 2>&1); then echo "$name: ESCAPED $out"; else echo "$name: refused $out"; fi; }}
R=/build/report; : > $R
echo "kcore-bytes: $($B cat /proc/kcore 2>/dev/null | $B wc -c)" >> $R
try sysrq $B sh -c 'echo h > /proc/sysrq-trigger' >> $R
try mount $B mount -t tmpfs none /tmp >> $R
try umount $B umount /proc >> $R
try mknod $B mknod /build/null c 1 3 >> $R
try write-etc $B sh -c 'echo x > /etc/passwd' >> $R
try write-input $B sh -c 'echo x > /nix/store/{bb}/planted' >> $R
try write-root $B sh -c 'echo x > /planted' >> $R
try hardlink-input $B ln /nix/store/{bb}/bin/busybox /build/hl >> $R
$B touch /build/f
try setuid $B chmod u+s /build/f >> $R
try setgid $B chmod g+s /build/f >> $R
if [ -x {probes}/setxattr ]; then {probes}/setxattr /build/f >> $R 2>&1; fi
# Inherited fds: only 0-2 (none of the executor's, no /dev/fuse).
echo "fds: $($B awk '/->/ && $NF !~ /^\/proc\// {{print $(NF-2)}}' /build/fds-long | $B sort -n | $B tr '\n' ' ')" >> $R
echo "fuse-fds: $($B grep -c fuse /build/fds-long)" >> $R
# CVE-2024-21626: no fd of the host's to walk out through.
for n in $($B seq 0 20); do
  if [ -d /proc/self/fd/$n/../../.. ] && [ -e /proc/self/fd/$n/../../../work ]; then echo "fd-walk: ESCAPED via $n" >> $R; fi
done
echo "fd-walk: refused" >> $R
cd /proc/self/cwd/../../../../ && echo "cwd-walk: $(pwd) $($B ls | $B tr '\n' ' ')" >> $R
cd /build
echo "host-work-dir: $([ -e /proc/1/root/work ] && echo ESCAPED || echo refused)" >> $R
# No /sys (as in Nix): the interfaces from /proc/net/dev.
echo "interfaces: $($B awk -F: 'NR > 2 {{ sub(/^ +/, "", $1); print $1 }}' /proc/net/dev | $B tr '\n' ' ')" >> $R
echo "sys: $([ -e /sys/class ] && echo present || echo absent)" >> $R
try network $B wget -q -T 2 -O /dev/null http://1.1.1.1/ >> $R
echo "pid1: $($B tr '\0' '\n' < /proc/1/cmdline | $B head -n 3 | $B tail -n 2 | $B tr '\n' ' ')" >> $R
echo "processes: $($B ls /proc | $B grep -c '^[0-9]')" >> $R
"#
    )
}

fn report(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_escape_attempt_fails_inside_the_sandbox() {
    need_runtime!();
    let e = env().await;
    // The probes as an input of their own.
    let probes_dir = e.tmp.path().join("probes");
    std::fs::create_dir(&probes_dir).unwrap();
    let has_xattr_probe = setxattr_probe(&probes_dir).is_some();
    std::fs::write(probes_dir.join("keep"), b"").unwrap();
    let probes = import_path(
        e.blobs.clone(),
        &*e.dirs,
        &probes_dir,
        &ImportOptions::default(),
    )
    .await
    .unwrap();
    const PROBES: &str = "2hc1l3l7x5pbmhv9a2kyzxwsjfy4q0dg-probes";
    let script = probe_script(BB, &format!("/nix/store/{PROBES}"));
    let req = e.request(&script, &["build/report"], |p: &mut proto::BuildRequest| {
        p.inputs.push(probes.to_proto(&PROBES.try_into().unwrap()));
        p.inputs.sort_by_key(|n| n.node.as_ref().map(name));
    });
    let res = e.executor(|_| {}).build(&req, &NoLogs).await.unwrap();
    let text = String::from_utf8(file_of(&e, &res.build.outputs[0].1, "").await).unwrap();
    println!("{text}");
    assert!(!text.contains("ESCAPED"), "an attempt got out:\n{text}");
    let r = report(&text);
    let has = |k: &str, what: &str| {
        let v = r
            .get(k)
            .unwrap_or_else(|| panic!("no {k} line in:\n{text}"));
        assert!(v.contains(what), "{k}: {v:?} lacks {what:?}");
    };
    has("kcore-bytes", "0"); // masked by /dev/null
    has("sysrq", "refused");
    has("mount", "refused");
    has("umount", "refused");
    has("mknod", "Operation not permitted");
    has("write-etc", "Read-only file system");
    has("write-input", "refused");
    has("write-root", "Read-only file system");
    has("hardlink-input", "refused");
    has("setuid", "Operation not permitted"); // seccomp
    has("setgid", "Operation not permitted");
    if has_xattr_probe {
        assert!(
            text.contains("refused Operation not supported"),
            "xattr:\n{text}"
        );
    }
    has("fds", "0 1 2");
    assert_eq!(r["fds"].trim(), "0 1 2", "only stdio is inherited");
    has("fuse-fds", "0");
    has("fd-walk", "refused");
    has("cwd-walk", "/ ");
    assert!(!r["cwd-walk"].contains("work"), "{}", r["cwd-walk"]);
    has("host-work-dir", "refused");
    assert_eq!(r["interfaces"].trim(), "lo", "only loopback");
    assert_eq!(r["sys"], "absent", "no /sys, as in Nix");
    has("network", "refused");
    has("pid1", "sh -c");
    let procs: u32 = r["processes"].trim().parse().unwrap();
    assert!(procs <= 6, "the build sees {procs} processes: only its own");
    e.assert_clean();
}

fn name(n: &tvix_oci_castore::proto::node::Node) -> Vec<u8> {
    use tvix_oci_castore::proto::node::Node as N;
    match n {
        N::Directory(d) => d.name.to_vec(),
        N::File(f) => f.name.to_vec(),
        N::Symlink(s) => s.name.to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hard_linking_an_input_into_the_store_is_refused_or_caught() {
    need_runtime!();
    let e = env().await;
    let out = format!("/nix/store/{OUT}");
    // Through the overlay a link would copy the input up: either the kernel
    // refuses it (protected_hardlinks), or the executor sees the input
    // modified. Never a stored output sharing an inode with an input.
    let script = format!(
        "mkdir {out}; ln /nix/store/{BB}/bin/busybox {out}/hl 2>/dev/null; echo done > {out}/f"
    );
    let req = e.request(&script, &[&out[1..]], |_| {});
    match e.executor(|_| {}).build(&req, &NoLogs).await {
        Ok(res) => {
            let Node::Directory { digest, .. } = &res.build.outputs[0].1 else {
                panic!("the output is not a directory")
            };
            let dir = e.dirs.get(digest).await.unwrap().unwrap();
            let names: Vec<_> = dir.nodes().map(|(n, _)| n.to_string()).collect();
            assert_eq!(names, ["f"], "the link was refused");
        }
        Err(BuildError::ModifiedInput(name)) => assert_eq!(name, BB),
        Err(other) => panic!("{other}"),
    }
    e.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_process_left_running_cannot_swap_an_output_for_a_symlink() {
    need_runtime!();
    let e = env().await;
    // The build backgrounds a process that replaces its output with a
    // symlink to / a moment later, and exits. The pid namespace dies with
    // the build, so the swap never happens; the result is what the build
    // left, read from the castore.
    let script = format!(
        "mkdir /build/out; echo kept > /build/out/f; \
         (/nix/store/{BB}/bin/busybox sleep 0.3; rm -rf /build/out; ln -s / /build/out) & exit 0"
    );
    let req = e.request(&script, &["build/out"], |_| {});
    let res = e.executor(|_| {}).build(&req, &NoLogs).await.unwrap();
    assert!(
        matches!(res.build.outputs[0].1, Node::Directory { .. }),
        "{:?}",
        res.build.outputs[0].1
    );
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(file_of(&e, &res.build.outputs[0].1, "f").await, b"kept\n");
    e.assert_clean();
}

/// A writable tmpfs mounted by the test on `dir`, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("mode=1777,size=1m"),
        )
        .unwrap();
        Self(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn ro_paths(p: &mut proto::BuildRequest, paths: &[&str]) {
    let mut v: Vec<String> = paths.iter().map(|s| s.to_string()).collect();
    v.sort();
    p.constraints.as_mut().unwrap().available_ro_paths = v;
}

/// Whether the host has a mount at exactly `p`.
fn mounted_at(p: &Path) -> bool {
    tvix_oci_fuse::mountinfo::mounts()
        .unwrap()
        .iter()
        .any(|m| m.mount_point == p)
}

#[tokio::test(flavor = "multi_thread")]
async fn read_only_paths_the_operator_did_not_allow_are_refused_before_anything_is_mounted() {
    need_runtime!();
    let e = env().await;
    let req = e.request("true", &["build/x"], |p| ro_paths(p, &["/etc"]));
    for allowed in [vec![], vec!["/dev/null".into(), "/etc/ssh".into()]] {
        let err = e
            .executor(|c| c.allowed_ro_paths = allowed)
            .build(&req, &NoLogs)
            .await
            .unwrap_err();
        assert!(matches!(err, BuildError::NotAllowed(_)), "{err:?}");
        assert!(!err.is_build_failure());
        assert_eq!(
            tvix_oci_executor::grpc::status_of(BuildError::NotAllowed(err.to_string())).code(),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            err.to_string(),
            "constraints.available_ro_paths: /etc is not allowed on this builder (the operator allows paths with --allow-ro-path)"
        );
        // Never made: no bundle dir at all.
        assert!(
            !e.tmp
                .path()
                .join("bundles")
                .read_dir()
                .is_ok_and(|mut d| d.next().is_some())
        );
        e.assert_clean();
    }
    // Allowing a device allows nothing above it.
    let req = e.request("true", &["build/x"], |p| ro_paths(p, &["/dev/shm"]));
    let err = e
        .executor(|c| c.allowed_ro_paths = vec!["/dev/shm/x".into(), "/dev".into()])
        .build(&req, &NoLogs)
        .await
        .unwrap_err();
    assert!(matches!(err, BuildError::NotAllowed(_)), "{err:?}");
    assert!(err.to_string().contains("/dev/shm is not allowed"), "{err}");
    e.assert_clean();
    // Allowed, but above the bundle root: other builds' bundles are there.
    let above = e.tmp.path().canonicalize().unwrap();
    let req = e.request("true", &["build/x"], |p| {
        ro_paths(p, &[above.to_str().unwrap()])
    });
    let err = e
        .executor(|c| c.allowed_ro_paths = vec![above.clone()])
        .build(&req, &NoLogs)
        .await
        .unwrap_err();
    assert!(matches!(err, BuildError::Host(_)), "{err:?}");
    assert!(err.to_string().contains("bundle root"), "{err}");
    e.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_allowed_path_is_read_only_all_the_way_down_and_a_device_stays_usable() {
    need_runtime!();
    let e = env().await;
    let d = e.tmp.path().canonicalize().unwrap().join("allowed");
    let sub = d.join("sub");
    let _tmpfs = Tmpfs::mount(&sub);
    std::fs::write(sub.join("host-file"), b"host\n").unwrap();
    let ds = d.to_str().unwrap();
    // A device node of the test's own (the zero device, as /dev/kvm would
    // be): runc binds /dev/zero itself over ours in a user namespace.
    let dev = e.tmp.path().canonicalize().unwrap().join("kvm-standin");
    let made = std::process::Command::new("mknod")
        .arg(&dev)
        .args(["c", "1", "5"])
        .status()
        .unwrap();
    assert!(made.success(), "mknod {}", dev.display());
    std::fs::set_permissions(&dev, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let devs = dev.to_str().unwrap();
    let script = format!(
        r#"
B=/nix/store/{BB}/bin/busybox
R=/build/report; : > $R
try() {{ name=$1; shift; if out=$("$@" 2>&1); then echo "$name: ESCAPED $out"; else echo "$name: refused $out"; fi; }}
try write-top $B sh -c 'echo x > {ds}/x' >> $R
try write-sub $B sh -c 'echo x > {ds}/sub/x' >> $R
echo "read-sub: $($B cat {ds}/sub/host-file)" >> $R
echo "zero-bytes: $($B head -c 4 {devs} | $B wc -c)" >> $R
$B awk '$5=="{ds}" || $5=="{ds}/sub" || $5=="{devs}" {{print "opts " $5 ": " $6}}' /proc/self/mountinfo >> $R
"#
    );
    let req = e.request(&script, &["build/report"], |p| ro_paths(p, &[ds, devs]));
    let exec = e.executor(|c| c.allowed_ro_paths = vec![d.clone(), dev.clone()]);
    let res = exec.build(&req, &NoLogs).await.unwrap();
    let text = String::from_utf8(file_of(&e, &res.build.outputs[0].1, "").await).unwrap();
    println!("{text}");
    assert!(!text.contains("ESCAPED"), "a write got through:\n{text}");
    let r = report(&text);
    assert!(r["write-top"].contains("Read-only file system"), "{text}");
    assert!(r["write-sub"].contains("Read-only file system"), "{text}");
    assert!(!sub.join("x").exists(), "the build wrote onto the host");
    assert_eq!(r["read-sub"], "host");
    assert_eq!(
        r["zero-bytes"].trim(),
        "4",
        "the allowed device is readable"
    );
    let opts = |k: &str| -> Vec<&str> {
        r.get(&format!("opts {k}"))
            .unwrap_or_else(|| panic!("no mount at {k}:\n{text}"))
            .split(',')
            .collect()
    };
    for dir in [ds.to_owned(), format!("{ds}/sub")] {
        let o = opts(&dir);
        assert!(
            o.contains(&"ro") && o.contains(&"nosuid") && o.contains(&"nodev"),
            "{dir}: {o:?}"
        );
    }
    let o = opts(devs);
    assert!(o.contains(&"ro") && !o.contains(&"nodev"), "{devs}: {o:?}");
    // The clones are gone, the host's own mount is untouched.
    e.assert_clean();
    assert!(
        mounted_at(&sub),
        "the host's mount at {} went away",
        sub.display()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_build_and_a_killed_executor_leave_no_read_only_clone() {
    need_runtime!();
    let e = env().await;
    let d = e.tmp.path().canonicalize().unwrap().join("allowed");
    let sub = d.join("sub");
    let _tmpfs = Tmpfs::mount(&sub);
    let req = e.request(
        &format!("echo started; /nix/store/{BB}/bin/busybox sleep 60"),
        &["build/x"],
        |p| ro_paths(p, &[d.to_str().unwrap()]),
    );
    let exec = std::sync::Arc::new(e.executor(|c| c.allowed_ro_paths = vec![d.clone()]));
    let started = std::sync::Arc::new(Collect::default());
    let (ex, rq, st) = (exec.clone(), req.clone(), started.clone());
    let task = tokio::spawn(async move { ex.build(&rq, &*st).await });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !String::from_utf8_lossy(&started.0.lock().unwrap()).contains("started") {
        assert!(
            std::time::Instant::now() < deadline,
            "the build never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let root = e.tmp.path().join("bundles");
    let clones: Vec<_> = tvix_oci_fuse::mountinfo::mounts_below(&root)
        .unwrap()
        .into_iter()
        .filter(|m| m.mount_point.to_string_lossy().contains("/ro/0"))
        .collect();
    assert!(
        clones.len() >= 2,
        "no recursive clone (top and sub) while running: {clones:?}"
    );
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    e.assert_clean();
    assert!(mounted_at(&sub));

    // What a SIGKILLed executor leaves: a bundle of a dead pid holding a
    // clone of the tree; the next executor detaches it as a whole.
    let stale = root.join("tob-4194305-0-00");
    std::fs::create_dir_all(stale.join("ro/0")).unwrap();
    nix::mount::mount(
        Some(&d),
        &stale.join("ro/0"),
        None::<&str>,
        nix::mount::MsFlags::MS_BIND | nix::mount::MsFlags::MS_REC,
        None::<&str>,
    )
    .unwrap();
    assert!(mounted_at(&stale.join("ro/0/sub")));
    let _ = e.executor(|_| {});
    e.assert_clean();
    assert!(mounted_at(&sub), "the stale cleanup took the host's mount");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pids_limit_holds_and_is_on_by_default() {
    need_runtime!();
    let e = env().await;
    assert_eq!(e.config().spec.resources.pids, Some(4096));
    let script = format!(
        "i=0; while [ $i -lt 100 ]; do /nix/store/{BB}/bin/busybox sleep 1 & i=$((i+1)); done; wait; echo x > /build/out"
    );
    let req = e.request(&script, &["build/out"], |_| {});
    let logs = Collect::default();
    let _ = e
        .executor(|c| c.spec.resources.pids = Some(64))
        .build(&req, &logs)
        .await;
    let log = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(
        log.contains("fork"),
        "no fork failed under a pids limit of 64: {log:?}"
    );
    e.assert_clean();
}

/// The pids of the host's processes running `busybox sleep SECONDS`.
fn pids_sleeping(seconds: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
            (args.get(1) == Some(&&b"sleep"[..]) && args.get(2) == Some(&seconds.as_bytes()))
                .then_some(pid)
        })
        .collect()
}

/// The real, effective, saved and filesystem ids on `key` (`Uid:`, `Gid:`)
/// of `/proc/PID/status`.
fn status_ids(pid: u32, key: &str) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(key)).unwrap();
    line[key.len()..]
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect()
}

/// Runs busybox `args` on the host as uid 1000:100 (no supplementary
/// groups): the host account a build used to run as.
fn as_host_user_1000(args: &[&str]) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    std::process::Command::new("/bin/busybox")
        .args(args)
        .uid(1000)
        .gid(100)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_user_with_the_build_users_uid_cannot_reach_into_a_running_build() {
    need_runtime!();
    let e = env().await;
    // The build writes its output, records its ids, then sleeps (under a
    // marker the host finds it by) until the test ends the sleep.
    let marker = format!("100.{}", std::process::id());
    let script = format!(
        "mkdir /build/out; echo built > /build/out/f; id > /build/out/id; \
         /nix/store/{BB}/bin/busybox sleep {marker}; exit 0"
    );
    let req = e.request(&script, &["build/out"], |_| {});
    let exec = e.executor(|_| {});
    let attack = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let pid = loop {
            if let Some(&pid) = pids_sleeping(&marker).first() {
                break pid;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the build never slept"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        // Host uid 1000 can neither write into the output nor open the
        // root; the build's processes run as a host uid of the pool.
        let checked = std::panic::catch_unwind(|| {
            let out = format!("/proc/{pid}/root/build/out/f");
            let write = as_host_user_1000(&["sh", "-c", &format!("echo tampered > {out}")]);
            let list = as_host_user_1000(&["ls", &format!("/proc/{pid}/root/")]);
            (
                write,
                list,
                status_ids(pid, "Uid:"),
                status_ids(pid, "Gid:"),
            )
        });
        // Ends the sleep whatever happened, so the build ends.
        let _ = std::process::Command::new("/bin/busybox")
            .args(["kill", &pid.to_string()])
            .status();
        checked.unwrap_or_else(|p| std::panic::resume_unwind(p))
    });
    let (res, attack) = tokio::join!(exec.build(&req, &NoLogs), attack);
    let (write, list, uids, gids) = attack.unwrap();
    let res = res.unwrap();
    for (what, o) in [("writing the output", &write), ("opening the root", &list)] {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success()
                && (err.contains("Permission denied") || err.contains("not permitted")),
            "{what} through /proc/PID/root as uid 1000: {:?} {err}",
            o.status
        );
    }
    use tvix_oci_executor::idpool::{DEFAULT_SLOTS, DEFAULT_START, SLOT_IDS};
    let pool = DEFAULT_START..DEFAULT_START + DEFAULT_SLOTS * SLOT_IDS;
    assert!(
        pool.contains(&uids[0]),
        "the build ran as host uid {uids:?}"
    );
    let base = uids[0] - 1000;
    assert_eq!(uids, [base + 1000; 4], "uids");
    assert_eq!(gids, [base + 100; 4], "gids");
    assert_eq!(file_of(&e, &res.build.outputs[0].1, "f").await, b"built\n");
    let id = String::from_utf8(file_of(&e, &res.build.outputs[0].1, "id").await).unwrap();
    assert!(id.starts_with("uid=1000(nixbld) gid=100(nixbld)"), "{id}");
    e.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn tmp_is_on_disk_in_the_bundle_not_in_ram() {
    need_runtime!();
    let e = env().await;
    const SIZE: u64 = 200 << 20;
    let script = format!(
        "B=/nix/store/{BB}/bin/busybox; $B head -c {SIZE} /dev/zero > /tmp/big; \
         $B stat -f -c %T /tmp > /build/fs; $B stat -c '%u %a' /tmp >> /build/fs; echo written; $B sleep 3"
    );
    let req = e.request(&script, &["build/fs"], |_| {});
    let exec = e.executor(|_| {});
    let logs = Collect::default();
    let root = e.tmp.path().join("bundles");
    let watch = async {
        // The file is in the bundle's tmp/ on the host while the build runs.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            for b in std::fs::read_dir(&root).into_iter().flatten().flatten() {
                if std::fs::metadata(b.path().join("tmp/big")).is_ok_and(|m| m.len() == SIZE) {
                    return true;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        false
    };
    let (res, seen) = tokio::join!(exec.build(&req, &logs), watch);
    let res = res.unwrap();
    assert!(seen, "/tmp/big never appeared under the bundle");
    let text = String::from_utf8(file_of(&e, &res.build.outputs[0].1, "").await).unwrap();
    let mut lines = text.lines();
    assert_ne!(lines.next(), Some("tmpfs"), "/tmp is a tmpfs:\n{text}");
    assert_eq!(
        lines.next(),
        Some("0 1777"),
        "/tmp is root's and 1777, as in Nix:\n{text}"
    );
    e.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_build_id_pool_holding_a_host_account_refuses_to_build() {
    need_runtime!();
    let e = env().await;
    let etc = e.tmp.path().join("etc");
    std::fs::create_dir(&etc).unwrap();
    std::fs::write(etc.join("passwd"), "foo:x:872415300:100::/:/bin/sh\n").unwrap();
    let exec = e.executor(|c| c.id_pool.etc = etc.clone());
    // What a server checks at start, before any build.
    let early = exec.check_host().unwrap_err();
    let req = e.request("true", &[], |_| {});
    let err = exec.build(&req, &NoLogs).await.unwrap_err();
    assert_eq!(early.to_string(), err.to_string());
    assert_eq!(
        err.to_string(),
        format!(
            "this host cannot run the build: uid 872415300 of user foo in {} is inside the build id pool 872415232..880803840; choose another with --id-pool",
            etc.join("passwd").display()
        )
    );
    assert!(!err.is_build_failure());
    e.assert_clean();
}
