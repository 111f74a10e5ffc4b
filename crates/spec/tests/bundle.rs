//! The bundle skeleton on disk, and where outputs are found after a build.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use common::nix_like;
use tvix_oci_spec::path::CleanPath;
use tvix_oci_spec::{BuildRequest, BundleLayout, IdMapping, IdMappings, SpecOptions};

#[test]
fn skeleton() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = BundleLayout::new(tmp.path().join("b1"));
    let mut p = nix_like();
    p.additional_files
        .push(tvix_oci_spec::proto::build_request::AdditionalFile {
            path: "etc/nix/nix.conf".into(),
            contents: "sandbox = false\n".into(),
        });
    p.additional_files.sort_by(|a, b| a.path.cmp(&b.path));
    let req = BuildRequest::try_from(p).unwrap();
    layout
        .write_skeleton(&req, &SpecOptions::default())
        .unwrap();

    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(layout.dir()), 0o700);
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.config()).unwrap()).unwrap();
    assert_eq!(config["process"]["cwd"], "/build");
    let passwd = std::fs::read_to_string(layout.rootfs().join("etc/passwd")).unwrap();
    assert!(
        passwd.contains("nixbld:x:1000:100:") && passwd.contains("nobody:x:65534"),
        "{passwd}"
    );
    assert!(
        std::fs::read_to_string(layout.rootfs().join("etc/group"))
            .unwrap()
            .contains(":100:")
    );
    assert!(
        std::fs::read_to_string(layout.rootfs().join("etc/hosts"))
            .unwrap()
            .contains("localhost")
    );
    for d in ["build", "nix/store", "tmp"] {
        assert!(layout.rootfs().join(d).is_dir(), "mount point {d} missing");
    }
    for d in [
        layout.tmp(),
        layout.inputs(),
        layout.store(),
        layout.work(),
        layout.upper(),
    ] {
        assert!(d.is_dir(), "{}", d.display());
    }
    let build = layout.scratch(&CleanPath::parse("build").unwrap());
    assert!(build.ends_with("scratch/build"));
    // Nix's owners and modes (root runs this test in CI): /build the build
    // user's 0700; the store dir (the overlay's upper layer) root's and the
    // build group's 1775; /tmp, on disk in the bundle, root's 1777.
    assert_eq!(mode(&build), 0o700);
    assert_eq!(mode(&layout.upper()), 0o1775);
    assert_eq!(mode(&layout.tmp()), 0o1777);
    if unsafe { libc::geteuid() } == 0 {
        let m = std::fs::metadata(&build).unwrap();
        assert_eq!((m.uid(), m.gid()), (1000, 100));
        let m = std::fs::metadata(layout.upper()).unwrap();
        assert_eq!((m.uid(), m.gid()), (0, 100));
        let m = std::fs::metadata(layout.tmp()).unwrap();
        assert_eq!((m.uid(), m.gid()), (0, 0));
    } else {
        println!("skipping ownership checks: not root");
    }
    assert_eq!(std::fs::read(build.join(".attrs.json")).unwrap(), b"{}");
    assert_eq!(
        std::fs::read(layout.rootfs().join("etc/nix/nix.conf")).unwrap(),
        b"sandbox = false\n"
    );

    // Outputs: under the writable store they are in the upper layer.
    let out = &req.outputs()[0];
    assert_eq!(
        layout.output_location(&req, out).unwrap(),
        (layout.upper(), "a6xgw8ck6z7vb3yzrn0m7bl0sfkxwlyk-hello")
    );
    let b = CleanPath::parse("build/out/x").unwrap();
    assert_eq!(layout.output_location(&req, &b).unwrap(), (build, "out/x"));
}

#[test]
fn scratch_names_are_collision_free() {
    let n = |s: &str| tvix_oci_spec::scratch_name(&CleanPath::parse(s).unwrap());
    assert_eq!(n("nix/store"), "nix%2Fstore");
    assert_ne!(n("a/b"), n("a%2Fb"));
    assert_ne!(n("a_b"), n("a/b"));
}

#[test]
fn provide_bin_sh_gets_a_mount_point() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = BundleLayout::new(tmp.path().join("b"));
    let mut p = nix_like();
    p.constraints.as_mut().unwrap().provide_bin_sh = true;
    let req = BuildRequest::try_from(p).unwrap();
    let opts = SpecOptions {
        sandbox_shell: Some("/bin/sh".into()),
        ..Default::default()
    };
    layout.write_skeleton(&req, &opts).unwrap();
    assert!(layout.rootfs().join("bin/sh").is_file());
}

/// As root with a user namespace: the root skeleton goes where asked and is
/// the container root's; what the build writes is the mapped build user's.
#[test]
fn skeleton_with_a_user_namespace_as_root() {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIPPED: chown needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let layout = BundleLayout::new(tmp.path().join("b1"));
    let rootfs = tmp.path().join("slot/root");
    let m = IdMapping {
        container_id: 0,
        host_id: 872_415_232,
        size: 65_536,
    };
    let opts = SpecOptions {
        user_namespace: Some(IdMappings {
            uid: vec![m],
            gid: vec![m],
        }),
        rootfs: Some(rootfs.clone()),
        ..SpecOptions::default()
    };
    let req = BuildRequest::try_from(nix_like()).unwrap();
    layout.write_skeleton(&req, &opts).unwrap();
    assert!(!layout.rootfs().exists(), "the skeleton went to the bundle");
    let owner = |p: &std::path::Path| {
        let m = std::fs::symlink_metadata(p).unwrap();
        (m.uid(), m.gid())
    };
    for p in ["", "etc", "etc/passwd", "tmp", "nix/store"] {
        assert_eq!(owner(&rootfs.join(p)), (872_415_232, 872_415_232), "{p}");
    }
    let build = (872_415_232 + 1000, 872_415_232 + 100);
    assert_eq!(owner(&layout.upper()), (872_415_232, 872_415_232 + 100));
    assert_eq!(owner(&layout.tmp()), (872_415_232, 872_415_232));
    let s = CleanPath::parse("build").unwrap();
    assert_eq!(owner(&layout.scratch(&s)), build);
    assert_eq!(owner(&layout.config()), (0, 0));
}
