//! [`ingest_entries`]: the one consumer of every producer's entries.
//!
//! Entries come in NAR order. A stack holds the directories open, each
//! with its children so far; a file's upload is a task (or, at a
//! concurrency of 1, done before the next entry), a directory is assembled
//! when it ends — at once if its children are all stored, else by a task
//! waiting for them — and sent to one putter, which thus gets every
//! directory after its children.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{Semaphore, mpsc};

use super::observe::{Observation, Seen};
use super::upload::Upload;
use super::{Entry, IngestOptions, IngestionError, Observer};
use crate::blobservice::BlobService;
use crate::directoryservice::DirectoryService;
use crate::{Directory, Node, PathComponent, SymlinkTarget};

mod assemble;
mod put;

use assemble::{Pending, Task, assemble};

/// Ingests the tree whose entries `entries` yields (in the order
/// [`Entry`] documents) into `blobs` and `dirs`, showing it to `observer`
/// in NAR order; returns its root node and the observer.
///
/// Directories are put in one [`put_multiple_start`] batch, leaves first,
/// closed only when the whole tree is stored: a failed ingestion closes
/// none. The first error stops it: pending uploads are cancelled.
///
/// [`put_multiple_start`]: DirectoryService::put_multiple_start
pub async fn ingest_entries<E, O>(
    blobs: Arc<dyn BlobService>,
    dirs: &dyn DirectoryService,
    mut entries: mpsc::Receiver<Result<Entry<E>, E>>,
    observer: O,
    opts: &IngestOptions,
) -> Result<(Node, O), IngestionError<E>>
where
    E: Send + 'static,
    O: Observer,
{
    let (dir_tx, dir_rx) = mpsc::unbounded_channel::<Directory>();
    let mut c = Consumer {
        blobs,
        rt: tokio::runtime::Handle::current(),
        permits: Arc::new(Semaphore::new(opts.concurrency.max(1))),
        sequential: opts.concurrency <= 1,
        opts: *opts,
        seen: Observation::start(observer),
        cancelled: CancelOnDrop(Arc::new(AtomicBool::new(false))),
        stack: Vec::new(),
        root: None,
        dir_tx,
    };
    let consume = async {
        while let Some(entry) = entries.recv().await {
            c.take(entry.map_err(IngestionError::Producer)?).await?;
        }
        c.finish().await
    };
    let (node, ()) = tokio::try_join!(consume, put::put_all(dirs, dir_rx, opts.deadline))?;
    let observer = c.seen_finish().await?;
    Ok((node, observer))
}

/// A directory open in the stream, with its children so far.
struct Frame<E> {
    path: PathBuf,
    children: Vec<(PathComponent, Pending<E>)>,
}

struct Consumer<E, O> {
    blobs: Arc<dyn BlobService>,
    rt: tokio::runtime::Handle,
    permits: Arc<Semaphore>,
    sequential: bool,
    opts: IngestOptions,
    seen: Observation<O>,
    cancelled: CancelOnDrop,
    stack: Vec<Frame<E>>,
    root: Option<Pending<E>>,
    dir_tx: mpsc::UnboundedSender<Directory>,
}

/// Cancels the uploads still reading when dropped, so an ingestion that
/// ends early stops its other work.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl<E: Send + 'static, O: Observer> Consumer<E, O> {
    /// Takes the next entry of the stream.
    async fn take(&mut self, entry: Entry<E>) -> Result<(), IngestionError<E>> {
        if let Entry::DirectoryEnd { path } = entry {
            return self.directory_end(path);
        }
        let named = self.check_place(entry.path())?;
        if named {
            self.seen.see(|| Seen::EntryStart(entry.path().to_owned()));
        }
        match entry {
            Entry::Directory { path } => {
                self.seen.see(|| Seen::DirectoryStart(path.clone()));
                self.stack.push(Frame {
                    path,
                    children: Vec::new(),
                });
                Ok(())
            }
            Entry::Symlink { path, target } => {
                let target = SymlinkTarget::try_from(target.as_slice()).map_err(|err| {
                    IngestionError::Name {
                        path: path.clone(),
                        err,
                    }
                })?;
                self.seen
                    .see(|| Seen::Symlink(path.clone(), target.as_bytes().to_vec()));
                self.place(path, named, Pending::Ready(Node::Symlink { target }))
            }
            Entry::File { path, source } => {
                let pending = self.upload(&path, source).await?;
                self.place(path, named, pending)
            }
            Entry::DirectoryEnd { path } => self.directory_end(path),
        }
    }

    /// Checks an entry at `path` may come now: in the directory open
    /// last, or as the root if none is and none came. Returns whether it
    /// is in a directory (so has a name).
    fn check_place(&self, path: &Path) -> Result<bool, IngestionError<E>> {
        let malformed = |msg| IngestionError::Malformed {
            path: path.to_owned(),
            msg,
        };
        match self.stack.last() {
            None if self.root.is_some() => Err(malformed("an entry after the root")),
            None => Ok(false),
            Some(f) if path.parent() == Some(&f.path) && path.file_name().is_some() => Ok(true),
            Some(_) => Err(malformed("not in the directory open last")),
        }
    }

    /// Starts (or, sequential, runs) the upload of the file at `path`.
    async fn upload(
        &mut self,
        path: &Path,
        source: Box<dyn super::FileSource<Error = E>>,
    ) -> Result<Pending<E>, IngestionError<E>> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| IngestionError::Task("the permits were closed".into()))?;
        let up = Upload {
            rt: self.rt.clone(),
            blobs: self.blobs.clone(),
            path: path.to_owned(),
            source,
            seen: self.seen.file(path),
            permit,
            deadline: self.opts.deadline,
            cancelled: self.cancelled.0.clone(),
        };
        let task = Task(tokio::task::spawn_blocking(move || up.run()));
        if self.sequential {
            Ok(Pending::Ready(task.join().await??))
        } else {
            Ok(Pending::Running(task))
        }
    }

    /// Ends the directory open last, at `path`, and places its node.
    fn directory_end(&mut self, path: PathBuf) -> Result<(), IngestionError<E>> {
        let frame = match self.stack.pop() {
            Some(f) if f.path == path => f,
            _ => {
                return Err(IngestionError::Malformed {
                    path,
                    msg: "the end of a directory not open last",
                });
            }
        };
        self.seen.see(|| Seen::DirectoryEnd(path.clone()));
        let named = !self.stack.is_empty();
        let pending = assemble(frame.path, frame.children, self.dir_tx.clone())?;
        self.place(path, named, pending)
    }

    /// Places the node of the entry at `path`: in the directory open last
    /// (`named`), or as the root.
    fn place(
        &mut self,
        path: PathBuf,
        named: bool,
        node: Pending<E>,
    ) -> Result<(), IngestionError<E>> {
        let Some(frame) = self.stack.last_mut().filter(|_| named) else {
            self.root = Some(node);
            return Ok(());
        };
        self.seen.see(|| Seen::EntryEnd(path.clone()));
        let name = path
            .file_name()
            .map(|n| n.as_encoded_bytes())
            .unwrap_or(b"");
        let name = PathComponent::try_from(name).map_err(|err| IngestionError::Name {
            path: path.clone(),
            err,
        })?;
        frame.children.push((name, node));
        Ok(())
    }

    /// The root's node, once the stream ended.
    async fn finish(&mut self) -> Result<Node, IngestionError<E>> {
        if let Some(f) = self.stack.last() {
            return Err(IngestionError::Malformed {
                path: f.path.clone(),
                msg: "a directory never ended",
            });
        }
        let Some(root) = self.root.take() else {
            return Err(IngestionError::Malformed {
                path: PathBuf::new(),
                msg: "no entries",
            });
        };
        // No more directories: the putter closes once it has them all.
        let (dead, _) = mpsc::unbounded_channel();
        drop(std::mem::replace(&mut self.dir_tx, dead));
        root.resolve().await
    }

    /// Waits for the observer to have seen everything.
    async fn seen_finish(self) -> Result<O, IngestionError<E>> {
        let Consumer { seen, .. } = self;
        seen.finish().await.map_err(IngestionError::Task)
    }
}
