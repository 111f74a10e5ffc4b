//! Checks shared by the fuzz targets (`fuzz/`, run with `cargo fuzz`) and
//! the corpus replay test here (run by CI with the rest): each takes
//! arbitrary bytes, feeds them to a boundary that takes data from outside,
//! and panics only when a property breaks — never because the input is
//! bad. The corpora live in `fuzz/corpus/<target>/`.

// Panicking on a broken property is the point of a check.
#![allow(clippy::expect_used)]

use prost::Message;
use tvix_oci_castore::{Directory, Node, proto};
use tvix_oci_executor::refscan::Needles;
use tvix_oci_spec::{BuildRequest, SpecOptions, make_spec};

/// A wire Directory: decoding and validation never panic; a valid one
/// encodes back to a message that validates to the same Directory with the
/// same digest.
pub fn directory(data: &[u8]) {
    let Ok(p) = proto::Directory::decode(data) else {
        return;
    };
    let Ok(d) = Directory::try_from(p) else {
        return;
    };
    let again = Directory::try_from(proto::Directory::from(&d)).expect("re-validates");
    assert_eq!(again, d);
    assert_eq!(again.digest(), d.digest());
}

/// A wire root Node: decoding and validation never panic; a valid one
/// round-trips.
pub fn node(data: &[u8]) {
    let Ok(p) = proto::Node::decode(data) else {
        return;
    };
    let Ok((name, n)) = Node::from_proto(p) else {
        return;
    };
    let back = Node::from_proto(n.to_proto(&name)).expect("re-validates");
    assert_eq!(back, (name, n));
}

/// A wire BuildRequest: decoding, validation and making its OCI spec never
/// panic; a valid one round-trips through the wire form and through JSON.
pub fn build_request(data: &[u8]) {
    let Ok(p) = tvix_oci_spec::proto::BuildRequest::decode(data) else {
        return;
    };
    let Ok(req) = BuildRequest::try_from(p) else {
        return;
    };
    let opts = SpecOptions {
        sandbox_shell: Some("/bin/sh".into()),
        ..SpecOptions::default()
    };
    let _ = make_spec(&req, &opts);
    let wire = tvix_oci_spec::proto::BuildRequest::from(&req);
    assert_eq!(BuildRequest::try_from(wire).expect("re-validates"), req);
    assert_eq!(
        BuildRequest::from_json(&req.to_json()).expect("JSON round trip"),
        req
    );
}

/// A JSON request: parsing never panics, whatever the text.
pub fn json_request(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = BuildRequest::from_json(text);
    }
}

/// The reference scanner against the obvious one: the first byte says how
/// many needles (up to 8) and, by its top bit, whether they all have one
/// length of 8 to 32 (the skip scan for store path hashes) or each its own
/// of 1 to 32 (Aho-Corasick); the next bytes give the lengths, then the
/// needles; the rest is the data, fed in chunks of the size the last length
/// byte suggests. Both must find the same needles.
pub fn refscan(data: &[u8]) {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let count = (head & 0x7f) as usize % 9;
    let uniform = head & 0x80 != 0;
    if rest.len() < count {
        return;
    }
    let (lens, mut rest) = rest.split_at(count);
    let mut needles = Vec::new();
    for &l in lens {
        let l = if uniform {
            (lens[0] % 25) as usize + 8
        } else {
            (l % 32) as usize + 1
        };
        if rest.len() < l {
            return;
        }
        let (n, r) = rest.split_at(l);
        needles.push(n.to_vec());
        rest = r;
    }
    let chunk = lens.last().map_or(7, |&l| (l as usize % 61) + 1);
    let scanner_needles = Needles::new(&needles);
    let mut s = scanner_needles.scanner();
    for c in rest.chunks(chunk) {
        s.update(c);
    }
    let naive: Vec<bool> = needles
        .iter()
        .map(|n| rest.windows(n.len()).any(|w| w == n.as_slice()))
        .collect();
    assert_eq!(
        s.found(),
        naive.as_slice(),
        "needles {needles:?}, chunk {chunk}"
    );
}

/// A check of arbitrary bytes.
pub type Check = fn(&[u8]);

/// The fuzz targets by name, for the corpus replay.
pub const TARGETS: &[(&str, Check)] = &[
    ("directory", directory),
    ("node", node),
    ("build_request", build_request),
    ("json_request", json_request),
    ("refscan", refscan),
];
