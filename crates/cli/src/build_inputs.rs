//! `build --build-inputs`: input derivations whose outputs the local Nix
//! store lacks are built first, by us, in dependency order, and
//! registered (`--register`), so that the closures of later builds find
//! them in the Nix store like any other input.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::json;
use tvix_oci_nix::{Derivation, StorePath};

use crate::commands::{Builder, read_drv};
use crate::register::{invalid_paths, register};

/// The input derivations of `drv` to build before it: those with a used
/// output the Nix store does not hold as valid, each after the ones it
/// needs built in turn (depth first, so in dependency order), each once.
/// An input whose `.drv` cannot be read is an error naming it (exit 2).
pub fn plan(drv: &Derivation) -> anyhow::Result<Vec<PathBuf>> {
    let mut seen = BTreeSet::new();
    let mut order = Vec::new();
    visit(drv, &mut seen, &mut order)?;
    Ok(order)
}

fn visit(
    drv: &Derivation,
    seen: &mut BTreeSet<StorePath>,
    order: &mut Vec<PathBuf>,
) -> anyhow::Result<()> {
    for (p, outs) in &drv.input_derivations {
        if !seen.insert(p.clone()) {
            continue;
        }
        let file = PathBuf::from(p.absolute());
        let input = read_drv(&file)?;
        let used: Vec<String> = outs
            .iter()
            .filter_map(|o| input.outputs.get(o).and_then(|x| x.path.as_ref()))
            .map(StorePath::absolute)
            .collect();
        if invalid_paths(&used)?.is_empty() {
            continue;
        }
        visit(&input, seen, order)?;
        order.push(file);
    }
    Ok(())
}

/// Builds and registers, in order, the input derivations of the `.drv` at
/// `path` whose outputs are missing; per input built, its line of the
/// JSON result. The first failure stops it, naming the input derivation
/// (with the exit code of its failure).
pub async fn build_missing(b: &Builder<'_>, path: &Path) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut done = Vec::new();
    for input in plan(&read_drv(path)?)? {
        let what = || format!("input derivation {}", input.display());
        eprintln!(
            "building input derivation {} first: outputs of it are missing from the Nix store",
            input.display()
        );
        let p = b.prepare(&input).await.with_context(what)?;
        let built = b.run(&input, &p).await.with_context(what)?;
        let registered = register(&input, &built, b.blobs.clone(), &*b.dirs)
            .await
            .with_context(what)?;
        done.push(json!({
            "drvPath": input.display().to_string(),
            "outputs": built.outputs,
            "registered": registered,
        }));
    }
    Ok(done)
}
