//! Real Nix as the oracle of `tvix-oci-build build`: a handful of
//! hand-written derivations (a static busybox imported with
//! `builtins.path`, no nixpkgs, no network) are built by `nix-build`, in
//! its sandbox, and by `tvix-oci-build build <the .drv>`; each output's
//! NAR hash and NAR size must be identical, and its references too
//! (exactly: an output refers to itself only where Nix says so), and a
//! report of what the sandbox looks like from inside must be Nix's but
//! for the lines of [`SANDBOX_DIFFERENCES`]. Skips, saying why, where the
//! sandbox facilities are absent; where Nix is absent or unusable, outside
//! CI only (CI installs Nix: there it fails). Nix's store is the host's
//! /nix/store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::{assert_nothing_left, bin, can_build, skip_or_fail};
/// `build --remote` against a local build.
#[path = "nix_oracle/remote.rs"]
mod remote;
/// `--out-link`, `--register`, `--build-inputs` against Nix.
#[path = "nix_oracle/written.rs"]
mod written;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

/// The applets the derivations use, as symlinks beside busybox.
const APPLETS: &[&str] = &[
    "awk", "cat", "chmod", "cp", "echo", "env", "grep", "head", "id", "ln", "mkdir", "mv",
    "printf", "rm", "sh", "sort", "stat", "touch", "yes",
];

/// The attributes of [`EXPR`] built.
const CASES: &[&str] = &[
    "plain",
    "exec-file",
    "empty",
    "odd-modes",
    "symlink-out",
    "dangling",
    "self-ref",
    "two-one-way",
    "dep-a",
    "dep-b",
    "pass-as-file",
    "fod-flat",
    "name-ref",
    "big",
    "env-dump",
    "placeholder",
    "structured",
    "fod-recursive",
    "fod-sha512-sri",
    "fod-base64",
    "fod-sha1",
    "fod-rec-sri",
    "allowed-ok",
    "chain3",
    "boundaries",
    "non-utf8",
    "fod-rec-sha1",
    "fod-rec-sha512",
];

/// Attributes both Nix and we must refuse, each with the key phrase of
/// Nix's message and the name suffix of the offending store path (which
/// both must print in full; `None` where the message names outputs).
const REFUSED: &[(&str, &str, Option<&str>)] = &[
    (
        "allowed-bad",
        "is not allowed to refer to the following paths",
        Some("-busybox"),
    ),
    (
        "disallowed-bad",
        "is not allowed to refer to the following paths",
        Some("-busybox"),
    ),
    (
        "requisites-bad",
        "is not allowed to refer to the following paths",
        Some("-dep-a"),
    ),
    (
        "checks-bad",
        "is not allowed to refer to the following paths",
        Some("-busybox"),
    ),
    (
        "cycle",
        "in the references of output 'dev' from output 'out'",
        None,
    ),
    // Nix names the .drv only.
    ("fod-rec-sha512-wrong", "hash mismatch", None),
];

const EXPR: &str = r#"
let
  bb  = builtins.path { path = ./bb; name = "busybox"; };
  env = { system = builtins.currentSystem; builder = "${bb}/bin/sh"; PATH = "${bb}/bin"; ORACLE = "1"; };
  mk  = name: script: derivation (env // { inherit name; args = [ "-c" script ]; });
in rec {
  plain = mk "plain" "echo hi > $out";
  exec-file = mk "exec-file" "printf '#!/bin/sh\\necho hi\\n' > $out; chmod +x $out";
  empty = mk "empty" "touch $out";
  odd-modes = mk "odd-modes" ''
    mkdir -p $out/ro $out/private $out/sticky $out/empty
    echo a > $out/ro/f; chmod 444 $out/ro/f; chmod 555 $out/ro
    echo b > $out/private/f; chmod 600 $out/private/f; chmod 700 $out/private
    echo c > $out/group-x; chmod 611 $out/group-x
    echo d > $out/user-x; chmod 700 $out/user-x
    echo e > $out/none; chmod 0 $out/none
    chmod 1777 $out/sticky
  '';
  symlink-out = mk "symlink-out" "ln -s ${bb}/bin/busybox $out";
  dangling = mk "dangling" "mkdir $out; ln -s /nowhere/at/all $out/l; ln -s ../.. $out/up";
  self-ref = mk "self-ref" "echo $out > $out";
  two-one-way = derivation (env // { name = "two"; outputs = [ "out" "dev" ];
    args = [ "-c" "mkdir $out $dev; echo $dev > $out/peer; echo dev > $dev/which" ]; });
  dep-a = mk "dep-a" "echo from-a > $out";
  dep-b = mk "dep-b" "cat ${dep-a} > $out; echo ${dep-a} >> $out";
  pass-as-file = derivation (env // { name = "pass-as-file"; passAsFile = [ "big" ]; big = "passed-as-file";
    args = [ "-c" "{ cat \"$bigPath\"; echo; echo \"$bigPath\"; pwd; echo $NIX_BUILD_TOP $TMPDIR $HOME; } > $out" ]; });
  fod-flat = derivation (env // { name = "fod-flat"; args = [ "-c" "echo hi > $out" ];
    outputHashMode = "flat"; outputHashAlgo = "sha256";
    outputHash = "98ea6e4f216f2fb4b69fff9b3a44842c38686ca685f3f55dc48c5d3fb1107be4"; });
  fod-recursive = derivation (env // { name = "fod-rec"; args = [ "-c" "echo hi > $out" ];
    outputHashMode = "recursive"; outputHashAlgo = "sha256";
    outputHash = "1xmr8jicvzszfzpz46g37mlpvbzjl2wpwvl2b05psipssyp1sm8h"; });
  # Not in CASES: both must refuse it.
  fod-wrong = derivation (env // { name = "fod-wrong"; args = [ "-c" "echo hi > $out" ];
    outputHashMode = "flat"; outputHashAlgo = "sha256";
    outputHash = "0000000000000000000000000000000000000000000000000000000000000000"; });
  fod-sha512-sri = derivation (env // { name = "fod-sha512"; args = [ "-c" "echo hi > $out" ];
    outputHashMode = "flat"; outputHashAlgo = "sha512";
    outputHash = "sha512-14q7BUJzaGX5RwRSFgnCMNrAOi82nQQ6whLWkzuRQQ4GOZ43+cXMiENqMXNzMMHI7MssL583TWL3FkMqMtUPrA=="; });
  fod-sha1 = derivation (env // { name = "fod-sha1"; args = [ "-c" "echo hi > $out" ];
    outputHashMode = "flat"; outputHashAlgo = "sha1";
    outputHash = "55ca6286e3e4f4fba5d0448333fa99fc5a404a73"; });
  fod-base64 = derivation (env // { name = "fod-base64"; args = [ "-c" "echo hi > $out" ];
    outputHashMode = "flat"; outputHashAlgo = "sha256";
    outputHash = "mOpuTyFvL7S2n/+bOkSELDhobKaF8/VdxIxdP7EQe+Q="; });
  fod-rec-sri = derivation (env // { name = "fod-rec-sri"; args = [ "-c" "echo hi > $out" ];
    outputHashMode = "recursive"; outputHash = "sha256-EFUdrtf6Rn0LWIJufrmg8q99aT3jGfLvd1//zaJEufY="; });
  allowed-ok = derivation (env // { name = "allowed-ok"; allowedReferences = [ bb "out" ];
    disallowedRequisites = [ dep-a ]; args = [ "-c" "echo ${bb} $out > $out" ]; });
  chain3 = derivation (env // { name = "chain3"; outputs = [ "out" "dev" "lib" ];
    args = [ "-c" "mkdir $out $dev $lib; echo $dev > $out/p; echo $lib > $dev/p; echo lib > $lib/w" ]; });
  # References across a 64 KiB and a 1 MiB boundary, and as a file's last bytes.
  boundaries = mk "boundaries" ''
    mkdir $out
    { yes a | head -c 65520; printf %s ${dep-a}; yes b | head -c 1000; } > $out/k64
    { yes c | head -c 1048560; printf %s $out; echo; } > $out/m1
    { yes d | head -c 70000; printf %s ${dep-a}; } > $out/end
  '';
  non-utf8 = mk "non-utf8" ''
    mkdir $out; cd $out
    printf x > "$(printf '\377\376')"; printf y > "$(printf 'caf\351')"
    mkdir "$(printf '\200dir')"; printf z > "$(printf '\200dir/\301')"
  '';
  allowed-bad = derivation (env // { name = "allowed-bad"; allowedReferences = [ ];
    args = [ "-c" "echo ${bb} > $out" ]; });
  disallowed-bad = derivation (env // { name = "disallowed-bad"; disallowedReferences = [ bb ];
    args = [ "-c" "mkdir $out; echo ${bb} > $out/f" ]; });
  requisites-bad = derivation (env // { name = "requisites-bad"; allowedRequisites = [ "out" dep-b ];
    args = [ "-c" "echo ${dep-b} $out > $out" ]; });
  checks-bad = derivation (env // { name = "checks-bad"; __structuredAttrs = true;
    outputChecks.out.disallowedReferences = [ bb ];
    args = [ "-c" "PATH=${bb}/bin; echo ${bb} > ${builtins.placeholder "out"}" ]; });
  cycle = derivation (env // { name = "cycle"; outputs = [ "out" "dev" ];
    args = [ "-c" "mkdir $out $dev; echo $dev > $out/p; echo $out > $dev/p" ]; });
  # What a build sees, one fact a line (see SANDBOX_DIFFERENCES).
  sandbox-report = mk "sandbox-report" ''
    for fd in 0 1 2; do if [ -t $fd ]; then echo "isatty $fd: yes" >> $out; else echo "isatty $fd: no" >> $out; fi; done
    {
      env | sort | sed 's/^/env /'
      echo "id $(id)"
      ulimit -a | sed 's/^/ulimit /'
      grep -E '^(Cap|Seccomp|NoNewPrivs)' /proc/self/status | sed 's/^/status /'
      awk '{ for (i = 7; i <= NF; i++) if ($i == "-") print "mount " $5 " " $(i + 1) }' /proc/self/mountinfo | sort
      for d in / /dev /tmp /build; do
        cd $d; for f in .* *; do stat -c "ls $d %A %U %G %N" "$f"; done
      done
      cd /build
      stat -c 'store %a %U %G' /nix/store
      stat -f -c 'shm %T %b' /dev/shm
      echo "personality $(cat /proc/self/personality)"
      rm -f ${bb}/bin/sh 2>&1 | sed 's/^/rm-input /'
      mv ${bb} /nix/store/renamed 2>&1 | sed 's/^/mv-input /'
      mkdir /nix/store/new-dir && echo "mkdir-in-store ok"
      rm -r /nix/store/new-dir
    } >> $out 2>&1
    echo "=== sandbox report"; cat $out; echo "=== end"
  '';
  name-ref = mk "name-ref" "mkdir $out; touch $out/${baseNameOf "${bb}"}.marker";
  big = mk "big" "yes 0123456789abcdef | head -c 3000000 > $out; echo $out >> $out";
  env-dump = mk "env-dump" "env | sort > $out";
  placeholder = derivation (env // { name = "placeholder"; ph = builtins.placeholder "out";
    args = [ "-c" "echo ${builtins.placeholder "out"} > $out; echo $ph >> $out" ]; });
  # (Nix 2.8 sets NIX_ATTRS_*_FILE to its host-side build directory.)
  structured = derivation (env // { name = "structured"; __structuredAttrs = true;
    list = [ "a" "b'c" 1 true null ]; amap = { k = "v"; n = 2; }; nested = { deep = [ [ 1 ] ]; };
    float = 1.5; uni = "ü\t\"\n"; outputs = [ "out" "doc" ];
    args = [ "-c" "PATH=${bb}/bin; o=${builtins.placeholder "out"}; mkdir $o ${builtins.placeholder "doc"}; cp /build/.attrs.json $o/json; cp /build/.attrs.sh $o/sh; env | grep -v ^NIX_ATTRS_ | sort > $o/env" ]; });
  # Recursive (NAR) hashes in sha1 and sha512, as Nix 2.8 checks them.
  fod-rec-sha1 = derivation (env // { name = "fod-rec-sha1"; args = [ "-c" "echo hi > $out" ];
    outputHashMode = "recursive"; outputHashAlgo = "sha1";
    outputHash = "fbf5d5c438217148bead15987295c3d3c447859c"; });
  fod-rec-sha512 = derivation (env // { name = "fod-rec-sha512";
    args = [ "-c" "mkdir $out $out/d; echo hi > $out/f; echo x > $out/d/g; ln -s f $out/l" ];
    outputHashMode = "recursive";
    outputHash = "sha512-by0nh3PPo+zLL3JOrh9nbhMJrCrGZ+FSgtYHwddt0faNZp2Z0RJEnEDSgIbxKGgXsy5g9EbR7LJt2qGzxji7eA=="; });
  fod-rec-sha512-wrong = derivation (env // { name = "fod-rec-sha512-wrong";
    args = [ "-c" "mkdir $out; echo hi > $out/f" ];
    outputHashMode = "recursive"; outputHashAlgo = "sha512";
    outputHash = "0000000000000000000000000000000000000000000000000000000000000000"
      + "0000000000000000000000000000000000000000000000000000000000000000"; });
}
"#;

/// Why Nix cannot be the oracle here, if it cannot.
fn nix_missing() -> Option<String> {
    // Evaluating needs the store's database: a Nix that is installed but
    // cannot open /nix here shows up now, not as a failed build.
    match Command::new("nix-instantiate")
        .args(["--eval", "-E", "1"])
        .output()
    {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "Nix cannot run here: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!(
            "Nix is not installed ({e}); .ci/install-deps installs nix-bin"
        )),
    }
}

/// Whether the oracle cannot run here, printing why: skipped where the
/// build facilities are absent (not root, no FUSE, no busybox); where Nix
/// is absent or unusable, skipped outside CI only (CI installs Nix:
/// [`skip_or_fail`]).
fn oracle_absent() -> bool {
    if let Some(why) = can_build() {
        println!("SKIPPED: {why}");
        return true;
    }
    if let Some(why) = nix_missing() {
        skip_or_fail(&why);
        return true;
    }
    false
}

fn nix(conf: &Path, args: &[&str]) -> String {
    let o = Command::new(args[0])
        .args(&args[1..])
        .env("NIX_CONF_DIR", conf)
        .env_remove("NIX_REMOTE")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// A private NIX_CONF_DIR: Nix's sandbox on, no substituters, the build
/// users Debian's package creates (root builds as root where there are none).
fn nix_conf(tmp: &Path) -> std::path::PathBuf {
    let conf = tmp.join("nix-conf");
    std::fs::create_dir_all(&conf).unwrap();
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    let users = if group.lines().any(|l| l.starts_with("nixbld:")) {
        "nixbld"
    } else {
        ""
    };
    std::fs::write(
        conf.join("nix.conf"),
        format!("sandbox = true\nsubstituters =\nbuild-users-group = {users}\n"),
    )
    .unwrap();
    conf
}

/// `nix-instantiate` of attribute `attr` of the oracle's expression, with
/// its own Nix configuration under `tmp`: that configuration and the
/// `.drv`'s path.
fn instantiate(tmp: &Path, attr: &str) -> (std::path::PathBuf, String) {
    let conf = nix_conf(tmp);
    let file = expression(tmp);
    let drv = nix(
        &conf,
        &["nix-instantiate", file.to_str().unwrap(), "-A", attr],
    );
    (conf, drv.trim().to_owned())
}

fn expression(tmp: &Path) -> std::path::PathBuf {
    let bb = tmp.join("bb/bin");
    std::fs::create_dir_all(&bb).unwrap();
    std::fs::copy("/bin/busybox", bb.join("busybox")).unwrap();
    for a in APPLETS {
        std::os::unix::fs::symlink("busybox", bb.join(a)).unwrap();
    }
    let f = tmp.join("oracle.nix");
    std::fs::write(&f, EXPR).unwrap();
    f
}

/// `tvix-oci-build build` with its store and bundles under `tmp`; the
/// caller adds flags and `.drv`s.
fn ours(tmp: &Path) -> Command {
    let mut c = bin(&tmp.join("data"));
    c.arg("build").arg("--bundle-root").arg(tmp.join("bundles"));
    c
}

/// What a command that succeeded printed on stdout, as JSON (its stderr
/// when it failed).
fn json_of(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn refs(list: &str) -> BTreeSet<String> {
    list.lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn nix_and_we_build_the_same_outputs() {
    if oracle_absent() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let conf = nix_conf(tmp.path());
    let file = expression(tmp.path());
    let file = file.to_str().unwrap();
    let mut attrs = vec!["nix-instantiate", file];
    for c in CASES {
        attrs.extend(["-A", c]);
    }
    let drvs: Vec<String> = nix(&conf, &attrs).lines().map(str::to_owned).collect();
    assert_eq!(drvs.len(), CASES.len());
    let mut build = vec!["nix-build", "--no-out-link"];
    build.extend(drvs.iter().map(String::as_str));
    nix(&conf, &build);

    let bundles = tmp.path().join("bundles");
    let v = json_of(&ours(tmp.path()).args(&drvs).output().unwrap());
    let results = v.as_array().unwrap();
    let mut table = Vec::new();
    let mut bad = Vec::new();
    for ((case, drv), r) in CASES.iter().zip(&drvs).zip(results) {
        assert_eq!(r["drvPath"], drv.as_str());
        let ours: BTreeSet<String> = r["outputs"]
            .as_object()
            .unwrap()
            .values()
            .map(|o| o["path"].as_str().unwrap().to_owned())
            .collect();
        let theirs: BTreeSet<String> = nix(&conf, &["nix-store", "--query", "--outputs", drv])
            .lines()
            .map(str::to_owned)
            .collect();
        assert_eq!(ours, theirs, "{case}: output paths");
        for (name, o) in r["outputs"].as_object().unwrap() {
            let path = o["path"].as_str().unwrap();
            let hash = nix(&conf, &["nix-store", "--query", "--hash", path])
                .trim()
                .to_owned();
            let size: u64 = nix(&conf, &["nix-store", "--query", "--size", path])
                .trim()
                .parse()
                .unwrap();
            let nix_refs = refs(&nix(&conf, &["nix-store", "--query", "--references", path]));
            let our_refs: BTreeSet<String> = o["references"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_str().unwrap().to_owned())
                .collect();
            let row = (
                o["narHash"] == hash.as_str(),
                o["narSize"] == size,
                our_refs == nix_refs,
            );
            table.push(format!(
                "{case}.{name}: nar hash {} size {} references {}",
                row.0, row.1, row.2
            ));
            if row != (true, true, true) {
                bad.push(format!(
                    "{case}.{name}: ours {} {} {our_refs:?}, Nix's {hash} {size} {nix_refs:?}",
                    o["narHash"], o["narSize"]
                ));
            }
        }
    }
    println!("{}", table.join("\n"));
    assert!(bad.is_empty(), "differs from Nix:\n{}", bad.join("\n"));
    assert_nothing_left(&bundles);
}

/// A fixed output whose hash is not the declared one fails, in Nix and
/// here (exit 1, the mismatch named); it got the network on that promise.
#[test]
fn a_fixed_output_with_the_wrong_hash_fails_as_in_nix() {
    if oracle_absent() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let conf = nix_conf(tmp.path());
    let file = expression(tmp.path());
    let drv = nix(
        &conf,
        &["nix-instantiate", file.to_str().unwrap(), "-A", "fod-wrong"],
    );
    let drv = drv.trim();
    let o = Command::new("nix-build")
        .args(["--no-out-link", drv])
        .env("NIX_CONF_DIR", &conf)
        .env_remove("NIX_REMOTE")
        .output()
        .unwrap();
    assert!(
        !o.status.success(),
        "Nix accepted a wrong fixed-output hash"
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("hash mismatch"));
    let bundles = tmp.path().join("bundles");
    let out = bin(&tmp.path().join("data"))
        .arg("build")
        .arg("--bundle-root")
        .arg(&bundles)
        .arg(drv)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("hash mismatch") && err.contains("-fod-wrong"),
        "{err}"
    );
    assert_nothing_left(&bundles);
}

/// Output checks Nix makes after a build (reference constraints, cycles
/// between outputs): where Nix refuses, we refuse too, with exit 1, Nix's
/// key phrase, the output and the offending path Nix names.
#[test]
fn what_nix_refuses_after_a_build_we_refuse() {
    if oracle_absent() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let conf = nix_conf(tmp.path());
    let file = expression(tmp.path());
    let mut attrs = vec!["nix-instantiate", file.to_str().unwrap()];
    for (c, _, _) in REFUSED {
        attrs.extend(["-A", c]);
    }
    let drvs: Vec<String> = nix(&conf, &attrs).lines().map(str::to_owned).collect();
    assert_eq!(drvs.len(), REFUSED.len());
    let mut nix_errs = Vec::new();
    for ((case, phrase, _), drv) in REFUSED.iter().zip(&drvs) {
        let o = Command::new("nix-build")
            .args(["--no-out-link", drv])
            .env("NIX_CONF_DIR", &conf)
            .env_remove("NIX_REMOTE")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!o.status.success(), "{case}: Nix accepted it");
        assert!(err.contains(phrase), "{case}: Nix said {err}");
        nix_errs.push(err);
    }
    let bundles = tmp.path().join("bundles");
    let out = bin(&tmp.path().join("data"))
        .arg("build")
        .arg("--bundle-root")
        .arg(&bundles)
        .args(&drvs)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let mut table = Vec::new();
    for (((case, phrase, suffix), drv), nix_err) in REFUSED.iter().zip(&drvs).zip(&nix_errs) {
        let ours = err
            .lines()
            .find(|l| l.starts_with(&format!("error: building {drv}:")))
            .unwrap_or_else(|| panic!("{case}: no error for {drv} in {err}"));
        assert!(ours.contains(phrase), "{case}: {ours}");
        // Every store path Nix's message names (output, offender) is in ours.
        let paths: Vec<&str> = nix_err
            .split(|c: char| c.is_whitespace() || c == '\'')
            .filter(|w| w.starts_with("/nix/store/") && !w.ends_with(".drv"))
            .collect();
        assert!(!paths.is_empty() || suffix.is_none(), "{case}: {nix_err}");
        for p in &paths {
            assert!(ours.contains(p), "{case}: ours lacks {p}: {ours}");
        }
        if let Some(s) = suffix {
            assert!(paths.iter().any(|p| p.ends_with(s)), "{case}: {nix_err}");
        }
        table.push(format!("{case}: both refuse ({phrase})"));
    }
    println!("{}", table.join("\n"));
    assert_nothing_left(&bundles);
}

/// A second build of the same inputs imports nothing: the store path →
/// node map in the data dir answers, and the result is the same.
#[test]
fn a_second_build_imports_nothing() {
    if oracle_absent() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let conf = nix_conf(tmp.path());
    let file = expression(tmp.path());
    let drv = nix(
        &conf,
        &["nix-instantiate", file.to_str().unwrap(), "-A", "dep-b"],
    );
    nix(&conf, &["nix-build", "--no-out-link", drv.trim()]);
    let bundles = tmp.path().join("bundles");
    let run = || {
        let out = bin(&tmp.path().join("data"))
            .arg("build")
            .arg("--bundle-root")
            .arg(&bundles)
            .arg(drv.trim())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let first = run();
    let second = run();
    // busybox and dep-a's output.
    assert_eq!(first["inputsImported"], 2, "{first}");
    assert_eq!(second["inputsImported"], 0, "{second}");
    assert_eq!(second["inputsReused"], 2, "{second}");
    assert_eq!(first["outputs"], second["outputs"]);
    assert_nothing_left(&bundles);
}

/// Inputs absent from the local store: one error naming each, exit 2,
/// before anything is built or imported.
#[test]
fn missing_inputs_are_named_and_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let absent_src = "/nix/store/00000000000000000000000000000000-absent-src";
    let absent_drv = "/nix/store/11111111111111111111111111111111-absent.drv";
    let drv = format!(
        r#"Derive([("out","/nix/store/22222222222222222222222222222222-x","","")],[("{absent_drv}",["out"])],["{absent_src}"],"x86_64-linux","/bin/sh",["-c","true"],[("out","/nix/store/22222222222222222222222222222222-x")])"#
    );
    let f = tmp.path().join("x.drv");
    std::fs::write(&f, drv).unwrap();
    let out = bin(&tmp.path().join("data"))
        .arg("build")
        .arg(&f)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(absent_src) && err.contains(absent_drv),
        "{err}"
    );
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error:")).count(),
        1,
        "{err}"
    );
}

/// A malformed .drv: exit 2, the file and the byte offset named.
#[test]
fn a_malformed_drv_is_named_with_its_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("bad.drv");
    std::fs::write(&f, "Derive([(\"out\",").unwrap();
    let out = bin(&tmp.path().join("data"))
        .arg("build")
        .arg(&f)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("bad.drv") && err.contains("at byte 15"),
        "{err}"
    );
}

/// Which report holds a line the other lacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Only {
    Nix,
    Ours,
}

/// One deliberate difference of our sandbox from Nix's.
enum Diff {
    /// A line only one report holds.
    Line(Only, &'static str, &'static str),
    /// Text of ours that Nix spells `nix`, in every line (the reason last).
    Rewrite(&'static str, &'static str, &'static str),
}

const ROOT_OWNER: &str = "files of root: ours belong to the container's root (mapped, to the id pool slot's base id), Nix's to the host's root, which its user namespace leaves unmapped (nobody); neither is the build user";
const ROOT_DIR: &str = "the root dir: ours is read-only, written by the executor and holds nothing private (0755); Nix's chroot dir is its build group's, 0750";
const KVM: &str = "host: Nix 2.8 binds /dev/kvm whenever the host has it; we bind it only when the request asks for it and the operator allows it (--allow-ro-path /dev/kvm)";
const INPUTS: &str = "the store dir: one overlay of the lazily fetched inputs (FUSE) and the outputs, where Nix binds each input on a directory";
const PROC: &str = "runc's and Docker's hardening of /proc (masked and read-only paths), which Nix leaves as it is";
const DEV: &str = "runc's /dev: a tmpfs with the same device nodes bound, and the ipc namespace's POSIX message queues at /dev/mqueue";

/// A character device's `mode` as `ls -l` shows it (`crw-rw----`).
fn ls_mode(mode: u32) -> String {
    let bits = "rwxrwxrwx".chars().enumerate();
    let perms: String = bits
        .map(|(i, c)| if mode & (0o400 >> i) != 0 { c } else { '-' })
        .collect();
    format!("c{perms}")
}

/// Every deliberate difference of the sandbox report (the
/// `sandbox-report` derivation) from Nix's, with its reason: the one list
/// of them (mirrored in SECURITY.md). `$BB` stands for the busybox input's
/// store path, `$KVM_MODE` the host's `/dev/kvm` mode as `ls` shows it
/// (0600, or 0660 where udev gave it to a `kvm` group). Reasons starting
/// `host:` hold only where the host has the thing (`/dev/kvm`).
const SANDBOX_DIFFERENCES: &[Diff] = &[
    Diff::Rewrite(" root root ", " nobody nogroup ", ROOT_OWNER),
    Diff::Rewrite(" root nixbld", " nobody nixbld", ROOT_OWNER),
    Diff::Line(Only::Nix, "ls / drwxr-x--- nobody nixbld .", ROOT_DIR),
    Diff::Line(Only::Nix, "ls / drwxr-x--- nobody nixbld ..", ROOT_DIR),
    Diff::Line(Only::Nix, "ls /build drwxr-x--- nobody nixbld ..", ROOT_DIR),
    Diff::Line(Only::Nix, "ls /dev drwxr-x--- nobody nixbld ..", ROOT_DIR),
    Diff::Line(Only::Nix, "ls /tmp drwxr-x--- nobody nixbld ..", ROOT_DIR),
    Diff::Line(Only::Ours, "ls / drwxr-xr-x nobody nogroup .", ROOT_DIR),
    Diff::Line(Only::Ours, "ls / drwxr-xr-x nobody nogroup ..", ROOT_DIR),
    Diff::Line(
        Only::Ours,
        "ls /build drwxr-xr-x nobody nogroup ..",
        ROOT_DIR,
    ),
    Diff::Line(Only::Ours, "ls /dev drwxr-xr-x nobody nogroup ..", ROOT_DIR),
    Diff::Line(Only::Ours, "ls /tmp drwxr-xr-x nobody nogroup ..", ROOT_DIR),
    Diff::Line(Only::Nix, "ls /dev $KVM_MODE nobody nogroup kvm", KVM),
    Diff::Line(Only::Nix, "mount /dev/kvm devtmpfs", KVM),
    Diff::Line(Only::Nix, "mount $BB ext4", INPUTS),
    Diff::Line(Only::Nix, "mount /nix/store ext4", INPUTS),
    Diff::Line(Only::Ours, "mount /nix/store overlay", INPUTS),
    Diff::Line(
        Only::Nix,
        "status CapBnd:\t000001ffffffffff",
        "the capability bounding set: ours holds only CAP_AUDIT_WRITE and CAP_KILL, Nix's all; neither build has any capability in effect",
    ),
    Diff::Line(
        Only::Ours,
        "status CapBnd:\t0000000020000020",
        "see the line above",
    ),
    Diff::Line(
        Only::Ours,
        "ls / drwxr-xr-x nobody nogroup bin",
        "build binds the sandbox shell (a static busybox) at /bin/sh, as Nix's sandbox-paths does where Nix was built with a sandbox shell (Debian's was not)",
    ),
    Diff::Line(Only::Ours, "mount /bin/sh ext4", "see the line above"),
    Diff::Line(Only::Ours, "mount /dev tmpfs", DEV),
    Diff::Line(Only::Ours, "mount /dev/mqueue mqueue", DEV),
    Diff::Line(Only::Ours, "ls /dev drwxrwxrwt root nogroup mqueue", DEV),
    Diff::Line(
        Only::Nix,
        "ls /dev lrwxrwxrwx nobody nogroup 'ptmx' -> '/dev/pts/ptmx'",
        "runc's /dev/ptmx link is relative: the same target",
    ),
    Diff::Line(
        Only::Ours,
        "ls /dev lrwxrwxrwx nobody nogroup 'ptmx' -> 'pts/ptmx'",
        "see the line above",
    ),
    Diff::Line(
        Only::Ours,
        "mount /tmp ext4",
        "/tmp: ours is a dir of the bundle bound there, Nix's a dir of its chroot, both on disk",
    ),
    Diff::Line(Only::Ours, "mount /proc/acpi tmpfs", PROC),
    Diff::Line(Only::Ours, "mount /proc/bus proc", PROC),
    Diff::Line(Only::Ours, "mount /proc/fs proc", PROC),
    Diff::Line(Only::Ours, "mount /proc/interrupts devtmpfs", PROC),
    Diff::Line(Only::Ours, "mount /proc/irq proc", PROC),
    Diff::Line(Only::Ours, "mount /proc/keys devtmpfs", PROC),
    Diff::Line(Only::Ours, "mount /proc/sys proc", PROC),
    Diff::Line(Only::Ours, "mount /proc/timer_list devtmpfs", PROC),
];

/// The report between the markers of `text`, the busybox path as `$BB`.
fn report_of(text: &str, bb: &str) -> Vec<String> {
    text.lines()
        .skip_while(|l| *l != "=== sandbox report")
        .skip(1)
        .take_while(|l| *l != "=== end")
        .map(|l| l.replace(bb, "$BB"))
        .collect()
}

/// What a build sees, line by line (environment, ids, limits,
/// capabilities, seccomp, mounts, the root's, `/dev`'s, `/tmp`'s and
/// `/build`'s listings, the store dir's mode, `/dev/shm`, `isatty` of
/// fds 0-2, the personality, what deleting or renaming an input does), is
/// Nix's but for [`SANDBOX_DIFFERENCES`], exactly.
#[test]
fn the_sandbox_report_is_nixs_but_for_the_listed_lines() {
    if oracle_absent() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let conf = nix_conf(tmp.path());
    let file = expression(tmp.path());
    let file = file.to_str().unwrap();
    let drv = nix(&conf, &["nix-instantiate", file, "-A", "sandbox-report"]);
    let drv = drv.trim();
    let out = nix(&conf, &["nix-build", "--no-out-link", drv]);
    let nix_text = std::fs::read_to_string(out.trim()).unwrap();
    let bb = nix(
        &conf,
        &[
            "nix-instantiate",
            "--eval",
            "-E",
            &format!(
                "\"${{builtins.path {{ path = {}/bb; name = \"busybox\"; }}}}\"",
                tmp.path().display()
            ),
        ],
    );
    let bb = bb.trim().trim_matches('"');
    let theirs = report_of(&format!("=== sandbox report\n{nix_text}=== end\n"), bb);

    let bundles = tmp.path().join("bundles");
    let o = bin(&tmp.path().join("data"))
        .arg("build")
        .arg("--bundle-root")
        .arg(&bundles)
        .arg(drv)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let mut ours = report_of(&err, bb);
    assert!(!ours.is_empty(), "no report in our log:\n{err}");
    for d in SANDBOX_DIFFERENCES {
        if let Diff::Rewrite(from, to, _) = d {
            for l in &mut ours {
                *l = l.replace(from, to);
            }
        }
    }

    let count = |v: &[String]| {
        let mut m = std::collections::BTreeMap::<String, i64>::new();
        for l in v {
            *m.entry(l.clone()).or_default() += 1;
        }
        m
    };
    let (n, w) = (count(&theirs), count(&ours));
    let mut differ = BTreeSet::new();
    for (l, c) in &n {
        if w.get(l).copied().unwrap_or(0) < *c {
            differ.insert((Only::Nix, l.clone()));
        }
    }
    for (l, c) in &w {
        if n.get(l).copied().unwrap_or(0) < *c {
            differ.insert((Only::Ours, l.clone()));
        }
    }
    let kvm_mode = std::fs::metadata("/dev/kvm")
        .ok()
        .map(|m| ls_mode(std::os::unix::fs::MetadataExt::mode(&m)));
    let listed: BTreeSet<(Only, String)> = SANDBOX_DIFFERENCES
        .iter()
        .filter_map(|d| match (d, &kvm_mode) {
            (Diff::Line(o, l, why), kvm) if kvm.is_some() || !why.starts_with("host:") => {
                let mode = kvm.as_deref().unwrap_or_default();
                Some((*o, l.replace("$KVM_MODE", mode)))
            }
            _ => None,
        })
        .collect();
    let unlisted: Vec<_> = differ.difference(&listed).collect();
    let gone: Vec<_> = listed.difference(&differ).collect();
    for d in SANDBOX_DIFFERENCES {
        match d {
            Diff::Rewrite(from, to, why) => println!("ours {from:?}, Nix's {to:?}: {why}"),
            Diff::Line(o, l, why) => println!("only {o:?}: {l:?}: {why}"),
        }
    }
    println!(
        "{} report lines, {} deliberately different",
        theirs.len(),
        differ.len()
    );
    assert!(
        unlisted.is_empty() && gone.is_empty(),
        "differences not listed in SANDBOX_DIFFERENCES:\n{}\nlisted but not (or no longer) different:\n{}",
        unlisted
            .iter()
            .map(|(o, l)| format!("    (Only::{o:?}, {l:?}, \"\"),"))
            .collect::<Vec<_>>()
            .join("\n"),
        gone.iter()
            .map(|(o, l)| format!("{o:?} {l}"))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    assert_nothing_left(&bundles);
}
