//! What `build` leaves behind, against Nix: `--out-link` trees byte for
//! byte Nix's outputs (`nix-store --dump` of both), `--register`ed paths
//! recorded in Nix's database as Nix records its own builds, and
//! `--build-inputs` building what Nix has not. Derivations built here
//! carry a nonce of their own, so no other test (or other user of this
//! /nix/store) shares them, and are deleted from the store at the end.

use std::path::Path;
use std::process::Command;

use super::{bin, can_build, expression, nix, nix_conf, nix_missing};

fn dump(p: &Path) -> Vec<u8> {
    let o = Command::new("nix-store")
        .arg("--dump")
        .arg(p)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o.stdout
}

/// `--out-link`: each output as a tree, named as nix-build names result
/// links, whose NAR serialisation is byte for byte that of Nix's output;
/// an existing destination is refused (exit 2, named) before building.
#[test]
fn out_link_trees_are_nixs_outputs() {
    if let Some(why) = can_build().or_else(nix_missing) {
        println!("SKIPPED: {why}");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let conf = nix_conf(tmp.path());
    let file = expression(tmp.path());
    let cases = [
        "exec-file",
        "odd-modes",
        "symlink-out",
        "two-one-way",
        "non-utf8",
        "dangling",
    ];
    let mut args = vec!["nix-instantiate", file.to_str().unwrap()];
    for c in cases {
        args.extend(["-A", c]);
    }
    let drvs: Vec<String> = nix(&conf, &args).lines().map(str::to_owned).collect();
    let mut build = vec!["nix-build", "--no-out-link"];
    build.extend(drvs.iter().map(String::as_str));
    nix(&conf, &build);

    let links = tmp.path().join("links");
    std::fs::create_dir(&links).unwrap();
    let base = links.join("result");
    let out = bin(&tmp.path().join("data"))
        .args(["build", "--bundle-root"])
        .arg(tmp.path().join("bundles"))
        .arg("--out-link")
        .arg(&base)
        .args(&drvs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut written = 0;
    for (i, (case, r)) in cases.iter().zip(v.as_array().unwrap()).enumerate() {
        for (name, o) in r["outputs"].as_object().unwrap() {
            let mut want = base.display().to_string();
            if i > 0 {
                want += &format!("-{}", i + 1);
            }
            if name != "out" {
                want += &format!("-{name}");
            }
            assert_eq!(r["outLinks"][name], want.as_str(), "{case}.{name}");
            let theirs = Path::new(o["path"].as_str().unwrap());
            assert!(
                dump(Path::new(&want)) == dump(theirs),
                "{case}.{name}: {want} differs from {}",
                theirs.display()
            );
            written += 1;
        }
    }
    assert_eq!(std::fs::read_dir(&links).unwrap().count(), written);

    // Again: every destination is taken; refused before anything runs.
    let out = bin(&tmp.path().join("data"))
        .arg("build")
        .arg("--out-link")
        .arg(&base)
        .args(&drvs)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("{} exist", base.display())) && !err.contains("running"),
        "{err}"
    );
}
