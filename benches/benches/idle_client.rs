//! A build writing 100 MiB of log, side by side: run locally (`run`, its
//! log to /dev/null), on `serve` with a client of the event stream
//! reading everything, and on `serve` with a client that reads nothing
//! for 30 s (its first event aside) while a watcher of the page
//! (`--http`, server-sent events) reads nothing either. The bar: the idle
//! clients do not slow the build — its time in the container (`run_wall`,
//! the accounting of the `Completed` event and of the local JSON) is the
//! same in all three.
//!
//! Run (root, /dev/fuse, runc, /bin/busybox):
//! `cargo bench -p tvix-oci-benches --bench idle_client` (`QUICK=1`:
//! 4 MiB of log, clients idle 2 s, one run each).

// A benchmark fixture that fails should stop the run loudly.
#![allow(clippy::expect_used)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tvix_oci_benches::remote::{Served, cli_binary, stores_at};
use tvix_oci_spec::proto::events::build_event::Event;
use tvix_oci_spec::proto::events::build_service_client::BuildServiceClient;

/// The build: `bytes` of log in lines of 62 bytes, then its output.
fn script(bytes: u64) -> String {
    format!(
        "/nix/store/busybox/bin/busybox yes 'a line of build log, sixty-two bytes long with its newline....' \
         | /nix/store/busybox/bin/busybox head -c {bytes}; echo done > x"
    )
}

/// Milliseconds of a build: its wall time and its time in the container.
#[derive(Clone, Copy, Debug)]
struct Times {
    wall: f64,
    run: f64,
}

fn main() {
    if tvix_oci_testkit::lacks(&[
        tvix_oci_testkit::Need::Root,
        tvix_oci_testkit::Need::Fuse,
        tvix_oci_testkit::Need::Runc,
        tvix_oci_testkit::Need::Busybox,
    ]) {
        return;
    }
    let quick = std::env::var_os("QUICK").is_some();
    let (bytes, idle, runs) = match quick {
        true => (4u64 << 20, Duration::from_secs(2), 1),
        false => (100 << 20, Duration::from_secs(30), 3),
    };
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let tmp = tvix_oci_benches::bench_tempdir().expect("a temp dir");
    let bin = cli_binary().expect("the tvix-oci-build binary");
    let served = Served::start_with(&bin, &tmp.path().join("served"), &["--http", "127.0.0.1:0"])
        .expect("serve");
    let bb_tree = tmp.path().join("bb");
    let busybox = rt.block_on(async {
        let (blobs, dirs) = stores_at(&served.url()).await.expect("the served store");
        tvix_oci_benches::import_busybox(blobs, &*dirs, tmp.path())
            .await
            .expect("busybox uploaded")
    });
    let req = tvix_oci_benches::busybox_sh_request(
        vec![busybox.to_proto(&"busybox".try_into().expect("a name"))],
        script(bytes),
        &[],
        &["build/x"],
    )
    .expect("a request");
    let req = tvix_oci_spec::proto::BuildRequest::from(&req);

    let mut local = Vec::new();
    let mut reading = Vec::new();
    let mut idle_runs = Vec::new();
    for _ in 0..runs {
        local.push(local_run(&bin, tmp.path(), &bb_tree, bytes));
        reading.push(rt.block_on(remote_run(&served, req.clone(), Duration::ZERO)));
        idle_runs.push(rt.block_on(remote_run(&served, req.clone(), idle)));
    }
    let mib = bytes >> 20;
    println!(
        "| {mib} MiB of log, {runs} runs | build wall (median) | in the container (median) | log lines received / dropped |"
    );
    println!("| --- | --- | --- | --- |");
    let row = |name: &str, t: &[(Times, String)]| {
        let med = |f: fn(&Times) -> f64| {
            let mut v: Vec<f64> = t.iter().map(|(x, _)| f(x)).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let lines: Vec<&str> = t.iter().map(|(_, l)| l.as_str()).collect();
        println!(
            "| {name} | {:.0} ms | {:.0} ms | {} |",
            med(|x| x.wall),
            med(|x| x.run),
            lines.join("; ")
        );
    };
    row("local `run`, log to /dev/null", &local);
    row("`serve`, client reading everything", &reading);
    let name = format!(
        "`serve`, client and page watcher reading nothing for {} s",
        idle.as_secs()
    );
    row(&name, &idle_runs);
}

/// `run` of the build here, its log to /dev/null: its times from the JSON.
fn local_run(bin: &Path, tmp: &Path, bb_tree: &Path, bytes: u64) -> (Times, String) {
    let out = Command::new(bin)
        .env("XDG_DATA_HOME", tmp.join("local"))
        .args(["run", "--input"])
        .arg(format!("busybox={}", bb_tree.display()))
        .args(["--output", "build/x", "--bundle-root"])
        .arg(tmp.join("local-bundles"))
        .args([
            "--",
            "/nix/store/busybox/bin/busybox",
            "sh",
            "-c",
            &script(bytes),
        ])
        .stderr(Stdio::null())
        .output()
        .expect("run");
    assert!(out.status.success(), "the local run failed: {}", out.status);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("run's JSON");
    let a = &json[0]["accounting"];
    let a = if a.is_null() { &json["accounting"] } else { a };
    let ms = |k: &str| a[k].as_f64().expect("an accounting figure");
    let times = Times {
        wall: ms("wall_ms"),
        run: ms("run_wall_ms"),
    };
    (times, "–".into())
}

/// The build on `served` through the event stream, its client taking the
/// first event then nothing for `idle` (and, for that long, a watcher of
/// the page's event stream reading nothing), then every event to the end.
async fn remote_run(
    served: &Served,
    req: tvix_oci_spec::proto::BuildRequest,
    idle: Duration,
) -> (Times, String) {
    let mut client = BuildServiceClient::connect(format!("http://{}", served.addr()))
        .await
        .expect("a client");
    let mut stream = client.build(req).await.expect("Build").into_inner();
    stream.message().await.expect("an event").expect("Started");
    let watcher = match idle.is_zero() {
        true => None,
        false => Some(idle_watcher(served)),
    };
    let t = Instant::now();
    tokio::time::sleep(idle).await;
    let (mut lines, mut dropped, mut times) = (0u64, 0u64, None);
    while let Some(e) = stream.message().await.expect("an event") {
        match e.event {
            Some(Event::Log(_)) => lines += 1,
            Some(Event::Completed(c)) => {
                dropped = c.log_lines_dropped;
                let a = c.accounting.expect("accounting");
                times = Some(Times {
                    wall: a.wall_ns as f64 / 1e6,
                    run: a.run_wall_ns as f64 / 1e6,
                });
            }
            Some(Event::Failed(f)) => panic!("the build failed: {}", f.message),
            _ => {}
        }
    }
    drop(watcher);
    let times = times.expect("a Completed event");
    if !idle.is_zero() {
        // The build ended long before its idle client read anything.
        assert!(times.wall < t.elapsed().as_secs_f64() * 1e3);
    }
    (times, format!("{lines} / {dropped}"))
}

/// A watcher of the running build's server-sent events (the newest
/// build: this program's only one) that reads nothing.
fn idle_watcher(served: &Served) -> std::net::TcpStream {
    let web = served.web().expect("serve --http");
    let mut s = std::net::TcpStream::connect(web).expect("the page");
    let list = http_get(web, "/api/builds");
    // Running still, or (a small build) just ended.
    let newest = match list["running"][0].is_null() {
        true => &list["recent"][0],
        false => &list["running"][0],
    };
    let id = newest["id"].as_u64().expect("a build");
    write!(
        s,
        "GET /api/builds/{id}/events HTTP/1.1\r\nHost: {web}\r\n\r\n"
    )
    .expect("GET");
    s
}

/// The JSON of `path` on the page at `web`.
fn http_get(web: std::net::SocketAddr, path: &str) -> serde_json::Value {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(web).expect("the page");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {web}\r\nConnection: close\r\n\r\n"
    )
    .expect("GET");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("an answer");
    let json = body.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(json).expect("JSON")
}
