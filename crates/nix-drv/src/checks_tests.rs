use super::*;
use crate::derivation::Output;

const OUT: &str = "/nix/store/j32iaf6v4qsxf5ygzpr0mbx30p1g056h-x";
const DEV: &str = "/nix/store/x2l9dcgwrxy83x61qg07n9ii897cr735-x-dev";
const LIB: &str = "/nix/store/z3fkxq776sczc1iblcgcwmgdy9xfqyd2-x-lib";
const BB: &str = "/nix/store/i72sh5s677q84k6rwyjdpx0p2j0x962f-busybox";
const GLIBC: &str = "/nix/store/00000000000000000000000000000000-glibc";

fn drv(env: &[(&str, &str)]) -> Derivation {
    let mut d = Derivation::default();
    for (n, p) in [("out", OUT), ("dev", DEV), ("lib", LIB)] {
        d.outputs.insert(
            n.into(),
            Output {
                path: Some(StorePath::from_absolute(p).unwrap()),
                hash_algo: String::new(),
                hash: String::new(),
            },
        );
    }
    for (k, v) in env {
        d.env.insert((*k).into(), v.as_bytes().to_vec());
    }
    d
}

fn outs(refs: &[(&str, &[&str])]) -> BTreeMap<String, NixOutput> {
    let path = |n: &str| match n {
        "out" => OUT,
        "dev" => DEV,
        _ => LIB,
    };
    refs.iter()
        .map(|(n, r)| {
            (
                (*n).to_owned(),
                NixOutput {
                    path: path(n).into(),
                    nar_hash: String::new(),
                    nar_size: 0,
                    references: r.iter().map(|s| (*s).to_owned()).collect(),
                },
            )
        })
        .collect()
}

#[test]
fn a_cycle_between_outputs_is_named_as_nix_names_it() {
    let o = outs(&[("out", &[DEV, OUT]), ("dev", &[OUT]), ("lib", &[])]);
    let e = check_cycles("/nix/store/a.drv", &o).unwrap_err();
    assert_eq!(
        e.to_string(),
        "cycle detected in build of '/nix/store/a.drv' in the references of output 'dev' from output 'out'"
    );
    // A chain (out → dev → lib) and self-references are no cycle.
    let chain = outs(&[("out", &[DEV, OUT]), ("dev", &[LIB, DEV]), ("lib", &[LIB])]);
    assert_eq!(check_cycles("/nix/store/a.drv", &chain), Ok(()));
    let three = outs(&[("out", &[DEV]), ("dev", &[LIB]), ("lib", &[OUT])]);
    assert!(check_cycles("/nix/store/a.drv", &three).is_err());
}

#[test]
fn allowed_and_disallowed_references_with_output_names() {
    let o = outs(&[("out", &[DEV, BB]), ("dev", &[]), ("lib", &[])]);
    let none = BTreeMap::new();
    let ok = drv(&[("allowedReferences", &format!("dev {BB}"))]);
    assert_eq!(check_references(&ok, &o, &none), Ok(()));
    let d = drv(&[("allowedReferences", "dev")]);
    let e = check_references(&d, &o, &none).unwrap_err();
    assert!(
        matches!(&e, CheckError::NotAllowed { output, bad, .. } if output == "out" && bad == &[BB]),
        "{e:?}"
    );
    assert!(
        e.to_string().contains(OUT) && e.to_string().contains(BB),
        "{e}"
    );
    let d = drv(&[("disallowedReferences", "dev")]);
    let e = check_references(&d, &o, &none).unwrap_err();
    assert!(
        matches!(&e, CheckError::NotAllowed { bad, .. } if bad == &[DEV]),
        "{e:?}"
    );
    let d = drv(&[("allowedReferences", "nonsense")]);
    assert_eq!(
        check_references(&d, &o, &none),
        Err(CheckError::BadSpecifier("nonsense".into()))
    );
}

#[test]
fn requisites_follow_outputs_and_the_store_closure() {
    // out → dev → busybox → glibc; outputs are checked in name order.
    let o = outs(&[("out", &[DEV]), ("dev", &[BB]), ("lib", &[])]);
    let req = BTreeMap::from([(
        BB.to_owned(),
        BTreeSet::from([BB.to_owned(), GLIBC.to_owned()]),
    )]);
    assert_eq!(foreign_references(&o), BTreeSet::from([BB.to_owned()]));
    let d = drv(&[("allowedRequisites", &format!("dev {BB}"))]);
    assert!(needs_requisites(&d));
    let e = check_references(&d, &o, &req).unwrap_err();
    assert!(
        matches!(&e, CheckError::NotAllowed { output, bad, .. } if output == "dev" && bad == &[GLIBC]),
        "{e:?}"
    );
    let d = drv(&[("disallowedRequisites", GLIBC)]);
    assert!(check_references(&d, &o, &req).is_err());
    let d = drv(&[("disallowedReferences", GLIBC)]);
    assert!(!needs_requisites(&d));
    assert_eq!(check_references(&d, &o, &req), Ok(()));
}

#[test]
fn output_checks_under_structured_attrs() {
    let json = format!(
        r#"{{"outputChecks":{{"out":{{"allowedReferences":["{BB}"]}},"dev":{{"disallowedRequisites":["{GLIBC}"]}}}}}}"#
    );
    let d = drv(&[("__json", &json)]);
    let req = BTreeMap::from([(
        BB.to_owned(),
        BTreeSet::from([BB.to_owned(), GLIBC.to_owned()]),
    )]);
    let o = outs(&[("out", &[BB]), ("dev", &[]), ("lib", &[])]);
    assert_eq!(check_references(&d, &o, &req), Ok(()));
    let o = outs(&[("out", &[BB]), ("dev", &[BB]), ("lib", &[])]);
    let e = check_references(&d, &o, &req).unwrap_err();
    assert!(
        matches!(&e, CheckError::NotAllowed { output, .. } if output == "dev"),
        "{e:?}"
    );
    let bad = drv(&[(
        "__json",
        r#"{"outputChecks":{"out":{"allowedReferences":"x"}}}"#,
    )]);
    assert!(matches!(
        constraints(&bad, "out"),
        Err(CheckError::BadOutputChecks { .. })
    ));
}
