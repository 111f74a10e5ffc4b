//! `tvix_oci_build.v1.BuildService/Build` on a real `serve`: the events of
//! a build in order, a failing build's `Failed`, a refused request, a
//! client that reads nothing while the build writes a lot (it is not
//! slowed; lines are dropped and counted), and a dropped stream (the build
//! is cancelled and nothing is left on the server).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Serve as Server, busybox_request as request, cgroups_of, leftovers};
use tvix_oci_executor::wire::result_of;
use tvix_oci_spec::proto;
use tvix_oci_spec::proto::events::build_service_client::BuildServiceClient;
use tvix_oci_spec::proto::events::{BuildEvent, build_event::Event, failed::Fault};

/// Every event of a build, to the stream's end.
async fn all_events(
    client: &mut BuildServiceClient<tonic::transport::Channel>,
    req: proto::BuildRequest,
) -> Vec<Event> {
    let mut stream = client.build(req).await.unwrap().into_inner();
    let mut events = Vec::new();
    while let Some(BuildEvent { event }) = stream.message().await.unwrap() {
        events.push(event.unwrap());
    }
    events
}

/// The events' kinds, progress left out and runs of log lines as one.
fn kinds(events: &[Event]) -> Vec<String> {
    let mut kinds: Vec<String> = Vec::new();
    for e in events {
        let k = match e {
            Event::Started(_) => "Started".to_owned(),
            Event::Phase(p) => format!("{:?}", p.phase()),
            Event::Log(_) => "Log".to_owned(),
            Event::Progress(_) => continue,
            Event::LogsDropped(_) => "LogsDropped".to_owned(),
            Event::RefscanResult(r) => format!("Refscan{}", r.output_index),
            Event::Completed(_) => "Completed".to_owned(),
            Event::Failed(_) => "Failed".to_owned(),
        };
        if k != "Log" || kinds.last().map(String::as_str) != Some("Log") {
            kinds.push(k);
        }
    }
    kinds
}

fn log_text(events: &[Event]) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Log(l) => Some(String::from_utf8_lossy(&l.data).into_owned()),
            _ => None,
        })
        .collect()
}

impl Server {
    /// A client of its event stream.
    async fn events(&self) -> BuildServiceClient<tonic::transport::Channel> {
        BuildServiceClient::connect(self.http()).await.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_build_streams_its_events_in_order() {
    tvix_oci_testkit::require!(root, fuse, runc, busybox);
    let tmp = tempfile::tempdir().unwrap();
    let bundles = tmp.path().join("bundles");
    let server = Server::start(&tmp.path().join("data"), &bundles, &[]);
    let busybox = server.upload_busybox(tmp.path()).await;
    let mut client = server.events().await;

    let req = request(
        &busybox,
        &["build/hello", "nix/store/out"],
        "for i in 1 2 3 4 5; do echo line $i; done; mkdir /nix/store/out; \
         echo made with /nix/store/busybox > /nix/store/out/msg; echo hi > hello",
    );
    let events = all_events(&mut client, req.clone()).await;
    assert_eq!(
        kinds(&events),
        [
            "Started",
            "Mounting",
            "Running",
            "Log",
            "Ingesting",
            "Refscan0",
            "Refscan1",
            "Completed"
        ]
    );
    let Event::Started(s) = &events[0] else {
        unreachable!()
    };
    assert!(s.build_id.starts_with("tob-"), "{s:?}");
    // A line each, in order.
    let lines: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Log(l) => Some(String::from_utf8_lossy(&l.data).into_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(
        lines,
        ["line 1\n", "line 2\n", "line 3\n", "line 4\n", "line 5\n"]
    );
    let refscans: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::RefscanResult(r) => Some(r.found_needles.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(refscans, [vec![], vec![0]]);
    let Some(Event::Completed(done)) = events.last().cloned() else {
        unreachable!()
    };
    assert_eq!(done.log_lines_dropped, 0);
    // The same Build the unary DoBuild answers (outputs are content
    // addressed).
    let unary = proto::build_service_client::BuildServiceClient::connect(server.http())
        .await
        .unwrap()
        .do_build(req)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.build.as_ref(), Some(&unary));
    let result = result_of(done).unwrap();
    let names: Vec<_> = result
        .build
        .outputs
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    assert_eq!(names, ["hello", "out"]);
    assert_eq!(result.outputs[0].nar_size, 120, "a NAR of a 3-byte file");
    let found_in: Vec<_> = result.outputs[1].needle_paths.iter().collect();
    assert_eq!(found_in, [(&0, &Path::new("msg").to_path_buf())]);
    assert!(result.accounting.wall > Duration::ZERO);
    common::assert_nothing_left(&bundles);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_build_ends_with_failed_and_a_refused_request_sends_nothing() {
    tvix_oci_testkit::require!(root, fuse, runc, busybox);
    let tmp = tempfile::tempdir().unwrap();
    let bundles = tmp.path().join("bundles");
    let server = Server::start(&tmp.path().join("data"), &bundles, &[]);
    let busybox = server.upload_busybox(tmp.path()).await;
    let mut client = server.events().await;

    // A failing build: Failed, with its exit code and whose fault it is,
    // its log before it.
    let fail = request(&busybox, &["build/x"], "echo broken; exit 7");
    let events = all_events(&mut client, fail).await;
    assert_eq!(
        kinds(&events),
        ["Started", "Mounting", "Running", "Log", "Failed"]
    );
    assert_eq!(log_text(&events), "broken\n");
    let Some(Event::Failed(f)) = events.last() else {
        unreachable!()
    };
    assert_eq!(f.exit_code, Some(7), "{f:?}");
    assert_eq!(f.signal, None, "{f:?}");
    assert_eq!(f.fault(), Fault::Build, "{f:?}");
    assert_eq!(f.status_code, tonic::Code::Aborted as i32, "{f:?}");
    assert!(f.message.contains("exit code 7"), "{f:?}");

    // A missing output is the build's fault too, without an exit code.
    let missing = request(&busybox, &["build/never"], "true");
    let events = all_events(&mut client, missing).await;
    let Some(Event::Failed(f)) = events.last() else {
        panic!("{events:?}")
    };
    assert_eq!((f.exit_code, f.fault()), (None, Fault::Build), "{f:?}");
    assert!(f.message.contains("build/never"), "{f:?}");

    // A refused request: INVALID_ARGUMENT, as DoBuild, before any event.
    let mut bad = request(&busybox, &["build/x"], "true");
    bad.working_dir = "../escape".into();
    let err = client.build(bad).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("working_dir"), "{}", err.message());

    common::assert_nothing_left(&bundles);
}

/// A client that reads nothing for a while does not hold the build up: it
/// runs to its end meanwhile, the lines past the server's buffer dropped
/// and counted; the lines that come are in order.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_reading_nothing_does_not_slow_the_build() {
    tvix_oci_testkit::require!(root, fuse, runc, busybox);
    let tmp = tempfile::tempdir().unwrap();
    let bundles = tmp.path().join("bundles");
    let server = Server::start(&tmp.path().join("data"), &bundles, &[]);
    let busybox = server.upload_busybox(tmp.path()).await;
    let mut client = server.events().await;
    const LINES: u64 = 300_000;
    let req = request(
        &busybox,
        &["build/x"],
        &format!("/nix/store/busybox/bin/busybox seq 1 {LINES}; echo done > x"),
    );
    let mut stream = client.build(req).await.unwrap().into_inner();
    let idle = Duration::from_secs(6);
    tokio::time::sleep(idle).await;
    let mut events = Vec::new();
    while let Some(BuildEvent { event }) = stream.message().await.unwrap() {
        events.push(event.unwrap());
    }
    let Some(Event::Completed(done)) = events.last().cloned() else {
        panic!("{:?}", kinds(&events))
    };
    let wall = Duration::from_nanos(done.accounting.unwrap().wall_ns);
    assert!(
        wall < idle,
        "the build took {wall:?}, though it could finish while the client slept {idle:?}"
    );
    let numbers: Vec<u64> = log_text(&events)
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert!(
        numbers.windows(2).all(|w| w[0] < w[1]),
        "lines out of order"
    );
    let dropped: u64 = events
        .iter()
        .filter_map(|e| match e {
            Event::LogsDropped(d) => Some(d.lines),
            _ => None,
        })
        .sum();
    assert!(dropped > 0, "nothing dropped: {} lines came", numbers.len());
    assert_eq!(dropped, done.log_lines_dropped);
    assert_eq!(numbers.len() as u64 + dropped, LINES);
    assert!(kinds(&events).contains(&"LogsDropped".to_owned()));
    common::assert_nothing_left(&bundles);
}

/// Dropping the stream mid-build cancels the build: no container, mount,
/// bundle or cgroup of it is left on the server. Meanwhile a second build,
/// on a server of one build slot, is told it is queued first in line, and
/// runs once the first is cancelled.
#[tokio::test(flavor = "multi_thread")]
async fn dropping_the_stream_cancels_the_build_and_leaves_nothing() {
    tvix_oci_testkit::require!(root, fuse, runc, busybox);
    let tmp = tempfile::tempdir().unwrap();
    let bundles = tmp.path().join("bundles");
    let server = Server::start(&tmp.path().join("data"), &bundles, &["--jobs", "1"]);
    let busybox = server.upload_busybox(tmp.path()).await;
    let mut client = server.events().await;
    let req = request(
        &busybox,
        &["build/x"],
        "echo started; /nix/store/busybox/bin/busybox sleep 60",
    );
    let mut stream = client.build(req).await.unwrap().into_inner();
    let mut id = String::new();
    loop {
        match stream.message().await.unwrap().and_then(|e| e.event) {
            Some(Event::Started(s)) => id = s.build_id,
            Some(Event::Log(l)) if l.data.starts_with(b"started") => break,
            Some(_) => {}
            None => panic!("the stream ended before the build ran"),
        }
    }
    assert!(!leftovers(&bundles).is_empty(), "the build is running");
    assert!(!cgroups_of(&id).is_empty(), "the build has a cgroup");

    let mut second = server.events().await;
    let next = request(&busybox, &["build/x"], "echo x > x");
    let mut queued = second.build(next).await.unwrap().into_inner();
    let mut seen = Vec::new();
    while !seen.iter().any(|e| matches!(e, Event::Phase(_))) {
        seen.push(queued.message().await.unwrap().unwrap().event.unwrap());
    }
    drop(stream);
    drop(client);

    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = [leftovers(&bundles), cgroups_of(&id)].concat();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "left behind: {left:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The queued build runs now.
    while let Some(BuildEvent { event }) = queued.message().await.unwrap() {
        seen.push(event.unwrap());
    }
    assert_eq!(
        kinds(&seen),
        [
            "Started",
            "Queued",
            "Mounting",
            "Running",
            "Ingesting",
            "Refscan0",
            "Completed"
        ]
    );
    let Event::Phase(q) = &seen[1] else {
        unreachable!()
    };
    assert_eq!(q.queue_position, 1, "{q:?}");
    common::assert_nothing_left(&bundles);
}
