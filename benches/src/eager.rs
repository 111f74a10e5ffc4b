//! The eager baseline the lazy builds are measured against: export every
//! input to disk, then run the same build on the copy.

use std::fmt::Display;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tvix_oci_castore::Node;
use tvix_oci_castore::blobservice::BlobService;
use tvix_oci_castore::directoryservice::DirectoryService;
use tvix_oci_castore::export::export_node;
use tvix_oci_spec::{BuildRequest, BundleLayout, SpecOptions};

/// What export-then-build took.
#[derive(Debug, Clone, Copy)]
pub struct Eager {
    /// Writing the bundle and exporting the inputs into it.
    pub export: Duration,
    /// `runc run` on it.
    pub run: Duration,
    /// Both.
    pub total: Duration,
}

/// Writes `req`'s bundle at `bundle`, exports `inputs` (name, node) from
/// the stores into its inputs dir, and runs it with runc. The bundle is
/// left for the caller (who may read the exported inputs) to remove.
pub fn export_then_run<N: Display>(
    rt: &tokio::runtime::Runtime,
    bundle: &Path,
    req: &BuildRequest,
    inputs: &[(N, Node)],
    blobs: &Arc<dyn BlobService>,
    dirs: &dyn DirectoryService,
) -> Result<Eager, Box<dyn std::error::Error>> {
    let layout = BundleLayout::new(bundle);
    let t = Instant::now();
    layout.write_skeleton(req, &SpecOptions::default())?;
    rt.block_on(async {
        for (name, node) in inputs {
            let dest = layout.inputs().join(name.to_string());
            export_node(blobs.clone(), dirs, node, &dest).await?;
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    let export = t.elapsed();
    let runc = tvix_oci_executor::host::find_runtime(Path::new("runc"))?;
    let t2 = Instant::now();
    let st = std::process::Command::new(&runc)
        .args(["run", "--bundle"])
        .arg(bundle)
        .arg(format!("bench-eager-{}", std::process::id()))
        .stdout(std::process::Stdio::null())
        .status()?;
    if !st.success() {
        return Err(format!(
            "runc run of the exported bundle {} failed: {st}",
            bundle.display()
        )
        .into());
    }
    Ok(Eager {
        export,
        run: t2.elapsed(),
        total: t.elapsed(),
    })
}
