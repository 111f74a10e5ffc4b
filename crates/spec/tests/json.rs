//! The JSON request form: round trips, clear errors, never a panic.
#![allow(clippy::unwrap_used)]

mod common;

use proptest::prelude::*;
use tvix_oci_spec::json::JsonError;
use tvix_oci_spec::proto::{self, build_request as br};
use tvix_oci_spec::{BuildRequest, SpecOptions, make_spec};

#[test]
fn roundtrip() {
    let req = BuildRequest::try_from(common::nix_like()).unwrap();
    let json = req.to_json();
    assert!(json.contains("\"inputs_dir\": \"nix/store\""), "{json}");
    assert_eq!(BuildRequest::from_json(&json).unwrap(), req);
    // And through the wire form.
    let wire = proto::BuildRequest::from(&req);
    assert_eq!(wire, common::nix_like());
}

#[test]
fn build_results_roundtrip_through_the_wire() {
    use tvix_oci_castore::{B3Digest, Node, PathComponent};
    let request = BuildRequest::try_from(common::nix_like()).unwrap();
    let out = Node::File {
        digest: B3Digest::of(b"hi"),
        size: 2,
        executable: false,
    };
    let build = tvix_oci_spec::Build {
        request,
        outputs: vec![(
            PathComponent::try_from("a6xgw8ck6z7vb3yzrn0m7bl0sfkxwlyk-hello").unwrap(),
            out,
        )],
        outputs_needles: vec![vec![0, 1]],
    };
    let wire = proto::Build::from(&build);
    assert_eq!(tvix_oci_spec::Build::try_from(wire.clone()).unwrap(), build);
    let mut bad = wire;
    bad.outputs_needles.clear();
    let err = tvix_oci_spec::Build::try_from(bad).unwrap_err();
    assert!(
        err.to_string().contains("1 outputs but 0 outputs_needles"),
        "{err}"
    );
}

#[test]
fn non_utf8_bytes_use_base64() {
    let mut p = common::nix_like();
    p.environment_vars[0].value = vec![0xff, 0x01].into();
    let req = BuildRequest::try_from(p).unwrap();
    let json = req.to_json();
    assert!(json.contains("\"base64\": \"/wE=\""), "{json}");
    assert_eq!(BuildRequest::from_json(&json).unwrap(), req);
}

#[test]
fn base64_digests_are_accepted() {
    let req = BuildRequest::try_from(common::nix_like()).unwrap();
    let hex = tvix_oci_castore::Directory::new().digest();
    let json = req.to_json().replace(&hex.to_hex(), &hex.to_base64());
    assert_eq!(BuildRequest::from_json(&json).unwrap(), req);
}

#[test]
fn malformed_json_says_where() {
    let err = BuildRequest::from_json("{\n  \"command_args\": [\"a\",\n}").unwrap_err();
    match err {
        JsonError::Syntax { line, .. } => assert_eq!(line, 3),
        other => panic!("{other}"),
    }
    let err = BuildRequest::from_json("{\"scratch_path\": []}").unwrap_err();
    assert!(err.to_string().contains("scratch_path"), "{err}");
}

#[test]
fn bad_digest_names_the_input() {
    let json = r#"{"inputs": [{"name": "x", "directory": {"digest": "abc", "size": 0}}],
                   "command_args": ["true"], "working_dir": "build", "scratch_paths": ["build"],
                   "inputs_dir": "nix/store", "constraints": {"system": "x86_64-linux"}}"#;
    let err = BuildRequest::from_json(json).unwrap_err().to_string();
    assert!(
        err.contains("inputs[0].digest") && err.contains("abc"),
        "{err}"
    );
}

fn path_chars() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just("a"),
            Just("/"),
            Just("."),
            Just("proc"),
            Just("nix"),
            Just("store"),
            Just("\0"),
            Just("=")
        ],
        0..6,
    )
    .prop_map(|v| v.concat())
}

prop_compose! {
    fn any_request()(
        working_dir in path_chars(),
        inputs_dir in path_chars(),
        scratch in prop::collection::vec(path_chars(), 0..4),
        outputs in prop::collection::vec(path_chars(), 0..4),
        args in prop::collection::vec(path_chars(), 0..3),
        env in prop::collection::vec((path_chars(), prop::collection::vec(any::<u8>(), 0..4)), 0..4),
        files in prop::collection::vec((path_chars(), prop::collection::vec(any::<u8>(), 0..4)), 0..3),
        ro in prop::collection::vec(path_chars(), 0..3),
        names in prop::collection::vec(path_chars(), 0..3),
        system in path_chars(),
        sh in any::<bool>(),
    ) -> proto::BuildRequest {
        proto::BuildRequest {
            inputs: names.iter().map(|n| common::dir_input(n)).collect(),
            command_args: args,
            working_dir,
            scratch_paths: scratch,
            inputs_dir,
            outputs,
            environment_vars: env.into_iter().map(|(key, v)| br::EnvVar { key, value: v.into() }).collect(),
            constraints: Some(br::BuildConstraints { system, min_memory: 0, available_ro_paths: ro, network_access: sh, provide_bin_sh: sh }),
            additional_files: files.into_iter().map(|(path, c)| br::AdditionalFile { path, contents: c.into() }).collect(),
            refscan_needles: vec![],
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]
    /// Random requests never panic validation or make_spec, and whatever
    /// validates gives a spec (or a typed error).
    #[test]
    fn random_requests_never_panic(p in any_request()) {
        if let Ok(req) = BuildRequest::try_from(p) {
            let _ = make_spec(&req, &SpecOptions::default());
            prop_assert_eq!(BuildRequest::from_json(&req.to_json()).ok(), Some(req));
        }
    }

    #[test]
    fn random_json_never_panics(s in "\\PC{0,200}") {
        let _ = BuildRequest::from_json(&s);
    }
}
