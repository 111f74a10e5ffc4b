//! The executor's overhead around a trivial build (`true`): the whole build
//! (bundle, FUSE, overlay, runc, unmount, cleanup) next to `runc run` of the
//! same bundle alone, prepared by hand, in the same run.
//!
//! Run (root, /dev/fuse, runc, /bin/busybox): `cargo bench -p tvix-oci-benches --bench executor`

use std::path::Path;
use std::time::{Duration, Instant};

use tvix_oci_executor::runc::NoLogs;
use tvix_oci_executor::{Executor, ExecutorConfig};
use tvix_oci_spec::proto::{self, build_request as br};
use tvix_oci_spec::{BuildRequest, BundleLayout, SpecOptions};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const RUNS: usize = 20;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> Res<()> {
    if tvix_oci_testkit::lacks(&[
        tvix_oci_testkit::Need::Root,
        tvix_oci_testkit::Need::Fuse,
        tvix_oci_testkit::Need::Runc,
        tvix_oci_testkit::Need::Busybox,
    ]) {
        return Ok(());
    }
    let rt = tokio::runtime::Runtime::new()?;
    let tmp = tempfile::tempdir()?;
    let (blobs, dirs) = rt.block_on(tvix_oci_benches::local_stores(tmp.path()))?;
    let bb = rt.block_on(tvix_oci_benches::import_busybox(
        blobs.clone(),
        &*dirs,
        tmp.path(),
    ))?;
    let name = "0k9yxm9zqc2dgw2xxbyh3mnbs5ijjc7v-busybox";
    let req = BuildRequest::try_from(proto::BuildRequest {
        inputs: vec![bb.to_proto(&name.try_into()?)],
        command_args: vec![format!("/nix/store/{name}/bin/busybox"), "true".into()],
        working_dir: "build".into(),
        scratch_paths: vec!["build".into(), "nix/store".into()],
        inputs_dir: "nix/store".into(),
        constraints: Some(br::BuildConstraints {
            system: tvix_oci_executor::host::host_system(),
            ..Default::default()
        }),
        ..Default::default()
    })?;

    let exec = Executor::new(
        ExecutorConfig {
            bundle_root: tmp.path().join("bundles"),
            ..ExecutorConfig::probed()
        },
        blobs.clone(),
        dirs.clone(),
    );
    rt.block_on(exec.build(&req, &NoLogs))?; // warm up
    let (mut total, mut inner) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let t = Instant::now();
        let r = rt.block_on(exec.build(&req, &NoLogs))?;
        total.push(t.elapsed());
        inner.push(r.accounting.run_wall);
    }

    // runc alone: the same bundle, inputs copied in by hand, no FUSE/overlay.
    let runc = tvix_oci_executor::host::find_runtime(Path::new("runc"))?;
    let mut bare = Vec::new();
    for i in 0..RUNS {
        let dir = tmp.path().join(format!("bare-{i}"));
        let mut p = proto::BuildRequest::from(&req);
        p.scratch_paths = vec!["build".into()];
        let bare_req = BuildRequest::try_from(p)?;
        let layout = BundleLayout::new(&dir);
        layout.write_skeleton(&bare_req, &SpecOptions::default())?;
        std::fs::create_dir_all(layout.inputs().join(name).join("bin"))?;
        std::fs::copy(
            "/bin/busybox",
            layout.inputs().join(name).join("bin/busybox"),
        )?;
        let id = format!("bench-bare-{}-{i}", std::process::id());
        let t = Instant::now();
        let st = std::process::Command::new(&runc)
            .arg("run")
            .arg("--bundle")
            .arg(&dir)
            .arg(&id)
            .status()?;
        bare.push(t.elapsed());
        if !st.success() {
            return Err(format!("runc run failed: {st}").into());
        }
        std::fs::remove_dir_all(&dir)?;
    }
    let (t, r, b) = (median(total), median(inner), median(bare));
    println!("| measure ({RUNS} runs, median) | time |");
    println!("| --- | --- |");
    println!(
        "| whole build of `true` through the executor | {:.1} ms |",
        t.as_secs_f64() * 1e3
    );
    println!("| of which `runc run` | {:.1} ms |", r.as_secs_f64() * 1e3);
    println!(
        "| executor's own share (bundle, FUSE, overlay, checks, cleanup) | {:.1} ms |",
        (t - r).as_secs_f64() * 1e3
    );
    println!(
        "| `runc run` of a hand-made bundle, no FUSE/overlay | {:.1} ms |",
        b.as_secs_f64() * 1e3
    );
    Ok(())
}
