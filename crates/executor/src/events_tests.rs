//! The sink's lines, pieces, drops and their reports, without a build.
#![allow(clippy::unwrap_used)]

use tokio_stream::StreamExt;

use super::*;

fn kind(e: &BuildEvent) -> String {
    match e.event.as_ref().unwrap() {
        Event::Log(l) => format!("log {}", String::from_utf8_lossy(&l.data)),
        Event::LogsDropped(d) => format!("dropped {} {}", d.lines, d.bytes),
        Event::Phase(p) => format!("{:?}", p.phase()),
        Event::Started(s) => format!("started {}", s.build_id),
        other => format!("{other:?}"),
    }
}

/// The events waiting in `stream`, taken (so the buffer empties).
async fn take(stream: &mut EventStream) -> Vec<String> {
    let mut got = Vec::new();
    while let Ok(Some(e)) =
        tokio::time::timeout(std::time::Duration::from_millis(10), stream.next()).await
    {
        got.push(kind(&e));
    }
    got
}

#[tokio::test]
async fn lines_past_the_buffer_are_dropped_counted_and_reported_once_read() {
    let (sink, mut stream) = channel(2, TracingLogs::new(0));
    sink.started("b");
    // Chunks split anywhere: lines are whole.
    sink.log(LogStream::Stderr, b"one\ntw");
    sink.log(LogStream::Stderr, b"o\nthree\nfour\nfi");
    assert_eq!(
        take(&mut stream).await,
        ["started b", "log one\n", "log two\n"]
    );
    // Read: room again; the drops are said before the next line.
    sink.log(LogStream::Stderr, b"ve\n");
    sink.phase(Phase::Ingesting);
    assert_eq!(
        take(&mut stream).await,
        ["dropped 2 11", "log five\n", "Ingesting"]
    );
}

#[tokio::test]
async fn a_long_line_comes_in_pieces_and_the_last_unfinished_line_at_ingesting() {
    let (sink, mut stream) = channel(LOG_BUFFER, TracingLogs::new(0));
    let long = vec![b'x'; LINE_PIECE + 10];
    sink.log(LogStream::Stderr, &long);
    sink.log(LogStream::Stderr, b"\nno newline");
    sink.phase(Phase::Ingesting);
    let got = take(&mut stream).await;
    assert_eq!(
        got.len(),
        4,
        "{:?}",
        got.iter().map(|g| g.len()).collect::<Vec<_>>()
    );
    assert_eq!(got[0].len(), "log ".len() + LINE_PIECE);
    assert_eq!(got[1], format!("log {}\n", "x".repeat(10)));
    assert_eq!(got[2..], ["log no newline", "Ingesting"]);
}

#[tokio::test]
async fn dropping_the_stream_aborts_the_build_task() {
    let (sink, stream) = channel(1, TracingLogs::new(0));
    let task = tokio::spawn(async move {
        let _sink = sink;
        std::future::pending::<()>().await
    });
    let stream = stream.cancels(task.abort_handle());
    drop(stream);
    assert!(task.await.unwrap_err().is_cancelled());
}

#[tokio::test]
async fn unread_lines_are_bounded_in_bytes_too() {
    let (sink, mut stream) = channel(LOG_BUFFER, TracingLogs::new(0));
    // Lines of a full piece each: the byte bound is reached long before
    // the line count.
    let piece = vec![b'y'; LINE_PIECE];
    for _ in 0..1000 {
        sink.log(LogStream::Stderr, &piece);
    }
    let got = take(&mut stream).await;
    assert_eq!(got.len(), LOG_BUFFER_BYTES / LINE_PIECE, "lines kept");
    // Read: room again, and the drops are said first.
    sink.log(LogStream::Stderr, b"z\n");
    let dropped = 1000 - LOG_BUFFER_BYTES / LINE_PIECE;
    assert_eq!(
        take(&mut stream).await,
        [
            format!("dropped {dropped} {}", dropped * LINE_PIECE),
            "log z\n".to_owned()
        ]
    );
}
