//! The producer of local paths: [`import_path`] walks a tree on a
//! blocking thread (never following a symlink, children sorted by name)
//! and sends its entries to [`ingest_entries`]; each file is opened and
//! read by the consumer's uploads, concurrently, through [`LocalFile`].

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::{Entry, FileMeta, FileSource, ImportError, IngestOptions, ingest_entries};
use crate::Node;
use crate::blobservice::BlobService;
use crate::directoryservice::DirectoryService;

mod observer;

pub use observer::{FileObserver, ImportObserver, ImportOptions, NoObserver};

/// Entries the walker may list ahead of the consumer.
const AHEAD: usize = 1024;

/// Imports `path` (a file, directory or symlink) and returns its root node.
/// Errors name the path at fault.
pub async fn import_path(
    blobs: Arc<dyn BlobService>,
    dirs: &dyn DirectoryService,
    path: &Path,
    opts: &ImportOptions,
) -> Result<Node, ImportError> {
    let (tx, rx) = mpsc::channel(AHEAD);
    let root = path.to_owned();
    let walker = tokio::task::spawn_blocking(move || walk(&root, &tx));
    let observer = observer::Adapter::new(opts.observer.clone());
    let ingest = IngestOptions {
        concurrency: opts.concurrency,
        deadline: None,
    };
    let res = ingest_entries(blobs, dirs, rx, observer, &ingest).await;
    // The walker stops once the consumer is gone.
    let _ = walker.await;
    res.map(|(node, _)| node)
        .map_err(|e| ImportError::from_ingestion(path, e))
}

type Tx = mpsc::Sender<Result<Entry<ImportError>, ImportError>>;

/// Lists the tree at `root` into `tx`, in NAR order; stops at the first
/// error (sent) or when the consumer is gone.
fn walk(root: &Path, tx: &Tx) {
    let walker = walkdir::WalkDir::new(root)
        .follow_links(false)
        .follow_root_links(false)
        .sort_by(|a, b| {
            a.file_name()
                .as_encoded_bytes()
                .cmp(b.file_name().as_encoded_bytes())
        });
    // The directories open, deepest last, with their depths.
    let mut open: Vec<(usize, PathBuf)> = Vec::new();
    for entry in walker {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(root).to_owned();
            let source = e
                .into_io_error()
                .unwrap_or_else(|| std::io::Error::other("filesystem loop"));
            ImportError::Io { path, source }
        });
        let res = entry.and_then(|e| {
            while open.last().is_some_and(|(d, _)| *d >= e.depth()) {
                if let Some((_, path)) = open.pop() {
                    send(tx, Ok(Entry::DirectoryEnd { path }))?;
                }
            }
            let (entry, is_dir) = to_entry(root, &e)?;
            if is_dir {
                open.push((e.depth(), entry.path().to_owned()));
            }
            send(tx, Ok(entry))
        });
        if let Err(e) = res {
            let _ = tx.blocking_send(Err(e));
            return;
        }
    }
    while let Some((_, path)) = open.pop() {
        if send(tx, Ok(Entry::DirectoryEnd { path })).is_err() {
            return;
        }
    }
}

/// Sends `entry`; fails (with nothing to report) when the consumer is gone.
fn send(tx: &Tx, entry: Result<Entry<ImportError>, ImportError>) -> Result<(), ImportError> {
    tx.blocking_send(entry).map_err(|_| ImportError::Io {
        path: PathBuf::new(),
        source: std::io::Error::other("the import stopped"),
    })
}

/// The entry for `e`, found walking `root`, and whether it is a directory.
fn to_entry(root: &Path, e: &walkdir::DirEntry) -> Result<(Entry<ImportError>, bool), ImportError> {
    let abs = e.path().to_owned();
    let path = abs.strip_prefix(root).unwrap_or(&abs).to_owned();
    let ft = e.file_type();
    if ft.is_dir() {
        Ok((Entry::Directory { path }, true))
    } else if ft.is_file() {
        let source = Box::new(LocalFile { abs, file: None });
        Ok((Entry::File { path, source }, false))
    } else if ft.is_symlink() {
        let target = std::fs::read_link(&abs).map_err(|source| ImportError::Io {
            path: abs.clone(),
            source,
        })?;
        let target = target.into_os_string().into_encoded_bytes();
        Ok((Entry::Symlink { path, target }, false))
    } else {
        Err(ImportError::Unsupported {
            path: abs,
            kind: kind_name(ft),
        })
    }
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

/// A local regular file, opened by the upload (never following a
/// symlink, never blocking on a FIFO swapped in).
struct LocalFile {
    abs: PathBuf,
    file: Option<std::fs::File>,
}

impl LocalFile {
    fn io(&self) -> impl FnOnce(std::io::Error) -> ImportError + '_ {
        |source| ImportError::Io {
            path: self.abs.clone(),
            source,
        }
    }
}

impl FileSource for LocalFile {
    type Error = ImportError;

    fn open(&mut self) -> Result<FileMeta, ImportError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&self.abs)
            .map_err(self.io())?;
        let meta = file.metadata().map_err(self.io())?;
        if !meta.is_file() {
            return Err(ImportError::Unsupported {
                path: self.abs.clone(),
                kind: kind_name(meta.file_type()),
            });
        }
        self.file = Some(file);
        Ok(FileMeta {
            executable: meta.mode() & 0o100 != 0,
            size: meta.len(),
        })
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ImportError> {
        match &mut self.file {
            Some(f) => f.read(buf).map_err(|source| ImportError::Io {
                path: self.abs.clone(),
                source,
            }),
            None => Ok(0),
        }
    }

    fn rewind(&mut self) -> Result<bool, ImportError> {
        match &mut self.file {
            Some(f) => f
                .seek(SeekFrom::Start(0))
                .map(|_| true)
                .map_err(|source| ImportError::Io {
                    path: self.abs.clone(),
                    source,
                }),
            None => Ok(false),
        }
    }
}
