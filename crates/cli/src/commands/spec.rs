//! `tvix-oci-build spec REQUEST`: the OCI `config.json` a request would run
//! with (nothing is mounted or run; read-only paths shown as a root
//! executor binds them, not checked against an allow-list).

use std::path::Path;

use crate::exit::{HOST, INVALID, exit};

pub fn spec(request: &Path, limits: &tvix_oci_spec::RequestLimits) -> anyhow::Result<()> {
    let req = crate::commands::read_request(request, limits)?;
    // The read-only paths as a root executor binds them (not checked
    // against an allow-list here: nothing runs).
    let ro_mounts = req
        .constraints()
        .available_ro_paths
        .iter()
        .enumerate()
        .map(|(n, p)| {
            let path = p.to_host();
            let device = std::fs::metadata(&path).is_ok_and(|m| {
                use std::os::unix::fs::FileTypeExt;
                m.file_type().is_char_device() || m.file_type().is_block_device()
            });
            tvix_oci_spec::RoMount {
                path,
                source: tvix_oci_spec::BundleLayout::ro_source(n),
                device,
            }
        })
        .collect();
    let opts = tvix_oci_spec::SpecOptions {
        sandbox_shell: tvix_oci_executor::ExecutorConfig::probed().sandbox_shell,
        ro_mounts,
        ..Default::default()
    };
    let spec = tvix_oci_spec::make_spec(&req, &opts).map_err(|e| exit(INVALID, e))?;
    println!(
        "{}",
        tvix_oci_spec::to_config_json(&spec).map_err(|e| exit(HOST, e))?
    );
    Ok(())
}
