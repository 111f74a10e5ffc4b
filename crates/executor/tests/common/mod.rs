//! What the end-to-end tests share: a store holding a static busybox and a
//! data file, requests running busybox's sh, and the check that nothing
//! is left behind.
#![allow(dead_code, unused_imports)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tvix_oci_castore::blobservice::{BlobService, read_to_end};
use tvix_oci_castore::directoryservice::DirectoryService;
use tvix_oci_castore::import::{ImportOptions, import_path};
use tvix_oci_castore::{Node, open_blob_service, open_directory_service};
use tvix_oci_executor::ingest::IngestError;
use tvix_oci_executor::runc::{LogSink, LogStream, NoLogs, Phase};
use tvix_oci_executor::{BuildError, Executor, ExecutorConfig};
use tvix_oci_spec::BuildRequest;
use tvix_oci_spec::proto::{self, build_request as br};

pub use tvix_oci_testkit::{Fault, FaultyBlobs};

pub const BB: &str = "0k9yxm9zqc2dgw2xxbyh3mnbs5ijjc7v-busybox";
pub const DATA: &str = "1ix2mk3svkrrc1kkwxbflfg6ydfcpxxq-data";
pub const OUT: &str = "a6xgw8ck6z7vb3yzrn0m7bl0sfkxwlyk-out";

#[macro_export]
macro_rules! need_runtime {
    () => {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter("tvix_oci=debug")
            .try_init();
        tvix_oci_testkit::require!(root, fuse, runc, busybox);
    };
}

pub struct Env {
    pub tmp: tempfile::TempDir,
    pub blobs: Arc<dyn BlobService>,
    pub dirs: Arc<dyn DirectoryService>,
    pub bb: Node,
    pub data: Node,
}

pub async fn env() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().display().to_string();
    let blobs = open_blob_service(&format!("objects://{p}/blobs"))
        .await
        .unwrap();
    let dirs = open_directory_service(&format!("redb://{p}/dirs.redb"))
        .await
        .unwrap();
    let tree = tmp.path().join("bb");
    std::fs::create_dir_all(tree.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", tree.join("bin/busybox")).unwrap();
    let bb = import_path(blobs.clone(), &*dirs, &tree, &ImportOptions::default())
        .await
        .unwrap();
    std::fs::write(
        tmp.path().join("data"),
        format!("data that names /nix/store/{BB}\n"),
    )
    .unwrap();
    let data = import_path(
        blobs.clone(),
        &*dirs,
        &tmp.path().join("data"),
        &ImportOptions::default(),
    )
    .await
    .unwrap();
    Env {
        tmp,
        blobs,
        dirs,
        bb,
        data,
    }
}

impl Env {
    pub fn config(&self) -> ExecutorConfig {
        ExecutorConfig {
            bundle_root: self.tmp.path().join("bundles"),
            ..ExecutorConfig::probed()
        }
    }

    pub fn executor(&self, f: impl FnOnce(&mut ExecutorConfig)) -> Executor {
        let mut c = self.config();
        f(&mut c);
        let exec = Executor::new(c, self.blobs.clone(), self.dirs.clone());
        exec.recover();
        exec
    }

    /// A Nix-like request running `script` with busybox's sh.
    pub fn request(
        &self,
        script: &str,
        outputs: &[&str],
        f: impl FnOnce(&mut proto::BuildRequest),
    ) -> BuildRequest {
        let mut env = vec![
            br::EnvVar {
                key: "PATH".into(),
                value: format!("/nix/store/{BB}/bin").into(),
            },
            br::EnvVar {
                key: "out".into(),
                value: format!("/nix/store/{OUT}").into(),
            },
        ];
        env.sort_by(|a, b| a.key.cmp(&b.key));
        let mut p = proto::BuildRequest {
            inputs: vec![
                self.bb.to_proto(&BB.try_into().unwrap()),
                self.data.to_proto(&DATA.try_into().unwrap()),
            ],
            command_args: vec![
                format!("/nix/store/{BB}/bin/busybox"),
                "sh".into(),
                "-c".into(),
                script.into(),
            ],
            working_dir: "build".into(),
            scratch_paths: vec!["build".into(), "nix/store".into()],
            inputs_dir: "nix/store".into(),
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
            environment_vars: env,
            constraints: Some(br::BuildConstraints {
                system: tvix_oci_executor::host::host_system(),
                ..Default::default()
            }),
            additional_files: vec![],
            refscan_needles: vec![OUT[..32].into(), BB[..32].into(), DATA[..32].into()],
        };
        f(&mut p);
        BuildRequest::try_from(p).unwrap()
    }

    /// Nothing left: no bundle, no mount below the bundle root, no container of ours.
    pub fn assert_clean(&self) {
        let root = self.tmp.path().join("bundles");
        let left: Vec<_> = std::fs::read_dir(&root)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "bundles left: {left:?}");
        let mounts = tvix_oci_fuse::mountinfo::mounts_below(&root).unwrap();
        assert!(mounts.is_empty(), "mounts left: {mounts:?}");
        // Containers whose bundle was under this test's bundle root.
        let out = std::process::Command::new("runc")
            .args(["list", "--format", "json"])
            .output()
            .unwrap();
        let list: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        let ours: Vec<String> = list
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| {
                c["bundle"]
                    .as_str()
                    .is_some_and(|b| Path::new(b).starts_with(&root))
            })
            .map(|c| c["id"].to_string())
            .collect();
        assert!(ours.is_empty(), "containers left: {ours:?}");
        // The builds' cgroups (this process's builds are named after it).
        let prefix = format!("tob-{}-", std::process::id());
        for parent in tvix_oci_executor::cgroup::parents() {
            let left: Vec<_> = std::fs::read_dir(&parent)
                .unwrap()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .map(|e| e.path())
                .collect();
            assert!(left.is_empty(), "cgroups left: {left:?}");
        }
    }
}

/// Collects the log, and the phases reported.
#[derive(Default)]
pub struct Collect(pub Mutex<Vec<u8>>, pub Mutex<Vec<Phase>>);
impl LogSink for Collect {
    fn log(&self, _s: LogStream, d: &[u8]) {
        self.0.lock().unwrap().extend_from_slice(d);
    }
    fn phase(&self, p: Phase) {
        self.1.lock().unwrap().push(p);
    }
}

pub async fn file_of(e: &Env, node: &Node, path: &str) -> Vec<u8> {
    let mut node = node.clone();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        let Node::Directory { digest, .. } = node else {
            panic!("{path}: not a dir")
        };
        let d = e.dirs.get(&digest).await.unwrap().unwrap();
        node = d.get(&part.try_into().unwrap()).unwrap().clone();
    }
    let Node::File { digest, .. } = node else {
        panic!("{path}: not a file")
    };
    read_to_end(&*e.blobs, &digest).await.unwrap().unwrap()
}

/// Why a test of cgroup figures or limits cannot run here, if it cannot:
/// no writable cgroup filesystem.
pub fn no_cgroups() -> Option<&'static str> {
    let probe = "tob-probe";
    let made = tvix_oci_executor::cgroup::BuildCgroup::create(probe).is_some();
    for p in tvix_oci_executor::cgroup::parents() {
        tvix_oci_executor::cgroup::remove_cgroup(&p.join(probe));
    }
    (!made).then_some("no writable cgroup filesystem")
}

/// A store around `inner` that counts its blob writes and makes them
/// misbehave as `fault` says.
pub fn counting_blobs(inner: Arc<dyn BlobService>, fault: Fault) -> Arc<FaultyBlobs> {
    FaultyBlobs::new(inner).writes(fault).shared()
}
