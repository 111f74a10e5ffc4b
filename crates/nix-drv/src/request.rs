//! A [`Derivation`] as the tvix.build.v1 `BuildRequest` that runs it the
//! way Nix's Linux sandbox does (Nix's `LocalDerivationGoal::initEnv` and
//! the sandbox layout): `/build` as the working and temporary directory,
//! a writable `/nix/store` holding the input closure, the environment in
//! Nix's order of precedence, `passAsFile` attributes as files, network
//! only for fixed-output derivations, and `/bin/sh` bound.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};
use tvix_oci_castore::{Node, PathComponent};
use tvix_oci_spec::proto::{self, build_request as br};
use tvix_oci_spec::{BuildRequest, Problems};

use crate::base32;
use crate::derivation::Derivation;
use crate::store_path::StorePath;

/// Where Nix's sandbox puts the build directory.
pub const BUILD_DIR: &str = "/build";

/// The device a derivation requiring the `kvm` system feature is given.
pub const KVM: &str = "/dev/kvm";

/// What the caller decides about a build.
#[derive(Clone, Debug)]
pub struct RequestOptions {
    /// `NIX_BUILD_CORES` (Nix's `cores` setting; Nix's default is the
    /// number of CPUs, snix sends 0).
    pub build_cores: u32,
}

impl Default for RequestOptions {
    fn default() -> Self {
        Self {
            build_cores: std::thread::available_parallelism()
                .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX)),
        }
    }
}

/// Why a derivation cannot become a request.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(
        "output {0:?} has no store path (floating content-addressed derivations are not supported)"
    )]
    NoOutputPath(String),
    #[error(
        "builder {0:?} is not a store path or absolute path (Nix's builtin builders are not supported)"
    )]
    Builtin(String),
    #[error("the derivation's structured attributes: {0}")]
    StructuredAttrs(#[from] crate::structured::StructuredError),
    #[error("input {0} has a base name that is not a valid castore name: {1}")]
    InputName(StorePath, String),
    #[error("the request is invalid: {0}")]
    Invalid(Problems),
}

/// The request, and how to read its answer in Nix's terms.
#[derive(Clone, Debug)]
pub struct NixRequest {
    pub request: BuildRequest,
    /// Per entry of the request's `outputs` (sorted by path): the output's
    /// name and store path.
    pub outputs: Vec<(String, StorePath)>,
    /// Per refscan needle (same index): the store path it is the hash
    /// part of.
    pub needle_paths: Vec<StorePath>,
}

/// The name of the file Nix writes a `passAsFile` attribute `name` to,
/// below the build directory: `.attr-<nix-base32 of sha256(name)>`.
pub fn pass_as_file_name(name: &str) -> String {
    format!(".attr-{}", base32::encode(&Sha256::digest(name.as_bytes())))
}

/// `builtins.placeholder name`: `/` and the nix-base32 sha256 of
/// `nix-output:<name>`. Nix rewrites it to the output's path in the
/// arguments, the environment and the files it writes for the builder.
pub fn placeholder(output: &str) -> String {
    format!(
        "/{}",
        base32::encode(&Sha256::digest(format!("nix-output:{output}").as_bytes()))
    )
}

/// `s` with each output's placeholder replaced by its path.
pub fn rewrite_placeholders(drv: &Derivation, s: &[u8]) -> Vec<u8> {
    let mut out = s.to_vec();
    for (name, o) in &drv.outputs {
        let Some(p) = &o.path else { continue };
        let from = placeholder(name);
        out = replace(&out, from.as_bytes(), p.absolute().as_bytes());
    }
    out
}

fn replace(s: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    if from.is_empty() || s.len() < from.len() {
        return s.to_vec();
    }
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

/// The environment Nix gives the builder, by key.
pub fn environment(drv: &Derivation, opts: &RequestOptions) -> BTreeMap<String, Vec<u8>> {
    let mut env: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut set = |k: &str, v: &str| {
        env.insert(k.to_owned(), v.as_bytes().to_vec());
    };
    set("PATH", "/path-not-set");
    set("HOME", "/homeless-shelter");
    set("NIX_STORE", crate::store_path::STORE_DIR);
    set("NIX_BUILD_CORES", &opts.build_cores.to_string());
    let pass = pass_as_file(drv);
    // With structured attributes the derivation's variables are not set:
    // they are in .attrs.json and .attrs.sh.
    let own = if drv.structured_attrs().is_some() {
        BTreeMap::new()
    } else {
        drv.env.clone()
    };
    for (k, v) in &own {
        if pass.contains(&k.as_str()) {
            env.insert(
                format!("{k}Path"),
                format!("{BUILD_DIR}/{}", pass_as_file_name(k)).into_bytes(),
            );
        } else {
            env.insert(k.clone(), rewrite_placeholders(drv, v));
        }
    }
    for k in ["NIX_BUILD_TOP", "TMPDIR", "TEMPDIR", "TMP", "TEMP", "PWD"] {
        env.insert(k.to_owned(), BUILD_DIR.as_bytes().to_vec());
    }
    if drv.fixed_output().is_some() {
        env.insert("NIX_OUTPUT_CHECKED".into(), b"1".to_vec());
    }
    if drv.structured_attrs().is_some() {
        // Where the builder finds the files. Nix 2.8 gives the host's
        // build directory here (a path the sandbox does not show); later
        // Nix, and we, the one inside the sandbox.
        for (k, f) in [
            ("NIX_ATTRS_JSON_FILE", ".attrs.json"),
            ("NIX_ATTRS_SH_FILE", ".attrs.sh"),
        ] {
            env.insert(k.into(), format!("{BUILD_DIR}/{f}").into_bytes());
        }
    }
    env.insert("NIX_LOG_FD".into(), b"2".to_vec());
    env.insert("TERM".into(), b"xterm-256color".to_vec());
    env
}

/// The attributes named in `passAsFile` (split on whitespace, as Nix does).
fn pass_as_file(drv: &Derivation) -> Vec<&str> {
    drv.env
        .get("passAsFile")
        .map(|v| {
            std::str::from_utf8(v)
                .unwrap_or("")
                .split([' ', '\t', '\n', '\r'])
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// The request for `drv`. `inputs` is the input closure (the input
/// sources and the used outputs of the input derivations, with everything
/// they refer to), each with its castore node.
pub fn build_request(
    drv: &Derivation,
    inputs: &BTreeMap<StorePath, Node>,
    opts: &RequestOptions,
) -> Result<NixRequest, RequestError> {
    let structured = crate::structured::files(drv).transpose()?;
    if !drv.builder.starts_with('/') {
        return Err(RequestError::Builtin(drv.builder.clone()));
    }
    let mut by_name = Vec::new();
    for (name, o) in &drv.outputs {
        let p = o
            .path
            .clone()
            .ok_or_else(|| RequestError::NoOutputPath(name.clone()))?;
        by_name.push((name.clone(), p));
    }
    let mut needle_paths: Vec<StorePath> = by_name.iter().map(|(_, p)| p.clone()).collect();
    needle_paths.extend(inputs.keys().cloned());
    let mut outputs = by_name;
    outputs.sort_by(|a, b| a.1.cmp(&b.1));

    let mut proto_inputs = Vec::with_capacity(inputs.len());
    for (p, node) in inputs {
        let pc = PathComponent::try_from(p.base_name())
            .map_err(|e| RequestError::InputName(p.clone(), e.to_string()))?;
        proto_inputs.push(node.to_proto(&pc));
    }
    let pass = if structured.is_some() {
        vec![]
    } else {
        pass_as_file(drv)
    };
    let mut additional_files: Vec<br::AdditionalFile> = pass
        .into_iter()
        .filter_map(|k| {
            drv.env.get(k).map(|v| {
                let path = format!("{}/{}", &BUILD_DIR[1..], pass_as_file_name(k));
                let f = br::AdditionalFile {
                    path: path.clone(),
                    contents: rewrite_placeholders(drv, v).into(),
                };
                (path, f)
            })
        })
        .collect::<BTreeMap<_, _>>()
        .into_values()
        .collect();
    if let Some(f) = structured {
        for (name, contents) in [(".attrs.json", f.json), (".attrs.sh", f.sh)] {
            additional_files.push(br::AdditionalFile {
                path: format!("{}/{name}", &BUILD_DIR[1..]),
                contents: contents.into(),
            });
        }
        additional_files.sort_by(|a, b| a.path.cmp(&b.path));
    }
    let mut command_args = vec![drv.builder.clone()];
    for a in &drv.args {
        // Replacing ASCII with ASCII keeps UTF-8 valid.
        let r = rewrite_placeholders(drv, a.as_bytes());
        command_args.push(String::from_utf8(r).unwrap_or_else(|_| a.clone()));
    }
    let p = proto::BuildRequest {
        inputs: proto_inputs,
        command_args,
        working_dir: BUILD_DIR[1..].to_owned(),
        scratch_paths: vec![BUILD_DIR[1..].to_owned(), "nix/store".to_owned()],
        inputs_dir: "nix/store".to_owned(),
        outputs: outputs.iter().map(|(_, p)| p.relative()).collect(),
        environment_vars: environment(drv, opts)
            .into_iter()
            .map(|(key, v)| br::EnvVar {
                key,
                value: v.into(),
            })
            .collect(),
        constraints: Some(br::BuildConstraints {
            system: drv.system.clone(),
            min_memory: 0,
            // As in Nix's sandbox, a derivation that requires the `kvm`
            // feature sees /dev/kvm (which the executor binds only where
            // its operator allows it: --allow-ro-path /dev/kvm).
            available_ro_paths: match drv.required_system_features().contains("kvm") {
                true => vec![KVM.to_owned()],
                false => vec![],
            },
            network_access: drv.fixed_output().is_some(),
            provide_bin_sh: true,
        }),
        additional_files,
        refscan_needles: needle_paths
            .iter()
            .map(|p| p.hash_part().to_owned())
            .collect(),
    };
    let request = BuildRequest::try_from(p).map_err(RequestError::Invalid)?;
    Ok(NixRequest {
        request,
        outputs,
        needle_paths,
    })
}
