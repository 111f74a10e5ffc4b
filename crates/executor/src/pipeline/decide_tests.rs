//! The pipeline's decisions on made-up observations: no root, no runc, no
//! FUSE needed.

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use tvix_oci_castore::{B3Digest, Node, PathComponent};
use tvix_oci_spec::proto::{self, build_request as br};
use tvix_oci_spec::{BuildRequest, BundleLayout};

use super::*;

fn outcome() -> RunOutcome {
    RunOutcome {
        cpu: Duration::from_millis(5),
        max_rss: 1 << 20,
        wall: Duration::from_millis(50),
        process_started: None,
    }
}

fn killed() -> Result<RunOutcome, BuildError> {
    Err(BuildError::Signaled {
        signal: 9,
        log_tail: "tail".into(),
    })
}

fn healthy() -> RunFacts {
    RunFacts {
        serving: true,
        ..RunFacts::default()
    }
}

#[test]
fn a_clean_run_is_its_own_result() {
    assert!(judge(Ok(outcome()), healthy()).is_ok());
    let failed = Err(BuildError::Failed {
        code: 7,
        log_tail: String::new(),
    });
    let e = judge(failed, healthy()).unwrap_err();
    assert!(matches!(e, BuildError::Failed { code: 7, .. }), "{e}");
    assert!(e.is_build_failure());
}

#[test]
fn store_trouble_makes_any_result_the_stores_fault() {
    let facts = RunFacts {
        store_trouble: Some("blob b3:aa… no answer after 30s".into()),
        ..healthy()
    };
    for ran in [Ok(outcome()), killed()] {
        let e = judge(ran, facts.clone()).unwrap_err();
        assert!(!e.is_build_failure(), "{e}");
        assert!(e.is_store_failure(), "{e}");
        assert!(
            e.to_string()
                .contains("the store failed while the build read its inputs: blob b3:aa"),
            "{e}"
        );
    }
}

#[test]
fn a_fuse_daemon_gone_mid_build_is_the_hosts_fault() {
    let facts = RunFacts {
        serving: false,
        ..RunFacts::default()
    };
    let e = judge(Ok(outcome()), facts).unwrap_err();
    assert!(!e.is_build_failure(), "{e}");
    assert!(
        e.to_string()
            .contains("FUSE connection of the inputs ended mid-build"),
        "{e}"
    );
}

#[test]
fn a_connection_the_executor_aborted_leaves_the_runs_own_result() {
    let facts = RunFacts {
        serving: false,
        aborted: true,
        ..RunFacts::default()
    };
    let timed_out = Err(BuildError::TimedOut {
        after: Duration::from_secs(1),
        log_tail: String::new(),
    });
    let e = judge(timed_out, facts).unwrap_err();
    assert!(matches!(e, BuildError::TimedOut { .. }), "{e}");
}

#[test]
fn a_kill_at_the_memory_limit_is_out_of_memory() {
    let at = |peak: u64| RunFacts {
        memory_limit: Some(1 << 30),
        peak_memory: Some(peak),
        ..healthy()
    };
    let e = judge(killed(), at(1 << 30)).unwrap_err();
    assert!(
        matches!(e, BuildError::OutOfMemory { limit, .. } if limit == 1 << 30),
        "{e}"
    );
    assert!(e.to_string().contains("tail"), "the log tail is kept: {e}");
    // 15/16 of the limit is close enough (the kernel kills a little before).
    let e = judge(killed(), at((1 << 30) / 16 * 15)).unwrap_err();
    assert!(matches!(e, BuildError::OutOfMemory { .. }), "{e}");
}

#[test]
fn a_kill_far_from_the_limit_or_without_one_is_a_signal() {
    let low = RunFacts {
        memory_limit: Some(1 << 30),
        peak_memory: Some(1 << 20),
        ..healthy()
    };
    let e = judge(killed(), low).unwrap_err();
    assert!(matches!(e, BuildError::Signaled { signal: 9, .. }), "{e}");
    let no_limit = RunFacts {
        peak_memory: Some(u64::MAX),
        ..healthy()
    };
    let e = judge(killed(), no_limit).unwrap_err();
    assert!(matches!(e, BuildError::Signaled { signal: 9, .. }), "{e}");
    // Another signal at the limit stays what it was.
    let at_limit = RunFacts {
        memory_limit: Some(1 << 30),
        peak_memory: Some(1 << 30),
        ..healthy()
    };
    let term = Err(BuildError::Signaled {
        signal: 15,
        log_tail: String::new(),
    });
    let e = judge(term, at_limit).unwrap_err();
    assert!(matches!(e, BuildError::Signaled { signal: 15, .. }), "{e}");
}

#[test]
fn killed_at_limit_never_overflows() {
    assert!(killed_at_limit(Some(i64::MAX), Some(u64::MAX)));
    assert!(!killed_at_limit(Some(i64::MAX), Some(0)));
    assert!(killed_at_limit(Some(-1), Some(0)), "a negative limit is 0");
    assert!(!killed_at_limit(None, Some(0)));
    assert!(!killed_at_limit(Some(1), None));
}

fn request(inputs_dir_writable: bool, outputs: &[&str]) -> BuildRequest {
    let mut scratch = vec!["build".to_owned()];
    if inputs_dir_writable {
        scratch.push("nix/store".into());
    }
    BuildRequest::try_from(proto::BuildRequest {
        command_args: vec!["/bin/sh".into()],
        working_dir: "build".into(),
        scratch_paths: scratch,
        inputs_dir: "nix/store".into(),
        outputs: outputs.iter().map(|s| s.to_string()).collect(),
        constraints: Some(br::BuildConstraints {
            system: "x86_64-linux".into(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn outputs_in_a_writable_store_dir_are_in_the_overlays_upper_layer() {
    let layout = BundleLayout::new(Path::new("/b/1"));
    let req = request(true, &["build/x", "nix/store/abc-out"]);
    let (base, rel) = output_location(&layout, &req, &req.outputs()[1]).unwrap();
    assert_eq!((base, rel.as_str()), (layout.upper(), "abc-out"));
    let (base, rel) = output_location(&layout, &req, &req.outputs()[0]).unwrap();
    assert_eq!(base, layout.scratch(&req.scratch_paths()[0]));
    assert_eq!(rel, "x");
}

#[test]
fn an_output_below_a_read_only_store_dir_is_missing() {
    let layout = BundleLayout::new(Path::new("/b/1"));
    let req = request(false, &["nix/store/abc-out"]);
    let e = output_location(&layout, &req, &req.outputs()[0]).unwrap_err();
    assert!(e.is_build_failure(), "{e}");
    assert!(
        matches!(e, BuildError::Output(IngestError::Missing(ref o)) if o == "nix/store/abc-out"),
        "{e}"
    );
}

fn inputs(names: &[&str]) -> Vec<(PathComponent, Node)> {
    let mut v: Vec<_> = names
        .iter()
        .map(|n| {
            let node = Node::File {
                digest: B3Digest::of(b""),
                size: 0,
                executable: false,
            };
            (PathComponent::try_from(n.as_bytes()).unwrap(), node)
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn an_upper_entry_named_like_an_input_is_a_modified_input() {
    let ins = inputs(&["aaa-busybox", "bbb-builder.sh"]);
    let upper = ["zzz-out", "bbb-builder.sh"].map(OsStr::new);
    assert_eq!(
        modified_input(upper, &ins).as_deref(),
        Some("bbb-builder.sh")
    );
    let outputs_only = ["zzz-out", "aaa-busybox-2"].map(OsStr::new);
    assert_eq!(modified_input(outputs_only, &ins), None);
    assert_eq!(modified_input([], &ins), None);
    assert_eq!(modified_input(upper, &[]), None);
}

#[test]
fn a_rootless_build_refuses_memory_and_cpu_limits_but_not_pids() {
    use tvix_oci_spec::ResourceLimits;
    let memory = ResourceLimits {
        memory_bytes: Some(1 << 30),
        ..ResourceLimits::default()
    };
    let e = super::super::prepare::rootless_limits(&memory).unwrap_err();
    assert!(matches!(e, BuildError::Host(_)), "{e}");
    assert!(
        e.to_string()
            .contains("memory and CPU limits need a cgroup"),
        "{e}"
    );
    let cpus = ResourceLimits {
        cpus: Some(1.5),
        ..ResourceLimits::default()
    };
    assert!(super::super::prepare::rootless_limits(&cpus).is_err());
    let pids = ResourceLimits {
        pids: Some(64),
        memory_bytes: None,
        cpus: None,
    };
    assert!(super::super::prepare::rootless_limits(&pids).is_ok());
}

#[test]
fn the_build_timeout_covers_ingestion_from_the_runs_start() {
    use crate::ingest::IngestLimits;
    let started = std::time::Instant::now();
    let base = IngestLimits {
        max_entries: 7,
        ..IngestLimits::default()
    };
    let l = super::super::limits_from(base, Some(Duration::from_secs(30)), started);
    let d = l.deadline.unwrap();
    assert_eq!(
        (d.at, d.timeout),
        (started + Duration::from_secs(30), Duration::from_secs(30))
    );
    assert_eq!(l.max_entries, 7, "the other limits are kept");
    assert_eq!(
        super::super::limits_from(base, None, started).deadline,
        None
    );
}
