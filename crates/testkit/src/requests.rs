//! [`ShRequest`]: the request most tests and benchmarks run — busybox's
//! `sh -c SCRIPT` with busybox as the input `busybox`, Nix's layout
//! (`/build` the working dir, inputs at `/nix/store`) — built up with what
//! each needs.

use tvix_oci_castore::{Node, PathComponent};
use tvix_oci_spec::proto::{self, build_request as br};

/// The store path of the busybox input.
pub const BUSYBOX: &str = "/nix/store/busybox/bin/busybox";

/// A busybox `sh -c` build request under construction.
#[derive(Clone, Debug)]
pub struct ShRequest(proto::BuildRequest);

impl ShRequest {
    /// `sh -c script` with `busybox` (a tree holding `bin/busybox`) as the
    /// input `busybox`, for this host's system, no outputs yet.
    pub fn new(busybox: &Node, script: &str) -> Self {
        Self::with_inputs(Vec::new(), script).input("busybox", busybox)
    }

    /// `sh -c script` with `inputs` (named nodes, one of them the busybox
    /// tree as `busybox`).
    pub fn with_inputs(mut inputs: Vec<tvix_oci_castore::proto::Node>, script: &str) -> Self {
        inputs.sort_by(|a, b| name_of(a).cmp(name_of(b)));
        Self(proto::BuildRequest {
            inputs,
            command_args: vec![BUSYBOX.into(), "sh".into(), "-c".into(), script.into()],
            working_dir: "build".into(),
            scratch_paths: vec!["build".into()],
            inputs_dir: "nix/store".into(),
            constraints: Some(br::BuildConstraints {
                system: tvix_oci_spec::host_system(),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    /// One more input, `name` in the inputs dir (kept sorted).
    pub fn input(mut self, name: &str, node: &Node) -> Self {
        let name = PathComponent::try_from(name.as_bytes())
            .unwrap_or_else(|e| panic!("input name {name:?}: {e}"));
        self.0.inputs.push(node.to_proto(&name));
        self.0.inputs.sort_by(|a, b| name_of(a).cmp(name_of(b)));
        self
    }

    /// The outputs, paths in the sandbox without the leading `/`.
    pub fn outputs(mut self, outputs: &[&str]) -> Self {
        self.0.outputs = outputs.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    /// One more environment variable (kept sorted).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.0.environment_vars.push(br::EnvVar {
            key: key.into(),
            value: value.as_bytes().to_vec().into(),
        });
        self.0.environment_vars.sort_by(|a, b| a.key.cmp(&b.key));
        self
    }

    /// The inputs dir writable (an overlay over the inputs), as Nix has it.
    pub fn store_writable(mut self) -> Self {
        self.0.scratch_paths.push("nix/store".into());
        self.0.scratch_paths.sort();
        self
    }

    /// The reference scan's needles.
    pub fn needles(mut self, needles: &[&str]) -> Self {
        self.0.refscan_needles = needles.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    /// The wire request.
    pub fn proto(self) -> proto::BuildRequest {
        self.0
    }

    /// The request validated.
    pub fn build(self) -> Result<tvix_oci_spec::BuildRequest, tvix_oci_spec::Problems> {
        tvix_oci_spec::BuildRequest::try_from(self.0)
    }
}

fn name_of(n: &tvix_oci_castore::proto::Node) -> &[u8] {
    use tvix_oci_castore::proto::node::Node as N;
    match &n.node {
        Some(N::Directory(d)) => d.name.as_ref(),
        Some(N::File(f)) => f.name.as_ref(),
        Some(N::Symlink(s)) => s.name.as_ref(),
        None => &[],
    }
}
