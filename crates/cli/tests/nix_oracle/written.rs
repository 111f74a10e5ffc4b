//! What `build` leaves behind, against Nix: `--out-link` trees byte for
//! byte Nix's outputs (`nix-store --dump` of both), `--register`ed paths
//! recorded in Nix's database as Nix records its own builds, and
//! `--build-inputs` building what Nix has not. Derivations built here
//! carry a nonce of their own, so no other test (or other user of this
//! /nix/store) shares them, and are deleted from the store at the end.

use std::path::Path;
use std::process::Command;

use super::{bin, expression, json_of, nix, nix_conf, oracle_absent, ours};

/// Derivations no other test builds: `nonce` makes their store paths new.
const FRESH: &str = r#"
{ nonce }:
let
  bb  = builtins.path { path = ./bb; name = "busybox"; };
  env = { system = builtins.currentSystem; builder = "${bb}/bin/sh"; PATH = "${bb}/bin"; NONCE = nonce; };
  mk  = name: script: derivation (env // { inherit name; args = [ "-c" script ]; });
in rec {
  lone = mk "fresh-lone" "mkdir $out; echo $out > $out/self; ln -s ${bb}/bin/busybox $out/bb; printf x > $out/x; chmod +x $out/x";
  pair = derivation (env // { name = "fresh-pair"; outputs = [ "out" "dev" ];
    args = [ "-c" "mkdir $out $dev; echo $dev > $out/peer; echo ${bb} > $dev/bb" ]; });
  dep = mk "fresh-dep" "echo from-dep > $out";
  top = mk "fresh-top" "cat ${dep} > $out; echo ${dep} >> $out";
  kvm = derivation (env // { name = "fresh-kvm"; requiredSystemFeatures = [ "kvm" ];
    args = [ "-c" "test -c /dev/kvm && echo kvm-there > $out" ]; });
}
"#;

/// A nonce of this process and moment.
fn nonce() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    format!("{}-{}", std::process::id(), t.as_nanos())
}

/// The `.drv`s of `attrs` of [`FRESH`] under a new nonce.
fn fresh(conf: &Path, tmp: &Path, attrs: &[&str]) -> Vec<String> {
    expression(tmp);
    let f = tmp.join("fresh.nix");
    std::fs::write(&f, FRESH).unwrap();
    let n = nonce();
    let mut args = vec![
        "nix-instantiate",
        f.to_str().unwrap(),
        "--argstr",
        "nonce",
        &n,
    ];
    for a in attrs {
        args.extend(["-A", a]);
    }
    nix(conf, &args).lines().map(str::to_owned).collect()
}

/// The output paths of a `.drv`, as Nix computes them.
fn outputs_of(conf: &Path, drv: &str) -> Vec<String> {
    nix(conf, &["nix-store", "--query", "--outputs", drv])
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Which of `paths` Nix's database holds.
fn valid(conf: &Path, paths: &[String]) -> Vec<String> {
    let mut args = vec!["nix-store", "--check-validity", "--print-invalid"];
    args.extend(paths.iter().map(String::as_str));
    let invalid = nix(conf, &args);
    paths
        .iter()
        .filter(|p| !invalid.lines().any(|l| l == p.as_str()))
        .cloned()
        .collect()
}

/// Deletes store paths when dropped (the test's own, named by nonce),
/// so a failing test leaves nothing behind either.
struct Forget<'a> {
    conf: &'a Path,
    paths: Vec<String>,
}

impl Forget<'_> {
    /// Deletes the valid ones now; asserts they are gone.
    fn now(&mut self) {
        let live = valid(self.conf, &self.paths);
        if !live.is_empty() {
            let mut args = vec!["nix-store", "--delete"];
            args.extend(live.iter().map(String::as_str));
            nix(self.conf, &args);
        }
        assert!(valid(self.conf, &self.paths).is_empty());
        for p in &self.paths {
            let _ = std::fs::remove_file(format!("{p}.lock"));
        }
    }
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let mut c = Command::new("nix-store");
        c.arg("--delete")
            .args(&self.paths)
            .env("NIX_CONF_DIR", self.conf);
        let _ = c.output();
    }
}

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
    if oracle_absent() {
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
    let out = ours(tmp.path())
        .arg("--out-link")
        .arg(&base)
        .args(&drvs)
        .output()
        .unwrap();
    let v = json_of(&out);
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

/// What Nix's database records of a path, as `nix-store --query` prints it.
fn record(conf: &Path, path: &str) -> [String; 4] {
    ["--hash", "--size", "--references", "--deriver"]
        .map(|q| nix(conf, &["nix-store", "--query", q, path]))
}

/// `--register` of derivations Nix has not built: what Nix's database
/// then records of each output (NAR hash, size, references, deriver) is
/// what it records when Nix builds them itself, and `--verify-path`
/// agrees; a second `--register` leaves the valid paths as they are.
#[test]
fn registered_outputs_are_recorded_as_nix_records_its_own() {
    if oracle_absent() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let conf = nix_conf(tmp.path());
    let drvs = fresh(&conf, tmp.path(), &["lone", "pair"]);
    let outs: Vec<String> = drvs.iter().flat_map(|d| outputs_of(&conf, d)).collect();
    let mut forget = Forget {
        conf: &conf,
        paths: outs.iter().chain(&drvs).cloned().collect(),
    };
    assert!(valid(&conf, &outs).is_empty(), "built before: {outs:?}");
    // Nix's own record, then Nix's builds deleted.
    let mut build = vec!["nix-build", "--no-out-link"];
    build.extend(drvs.iter().map(String::as_str));
    nix(&conf, &build);
    let nixs: Vec<[String; 4]> = outs.iter().map(|p| record(&conf, p)).collect();
    let mut del = vec!["nix-store", "--delete"];
    del.extend(outs.iter().map(String::as_str));
    nix(&conf, &del);
    assert!(valid(&conf, &outs).is_empty(), "not deleted: {outs:?}");

    let ours = || {
        let out = bin(&tmp.path().join("data"))
            .args(["build", "--register", "--bundle-root"])
            .arg(tmp.path().join("bundles"))
            .args(&drvs)
            .env("NIX_CONF_DIR", &conf)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{err}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (v, err)
    };
    let (v, _) = ours();
    let mut table = Vec::new();
    for r in v.as_array().unwrap() {
        for (name, o) in r["outputs"].as_object().unwrap() {
            assert_eq!(r["registered"][name], "imported", "{r}");
            let path = o["path"].as_str().unwrap();
            let i = outs.iter().position(|p| p == path).unwrap();
            let rec = record(&conf, path);
            assert_eq!(rec, nixs[i], "{path}: ours, then Nix's");
            assert_eq!(rec[0].trim(), o["narHash"], "{path}");
            nix(&conf, &["nix-store", "--verify-path", path]);
            table.push(format!("{path}: hash, size, references, deriver as Nix's"));
        }
    }
    assert_eq!(table.len(), outs.len());
    println!("{}", table.join("\n"));

    let (v, err) = ours();
    for r in v.as_array().unwrap() {
        for (name, o) in r["outputs"].as_object().unwrap() {
            assert_eq!(r["registered"][name], "already valid", "{r}");
            let path = o["path"].as_str().unwrap();
            assert!(
                err.contains(&format!(
                    "{path} is valid in the Nix store already; left as is"
                )),
                "{err}"
            );
        }
    }
    forget.now();
}

/// `--build-inputs` on a chain whose dependency Nix has not built:
/// without it, the missing input is named (exit 2); with it, the
/// dependency is built first and registered, then the derivation; Nix,
/// building the same derivation over our registered dependency, gets our
/// output exactly.
#[test]
fn build_inputs_builds_a_missing_dependency_first() {
    if oracle_absent() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let conf = nix_conf(tmp.path());
    let drvs = fresh(&conf, tmp.path(), &["dep", "top"]);
    let (dep, top) = (&drvs[0], &drvs[1]);
    let dep_out = outputs_of(&conf, dep).remove(0);
    let top_out = outputs_of(&conf, top).remove(0);
    let mut forget = Forget {
        conf: &conf,
        paths: vec![top_out.clone(), dep_out.clone(), top.clone(), dep.clone()],
    };
    assert!(valid(&conf, &[dep_out.clone(), top_out.clone()]).is_empty());
    let ours = |extra: &[&str]| {
        bin(&tmp.path().join("data"))
            .arg("build")
            .args(extra)
            .arg("--bundle-root")
            .arg(tmp.path().join("bundles"))
            .arg(top)
            .env("NIX_CONF_DIR", &conf)
            .output()
            .unwrap()
    };
    let out = ours(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&dep_out) && err.contains("--build-inputs"),
        "{err}"
    );

    let out = ours(&["--build-inputs"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!("building input derivation {dep} first")),
        "{err}"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let built = v["inputsBuilt"].as_array().unwrap();
    assert_eq!(built.len(), 1, "{v}");
    assert_eq!(built[0]["drvPath"], dep.as_str());
    assert_eq!(built[0]["registered"]["out"], "imported");
    assert_eq!(
        valid(&conf, std::slice::from_ref(&dep_out)),
        std::slice::from_ref(&dep_out)
    );
    assert_eq!(
        nix(&conf, &["nix-store", "--query", "--hash", &dep_out]).trim(),
        built[0]["outputs"]["out"]["narHash"]
    );
    // Not asked to register the derivation itself.
    assert!(valid(&conf, std::slice::from_ref(&top_out)).is_empty());

    nix(&conf, &["nix-build", "--no-out-link", top]);
    let o = &v["outputs"]["out"];
    assert_eq!(o["path"], top_out.as_str());
    let [hash, size, refs, _] = record(&conf, &top_out);
    assert_eq!(hash.trim(), o["narHash"], "{v}");
    assert_eq!(size.trim(), o["narSize"].to_string());
    let refs: Vec<&str> = refs.lines().collect();
    assert_eq!(
        serde_json::json!(refs),
        o["references"],
        "references of {top_out}"
    );
    forget.now();
}

/// A derivation requiring the `kvm` system feature: Nix builds it with
/// /dev/kvm in its sandbox; so do we where the operator allows it
/// (`--allow-ro-path /dev/kvm`), with the same output, and refuse it,
/// naming the flag, where they do not.
#[test]
fn a_derivation_requiring_kvm_gets_dev_kvm_where_the_operator_allows_it() {
    if oracle_absent() {
        return;
    }
    if !Path::new("/dev/kvm").exists() {
        println!("SKIPPED: this host has no /dev/kvm");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let conf = nix_conf(tmp.path());
    let drvs = fresh(&conf, tmp.path(), &["kvm"]);
    let outs = outputs_of(&conf, &drvs[0]);
    let mut forget = Forget {
        conf: &conf,
        paths: outs.iter().chain(&drvs).cloned().collect(),
    };
    nix(&conf, &["nix-build", "--no-out-link", &drvs[0]]);
    let theirs = record(&conf, &outs[0]);

    let build = |allow: bool| {
        let mut c = ours(tmp.path());
        if allow {
            c.args(["--allow-ro-path", "/dev/kvm"]);
        }
        c.arg(&drvs[0]).output().unwrap()
    };
    let out = build(false);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("/dev/kvm") && err.contains("--allow-ro-path"),
        "{err}"
    );

    let out = build(true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ours = &v["outputs"]["out"];
    assert_eq!(ours["narHash"], theirs[0].trim(), "{v}");
    assert_eq!(ours["narSize"].to_string(), theirs[1].trim(), "{v}");
    forget.now();
}

/// `--register` and `--build-inputs` refuse a `.drv` outside the Nix
/// store before building: its output paths are only what the file
/// claims, and registering under them would plant paths in the host's
/// store that Nix would then trust.
#[test]
fn register_refuses_a_drv_nix_did_not_write() {
    if oracle_absent() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let conf = nix_conf(tmp.path());
    let drvs = fresh(&conf, tmp.path(), &["dep"]);
    let forged = tmp.path().join("forged.drv");
    std::fs::copy(&drvs[0], &forged).unwrap();
    let mut forget = Forget {
        conf: &conf,
        paths: drvs.clone(),
    };
    for flag in ["--register", "--build-inputs"] {
        let out = ours(tmp.path()).arg(flag).arg(&forged).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag}: {err}");
        assert!(
            err.contains(&format!(
                "{}: --register and --build-inputs take derivations in the Nix store",
                forged.display()
            )),
            "{flag}: {err}"
        );
        assert!(!err.contains("running"), "{flag} built: {err}");
    }
    forget.now();
}
