//! One test per validation rule: each bad request is refused, the problem
//! names the field and the value, and a good request passes.
#![allow(clippy::unwrap_used)]

mod common;

use common::nix_like;
use tvix_oci_spec::proto::{self, build_request as br};
use tvix_oci_spec::{BuildRequest, Problem};

/// Validates `p` and returns its problems (empty when valid).
fn problems(p: proto::BuildRequest) -> Vec<Problem> {
    match BuildRequest::try_from(p) {
        Ok(_) => Vec::new(),
        Err(e) => e.0,
    }
}

/// Asserts that `p` is refused with a problem on `field` whose text
/// contains `words`.
#[track_caller]
fn refused(p: proto::BuildRequest, field: &str, words: &str) {
    let ps = problems(p);
    assert!(
        ps.iter()
            .any(|x| x.field == field && x.to_string().contains(words)),
        "expected a problem on {field} saying {words:?}, got: {ps:#?}"
    );
}

fn with(f: impl FnOnce(&mut proto::BuildRequest)) -> proto::BuildRequest {
    let mut p = nix_like();
    f(&mut p);
    p
}

#[test]
fn the_nix_like_request_is_valid() {
    assert_eq!(problems(nix_like()), vec![]);
}

#[test]
fn unclean_paths() {
    for (bad, why) in [
        ("/build", "must be relative"),
        ("./build", "has a . component"),
        ("build/..", "has a .. component"),
        ("build//x", "empty component"),
        ("build/", "ends with /"),
        ("", "is empty"),
    ] {
        refused(with(|p| p.working_dir = bad.into()), "working_dir", why);
        refused(with(|p| p.inputs_dir = bad.into()), "inputs_dir", why);
        refused(
            with(|p| p.scratch_paths[0] = bad.into()),
            "scratch_paths[0]",
            why,
        );
        refused(with(|p| p.outputs[0] = bad.into()), "outputs[0]", why);
        refused(
            with(|p| p.additional_files[0].path = bad.into()),
            "additional_files[0].path",
            why,
        );
    }
}

#[test]
fn unsorted_or_duplicate_lists() {
    refused(with(|p| p.inputs.reverse()), "inputs[1]", "not sorted");
    refused(
        with(|p| p.inputs[1] = p.inputs[0].clone()),
        "inputs[1]",
        "duplicate",
    );
    refused(with(|p| p.outputs.reverse()), "outputs[1]", "not sorted");
    refused(
        with(|p| p.outputs[1] = p.outputs[0].clone()),
        "outputs[1]",
        "duplicate",
    );
    refused(
        with(|p| p.scratch_paths.reverse()),
        "scratch_paths[1]",
        "not sorted",
    );
    refused(
        with(|p| p.scratch_paths.push("nix/store".into())),
        "scratch_paths[2]",
        "duplicate",
    );
    refused(
        with(|p| p.environment_vars.swap(0, 1)),
        "environment_vars[1]",
        "not sorted",
    );
    refused(
        with(|p| p.environment_vars[1].key = "HOME".into()),
        "environment_vars[1]",
        "duplicate",
    );
}

#[test]
fn env_keys() {
    refused(
        with(|p| p.environment_vars[3].key = "o=ut".into()),
        "environment_vars[3].key",
        "contains =",
    );
    refused(
        with(|p| p.environment_vars[3].key = "o\0ut".into()),
        "environment_vars[3].key",
        "NUL",
    );
    refused(
        with(|p| p.environment_vars[0].key = "".into()),
        "environment_vars[0].key",
        "is empty",
    );
    refused(
        with(|p| p.environment_vars[0].value = "a\0b".into()),
        "environment_vars[0].value",
        "NUL",
    );
}

#[test]
fn outputs_must_be_below_a_scratch_path_or_the_inputs_dir() {
    refused(
        with(|p| p.outputs = vec!["etc/out".into()]),
        "outputs[0]",
        "not below a scratch path",
    );
    // "the whole scratch" is not an output either.
    refused(
        with(|p| p.outputs = vec!["build".into()]),
        "outputs[0]",
        "not below a scratch path",
    );
    refused(
        with(|p| p.outputs = vec!["nix/store".into()]),
        "outputs[0]",
        "not below a scratch path",
    );
    // An output may not be an input.
    refused(
        with(|p| p.outputs = vec!["nix/store/0k9yxm9zqc2dgw2xxbyh3mnbs5ijjc7v-busybox".into()]),
        "outputs[0]",
        "input",
    );
    refused(
        with(|p| p.outputs = vec!["build/o".into(), "build/o/x".into()]),
        "outputs[1]",
        "inside output",
    );
    assert_eq!(
        problems(with(|p| p.outputs = vec!["build/out".into()])),
        vec![]
    );
}

#[test]
fn working_dir_must_be_writable_or_inside_the_inputs() {
    refused(
        with(|p| p.working_dir = "etc".into()),
        "working_dir",
        "neither a scratch path",
    );
    assert_eq!(
        problems(with(|p| p.working_dir = "build/sub".into())),
        vec![]
    );
    assert_eq!(
        problems(with(|p| p.working_dir = "nix/store".into())),
        vec![]
    );
}

#[test]
fn command_args_must_not_be_empty() {
    refused(with(|p| p.command_args.clear()), "command_args", "is empty");
    refused(
        with(|p| p.command_args[0] = "".into()),
        "command_args[0]",
        "is empty",
    );
    refused(
        with(|p| p.command_args[1] = "a\0".into()),
        "command_args[1]",
        "NUL",
    );
}

#[test]
fn system_must_be_set() {
    refused(
        with(|p| p.constraints.as_mut().unwrap().system = "".into()),
        "constraints.system",
        "is empty",
    );
    refused(
        with(|p| p.constraints = None),
        "constraints.system",
        "is empty",
    );
}

#[test]
fn available_ro_paths_are_clean_absolute_and_not_runtime_owned() {
    let ro = |v: &[&str]| {
        with(|p| {
            p.constraints.as_mut().unwrap().available_ro_paths =
                v.iter().map(|s| s.to_string()).collect()
        })
    };
    refused(
        ro(&["dev/kvm"]),
        "constraints.available_ro_paths[0]",
        "must be absolute",
    );
    refused(
        ro(&["/"]),
        "constraints.available_ro_paths[0]",
        "not be / itself",
    );
    refused(ro(&["/a/../b"]), "constraints.available_ro_paths[0]", "..");
    refused(
        ro(&["/proc/self"]),
        "constraints.available_ro_paths[0]",
        "/proc",
    );
    refused(
        ro(&["/sys/kernel"]),
        "constraints.available_ro_paths[0]",
        "/sys",
    );
    refused(
        ro(&["/dev"]),
        "constraints.available_ro_paths[0]",
        "/dev itself",
    );
    refused(
        ro(&["/opt", "/dev/kvm"]),
        "constraints.available_ro_paths[1]",
        "not sorted",
    );
    assert_eq!(problems(ro(&["/dev/kvm", "/opt/tools"])), vec![]);
}

#[test]
fn additional_files_stay_out_of_the_inputs_and_the_skeleton() {
    let file = |path: &str| {
        with(|p| {
            p.additional_files = vec![br::AdditionalFile {
                path: path.into(),
                contents: "x".into(),
            }]
        })
    };
    refused(
        file("nix/store/x"),
        "additional_files[0].path",
        "inside inputs_dir",
    );
    refused(
        file("etc/passwd"),
        "additional_files[0].path",
        "root skeleton",
    );
    refused(file("build"), "additional_files[0].path", "scratch path");
    assert_eq!(problems(file("etc/nix.conf")), vec![]);
}

#[test]
fn input_names_must_be_path_components() {
    for bad in ["..", "a/b", ""] {
        refused(
            with(|p| p.inputs[0] = common::dir_input(bad)),
            "inputs[0]",
            "name",
        );
    }
}

#[test]
fn overlapping_destinations() {
    // A scratch path inside the inputs dir would shadow an input.
    refused(
        with(|p| {
            p.scratch_paths = vec![
                "build".into(),
                "nix/store".into(),
                "nix/store/0k9yxm9zqc2dgw2xxbyh3mnbs5ijjc7v-busybox".into(),
            ]
        }),
        "scratch_paths[2]",
        "inside inputs_dir",
    );
    refused(
        with(|p| p.scratch_paths = vec!["build".into(), "build/x".into(), "nix/store".into()]),
        "scratch_paths[1]",
        "inside scratch path",
    );
}

#[test]
fn runtime_owned_destinations_are_refused() {
    // The CVE-2024-21626 shape: a working dir through /proc/self/fd.
    refused(
        with(|p| p.working_dir = "proc/self/fd/7".into()),
        "working_dir",
        "/proc",
    );
    refused(with(|p| p.inputs_dir = "dev".into()), "inputs_dir", "/dev");
    refused(
        with(|p| p.scratch_paths = vec!["build".into(), "nix/store".into(), "sys/fs".into()]),
        "scratch_paths[2]",
        "/sys",
    );
    refused(
        with(|p| p.outputs = vec!["proc/out".into()]),
        "outputs[0]",
        "/proc",
    );
    refused(
        with(|p| {
            p.additional_files = vec![br::AdditionalFile {
                path: "dev/shm/x".into(),
                contents: "x".into(),
            }]
        }),
        "additional_files[0].path",
        "/dev",
    );
}

#[test]
fn needles_must_not_be_empty() {
    refused(
        with(|p| p.refscan_needles.push(String::new())),
        "refscan_needles[2]",
        "is empty",
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let p = with(|p| {
        p.working_dir = "/abs".into();
        p.command_args.clear();
        p.environment_vars[0].key = "A=B".into();
    });
    let err = BuildRequest::try_from(p).unwrap_err();
    assert!(err.0.len() >= 3, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("working_dir \"/abs\" must be relative"),
        "{msg}"
    );
    assert!(msg.contains("command_args"), "{msg}");
}
