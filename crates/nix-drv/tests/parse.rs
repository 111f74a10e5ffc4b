//! The `.drv` parser: real derivations Nix wrote (fixtures/, made by
//! `nix-instantiate fixtures.nix -A NAME` with Nix 2.8), escapes,
//! multiple outputs, fixed outputs, and malformed input at every position
//! (an error naming a position, never a panic).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use proptest::prelude::*;
use tvix_oci_nix::{Derivation, HashMode, Output, StorePath, parse};

fn fixture(name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("{name}.drv"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

const ALL: &[&str] = &[
    "hello",
    "ref-input",
    "self-ref",
    "dep-a",
    "dep-b",
    "two-aligned",
    "two-crossed",
    "pass-as-file",
    "exec-file",
    "exec-dir",
    "fail",
    "no-output",
    "fod",
    "symlink-out",
    "name-ref",
    "content-ref",
];

#[test]
fn every_fixture_parses_and_prints_back_byte_for_byte() {
    for name in ALL {
        let b = fixture(name);
        let d = parse(&b).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(d.to_aterm(), b, "{name}");
    }
}

#[test]
fn fields_of_a_plain_derivation() {
    let d = parse(&fixture("hello")).unwrap();
    let bb = "/nix/store/i72sh5s677q84k6rwyjdpx0p2j0x962f-busybox";
    assert_eq!(d.system, "x86_64-linux");
    assert_eq!(d.builder, format!("{bb}/bin/sh"));
    assert_eq!(d.args, ["-c", "echo hi > $out"]);
    assert_eq!(
        d.input_sources
            .iter()
            .map(|p| p.absolute())
            .collect::<Vec<_>>(),
        [bb]
    );
    assert!(d.input_derivations.is_empty());
    let out = &d.outputs["out"];
    assert_eq!(
        out.path.as_ref().unwrap().base_name(),
        "5gx9f8h8sgiarhknkvdy91bll68q3rzy-hello"
    );
    assert_eq!(d.env["name"], b"hello");
    assert!(d.fixed_output().is_none());
}

#[test]
fn multiple_outputs_and_input_derivations() {
    let d = parse(&fixture("two-crossed")).unwrap();
    assert_eq!(d.outputs.keys().collect::<Vec<_>>(), ["dev", "out"]);
    assert_eq!(d.env["outputs"], b"out dev");
    let d = parse(&fixture("dep-b")).unwrap();
    let (drv, outs) = d.input_derivations.iter().next().unwrap();
    assert_eq!(
        drv.base_name(),
        "yfspk680y13dycav7l9r6lh3d09rq7zk-dep-a.drv"
    );
    assert_eq!(outs.iter().collect::<Vec<_>>(), ["out"]);
}

#[test]
fn fixed_output_fields() {
    let f = parse(&fixture("fod")).unwrap().fixed_output().unwrap();
    assert_eq!(f.mode, HashMode::Flat);
    assert_eq!(f.algo, "sha256");
    assert_eq!(
        f.hash,
        "98ea6e4f216f2fb4b69fff9b3a44842c38686ca685f3f55dc48c5d3fb1107be4"
    );
    let mut d = parse(&fixture("fod")).unwrap();
    d.outputs.get_mut("out").unwrap().hash_algo = "r:sha1".into();
    assert_eq!(d.fixed_output().unwrap().mode, HashMode::Recursive);
    assert_eq!(d.fixed_output().unwrap().algo, "sha1");
}

#[test]
fn escapes() {
    let mut src = br#"Derive([("out","/nix/store/5gx9f8h8sgiarhknkvdy91bll68q3rzy-hello","","")],[],[],"x","/b",["a\"b","c\\d","e\nf\tg\rh","\q"],[("k","line1\nline2 \"q\" \\ "#.to_vec();
    src.extend_from_slice(b"\xff\")])");
    let d = parse(&src).unwrap();
    assert_eq!(d.args, ["a\"b", "c\\d", "e\nf\tg\rh", "q"]);
    assert_eq!(d.env["k"], b"line1\nline2 \"q\" \\ \xff");
    // Printing escapes what Nix escapes: `\q` comes back as `q`.
    let again = parse(&d.to_aterm()).unwrap();
    assert_eq!(again, d);
}

#[test]
fn errors_name_the_position_and_the_thing() {
    let good = fixture("hello");
    let s = String::from_utf8(good.clone()).unwrap();
    for (bad, pos, word) in [
        (s.replacen("Derive(", "Derive[", 1), 6, "found '['"),
        (
            s.replacen("\"out\",\"/nix", "\"o/t\",\"/nix", 1),
            8,
            "output name",
        ),
        (
            s.replacen("/nix/store/5gx", "/nix/stor/5gx", 1),
            15,
            "not below",
        ),
        (
            s.replacen("\"x86_64-linux\"", "x86_64-linux", 1),
            s.find("\"x86").unwrap(),
            "expected",
        ),
        (format!("{s} "), s.len(), "trailing"),
        (
            s[..s.len() - 1].to_owned(),
            s.len() - 1,
            "the end of the file",
        ),
        (
            s.replacen("[(\"BARS_NONCE\"", "[(\"PATH\",\"x\"),(\"BARS_NONCE\"", 1),
            0,
            "appears twice",
        ),
    ] {
        let e = parse(bad.as_bytes()).unwrap_err();
        assert!(e.to_string().contains(word), "{e}");
        if pos > 0 {
            assert_eq!(e.pos, pos, "{e}");
        }
    }
    let e = parse(b"Derive([],[],[],\"\",\"\",[],[])").unwrap_err();
    assert!(e.to_string().contains("no outputs"), "{e}");
}

#[test]
fn every_truncation_and_every_byte_flip_is_an_error_not_a_panic() {
    for name in ["two-aligned", "dep-b", "pass-as-file"] {
        let b = fixture(name);
        for n in 0..b.len() {
            let e = parse(&b[..n]).unwrap_err();
            assert!(e.pos <= n, "{name}[..{n}]: {e}");
        }
        for i in 0..b.len() {
            for repl in [b'"', b'\\', b')', b',', 0xff, b'e'] {
                let mut m = b.clone();
                m[i] = repl;
                // Either an error at a position inside the input, or a
                // (different) derivation that prints back parseably.
                match parse(&m) {
                    Err(e) => assert!(e.pos <= m.len(), "{name} [{i}]={repl}: {e}"),
                    Ok(d) => assert!(parse(&d.to_aterm()).is_ok()),
                }
            }
        }
    }
}

fn arb_store_path() -> impl Strategy<Value = StorePath> {
    ("[0-9a-df-np-sv-z]{32}", "[a-zA-Z0-9+._?=-]{0,20}")
        .prop_map(|(h, n)| StorePath::from_base_name(&format!("{h}-x{n}")).unwrap())
}

fn arb_text() -> impl Strategy<Value = String> {
    proptest::string::string_regex("(?s).{0,30}").unwrap()
}

fn arb_drv() -> impl Strategy<Value = Derivation> {
    (
        proptest::collection::btree_map(
            "[a-z]{1,5}",
            (
                proptest::option::of(arb_store_path()),
                "[a-z:0-9]{0,8}",
                "[0-9a-f]{0,8}",
            ),
            1..4,
        ),
        proptest::collection::btree_map(
            arb_store_path(),
            proptest::collection::btree_set("[a-z]{1,4}", 0..3),
            0..3,
        ),
        proptest::collection::btree_set(arb_store_path(), 0..3),
        (
            arb_text(),
            arb_text(),
            proptest::collection::vec(arb_text(), 0..4),
        ),
        proptest::collection::btree_map(
            "[A-Za-z_][A-Za-z0-9_]{0,8}",
            proptest::collection::vec(any::<u8>(), 0..20),
            0..6,
        ),
    )
        .prop_map(
            |(outs, idrv, isrc, (system, builder, args), env)| Derivation {
                outputs: outs
                    .into_iter()
                    .map(|(k, (path, hash_algo, hash))| {
                        (
                            k,
                            Output {
                                path,
                                hash_algo,
                                hash,
                            },
                        )
                    })
                    .collect(),
                input_derivations: idrv,
                input_sources: isrc,
                system,
                builder,
                args,
                env,
            },
        )
}

proptest! {
    #[test]
    fn print_then_parse_round_trips(d in arb_drv()) {
        prop_assert_eq!(parse(&d.to_aterm()), Ok(d));
    }

    #[test]
    fn random_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = parse(&b);
    }

    #[test]
    fn random_edits_of_a_real_drv_never_panic(i in 0usize..2000, s in "[\\[\\](),\"\\\\a-z/]{0,4}") {
        let mut b = fixture("two-crossed");
        let i = i % b.len();
        b.splice(i..i, s.bytes());
        let _ = parse(&b);
    }
}
