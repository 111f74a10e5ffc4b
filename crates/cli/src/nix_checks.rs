//! Nix's checks after a build, made by `build` (tvix and snix leave them
//! out): no reference cycle between the outputs, a fixed output's hash
//! against its declaration and no references, and the reference
//! constraints (`allowed*`, `disallowed*`, `outputChecks`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::Context;
use tvix_oci_castore::Node;
use tvix_oci_castore::blobservice::BlobService;
use tvix_oci_castore::directoryservice::DirectoryService;
use tvix_oci_executor::BuildResult;
use tvix_oci_executor::nar::{NarSink, NarWriter};
use tvix_oci_executor::nar_node::write_node;
use tvix_oci_nix::Derivation;
use tvix_oci_nix::checks;
use tvix_oci_nix::fixed::{Algo, Found, Hasher, check, check_no_references, needs_flat};
use tvix_oci_nix::request::NixRequest;
use tvix_oci_nix::result::NixOutput;

use crate::commands::Prepared;
use crate::exit::{BUILD_FAILED, HOST, INVALID, exit};

/// A fixed output's hash against its declaration, and no references
/// (Nix's checks): the build's fault when either fails.
async fn check_fixed(
    drv: &Derivation,
    req: &NixRequest,
    r: &BuildResult,
    outputs: &BTreeMap<String, NixOutput>,
    blobs: &dyn BlobService,
    dirs: &dyn DirectoryService,
) -> anyhow::Result<()> {
    let (Some(fo), Some((_, path)), Some(info), Some((_, node))) = (
        drv.fixed_output(),
        req.outputs.first(),
        r.outputs.first(),
        r.build.outputs.first(),
    ) else {
        return Ok(());
    };
    let (flat, algo) = needs_flat(&fo, path).map_err(|e| exit(INVALID, e))?;
    let found = if flat {
        match node {
            Node::File {
                digest,
                executable: false,
                ..
            } => Found::Flat(Some(blob_digest(blobs, digest, algo).await?)),
            _ => Found::Flat(None),
        }
    } else if algo == Algo::Sha256 {
        Found::Nar(info.nar_sha256.to_vec())
    } else {
        Found::Nar(nar_digest(node, algo, blobs, dirs).await?)
    };
    check(&fo, path, found).map_err(|e| exit(BUILD_FAILED, e))?;
    let refs = outputs
        .get("out")
        .map(|o| o.references.as_slice())
        .unwrap_or_default();
    check_no_references(path, refs).map_err(|e| exit(BUILD_FAILED, e))
}

/// Nix's checks after a build: no cycle between the outputs, the fixed
/// output's hash, the reference constraints. Requisites of the inputs the
/// outputs refer to come from the local Nix store, and only where a
/// `…Requisites` constraint needs them.
pub async fn check_outputs(
    drv_path: &Path,
    p: &Prepared,
    r: &BuildResult,
    outputs: &BTreeMap<String, NixOutput>,
    blobs: &dyn BlobService,
    dirs: &dyn DirectoryService,
) -> anyhow::Result<()> {
    let at = |e: checks::CheckError| exit(BUILD_FAILED, e);
    checks::check_cycles(&drv_path.display().to_string(), outputs).map_err(at)?;
    check_fixed(&p.drv, &p.req, r, outputs, blobs, dirs).await?;
    let mut requisites = BTreeMap::new();
    if checks::needs_requisites(&p.drv) {
        for f in checks::foreign_references(outputs) {
            let sp = tvix_oci_nix::StorePath::from_absolute(&f)
                .map_err(|e| exit(HOST, format!("reference {f}: {e}")))?;
            let cl = crate::nix_inputs::closure_with_hashes(&BTreeSet::from([sp]))?.paths;
            requisites.insert(f, cl.iter().map(|p| p.absolute()).collect());
        }
    }
    checks::check_references(&p.drv, outputs, &requisites).map_err(at)
}

/// The digest in `algo` of the NAR of the stored output `node`, streamed
/// out of the castore (ingestion hashed it in SHA-256 only).
async fn nar_digest(
    node: &Node,
    algo: Algo,
    blobs: &dyn BlobService,
    dirs: &dyn DirectoryService,
) -> anyhow::Result<Vec<u8>> {
    /// The NAR writer's sink for any of the algorithms Nix declares.
    struct Sink(Hasher);
    impl NarSink for Sink {
        fn update(&mut self, data: &[u8]) {
            self.0.update(data);
        }
    }
    let mut nar = NarWriter::with_sink(Sink(algo.hasher()));
    write_node(&mut nar, node, blobs, dirs)
        .await
        .map_err(|e| exit(HOST, format!("hashing the NAR of the fixed output: {e}")))?;
    Ok(nar.into_sink().0.0.finish())
}

/// The digest of a stored blob in `algo`, streamed.
async fn blob_digest(
    blobs: &dyn BlobService,
    digest: &tvix_oci_castore::B3Digest,
    algo: Algo,
) -> anyhow::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut rd = blobs
        .open_read(digest)
        .await
        .with_context(|| format!("reading output blob {digest}"))?
        .ok_or_else(|| exit(HOST, format!("output blob {digest} is not in the store")))?;
    let mut h = algo.hasher();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = rd
            .read(&mut buf)
            .await
            .with_context(|| format!("reading output blob {digest}"))?;
        if n == 0 {
            return Ok(h.finish());
        }
        h.update(&buf[..n]);
    }
}
