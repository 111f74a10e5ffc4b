//! Validation of a wire `BuildRequest`: every problem is collected, each
//! naming the field and the offending value, so a user fixes a request in
//! one round. Destinations under `proc`, `sys` and `dev` are refused: runc
//! escapes (CVE-2024-21626, CVE-2025-31133/52565/52881) live there.

use std::collections::HashMap;

use tvix_oci_castore::{Node, PathComponent};

use crate::limits::RequestLimits;
use crate::path::{AbsPath, CleanPath};
use crate::pathset::PathSet;
pub(crate) use crate::problems::{Problem, Problems};
use crate::proto;
use crate::request::{BuildConstraints, BuildRequest};

/// Top-level directories that belong to the runtime, never to a build.
const RESERVED: [&str; 3] = ["proc", "sys", "dev"];

/// Files the bundle writes into the root skeleton.
pub(crate) const SKELETON_FILES: [&str; 3] = ["etc/passwd", "etc/group", "etc/hosts"];

impl Problems {
    /// `s` as a clean path, or a problem on the field `field()` names
    /// (built only then, not for every valid entry).
    fn clean(&mut self, field: impl FnOnce() -> String, s: &str) -> Option<CleanPath> {
        match CleanPath::parse(s) {
            Ok(p) => {
                if RESERVED.contains(&p.first()) {
                    self.push(
                        field(),
                        s,
                        format!(
                            "is in /{}, which belongs to the container runtime",
                            p.first()
                        ),
                    );
                    return None;
                }
                Some(p)
            }
            Err(why) => {
                self.push(field(), s, why);
                None
            }
        }
    }

    fn cleans(&mut self, field: &str, list: &[String]) -> Vec<CleanPath> {
        self.sorted_unique(field, list.iter().map(String::as_str));
        list.iter()
            .enumerate()
            .filter_map(|(i, s)| self.clean(|| format!("{field}[{i}]"), s))
            .collect()
    }

    /// Reports every element not strictly after the one before it.
    fn sorted_unique<'a>(&mut self, field: &str, items: impl Iterator<Item = &'a str>) {
        let mut prev: Option<&str> = None;
        for (i, s) in items.enumerate() {
            if let Some(p) = prev {
                if s == p {
                    self.push(format!("{field}[{i}]"), s, "is a duplicate");
                } else if s < p {
                    self.push(
                        format!("{field}[{i}]"),
                        s,
                        format!("is not sorted: it comes after {p:?}"),
                    );
                }
            }
            prev = Some(s);
        }
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Checks a wire request: first its sizes against `limits` (refused then
/// without looking at any entry), then every rule of [`BuildRequest`]. Time
/// and memory are linear in the request's size: lists are checked for order
/// in one pass, paths against each other through a [`PathSet`].
pub(crate) fn validate(
    p: proto::BuildRequest,
    limits: &RequestLimits,
) -> Result<BuildRequest, Problems> {
    limits.check(&p)?;
    let mut v = Problems::default();

    let mut inputs: Vec<(PathComponent, Node)> = Vec::new();
    for (i, n) in p.inputs.into_iter().enumerate() {
        match Node::from_proto(n) {
            Ok(pair) => inputs.push(pair),
            Err(e) => v.push(format!("inputs[{i}]"), "", e.to_string()),
        }
    }
    let names: Vec<String> = inputs.iter().map(|(n, _)| n.to_string()).collect();
    for (i, w) in inputs.windows(2).enumerate() {
        if w[1].0 == w[0].0 {
            v.push(
                format!("inputs[{}]", i + 1),
                &names[i + 1],
                "is a duplicate name",
            );
        } else if w[1].0 < w[0].0 {
            v.push(
                format!("inputs[{}]", i + 1),
                &names[i + 1],
                format!("is not sorted: it comes after {:?}", names[i]),
            );
        }
    }

    if p.command_args.is_empty() {
        v.push("command_args", "", "is empty: a build needs a command");
    }
    for (i, a) in p.command_args.iter().enumerate() {
        if a.contains('\0') {
            v.push(format!("command_args[{i}]"), a, "contains a NUL byte");
        }
    }
    if p.command_args.first().is_some_and(String::is_empty) {
        v.push(
            "command_args[0]",
            "",
            "is empty: it names the program to run",
        );
    }

    let working_dir = v.clean(|| "working_dir".into(), &p.working_dir);
    let inputs_dir = v.clean(|| "inputs_dir".into(), &p.inputs_dir);
    let scratch_paths = v.cleans("scratch_paths", &p.scratch_paths);
    let outputs = v.cleans("outputs", &p.outputs);

    v.sorted_unique(
        "environment_vars",
        p.environment_vars.iter().map(|e| e.key.as_str()),
    );
    for (i, e) in p.environment_vars.iter().enumerate() {
        let f = format!("environment_vars[{i}].key");
        if e.key.is_empty() {
            v.push(f, &e.key, "is empty");
        } else if e.key.contains('=') {
            v.push(f, &e.key, "contains =");
        } else if e.key.contains('\0') {
            v.push(f, &e.key, "contains a NUL byte");
        }
        if e.value.contains(&0) {
            v.push(
                format!("environment_vars[{i}].value"),
                lossy(&e.value),
                "contains a NUL byte",
            );
        }
    }

    let c = p.constraints.unwrap_or_default();
    if c.system.is_empty() {
        v.push(
            "constraints.system",
            "",
            "is empty: say which system the build is for, e.g. x86_64-linux",
        );
    }
    v.sorted_unique(
        "constraints.available_ro_paths",
        c.available_ro_paths.iter().map(String::as_str),
    );
    let mut ro_paths = Vec::new();
    for (i, s) in c.available_ro_paths.iter().enumerate() {
        let f = format!("constraints.available_ro_paths[{i}]");
        match AbsPath::parse(s) {
            Err(why) => v.push(f, s, why),
            Ok(a) => match a.relative().first() {
                "proc" | "sys" => v.push(
                    f,
                    s,
                    format!(
                        "is in /{}, which belongs to the container runtime",
                        a.relative().first()
                    ),
                ),
                "dev" if a.relative().as_str() == "dev" => {
                    v.push(f, s, "is /dev itself; name a device under it")
                }
                _ => ro_paths.push(a),
            },
        }
    }

    let scratch = PathSet::new(scratch_paths.iter().enumerate());
    let mut additional_files = Vec::new();
    v.sorted_unique(
        "additional_files",
        p.additional_files.iter().map(|f| f.path.as_str()),
    );
    for (i, f) in p.additional_files.into_iter().enumerate() {
        let field = format!("additional_files[{i}].path");
        let Some(path) = v.clean(|| field.clone(), &f.path) else {
            continue;
        };
        if inputs_dir.as_ref().is_some_and(|d| path.starts_with(d)) {
            v.push(
                field,
                &f.path,
                "is inside inputs_dir; additional files go outside it",
            );
        } else if SKELETON_FILES.contains(&path.as_str()) {
            v.push(field, &f.path, "would replace a file of the root skeleton");
        } else if let Some(s) = scratch.at_or_below(&path) {
            v.push(
                field,
                &f.path,
                format!(
                    "is or contains scratch path {:?}",
                    scratch_paths[s].as_str()
                ),
            );
        } else {
            additional_files.push((path, f.contents));
        }
    }

    for (i, s) in p.refscan_needles.iter().enumerate() {
        if s.is_empty() {
            v.push(
                format!("refscan_needles[{i}]"),
                s,
                "is empty: it would match everywhere",
            );
        }
    }

    // Destinations must not overlap.
    for (i, a) in scratch_paths.iter().enumerate() {
        for b in scratch.above(a) {
            v.push(
                format!("scratch_paths[{i}]"),
                a.as_str(),
                format!("is inside scratch path {:?}", scratch_paths[b].as_str()),
            );
        }
        if let Some(d) = &inputs_dir
            && a.is_below(d)
        {
            v.push(
                format!("scratch_paths[{i}]"),
                a.as_str(),
                format!("is inside inputs_dir {:?}", d.as_str()),
            );
        }
    }
    let by_name: HashMap<&str, &Node> = names
        .iter()
        .map(String::as_str)
        .zip(inputs.iter().map(|(_, n)| n))
        .collect();
    let outs = PathSet::new(outputs.iter().enumerate());
    for (i, o) in outputs.iter().enumerate() {
        let field = || format!("outputs[{i}]");
        let in_inputs = inputs_dir.as_ref().is_some_and(|d| o.is_below(d));
        if !in_inputs && scratch.above(o).is_empty() {
            v.push(
                field(),
                o.as_str(),
                "is not below a scratch path or inputs_dir",
            );
        }
        if let Some(d) = &inputs_dir
            && let Some(rest) = o.strip_prefix(d)
        {
            let first = rest.split('/').next().unwrap_or(rest);
            if by_name.contains_key(first) {
                v.push(
                    field(),
                    o.as_str(),
                    format!("is or is inside input {first:?}"),
                );
            }
        }
        for other in outs.above(o) {
            v.push(
                field(),
                o.as_str(),
                format!("is inside output {:?}", outputs[other].as_str()),
            );
        }
    }
    if let Some(w) = &working_dir {
        let in_scratch = scratch.contains_or_above(w);
        let in_inputs = inputs_dir.as_ref().is_some_and(|d| w.starts_with(d));
        if !in_scratch && !in_inputs {
            v.push(
                "working_dir",
                w.as_str(),
                "is neither a scratch path, below one, nor inside inputs_dir",
            );
        }
        if let Some(rest) = inputs_dir.as_ref().and_then(|d| w.strip_prefix(d))
            && let Some((name, rest)) = rest.split_once('/').or(Some((rest, "")))
            && let Some(node) = by_name.get(name)
            && !matches!(node, Node::Directory { .. })
        {
            let is = if rest.is_empty() { "is" } else { "is inside" };
            v.push(
                "working_dir",
                w.as_str(),
                format!("{is} input {name:?}, a {}, not a directory", node.kind()),
            );
        }
    }

    match (v.0.is_empty(), working_dir, inputs_dir) {
        (true, Some(working_dir), Some(inputs_dir)) => Ok(BuildRequest {
            inputs,
            command_args: p.command_args,
            working_dir,
            scratch_paths,
            inputs_dir,
            outputs,
            environment_vars: p
                .environment_vars
                .into_iter()
                .map(|e| (e.key, e.value))
                .collect(),
            constraints: BuildConstraints {
                system: c.system,
                min_memory: c.min_memory,
                available_ro_paths: ro_paths,
                network_access: c.network_access,
                provide_bin_sh: c.provide_bin_sh,
            },
            additional_files,
            refscan_needles: p.refscan_needles,
        }),
        _ => Err(v),
    }
}
