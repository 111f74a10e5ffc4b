//! What [`import_path`](super::import_path)'s callers see of an import:
//! [`ImportObserver`], a file's bytes through its own [`FileObserver`] and
//! every symlink target (for progress bars and the like), fed from the
//! ingestion core's [`Observer`] in NAR order.

use std::path::Path;
use std::sync::Arc;

use crate::import::{FileMeta, Observer};

/// Sees what an import reads, as it reads it. Paths are relative to the
/// import root (empty for the root itself). Calls come one at a time, in
/// the order of the tree's NAR serialisation.
pub trait ImportObserver: Send + Sync {
    /// Whether to observe at all: if not, the import queues nothing for
    /// it.
    fn watches(&self) -> bool {
        true
    }
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

impl ImportObserver for NoObserver {
    fn watches(&self) -> bool {
        false
    }
}

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

/// An [`ImportObserver`] as the core's [`Observer`].
pub(super) struct Adapter {
    inner: Arc<dyn ImportObserver>,
    file: Option<Box<dyn FileObserver>>,
}

impl Adapter {
    pub(super) fn new(inner: Arc<dyn ImportObserver>) -> Self {
        Self { inner, file: None }
    }
}

impl Observer for Adapter {
    fn watches(&self) -> bool {
        self.inner.watches()
    }
    fn directory_end(&mut self, path: &Path) {
        self.inner.directory(path);
    }
    fn symlink(&mut self, path: &Path, target: &[u8]) {
        self.inner.symlink(path, target);
    }
    fn file_start(&mut self, path: &Path, meta: FileMeta) {
        self.file = self.inner.file(path, meta.executable);
    }
    fn file_chunk(&mut self, data: &[u8]) {
        if let Some(f) = &mut self.file {
            f.chunk(data);
        }
    }
    fn file_end(&mut self, _path: &Path) {
        if let Some(f) = self.file.take() {
            f.finish();
        }
    }
}
