//! Real builds end to end: runc, FUSE and overlayfs, with a static busybox
//! imported into the castore as the toolchain. Needs root, /dev/fuse, runc
//! and /bin/busybox (CI installs them); skips saying why elsewhere. After
//! every build: no container, no mount, no bundle left.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tvix_oci_castore::Node;
use tvix_oci_castore::blobservice::read_to_end;
use tvix_oci_executor::ingest::IngestError;
use tvix_oci_executor::runc::{LogSink, LogStream, NoLogs, Phase};
use tvix_oci_executor::{BuildError, Executor, ExecutorConfig};
use tvix_oci_spec::BuildRequest;
use tvix_oci_spec::proto::build_request as br;

#[tokio::test(flavor = "multi_thread")]
async fn outputs_and_needles() {
    need_runtime!();
    let e = env().await;
    let out = format!("nix/store/{OUT}");
    let script = format!(
        "set -e; mkdir -p $out/bin /build/result; echo \"I need /nix/store/{DATA} and am $out\" > $out/bin/tool; \
         chmod +x $out/bin/tool; ln -s /nix/store/{BB}/bin/busybox $out/bin/sh; echo built > /build/result/log; \
         echo done building"
    );
    let req = e.request(&script, &["build/result", &out], |_| {});
    let logs = Collect::default();
    let res = e.executor(|_| {}).build(&req, &logs).await.unwrap();
    assert!(String::from_utf8_lossy(&logs.0.lock().unwrap()).contains("done building"));
    // Two outputs, in request order, named by their last component.
    let names: Vec<String> = res
        .build
        .outputs
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    assert_eq!(names, vec!["result".to_owned(), OUT.to_owned()]);
    assert_eq!(
        file_of(&e, &res.build.outputs[0].1, "log").await,
        b"built\n"
    );
    let tool = file_of(&e, &res.build.outputs[1].1, "bin/tool").await;
    assert_eq!(
        String::from_utf8_lossy(&tool),
        format!("I need /nix/store/{DATA} and am /nix/store/{OUT}\n")
    );
    // Needles: OUT (the tool names $out) and DATA in the tool, BB in the
    // symlink; the output's own name (OUT too) is not part of its NAR.
    assert_eq!(res.build.outputs_needles, vec![vec![], vec![0, 1, 2]]);
    assert_eq!(res.outputs[1].needle_paths[&0], PathBuf::from("bin/tool"));
    assert_eq!(res.outputs[1].needle_paths[&1], PathBuf::from("bin/sh"));
    assert!(res.outputs[1].nar_size > 0);
    // The phases in order, and the accounting consistent with them.
    assert_eq!(
        *logs.1.lock().unwrap(),
        [Phase::Mounting, Phase::Running, Phase::Ingesting]
    );
    let a = &res.accounting;
    let first = a.to_first_instruction.expect("the process started");
    assert!(first > Duration::ZERO && first < a.wall, "{a:?}");
    assert!(a.run_wall < a.wall, "{a:?}");
    e.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn cpu_and_peak_memory_come_from_the_builds_cgroup() {
    need_runtime!();
    if let Some(why) = no_cgroups() {
        println!("SKIPPED: {why}");
        return;
    }
    let e = env().await;
    // 64 MiB in the build's /tmp (a tmpfs, charged to its cgroup), and
    // some CPU time.
    let script = "dd if=/dev/zero of=/tmp/x bs=1M count=64 2>/dev/null; i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; echo ok > /build/out";
    let req = e.request(script, &["build/out"], |_| {});
    let res = e.executor(|_| {}).build(&req, &NoLogs).await.unwrap();
    let a = &res.accounting;
    let peak = a.peak_memory.expect("a cgroup peak");
    assert!(
        peak >= 64 << 20,
        "peak {peak} below the 64 MiB written: {a:?}"
    );
    assert!(a.cpu >= Duration::from_millis(10), "{a:?}");
    e.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_build_returns_code_and_log_tail() {
    need_runtime!();
    let e = env().await;
    let req = e.request(
        "echo about to fail; echo on stderr >&2; exit 3",
        &["build/x"],
        |_| {},
    );
    let err = e.executor(|_| {}).build(&req, &NoLogs).await.unwrap_err();
    match &err {
        BuildError::Failed { code, log_tail } => {
            assert_eq!(*code, 3);
            assert!(
                log_tail.contains("about to fail") && log_tail.contains("on stderr"),
                "{log_tail}"
            );
        }
        other => panic!("{other}"),
    }
    assert!(err.is_build_failure());
    e.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn forgotten_output_is_named() {
    need_runtime!();
    let e = env().await;
    let req = e.request("true", &["build/never"], |_| {});
    let err = e.executor(|_| {}).build(&req, &NoLogs).await.unwrap_err();
    assert!(
        matches!(err, BuildError::Output(IngestError::Missing(ref o)) if o == "build/never"),
        "{err}"
    );
    e.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn timeout_kills_the_build() {
    need_runtime!();
    let e = env().await;
    let req = e.request(
        &format!("echo sleeping; /nix/store/{BB}/bin/busybox sleep 30"),
        &["build/x"],
        |_| {},
    );
    let t = std::time::Instant::now();
    let err = e
        .executor(|c| c.timeout = Some(Duration::from_secs(2)))
        .build(&req, &NoLogs)
        .await
        .unwrap_err();
    assert!(matches!(err, BuildError::TimedOut { .. }), "{err}");
    assert!(t.elapsed() < Duration::from_secs(20));
    e.assert_clean();
}

/// As in Nix's sandbox, the store dir is root's, 1775 and sticky: the
/// build creates its outputs there but cannot delete, rename or write an
/// input (EPERM, EACCES), and goes on. (A modification that got through
/// anyway would fail the build as "build modified input NAME".)
#[tokio::test(flavor = "multi_thread")]
async fn inputs_cannot_be_deleted_renamed_or_written_as_in_nix() {
    need_runtime!();
    let e = env().await;
    let script = format!(
        "mkdir -p $out; cd /nix/store; \
         rm -f {DATA} 2>> $out/err; echo rm $? >> $out/rc; \
         mv {DATA} renamed 2>> $out/err; echo mv $? >> $out/rc; \
         mv {BB} renamed 2>> $out/err; echo mv-dir $? >> $out/rc; \
         echo x >> {DATA} 2>> $out/err; echo write $? >> $out/rc; \
         stat -c '%a %u %g' /nix/store > $out/mode"
    );
    let req = e.request(&script, &[&format!("nix/store/{OUT}")], |_| {});
    let res = e.executor(|_| {}).build(&req, &NoLogs).await.unwrap();
    let out = &res.build.outputs[0].1;
    let rc = String::from_utf8(file_of(&e, out, "rc").await).unwrap();
    assert_eq!(rc, "rm 1\nmv 1\nmv-dir 1\nwrite 1\n");
    let err = String::from_utf8(file_of(&e, out, "err").await).unwrap();
    assert_eq!(
        err.matches("Operation not permitted").count(),
        3,
        "delete and renames: EPERM, as in Nix:\n{err}"
    );
    assert_eq!(file_of(&e, out, "mode").await, b"1775 0 100\n");
    e.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn fifo_fails_and_setuid_is_refused_inside() {
    need_runtime!();
    let e = env().await;
    let script = "mkdir -p /build/o; echo hi > /build/o/f; chmod u+s /build/o/f 2>/build/o/chmod-err; echo $? > /build/o/chmod-rc";
    let req = e.request(script, &["build/o"], |_| {});
    let res = e.executor(|_| {}).build(&req, &NoLogs).await.unwrap();
    assert_eq!(
        file_of(&e, &res.build.outputs[0].1, "chmod-rc").await,
        b"1\n"
    );
    let err = String::from_utf8_lossy(&file_of(&e, &res.build.outputs[0].1, "chmod-err").await)
        .into_owned();
    assert!(err.contains("Operation not permitted"), "{err}");

    let req = e.request(
        "mkdir -p /build/o; mkfifo /build/o/pipe",
        &["build/o"],
        |_| {},
    );
    let err = e.executor(|_| {}).build(&req, &NoLogs).await.unwrap_err();
    assert!(
        matches!(
            err,
            BuildError::Output(IngestError::Special { kind: "FIFO", .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("pipe"), "{err}");
    e.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelled_build_leaves_nothing() {
    need_runtime!();
    let e = env().await;
    let req = e.request(
        &format!("echo started; /nix/store/{BB}/bin/busybox sleep 60"),
        &["build/x"],
        |_| {},
    );
    let exec = Arc::new(e.executor(|_| {}));
    let started = Arc::new(Collect::default());
    let (ex, rq, st) = (exec.clone(), req.clone(), started.clone());
    let task = tokio::spawn(async move { ex.build(&rq, &*st).await });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !String::from_utf8_lossy(&started.0.lock().unwrap()).contains("started") {
        assert!(
            std::time::Instant::now() < deadline,
            "the build never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    e.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn sh_additional_files_and_no_network() {
    need_runtime!();
    let e = env().await;
    let script = "cat /build/extra.txt > /build/o; awk -F: 'NR > 2 { sub(/^ +/, \"\", $1); print $1 }' /proc/net/dev >> /build/o; test -x /bin/sh && echo has-sh >> /build/o";
    let req = e.request(script, &["build/o"], |p| {
        p.constraints.as_mut().unwrap().provide_bin_sh = true;
        p.additional_files = vec![br::AdditionalFile {
            path: "build/extra.txt".into(),
            contents: "extra\n".into(),
        }];
        p.command_args = vec!["/bin/sh".into(), "-c".into(), script.into()];
    });
    let res = e.executor(|_| {}).build(&req, &NoLogs).await.unwrap();
    let Node::File { digest, .. } = &res.build.outputs[0].1 else {
        panic!()
    };
    let text = read_to_end(&*e.blobs, digest).await.unwrap().unwrap();
    assert_eq!(String::from_utf8_lossy(&text), "extra\nlo\nhas-sh\n");
    e.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn four_builds_at_once() {
    need_runtime!();
    let e = env().await;
    let exec = e.executor(|c| c.concurrency = 4);
    let reqs: Vec<BuildRequest> = (0..4)
        .map(|i| e.request(&format!("echo {i} > /build/o"), &["build/o"], |_| {}))
        .collect();
    let results = futures::future::join_all(reqs.iter().map(|r| exec.build(r, &NoLogs))).await;
    for (i, r) in results.into_iter().enumerate() {
        let r = r.unwrap();
        let Node::File { digest, .. } = &r.build.outputs[0].1 else {
            panic!()
        };
        assert_eq!(
            read_to_end(&*e.blobs, digest).await.unwrap().unwrap(),
            format!("{i}\n").as_bytes()
        );
    }
    e.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn silence_and_log_limits_kill_the_build() {
    need_runtime!();
    let e = env().await;
    let req = e.request(
        &format!("echo one line; /nix/store/{BB}/bin/busybox sleep 30"),
        &["build/x"],
        |_| {},
    );
    let err = e
        .executor(|c| c.max_silent_time = Some(Duration::from_secs(1)))
        .build(&req, &NoLogs)
        .await
        .unwrap_err();
    assert!(matches!(err, BuildError::Silent { .. }), "{err}");
    assert!(err.to_string().contains("one line"), "{err}");

    let req = e.request(
        "while true; do echo aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa; done",
        &["build/x"],
        |_| {},
    );
    let err = e
        .executor(|c| c.log_limit = 100_000)
        .build(&req, &NoLogs)
        .await
        .unwrap_err();
    assert!(
        matches!(err, BuildError::LogLimit { limit: 100_000 }),
        "{err}"
    );
    e.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_build_killed_by_a_signal_says_which() {
    need_runtime!();
    let e = env().await;
    // The builder's own status, as Nix reports it: a shell passing on its
    // child's death by SIGKILL exits with code 137, and that is what it
    // is. (The shell is the namespace's init, which SIGKILL from inside
    // cannot kill.)
    let req = e.request(
        &format!("/nix/store/{BB}/bin/busybox sh -c 'kill -9 $$'; exit $?"),
        &["build/x"],
        |_| {},
    );
    let err = e.executor(|_| {}).build(&req, &NoLogs).await.unwrap_err();
    assert!(matches!(err, BuildError::Failed { code: 137, .. }), "{err}");
    // A builder that closes its stdout and stderr and goes on is killed,
    // as Nix kills it ("failed due to signal 9 (Killed)"), at once.
    let req = e.request(
        &format!("echo closing; exec >&- 2>&-; /nix/store/{BB}/bin/busybox sleep 30"),
        &["build/x"],
        |_| {},
    );
    let t = std::time::Instant::now();
    let logs = Collect::default();
    let err = e.executor(|_| {}).build(&req, &logs).await.unwrap_err();
    assert!(
        matches!(err, BuildError::Signaled { signal: 9, .. }),
        "{err}"
    );
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    let log = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(log.contains("closing"), "{log}");
    e.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn host_constraints_are_checked_before_anything_is_mounted() {
    need_runtime!();
    let e = env().await;
    let req = e.request("true", &["build/x"], |p| {
        p.constraints.as_mut().unwrap().system = "riscv64-linux".into()
    });
    let err = e.executor(|_| {}).build(&req, &NoLogs).await.unwrap_err();
    assert!(
        matches!(err, BuildError::Host(_)) && !err.is_build_failure(),
        "{err}"
    );
    assert!(err.to_string().contains("riscv64-linux"), "{err}");
    let req = e.request("true", &["build/x"], |p| {
        p.constraints.as_mut().unwrap().available_ro_paths = vec!["/dev/nonexistent-device".into()]
    });
    let err = e.executor(|_| {}).build(&req, &NoLogs).await.unwrap_err();
    assert!(err.to_string().contains("/dev/nonexistent-device"), "{err}");
    let req = e.request("true", &["build/x"], |_| {});
    let err = e
        .executor(|c| c.runtime = "/nonexistent/runc".into())
        .build(&req, &NoLogs)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/runc"), "{err}");
    e.assert_clean();
}

/// Run by `a_killed_executor_is_cleaned_up_by_the_next` in a child process,
/// which it then kills mid-build.
#[test]
#[ignore = "helper run in a child process"]
fn child_builds_until_killed() {
    let Some(root) = std::env::var_os("TVIX_OCI_CHILD_BUNDLES") else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let e = env().await;
        let exec = Executor::new(
            ExecutorConfig {
                bundle_root: PathBuf::from(&root),
                ..ExecutorConfig::probed()
            },
            e.blobs.clone(),
            e.dirs.clone(),
        );
        let req = e.request(
            &format!("echo started; /nix/store/{BB}/bin/busybox sleep 60"),
            &["build/x"],
            |_| {},
        );
        struct Print;
        impl LogSink for Print {
            fn log(&self, _s: LogStream, d: &[u8]) {
                use std::io::Write;
                let _ = std::io::stdout().write_all(d);
                let _ = std::io::stdout().flush();
            }
        }
        let _ = exec.build(&req, &Print).await;
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_executor_is_cleaned_up_by_the_next() {
    need_runtime!();
    let e = env().await;
    let root = e.tmp.path().join("bundles");
    // The child's own temp dir (its store) goes below ours: killed, it
    // cannot remove it.
    let child_tmp = e.tmp.path().join("child-tmp");
    std::fs::create_dir(&child_tmp).unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_builds_until_killed",
            "--ignored",
            "--nocapture",
        ])
        .env("TVIX_OCI_CHILD_BUNDLES", &root)
        .env("TMPDIR", &child_tmp)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the build to start, then SIGKILL the whole executor.
    let mut out = child.stdout.take().unwrap();
    let started = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                return false;
            }
            seen.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&seen).contains("started") {
                return true;
            }
        }
        false
    });
    assert!(
        tokio::time::timeout(Duration::from_secs(60), started)
            .await
            .unwrap()
            .unwrap(),
        "child build never started"
    );
    let child_pid = child.id();
    child.kill().unwrap();
    child.wait().unwrap();
    // It left a bundle with mounts in it, its cgroups (and maybe the
    // container).
    assert!(
        !tvix_oci_fuse::mountinfo::mounts_below(&root)
            .unwrap()
            .is_empty()
    );
    let child_cgroups = || -> Vec<std::path::PathBuf> {
        let prefix = format!("tob-{child_pid}-");
        tvix_oci_executor::cgroup::parents()
            .iter()
            .flat_map(|p| std::fs::read_dir(p).unwrap().flatten())
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .map(|e| e.path())
            .collect()
    };
    let had_cgroups = !child_cgroups().is_empty();
    // A new executor on the same root cleans it all up at start.
    let _exec = e.executor(|_| {});
    e.assert_clean();
    assert!(
        child_cgroups().is_empty(),
        "cgroups left: {:?}",
        child_cgroups()
    );
    if !had_cgroups {
        println!("(the killed build had no cgroup to clean up)");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pids_and_memory_limits_from_configuration_hold() {
    need_runtime!();
    if let Some(why) = no_cgroups() {
        println!("SKIPPED: {why}");
        return;
    }
    let e = env().await;
    // 16 processes at most: the 40th background sleep cannot be forked
    // (the shell says so, and may give up).
    let script = format!(
        "i=0; while [ $i -lt 40 ]; do /nix/store/{BB}/bin/busybox sleep 1 & i=$((i+1)); done; wait; echo x > /build/out"
    );
    let req = e.request(&script, &["build/out"], |_| {});
    let logs = Collect::default();
    let _ = e
        .executor(|c| c.spec.resources.pids = Some(16))
        .build(&req, &logs)
        .await;
    let log = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(
        log.contains("fork"),
        "no fork failed under a pids limit of 16: {log:?}"
    );

    // 32 MiB of memory: holding 64 MiB in a shell variable gets it killed.
    let req = e.request(
        "x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo survived > /build/out",
        &["build/out"],
        |_| {},
    );
    let err = e
        .executor(|c| c.spec.resources.memory_bytes = Some(32 << 20))
        .build(&req, &NoLogs)
        .await
        .unwrap_err();
    assert!(
        matches!(err, BuildError::OutOfMemory { limit, .. } if limit == 32 << 20),
        "not OOM-killed: {err}"
    );
    assert!(
        err.to_string().contains("memory limit of 33554432 bytes"),
        "{err}"
    );
    e.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_builder_that_cannot_run_is_the_builds_fault_and_named() {
    need_runtime!();
    let e = env().await;
    let exec = e.executor(|_| {});
    let cases = [
        (format!("/nix/store/{BB}/bin/nope"), "does not exist"),
        (format!("/nix/store/{BB}/bin/busybox/x"), "does not exist"),
        // The data input is a file without the executable bit.
        (format!("/nix/store/{DATA}"), "is not an executable file"),
        (format!("/nix/store/{BB}/bin"), "is not an executable file"),
    ];
    for (builder, what) in cases {
        let req = e.request("unused", &["build/out"], |p| {
            p.command_args = vec![builder.clone()];
        });
        let err = exec.build(&req, &NoLogs).await.unwrap_err();
        assert!(err.is_build_failure(), "{builder}: {err}");
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!("the builder {builder} {what} in the sandbox")),
            "{msg}"
        );
    }
    e.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_symlink_on_the_way_to_an_output_is_the_builds_fault() {
    need_runtime!();
    let e = env().await;
    let req = e.request(
        "mkdir -p /build/real/out; echo x > /build/real/out/f; ln -s real /build/link",
        &["build/link/out"],
        |_| {},
    );
    let err = e.executor(|_| {}).build(&req, &NoLogs).await.unwrap_err();
    assert!(err.is_build_failure(), "{err}");
    assert_eq!(
        err.to_string(),
        "output build/link/out: build/link is a symlink; outputs are read without following symlinks"
    );
    e.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_entries_limit_holds_for_all_outputs_before_any_is_stored() {
    need_runtime!();
    let e = env().await;
    // Two outputs of 601 entries each against one budget of 1,000: refused
    // before a single file of either is stored (before, the first output
    // and part of the second were).
    let script = "mkdir -p /build/a /build/b; i=0; while [ $i -lt 600 ]; do : > /build/a/$i; : > /build/b/$i; i=$((i+1)); done";
    let req = e.request(script, &["build/a", "build/b"], |_| {});
    let blobs = counting_blobs(e.blobs.clone(), Fault::None);
    let mut config = e.config();
    config.ingest_limits.max_entries = 1000;
    let exec = Executor::new(config, blobs.clone(), e.dirs.clone());
    let err = exec.build(&req, &NoLogs).await.unwrap_err();
    assert!(err.is_build_failure(), "{err}");
    let msg = err.to_string();
    assert!(
        msg.starts_with("output build/b at ") && msg.ends_with("exceed the limit of 1000 entries"),
        "{msg}"
    );
    assert_eq!(
        blobs.write_count(),
        0,
        "outputs were stored before the refusal"
    );
    drop(exec);
    e.assert_clean();
}

/// The rows of Nix's sandbox a build can see, as checked against Debian's
/// Nix 2.8 (the full comparison: `crates/cli/tests/nix_oracle.rs`): the
/// executor's open-files limit, no core dumps, `/build` the build user's
/// 0700, `/dev/shm` a tmpfs that allows exec, no `/sys`, ASLR off.
#[tokio::test(flavor = "multi_thread")]
async fn limits_and_dirs_are_nixs() {
    need_runtime!();
    let e = env().await;
    let script = "mkdir -p /build/o; cd /build/o; \
         { ulimit -S -n; ulimit -H -n; ulimit -S -c; } > limits; \
         stat -c '%a %u %g' /build > build; \
         cp /nix/store/*-busybox/bin/busybox /dev/shm/busybox; /dev/shm/busybox true && echo exec-ok > shm; \
         stat -f -c %T /dev/shm >> shm; \
         test -e /sys && echo present > sys || echo absent > sys; \
         cat /proc/self/personality > aslr; grep stack /proc/self/maps >> aslr; grep stack /proc/self/maps >> aslr";
    let req = e.request(script, &["build/o"], |_| {});
    let res = e.executor(|_| {}).build(&req, &NoLogs).await.unwrap();
    let out = &res.build.outputs[0].1;
    // SAFETY: rlimit is plain data, filled by the kernel.
    let mut r: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: a valid resource and pointer.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) }, 0);
    let show = |v: libc::rlim_t| {
        if v == libc::RLIM_INFINITY {
            "unlimited".to_owned()
        } else {
            v.to_string()
        }
    };
    assert_eq!(
        String::from_utf8(file_of(&e, out, "limits").await).unwrap(),
        format!("{}\n{}\n0\n", show(r.rlim_cur), show(r.rlim_max))
    );
    assert_eq!(file_of(&e, out, "build").await, b"700 1000 100\n");
    assert_eq!(file_of(&e, out, "shm").await, b"exec-ok\ntmpfs\n");
    assert_eq!(file_of(&e, out, "sys").await, b"absent\n");
    // ASLR off (ADDR_NO_RANDOMIZE): two processes, one stack address.
    let aslr = String::from_utf8(file_of(&e, out, "aslr").await).unwrap();
    let lines: Vec<&str> = aslr.lines().collect();
    assert_eq!(lines.len(), 3, "{aslr}");
    assert_eq!(lines[0], "00040000", "{aslr}");
    assert_eq!(lines[1], lines[2], "the stack moved: {aslr}");
    e.assert_clean();
}

/// As in Nix, the builder's stdout and stderr are one pseudo-terminal in
/// raw mode (`isatty` true, no `\r` added) and its stdin `/dev/null`:
/// what it writes to both comes in write order.
#[tokio::test(flavor = "multi_thread")]
async fn stdout_and_stderr_are_one_pty_in_write_order() {
    need_runtime!();
    let e = env().await;
    let script = "for i in 1 2 3 4 5; do echo out$i; echo err$i >&2; done; \
         for fd in 0 1 2; do if [ -t $fd ]; then echo $fd:tty; else echo $fd:notty; fi; done; \
         cat; echo stdin-eof $?";
    let req = e.request(script, &[], |_| {});
    let logs = Collect::default();
    e.executor(|_| {}).build(&req, &logs).await.unwrap();
    let log = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert_eq!(
        log,
        "out1\nerr1\nout2\nerr2\nout3\nerr3\nout4\nerr4\nout5\nerr5\n0:notty\n1:tty\n2:tty\nstdin-eof 0\n"
    );
    e.assert_clean();
}
