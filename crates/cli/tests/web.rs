//! `serve --http` over plain HTTP: the list and one build as JSON while a
//! build runs and after, a build's server-sent events in order (a DoBuild
//! of tvix's, so the unary call reports too), a failed build's outcome,
//! the event stream's builds listed too and a dropped one as cancelled,
//! unknown builds and foreign hosts refused with a clear message. In a
//! browser: web_browser.rs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::http::{events, get, get_as};
use common::watch::{Watching, running_id, start_build, wait_for, watch_a_build};
use common::{Serve, busybox_request};
use serde_json::Value;

#[test]
fn the_builds_as_json_and_a_builds_events_in_order() {
    tvix_oci_testkit::require!(root, fuse, runc, busybox);
    let tmp = tempfile::tempdir().unwrap();
    let Watching {
        server,
        web,
        rt,
        build,
        id,
    } = watch_a_build(tmp.path());
    let running = wait_for(&web, id, |b| b["phase"] == "running");
    assert!(running["build_id"].as_str().unwrap().starts_with("tob-"));
    assert!(running["peer"].as_str().unwrap().starts_with("127.0.0.1:"));

    // Watched from the middle of the build to its end: every line once, in
    // order, then the end.
    let reply = get(&web, &format!("/api/builds/{id}/events"));
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.headers.contains("content-type: text/event-stream"));
    let evs = events(&reply.body);
    let lines: Vec<&str> = evs
        .iter()
        .filter(|(k, _)| k == "log")
        .map(|(_, d)| d["text"].as_str().unwrap())
        .collect();
    let want: Vec<String> = (1..=12)
        .map(|i| format!("line {i} <b id=injected>x</b>"))
        .collect();
    assert_eq!(lines, want);
    assert_eq!(evs[0].0, "build");
    let (kind, end) = evs.last().unwrap();
    assert_eq!(kind, "end");
    assert_eq!(end["outcome"]["ok"], true, "{end}");
    assert_eq!(end["outcome"]["summary"], "built its output");
    rt.block_on(build).unwrap().unwrap();

    let list: Value = serde_json::from_str(&get(&web, "/api/builds").body).unwrap();
    assert_eq!(list["running"], serde_json::json!([]));
    let done = &list["recent"][0];
    assert_eq!(done["id"], id);
    assert_eq!(done["log_lines"], 12);
    assert!(done["wall_ms"].as_u64().unwrap() >= 3000, "{done}");
    assert!(done["cpu_ms"].is_u64(), "{done}");

    // A failing build: its exit code and whose fault.
    let failing = start_build(&rt, &server, tmp.path(), "echo bye; exit 3");
    assert!(rt.block_on(failing).unwrap().is_err());
    let list: Value = serde_json::from_str(&get(&web, "/api/builds").body).unwrap();
    let failed = &list["recent"][0]["outcome"];
    assert_eq!(
        (&failed["ok"], &failed["exit_code"], &failed["fault"]),
        (&Value::Bool(false), &Value::from(3), &Value::from("build")),
        "{failed}"
    );
    // A finished build is still watched: its lines, then the end.
    let evs = events(&get(&web, &format!("/api/builds/{id}/events")).body);
    assert_eq!(evs.iter().filter(|(k, _)| k == "log").count(), 12);
    assert_eq!(evs.last().unwrap().0, "end");
}

#[test]
fn the_page_its_headers_and_what_it_refuses() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, web) =
        Serve::start_watched(&tmp.path().join("data"), &tmp.path().join("bundles"), &[]);
    let page = get(&web, "/");
    assert_eq!(page.status, 200);
    assert!(
        page.headers
            .contains("content-security-policy: default-src 'self'; script-src 'self'")
    );
    assert!(
        page.body.contains("<script src=\"/app.js\""),
        "{}",
        page.body
    );
    let app = get(&web, "/app.js");
    assert!(app.headers.contains("content-type: text/javascript"));
    // Logs are untrusted: the script never writes HTML.
    assert!(!app.body.contains("innerHTML") && !app.body.contains("insertAdjacentHTML"));
    let list: Value = serde_json::from_str(&get(&web, "/api/builds").body).unwrap();
    assert_eq!(list["running"], serde_json::json!([]));
    assert_eq!(list["recent_kept"], 50);

    for (path, status, msg) in [
        (
            "/api/builds/41/events",
            404,
            "no build 41 on this server: it never ran here",
        ),
        ("/api/builds/41", 404, "no build 41 on this server"),
        (
            "/api/builds/x%3Cb%3E/events",
            404,
            "a build is named by its number",
        ),
        ("/nothing", 404, "no page /nothing here"),
    ] {
        let r = get(&web, path);
        assert_eq!(
            (r.status, r.body.contains(msg)),
            (status, true),
            "{path}: {r:?}"
        );
    }
    // A name that is not ours, as a rebinding page would send.
    let r = get_as(&web, "/api/builds", "evil.example:80");
    assert_eq!(r.status, 421, "{r:?}");
    assert!(r.body.contains("Host \"evil.example:80\" refused"), "{r:?}");
    assert_eq!(get_as(&web, "/", "localhost:1").status, 200);
}

#[test]
fn the_event_streams_builds_are_listed_too_and_a_dropped_one_as_cancelled() {
    use tvix_oci_spec::proto::events::build_service_client::BuildServiceClient;
    tvix_oci_testkit::require!(root, fuse, runc, busybox);
    let tmp = tempfile::tempdir().unwrap();
    let (server, web) =
        Serve::start_watched(&tmp.path().join("data"), &tmp.path().join("bundles"), &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let busybox = rt.block_on(server.upload_busybox(tmp.path()));
    let mut client = rt
        .block_on(BuildServiceClient::connect(server.http()))
        .unwrap();
    // Read to its end: listed as built, with its line.
    let req = busybox_request(&busybox, &["build/x"], "echo hi; echo > x");
    rt.block_on(async {
        let mut events = client.build(req).await.unwrap().into_inner();
        while events.message().await.unwrap().is_some() {}
    });
    let list: Value = serde_json::from_str(&get(&web, "/api/builds").body).unwrap();
    let built = &list["recent"][0];
    assert_eq!(
        (&built["outcome"]["ok"], &built["log_lines"]),
        (&Value::Bool(true), &Value::from(1)),
        "{built}"
    );

    // Dropped while it runs: cancelled, and shown so.
    let req = busybox_request(&busybox, &["build/x"], "echo started; sleep 60; echo > x");
    let events = rt.block_on(client.build(req)).unwrap().into_inner();
    let id = running_id(&web);
    wait_for(&web, id, |b| b["log_lines"] == 1);
    drop(events);
    let gone = wait_for(&web, id, |b| !b["outcome"].is_null());
    assert_eq!(gone["outcome"]["ok"], false, "{gone}");
    assert!(
        gone["outcome"]["summary"]
            .as_str()
            .unwrap()
            .starts_with("cancelled"),
        "{gone}"
    );
    // That nothing is left of it: events.rs.
}
