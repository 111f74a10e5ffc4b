//! The checks Nix makes of a build's outputs once it has run, beyond the
//! fixed-output hash ([`crate::fixed`]): no reference cycle between the
//! outputs of one derivation, and the reference constraints a derivation
//! may declare: `allowedReferences`, `allowedRequisites`,
//! `disallowedReferences`, `disallowedRequisites` (in the environment,
//! whitespace-separated, applying to every output), or per output in
//! `outputChecks` under `__structuredAttrs`. Each entry is a store path
//! or the name of one of the derivation's own outputs. Messages follow
//! Nix 2.8's wording so that the same failure reads the same.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::derivation::Derivation;
use crate::result::NixOutput;
use crate::store_path::StorePath;

/// Why built outputs fail Nix's checks (each the build's fault).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    #[error(
        "cycle detected in build of '{drv}' in the references of output '{to}' from output '{from}'"
    )]
    Cycle {
        drv: String,
        to: String,
        from: String,
    },
    #[error(
        "output '{path}' is not allowed to refer to the following paths ({attr} of output {output}): {}",
        .bad.join(", ")
    )]
    NotAllowed {
        /// The output's name (`out`, `dev`…).
        output: String,
        path: String,
        /// Which constraint (`allowedReferences`…).
        attr: String,
        bad: Vec<String>,
    },
    #[error("derivation contains an illegal reference specifier '{0}'")]
    BadSpecifier(String),
    #[error("outputChecks.{output}.{attr} is not a list of strings")]
    BadOutputChecks { output: String, attr: String },
}

/// The four constraints, as written (store paths or output names).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Constraints {
    pub allowed_references: Option<Vec<String>>,
    pub allowed_requisites: Option<Vec<String>>,
    pub disallowed_references: Option<Vec<String>>,
    pub disallowed_requisites: Option<Vec<String>>,
    /// Leave the output itself out of its closure (Nix: always for the
    /// environment form; `ignoreSelfRefs` in `outputChecks`).
    pub ignore_self_refs: bool,
}

impl Constraints {
    fn any_requisites(&self) -> bool {
        self.allowed_requisites.is_some() || self.disallowed_requisites.is_some()
    }
}

const ATTRS: [&str; 4] = [
    "allowedReferences",
    "allowedRequisites",
    "disallowedReferences",
    "disallowedRequisites",
];

/// The constraints on output `name` of `drv`.
pub fn constraints(drv: &Derivation, name: &str) -> Result<Constraints, CheckError> {
    let mut c = Constraints::default();
    if let Some(raw) = drv.structured_attrs() {
        let v: Value = serde_json::from_slice(raw).unwrap_or(Value::Null);
        let Some(o) = v.get("outputChecks").and_then(|o| o.get(name)) else {
            return Ok(c);
        };
        let mut lists = [None, None, None, None];
        for (slot, attr) in lists.iter_mut().zip(ATTRS) {
            if let Some(l) = o.get(attr) {
                let bad = || CheckError::BadOutputChecks {
                    output: name.to_owned(),
                    attr: attr.to_owned(),
                };
                let l = l.as_array().ok_or_else(bad)?;
                let l: Option<Vec<String>> =
                    l.iter().map(|s| s.as_str().map(str::to_owned)).collect();
                *slot = Some(l.ok_or_else(bad)?);
            }
        }
        let [a, b, d, e] = lists;
        c.allowed_references = a;
        c.allowed_requisites = b;
        c.disallowed_references = d;
        c.disallowed_requisites = e;
        c.ignore_self_refs = o.get("ignoreSelfRefs").and_then(Value::as_bool) == Some(true);
        return Ok(c);
    }
    let get = |attr: &str| {
        drv.env.get(attr).map(|v| {
            String::from_utf8_lossy(v)
                .split_ascii_whitespace()
                .map(str::to_owned)
                .collect()
        })
    };
    c.allowed_references = get(ATTRS[0]);
    c.allowed_requisites = get(ATTRS[1]);
    c.disallowed_references = get(ATTRS[2]);
    c.disallowed_requisites = get(ATTRS[3]);
    c.ignore_self_refs = true;
    Ok(c)
}

/// Checks before the build that every constraint can be read and names
/// store paths or outputs of `drv` (the derivation's fault, not the
/// build's).
pub fn validate(drv: &Derivation) -> Result<(), CheckError> {
    for name in drv.outputs.keys() {
        let c = constraints(drv, name)?;
        for spec in [
            &c.allowed_references,
            &c.allowed_requisites,
            &c.disallowed_references,
            &c.disallowed_requisites,
        ]
        .into_iter()
        .flatten()
        {
            specifiers(drv, spec)?;
        }
    }
    Ok(())
}

/// Whether some output's constraints need the closure of the inputs it
/// refers to (`…Requisites`).
pub fn needs_requisites(drv: &Derivation) -> bool {
    drv.outputs
        .keys()
        .any(|n| constraints(drv, n).is_ok_and(|c| c.any_requisites()))
}

/// Fails where one output refers to another that refers back (directly
/// or through others), as Nix's topological sort of the outputs does,
/// visiting them in name order.
pub fn check_cycles(
    drv_path: &str,
    outputs: &BTreeMap<String, NixOutput>,
) -> Result<(), CheckError> {
    let by_path: BTreeMap<&str, &str> = outputs
        .iter()
        .map(|(n, o)| (o.path.as_str(), n.as_str()))
        .collect();
    let mut done = BTreeSet::new();
    for name in outputs.keys() {
        let mut parents = Vec::new();
        visit(drv_path, name, outputs, &by_path, &mut parents, &mut done)?;
    }
    Ok(())
}

fn visit<'a>(
    drv_path: &str,
    name: &'a str,
    outputs: &'a BTreeMap<String, NixOutput>,
    by_path: &BTreeMap<&str, &'a str>,
    parents: &mut Vec<&'a str>,
    done: &mut BTreeSet<&'a str>,
) -> Result<(), CheckError> {
    if done.contains(name) {
        return Ok(());
    }
    parents.push(name);
    for r in &outputs[name].references {
        let Some(&to) = by_path.get(r.as_str()) else {
            continue;
        };
        if to == name {
            continue;
        }
        if parents.contains(&to) {
            return Err(CheckError::Cycle {
                drv: drv_path.to_owned(),
                to: to.to_owned(),
                from: name.to_owned(),
            });
        }
        visit(drv_path, to, outputs, by_path, parents, done)?;
    }
    parents.pop();
    done.insert(name);
    Ok(())
}

/// The store paths other than the outputs that the outputs refer to:
/// what [`check_references`] needs the requisites of.
pub fn foreign_references(outputs: &BTreeMap<String, NixOutput>) -> BTreeSet<String> {
    let own: BTreeSet<&str> = outputs.values().map(|o| o.path.as_str()).collect();
    outputs
        .values()
        .flat_map(|o| o.references.iter())
        .filter(|r| !own.contains(r.as_str()))
        .cloned()
        .collect()
}

/// Checks each output against its constraints. `requisites` holds, for
/// each path of [`foreign_references`], its closure in the store (itself
/// included); it is only read when a `…Requisites` constraint is set.
pub fn check_references(
    drv: &Derivation,
    outputs: &BTreeMap<String, NixOutput>,
    requisites: &BTreeMap<String, BTreeSet<String>>,
) -> Result<(), CheckError> {
    for (name, o) in outputs {
        let c = constraints(drv, name)?;
        let refs: BTreeSet<String> = o.references.iter().cloned().collect();
        let closure = || {
            let mut cl = closure_of(&o.path, outputs, requisites);
            if c.ignore_self_refs {
                cl.remove(&o.path);
            }
            cl
        };
        let checks = [
            (&c.allowed_references, true, false, ATTRS[0]),
            (&c.allowed_requisites, true, true, ATTRS[1]),
            (&c.disallowed_references, false, false, ATTRS[2]),
            (&c.disallowed_requisites, false, true, ATTRS[3]),
        ];
        for (spec, allowed, recursive, attr) in checks {
            let Some(spec) = spec else { continue };
            let spec = specifiers(drv, spec)?;
            let used = if recursive { closure() } else { refs.clone() };
            let bad: Vec<String> = used
                .into_iter()
                .filter(|p| spec.contains(p) != allowed)
                .collect();
            if !bad.is_empty() {
                return Err(CheckError::NotAllowed {
                    output: name.clone(),
                    path: o.path.clone(),
                    attr: attr.to_owned(),
                    bad,
                });
            }
        }
    }
    Ok(())
}

/// Store paths and output names, as store paths.
fn specifiers(drv: &Derivation, spec: &[String]) -> Result<BTreeSet<String>, CheckError> {
    spec.iter()
        .map(|s| {
            if StorePath::from_absolute(s).is_ok() {
                return Ok(s.clone());
            }
            drv.outputs
                .get(s)
                .and_then(|o| o.path.as_ref())
                .map(StorePath::absolute)
                .ok_or_else(|| CheckError::BadSpecifier(s.clone()))
        })
        .collect()
}

/// The closure of an output: itself, the outputs it reaches, and the
/// store closures of the other paths they refer to.
fn closure_of(
    start: &str,
    outputs: &BTreeMap<String, NixOutput>,
    requisites: &BTreeMap<String, BTreeSet<String>>,
) -> BTreeSet<String> {
    let by_path: BTreeMap<&str, &NixOutput> =
        outputs.values().map(|o| (o.path.as_str(), o)).collect();
    let mut seen = BTreeSet::new();
    let mut todo = vec![start.to_owned()];
    while let Some(p) = todo.pop() {
        if !seen.insert(p.clone()) {
            continue;
        }
        if let Some(o) = by_path.get(p.as_str()) {
            todo.extend(o.references.iter().cloned());
        } else if let Some(r) = requisites.get(&p) {
            seen.extend(r.iter().cloned());
        }
    }
    seen
}

#[cfg(test)]
#[path = "checks_tests.rs"]
mod tests;
