//! [`BuildRequest`]: a tvix.build.v1 request, validated. Built only from the
//! wire type (`TryFrom<proto::BuildRequest>`), which checks every rule and
//! reports every problem at once (see [`crate::validate`]); everything
//! downstream (spec, bundle, executor) can then trust it.

use bytes::Bytes;
use tvix_oci_castore::{Node, PathComponent};

use crate::limits::RequestLimits;
use crate::path::{AbsPath, CleanPath};
use crate::proto;
use crate::validate::Problems;

/// A validated build request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildRequest {
    pub(crate) inputs: Vec<(PathComponent, Node)>,
    pub(crate) command_args: Vec<String>,
    pub(crate) working_dir: CleanPath,
    pub(crate) scratch_paths: Vec<CleanPath>,
    pub(crate) inputs_dir: CleanPath,
    pub(crate) outputs: Vec<CleanPath>,
    pub(crate) environment_vars: Vec<(String, Bytes)>,
    pub(crate) constraints: BuildConstraints,
    pub(crate) additional_files: Vec<(CleanPath, Bytes)>,
    pub(crate) refscan_needles: Vec<String>,
}

/// What the build needs of the host.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct BuildConstraints {
    /// e.g. `x86_64-linux`; the executor refuses a build for another system.
    pub system: String,
    /// Bytes of memory the build needs; the executor refuses it when the
    /// host has less available.
    pub min_memory: u64,
    /// Host paths bind-mounted read-only at the same place, e.g. `/dev/kvm`.
    pub available_ro_paths: Vec<AbsPath>,
    pub network_access: bool,
    pub provide_bin_sh: bool,
}

impl BuildRequest {
    /// Validates a wire request within `limits`: a request over a limit is
    /// refused on its sizes alone (each problem naming the field, its size
    /// and the limit); otherwise the error lists every problem found. Takes
    /// time linear in the request's size.
    pub fn validate(p: proto::BuildRequest, limits: &RequestLimits) -> Result<Self, Problems> {
        crate::validate::validate(p, limits)
    }

    /// The inputs (name, root node), sorted by name.
    pub fn inputs(&self) -> &[(PathComponent, Node)] {
        &self.inputs
    }
    /// argv of the build, never empty.
    pub fn command_args(&self) -> &[String] {
        &self.command_args
    }
    /// The build's cwd, relative to the container root.
    pub fn working_dir(&self) -> &CleanPath {
        &self.working_dir
    }
    /// Writable paths, sorted, none inside another.
    pub fn scratch_paths(&self) -> &[CleanPath] {
        &self.scratch_paths
    }
    /// Where the inputs appear (`nix/store` for Nix).
    pub fn inputs_dir(&self) -> &CleanPath {
        &self.inputs_dir
    }
    /// Paths the build must produce, sorted.
    pub fn outputs(&self) -> &[CleanPath] {
        &self.outputs
    }
    /// The environment, sorted by key.
    pub fn environment_vars(&self) -> &[(String, Bytes)] {
        &self.environment_vars
    }
    pub fn constraints(&self) -> &BuildConstraints {
        &self.constraints
    }
    /// Small files placed before the build starts.
    pub fn additional_files(&self) -> &[(CleanPath, Bytes)] {
        &self.additional_files
    }
    /// Strings to look for in the outputs.
    pub fn refscan_needles(&self) -> &[String] {
        &self.refscan_needles
    }
    /// Whether the inputs dir is writable (an overlay on the inputs).
    pub fn inputs_dir_is_scratch(&self) -> bool {
        self.scratch_paths.contains(&self.inputs_dir)
    }
}

impl TryFrom<proto::BuildRequest> for BuildRequest {
    type Error = Problems;

    /// [`BuildRequest::validate`] within the default [`RequestLimits`].
    fn try_from(p: proto::BuildRequest) -> Result<Self, Problems> {
        Self::validate(p, &RequestLimits::default())
    }
}

impl From<&BuildRequest> for proto::BuildRequest {
    fn from(r: &BuildRequest) -> Self {
        let c = &r.constraints;
        proto::BuildRequest {
            inputs: r.inputs.iter().map(|(n, node)| node.to_proto(n)).collect(),
            command_args: r.command_args.clone(),
            working_dir: r.working_dir.to_string(),
            scratch_paths: r.scratch_paths.iter().map(ToString::to_string).collect(),
            inputs_dir: r.inputs_dir.to_string(),
            outputs: r.outputs.iter().map(ToString::to_string).collect(),
            environment_vars: r
                .environment_vars
                .iter()
                .map(|(k, v)| proto::build_request::EnvVar {
                    key: k.clone(),
                    value: v.clone(),
                })
                .collect(),
            constraints: Some(proto::build_request::BuildConstraints {
                system: c.system.clone(),
                min_memory: c.min_memory,
                available_ro_paths: c
                    .available_ro_paths
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
                network_access: c.network_access,
                provide_bin_sh: c.provide_bin_sh,
            }),
            additional_files: r
                .additional_files
                .iter()
                .map(|(p, c)| proto::build_request::AdditionalFile {
                    path: p.to_string(),
                    contents: c.clone(),
                })
                .collect(),
            refscan_needles: r.refscan_needles.clone(),
        }
    }
}

/// The result of a build: one node per requested output (named by the
/// output path's last component), in request order, and per output the
/// indices into `refscan_needles` found in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Build {
    pub request: BuildRequest,
    pub outputs: Vec<(PathComponent, Node)>,
    pub outputs_needles: Vec<Vec<u64>>,
}

impl From<&Build> for proto::Build {
    fn from(b: &Build) -> Self {
        proto::Build {
            build_request: Some((&b.request).into()),
            outputs: b.outputs.iter().map(|(n, node)| node.to_proto(n)).collect(),
            outputs_needles: b
                .outputs_needles
                .iter()
                .map(|n| proto::build::OutputNeedles { needles: n.clone() })
                .collect(),
        }
    }
}

/// Why a wire `Build` is invalid.
#[derive(Debug, thiserror::Error)]
pub enum InvalidBuild {
    #[error("build_request is missing")]
    NoRequest,
    #[error(transparent)]
    Request(#[from] Problems),
    #[error("outputs[{index}]: {err}")]
    Output {
        index: usize,
        err: tvix_oci_castore::NodeError,
    },
    #[error("{outputs} outputs but {needles} outputs_needles entries")]
    NeedlesCount { outputs: usize, needles: usize },
}

impl TryFrom<proto::Build> for Build {
    type Error = InvalidBuild;

    /// Validates a wire result: the request, every output node, and one
    /// needles entry per output.
    fn try_from(p: proto::Build) -> Result<Self, InvalidBuild> {
        let request = BuildRequest::try_from(p.build_request.ok_or(InvalidBuild::NoRequest)?)?;
        let outputs = p
            .outputs
            .into_iter()
            .enumerate()
            .map(|(index, n)| {
                Node::from_proto(n).map_err(|err| InvalidBuild::Output { index, err })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if outputs.len() != p.outputs_needles.len() {
            return Err(InvalidBuild::NeedlesCount {
                outputs: outputs.len(),
                needles: p.outputs_needles.len(),
            });
        }
        let outputs_needles = p.outputs_needles.into_iter().map(|n| n.needles).collect();
        Ok(Build {
            request,
            outputs,
            outputs_needles,
        })
    }
}
