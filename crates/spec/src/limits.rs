//! [`RequestLimits`]: how large a build request may be. A request is
//! untrusted; these bounds are checked first, on the counts and sizes alone,
//! so a request of millions of entries is refused in constant time after
//! decoding, before any per-entry work, and everything after (validation,
//! the OCI spec, the bundle, the mounts) works on bounded input.

use prost::Message;

use crate::proto;
use crate::validate::Problems;

/// The largest build request accepted. Each field bounds one list (or the
/// bytes of one) of a [`proto::BuildRequest`]; the defaults are generous
/// for real Nix builds, so only a request made to hurt the host meets them:
///
/// - `inputs` 262,144: a derivation's inputs are its build closure. The
///   largest real closures (a NixOS system, a full GHC or Chromium build)
///   are tens of thousands of store paths; 100k inputs must pass, with room.
/// - `outputs` 4,096: Nix derivations have a handful of outputs (`out`,
///   `dev`, `doc`, ...), the largest in nixpkgs a few dozen.
/// - `refscan_needles`: one per input and output store path, so
///   `inputs + outputs` by default.
/// - `environment_vars` 16,384: without structured attrs every derivation
///   attribute is a variable; large derivations have a few hundred.
/// - `command_args` 65,536: an exec's argv and environment together are
///   limited by the kernel (ARG_MAX, a quarter of the stack limit); more
///   arguments than this would not exec anyway.
/// - `scratch_paths` 1,024, also bounding `constraints.available_ro_paths`:
///   each is a mount of the container; Nix uses two or three.
/// - `additional_files` 4,096 files of at most 32 MiB together: Nix writes
///   `.attrs.json`, `.attrs.sh` and `passAsFile` files, a handful, the
///   largest (`exportReferencesGraph` in `.attrs.json`) a few MiB.
/// - `request_bytes` 64 MiB (the protobuf `encoded_len`): 262,144 inputs of
///   a Nix store name, a digest and a size, plus their needles, are ~40 MiB.
///   The gRPC server's message limit follows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestLimits {
    pub inputs: usize,
    pub outputs: usize,
    pub refscan_needles: usize,
    pub environment_vars: usize,
    pub command_args: usize,
    pub scratch_paths: usize,
    pub additional_files: usize,
    pub additional_files_bytes: u64,
    pub request_bytes: u64,
}

impl Default for RequestLimits {
    fn default() -> Self {
        let (inputs, outputs) = (1 << 18, 1 << 12);
        Self {
            inputs,
            outputs,
            refscan_needles: inputs + outputs,
            environment_vars: 1 << 14,
            command_args: 1 << 16,
            scratch_paths: 1 << 10,
            additional_files: 1 << 12,
            additional_files_bytes: 32 << 20,
            request_bytes: 64 << 20,
        }
    }
}

impl RequestLimits {
    /// No bound at all: for requests the caller made itself.
    pub fn unlimited() -> Self {
        Self {
            inputs: usize::MAX,
            outputs: usize::MAX,
            refscan_needles: usize::MAX,
            environment_vars: usize::MAX,
            command_args: usize::MAX,
            scratch_paths: usize::MAX,
            additional_files: usize::MAX,
            additional_files_bytes: u64::MAX,
            request_bytes: u64::MAX,
        }
    }

    /// Checks the counts (constant time), then the bytes: every limit `p`
    /// exceeds is one problem naming the field, its size, the limit and the
    /// `serve` flag raising it. Nothing is reported while all counts are
    /// within their limits but the bytes are not checked yet: the byte
    /// sums walk lists whose lengths are bounded by then.
    pub(crate) fn check(&self, p: &proto::BuildRequest) -> Result<(), Problems> {
        let mut v = Problems::default();
        let ro = p
            .constraints
            .as_ref()
            .map_or(0, |c| c.available_ro_paths.len());
        let counts: [(&str, usize, usize, &str); 8] = [
            ("inputs", p.inputs.len(), self.inputs, "--max-inputs"),
            ("outputs", p.outputs.len(), self.outputs, "--max-outputs"),
            (
                "refscan_needles",
                p.refscan_needles.len(),
                self.refscan_needles,
                "--max-inputs or --max-outputs, it is their sum",
            ),
            (
                "environment_vars",
                p.environment_vars.len(),
                self.environment_vars,
                "--max-env-vars",
            ),
            (
                "command_args",
                p.command_args.len(),
                self.command_args,
                "--max-args",
            ),
            (
                "scratch_paths",
                p.scratch_paths.len(),
                self.scratch_paths,
                "--max-scratch-paths",
            ),
            (
                "constraints.available_ro_paths",
                ro,
                self.scratch_paths,
                "--max-scratch-paths",
            ),
            (
                "additional_files",
                p.additional_files.len(),
                self.additional_files,
                "--max-additional-files",
            ),
        ];
        for (field, n, limit, flag) in counts {
            if n > limit {
                v.over(field, n as u64, "entries", limit as u64, flag);
            }
        }
        if !v.0.is_empty() {
            return Err(v);
        }
        let files: u64 = p
            .additional_files
            .iter()
            .map(|f| f.contents.len() as u64)
            .sum();
        if files > self.additional_files_bytes {
            v.over(
                "additional_files",
                files,
                "bytes of contents",
                self.additional_files_bytes,
                "--max-additional-bytes",
            );
        }
        let bytes = p.encoded_len() as u64;
        if bytes > self.request_bytes {
            v.over(
                "the request",
                bytes,
                "bytes",
                self.request_bytes,
                "--max-request-bytes",
            );
        }
        if v.0.is_empty() { Ok(()) } else { Err(v) }
    }
}
