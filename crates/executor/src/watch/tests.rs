//! The registry without a build: what it keeps, what a watcher gets, in
//! which order, and what it forgets and drops within its limits.
#![allow(clippy::unwrap_used)]

use serde_json::Value;
use tokio_stream::StreamExt;

use super::*;
use crate::BuildError;
use crate::runc::{LogSink, LogStream, NoLogs, Phase};

fn small(recent: usize, log_lines: usize, watcher_buffer: usize) -> Registry {
    Registry::new(WatchLimits {
        recent,
        log_lines,
        watcher_buffer,
        ..WatchLimits::default()
    })
}

/// Each event as `kind` and, for lines, their text, for drops their
/// count, for the summaries their phase or outcome.
fn show(e: &WatchEvent) -> String {
    let v: Value = serde_json::from_str(&e.data).unwrap();
    match e.kind {
        "log" => format!("log {}", v["text"].as_str().unwrap()),
        "dropped" => format!("dropped {}", v["lines"]),
        kind => match v["outcome"]["summary"].as_str() {
            Some(s) => format!("{kind} {s}"),
            None => format!("{kind} {}", v["phase"].as_str().unwrap()),
        },
    }
}

async fn all(s: Subscription) -> Vec<String> {
    s.into_stream().map(|e| show(&e)).collect().await
}

#[tokio::test]
async fn a_watcher_gets_the_backlog_then_live_events_then_the_end_in_order() {
    let reg = Registry::new(WatchLimits::default());
    let sink = reg.begin(7, "127.0.0.1:1", &NoLogs);
    sink.started("b7");
    sink.phase(Phase::Running);
    // Chunks split anywhere; the pty's \r\n ends a line.
    sink.log(LogStream::Stderr, b"one\r\ntw");
    let watcher = reg.subscribe(7).unwrap();
    sink.log(LogStream::Stderr, b"o\nthree <b>&");
    sink.phase(Phase::Ingesting);
    drop(sink);
    assert_eq!(
        all(watcher).await,
        [
            "build running",
            "log one",
            "log two",
            "log three <b>&",
            "build ingesting",
            "build cancelled (its client went away, or the server stopped)",
            "end cancelled (its client went away, or the server stopped)",
        ]
    );
    let list = reg.list();
    assert_eq!(list["running"].as_array().unwrap().len(), 0);
    let recent = &list["recent"][0];
    assert_eq!(
        (recent["id"].as_u64(), recent["build_id"].as_str()),
        (Some(7), Some("b7"))
    );
    assert_eq!(recent["log_lines"], 3);
    assert_eq!(recent["peer"], "127.0.0.1:1");
}

#[tokio::test]
async fn only_the_last_lines_and_builds_are_kept_and_the_rest_is_counted() {
    let reg = small(2, 3, 16);
    for id in 1..=3 {
        let sink = reg.begin(id, "local", &NoLogs);
        sink.log(LogStream::Stdout, b"a\nb\nc\nd\ne\n");
    }
    assert_eq!(
        reg.subscribe(1).unwrap_err().to_string(),
        "no build 1 on this server: it never ran here, or it is older than the last 2 finished builds kept"
    );
    let got = all(reg.subscribe(3).unwrap()).await;
    assert_eq!(got[1..5], ["dropped 2", "log c", "log d", "log e"]);
    assert_eq!(reg.summary(3).unwrap()["log_lines_forgotten"], 2);
    let recent: Vec<_> = reg.list()["recent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_u64().unwrap())
        .collect();
    assert_eq!(recent, [3, 2]);
}

#[tokio::test]
async fn a_watcher_that_reads_nothing_misses_lines_and_is_told_how_many() {
    let reg = small(4, 1000, 2);
    let sink = reg.begin(1, "local", &NoLogs);
    let watcher = reg.subscribe(1).unwrap();
    for i in 0..10 {
        // Never waits for the watcher.
        sink.log(LogStream::Stderr, format!("{i}\n").as_bytes());
    }
    drop(sink);
    // Its buffer held two lines; it missed the other eight and the
    // build's last summary, and is told so before the end.
    assert_eq!(
        all(watcher).await,
        [
            "build requested",
            "log 0",
            "log 1",
            "dropped 9",
            "end cancelled (its client went away, or the server stopped)"
        ]
    );
    // A new watcher still gets every line kept.
    let later = all(reg.subscribe(1).unwrap()).await;
    assert_eq!(later.iter().filter(|l| l.starts_with("log")).count(), 10);
}

#[tokio::test]
async fn watchers_of_one_build_are_bounded_and_a_gone_one_frees_its_place() {
    let reg = Registry::new(WatchLimits {
        watchers: 2,
        ..WatchLimits::default()
    });
    let sink = reg.begin(5, "local", &NoLogs);
    let a = reg.subscribe(5).unwrap();
    let _b = reg.subscribe(5).unwrap();
    assert_eq!(
        reg.subscribe(5).unwrap_err(),
        WatchError::TooManyWatchers { id: 5, max: 2 }
    );
    drop(a);
    // The next event forgets the watcher gone.
    sink.log(LogStream::Stderr, b"x\n");
    assert!(reg.subscribe(5).is_ok());
}

#[tokio::test]
async fn a_finished_build_says_how_it_ended_with_its_figures() {
    let reg = Registry::new(WatchLimits::default());
    let sink = reg.begin(9, "local", &NoLogs);
    sink.progress(&crate::Figures {
        input_bytes_fetched: 42,
        cpu: Some(std::time::Duration::from_millis(1500)),
        ..Default::default()
    });
    assert_eq!(reg.summary(9).unwrap()["cpu_ms"], 1500);
    let failed = Err(BuildError::Failed {
        code: 3,
        log_tail: "oops".into(),
    });
    sink.finish(&failed);
    drop(sink);
    let s = reg.summary(9).unwrap();
    assert_eq!(s["outcome"]["exit_code"], 3);
    assert_eq!(s["outcome"]["fault"], "build");
    assert_eq!(s["outcome"]["ok"], false);
    assert_eq!(s["input_bytes_fetched"], 42);
    assert!(
        s["outcome"]["summary"]
            .as_str()
            .unwrap()
            .contains("exit code 3"),
        "{s}"
    );
}
