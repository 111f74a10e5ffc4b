//! The generated config.json: snapshots of a Nix-like request and its
//! variants, every one valid against the OCI runtime-spec v1.1.0 schema in
//! `shared/`, plus the properties the schema does not check.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::nix_like;
use serde_json::Value;
use tvix_oci_spec::proto;
use tvix_oci_spec::{
    BuildRequest, IdMapping, IdMappings, ResourceLimits, Rlimit, RoMount, SpecError, SpecOptions,
    make_spec,
};

fn config(p: proto::BuildRequest, opts: &SpecOptions) -> Value {
    let req = BuildRequest::try_from(p).unwrap();
    let spec = make_spec(&req, opts).unwrap();
    serde_json::from_str(&tvix_oci_spec::to_config_json(&spec).unwrap()).unwrap()
}

fn shell() -> SpecOptions {
    SpecOptions {
        sandbox_shell: Some("/bin/busybox".into()),
        ..Default::default()
    }
}

fn mappings(host_id: u32) -> IdMappings {
    let m = IdMapping {
        container_id: 0,
        host_id,
        size: 65_536,
    };
    IdMappings {
        uid: vec![m],
        gid: vec![m],
    }
}

fn rootless() -> SpecOptions {
    SpecOptions {
        rootless: true,
        user_namespace: Some(mappings(100_000)),
        ..Default::default()
    }
}

/// As root, with a slot of the build id pool and the root filesystem
/// beside the slot's lock.
fn pool_slot() -> SpecOptions {
    SpecOptions {
        user_namespace: Some(mappings(872_415_232)),
        rootfs: Some("/run/tvix-oci-build/id-pool/872415232/root".into()),
        ..Default::default()
    }
}

/// The schema kept in shared/ (draft-04, refs by bare file name).
fn validator() -> jsonschema::Validator {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/oci-runtime-spec-schema");
    let dir = dir
        .canonicalize()
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let path = dir.join("config-schema.json");
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    jsonschema::options()
        .with_base_uri(format!("file://{}", path.display()))
        .build(&schema)
        .unwrap()
}

fn variants() -> Vec<(&'static str, Value)> {
    let mut net = nix_like();
    net.constraints.as_mut().unwrap().network_access = true;
    let mut sh = nix_like();
    sh.constraints.as_mut().unwrap().provide_bin_sh = true;
    vec![
        ("nix_like", config(nix_like(), &SpecOptions::default())),
        ("network", config(net, &SpecOptions::default())),
        ("rootless", config(nix_like(), &rootless())),
        ("user_namespace", config(nix_like(), &pool_slot())),
        ("provide_bin_sh", config(sh, &shell())),
    ]
}

#[test]
fn snapshots() {
    for (name, v) in variants() {
        insta::assert_snapshot!(name, serde_json::to_string_pretty(&v).unwrap());
    }
}

#[test]
fn every_config_validates_against_the_runtime_spec_schema() {
    let schema = validator();
    for (name, v) in variants() {
        let errors: Vec<String> = schema
            .iter_errors(&v)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{name}: {errors:#?}");
    }
    // And the schema does reject a broken one, so the check means something.
    let mut broken = config(nix_like(), &SpecOptions::default());
    broken["process"]["user"]["uid"] = Value::String("root".into());
    assert!(!schema.is_valid(&broken));
}

fn mounts(v: &Value) -> Vec<(String, String, Vec<String>)> {
    v["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let opts = m["options"]
                .as_array()
                .map(|o| o.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
                .unwrap_or_default();
            (
                m["destination"].as_str().unwrap().to_owned(),
                m["source"].as_str().unwrap_or("").to_owned(),
                opts,
            )
        })
        .collect()
}

#[test]
fn process_and_hardening() {
    let v = config(nix_like(), &SpecOptions::default());
    assert_eq!(v["process"]["terminal"], false);
    assert_eq!(v["process"]["cwd"], "/build");
    assert_eq!(v["process"]["user"]["uid"], 1000);
    assert_eq!(v["process"]["user"]["gid"], 100);
    assert_eq!(v["process"]["noNewPrivileges"], true);
    // As Nix: no core dumps (soft 0, hard unlimited), the open-files limit
    // the executor passes (1024 without one).
    let rlimit = |v: &Value, t: &str| {
        let r = v["process"]["rlimits"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["type"] == t)
            .cloned()
            .unwrap_or_else(|| panic!("no {t}"));
        (r["soft"].as_u64().unwrap(), r["hard"].as_u64().unwrap())
    };
    assert_eq!(rlimit(&v, "RLIMIT_CORE"), (0, u64::MAX));
    assert_eq!(rlimit(&v, "RLIMIT_NOFILE"), (1024, 1024));
    let inherited = SpecOptions {
        open_files: Some(Rlimit {
            soft: 20_000,
            hard: 40_000,
        }),
        ..Default::default()
    };
    let w = config(nix_like(), &inherited);
    assert_eq!(rlimit(&w, "RLIMIT_NOFILE"), (20_000, 40_000));
    assert_eq!(
        v["process"]["capabilities"]["bounding"],
        serde_json::json!(["CAP_AUDIT_WRITE", "CAP_KILL"])
    );
    assert_eq!(
        v["process"]["args"][1],
        "/nix/store/1ix2mk3svkrrc1kkwxbflfg6ydfcpxxq-builder.sh"
    );
    assert!(
        v["process"]["env"]
            .as_array()
            .unwrap()
            .contains(&Value::String("NIX_BUILD_TOP=/build".into()))
    );
    assert_eq!(v["root"]["path"], "root");
    assert_eq!(v["root"]["readonly"], true);
    assert_eq!(v["hostname"], "localhost");
    assert!(v.get("hooks").is_none());
    let masked = v["linux"]["maskedPaths"].as_array().unwrap();
    for p in [
        "/proc/kcore",
        "/proc/keys",
        "/proc/acpi",
        "/proc/scsi",
        "/proc/timer_list",
    ] {
        assert!(masked.contains(&Value::String(p.into())), "{p} not masked");
    }
    let ns: Vec<&str> = v["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["type"].as_str().unwrap())
        .collect();
    assert_eq!(ns, ["pid", "ipc", "uts", "mount", "cgroup", "network"]);
    let seccomp = &v["linux"]["seccomp"];
    assert_eq!(seccomp["defaultAction"], "SCMP_ACT_ALLOW");
    let rules = seccomp["syscalls"].as_array().unwrap();
    let chmod = rules
        .iter()
        .find(|r| {
            r["names"]
                .as_array()
                .unwrap()
                .contains(&Value::String("fchmodat".into()))
        })
        .unwrap();
    assert_eq!(chmod["errnoRet"], 1);
    assert_eq!(chmod["args"][0]["op"], "SCMP_CMP_MASKED_EQ");
    let xattr = rules
        .iter()
        .find(|r| {
            r["names"]
                .as_array()
                .unwrap()
                .contains(&Value::String("setxattr".into()))
        })
        .unwrap();
    assert_eq!(xattr["errnoRet"], 95);
}

#[test]
fn mount_layout() {
    let v = config(nix_like(), &SpecOptions::default());
    let m = mounts(&v);
    let find = |d: &str| m.iter().find(|(dest, ..)| dest == d).cloned();
    let (_, src, opts) = find("/nix/store").unwrap();
    assert_eq!(src, "store");
    assert!(opts.contains(&"rw".to_owned()));
    let (_, src, _) = find("/build").unwrap();
    assert_eq!(src, "scratch/build");
    // /tmp is the bundle's tmp/ on disk, not a RAM tmpfs.
    let (_, src, opts) = find("/tmp").unwrap();
    assert_eq!(src, "tmp");
    assert_eq!(opts, ["rbind", "rw", "nosuid", "nodev"]);
    assert!(
        !v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["destination"] == "/tmp" && m["type"] == "tmpfs")
    );
    // /dev/shm a tmpfs as Nix's: 1777, exec allowed, the kernel's size
    // (half of the RAM) unless the executor passes one.
    let (_, _, opts) = find("/dev/shm").unwrap();
    assert_eq!(opts, ["nosuid", "nodev", "mode=1777"]);
    let sized = SpecOptions {
        shm_bytes: Some(1 << 30),
        ..Default::default()
    };
    let (_, _, opts) = mounts(&config(nix_like(), &sized))
        .into_iter()
        .find(|(d, ..)| d == "/dev/shm")
        .unwrap();
    assert_eq!(opts, ["nosuid", "nodev", "mode=1777", "size=1073741824"]);
    // No /sys, as in Nix (nor its cgroup mount below).
    assert!(!m.iter().any(|(d, ..)| d.starts_with("/sys")), "{m:?}");
    assert!(
        find("/etc/resolv.conf").is_none(),
        "no network files without network"
    );
    assert!(find("/bin/sh").is_none());

    // inputs_dir that is not a scratch path: inputs/ itself, read-only.
    let mut p = nix_like();
    p.scratch_paths = vec!["build".into()];
    p.outputs = vec!["build/out".into()];
    let m = mounts(&config(p, &SpecOptions::default()));
    let (_, src, opts) = m.iter().find(|(d, ..)| d == "/nix/store").cloned().unwrap();
    assert_eq!(src, "inputs");
    assert!(opts.contains(&"ro".to_owned()));
}

#[test]
fn a_user_namespace_as_root_maps_the_slot_and_keeps_the_root_mounts() {
    let opts = pool_slot();
    assert_eq!(
        opts.build_owner_on_host(),
        Some((872_415_232 + 1000, 872_415_232 + 100))
    );
    assert_eq!(opts.root_on_host(), Some((872_415_232, 872_415_232)));
    assert_eq!(
        SpecOptions::default().build_owner_on_host(),
        Some((1000, 100))
    );
    let v = config(nix_like(), &opts);
    let ns: Vec<&str> = v["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["type"].as_str().unwrap())
        .collect();
    assert!(ns.contains(&"user"), "{ns:?}");
    let want = serde_json::json!([{"containerID": 0, "hostID": 872_415_232u32, "size": 65_536}]);
    assert_eq!(v["linux"]["uidMappings"], want);
    assert_eq!(v["linux"]["gidMappings"], want);
    assert_eq!(
        v["root"]["path"],
        "/run/tvix-oci-build/id-pool/872415232/root"
    );
    // Not rootless: runc (root) mounts the overlay on the host.
    let m = mounts(&v);
    let (_, src, _) = m.iter().find(|(d, ..)| d == "/nix/store").cloned().unwrap();
    assert_eq!(src, "store");
    // No /sys, with or without the host's network (where a user namespace
    // could not mount sysfs), as in Nix.
    assert!(!m.iter().any(|(d, ..)| d.starts_with("/sys")), "{m:?}");
    let mut net = nix_like();
    net.constraints.as_mut().unwrap().network_access = true;
    let m = mounts(&config(net, &opts));
    assert!(!m.iter().any(|(d, ..)| d.starts_with("/sys")), "{m:?}");
    // Mappings that leave the build user out are refused.
    let bad = SpecOptions {
        user_namespace: Some(IdMappings {
            uid: vec![IdMapping {
                container_id: 0,
                host_id: 872_415_232,
                size: 1,
            }],
            gid: vec![],
        }),
        ..Default::default()
    };
    let req = BuildRequest::try_from(nix_like()).unwrap();
    assert!(matches!(
        make_spec(&req, &bad),
        Err(SpecError::RootlessMappings)
    ));
}

#[test]
fn rootless_mounts_the_overlay_inside_the_container() {
    let opts = SpecOptions {
        overlay_in_container: Some("/run/b/tob-1".into()),
        ..rootless()
    };
    let v = config(nix_like(), &opts);
    let m = mounts(&v);
    let (_, src, o) = m.iter().find(|(d, ..)| d == "/nix/store").cloned().unwrap();
    assert_eq!(src, "overlay");
    for want in [
        "lowerdir=/run/b/tob-1/inputs",
        "upperdir=/run/b/tob-1/outputs/upper",
        "workdir=/run/b/tob-1/outputs/work",
        "userxattr",
    ] {
        assert!(o.contains(&want.to_owned()), "{want} missing from {o:?}");
    }
    assert!(validator().validate(&v).is_ok());
    // The kernel splits overlay options at ',' and ':'.
    let bad = SpecOptions {
        overlay_in_container: Some("/run/a,b".into()),
        ..rootless()
    };
    let req = BuildRequest::try_from(nix_like()).unwrap();
    assert!(matches!(
        make_spec(&req, &bad),
        Err(SpecError::OverlayPath(_))
    ));
}

#[test]
fn variants_differ_where_they_should() {
    let mut net = nix_like();
    net.constraints.as_mut().unwrap().network_access = true;
    let v = config(net, &SpecOptions::default());
    let ns: Vec<&str> = v["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["type"].as_str().unwrap())
        .collect();
    assert!(!ns.contains(&"network"));
    let m = mounts(&v);
    for f in ["/etc/resolv.conf", "/etc/services", "/etc/hosts"] {
        assert!(
            m.iter().any(|(d, ..)| d == f),
            "{f} not bound with network access"
        );
    }

    let v = config(nix_like(), &rootless());
    let ns: Vec<&str> = v["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["type"].as_str().unwrap())
        .collect();
    assert!(ns.contains(&"user"));
    assert_eq!(v["linux"]["uidMappings"][0]["hostID"], 100_000);

    let mut sh = nix_like();
    sh.constraints.as_mut().unwrap().provide_bin_sh = true;
    let m = mounts(&config(sh.clone(), &shell()));
    assert!(
        m.iter()
            .any(|(d, s, _)| d == "/bin/sh" && s == "/bin/busybox")
    );
    let req = BuildRequest::try_from(sh).unwrap();
    assert!(matches!(
        make_spec(&req, &SpecOptions::default()),
        Err(SpecError::NoSandboxShell)
    ));
}

#[test]
fn mounts_do_not_grow_with_inputs() {
    let mut big = nix_like();
    big.inputs = (0..5000)
        .map(|i| common::dir_input(&format!("{i:05}-input")))
        .collect();
    let few = mounts(&config(nix_like(), &SpecOptions::default())).len();
    assert_eq!(mounts(&config(big, &SpecOptions::default())).len(), few);
}

#[test]
fn resource_limits_from_options() {
    let opts = SpecOptions {
        resources: ResourceLimits {
            memory_bytes: Some(1 << 30),
            pids: Some(512),
            cpus: Some(1.5),
        },
        ..Default::default()
    };
    let v = config(nix_like(), &opts);
    assert_eq!(v["linux"]["resources"]["memory"]["limit"], 1 << 30);
    assert_eq!(v["linux"]["resources"]["pids"]["limit"], 512);
    assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 150_000);
}

#[test]
fn non_utf8_env_is_an_error_not_a_panic() {
    let mut p = nix_like();
    p.environment_vars[0].value = vec![0xff, 0xfe].into();
    let req = BuildRequest::try_from(p).unwrap();
    let err = make_spec(&req, &SpecOptions::default()).unwrap_err();
    assert!(err.to_string().contains("\"HOME\""), "{err}");
}

#[test]
fn read_only_paths_are_bound_as_the_executor_prepared_them() {
    let mut p = nix_like();
    p.constraints.as_mut().unwrap().available_ro_paths =
        vec!["/dev/kvm".into(), "/opt/tools".into()];
    let prepared = vec![
        RoMount {
            path: "/dev/kvm".into(),
            source: "ro/0".into(),
            device: true,
        },
        RoMount {
            path: "/opt/tools".into(),
            source: "ro/1".into(),
            device: false,
        },
    ];
    let opts = SpecOptions {
        ro_mounts: prepared,
        ..Default::default()
    };
    let m = mounts(&config(p.clone(), &opts));
    let find = |d: &str| m.iter().find(|(dest, ..)| dest == d).cloned().unwrap();
    // A device keeps dev; a directory gets nodev; both from the bundle.
    assert_eq!(find("/dev/kvm").1, "ro/0");
    assert_eq!(find("/dev/kvm").2, ["rbind", "ro", "nosuid"]);
    assert_eq!(find("/opt/tools").1, "ro/1");
    assert_eq!(find("/opt/tools").2, ["rbind", "ro", "nosuid", "nodev"]);
    // Nothing prepared: refused, never the host path bound directly.
    let req = BuildRequest::try_from(p).unwrap();
    let err = make_spec(&req, &SpecOptions::default()).unwrap_err();
    assert!(
        matches!(err, SpecError::RoPathNotPrepared(ref p) if p == "/dev/kvm"),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("constraints.available_ro_paths: /dev/kvm"),
        "{err}"
    );
}

#[test]
fn a_pids_limit_by_default_an_rlimit_when_rootless() {
    assert_eq!(SpecOptions::default().resources.pids, Some(4096));
    let v = config(nix_like(), &SpecOptions::default());
    assert_eq!(v["linux"]["resources"]["pids"]["limit"], 4096);
    let unlimited = SpecOptions {
        resources: ResourceLimits {
            pids: None,
            ..Default::default()
        },
        ..Default::default()
    };
    let v = config(nix_like(), &unlimited);
    assert!(
        v["linux"]["resources"].get("pids").is_none(),
        "{}",
        v["linux"]
    );
    // Rootless: no cgroup to hold it, so RLIMIT_NPROC of the build user.
    let v = config(nix_like(), &rootless());
    assert!(
        v["linux"]["resources"].get("pids").is_none(),
        "{}",
        v["linux"]
    );
    let nproc = v["process"]["rlimits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "RLIMIT_NPROC")
        .cloned()
        .unwrap();
    assert_eq!(
        (nproc["soft"].clone(), nproc["hard"].clone()),
        (4096.into(), 4096.into())
    );
}
