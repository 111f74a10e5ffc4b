//! Ingesting a filesystem path into the castore.
//!
//! A walker thread lists the tree (children sorted by name, each directory
//! after its contents). Files are hashed and uploaded concurrently, at most
//! [`ImportOptions::concurrency`] at a time in chunks of at most 1 MiB, so
//! memory stays bounded whatever the tree. Each directory is assembled by a
//! task once its children are done and handed to one putter, which thus sees
//! the closure leaves first. An [`ImportObserver`] sees every file's bytes
//! and every symlink target as they stream past.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::sync::{Semaphore, mpsc};

use crate::blobservice::BlobService;
use crate::directoryservice::DirectoryService;
use crate::{Directory, DirectoryError, NameError, Node, PathComponent, StoreError, SymlinkTarget};

/// Read size for file contents.
const CHUNK: usize = 1024 * 1024;

/// Sees what an import reads, as it reads it. Paths are relative to the
/// import root (empty for the root itself). Called from several tasks at
/// once; each file's bytes arrive in order through its own [`FileObserver`].
pub trait ImportObserver: Send + Sync {
    /// A regular file is about to be read; the returned observer sees its
    /// bytes.
    fn file(&self, _path: &Path, _executable: bool) -> Option<Box<dyn FileObserver>> {
        None
    }
    /// A symlink was read.
    fn symlink(&self, _path: &Path, _target: &[u8]) {}
    /// A directory was walked (called after everything in it).
    fn directory(&self, _path: &Path) {}
}

/// Sees one file's bytes, in order.
pub trait FileObserver: Send {
    /// The next bytes of the file.
    fn chunk(&mut self, data: &[u8]);
    /// The file is complete.
    fn finish(self: Box<Self>) {}
}

/// An observer that looks at nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoObserver;
impl ImportObserver for NoObserver {}

/// How an import runs.
#[derive(Clone)]
pub struct ImportOptions {
    /// Files read and uploaded at once.
    pub concurrency: usize,
    /// Sees the bytes as they pass.
    pub observer: Arc<dyn ImportObserver>,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self {
            concurrency: 32,
            observer: Arc::new(NoObserver),
        }
    }
}

impl std::fmt::Debug for ImportOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImportOptions")
            .field("concurrency", &self.concurrency)
            .finish()
    }
}

/// Why an import failed. Names the path at fault.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: is a {kind}; only regular files, directories and symlinks can be imported", path.display())]
    Unsupported { path: PathBuf, kind: &'static str },
    #[error("{}: {err}", path.display())]
    Name { path: PathBuf, err: NameError },
    #[error("{}: {err}", path.display())]
    Directory { path: PathBuf, err: DirectoryError },
    #[error("{}: storing the blob: {source}", path.display())]
    Blob {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: changed while imported: {stat} bytes when opened, {read} read", path.display())]
    Changed { path: PathBuf, stat: u64, read: u64 },
    #[error("storing the directories: {0}")]
    Store(#[from] StoreError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ImportError + '_ {
    move |source| ImportError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A task aborted when dropped, so a failed import stops its other work.
struct Task<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> Task<T> {
    async fn join(mut self) -> Result<T, ImportError> {
        (&mut self.0).await.map_err(|e| ImportError::Io {
            path: PathBuf::new(),
            source: io::Error::other(format!("import task failed: {e}")),
        })
    }
}

type NodeTask = Task<Result<Node, ImportError>>;

enum Pending {
    Ready(Node),
    Running(NodeTask),
}

/// One entry as the walker saw it, children before their directory.
struct Event {
    depth: usize,
    path: PathBuf,
    kind: EventKind,
}

enum EventKind {
    File,
    Symlink(Vec<u8>),
    /// A directory, after all its contents.
    DirectoryDone,
}

/// Imports `path` (a file, directory or symlink) and returns its root node.
pub async fn import_path(
    blobs: Arc<dyn BlobService>,
    dirs: &dyn DirectoryService,
    path: &Path,
    opts: &ImportOptions,
) -> Result<Node, ImportError> {
    let (events_tx, mut events) = mpsc::channel::<Result<Event, ImportError>>(1024);
    let root = path.to_owned();
    let observer = opts.observer.clone();
    let walker = tokio::task::spawn_blocking(move || walk(&root, &events_tx, &*observer));
    let _walker = Task(walker);

    let (dir_tx, mut dir_rx) = mpsc::unbounded_channel::<Directory>();
    let permits = Arc::new(Semaphore::new(opts.concurrency.max(1)));

    let assemble =
        async {
            // stack[d]: the finished-or-running children seen at depth d.
            let mut stack: Vec<Vec<(PathComponent, Pending)>> = vec![Vec::new()];
            while let Some(ev) = events.recv().await {
                let Event {
                    depth,
                    path: abs,
                    kind,
                } = ev?;
                let rel = abs.strip_prefix(path).unwrap_or(&abs).to_owned();
                let pending =
                    match kind {
                        EventKind::Symlink(target) => {
                            let target =
                                SymlinkTarget::try_from(target.as_slice()).map_err(|err| {
                                    ImportError::Name {
                                        path: abs.clone(),
                                        err,
                                    }
                                })?;
                            opts.observer.symlink(&rel, target.as_bytes());
                            Pending::Ready(Node::Symlink { target })
                        }
                        EventKind::File => {
                            let permit = permits.clone().acquire_owned().await.map_err(|_| {
                                ImportError::Io {
                                    path: abs.clone(),
                                    source: io::Error::other("import cancelled"),
                                }
                            })?;
                            let (blobs, observer, abs) =
                                (blobs.clone(), opts.observer.clone(), abs.clone());
                            Pending::Running(Task(tokio::spawn(async move {
                                let res = upload(&*blobs, &abs, &rel, &*observer).await;
                                drop(permit);
                                res
                            })))
                        }
                        EventKind::DirectoryDone => {
                            let children = if stack.len() > depth + 1 {
                                stack.pop().unwrap_or_default()
                            } else {
                                Vec::new()
                            };
                            let tx = dir_tx.clone();
                            let abs = abs.clone();
                            Pending::Running(Task(tokio::spawn(async move {
                                let dir = assemble_dir(&abs, children).await?;
                                let node = dir.as_node();
                                // Sent before this task completes, so before any parent.
                                let _ = tx.send(dir);
                                Ok(node)
                            })))
                        }
                    };
                let name =
                    match abs.file_name() {
                        Some(n) if depth > 0 => PathComponent::try_from(n.as_encoded_bytes())
                            .map_err(|err| ImportError::Name {
                                path: abs.clone(),
                                err,
                            })?,
                        // The root's name is the caller's business.
                        _ => PathComponent::try_from("root").map_err(|err| ImportError::Name {
                            path: abs.clone(),
                            err,
                        })?,
                    };
                while stack.len() <= depth {
                    stack.push(Vec::new());
                }
                stack.truncate(depth + 1);
                stack[depth].push((name, pending));
            }
            drop(dir_tx);
            let (_, root) = stack
                .into_iter()
                .next()
                .and_then(|mut v| v.pop())
                .ok_or_else(|| ImportError::Io {
                    path: path.to_owned(),
                    source: io::Error::other("the walk yielded nothing"),
                })?;
            resolve(root).await
        };

    let put = async {
        let mut putter = dirs.put_multiple_start();
        let mut last = None;
        while let Some(d) = dir_rx.recv().await {
            last = Some(d.digest());
            putter.put(d).await?;
        }
        match last {
            Some(_) => Ok(Some(putter.close().await?)),
            None => Ok::<_, ImportError>(None),
        }
    };

    let (node, stored_root) = tokio::try_join!(assemble, put)?;
    if let (Node::Directory { digest, .. }, Some(stored)) = (&node, stored_root) {
        debug_assert_eq!(*digest, stored);
    }
    Ok(node)
}

async fn resolve(p: Pending) -> Result<Node, ImportError> {
    match p {
        Pending::Ready(n) => Ok(n),
        Pending::Running(t) => t.join().await?,
    }
}

async fn assemble_dir(
    path: &Path,
    children: Vec<(PathComponent, Pending)>,
) -> Result<Directory, ImportError> {
    let mut dir = Directory::new();
    for (name, pending) in children {
        let node = resolve(pending).await?;
        dir.add(name, node).map_err(|err| ImportError::Directory {
            path: path.to_owned(),
            err,
        })?;
    }
    Ok(dir)
}

/// Lists the tree for [`import_path`]; runs on a blocking thread.
fn walk(root: &Path, tx: &mpsc::Sender<Result<Event, ImportError>>, observer: &dyn ImportObserver) {
    let walker = walkdir::WalkDir::new(root)
        .follow_links(false)
        .follow_root_links(false)
        .contents_first(true)
        .sort_by(|a, b| {
            a.file_name()
                .as_encoded_bytes()
                .cmp(b.file_name().as_encoded_bytes())
        });
    for entry in walker {
        let ev = entry
            .map_err(|e| {
                let path = e.path().unwrap_or(root).to_owned();
                let source = e
                    .into_io_error()
                    .unwrap_or_else(|| io::Error::other("filesystem loop"));
                ImportError::Io { path, source }
            })
            .and_then(|e| event(root, e, observer));
        let failed = ev.is_err();
        if tx.blocking_send(ev).is_err() || failed {
            return;
        }
    }
}

fn event(
    root: &Path,
    e: walkdir::DirEntry,
    observer: &dyn ImportObserver,
) -> Result<Event, ImportError> {
    let path = e.path().to_owned();
    let ft = e.file_type();
    let kind = if ft.is_dir() {
        observer.directory(path.strip_prefix(root).unwrap_or(&path));
        EventKind::DirectoryDone
    } else if ft.is_file() {
        EventKind::File
    } else if ft.is_symlink() {
        let target = std::fs::read_link(&path).map_err(io_err(&path))?;
        EventKind::Symlink(target.into_os_string().into_encoded_bytes())
    } else {
        return Err(ImportError::Unsupported {
            path,
            kind: kind_name(ft),
        });
    };
    Ok(Event {
        depth: e.depth(),
        path,
        kind,
    })
}

fn kind_name(ft: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_fifo() {
        "FIFO"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_char_device() {
        "character device"
    } else {
        "special file"
    }
}

/// Reads one regular file (never following a symlink, never blocking on a
/// FIFO swapped in) and stores it as a blob.
async fn upload(
    blobs: &dyn BlobService,
    abs: &Path,
    rel: &Path,
    observer: &dyn ImportObserver,
) -> Result<Node, ImportError> {
    let file = tokio::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(abs)
        .await
        .map_err(io_err(abs))?;
    let meta = file.metadata().await.map_err(io_err(abs))?;
    if !meta.is_file() {
        return Err(ImportError::Unsupported {
            path: abs.to_owned(),
            kind: kind_name(meta.file_type()),
        });
    }
    let executable = meta.mode() & 0o100 != 0;
    let mut seen = observer.file(rel, executable);
    let mut writer = blobs
        .open_write()
        .await
        .map_err(|source| ImportError::Blob {
            path: abs.to_owned(),
            source,
        })?;
    let cap = usize::try_from(meta.len()).unwrap_or(CHUNK).clamp(1, CHUNK);
    // The size stat gave is the file's: a file growing while it is read
    // is read one byte past it only, and fails, as does one that shrinks.
    let stat = meta.len();
    let mut file = file.take(stat.saturating_add(1));
    let mut size = 0u64;
    loop {
        let mut buf = BytesMut::with_capacity(cap);
        let n = file.read_buf(&mut buf).await.map_err(io_err(abs))?;
        if n == 0 {
            break;
        }
        if size + n as u64 > stat {
            return Err(ImportError::Changed {
                path: abs.to_owned(),
                stat,
                read: size + n as u64,
            });
        }
        size += n as u64;
        if let Some(o) = seen.as_mut() {
            o.chunk(&buf);
        }
        writer
            .write(buf.freeze())
            .await
            .map_err(|source| ImportError::Blob {
                path: abs.to_owned(),
                source,
            })?;
    }
    if size != stat {
        return Err(ImportError::Changed {
            path: abs.to_owned(),
            stat,
            read: size,
        });
    }
    if let Some(o) = seen {
        o.finish();
    }
    let digest = writer.close().await.map_err(|source| ImportError::Blob {
        path: abs.to_owned(),
        source,
    })?;
    Ok(Node::File {
        digest,
        size,
        executable,
    })
}
