//! Requests shared by the spec tests.
#![allow(dead_code, clippy::unwrap_used)]

use tvix_oci_castore::proto as cp;
use tvix_oci_castore::{B3Digest, Directory};
use tvix_oci_spec::proto::{self, build_request as br};

pub fn dir_input(name: &str) -> cp::Node {
    cp::Node {
        node: Some(cp::node::Node::Directory(cp::DirectoryNode {
            name: name.to_owned().into(),
            digest: Directory::new().digest().into(),
            size: 0,
        })),
    }
}

pub fn file_input(name: &str) -> cp::Node {
    cp::Node {
        node: Some(cp::node::Node::File(cp::FileNode {
            name: name.to_owned().into(),
            digest: B3Digest::of(b"#!/bin/sh\n").into(),
            size: 10,
            executable: true,
        })),
    }
}

/// A request shaped like one Nix makes: inputs in nix/store, scratch
/// `build` and `nix/store`, two outputs.
pub fn nix_like() -> proto::BuildRequest {
    proto::BuildRequest {
        inputs: vec![
            dir_input("0k9yxm9zqc2dgw2xxbyh3mnbs5ijjc7v-busybox"),
            file_input("1ix2mk3svkrrc1kkwxbflfg6ydfcpxxq-builder.sh"),
        ],
        command_args: vec![
            "/nix/store/0k9yxm9zqc2dgw2xxbyh3mnbs5ijjc7v-busybox/bin/sh".into(),
            "/nix/store/1ix2mk3svkrrc1kkwxbflfg6ydfcpxxq-builder.sh".into(),
        ],
        working_dir: "build".into(),
        scratch_paths: vec!["build".into(), "nix/store".into()],
        inputs_dir: "nix/store".into(),
        outputs: vec![
            "nix/store/a6xgw8ck6z7vb3yzrn0m7bl0sfkxwlyk-hello".into(),
            "nix/store/zzdlmfvpllz3g0b3cg4zcla3bqhmc5ii-hello-doc".into(),
        ],
        environment_vars: vec![
            br::EnvVar {
                key: "HOME".into(),
                value: "/homeless-shelter".into(),
            },
            br::EnvVar {
                key: "NIX_BUILD_TOP".into(),
                value: "/build".into(),
            },
            br::EnvVar {
                key: "PATH".into(),
                value: "/path-not-set".into(),
            },
            br::EnvVar {
                key: "out".into(),
                value: "/nix/store/a6xgw8ck6z7vb3yzrn0m7bl0sfkxwlyk-hello".into(),
            },
        ],
        constraints: Some(br::BuildConstraints {
            system: "x86_64-linux".into(),
            min_memory: 0,
            available_ro_paths: vec![],
            network_access: false,
            provide_bin_sh: false,
        }),
        additional_files: vec![br::AdditionalFile {
            path: "build/.attrs.json".into(),
            contents: "{}".into(),
        }],
        refscan_needles: vec![
            "a6xgw8ck6z7vb3yzrn0m7bl0sfkxwlyk".into(),
            "0k9yxm9zqc2dgw2xxbyh3mnbs5ijjc7v".into(),
        ],
    }
}
