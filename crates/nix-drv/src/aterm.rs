//! The parser of Nix's `.drv` format (ATerm):
//! `Derive([outputs],[inputDrvs],[inputSrcs],system,builder,[args],[env])`
//! with strings escaped as Nix escapes them (`\"`, `\\`, `\n`, `\r`, `\t`;
//! a backslash before any other byte stands for that byte). A `.drv` is
//! untrusted: every error names the byte offset it was found at, and no
//! input panics (the structure is fixed, so nesting is bounded).

use std::collections::{BTreeMap, BTreeSet};

use crate::derivation::{Derivation, Output};
use crate::store_path::StorePath;

/// Why a `.drv` could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at byte {pos}: {msg}")]
pub struct ParseError {
    /// Byte offset into the file.
    pub pos: usize,
    pub msg: String,
}

struct Cursor<'a> {
    s: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn err<T>(&self, pos: usize, msg: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError {
            pos,
            msg: msg.into(),
        })
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn expect(&mut self, lit: &[u8]) -> Result<(), ParseError> {
        let rest = self.s.get(self.pos..).unwrap_or_default();
        if rest.starts_with(lit) {
            self.pos += lit.len();
            return Ok(());
        }
        // Name the first byte that differs.
        let same = rest.iter().zip(lit).take_while(|(a, b)| a == b).count();
        let found = match rest.get(same) {
            Some(&c) => format!("{:?}", char::from(c)),
            None => "the end of the file".to_owned(),
        };
        self.err(
            self.pos + same,
            format!("expected {:?}, found {found}", String::from_utf8_lossy(lit)),
        )
    }

    /// A quoted string, unescaped.
    fn bytes(&mut self) -> Result<Vec<u8>, ParseError> {
        let start = self.pos;
        self.expect(b"\"")?;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => return self.err(start, "string never closed"),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    let c = match self.s.get(self.pos + 1) {
                        None => return self.err(self.pos, "escape at the end of the file"),
                        Some(b'n') => b'\n',
                        Some(b'r') => b'\r',
                        Some(b't') => b'\t',
                        Some(&c) => c,
                    };
                    out.push(c);
                    self.pos += 2;
                }
                Some(c) => {
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
    }

    /// A quoted string that must be UTF-8; `what` names it in errors.
    fn string(&mut self, what: &str) -> Result<String, ParseError> {
        let start = self.pos;
        let b = self.bytes()?;
        String::from_utf8(b).or_else(|_| self.err(start, format!("{what} is not UTF-8")))
    }

    fn store_path(&mut self, what: &str) -> Result<StorePath, ParseError> {
        let start = self.pos;
        let s = self.string(what)?;
        StorePath::from_absolute(&s).or_else(|e| self.err(start, format!("{what}: {e}")))
    }

    /// `[item,item,…]`.
    fn list<T>(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<T, ParseError>,
    ) -> Result<Vec<(usize, T)>, ParseError> {
        self.expect(b"[")?;
        let mut v = Vec::new();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(v);
        }
        loop {
            let at = self.pos;
            v.push((at, item(self)?));
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(v);
                }
                _ => self.expect(b"]").map(|_| ())?,
            }
        }
    }
}

fn output_name_ok(n: &str) -> bool {
    !n.is_empty()
        && n.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"+-._?=".contains(&c))
}

/// Parses a `.drv` file's contents.
pub fn parse(s: &[u8]) -> Result<Derivation, ParseError> {
    let mut c = Cursor { s, pos: 0 };
    c.expect(b"Derive(")?;
    let mut d = Derivation::default();
    for (at, (name, path, hash_algo, hash)) in c.list(|c| {
        c.expect(b"(")?;
        let name = c.string("output name")?;
        c.expect(b",")?;
        let p_at = c.pos;
        let path = c.string("output path")?;
        let path = if path.is_empty() {
            None
        } else {
            Some(
                StorePath::from_absolute(&path)
                    .or_else(|e| c.err(p_at, format!("output {name}: {e}")))?,
            )
        };
        c.expect(b",")?;
        let algo = c.string("output hash algorithm")?;
        c.expect(b",")?;
        let hash = c.string("output hash")?;
        c.expect(b")")?;
        Ok((name, path, algo, hash))
    })? {
        if !output_name_ok(&name) {
            return c.err(at, format!("output name {name:?} is not a valid name"));
        }
        let o = Output {
            path,
            hash_algo,
            hash,
        };
        if d.outputs.insert(name.clone(), o).is_some() {
            return c.err(at, format!("output {name:?} appears twice"));
        }
    }
    if d.outputs.is_empty() {
        return c.err(c.pos, "the derivation has no outputs");
    }
    c.expect(b",")?;
    for (at, (p, outs)) in c.list(|c| {
        c.expect(b"(")?;
        let p = c.store_path("input derivation")?;
        c.expect(b",")?;
        let outs = c.list(|c| c.string("input derivation output name"))?;
        c.expect(b")")?;
        Ok((p, outs))
    })? {
        let mut set = BTreeSet::new();
        for (o_at, o) in outs {
            if !set.insert(o.clone()) {
                return c.err(o_at, format!("output {o:?} of {p} appears twice"));
            }
        }
        if d.input_derivations.insert(p.clone(), set).is_some() {
            return c.err(at, format!("input derivation {p} appears twice"));
        }
    }
    c.expect(b",")?;
    for (at, p) in c.list(|c| c.store_path("input source"))? {
        if !d.input_sources.insert(p.clone()) {
            return c.err(at, format!("input source {p} appears twice"));
        }
    }
    c.expect(b",")?;
    d.system = c.string("system")?;
    c.expect(b",")?;
    d.builder = c.string("builder")?;
    c.expect(b",")?;
    d.args = c
        .list(|c| c.string("argument"))?
        .into_iter()
        .map(|(_, a)| a)
        .collect();
    c.expect(b",")?;
    let env: Vec<(usize, (String, Vec<u8>))> = c.list(|c| {
        c.expect(b"(")?;
        let k = c.string("environment variable name")?;
        c.expect(b",")?;
        let v = c.bytes()?;
        c.expect(b")")?;
        Ok((k, v))
    })?;
    let mut map = BTreeMap::new();
    for (at, (k, v)) in env {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return c.err(
                at,
                format!("environment variable name {k:?} is empty or holds '=' or NUL"),
            );
        }
        if map.insert(k.clone(), v).is_some() {
            return c.err(at, format!("environment variable {k:?} appears twice"));
        }
    }
    d.env = map;
    c.expect(b")")?;
    if c.pos != s.len() {
        return c.err(c.pos, "trailing bytes after the derivation");
    }
    Ok(d)
}
