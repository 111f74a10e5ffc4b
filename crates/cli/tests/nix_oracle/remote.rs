//! `build --remote`: a derivation built on a `serve` gives the outputs a
//! local build gives (Nix's terms: paths, NAR hashes, references), its
//! input closure imported into the server's store once: a second remote
//! build imports nothing; nothing is left on the server.

use super::common::{Serve, leftovers};
use super::{bin, instantiate, json_of, nix, oracle_absent, ours};

#[test]
fn a_remote_build_gives_the_local_outputs_and_imports_its_inputs_once() {
    if oracle_absent() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (conf, drv) = instantiate(tmp.path(), "dep-b");
    let drv = drv.as_str();
    // Its inputs (dep-a's output among them) in the Nix store.
    nix(&conf, &["nix-build", "--no-out-link", drv]);
    let server_bundles = tmp.path().join("server-bundles");
    let server = Serve::start(&tmp.path().join("server"), &server_bundles, &[]);
    let remote = || {
        let out = bin(&tmp.path().join("data"))
            .args(["build", "--remote", &server.url, drv])
            .output()
            .unwrap();
        json_of(&out)
    };
    let first = remote();
    let second = remote();
    let local = json_of(&ours(tmp.path()).arg(drv).output().unwrap());
    assert_eq!(first["outputs"], local["outputs"], "{first}\n{local}");
    // busybox and dep-a's output, imported into the server's store once.
    assert_eq!(first["inputsImported"], 2, "{first}");
    assert_eq!(second["inputsImported"], 0, "{second}");
    assert_eq!(second["outputs"], first["outputs"]);
    assert!(leftovers(&server_bundles).is_empty());
}
