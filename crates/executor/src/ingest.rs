//! Ingesting a build output into the castore, safely and in one pass.
//!
//! The output is walked from a directory handle: the path to it is opened
//! with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV)`,
//! every entry below with `O_NOFOLLOW` (files also `O_NONBLOCK`) and its type
//! checked on the open handle, so a symlink planted by the build (to `/`, to
//! `/etc/shadow`) is stored as a symlink and never followed, and nothing
//! outside the output is read. Each file's bytes are read once, and that
//! read feeds the blob store, the NAR hash and the reference scanner.
//! What is stored is canonical: only the executable bit survives.
//! Before any byte is read, a census (`census.rs`) of all the build's
//! outputs checks them against the [`IngestLimits`], so an output past a
//! limit is refused at once, not after the rest was read and stored.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use nix::fcntl::{AtFlags, OFlag, openat, readlinkat};
use nix::sys::stat::{Mode, SFlag, fstat, fstatat};
use tvix_oci_castore::blobservice::BlobService;
use tvix_oci_castore::directoryservice::DirectoryService;
use tvix_oci_castore::{B3Digest, Directory, Node, PathComponent, SymlinkTarget};

use crate::ingest_error::kind_of;
pub use crate::ingest_error::{Cap, IngestError};
use crate::nar::NarHasher;
use crate::refscan::{Needles, Scanner};

/// The bytes of a file read (and handed to the blob writer) at once.
pub const CHUNK: usize = 1 << 20;

/// Each chunk goes to the NAR hash and the reference scanner in pieces of
/// this size, one after the other, so the scanner reads what SHA-256 has
/// just read from the core's own cache rather than from memory (a 1 MiB
/// chunk does not stay in a 1 MiB L2): 8% faster over the whole pass
/// (`cargo bench -p tvix-oci-benches --bench micro -- one_pass`).
pub const PIECE: usize = 64 << 10;

/// Caps on what a build's outputs may hold, so a build cannot exhaust the
/// host or the store while its outputs are read. Checked first by a census
/// of all outputs (sizes and names only, listing stops at the first entry
/// past the cap), then again as the walk goes: nothing past a cap is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IngestLimits {
    /// Bytes of file contents.
    pub max_bytes: u64,
    /// Files, directories and symlinks.
    pub max_entries: u64,
    /// Directory nesting below an output.
    pub max_depth: u32,
    /// When ingestion must have ended (the build's timeout covers it).
    pub deadline: Option<Deadline>,
}

/// An instant ingestion must end by, and the timeout that set it (named
/// in errors).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadline {
    pub at: Instant,
    pub timeout: Duration,
}

impl Default for IngestLimits {
    fn default() -> Self {
        Self {
            max_bytes: 64 << 30,
            max_entries: 1_000_000,
            max_depth: 256,
            deadline: None,
        }
    }
}

impl IngestLimits {
    /// What is left of these caps after an output used `bytes` and
    /// `entries` (the depth cap and the deadline hold for every output).
    pub fn less(self, bytes: u64, entries: u64) -> Self {
        Self {
            max_bytes: self.max_bytes.saturating_sub(bytes),
            max_entries: self.max_entries.saturating_sub(entries),
            ..self
        }
    }
}

/// One output, ingested.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngestedOutput {
    pub node: Node,
    /// SHA-256 of the output's NAR serialisation.
    pub nar_sha256: [u8; 32],
    pub nar_size: u64,
    /// Index of each needle found, with the first path (relative to the
    /// output, empty for the output itself) it was found in.
    pub needles: BTreeMap<usize, PathBuf>,
    /// Bytes of file contents and entries read.
    pub bytes: u64,
    pub entries: u64,
}

struct Walk<'a> {
    output: String,
    blobs: &'a dyn BlobService,
    rt: tokio::runtime::Handle,
    dev: u64,
    nar: NarHasher,
    scanner: Scanner<'a>,
    found: BTreeMap<usize, PathBuf>,
    dirs: Vec<Directory>,
    limits: IngestLimits,
    bytes: u64,
    entries: u64,
}

impl Walk<'_> {
    fn io(&self, path: &Path) -> impl FnOnce(nix::Error) -> IngestError + '_ {
        let path = path.to_owned();
        move |e| IngestError::reading(&self.output, &path, e.into())
    }

    /// Fails once the deadline has passed.
    fn in_time(&self, rel: &Path) -> Result<(), IngestError> {
        match self.limits.deadline {
            Some(d) if Instant::now() >= d.at => Err(IngestError::TimedOut {
                output: self.output.clone(),
                path: rel.to_owned(),
                timeout: d.timeout,
            }),
            _ => Ok(()),
        }
    }

    /// Runs a blob store call for `rel`, until the deadline at most.
    fn store<T>(
        &self,
        rel: &Path,
        call: impl std::future::Future<Output = std::io::Result<T>>,
    ) -> Result<T, IngestError> {
        store_call(&self.rt, &self.output, rel, self.limits.deadline, call)
    }

    /// Scans one stream (a name, a target, a file) and records where new
    /// needles were found.
    fn scan_done(&mut self, path: &Path) {
        for i in self.scanner.take_new() {
            self.found.entry(i).or_insert_with(|| path.to_owned());
        }
        self.scanner.reset_stream();
    }

    fn limit(&self, rel: &Path, what: Cap) -> IngestError {
        IngestError::Limit {
            output: self.output.clone(),
            path: rel.to_owned(),
            what,
            limit: what.of(&self.limits),
        }
    }

    fn entry(&mut self, dirfd: &OwnedFd, name: &OsStr, rel: &Path) -> Result<Node, IngestError> {
        self.in_time(rel)?;
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(self.limit(rel, Cap::Entries));
        }
        let st =
            fstatat(dirfd.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(self.io(rel))?;
        let fmt = st.st_mode & SFlag::S_IFMT.bits();
        if fmt == SFlag::S_IFLNK.bits() {
            let target = readlinkat(dirfd.as_fd(), name).map_err(self.io(rel))?;
            let target =
                SymlinkTarget::try_from(target.as_bytes()).map_err(|e| IngestError::Invalid {
                    output: self.output.clone(),
                    path: rel.to_owned(),
                    msg: e.to_string(),
                })?;
            self.scanner.update(target.as_bytes());
            self.scan_done(rel);
            self.nar.symlink(target.as_bytes());
            return Ok(Node::Symlink { target });
        }
        if fmt == SFlag::S_IFREG.bits() {
            let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
            let fd = openat(dirfd.as_fd(), name, flags, Mode::empty()).map_err(self.io(rel))?;
            return self.file(fd, rel);
        }
        if fmt == SFlag::S_IFDIR.bits() {
            let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            let fd = openat(dirfd.as_fd(), name, flags, Mode::empty()).map_err(self.io(rel))?;
            return self.directory(fd, rel);
        }
        Err(IngestError::Special {
            output: self.output.clone(),
            path: rel.to_owned(),
            kind: kind_of(st.st_mode),
        })
    }

    fn file(&mut self, fd: OwnedFd, rel: &Path) -> Result<Node, IngestError> {
        let st = fstat(fd.as_fd()).map_err(self.io(rel))?;
        if st.st_mode & SFlag::S_IFMT.bits() != SFlag::S_IFREG.bits() {
            return Err(IngestError::Special {
                output: self.output.clone(),
                path: rel.to_owned(),
                kind: kind_of(st.st_mode),
            });
        }
        let executable = st.st_mode & 0o100 != 0;
        let size = st.st_size as u64;
        self.bytes = self.bytes.saturating_add(size);
        if self.bytes > self.limits.max_bytes {
            return Err(self.limit(rel, Cap::Bytes));
        }
        self.nar.file_start(executable, size);
        let mut writer = self.store(rel, self.blobs.open_write())?;
        let mut file = std::fs::File::from(fd);
        let mut total = 0u64;
        loop {
            self.in_time(rel)?;
            let mut buf =
                BytesMut::zeroed(CHUNK.min(size.saturating_sub(total).max(1) as usize).max(1));
            let n = file
                .read(&mut buf)
                .map_err(|e| IngestError::reading(&self.output, rel, e))?;
            if n == 0 {
                break;
            }
            buf.truncate(n);
            total += n as u64;
            for piece in buf.chunks(PIECE) {
                self.nar.file_data(piece);
                self.scanner.update(piece);
            }
            self.store(rel, writer.write(buf.freeze()))?;
            if total > size {
                break;
            }
        }
        if !self.nar.file_end() || total != size {
            return Err(IngestError::Changed {
                output: self.output.clone(),
                path: rel.to_owned(),
            });
        }
        self.scan_done(rel);
        let digest: B3Digest = self.store(rel, writer.close())?;
        Ok(Node::File {
            digest,
            size,
            executable,
        })
    }

    fn directory(&mut self, fd: OwnedFd, rel: &Path) -> Result<Node, IngestError> {
        // The walk recurses: the depth cap also bounds its stack.
        if rel.components().count() > self.limits.max_depth as usize {
            return Err(self.limit(rel, Cap::Depth));
        }
        let st = fstat(fd.as_fd()).map_err(self.io(rel))?;
        if st.st_dev != self.dev {
            return Err(IngestError::Invalid {
                output: self.output.clone(),
                path: rel.to_owned(),
                msg: "is on another filesystem (a mount inside the output)".into(),
            });
        }
        let listing = fd
            .try_clone()
            .map_err(|e| IngestError::reading(&self.output, rel, e))?;
        let mut names: Vec<OsString> = nix::dir::Dir::from_fd(listing)
            .map_err(self.io(rel))?
            .into_iter()
            .filter_map(Result::ok)
            .map(|e| OsStr::from_bytes(e.file_name().to_bytes()).to_owned())
            .filter(|n| n != "." && n != "..")
            .collect();
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        self.nar.directory_start();
        let mut dir = Directory::new();
        for name in names {
            let child_rel = rel.join(&name);
            self.nar.entry_start(name.as_bytes());
            // An entry's name is in the NAR, so scanned (the output's own
            // name is not: Nix never sees it).
            self.scanner.update(name.as_bytes());
            self.scan_done(&child_rel);
            let node = self.entry(&fd, &name, &child_rel)?;
            self.nar.entry_end();
            let pc =
                PathComponent::try_from(name.as_bytes()).map_err(|e| IngestError::Invalid {
                    output: self.output.clone(),
                    path: child_rel.clone(),
                    msg: e.to_string(),
                })?;
            dir.add(pc, node).map_err(|e| IngestError::Invalid {
                output: self.output.clone(),
                path: child_rel,
                msg: e.to_string(),
            })?;
        }
        self.nar.directory_end();
        let node = dir.as_node();
        self.dirs.push(dir);
        Ok(node)
    }
}

/// Where one output is: at `rel` below the trusted directory `base` (the
/// overlay's upper dir or a scratch dir); `output` is its path in the
/// request, for messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputAt {
    pub base: PathBuf,
    pub rel: String,
    pub output: String,
}

/// Ingests the outputs of one build, in order, under one budget of
/// `limits` for all of them: a census of every output first, so none is
/// read or stored when together they are past a limit.
pub async fn ingest_outputs(
    outs: &[OutputAt],
    blobs: Arc<dyn BlobService>,
    dirs: &dyn DirectoryService,
    needles: Arc<Needles>,
    limits: IngestLimits,
) -> Result<Vec<IngestedOutput>, IngestError> {
    // Each output is checked against what the ones before it left; the
    // error names the build's whole limit.
    let whole = |e| match e {
        IngestError::Limit {
            output, path, what, ..
        } => IngestError::Limit {
            output,
            path,
            what,
            limit: what.of(&limits),
        },
        other => other,
    };
    let mut left = limits;
    for o in outs {
        let (bytes, entries) = crate::census::census(o, left).await.map_err(whole)?;
        left = left.less(bytes, entries);
    }
    let mut got = Vec::with_capacity(outs.len());
    let mut left = limits;
    for o in outs {
        let g = walk_output(
            &o.base,
            &o.rel,
            &o.output,
            blobs.clone(),
            dirs,
            needles.clone(),
            left,
        )
        .await
        .map_err(whole)?;
        left = left.less(g.bytes, g.entries);
        got.push(g);
    }
    Ok(got)
}

/// Ingests output `output`, found at `rel` below the trusted directory
/// `base` (the overlay's upper dir or a scratch dir), into the stores,
/// scanning it for `needles`: [`ingest_outputs`] of one output.
pub async fn ingest_output(
    base: &Path,
    rel: &str,
    output: &str,
    blobs: Arc<dyn BlobService>,
    dirs: &dyn DirectoryService,
    needles: Arc<Needles>,
    limits: IngestLimits,
) -> Result<IngestedOutput, IngestError> {
    let at = OutputAt {
        base: base.to_owned(),
        rel: rel.to_owned(),
        output: output.to_owned(),
    };
    let mut got = ingest_outputs(&[at], blobs, dirs, needles, limits).await?;
    got.pop().ok_or_else(|| IngestError::Task {
        output: output.to_owned(),
        msg: "no result".into(),
    })
}

/// Runs a blob store call for `rel` of `output` on `rt`, until `deadline`
/// at most; its failure is the store's.
fn store_call<T>(
    rt: &tokio::runtime::Handle,
    output: &str,
    rel: &Path,
    deadline: Option<Deadline>,
    call: impl std::future::Future<Output = std::io::Result<T>>,
) -> Result<T, IngestError> {
    let res = rt.block_on(async {
        match deadline {
            Some(d) => tokio::time::timeout_at(d.at.into(), call).await.ok(),
            None => Some(call.await),
        }
    });
    match res {
        None => Err(IngestError::StoreTimedOut {
            output: output.to_owned(),
            path: rel.to_owned(),
            timeout: deadline.map_or(Duration::ZERO, |d| d.timeout),
        }),
        Some(Err(source)) => Err(IngestError::BlobStore {
            output: output.to_owned(),
            path: rel.to_owned(),
            source,
        }),
        Some(Ok(v)) => Ok(v),
    }
}

/// Reads one output (checking the limits again as it goes) into the stores.
async fn walk_output(
    base: &Path,
    rel: &str,
    output: &str,
    blobs: Arc<dyn BlobService>,
    dirs: &dyn DirectoryService,
    needles: Arc<Needles>,
    limits: IngestLimits,
) -> Result<IngestedOutput, IngestError> {
    let (base, rel_s, output_s) = (base.to_owned(), rel.to_owned(), output.to_owned());
    let rt = tokio::runtime::Handle::current();
    let blobs2 = blobs.clone();
    let walked = tokio::task::spawn_blocking(move || {
        let crate::census::Opened {
            parent: parent_fd,
            name,
            dev,
        } = crate::census::open_output(&base, &rel_s, &output_s)?;
        let mut walk = Walk {
            output: output_s.clone(),
            blobs: &*blobs2,
            rt,
            dev,
            nar: NarHasher::new(),
            scanner: needles.scanner(),
            found: BTreeMap::new(),
            dirs: Vec::new(),
            limits,
            bytes: 0,
            entries: 0,
        };
        // Found-in paths are relative to the output; its own name is not
        // part of its NAR, so not scanned (only the names of entries below).
        let node = walk.entry(&parent_fd, &name, Path::new(""))?;
        let (nar_sha256, nar_size) = walk.nar.finish();
        let used = (walk.bytes, walk.entries);
        Ok::<_, IngestError>((node, nar_sha256, nar_size, walk.found, walk.dirs, used))
    })
    .await
    .map_err(|e| IngestError::Task {
        output: output.to_owned(),
        msg: e.to_string(),
    })??;
    let (node, nar_sha256, nar_size, needles, directories, (bytes, entries)) = walked;
    if !directories.is_empty() {
        let put_all = async {
            let mut putter = dirs.put_multiple_start();
            for d in directories {
                putter.put(d).await?;
            }
            putter.close().await.map(drop)
        };
        let put = match limits.deadline {
            Some(d) => tokio::time::timeout_at(d.at.into(), put_all)
                .await
                .map_err(|_| IngestError::StoreTimedOut {
                    output: output.to_owned(),
                    path: PathBuf::new(),
                    timeout: d.timeout,
                })?,
            None => put_all.await,
        };
        put.map_err(|e| IngestError::Store {
            output: output.to_owned(),
            source: Box::new(e),
        })?;
    }
    Ok(IngestedOutput {
        node,
        nar_sha256,
        nar_size,
        needles,
        bytes,
        entries,
    })
}
