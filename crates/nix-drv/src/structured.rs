//! `__structuredAttrs`: Nix passes such a derivation's attributes not
//! through the environment but as `/build/.attrs.json` (the `__json`
//! attribute plus `outputs`, name → path) and `/build/.attrs.sh` (bash
//! `declare`s of the attributes that are scalars, or lists or maps of
//! scalars), as Nix 2.8's `writeStructuredAttrs` and
//! `writeStructuredAttrsShell` write them. The derivation's own
//! environment variables are then not set at all.

use serde_json::{Map, Value};

use crate::derivation::Derivation;

/// Why a derivation's structured attributes cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StructuredError {
    #[error("__json is not a JSON object: {0}")]
    NotAnObject(String),
    #[error("exportReferencesGraph is not supported yet")]
    ExportReferencesGraph,
}

/// The contents of `.attrs.json` and `.attrs.sh`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttrsFiles {
    pub json: Vec<u8>,
    pub sh: Vec<u8>,
}

/// The files, for a derivation with structured attributes.
pub fn files(drv: &Derivation) -> Option<Result<AttrsFiles, StructuredError>> {
    let raw = drv.structured_attrs()?;
    Some(write(drv, raw))
}

fn write(drv: &Derivation, raw: &[u8]) -> Result<AttrsFiles, StructuredError> {
    let mut obj: Map<String, Value> = match serde_json::from_slice(raw) {
        Ok(Value::Object(o)) => o,
        Ok(other) => {
            let kind = match other {
                Value::Array(_) => "an array",
                Value::String(_) => "a string",
                Value::Number(_) => "a number",
                Value::Bool(_) => "a boolean",
                _ => "null",
            };
            return Err(StructuredError::NotAnObject(format!("it is {kind}")));
        }
        Err(e) => return Err(StructuredError::NotAnObject(e.to_string())),
    };
    if obj.contains_key("exportReferencesGraph") {
        return Err(StructuredError::ExportReferencesGraph);
    }
    let outputs: Map<String, Value> = drv
        .outputs
        .iter()
        .map(|(n, o)| {
            let p = o.path.as_ref().map(|p| p.absolute()).unwrap_or_default();
            (n.clone(), Value::String(p))
        })
        .collect();
    obj.insert("outputs".into(), Value::Object(outputs));
    // serde_json's map is a BTreeMap here (no preserve_order): keys come
    // out sorted bytewise, as nlohmann's std::map dumps them.
    let json = Value::Object(obj);
    let sh = shell(&json);
    Ok(AttrsFiles {
        json: crate::request::rewrite_placeholders(drv, json.to_string().as_bytes()),
        sh: crate::request::rewrite_placeholders(drv, sh.as_bytes()),
    })
}

/// `'…'` with each `'` as `'\''`.
fn shell_escape(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn simple(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(shell_escape(s)),
        // Nix: a number whose float value is whole prints as an int.
        Value::Number(n) => {
            let f = n.as_f64()? as f32;
            (f.ceil() == f).then(|| {
                n.as_i64()
                    .map(|i| (i as i32).to_string())
                    .unwrap_or_else(|| (f as i32).to_string())
            })
        }
        Value::Null => Some("''".into()),
        Value::Bool(b) => Some(if *b { "1" } else { "" }.into()),
        _ => None,
    }
}

fn sh_name_ok(k: &str) -> bool {
    let mut b = k.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// `.attrs.sh`: one `declare` per attribute with a shell-variable name.
fn shell(json: &Value) -> String {
    let mut out = String::new();
    let Value::Object(o) = json else {
        return out;
    };
    for (k, v) in o {
        if !sh_name_ok(k) {
            continue;
        }
        if let Some(s) = simple(v) {
            out.push_str(&format!("declare {k}={s}\n"));
        } else if let Value::Array(a) = v {
            let items: Option<Vec<String>> = a.iter().map(simple).collect();
            if let Some(items) = items {
                let s: String = items.iter().map(|i| format!("{i} ")).collect();
                out.push_str(&format!("declare -a {k}=({s})\n"));
            }
        } else if let Value::Object(m) = v {
            let items: Option<Vec<String>> = m
                .iter()
                .map(|(k2, v2)| simple(v2).map(|s| format!("[{}]={s} ", shell_escape(k2))))
                .collect();
            if let Some(items) = items {
                out.push_str(&format!("declare -A {k}=({})\n", items.concat()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_forms() {
        let v: Value = serde_json::from_str(
            r#"{"s":"it's","n":3,"f":1.5,"b":true,"nb":false,"z":null,"l":["a",1],"m":{"k":"v"},"deep":[[1]],"bad-name":"x"}"#,
        )
        .unwrap();
        let sh = shell(&v);
        assert_eq!(
            sh,
            "declare b=1\ndeclare -a l=('a' 1 )\ndeclare -A m=(['k']='v' )\ndeclare n=3\ndeclare nb=\ndeclare s='it'\\''s'\ndeclare z=''\n"
        );
    }
}
