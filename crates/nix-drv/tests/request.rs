//! The derivation → BuildRequest mapping: against the requests the snix
//! and tvix CLIs sent for the same derivations (../shared/peer-requests/,
//! whose .drv files Nix wrote into fixtures/), and Nix's env precedence.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tvix_oci_castore::Node;
use tvix_oci_nix::request::{RequestOptions, build_request, environment};
use tvix_oci_nix::{StorePath, parse};
use tvix_oci_spec::BuildRequest;

fn fixture(name: &str) -> tvix_oci_nix::Derivation {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("{name}.drv"));
    parse(&std::fs::read(p).unwrap()).unwrap()
}

fn peer_dir() -> Option<PathBuf> {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/peer-requests");
    d.is_dir().then_some(d)
}

/// The cases of peer-requests/ that have a fixture .drv.
const CASES: &[&str] = &[
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

fn inputs_of(req: &BuildRequest) -> BTreeMap<StorePath, Node> {
    req.inputs()
        .iter()
        .map(|(n, node)| {
            (
                StorePath::from_base_name(&n.to_string()).unwrap(),
                node.clone(),
            )
        })
        .collect()
}

fn env_of(req: &BuildRequest) -> BTreeMap<String, Vec<u8>> {
    req.environment_vars()
        .iter()
        .map(|(k, v)| (k.clone(), v.to_vec()))
        .collect()
}

/// Our request for each fixture equals snix's in layout, args, inputs,
/// outputs, files, constraints and needles, and in the environment except
/// where Nix itself differs from snix: Nix sets NIX_OUTPUT_CHECKED=1 for a
/// fixed-output derivation, snix does not. (tvix differs from both in
/// NIX_BUILD_TOP, `/`, and gives input derivations' .drv paths as needles;
/// snix sorts nothing in two-crossed's outputs: we compare those with
/// tvix's, which are sorted.)
#[test]
fn matches_what_snix_sends_for_the_same_derivations() {
    let Some(dir) = peer_dir() else {
        eprintln!("skipped: ../shared/peer-requests is absent");
        return;
    };
    let opts = RequestOptions { build_cores: 0 };
    for case in CASES {
        let read = |peer: &str| {
            let j =
                std::fs::read_to_string(dir.join(format!("{peer}-{case}.request.json"))).unwrap();
            BuildRequest::from_json(&j).unwrap_or_else(|e| panic!("{peer}-{case}: {e}"))
        };
        let snix = if *case == "two-crossed" {
            read("tvix")
        } else {
            read("snix")
        };
        let ours = build_request(&fixture(case), &inputs_of(&snix), &opts)
            .unwrap_or_else(|e| panic!("{case}: {e}"))
            .request;
        assert_eq!(ours.command_args(), snix.command_args(), "{case}");
        assert_eq!(ours.working_dir(), snix.working_dir(), "{case}");
        assert_eq!(ours.scratch_paths(), snix.scratch_paths(), "{case}");
        assert_eq!(ours.inputs_dir(), snix.inputs_dir(), "{case}");
        assert_eq!(ours.inputs(), snix.inputs(), "{case}");
        assert_eq!(ours.outputs(), snix.outputs(), "{case}");
        assert_eq!(ours.additional_files(), snix.additional_files(), "{case}");
        assert_eq!(ours.constraints(), snix.constraints(), "{case}");
        let mut env = env_of(&ours);
        if *case == "fod" {
            assert_eq!(env.remove("NIX_OUTPUT_CHECKED").as_deref(), Some(&b"1"[..]));
        }
        let mut theirs = env_of(&snix);
        if *case == "two-crossed" {
            // tvix's NIX_BUILD_TOP; snix's (like Nix's) is /build.
            theirs.insert("NIX_BUILD_TOP".into(), b"/build".to_vec());
        }
        assert_eq!(env, theirs, "{case}");
        // snix's needles: outputs in name order, then the inputs (for
        // two-crossed, tvix's are the same).
        assert_eq!(ours.refscan_needles(), snix.refscan_needles(), "{case}");
    }
}

#[test]
fn needles_and_outputs_map_back_to_store_paths() {
    let d = fixture("two-crossed");
    let bb =
        StorePath::from_absolute("/nix/store/i72sh5s677q84k6rwyjdpx0p2j0x962f-busybox").unwrap();
    let node = Node::Symlink {
        target: "x".try_into().unwrap(),
    };
    let r = build_request(
        &d,
        &BTreeMap::from([(bb.clone(), node)]),
        &RequestOptions::default(),
    )
    .unwrap();
    // Request outputs sorted by path (out's sorts first here), named.
    let names: Vec<_> = r.outputs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["out", "dev"]);
    assert_eq!(
        r.request.outputs()[0].to_string(),
        r.outputs[0].1.relative()
    );
    // Needles: dev, out (name order), then busybox.
    assert_eq!(r.needle_paths[0], *d.outputs["dev"].path.as_ref().unwrap());
    assert_eq!(r.needle_paths[1], *d.outputs["out"].path.as_ref().unwrap());
    assert_eq!(r.needle_paths[2], bb);
    assert_eq!(r.request.refscan_needles()[2], bb.hash_part());
}

#[test]
fn environment_precedence_is_nixs() {
    let mut d = fixture("pass-as-file");
    d.env.remove("PATH");
    d.env.insert("HOME".into(), b"/mine".to_vec());
    d.env.insert("TMPDIR".into(), b"/elsewhere".to_vec());
    d.env.insert("TERM".into(), b"dumb".to_vec());
    let env = environment(&d, &RequestOptions { build_cores: 7 });
    let s = |k: &str| String::from_utf8(env[k].clone()).unwrap();
    // Defaults the derivation may override…
    assert_eq!(s("PATH"), "/path-not-set");
    assert_eq!(s("HOME"), "/mine");
    assert_eq!(s("NIX_BUILD_CORES"), "7");
    assert_eq!(s("NIX_STORE"), "/nix/store");
    // …and what overrides the derivation.
    for k in ["NIX_BUILD_TOP", "TMPDIR", "TEMPDIR", "TMP", "TEMP", "PWD"] {
        assert_eq!(s(k), "/build", "{k}");
    }
    assert_eq!(s("TERM"), "xterm-256color");
    assert_eq!(s("NIX_LOG_FD"), "2");
    assert!(!env.contains_key("NIX_OUTPUT_CHECKED"));
    // passAsFile: the attribute goes, `<name>Path` comes, passAsFile stays.
    assert!(!env.contains_key("big"));
    assert_eq!(
        s("bigPath"),
        "/build/.attr-1lak0mvllw8rv9i9ygkglvhqsq19qi9ynl4bi7gbf69ab5nzw89a"
    );
    assert_eq!(s("passAsFile"), "big");
}

#[test]
fn network_and_output_check_only_for_fixed_outputs() {
    let bb =
        StorePath::from_absolute("/nix/store/i72sh5s677q84k6rwyjdpx0p2j0x962f-busybox").unwrap();
    let node = Node::Symlink {
        target: "x".try_into().unwrap(),
    };
    let inputs = BTreeMap::from([(bb, node)]);
    let fod = build_request(&fixture("fod"), &inputs, &RequestOptions::default())
        .unwrap()
        .request;
    assert!(fod.constraints().network_access && fod.constraints().provide_bin_sh);
    assert!(
        fod.environment_vars()
            .iter()
            .any(|(k, v)| k == "NIX_OUTPUT_CHECKED" && v == "1")
    );
    let plain = build_request(&fixture("hello"), &inputs, &RequestOptions::default())
        .unwrap()
        .request;
    assert!(!plain.constraints().network_access && plain.constraints().provide_bin_sh);
}

#[test]
fn only_a_derivation_requiring_kvm_asks_for_dev_kvm() {
    let ro = |d: &tvix_oci_nix::Derivation| {
        let r = build_request(d, &BTreeMap::new(), &RequestOptions::default()).unwrap();
        let paths = &r.request.constraints().available_ro_paths;
        paths.iter().map(|p| p.to_string()).collect::<Vec<_>>()
    };
    let mut d = fixture("hello");
    assert!(ro(&d).is_empty());
    d.env
        .insert("requiredSystemFeatures".into(), b"big-parallel".to_vec());
    assert!(ro(&d).is_empty());
    d.env.insert(
        "requiredSystemFeatures".into(),
        b"big-parallel kvm".to_vec(),
    );
    assert_eq!(ro(&d), ["/dev/kvm"]);
    // Under structured attributes, the list in __json counts, not the
    // environment.
    d.env.insert(
        "__json".into(),
        br#"{"requiredSystemFeatures":["nixos-test","kvm"]}"#.to_vec(),
    );
    assert_eq!(ro(&d), ["/dev/kvm"]);
    d.env.insert(
        "__json".into(),
        br#"{"requiredSystemFeatures":[]}"#.to_vec(),
    );
    assert!(ro(&d).is_empty());
}

#[test]
fn unsupported_derivations_are_refused_by_name() {
    let mut d = fixture("hello");
    d.env.insert("__json".into(), b"[]".to_vec());
    let e = build_request(&d, &BTreeMap::new(), &RequestOptions::default()).unwrap_err();
    assert!(e.to_string().contains("__json is not a JSON object"), "{e}");
    d.env
        .insert("__json".into(), br#"{"exportReferencesGraph":{}}"#.to_vec());
    let e = build_request(&d, &BTreeMap::new(), &RequestOptions::default()).unwrap_err();
    assert!(e.to_string().contains("exportReferencesGraph"), "{e}");
    let mut d = fixture("hello");
    d.builder = "builtin:fetchurl".into();
    let e = build_request(&d, &BTreeMap::new(), &RequestOptions::default()).unwrap_err();
    assert!(e.to_string().contains("builtin:fetchurl"), "{e}");
    let mut d = fixture("hello");
    d.outputs.get_mut("out").unwrap().path = None;
    let e = build_request(&d, &BTreeMap::new(), &RequestOptions::default()).unwrap_err();
    assert!(e.to_string().contains("\"out\""), "{e}");
}

#[test]
fn structured_attrs_are_files_not_environment() {
    let mut d = fixture("two-crossed");
    d.env.insert(
        "__json".into(),
        br#"{"name":"two-c","list":["a","b'c"],"n":2,"builder":"/x"}"#.to_vec(),
    );
    let r = build_request(&d, &BTreeMap::new(), &RequestOptions::default())
        .unwrap()
        .request;
    let files: BTreeMap<String, String> = r
        .additional_files()
        .iter()
        .map(|(p, c)| (p.to_string(), String::from_utf8(c.to_vec()).unwrap()))
        .collect();
    assert_eq!(
        files["build/.attrs.json"],
        format!(
            r#"{{"builder":"/x","list":["a","b'c"],"n":2,"name":"two-c","outputs":{{"dev":"{}","out":"{}"}}}}"#,
            d.outputs["dev"].path.as_ref().unwrap(),
            d.outputs["out"].path.as_ref().unwrap()
        )
    );
    assert!(files["build/.attrs.sh"].contains("declare -a list=('a' 'b'\\''c' )\n"));
    assert!(files["build/.attrs.sh"].contains("declare n=2\n"));
    let env = env_of(&r);
    for k in ["BARS_NONCE", "name", "out", "__json", "builder"] {
        assert!(!env.contains_key(k), "{k} is set");
    }
    assert_eq!(env["PATH"], b"/path-not-set");
    assert_eq!(env["NIX_ATTRS_JSON_FILE"], b"/build/.attrs.json");
    assert_eq!(env["NIX_ATTRS_SH_FILE"], b"/build/.attrs.sh");
}

#[test]
fn placeholders_become_output_paths() {
    // builtins.placeholder "out", as Nix documents it.
    assert_eq!(
        tvix_oci_nix::request::placeholder("out"),
        "/1rz4g4znpzjwh1xymhjpm42vipw92pr73vdgl6xs1hycac8kf2n9"
    );
    let mut d = fixture("two-crossed");
    let ph = tvix_oci_nix::request::placeholder("dev");
    d.args.push(format!("x{ph}y"));
    d.env.insert("p".into(), ph.clone().into_bytes());
    let r = build_request(&d, &BTreeMap::new(), &RequestOptions::default())
        .unwrap()
        .request;
    let dev = d.outputs["dev"].path.as_ref().unwrap().absolute();
    assert_eq!(r.command_args().last().unwrap(), &format!("x{dev}y"));
    assert_eq!(env_of(&r)["p"], dev.into_bytes());
}
