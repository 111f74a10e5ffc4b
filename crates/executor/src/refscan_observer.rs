//! The reference scanner as an observer of the ingestion core
//! ([`tvix_oci_castore::import::Observer`]): every entry name, symlink
//! target and file's contents scanned as a stream of its own, in NAR
//! order, each needle noted with the first path it was found in.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tvix_oci_castore::import::Observer;

use crate::refscan::{Needles, ScanState};

/// Scans what an ingestion shows it for some [`Needles`].
#[derive(Debug)]
pub struct NeedleScan {
    needles: Arc<Needles>,
    state: ScanState,
    found: BTreeMap<usize, PathBuf>,
}

impl NeedleScan {
    /// A scan for `needles`, nothing seen yet.
    pub fn new(needles: Arc<Needles>) -> Self {
        let state = ScanState::new(&needles);
        Self {
            needles,
            state,
            found: BTreeMap::new(),
        }
    }

    /// Each needle found, by index, with the first path (relative to the
    /// root, empty for the root) it was found in.
    pub fn into_found(self) -> BTreeMap<usize, PathBuf> {
        self.found
    }

    /// Ends a stream: notes where its new needles were found.
    fn done(&mut self, path: &Path) {
        for i in std::mem::take(&mut self.state.new) {
            self.found.entry(i).or_insert_with(|| path.to_owned());
        }
        self.state.tail.clear();
    }
}

impl Observer for NeedleScan {
    fn watches(&self) -> bool {
        !self.needles.is_empty()
    }
    /// An entry's name is in the NAR, so scanned (the root's is not: Nix
    /// never sees it).
    fn entry_start(&mut self, path: &Path, name: &[u8]) {
        self.state.update(&self.needles, name);
        self.done(path);
    }
    fn symlink(&mut self, path: &Path, target: &[u8]) {
        self.state.update(&self.needles, target);
        self.done(path);
    }
    fn file_chunk(&mut self, data: &[u8]) {
        self.state.update(&self.needles, data);
    }
    fn file_end(&mut self, path: &Path) {
        self.done(path);
    }
}
