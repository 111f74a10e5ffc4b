//! The real snix and tvix CLIs' build requests (`shared/peer-requests/`,
//! captured from their CLIs) through the real `serve`, answered as each
//! client reads the answer: tvix.build.v1 nodes named by the output path's
//! last component, snix.build.v1 anonymous entries, both in the request's
//! output order, with the needles Nix records as references. One serve and
//! one busybox upload for all fixtures.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{Serve as Server, assert_nothing_left, can_build, skip_or_fail};
use futures::StreamExt;
use prost::Message;
use serde_json::{Value, json};
use tvix_oci_castore::import::{ImportOptions, import_path};
use tvix_oci_castore::proto::node::Node as N;
use tvix_oci_castore::{B3Digest, Node, open_blob_service, open_directory_service};
use tvix_oci_spec::json::JsonBuildRequest;
use tvix_oci_spec::proto;

/// blake3 of the busybox the fixtures' tree holds (Debian's busybox-static
/// 1:1.35.0-4+deb12u1+b1).
const BUSYBOX_B3: &str = "76e44689a528bda69b49b5cbe87fecf7a3595e2934dcea7e13a64e6c70d6be6c";

/// The applets of the fixtures' busybox tree, each a symlink to `busybox`.
const APPLETS: [&str; 24] = [
    "cat", "chmod", "cp", "dd", "echo", "env", "false", "grep", "head", "id", "ip", "ln", "ls",
    "mkdir", "mkfifo", "mknod", "printf", "rm", "sed", "sh", "sleep", "touch", "true", "wc",
];

/// dep-a's output, an input of dep-b.
const DEP_A: &[u8] = b"from-a\n";

/// Whether the fixtures cannot run here, printing why: skipped where the
/// fixtures or the build facilities are absent; where /bin/busybox is not
/// the fixtures' (their digests depend on it), skipped outside CI only
/// (CI installs that busybox: [`skip_or_fail`]).
fn cannot_run(dir: &Path) -> bool {
    let skip = |why: String| {
        println!("SKIPPED: {why}");
        true
    };
    if !dir.join("manifest.json").exists() {
        return skip(format!("{} is absent", dir.display()));
    }
    if let Some(why) = can_build() {
        return skip(why);
    }
    let why = match std::fs::read("/bin/busybox") {
        Ok(bb) if B3Digest::of(&bb).to_hex() == BUSYBOX_B3 => return false,
        Ok(bb) => format!(
            "/bin/busybox has blake3 {}, not the fixtures' {BUSYBOX_B3} (another busybox build)",
            B3Digest::of(&bb).to_hex()
        ),
        Err(e) => format!("/bin/busybox cannot be read: {e}"),
    };
    skip_or_fail(&why);
    true
}

/// The fixtures' busybox tree: bin/busybox and its 24 applet symlinks.
fn busybox_tree(tmp: &Path) -> PathBuf {
    let t = tmp.join("busybox-tree");
    let bin = t.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(bin.join("busybox"), std::fs::Permissions::from_mode(0o755)).unwrap();
    for a in APPLETS {
        std::os::unix::fs::symlink("busybox", bin.join(a)).unwrap();
    }
    t
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A wire node as the manifest describes one (`our_node_today`), and its
/// name.
fn describe(n: &tvix_oci_castore::proto::Node) -> Result<(Vec<u8>, Value), String> {
    match n.node.as_ref() {
        Some(N::Directory(d)) => Ok((
            d.name.to_vec(),
            json!({"kind": "directory", "digest": hex(&d.digest), "size": d.size}),
        )),
        Some(N::File(f)) => Ok((
            f.name.to_vec(),
            json!({"kind": "file", "digest": hex(&f.digest), "size": f.size, "executable": f.executable}),
        )),
        Some(N::Symlink(s)) => Ok((
            s.name.to_vec(),
            json!({"kind": "symlink", "target": String::from_utf8_lossy(&s.target)}),
        )),
        None => Err("an output node with nothing set".into()),
    }
}

/// The manifest's node without what the wire does not carry.
fn expected_node(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("contents");
    }
    v
}

/// What one fixture needs to be checked.
struct Ctx<'a> {
    dir: &'a Path,
    http: String,
    /// Every output node the manifest has, by output path (snix-two-crossed
    /// has none of its own: serve refused it at capture time; its outputs
    /// are tvix-two-crossed's).
    nodes: &'a BTreeMap<String, Value>,
    blobs: &'a dyn tvix_oci_castore::blobservice::BlobService,
    dirs: &'a dyn tvix_oci_castore::directoryservice::DirectoryService,
}

/// The request of fixture `f`, decoded from its `.pb`, checked against its
/// `.request.json`.
fn request(ctx: &Ctx<'_>, f: &Value) -> Result<proto::BuildRequest, String> {
    let pb = std::fs::read(ctx.dir.join(f["request"].as_str().unwrap())).unwrap();
    let req = proto::BuildRequest::decode(&pb[..]).map_err(|e| format!("decoding the .pb: {e}"))?;
    let json = std::fs::read_to_string(ctx.dir.join(f["request_json"].as_str().unwrap())).unwrap();
    let from_json = serde_json::from_str::<JsonBuildRequest>(&json)
        .map_err(|e| format!("reading the .request.json: {e}"))?
        .to_proto()
        .map_err(|e| format!("the .request.json: {e}"))?;
    if from_json != req {
        return Err("the .request.json is not the .pb's request".into());
    }
    if from_json.encode_to_vec() != pb {
        return Err("the .request.json does not encode to the .pb's bytes".into());
    }
    Ok(req)
}

/// The answer to fixture `f`, as its client reads it: per output, the
/// entry's name, node and needles.
async fn answer(
    ctx: &Ctx<'_>,
    f: &Value,
    req: proto::BuildRequest,
) -> Result<Vec<(Vec<u8>, Value, Vec<u64>)>, tonic::Status> {
    let mut outs = Vec::new();
    if f["peer"] == "tvix" {
        let mut c = proto::build_service_client::BuildServiceClient::connect(ctx.http.clone())
            .await
            .unwrap();
        let build = c.do_build(req.clone()).await?.into_inner();
        if build.build_request.as_ref() != Some(&req) {
            return Err(tonic::Status::internal("build_request is not the request"));
        }
        if build.outputs.len() != build.outputs_needles.len() {
            return Err(tonic::Status::internal(
                "outputs and outputs_needles differ in length",
            ));
        }
        for (n, needles) in build.outputs.iter().zip(build.outputs_needles) {
            let (name, node) = describe(n).map_err(tonic::Status::internal)?;
            outs.push((name, node, needles.needles));
        }
    } else {
        let mut c =
            proto::snix::build_service_client::BuildServiceClient::connect(ctx.http.clone())
                .await
                .unwrap();
        let resp = c.do_build(req).await?.into_inner();
        for o in resp.outputs {
            let n = o
                .output
                .ok_or_else(|| tonic::Status::internal("an output without its entry"))?;
            let (name, node) = describe(&n).map_err(tonic::Status::internal)?;
            outs.push((name, node, o.needles));
        }
    }
    Ok(outs)
}

/// Checks fixture `f` end to end; what is wrong, if anything.
async fn check(ctx: &Ctx<'_>, f: &Value) -> Result<(), String> {
    let req = request(ctx, f)?;
    let answer = answer(ctx, f, req).await;
    let expected = f["expected"].as_str().unwrap();
    if expected != "success" {
        let s = match answer {
            Ok(a) => return Err(format!("expected an error ({expected}), got {a:?}")),
            Err(s) => s,
        };
        let path = f["outputs"][0]["path"].as_str().unwrap();
        let says = match f["case"].as_str().unwrap() {
            "fail" => vec![
                "exit code 3".to_owned(),
                "this-goes-to-stdout".into(),
                "oops-on-stderr".into(),
            ],
            "no-output" => vec![format!("did not produce output {path}")],
            other => return Err(format!("no rule for failing case {other}")),
        };
        if s.code() != tonic::Code::Aborted || !says.iter().all(|w| s.message().contains(w)) {
            return Err(format!("expected ABORTED saying {says:?}, got {s:?}"));
        }
        return Ok(());
    }
    let got = answer.map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
    let want = f["outputs"].as_array().unwrap();
    if got.len() != want.len() {
        return Err(format!("{} outputs, expected {}", got.len(), want.len()));
    }
    for (k, ((name, node, needles), w)) in got.iter().zip(want).enumerate() {
        let path = w["path"].as_str().unwrap();
        let name_expected = w["entry_name_expected"].as_str().unwrap();
        // tvix: the output path's last component; snix: anonymous.
        let last = path.rsplit('/').next().unwrap();
        let rule = if f["peer"] == "tvix" { last } else { "" };
        if name_expected != rule || name.as_slice() != name_expected.as_bytes() {
            return Err(format!(
                "outputs[{k}] ({path}) is named {:?}, expected {name_expected:?}",
                String::from_utf8_lossy(name)
            ));
        }
        let want_node = w
            .get("our_node_today")
            .or_else(|| ctx.nodes.get(path))
            .map(expected_node)
            .ok_or_else(|| format!("the manifest has no node for {path}"))?;
        if *node != want_node {
            return Err(format!(
                "outputs[{k}] ({path}) is {node}, expected {want_node}"
            ));
        }
        let nix: Vec<u64> = serde_json::from_value(w["nix_needles"].clone()).unwrap();
        if *needles != nix {
            return Err(format!(
                "outputs[{k}] ({path}) has needles {needles:?}, Nix records {nix:?}"
            ));
        }
        // The client reads the output back from the castore.
        let digest = |v: &Value| v["digest"].as_str().unwrap().parse::<B3Digest>().unwrap();
        let stored = match node["kind"].as_str() {
            Some("file") => ctx.blobs.has(&digest(node)).await.unwrap(),
            Some("directory") => ctx.dirs.get(&digest(node)).await.unwrap().is_some(),
            _ => true,
        };
        if !stored {
            return Err(format!("outputs[{k}] ({path}) is not in the castore"));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn peer_requests_are_answered_as_their_clients_expect() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/peer-requests");
    if cannot_run(&dir) {
        return;
    }
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let fixtures = manifest["fixtures"].as_array().unwrap();
    let nodes: BTreeMap<String, Value> = fixtures
        .iter()
        .flat_map(|f| f["outputs"].as_array().unwrap())
        .filter_map(|o| {
            Some((
                o["path"].as_str()?.to_owned(),
                o.get("our_node_today")?.clone(),
            ))
        })
        .collect();

    let tmp = tempfile::tempdir().unwrap();
    let bundles = tmp.path().join("bundles");
    let server = Server::start(&tmp.path().join("data"), &bundles, &[]);
    let blobs = open_blob_service(&server.url).await.unwrap();
    let dirs = open_directory_service(&server.url).await.unwrap();

    // The inputs, uploaded as the clients uploaded them.
    let tree = busybox_tree(tmp.path());
    let bb = import_path(blobs.clone(), &*dirs, &tree, &ImportOptions::default())
        .await
        .unwrap();
    let want = &manifest["busybox"]["directory"];
    let Node::Directory { digest, size } = bb else {
        panic!("the busybox tree imported as {bb:?}")
    };
    assert_eq!(
        (digest.to_hex().as_str(), size),
        (
            want["digest"].as_str().unwrap(),
            want["size"].as_u64().unwrap()
        ),
        "the busybox tree (with /bin/busybox of the right blake3)"
    );
    assert_eq!(
        blobs.put(DEP_A.into()).await.unwrap().to_hex(),
        "d53b09ba62419fcfe1c590c4c0ba5a21d3a792545f6e5fffd97eb99c3f0a80c2"
    );

    let ctx = Ctx {
        dir: &dir,
        http: server.http(),
        nodes: &nodes,
        blobs: &*blobs,
        dirs: &*dirs,
    };
    // A few builds at a time: the fixtures are independent.
    let outcomes: Vec<(String, Result<(), String>)> = futures::stream::iter(fixtures)
        .map(|f| {
            let ctx = &ctx;
            async move {
                (
                    f["fixture"].as_str().unwrap().to_owned(),
                    check(ctx, f).await,
                )
            }
        })
        .buffered(3)
        .collect()
        .await;
    let mut table = String::new();
    for (name, r) in &outcomes {
        match r {
            Ok(()) => table.push_str(&format!("{name}: pass\n")),
            Err(e) => table.push_str(&format!("{name}: FAIL: {e}\n")),
        }
    }
    println!("{table}");
    assert_eq!(outcomes.len(), 32, "every fixture of the manifest ran");
    assert!(outcomes.iter().all(|(_, r)| r.is_ok()), "{table}");
    assert_nothing_left(&bundles);
    drop(server);
}
