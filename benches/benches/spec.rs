//! `make_spec` and the bundle skeleton for a request with 5,000 inputs and
//! 100 environment variables (bar: under 5 ms together), next to the same
//! for a request with 2 inputs, to show the cost does not grow with inputs.
//!
//! Run: `cargo bench -p tvix-oci-benches --bench spec`

// A benchmark fixture that fails should stop the run loudly.
#![allow(clippy::expect_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use tvix_oci_castore::proto as cp;
use tvix_oci_castore::{B3Digest, Directory};
use tvix_oci_spec::proto::{self, build_request as br};
use tvix_oci_spec::{BuildRequest, BundleLayout, SpecOptions, make_spec};

fn request(inputs: usize, env: usize) -> BuildRequest {
    let node = |i: usize| cp::Node {
        node: Some(cp::node::Node::Directory(cp::DirectoryNode {
            name: format!("{:032}-input-{i}", i).into(),
            digest: Directory::new().digest().into(),
            size: 0,
        })),
    };
    let p = proto::BuildRequest {
        inputs: (0..inputs).map(node).collect(),
        command_args: vec!["/nix/store/sh".into(), "-c".into(), "true".into()],
        working_dir: "build".into(),
        scratch_paths: vec!["build".into(), "nix/store".into()],
        inputs_dir: "nix/store".into(),
        outputs: vec!["nix/store/out-a".into(), "nix/store/out-b".into()],
        environment_vars: (0..env)
            .map(|i| br::EnvVar {
                key: format!("VAR_{i:04}"),
                value: format!("/nix/store/{}", B3Digest::of(&[i as u8])).into(),
            })
            .collect(),
        constraints: Some(br::BuildConstraints {
            system: "x86_64-linux".into(),
            ..Default::default()
        }),
        additional_files: vec![],
        refscan_needles: vec![],
    };
    BuildRequest::try_from(p).expect("the bench request is valid")
}

fn bench(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let opts = SpecOptions::default();
    let mut g = c.benchmark_group("spec");
    for (name, inputs) in [("2 inputs", 2), ("5000 inputs", 5000)] {
        let req = request(inputs, 100);
        g.bench_function(format!("make_spec/{name}"), |b| {
            b.iter(|| make_spec(&req, &opts).expect("spec"))
        });
        let mut n = 0u64;
        g.bench_function(format!("make_spec+skeleton/{name}"), |b| {
            b.iter(|| {
                n += 1;
                let dir = tmp.path().join(format!("b{n}"));
                BundleLayout::new(&dir)
                    .write_skeleton(&req, &opts)
                    .expect("skeleton");
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
