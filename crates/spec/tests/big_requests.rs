//! Large and oversized requests: validation of 100,000 entries is linear
//! and still finds the one bad entry among them; every limit of
//! [`RequestLimits`] refuses a request over it on its size alone, naming
//! the field, the size, the limit and the flag; a working dir inside a file
//! input is the request's fault.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{dir_input, nix_like};
use tvix_oci_castore::proto as cp;
use tvix_oci_spec::proto::{self, build_request as br};
use tvix_oci_spec::{BuildRequest, Problem, RequestLimits};

const N: usize = 100_000;

fn problems(p: proto::BuildRequest, limits: &RequestLimits) -> Vec<Problem> {
    match BuildRequest::validate(p, limits) {
        Ok(_) => Vec::new(),
        Err(e) => e.0,
    }
}

/// N scratch paths `s/00000`.. and N outputs, one below each.
fn wide() -> proto::BuildRequest {
    let mut p = nix_like();
    p.scratch_paths = (0..N).map(|i| format!("s/{i:06}")).collect();
    p.scratch_paths.push("t".into());
    p.working_dir = "t".into();
    p.outputs = (0..N).map(|i| format!("s/{i:06}/out")).collect();
    p
}

fn raised() -> RequestLimits {
    RequestLimits {
        outputs: N + 1,
        scratch_paths: N + 1,
        ..RequestLimits::default()
    }
}

/// Validation of `p`, bounded: the pairwise checks took minutes for this
/// size (hours unoptimized); linear validation takes a second or so.
fn timed(p: proto::BuildRequest, limits: &RequestLimits) -> Vec<Problem> {
    let t = Instant::now();
    let ps = problems(p, limits);
    let took = t.elapsed();
    println!("validated in {took:?}");
    assert!(took < Duration::from_secs(60), "validation took {took:?}");
    ps
}

#[test]
fn a_hundred_thousand_outputs_and_scratch_paths_validate() {
    assert_eq!(timed(wide(), &raised()), vec![]);
}

#[test]
fn one_overlap_hidden_among_a_hundred_thousand_is_found_and_named() {
    let mut p = wide();
    // An output inside another, a scratch path inside another, an
    // additional file holding a scratch path, an output below no scratch.
    p.outputs.insert(50_001, "s/050000/out/x".into());
    p.scratch_paths.insert(70_001, "s/070000/y".into());
    p.outputs.push("u/out".into());
    p.additional_files = vec![br::AdditionalFile {
        path: "s/090000".into(),
        contents: "x".into(),
    }];
    let limits = RequestLimits {
        outputs: N + 2,
        scratch_paths: N + 2,
        ..RequestLimits::default()
    };
    let ps = timed(p, &limits);
    let text: Vec<String> = ps.iter().map(ToString::to_string).collect();
    assert_eq!(
        text,
        vec![
            "additional_files[0].path \"s/090000\" is or contains scratch path \"s/090000\"",
            "scratch_paths[70001] \"s/070000/y\" is inside scratch path \"s/070000\"",
            "outputs[50001] \"s/050000/out/x\" is inside output \"s/050000/out\"",
            "outputs[100001] \"u/out\" is not below a scratch path or inputs_dir",
        ]
    );
}

#[test]
fn a_closure_of_a_hundred_thousand_inputs_passes_the_default_limits() {
    let mut p = nix_like();
    p.inputs = (0..N).map(|i| dir_input(&format!("{i:032}-x"))).collect();
    p.refscan_needles = (0..N + 2).map(|i| format!("{i:032}")).collect();
    assert_eq!(timed(p, &RequestLimits::default()), vec![]);
}

/// A request over every limit by one (limits of 2 entries and 10 bytes).
#[test]
fn every_limit_is_named_with_the_size_and_the_flag() {
    let two = RequestLimits {
        inputs: 2,
        outputs: 2,
        refscan_needles: 2,
        environment_vars: 2,
        command_args: 2,
        scratch_paths: 2,
        additional_files: 2,
        additional_files_bytes: 10,
        request_bytes: 100,
    };
    let mut p = nix_like();
    p.inputs.push(dir_input("z"));
    p.outputs.push("build/z".into());
    p.refscan_needles.push("z".into());
    p.environment_vars.truncate(3);
    p.command_args.push("z".into());
    p.scratch_paths.push("z".into());
    p.constraints.as_mut().unwrap().available_ro_paths =
        vec!["/a".into(), "/b".into(), "/c".into()];
    p.additional_files = (0..3)
        .map(|i| br::AdditionalFile {
            path: format!("etc/{i}"),
            contents: "x".into(),
        })
        .collect();
    let ps = problems(p, &two);
    let text: Vec<String> = ps.iter().map(ToString::to_string).collect();
    let limit = "is more than the limit of 2 (raise it with";
    assert_eq!(
        text,
        vec![
            format!("inputs \"3 entries\" {limit} --max-inputs)"),
            format!("outputs \"3 entries\" {limit} --max-outputs)"),
            format!(
                "refscan_needles \"3 entries\" {limit} --max-inputs or --max-outputs, it is their sum)"
            ),
            format!("environment_vars \"3 entries\" {limit} --max-env-vars)"),
            format!("command_args \"3 entries\" {limit} --max-args)"),
            format!("scratch_paths \"3 entries\" {limit} --max-scratch-paths)"),
            format!("constraints.available_ro_paths \"3 entries\" {limit} --max-scratch-paths)"),
            format!("additional_files \"3 entries\" {limit} --max-additional-files)"),
        ]
    );

    // Within the counts, the bytes.
    let mut p = nix_like();
    p.additional_files[0].contents = vec![b'x'; 11].into();
    let bytes_only = RequestLimits {
        additional_files_bytes: 10,
        request_bytes: 100,
        ..RequestLimits::default()
    };
    let ps = problems(p, &bytes_only);
    let text: Vec<String> = ps.iter().map(ToString::to_string).collect();
    let bytes = proto_len(&nix_like()) + 9;
    assert_eq!(
        text,
        vec![
            "additional_files \"11 bytes of contents\" is more than the limit of 10 \
             (raise it with --max-additional-bytes)"
                .to_owned(),
            format!(
                "the request \"{bytes} bytes\" is more than the limit of 100 \
                 (raise it with --max-request-bytes)"
            ),
        ]
    );
}

fn proto_len(p: &proto::BuildRequest) -> usize {
    prost::Message::encoded_len(p)
}

#[test]
fn a_request_over_a_limit_is_refused_before_its_entries_are_looked_at() {
    // A million bad outputs: one problem, the count, not a million.
    let mut p = nix_like();
    p.outputs = vec!["/abs".into(); 1_000_000];
    let ps = problems(p, &RequestLimits::default());
    assert_eq!(ps.len(), 1, "{ps:#?}");
    assert_eq!(
        ps[0].to_string(),
        "outputs \"1000000 entries\" is more than the limit of 4096 (raise it with --max-outputs)"
    );
}

fn symlink_input(name: &str) -> cp::Node {
    cp::Node {
        node: Some(cp::node::Node::Symlink(cp::SymlinkNode {
            name: name.to_owned().into(),
            target: "elsewhere".into(),
        })),
    }
}

#[test]
fn working_dir_in_an_input_that_is_a_file_or_symlink_is_refused() {
    let f = "1ix2mk3svkrrc1kkwxbflfg6ydfcpxxq-builder.sh";
    for (wd, why) in [
        (
            format!("nix/store/{f}"),
            format!("is input \"{f}\", a file, not a directory"),
        ),
        (
            format!("nix/store/{f}/sub"),
            format!("is inside input \"{f}\", a file, not a directory"),
        ),
    ] {
        let mut p = nix_like();
        p.working_dir = wd.clone();
        let ps = problems(p, &RequestLimits::default());
        let text: Vec<String> = ps.iter().map(ToString::to_string).collect();
        assert_eq!(text, vec![format!("working_dir {wd:?} {why}")]);
    }
    let mut p = nix_like();
    p.inputs.push(symlink_input("2link"));
    p.working_dir = "nix/store/2link".into();
    let ps = problems(p, &RequestLimits::default());
    assert_eq!(
        ps.iter().map(ToString::to_string).collect::<Vec<_>>(),
        vec!["working_dir \"nix/store/2link\" is input \"2link\", a symlink, not a directory"]
    );
    // A directory input is fine, and so is a file input's sibling.
    for wd in [
        "nix/store/0k9yxm9zqc2dgw2xxbyh3mnbs5ijjc7v-busybox/bin",
        "nix/store/other",
    ] {
        let mut p = nix_like();
        p.working_dir = wd.into();
        assert_eq!(problems(p, &RequestLimits::default()), vec![], "{wd}");
    }
}
