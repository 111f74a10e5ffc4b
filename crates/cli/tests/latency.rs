//! Benchmarks of the event stream, run by hand (ignored by default; see
//! BENCHMARKS.md): how long a log line takes from the server reading it
//! to a client over loopback receiving it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tvix_oci_castore::import::{ImportOptions, import_path};
use tvix_oci_castore::{open_blob_service, open_directory_service};
use tvix_oci_spec::proto::events::build_event::Event;
use tvix_oci_spec::proto::events::build_service_client::BuildServiceClient;
use tvix_oci_spec::proto::{self, build_request as br};

const LINES: usize = 50;

/// Seconds since the epoch of an RFC 3339 UTC timestamp with a fraction,
/// as the server's log starts its lines: `2026-12-03T19:44:15.617862Z`.
fn epoch(ts: &str) -> f64 {
    let n = |r: std::ops::Range<usize>| ts[r].parse::<i64>().unwrap();
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + n(11..13) * 3600 + n(14..16) * 60 + n(17..19);
    let frac: f64 = format!("0{}", ts[19..].trim_end_matches('Z'))
        .parse()
        .unwrap();
    secs as f64 + frac
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "a benchmark: run by hand, see BENCHMARKS.md"]
async fn first_log_line_latency_over_loopback() {
    tvix_oci_testkit::require!(root, fuse, runc, busybox);
    let tmp = tempfile::tempdir().unwrap();
    let log_path = tmp.path().join("serve.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let (mut child, url) = common::spawn_serve_with_log(
        &tmp.path().join("data"),
        &tmp.path().join("bundles"),
        &["-v"],
        log.into(),
    );
    let blobs = open_blob_service(&url).await.unwrap();
    let dirs = open_directory_service(&url).await.unwrap();
    let bb = common::busybox_tree(tmp.path());
    let busybox = import_path(blobs, &*dirs, &bb, &ImportOptions::default())
        .await
        .unwrap();
    let script = format!(
        "i=0; while [ $i -lt {LINES} ]; do echo tick $i; i=$((i+1)); \
         /nix/store/busybox/bin/busybox usleep 100000; done; echo > x"
    );
    let req = proto::BuildRequest {
        inputs: vec![busybox.to_proto(&"busybox".try_into().unwrap())],
        command_args: ["/nix/store/busybox/bin/busybox", "sh", "-c", &script]
            .map(String::from)
            .into(),
        working_dir: "build".into(),
        scratch_paths: vec!["build".into(), "nix/store".into()],
        inputs_dir: "nix/store".into(),
        outputs: vec!["build/x".into()],
        constraints: Some(br::BuildConstraints {
            system: tvix_oci_executor::host::host_system(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let http = url.replace("grpc+http://", "http://");
    let mut client = BuildServiceClient::connect(http).await.unwrap();
    let mut stream = client.build(req).await.unwrap().into_inner();
    let mut arrived = Vec::new();
    while let Some(e) = stream.message().await.unwrap() {
        if let Some(Event::Log(l)) = e.event {
            let at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
            arrived.push((String::from_utf8_lossy(&l.data).trim().to_owned(), at));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log_path).unwrap();
    let mut lat: Vec<Duration> = Vec::new();
    for (line, at) in &arrived {
        let read = text
            .lines()
            .find(|l| l.contains("build_log") && l.contains(&format!(": {line} ")))
            .unwrap_or_else(|| panic!("{line:?} not in the server log"));
        let server = epoch(read.split_whitespace().next().unwrap());
        lat.push(Duration::from_secs_f64(
            (at.as_secs_f64() - server).max(0.0),
        ));
    }
    assert_eq!(lat.len(), LINES);
    let first = lat[0];
    lat.sort();
    println!(
        "server read -> client received, {LINES} lines 100 ms apart: first {first:?}, \
         median {:?}, max {:?}",
        lat[LINES / 2],
        lat[LINES - 1]
    );
}
