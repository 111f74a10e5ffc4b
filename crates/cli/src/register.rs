//! `build --register`: the outputs of a build imported into the local Nix
//! store through Nix's own tools, so that Nix (`nix-store --query`,
//! later builds, the garbage collector) knows them as it knows its own
//! builds. Each output is written out as a tree, serialised by `nix-store
//! --dump` and framed as an export stream (`tvix_oci_nix::export`) for
//! `nix-store --import`, which hashes the NAR itself, takes the store
//! lock, writes the path and records its references and deriver. What
//! Nix then records as the NAR hash must be ours. A path Nix holds as
//! valid already is left as is.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use tvix_oci_castore::blobservice::BlobService;
use tvix_oci_castore::directoryservice::DirectoryService;
use tvix_oci_castore::export::export_node;
use tvix_oci_nix::StorePath;
use tvix_oci_nix::export::{path_header, path_trailer, stream_end};
use tvix_oci_nix::result::NixOutput;

use crate::commands::Built;
use crate::exit::{HOST, INVALID, exit};

/// What became of one output.
pub const IMPORTED: &str = "imported";
/// The output was valid in the Nix store already: left as is.
pub const ALREADY_VALID: &str = "already valid";

/// Imports the outputs of `built` (built from the `.drv` at `drv_path`,
/// recorded as their deriver when it is a store path) into the local Nix
/// store, each after the outputs it refers to; per output name,
/// [`IMPORTED`] or [`ALREADY_VALID`]. Fails (exit 3), naming the output,
/// when Nix refuses one or records another NAR hash than ours.
pub async fn register(
    drv_path: &Path,
    built: &Built,
    blobs: Arc<dyn BlobService>,
    dirs: &dyn DirectoryService,
) -> anyhow::Result<BTreeMap<String, &'static str>> {
    let deriver = drv_path
        .to_str()
        .and_then(|s| StorePath::from_absolute(s).ok());
    let all: Vec<String> = built.outputs.values().map(|o| o.path.clone()).collect();
    let invalid = invalid_paths(&all)?;
    let mut done = BTreeMap::new();
    for name in import_order(&built.outputs)? {
        let (Some(o), Some(node)) = (built.outputs.get(&name), built.nodes.get(&name)) else {
            return Err(exit(HOST, format!("output {name} was not built")));
        };
        if !invalid.contains(&o.path) {
            eprintln!("{} is valid in the Nix store already; left as is", o.path);
            done.insert(name, ALREADY_VALID);
            continue;
        }
        let at = |what: String| {
            exit(
                HOST,
                format!("registering output {name} ({}): {what}", o.path),
            )
        };
        let stage = tempfile::Builder::new()
            .prefix(".tvix-oci-register-")
            .tempdir()
            .map_err(|e| at(format!("cannot make a temporary directory: {e}")))?;
        let tree = stage.path().join("tree");
        export_node(blobs.clone(), dirs, node, &tree)
            .await
            .map_err(|e| at(e.to_string()))?;
        let out = o.clone();
        let der = deriver.clone();
        tokio::task::spawn_blocking(move || import(&tree, &out, der.as_ref()))
            .await
            .map_err(|e| at(e.to_string()))?
            .map_err(at)?;
        let theirs =
            crate::nix_paths::nar_hashes(&[parse(&o.path)?]).map_err(|e| at(e.to_string()))?;
        if theirs.first() != Some(&o.nar_hash) {
            // Not left valid with contents we did not mean.
            let removed = Command::new("nix-store")
                .args(["--delete", &o.path])
                .output()
                .is_ok_and(|out| out.status.success());
            return Err(at(format!(
                "Nix recorded NAR hash {}, we computed {}; {}",
                theirs.first().map_or("none", String::as_str),
                o.nar_hash,
                match removed {
                    true => "the path was deleted again",
                    false =>
                        "the path could not be deleted again: delete it with nix-store --delete",
                }
            )));
        }
        done.insert(name, IMPORTED);
    }
    Ok(done)
}

/// Refuses, before anything is built, a `.drv` that is not a valid path of
/// the local Nix store: only there did Nix compute its output paths, and
/// registering outputs under paths a hand-written `.drv` claims would
/// plant them in the host's store (where Nix would then trust them, e.g.
/// instead of substituting the real ones). Exit 2, naming the file.
pub fn check_drvs_valid(drvs: &[std::path::PathBuf]) -> anyhow::Result<()> {
    let mut paths = Vec::new();
    for d in drvs {
        let p = d.to_str().and_then(|s| StorePath::from_absolute(s).ok());
        match p {
            Some(p) => paths.push(p.absolute()),
            None => {
                return Err(exit(
                    INVALID,
                    format!(
                        "{}: --register and --build-inputs take derivations in the Nix store (as nix-instantiate writes them), whose output paths Nix computed",
                        d.display()
                    ),
                ));
            }
        }
    }
    if let Some(bad) = invalid_paths(&paths)?.into_iter().next() {
        return Err(exit(
            INVALID,
            format!(
                "{bad}: not a valid path of the Nix store; --register and --build-inputs take derivations Nix wrote (nix-instantiate), whose output paths Nix computed"
            ),
        ));
    }
    Ok(())
}

fn parse(p: &str) -> anyhow::Result<StorePath> {
    StorePath::from_absolute(p).map_err(|e| exit(HOST, format!("output path {p}: {e}")))
}

/// The output names, each after the outputs it refers to (Nix refuses a
/// reference to a path not valid yet).
fn import_order(outputs: &BTreeMap<String, NixOutput>) -> anyhow::Result<Vec<String>> {
    let by_path: BTreeMap<&str, &str> = outputs
        .iter()
        .map(|(n, o)| (o.path.as_str(), n.as_str()))
        .collect();
    let mut order: Vec<String> = Vec::new();
    let mut left: BTreeSet<&str> = outputs.keys().map(String::as_str).collect();
    while !left.is_empty() {
        let ready = left.iter().copied().find(|n| {
            outputs[*n]
                .references
                .iter()
                .all(|r| match by_path.get(r.as_str()) {
                    Some(m) => m == n || !left.contains(m),
                    None => true,
                })
        });
        let Some(n) = ready else {
            let names: Vec<&str> = left.into_iter().collect();
            return Err(exit(
                HOST,
                format!(
                    "outputs {} refer to each other in a cycle",
                    names.join(", ")
                ),
            ));
        };
        left.remove(n);
        order.push(n.to_owned());
    }
    Ok(order)
}

/// Which of `paths` the local Nix store does not hold as valid
/// (`nix-store --check-validity --print-invalid`).
pub fn invalid_paths(paths: &[String]) -> anyhow::Result<BTreeSet<String>> {
    if paths.is_empty() {
        return Ok(BTreeSet::new());
    }
    let out = Command::new("nix-store")
        .args(["--check-validity", "--print-invalid"])
        .args(paths)
        .output()
        .map_err(|e| exit(HOST, format!("cannot run nix-store --check-validity: {e}")))?;
    if !out.status.success() {
        return Err(exit(
            HOST,
            format!(
                "nix-store --check-validity failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

/// `nix-store --dump tree`, framed, into `nix-store --import`, as the
/// store path of `out` with its references and `deriver`. The error is
/// what went wrong, for the caller to name the output.
fn import(tree: &Path, out: &NixOutput, deriver: Option<&StorePath>) -> Result<(), String> {
    let path = StorePath::from_absolute(&out.path).map_err(|e| e.to_string())?;
    let refs = out
        .references
        .iter()
        .map(|r| StorePath::from_absolute(r))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("reference: {e}"))?;
    let mut dump = Command::new("nix-store")
        .arg("--dump")
        .arg(tree)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nix-store --dump: {e}"))?;
    let mut import = match Command::new("nix-store")
        .arg("--import")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            let _ = dump.kill();
            let _ = dump.wait();
            return Err(format!("cannot run nix-store --import: {e}"));
        }
    };
    let fed = match (dump.stdout.take(), import.stdin.take()) {
        (Some(mut nar), Some(mut to)) => {
            let copied = to
                .write_all(&path_header())
                .and_then(|()| std::io::copy(&mut nar, &mut to).map(drop));
            drop(nar);
            let dumped = dump.wait_with_output();
            match (copied, dumped) {
                // Only a whole NAR gets its trailer: otherwise the import
                // sees the stream end early and refuses it.
                (Ok(()), Ok(d)) if d.status.success() => to
                    .write_all(&path_trailer(&path, &refs, deriver))
                    .and_then(|()| to.write_all(&stream_end()))
                    .map_err(|e| format!("writing to nix-store --import: {e}")),
                (Ok(()), Ok(d)) => Err(format!(
                    "nix-store --dump failed ({}): {}",
                    d.status,
                    String::from_utf8_lossy(&d.stderr).trim()
                )),
                (Err(e), _) => Err(format!("feeding nix-store --import: {e}")),
                (_, Err(e)) => Err(format!("waiting for nix-store --dump: {e}")),
            }
        }
        _ => {
            let _ = dump.kill();
            let _ = dump.wait();
            Err("nix-store's pipes were not set up".to_owned())
        }
    };
    let imported = import
        .wait_with_output()
        .map_err(|e| format!("waiting for nix-store --import: {e}"))?;
    if !imported.status.success() {
        return Err(format!(
            "nix-store --import failed ({}): {}",
            imported.status,
            String::from_utf8_lossy(&imported.stderr).trim()
        ));
    }
    fed
}
