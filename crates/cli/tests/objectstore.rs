//! A build whose inputs and outputs live in S3: `run` with
//! `--blob-service-addr`/`--directory-service-addr` on an
//! `objectstore+s3://` URL of a real S3 server (s3s-fs) on loopback. The
//! input is uploaded there, the build reads it lazily from there, its
//! outputs land there (as objects under their digests), and `cat` reads
//! them back; nothing goes to the embedded store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{bin, busybox_tree, can_build, leftovers, run_with_busybox, skip_or_fail};
use tvix_oci_castore::B3Digest;
use tvix_oci_testkit::s3server::S3Server;

#[test]
fn a_build_with_its_store_in_s3() {
    if let Some(why) = can_build() {
        println!("SKIPPED: {why}");
        return;
    }
    let Some(s3) = S3Server::start().unwrap() else {
        return skip_or_fail("s3s-fs is not installed (.ci/install-deps installs it)");
    };
    let url = s3.url("farm");
    let tmp = tempfile::tempdir().unwrap();
    let (data, bundles) = (tmp.path().join("data"), tmp.path().join("bundles"));
    let bb = busybox_tree(tmp.path());
    let store = [
        "--blob-service-addr",
        &url,
        "--directory-service-addr",
        &url,
    ];
    let out = run_with_busybox(&data, &bb)
        .args(store)
        .arg("--bundle-root")
        .arg(&bundles)
        .args(["--output", "nix/store/out", "--"])
        .args(["/nix/store/busybox/bin/busybox", "sh", "-c"])
        .arg("mkdir -p /nix/store/out/sub; echo from s3 > /nix/store/out/sub/msg")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let digest = v["build"]["outputs"][0]["directory"]["digest"]
        .as_str()
        .unwrap_or_else(|| panic!("a directory output: {v}"))
        .to_owned();

    // Read back through the store's URL: the output's closure and blob.
    let cat = bin(&data)
        .args(store)
        .args(["cat", &format!("{digest}/sub/msg")])
        .output()
        .unwrap();
    assert_eq!(
        cat.stdout,
        b"from s3\n",
        "{}",
        String::from_utf8_lossy(&cat.stderr)
    );

    // In the bucket, under their digests: busybox (the input), the
    // output's blob and its two directories.
    let objects = s3.bucket_dir().join("farm");
    let has = |kind: &str, hex: &str| objects.join(kind).join(&hex[..2]).join(hex).is_file();
    let busybox = B3Digest::of(&std::fs::read("/bin/busybox").unwrap()).to_hex();
    assert!(has("blobs/whole", &busybox), "the input in S3");
    assert!(has("blobs/whole", &B3Digest::of(b"from s3\n").to_hex()));
    assert!(has("directories", &digest), "the output's root directory");
    assert!(!data.join("tvix-oci-build").exists(), "no embedded store");
    assert!(leftovers(&bundles).is_empty());
}
