//! Unit tests of the build id pool, on temp files standing in for `/etc`,
//! `/proc` and the host-wide lock directory.
#![allow(clippy::unwrap_used)]

use super::*;

struct Fake {
    tmp: tempfile::TempDir,
}

impl Fake {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        for d in ["etc", "proc", "pool"] {
            std::fs::create_dir(tmp.path().join(d)).unwrap();
        }
        Self { tmp }
    }
    fn config(&self, slots: u32) -> IdPoolConfig {
        IdPoolConfig {
            start: DEFAULT_START,
            count: slots * SLOT_IDS,
            dir: self.tmp.path().join("pool"),
            etc: self.tmp.path().join("etc"),
            proc: self.tmp.path().join("proc"),
        }
    }
    fn etc(&self, name: &str, text: &str) {
        std::fs::write(self.tmp.path().join("etc").join(name), text).unwrap();
    }
    /// A process running as `uid` in the fake /proc.
    fn process(&self, pid: u32, uid: u32) {
        let d = self.tmp.path().join("proc").join(pid.to_string());
        std::fs::create_dir(&d).unwrap();
        std::fs::write(
            d.join("status"),
            format!("Name:\tsh\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\nGid:\t0\t0\t0\t0\n"),
        )
        .unwrap();
    }
}

fn as_root() -> bool {
    // SAFETY: no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        println!("SKIPPED: a slot's directory is chowned to its group, which needs root");
    }
    root
}

#[test]
fn a_clash_names_the_file_the_account_and_the_id() {
    let f = Fake::new();
    // Ordinary accounts, no sub-id files: the pool opens.
    f.etc(
        "passwd",
        "root:x:0:0::/root:/bin/sh\nalice:x:1000:100::/home/alice:/bin/sh\n",
    );
    f.etc("group", "root:x:0:\nusers:x:100:\n");
    IdPool::open(f.config(128)).unwrap();

    let cases = [
        (
            "passwd",
            "root:x:0:0::/:/bin/sh\nfoo:x:872415300:100::/:/bin/sh\n",
            "uid 872415300 of user foo",
        ),
        (
            "passwd",
            "bar:x:1001:880803839::/:/bin/sh\n",
            "gid 880803839 of user bar",
        ),
        (
            "group",
            "users:x:100:\nbig:x:872415232:\n",
            "gid 872415232 of group big",
        ),
        (
            "subuid",
            "alice:100000:65536\nbob:872000000:500000\n",
            "sub-uid range 872000000..872500000 of user bob",
        ),
        (
            "subgid",
            "carol:880803839:10\n",
            "sub-gid range 880803839..880803849 of user carol",
        ),
    ];
    for (file, text, what) in cases {
        let f = Fake::new();
        f.etc(file, text);
        let e = IdPool::open(f.config(128)).unwrap_err().to_string();
        let p = f.tmp.path().join("etc").join(file).display().to_string();
        assert_eq!(
            e,
            format!(
                "{what} in {p} is inside the build id pool 872415232..880803840; choose another with --id-pool"
            )
        );
    }
    // Just outside the pool, on both sides: no clash.
    f.etc("passwd", "a:x:872415231:880803840::/:/bin/sh\n");
    f.etc("subuid", "a:872315232:100000\nb:880803840:65536\n");
    IdPool::open(f.config(128)).unwrap();
}

#[test]
fn ranges_are_checked() {
    assert_eq!(
        parse_range("872415232:8388608").unwrap(),
        (872415232, 8388608)
    );
    for bad in [
        "",
        "1",
        "1:0",
        "1:65535",
        "x:65536",
        "4294901760:65536",
        "1:-65536",
    ] {
        let e = parse_range(bad).unwrap_err().to_string();
        assert!(e.contains(&format!("pool {bad} is not START:COUNT")), "{e}");
    }
    assert!(parse_range("4294901759:65536").is_ok());
}

#[test]
fn concurrent_builds_get_disjoint_slots_and_a_freed_slot_is_reused() {
    if !as_root() {
        return;
    }
    let f = Fake::new();
    let pool = IdPool::open(f.config(4)).unwrap();
    let a = pool.take().unwrap();
    let b = pool.take().unwrap();
    assert_eq!(a.base(), DEFAULT_START);
    assert_eq!(b.base(), DEFAULT_START + SLOT_IDS);
    // A second pool on the same directory (another executor) skips both.
    let other = IdPool::open(f.config(4)).unwrap();
    let c = other.take().unwrap();
    assert_eq!(c.base(), DEFAULT_START + 2 * SLOT_IDS);
    assert_eq!(
        a.mappings().uid,
        [IdMapping {
            container_id: 0,
            host_id: DEFAULT_START,
            size: SLOT_IDS
        }]
    );
    std::fs::create_dir(a.rootfs()).unwrap();
    let root = a.rootfs();
    drop(a);
    assert!(!root.exists(), "the skeleton went with the slot");
    assert_eq!(other.take().unwrap().base(), DEFAULT_START);
}

#[test]
fn a_slot_with_a_process_still_running_in_it_is_skipped() {
    if !as_root() {
        return;
    }
    let f = Fake::new();
    // A process left of an earlier build, as its build user.
    f.process(4242, DEFAULT_START + 1000);
    f.process(7, 0);
    std::fs::create_dir(f.tmp.path().join("proc/self")).unwrap();
    let pool = IdPool::open(f.config(2)).unwrap();
    let s = pool.take().unwrap();
    assert_eq!(s.base(), DEFAULT_START + SLOT_IDS);
    let e = pool.take().unwrap_err().to_string();
    assert_eq!(
        e,
        "all 2 slots of the build id pool are busy (held by running builds, or used by processes still running); wait, or give a larger --id-pool"
    );
    // Once it is gone, the slot is free again.
    std::fs::remove_dir_all(f.tmp.path().join("proc/4242")).unwrap();
    assert_eq!(pool.take().unwrap().base(), DEFAULT_START);
}

#[test]
fn a_skeleton_left_by_a_killed_executor_is_removed_when_the_slot_is_taken() {
    if !as_root() {
        return;
    }
    let f = Fake::new();
    let left = f.tmp.path().join(format!("pool/{DEFAULT_START}/root/etc"));
    std::fs::create_dir_all(&left).unwrap();
    std::fs::write(left.join("passwd"), "x").unwrap();
    let pool = IdPool::open(f.config(1)).unwrap();
    let s = pool.take().unwrap();
    assert!(!left.exists());
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(s.rootfs().parent().unwrap()).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o777),
        (0, DEFAULT_START, 0o710)
    );
}

#[test]
fn the_real_proc_lists_this_process() {
    // SAFETY: no preconditions.
    let uid = unsafe { libc::getuid() };
    assert!(ids_in_use(Path::new("/proc")).contains(&uid));
}
