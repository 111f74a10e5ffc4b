//! The whole pipeline — prepare, sandbox, run, collect — on the fake host
//! ([`crate::seam::fake::FakeHost`]): the order things are made and torn
//! down, and whose fault each failure is, on any machine (no root, runc or
//! FUSE). The bundle, its skeleton and the ingestion of outputs are real.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tvix_oci_castore::blobservice::{BlobService, MemoryBlobService};
use tvix_oci_castore::directoryservice::{DirectoryService, MemoryDirectoryService};
use tvix_oci_castore::{B3Digest, Node, PathComponent};
use tvix_oci_spec::proto::{self, build_request as br};
use tvix_oci_spec::{BuildRequest, BundleLayout};

use crate::runc::NoLogs;
use crate::seam::fake::{FakeHost, Step};
use crate::{BuildError, Executor, ExecutorConfig};

struct Rig {
    tmp: tempfile::TempDir,
    fake: FakeHost,
    exec: Executor,
    blobs: Arc<dyn BlobService>,
}

fn rig(f: impl FnOnce(&mut ExecutorConfig)) -> Rig {
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeHost::new();
    let mut config = ExecutorConfig {
        bundle_root: tmp.path().join("bundles"),
        ..ExecutorConfig::default()
    };
    f(&mut config);
    let blobs: Arc<dyn BlobService> = Arc::new(MemoryBlobService::default());
    let dirs: Arc<dyn DirectoryService> = Arc::new(MemoryDirectoryService::default());
    let exec = Executor::with_host(config, blobs.clone(), dirs, fake.host());
    Rig {
        tmp,
        fake,
        exec,
        blobs,
    }
}

impl Rig {
    /// No bundle is left under the bundle root.
    fn assert_no_bundle(&self) {
        let root = self.tmp.path().join("bundles");
        let left: Vec<_> = std::fs::read_dir(&root)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "bundles left behind: {left:?}");
    }
}

/// A request with input `aaa-in` (a file), the store dir writable when
/// `store_writable`, and `outputs`.
fn request(store_writable: bool, outputs: &[&str]) -> BuildRequest {
    let mut scratch = vec!["build".to_owned()];
    if store_writable {
        scratch.push("nix/store".into());
    }
    let file = Node::File {
        digest: B3Digest::of(b"in"),
        size: 2,
        executable: false,
    };
    let input = file.to_proto(&PathComponent::try_from("aaa-in").unwrap());
    BuildRequest::try_from(proto::BuildRequest {
        inputs: vec![input],
        command_args: vec!["/bin/sh".into()],
        working_dir: "build".into(),
        scratch_paths: scratch,
        inputs_dir: "nix/store".into(),
        outputs: outputs.iter().map(|s| s.to_string()).collect(),
        constraints: Some(br::BuildConstraints {
            system: crate::host::host_system(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .unwrap()
}

/// Writes `contents` at `rel` below the bundle's dir `sub`.
fn write(bundle: &Path, sub: &str, rel: &str, contents: &[u8]) {
    let p = bundle.join(sub).join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, contents).unwrap();
}

const SETUP: [Step; 5] = [
    Step::Locate,
    Step::TakeIds,
    Step::Cgroup,
    Step::MountInputs,
    Step::MountOverlay,
];
const TEARDOWN: [Step; 4] = [
    Step::UnmountOverlay,
    Step::UnmountInputs,
    Step::RemoveCgroup,
    Step::FreeIds,
];

#[tokio::test]
async fn a_build_makes_then_undoes_everything_in_order_and_stores_its_output() {
    let r = rig(|_| {});
    r.fake.play(|bundle| {
        write(bundle, "scratch/build", "out", b"hello");
        Ok(FakeHost::exited_0())
    });
    let req = request(true, &["build/out"]);
    let result = r.exec.build(&req, &NoLogs).await.unwrap();
    let want: Vec<Step> = [
        &SETUP[..],
        &[Step::Run, Step::DeleteContainer],
        &TEARDOWN[..],
    ]
    .concat();
    assert_eq!(r.fake.calls(), want);
    let (name, node) = &result.build.outputs[0];
    assert_eq!(name.as_bytes(), b"out");
    let Node::File { digest, size, .. } = node else {
        panic!("not a file: {node:?}");
    };
    assert_eq!(*size, 5);
    assert!(r.blobs.has(digest).await.unwrap(), "output blob not stored");
    r.assert_no_bundle();
}

#[tokio::test]
async fn a_read_only_store_dir_gets_no_overlay() {
    let r = rig(|_| {});
    let req = request(false, &[]);
    r.exec.build(&req, &NoLogs).await.unwrap();
    let calls = r.fake.calls();
    assert!(!calls.contains(&Step::MountOverlay), "{calls:?}");
    assert!(!calls.contains(&Step::UnmountOverlay), "{calls:?}");
    assert!(calls.contains(&Step::UnmountInputs), "{calls:?}");
}

/// Failing `step` stops the build before anything after it, undoes all
/// that was made before it, and is said in `class`.
async fn failing(step: Step, class: fn(&BuildError) -> bool) -> Vec<Step> {
    let r = rig(|_| {});
    r.fake.fail(step);
    let err = r
        .exec
        .build(&request(true, &[]), &NoLogs)
        .await
        .unwrap_err();
    assert!(class(&err), "{step:?}: {err:?}");
    assert!(
        !err.is_build_failure(),
        "{step:?} blamed on the build: {err}"
    );
    r.assert_no_bundle();
    r.fake.calls()
}

fn is_infra(e: &BuildError) -> bool {
    matches!(e, BuildError::Infrastructure(_))
}

#[tokio::test]
async fn no_runtime_fails_before_anything_is_made() {
    let calls = failing(Step::Locate, |e| matches!(e, BuildError::Host(_))).await;
    assert_eq!(calls, [Step::Locate]);
}

#[tokio::test]
async fn a_busy_id_pool_fails_before_the_bundle() {
    let calls = failing(Step::TakeIds, |e| matches!(e, BuildError::Host(_))).await;
    assert_eq!(calls, [Step::Locate, Step::TakeIds]);
}

#[tokio::test]
async fn a_failed_inputs_mount_frees_the_cgroup_and_ids() {
    let calls = failing(Step::MountInputs, is_infra).await;
    let want = [&SETUP[..4], &[Step::RemoveCgroup, Step::FreeIds]].concat();
    assert_eq!(calls, want);
}

#[tokio::test]
async fn a_failed_overlay_unmounts_the_inputs() {
    let calls = failing(Step::MountOverlay, is_infra).await;
    let want = [&SETUP[..], &TEARDOWN[1..]].concat();
    assert_eq!(calls, want);
}

#[tokio::test]
async fn a_failed_unmount_is_the_hosts_fault_and_the_rest_is_still_undone() {
    let calls = failing(Step::UnmountOverlay, is_infra).await;
    for s in [Step::UnmountInputs, Step::RemoveCgroup, Step::FreeIds] {
        assert!(calls.contains(&s), "{s:?} not undone: {calls:?}");
    }
}

#[tokio::test]
async fn a_build_exiting_non_zero_is_its_own_fault_after_a_full_teardown() {
    let r = rig(|_| {});
    r.fake.play(|_| {
        Err(BuildError::Failed {
            code: 3,
            log_tail: "boom".into(),
        })
    });
    let err = r.exec.build(&request(true, &["build/out"]), &NoLogs).await;
    let err = err.unwrap_err();
    assert!(matches!(err, BuildError::Failed { code: 3, .. }), "{err}");
    assert!(err.is_build_failure());
    assert!(r.fake.calls().ends_with(&TEARDOWN), "{:?}", r.fake.calls());
    r.assert_no_bundle();
}

#[tokio::test]
async fn store_trouble_under_a_successful_run_is_the_stores_fault() {
    let r = rig(|_| {});
    r.fake.store_trouble("blob b3:aa… no answer after 30s");
    let err = r
        .exec
        .build(&request(true, &[]), &NoLogs)
        .await
        .unwrap_err();
    assert!(err.is_store_failure(), "{err}");
    assert!(!err.is_build_failure(), "{err}");
    assert!(r.fake.calls().ends_with(&TEARDOWN));
}

#[tokio::test]
async fn a_fuse_daemon_dying_mid_build_is_the_hosts_fault() {
    let r = rig(|_| {});
    r.fake.daemon_dies();
    let err = r
        .exec
        .build(&request(true, &[]), &NoLogs)
        .await
        .unwrap_err();
    assert!(matches!(err, BuildError::Infrastructure(_)), "{err}");
    assert!(err.to_string().contains("FUSE connection"), "{err}");
}

#[tokio::test]
async fn a_sigkill_at_the_memory_limit_reads_the_cgroup_and_is_out_of_memory() {
    let r = rig(|c| c.spec.resources.memory_bytes = Some(64 << 20));
    r.fake.used(Some(63 << 20), Some(Duration::from_secs(1)));
    r.fake.play(|_| {
        Err(BuildError::Signaled {
            signal: 9,
            log_tail: String::new(),
        })
    });
    let err = r
        .exec
        .build(&request(true, &[]), &NoLogs)
        .await
        .unwrap_err();
    assert!(
        matches!(err, BuildError::OutOfMemory { limit, .. } if limit == 64 << 20),
        "{err}"
    );
}

#[tokio::test]
async fn writing_into_an_input_is_the_builds_fault() {
    let r = rig(|_| {});
    r.fake.play(|bundle| {
        write(bundle, "outputs/upper", "aaa-in", b"changed");
        Ok(FakeHost::exited_0())
    });
    let err = r
        .exec
        .build(&request(true, &[]), &NoLogs)
        .await
        .unwrap_err();
    assert!(
        matches!(err, BuildError::ModifiedInput(ref n) if n == "aaa-in"),
        "{err}"
    );
    assert!(err.is_build_failure());
    r.assert_no_bundle();
}

#[tokio::test]
async fn an_output_in_the_store_dir_is_read_from_the_overlays_upper_layer() {
    let r = rig(|_| {});
    r.fake.play(|bundle| {
        write(bundle, BundleLayout::UPPER, "bbb-out/bin/x", b"#!");
        Ok(FakeHost::exited_0())
    });
    let req = request(true, &["nix/store/bbb-out"]);
    let result = r.exec.build(&req, &NoLogs).await.unwrap();
    assert!(matches!(result.build.outputs[0].1, Node::Directory { .. }));
}

#[tokio::test]
async fn a_missing_output_is_the_builds_fault_and_named() {
    let r = rig(|_| {});
    let req = request(true, &["build/out"]);
    let err = r.exec.build(&req, &NoLogs).await.unwrap_err();
    assert!(err.is_build_failure(), "{err}");
    assert!(err.to_string().contains("build/out"), "{err}");
    assert!(r.fake.calls().ends_with(&TEARDOWN));
}

#[tokio::test]
async fn a_cancelled_build_undoes_everything() {
    let r = rig(|_| {});
    r.fake.hang();
    let req = request(true, &["build/out"]);
    let build = r.exec.build(&req, &NoLogs);
    let cut = tokio::time::timeout(Duration::from_millis(200), build).await;
    assert!(cut.is_err(), "a hanging run ended");
    let calls = r.fake.calls();
    // The executor aborts the inputs' connection first, so a reader stuck
    // on the store dies at once; then every mount and hold goes.
    let after_run = &calls[SETUP.len() + 1..];
    assert_eq!(
        after_run[..2],
        [Step::AbortInputs, Step::DeleteContainer],
        "{calls:?}"
    );
    for s in TEARDOWN {
        assert!(after_run.contains(&s), "{s:?} not undone: {calls:?}");
    }
    r.assert_no_bundle();
}

#[tokio::test]
async fn a_full_queue_refuses_at_once_without_touching_the_host() {
    let r = rig(|c| c.max_queued = Some(0));
    r.fake.hang();
    let req = request(true, &[]);
    let first = r.exec.build(&req, &NoLogs);
    tokio::pin!(first);
    // The first takes the only slot and hangs in its run.
    assert!(
        tokio::time::timeout(Duration::from_millis(100), &mut first)
            .await
            .is_err()
    );
    let before = r.fake.calls().len();
    let err = r.exec.build(&req, &NoLogs).await.unwrap_err();
    assert!(
        matches!(
            err,
            BuildError::Busy {
                slots: 1,
                queued: 0
            }
        ),
        "{err}"
    );
    assert_eq!(
        r.fake.calls().len(),
        before,
        "the refused build touched the host"
    );
}

#[tokio::test]
async fn rootless_takes_no_ids_and_makes_no_cgroup() {
    // Rootless needs the host's sub-ids (newuidmap): only its refusal of
    // limits, which comes first, is decided without them.
    let r = rig(|c| {
        c.rootless = true;
        c.spec.resources.cpus = Some(2.0);
    });
    let err = r
        .exec
        .build(&request(true, &[]), &NoLogs)
        .await
        .unwrap_err();
    let calls = r.fake.calls();
    assert!(!calls.contains(&Step::TakeIds), "{calls:?}");
    assert!(!calls.contains(&Step::Cgroup), "{calls:?}");
    assert!(matches!(err, BuildError::Host(_)), "{err}");
}
