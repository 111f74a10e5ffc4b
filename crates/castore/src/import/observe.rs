//! The [`Observer`] of an ingestion and the thread it runs on.
//!
//! Files are stored concurrently, but an observer such as a NAR hasher
//! must see the tree in NAR order. So the consumer queues what the
//! observer is to see, in order, and one blocking thread calls the
//! observer down that queue; each file's bytes come through a channel of
//! their own, holding a few chunks, so a file read ahead of its turn waits
//! (and keeps its concurrency permit) until the observer reaches it:
//! memory stays bounded by the concurrency, whatever the tree.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::FileMeta;

/// Each chunk is handed to the two observers of a pair in pieces of this
/// size, one after the other, so the second reads what the first has just
/// read from the core's own cache rather than from memory (a 1 MiB chunk
/// does not stay in L2): 8% faster for a NAR hash and a reference scan
/// (`cargo bench -p tvix-oci-benches --bench micro -- one_pass`).
pub const PIECE: usize = 64 << 10;

/// Sees a tree as its NAR serialisation shows it, in that order: a
/// directory's start, then for each entry its name, its node and its end,
/// then the directory's end. Paths are relative to the root (empty for the
/// root, which has no name). Every method defaults to doing nothing.
pub trait Observer: Send + 'static {
    /// Whether to observe at all: if not, nothing is queued for it.
    fn watches(&self) -> bool {
        true
    }
    /// A directory at `path` begins.
    fn directory_start(&mut self, _path: &Path) {}
    /// The directory at `path` ends.
    fn directory_end(&mut self, _path: &Path) {}
    /// The entry at `path`, named `name`, begins; its node follows.
    fn entry_start(&mut self, _path: &Path, _name: &[u8]) {}
    /// The entry at `path` ends.
    fn entry_end(&mut self, _path: &Path) {}
    /// A symlink at `path` to `target`.
    fn symlink(&mut self, _path: &Path, _target: &[u8]) {}
    /// A file at `path` begins; `meta.size` bytes follow through
    /// [`Self::file_chunk`], then [`Self::file_end`].
    fn file_start(&mut self, _path: &Path, _meta: FileMeta) {}
    /// The next bytes of the current file.
    fn file_chunk(&mut self, _data: &[u8]) {}
    /// The current file, at `path`, ends.
    fn file_end(&mut self, _path: &Path) {}
}

/// Two observers, each seeing everything; file bytes by [`PIECE`]s, the
/// first observer then the second.
impl<A: Observer, B: Observer> Observer for (A, B) {
    fn watches(&self) -> bool {
        self.0.watches() || self.1.watches()
    }
    fn directory_start(&mut self, path: &Path) {
        self.0.directory_start(path);
        self.1.directory_start(path);
    }
    fn directory_end(&mut self, path: &Path) {
        self.0.directory_end(path);
        self.1.directory_end(path);
    }
    fn entry_start(&mut self, path: &Path, name: &[u8]) {
        self.0.entry_start(path, name);
        self.1.entry_start(path, name);
    }
    fn entry_end(&mut self, path: &Path) {
        self.0.entry_end(path);
        self.1.entry_end(path);
    }
    fn symlink(&mut self, path: &Path, target: &[u8]) {
        self.0.symlink(path, target);
        self.1.symlink(path, target);
    }
    fn file_start(&mut self, path: &Path, meta: FileMeta) {
        self.0.file_start(path, meta);
        self.1.file_start(path, meta);
    }
    fn file_chunk(&mut self, data: &[u8]) {
        for piece in data.chunks(PIECE) {
            self.0.file_chunk(piece);
            self.1.file_chunk(piece);
        }
    }
    fn file_end(&mut self, path: &Path) {
        self.0.file_end(path);
        self.1.file_end(path);
    }
}

/// What a file's upload tells the observer, in order.
pub(super) enum FileMsg {
    Start(FileMeta),
    Chunk(Bytes),
    /// The file is complete; the permit is released once it is observed.
    End(Option<OwnedSemaphorePermit>),
}

/// Chunks of a file queued for the observer at most.
const FILE_QUEUE: usize = 2;

/// One thing for the observer to see.
pub(super) enum Seen {
    DirectoryStart(PathBuf),
    DirectoryEnd(PathBuf),
    EntryStart(PathBuf),
    EntryEnd(PathBuf),
    Symlink(PathBuf, Vec<u8>),
    File(PathBuf, mpsc::Receiver<FileMsg>),
}

/// The queue to an observer, and the thread calling it; or the observer
/// alone when it does not watch.
pub(super) enum Observation<O> {
    Off(O),
    On {
        queue: mpsc::UnboundedSender<Seen>,
        thread: tokio::task::JoinHandle<O>,
    },
}

impl<O: Observer> Observation<O> {
    /// Starts calling `observer` (if it watches) on a blocking thread.
    pub(super) fn start(observer: O) -> Self {
        if !observer.watches() {
            return Observation::Off(observer);
        }
        let (queue, rx) = mpsc::unbounded_channel();
        let thread = tokio::task::spawn_blocking(move || run(observer, rx));
        Observation::On { queue, thread }
    }

    /// Queues `seen`.
    pub(super) fn see(&self, seen: impl FnOnce() -> Seen) {
        if let Observation::On { queue, .. } = self {
            // The thread only stops early when the ingestion failed.
            let _ = queue.send(seen());
        }
    }

    /// Queues a file at `path`; its upload sends its bytes to what this
    /// returns.
    pub(super) fn file(&self, path: &Path) -> Option<mpsc::Sender<FileMsg>> {
        let Observation::On { queue, .. } = self else {
            return None;
        };
        let (tx, rx) = mpsc::channel(FILE_QUEUE);
        let _ = queue.send(Seen::File(path.to_owned(), rx));
        Some(tx)
    }

    /// Waits for the observer to see everything queued; returns it.
    pub(super) async fn finish(self) -> Result<O, String> {
        match self {
            Observation::Off(o) => Ok(o),
            Observation::On { queue, thread } => {
                drop(queue);
                thread.await.map_err(|e| format!("the observer: {e}"))
            }
        }
    }
}

/// Calls `o` down the queue until it closes or a file ends early (its
/// upload failed, so the ingestion has).
fn run<O: Observer>(mut o: O, mut rx: mpsc::UnboundedReceiver<Seen>) -> O {
    while let Some(seen) = rx.blocking_recv() {
        match seen {
            Seen::DirectoryStart(p) => o.directory_start(&p),
            Seen::DirectoryEnd(p) => o.directory_end(&p),
            Seen::EntryStart(p) => {
                let name = p.file_name().map(|n| n.as_encoded_bytes()).unwrap_or(b"");
                o.entry_start(&p, name);
            }
            Seen::EntryEnd(p) => o.entry_end(&p),
            Seen::Symlink(p, target) => o.symlink(&p, &target),
            Seen::File(p, mut bytes) => loop {
                match bytes.blocking_recv() {
                    Some(FileMsg::Start(meta)) => o.file_start(&p, meta),
                    Some(FileMsg::Chunk(data)) => o.file_chunk(&data),
                    Some(FileMsg::End(permit)) => {
                        o.file_end(&p);
                        drop(permit);
                        break;
                    }
                    None => return o,
                }
            },
        }
    }
    o
}
