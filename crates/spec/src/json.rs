//! The JSON form of requests and results: the tvix.build.v1 fields under
//! their protobuf names, human-writable. Digests are hex (base64 accepted);
//! bytes fields (env values, file contents, names, symlink targets) are a
//! string, or `{"base64": "…"}` for bytes that are not UTF-8.
//!
//! ```json
//! {
//!   "inputs": [{"name": "abc-busybox", "directory": {"digest": "8b5b…810e", "size": 2}}],
//!   "command_args": ["/bin/sh", "-c", "echo hi > $out"],
//!   "working_dir": "build",
//!   "scratch_paths": ["build", "nix/store"],
//!   "inputs_dir": "nix/store",
//!   "outputs": ["nix/store/xyz-out"],
//!   "environment_vars": [{"key": "out", "value": "/nix/store/xyz-out"}],
//!   "constraints": {"system": "x86_64-linux", "provide_bin_sh": true},
//!   "refscan_needles": ["xyz"]
//! }
//! ```

use bytes::Bytes;
use data_encoding::BASE64;
use serde::{Deserialize, Serialize};
use tvix_oci_castore::{B3Digest, Node, PathComponent};

use crate::proto::{self, build_request as br};
use crate::request::{Build, BuildRequest};
use crate::validate::{Problem, Problems};

/// Bytes as a string when UTF-8, else `{"base64": "…"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum JsonBytes {
    Text(String),
    Base64 { base64: String },
}

impl JsonBytes {
    fn from_bytes(b: &[u8]) -> Self {
        match std::str::from_utf8(b) {
            Ok(s) => JsonBytes::Text(s.to_owned()),
            Err(_) => JsonBytes::Base64 {
                base64: BASE64.encode(b),
            },
        }
    }

    fn to_bytes(&self, field: &str, v: &mut Vec<Problem>) -> Bytes {
        match self {
            JsonBytes::Text(s) => Bytes::copy_from_slice(s.as_bytes()),
            JsonBytes::Base64 { base64 } => match BASE64.decode(base64.as_bytes()) {
                Ok(b) => b.into(),
                Err(e) => {
                    v.push(Problem {
                        field: field.into(),
                        value: base64.clone(),
                        problem: format!("is not base64: {e}"),
                    });
                    Bytes::new()
                }
            },
        }
    }
}

/// A named castore node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsonNode {
    pub name: JsonBytes,
    #[serde(flatten)]
    pub node: JsonNodeKind,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JsonNodeKind {
    Directory {
        digest: String,
        size: u64,
    },
    File {
        digest: String,
        size: u64,
        #[serde(default)]
        executable: bool,
    },
    Symlink {
        target: JsonBytes,
    },
}

impl JsonNode {
    /// The JSON form of a named node.
    pub fn new(name: &PathComponent, node: &Node) -> Self {
        let node = match node {
            Node::Directory { digest, size } => JsonNodeKind::Directory {
                digest: digest.to_hex(),
                size: *size,
            },
            Node::File {
                digest,
                size,
                executable,
            } => JsonNodeKind::File {
                digest: digest.to_hex(),
                size: *size,
                executable: *executable,
            },
            Node::Symlink { target } => JsonNodeKind::Symlink {
                target: JsonBytes::from_bytes(target.as_bytes()),
            },
        };
        JsonNode {
            name: JsonBytes::from_bytes(name.as_bytes()),
            node,
        }
    }

    fn to_proto(&self, field: &str, v: &mut Vec<Problem>) -> tvix_oci_castore::proto::Node {
        use tvix_oci_castore::proto::{self as cp, node::Node as N};
        let name = self.name.to_bytes(&format!("{field}.name"), v);
        let mut digest = |d: &str| match d.parse::<B3Digest>() {
            Ok(d) => Bytes::from(d),
            Err(e) => {
                v.push(Problem {
                    field: format!("{field}.digest"),
                    value: d.into(),
                    problem: e.to_string(),
                });
                Bytes::new()
            }
        };
        let node = match &self.node {
            JsonNodeKind::Directory { digest: d, size } => N::Directory(cp::DirectoryNode {
                name,
                digest: digest(d),
                size: *size,
            }),
            JsonNodeKind::File {
                digest: d,
                size,
                executable,
            } => N::File(cp::FileNode {
                name,
                digest: digest(d),
                size: *size,
                executable: *executable,
            }),
            JsonNodeKind::Symlink { target } => {
                let target = target.to_bytes(&format!("{field}.target"), v);
                N::Symlink(cp::SymlinkNode { name, target })
            }
        };
        cp::Node { node: Some(node) }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonEnvVar {
    pub key: String,
    pub value: JsonBytes,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JsonConstraints {
    pub system: String,
    pub min_memory: u64,
    pub available_ro_paths: Vec<String>,
    pub network_access: bool,
    pub provide_bin_sh: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonFile {
    pub path: String,
    pub contents: JsonBytes,
}

impl Default for JsonBytes {
    fn default() -> Self {
        JsonBytes::Text(String::new())
    }
}

/// A build request in JSON. Every field may be left out (it then takes its
/// protobuf default, and validation says what is missing).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JsonBuildRequest {
    pub inputs: Vec<JsonNode>,
    pub command_args: Vec<String>,
    pub working_dir: String,
    pub scratch_paths: Vec<String>,
    pub inputs_dir: String,
    pub outputs: Vec<String>,
    pub environment_vars: Vec<JsonEnvVar>,
    pub constraints: JsonConstraints,
    pub additional_files: Vec<JsonFile>,
    pub refscan_needles: Vec<String>,
}

/// Why a JSON request could not be read.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    #[error("malformed JSON at line {line}, column {column}: {msg}")]
    Syntax {
        line: usize,
        column: usize,
        msg: String,
    },
    #[error(transparent)]
    Invalid(#[from] Problems),
}

impl JsonBuildRequest {
    /// The wire form; fails only on undecodable digests or base64.
    pub fn to_proto(&self) -> Result<proto::BuildRequest, Problems> {
        let mut v = Vec::new();
        let inputs = self
            .inputs
            .iter()
            .enumerate()
            .map(|(i, n)| n.to_proto(&format!("inputs[{i}]"), &mut v))
            .collect();
        let environment_vars = self
            .environment_vars
            .iter()
            .enumerate()
            .map(|(i, e)| br::EnvVar {
                key: e.key.clone(),
                value: e
                    .value
                    .to_bytes(&format!("environment_vars[{i}].value"), &mut v),
            })
            .collect();
        let additional_files = self
            .additional_files
            .iter()
            .enumerate()
            .map(|(i, f)| br::AdditionalFile {
                path: f.path.clone(),
                contents: f
                    .contents
                    .to_bytes(&format!("additional_files[{i}].contents"), &mut v),
            })
            .collect();
        let c = &self.constraints;
        let p = proto::BuildRequest {
            inputs,
            command_args: self.command_args.clone(),
            working_dir: self.working_dir.clone(),
            scratch_paths: self.scratch_paths.clone(),
            inputs_dir: self.inputs_dir.clone(),
            outputs: self.outputs.clone(),
            environment_vars,
            constraints: Some(br::BuildConstraints {
                system: c.system.clone(),
                min_memory: c.min_memory,
                available_ro_paths: c.available_ro_paths.clone(),
                network_access: c.network_access,
                provide_bin_sh: c.provide_bin_sh,
            }),
            additional_files,
            refscan_needles: self.refscan_needles.clone(),
        };
        if v.is_empty() {
            Ok(p)
        } else {
            Err(Problems(v))
        }
    }

    /// The JSON form of a validated request: its wire form, field for
    /// field, with the inputs as named nodes.
    pub fn new(r: &BuildRequest) -> Self {
        let p = proto::BuildRequest::from(r);
        let c = p.constraints.unwrap_or_default();
        JsonBuildRequest {
            inputs: r
                .inputs()
                .iter()
                .map(|(n, node)| JsonNode::new(n, node))
                .collect(),
            command_args: p.command_args,
            working_dir: p.working_dir,
            scratch_paths: p.scratch_paths,
            inputs_dir: p.inputs_dir,
            outputs: p.outputs,
            environment_vars: p
                .environment_vars
                .into_iter()
                .map(|e| JsonEnvVar {
                    key: e.key,
                    value: JsonBytes::from_bytes(&e.value),
                })
                .collect(),
            constraints: JsonConstraints {
                system: c.system,
                min_memory: c.min_memory,
                available_ro_paths: c.available_ro_paths,
                network_access: c.network_access,
                provide_bin_sh: c.provide_bin_sh,
            },
            additional_files: p
                .additional_files
                .into_iter()
                .map(|f| JsonFile {
                    path: f.path,
                    contents: JsonBytes::from_bytes(&f.contents),
                })
                .collect(),
            refscan_needles: p.refscan_needles,
        }
    }
}

impl BuildRequest {
    /// Reads and validates a JSON request within the default limits.
    pub fn from_json(s: &str) -> Result<Self, JsonError> {
        Self::from_json_within(s, &crate::RequestLimits::default())
    }

    /// Reads and validates a JSON request within `limits`.
    pub fn from_json_within(s: &str, limits: &crate::RequestLimits) -> Result<Self, JsonError> {
        let j: JsonBuildRequest = serde_json::from_str(s).map_err(|e| JsonError::Syntax {
            line: e.line(),
            column: e.column(),
            msg: e.to_string(),
        })?;
        Ok(BuildRequest::validate(j.to_proto()?, limits)?)
    }

    /// The request as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&JsonBuildRequest::new(self)).unwrap_or_default()
    }
}

/// The JSON form of a build result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsonBuild {
    /// One node per requested output, in request order.
    pub outputs: Vec<JsonNode>,
    /// Per output, the indices into `refscan_needles` found in it.
    pub outputs_needles: Vec<Vec<u64>>,
}

impl From<&Build> for JsonBuild {
    fn from(b: &Build) -> Self {
        JsonBuild {
            outputs: b
                .outputs
                .iter()
                .map(|(n, node)| JsonNode::new(n, node))
                .collect(),
            outputs_needles: b.outputs_needles.clone(),
        }
    }
}
