//! The core on hand-made streams: what an observer sees, in what order,
//! with files stored concurrently; the errors of a broken stream and of a
//! file whose length changed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::{Entry, FileMeta, FileSource, IngestOptions, IngestionError, Observer, ingest_entries};
use crate::blobservice::{BlobService, MemoryBlobService};
use crate::directoryservice::MemoryDirectoryService;
use crate::{B3Digest, Node};

/// A file in memory that says it is `size` bytes long.
struct Mem(Vec<u8>, u64, usize);

impl FileSource for Mem {
    type Error = std::io::Error;
    fn open(&mut self) -> Result<FileMeta, Self::Error> {
        Ok(FileMeta {
            executable: false,
            size: self.1,
        })
    }
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        let n = buf.len().min(self.0.len() - self.2);
        buf[..n].copy_from_slice(&self.0[self.2..self.2 + n]);
        self.2 += n;
        Ok(n)
    }
}

/// Everything it sees, as text.
#[derive(Default)]
struct Log(Vec<String>);

impl Observer for Log {
    fn directory_start(&mut self, p: &Path) {
        self.0.push(format!("dir {}", p.display()));
    }
    fn directory_end(&mut self, p: &Path) {
        self.0.push(format!("end {}", p.display()));
    }
    fn entry_start(&mut self, _: &Path, name: &[u8]) {
        self.0
            .push(format!("entry {}", String::from_utf8_lossy(name)));
    }
    fn entry_end(&mut self, p: &Path) {
        self.0.push(format!("/entry {}", p.display()));
    }
    fn symlink(&mut self, _: &Path, t: &[u8]) {
        self.0
            .push(format!("symlink {}", String::from_utf8_lossy(t)));
    }
    fn file_start(&mut self, p: &Path, m: FileMeta) {
        self.0.push(format!("file {} {}", p.display(), m.size));
    }
    fn file_chunk(&mut self, d: &[u8]) {
        self.0.push(format!("bytes {}", String::from_utf8_lossy(d)));
    }
}

type Item = Result<Entry<std::io::Error>, std::io::Error>;

fn file(path: &str, data: &[u8]) -> Item {
    let source = Box::new(Mem(data.to_vec(), data.len() as u64, 0));
    Ok(Entry::File {
        path: path.into(),
        source,
    })
}

fn dir(path: &str) -> Item {
    Ok(Entry::Directory { path: path.into() })
}

fn end(path: &str) -> Item {
    Ok(Entry::DirectoryEnd { path: path.into() })
}

async fn ingest(
    items: Vec<Item>,
) -> (
    Result<(Node, Log), IngestionError<std::io::Error>>,
    Arc<dyn BlobService>,
) {
    let blobs: Arc<dyn BlobService> = Arc::new(MemoryBlobService::default());
    let dirs = MemoryDirectoryService::default();
    let (tx, rx) = mpsc::channel(items.len().max(1));
    for i in items {
        tx.send(i).await.unwrap();
    }
    drop(tx);
    let res = ingest_entries(
        blobs.clone(),
        &dirs,
        rx,
        Log::default(),
        &IngestOptions::default(),
    )
    .await;
    (res, blobs)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_observer_sees_nar_order_while_files_are_stored_concurrently() {
    let link = Ok(Entry::Symlink {
        path: PathBuf::from("d/l"),
        target: b"../a".to_vec(),
    });
    let items = vec![
        dir(""),
        file("a", b"AAA"),
        dir("d"),
        file("d/b", b"BB"),
        link,
        end("d"),
        end(""),
    ];
    let (res, blobs) = ingest(items).await;
    let (node, log) = res.unwrap();
    assert!(matches!(node, Node::Directory { .. }), "{node:?}");
    assert!(blobs.has(&B3Digest::of(b"BB")).await.unwrap());
    let want = [
        "dir ",
        "entry a",
        "file a 3",
        "bytes AAA",
        "/entry a",
        "entry d",
        "dir d",
        "entry b",
        "file d/b 2",
        "bytes BB",
        "/entry d/b",
        "entry l",
        "symlink ../a",
        "/entry d/l",
        "end d",
        "/entry d",
        "end ",
    ];
    assert_eq!(log.0, want);
}

#[tokio::test]
async fn a_broken_stream_is_named() {
    for (items, msg) in [
        (
            vec![dir(""), file("x/a", b"")],
            "not in the directory open last",
        ),
        (
            vec![dir(""), end("d")],
            "the end of a directory not open last",
        ),
        (vec![dir("")], "a directory never ended"),
        (
            vec![file("a", b""), file("b", b"")],
            "an entry after the root",
        ),
        (vec![], "no entries"),
    ] {
        let err = ingest(items).await.0.err().unwrap();
        assert!(matches!(err, IngestionError::Malformed { .. }), "{err}");
        assert!(err.to_string().contains(msg), "{err}");
    }
}

#[tokio::test]
async fn a_file_longer_or_shorter_than_said_changed() {
    for (data, said, read) in [(&b"abcd"[..], 2, 3), (b"ab", 5, 2)] {
        let source = Box::new(Mem(data.to_vec(), said, 0));
        let items = vec![Ok(Entry::File {
            path: "f".into(),
            source,
        })];
        let err = ingest(items).await.0.err().unwrap();
        assert!(
            matches!(err, IngestionError::Changed { stat, read: r, .. } if stat == said && r == read),
            "{err}"
        );
    }
}
