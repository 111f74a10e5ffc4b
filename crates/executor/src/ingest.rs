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

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::BytesMut;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat, openat2, readlinkat};
use nix::sys::stat::{Mode, SFlag, fstat, fstatat};
use tvix_oci_castore::blobservice::BlobService;
use tvix_oci_castore::directoryservice::DirectoryService;
use tvix_oci_castore::{B3Digest, Directory, Node, PathComponent, StoreError, SymlinkTarget};

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
/// host or the store while its outputs are read. Checked as the walk goes:
/// nothing past a cap is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IngestLimits {
    /// Bytes of file contents.
    pub max_bytes: u64,
    /// Files, directories and symlinks.
    pub max_entries: u64,
    /// Directory nesting below an output.
    pub max_depth: u32,
}

impl Default for IngestLimits {
    fn default() -> Self {
        Self {
            max_bytes: 64 << 30,
            max_entries: 1_000_000,
            max_depth: 256,
        }
    }
}

impl IngestLimits {
    /// What is left of these caps after an output used `bytes` and
    /// `entries` (the depth cap holds for every output).
    pub fn less(self, bytes: u64, entries: u64) -> Self {
        Self {
            max_bytes: self.max_bytes.saturating_sub(bytes),
            max_entries: self.max_entries.saturating_sub(entries),
            max_depth: self.max_depth,
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

/// Why an output could not be ingested. Names the path.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("the build did not produce output {0}")]
    Missing(String),
    #[error(
        "output {output}{} is a {kind}; outputs may hold only files, directories and symlinks",
        at(path)
    )]
    Special {
        output: String,
        path: PathBuf,
        kind: &'static str,
    },
    #[error("output {output}{}: {source}{}", at(path), unreadable_hint(source))]
    Io {
        output: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("output {output}{} changed while it was read", at(path))]
    Changed { output: String, path: PathBuf },
    #[error("output {output}{}: {msg}", at(path))]
    Invalid {
        output: String,
        path: PathBuf,
        msg: String,
    },
    #[error(
        "output {output}{}: the build's outputs exceed the limit of {limit} {what}",
        at(path)
    )]
    Limit {
        output: String,
        path: PathBuf,
        what: &'static str,
        limit: u64,
    },
    #[error("output {output}: storing directories: {source}")]
    Store {
        output: String,
        source: Box<StoreError>,
    },
}

/// Where in an output: nothing for the output itself.
fn at(path: &Path) -> String {
    if path.as_os_str().is_empty() {
        String::new()
    } else {
        format!(" at {}", path.display())
    }
}

fn unreadable_hint(e: &std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        " (the executor reads outputs as itself: rootless, that is another user than the build's, so outputs must be readable by others)"
    } else {
        ""
    }
}

impl IngestError {
    /// Whether the build is at fault: it made an output the rules refuse,
    /// or one the executor may not read.
    pub fn is_build_failure(&self) -> bool {
        match self {
            IngestError::Store { .. } => false,
            IngestError::Io { source, .. } => source.kind() == std::io::ErrorKind::PermissionDenied,
            _ => true,
        }
    }
}

fn kind_of(mode: u32) -> &'static str {
    match SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFIFO => "FIFO",
        SFlag::S_IFSOCK => "socket",
        SFlag::S_IFCHR => "character device",
        SFlag::S_IFBLK => "block device",
        _ => "special file",
    }
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
        move |e| IngestError::Io {
            output: self.output.clone(),
            path,
            source: e.into(),
        }
    }

    /// Scans one stream (a name, a target, a file) and records where new
    /// needles were found.
    fn scan_done(&mut self, path: &Path) {
        for i in self.scanner.take_new() {
            self.found.entry(i).or_insert_with(|| path.to_owned());
        }
        self.scanner.reset_stream();
    }

    fn limit(&self, rel: &Path, what: &'static str, limit: u64) -> IngestError {
        IngestError::Limit {
            output: self.output.clone(),
            path: rel.to_owned(),
            what,
            limit,
        }
    }

    fn entry(&mut self, dirfd: &OwnedFd, name: &OsStr, rel: &Path) -> Result<Node, IngestError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(self.limit(rel, "entries", self.limits.max_entries));
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
            return Err(self.limit(rel, "bytes", self.limits.max_bytes));
        }
        self.nar.file_start(executable, size);
        let io = |source| IngestError::Io {
            output: self.output.clone(),
            path: rel.to_owned(),
            source,
        };
        let mut writer = self.rt.block_on(self.blobs.open_write()).map_err(io)?;
        let mut file = std::fs::File::from(fd);
        let mut total = 0u64;
        loop {
            let mut buf =
                BytesMut::zeroed(CHUNK.min(size.saturating_sub(total).max(1) as usize).max(1));
            let n = file.read(&mut buf).map_err(|source| IngestError::Io {
                output: self.output.clone(),
                path: rel.to_owned(),
                source,
            })?;
            if n == 0 {
                break;
            }
            buf.truncate(n);
            total += n as u64;
            for piece in buf.chunks(PIECE) {
                self.nar.file_data(piece);
                self.scanner.update(piece);
            }
            let w = writer.write(buf.freeze());
            self.rt.block_on(w).map_err(|source| IngestError::Io {
                output: self.output.clone(),
                path: rel.to_owned(),
                source,
            })?;
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
        let digest: B3Digest =
            self.rt
                .block_on(writer.close())
                .map_err(|source| IngestError::Io {
                    output: self.output.clone(),
                    path: rel.to_owned(),
                    source,
                })?;
        Ok(Node::File {
            digest,
            size,
            executable,
        })
    }

    fn directory(&mut self, fd: OwnedFd, rel: &Path) -> Result<Node, IngestError> {
        // The walk recurses: the depth cap also bounds its stack.
        if rel.components().count() > self.limits.max_depth as usize {
            return Err(self.limit(rel, "levels of directories", self.limits.max_depth.into()));
        }
        let st = fstat(fd.as_fd()).map_err(self.io(rel))?;
        if st.st_dev != self.dev {
            return Err(IngestError::Invalid {
                output: self.output.clone(),
                path: rel.to_owned(),
                msg: "is on another filesystem (a mount inside the output)".into(),
            });
        }
        let listing = fd.try_clone().map_err(|source| IngestError::Io {
            output: self.output.clone(),
            path: rel.to_owned(),
            source,
        })?;
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

/// Ingests output `output`, found at `rel` below the trusted directory
/// `base` (the overlay's upper dir or a scratch dir), into the stores,
/// scanning it for `needles`.
pub async fn ingest_output(
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
        let io = |path: &Path, e: nix::Error| IngestError::Io {
            output: output_s.clone(),
            path: path.to_owned(),
            source: e.into(),
        };
        let base_fd = nix::fcntl::open(
            &base,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io(&base, e))?;
        let rel_path = Path::new(&rel_s);
        let (parent, name) = match (rel_path.parent(), rel_path.file_name()) {
            (Some(p), Some(n)) => (p, n.to_owned()),
            _ => {
                return Err(IngestError::Invalid {
                    output: output_s.clone(),
                    path: rel_path.to_owned(),
                    msg: "not a path below the output dir".into(),
                });
            }
        };
        let parent_fd = if parent.as_os_str().is_empty() {
            base_fd
        } else {
            let how = OpenHow::new()
                .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
                .resolve(
                    ResolveFlag::RESOLVE_BENEATH
                        | ResolveFlag::RESOLVE_NO_SYMLINKS
                        | ResolveFlag::RESOLVE_NO_XDEV,
                );
            match openat2(base_fd.as_fd(), parent, how) {
                Ok(fd) => fd,
                Err(nix::Error::ENOENT) => return Err(IngestError::Missing(output_s.clone())),
                Err(e) => return Err(io(parent, e)),
            }
        };
        let dev = fstat(parent_fd.as_fd()).map_err(|e| io(parent, e))?.st_dev;
        match fstatat(
            parent_fd.as_fd(),
            name.as_os_str(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Err(nix::Error::ENOENT) => return Err(IngestError::Missing(output_s.clone())),
            Err(e) => return Err(io(rel_path, e)),
            Ok(_) => {}
        }
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
    .map_err(|e| IngestError::Invalid {
        output: output.to_owned(),
        path: PathBuf::new(),
        msg: format!("ingestion task failed: {e}"),
    })??;
    let (node, nar_sha256, nar_size, needles, directories, (bytes, entries)) = walked;
    if !directories.is_empty() {
        let store_err = |e| IngestError::Store {
            output: output.to_owned(),
            source: Box::new(e),
        };
        let mut putter = dirs.put_multiple_start();
        for d in directories {
            putter.put(d).await.map_err(store_err)?;
        }
        putter.close().await.map_err(store_err)?;
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
