//! The NAR serialisation, hashed as it streams: what a Nix store needs to
//! register an output (its NAR SHA-256 and size), computed in the same pass
//! that ingests the output, without writing the NAR anywhere. The writer
//! feeds any [`NarSink`] (another digest, for a fixed output declared in
//! sha1 or sha512; see [`crate::nar_node`]).

use std::path::Path;

use sha2::{Digest, Sha256};
use tvix_oci_castore::import::{FileMeta, Observer};

/// Where the NAR's bytes go, in order.
pub trait NarSink {
    /// The next bytes of the NAR.
    fn update(&mut self, data: &[u8]);
}

impl NarSink for Sha256 {
    fn update(&mut self, data: &[u8]) {
        Digest::update(self, data);
    }
}

/// The NAR of one tree fed, in order, into SHA-256.
pub type NarHasher = NarWriter<Sha256>;

/// Feeds the NAR of one tree, in order, into a [`NarSink`].
#[derive(Debug, Clone)]
pub struct NarWriter<S> {
    sink: S,
    size: u64,
    /// Bytes of the current file's contents still to come.
    pending: u64,
    /// Length of the current file's contents, for its padding.
    file_len: u64,
}

impl<S: NarSink + Default> Default for NarWriter<S> {
    fn default() -> Self {
        Self::with_sink(S::default())
    }
}

impl NarWriter<Sha256> {
    /// The NAR's SHA-256 and size.
    pub fn finish(self) -> ([u8; 32], u64) {
        (self.sink.finalize().into(), self.size)
    }
}

impl<S: NarSink> NarWriter<S> {
    /// A new tree into `sink`, starting with the magic.
    pub fn with_sink(sink: S) -> Self {
        let mut h = Self {
            sink,
            size: 0,
            pending: 0,
            file_len: 0,
        };
        h.str(b"nix-archive-1");
        h
    }

    /// The sink, having taken the whole NAR, and the NAR's size.
    pub fn into_sink(self) -> (S, u64) {
        (self.sink, self.size)
    }

    fn raw(&mut self, b: &[u8]) {
        self.sink.update(b);
        self.size += b.len() as u64;
    }

    fn pad(&mut self, len: u64) {
        let p = (8 - (len % 8)) % 8;
        self.raw(&[0u8; 8][..p as usize]);
    }

    fn str(&mut self, s: &[u8]) {
        self.raw(&(s.len() as u64).to_le_bytes());
        self.raw(s);
        self.pad(s.len() as u64);
    }

    /// A new tree into a fresh sink, starting with the magic.
    pub fn new() -> Self
    where
        S: Default,
    {
        Self::with_sink(S::default())
    }

    /// Opens a directory node.
    pub fn directory_start(&mut self) {
        for s in [&b"("[..], b"type", b"directory"] {
            self.str(s);
        }
    }

    /// Opens entry `name` of the current directory; its node follows.
    pub fn entry_start(&mut self, name: &[u8]) {
        for s in [&b"entry"[..], b"(", b"name"] {
            self.str(s);
        }
        self.str(name);
        self.str(b"node");
    }

    /// Closes an entry.
    pub fn entry_end(&mut self) {
        self.str(b")");
    }

    /// Closes a directory node.
    pub fn directory_end(&mut self) {
        self.str(b")");
    }

    /// A symlink node.
    pub fn symlink(&mut self, target: &[u8]) {
        for s in [&b"("[..], b"type", b"symlink", b"target"] {
            self.str(s);
        }
        self.str(target);
        self.str(b")");
    }

    /// Opens a regular file node of `len` bytes; the bytes follow through
    /// [`Self::file_data`], then [`Self::file_end`].
    pub fn file_start(&mut self, executable: bool, len: u64) {
        for s in [&b"("[..], b"type", b"regular"] {
            self.str(s);
        }
        if executable {
            self.str(b"executable");
            self.str(b"");
        }
        self.str(b"contents");
        self.raw(&len.to_le_bytes());
        self.pending = len;
        self.file_len = len;
    }

    /// The next bytes of the current file.
    pub fn file_data(&mut self, data: &[u8]) {
        self.pending = self.pending.saturating_sub(data.len() as u64);
        self.raw(data);
    }

    /// Closes the file node. Returns false when the bytes given did not add
    /// up to the length announced (the file changed while read).
    pub fn file_end(&mut self) -> bool {
        let ok = self.pending == 0;
        self.pad(self.file_len);
        self.str(b")");
        ok
    }
}

/// The NAR hash as an observer of the ingestion core: it sees the tree in
/// NAR order, which is all the serialisation needs. A file whose length
/// changed is the core's to refuse, so [`NarHasher::file_end`]'s verdict
/// is not needed here.
impl Observer for NarHasher {
    fn directory_start(&mut self, _path: &Path) {
        NarHasher::directory_start(self);
    }
    fn directory_end(&mut self, _path: &Path) {
        NarHasher::directory_end(self);
    }
    fn entry_start(&mut self, _path: &Path, name: &[u8]) {
        NarHasher::entry_start(self, name);
    }
    fn entry_end(&mut self, _path: &Path) {
        NarHasher::entry_end(self);
    }
    fn symlink(&mut self, _path: &Path, target: &[u8]) {
        NarHasher::symlink(self, target);
    }
    fn file_start(&mut self, _path: &Path, meta: FileMeta) {
        NarHasher::file_start(self, meta.executable, meta.size);
    }
    fn file_chunk(&mut self, data: &[u8]) {
        self.file_data(data);
    }
    fn file_end(&mut self, _path: &Path) {
        NarHasher::file_end(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn small_nars_have_the_known_sizes_and_hashes() {
        // A regular file "hello\n": 120 bytes of NAR. The hash was computed
        // by an independent model of the format (a few lines of Python).
        let mut h = NarHasher::new();
        h.file_start(false, 6);
        h.file_data(b"hello\n");
        assert!(h.file_end());
        let (sha, size) = h.finish();
        assert_eq!(size, 120);
        assert_eq!(
            hex(&sha),
            "1c37d01af40be2e80691de3cc3df44377a699afbb17c68f080964b2fd071fc13"
        );

        // A symlink to "/": 120 bytes too.
        let mut h = NarHasher::new();
        h.symlink(b"/");
        assert_eq!(h.finish().1, 120);
    }

    #[test]
    fn short_file_is_reported() {
        let mut h = NarHasher::new();
        h.file_start(true, 10);
        h.file_data(b"abc");
        assert!(!h.file_end());
    }
}
