//! Writes the bundle skeleton for a JSON request: `write_bundle REQUEST.json BUNDLE_DIR`.
//! A quick way to look at (or hand-run with runc) what the spec crate makes.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(req), Some(dir)) = (args.next(), args.next()) else {
        return Err("usage: write_bundle REQUEST.json BUNDLE_DIR".into());
    };
    let req = tvix_oci_spec::BuildRequest::from_json(&std::fs::read_to_string(req)?)?;
    let opts = tvix_oci_spec::SpecOptions {
        sandbox_shell: Some("/bin/busybox".into()),
        ..Default::default()
    };
    tvix_oci_spec::BundleLayout::new(dir).write_skeleton(&req, &opts)?;
    Ok(())
}
