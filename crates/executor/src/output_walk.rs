//! The executor's producer for the ingestion core: a build output walked
//! from a directory handle, in NAR order.
//!
//! The path to the output is opened with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV)` ([`open_output`]), every entry
//! below with `O_NOFOLLOW` (files also `O_NONBLOCK`) and its type checked
//! on the open handle, so a symlink planted by the build (to `/`, to
//! `/etc/shadow`) is sent as a symlink and never followed, and nothing
//! outside the output is read. The limits are checked again as the walk
//! goes (the census checked them first) and the deadline before each
//! entry and each read: nothing past a cap or the time is read.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use nix::fcntl::{AtFlags, OFlag, openat, readlinkat};
use nix::sys::stat::{Mode, SFlag, fstat, fstatat};
use tokio::sync::mpsc;
use tvix_oci_castore::import::{Entry, FileMeta, FileSource};

use crate::census::{Opened, open_output};
use crate::ingest::{Deadline, IngestError, IngestLimits, OutputAt};
use crate::ingest_error::{Cap, kind_of};

/// Where the entries go.
pub(crate) type Tx = mpsc::Sender<Result<Entry<IngestError>, IngestError>>;

/// Sends the entries of output `at` into `tx` in NAR order, checking
/// `limits` as it goes; stops at the first error (sent) or when the
/// consumer is gone. Returns the bytes of file contents and the entries
/// it sent. Blocking: run on a blocking thread.
pub(crate) fn walk(at: &OutputAt, limits: IngestLimits, tx: &Tx) -> (u64, u64) {
    let mut w = Walk {
        output: at.output.clone(),
        dev: 0,
        limits,
        bytes: 0,
        entries: 0,
        tx,
    };
    let res = open_output(&at.base, &at.rel, &at.output).and_then(|o: Opened| {
        w.dev = o.dev;
        // Paths are relative to the output; its own name is not part of
        // its NAR.
        w.entry(&o.parent, &o.name, Path::new(""))
    });
    if let Err(e) = res {
        // Fails only when the consumer is gone, having failed itself.
        let _ = tx.blocking_send(Err(e));
    }
    (w.bytes, w.entries)
}

/// Fails once `deadline` has passed, naming `rel` of `output`.
fn in_time(output: &str, rel: &Path, deadline: Option<Deadline>) -> Result<(), IngestError> {
    match deadline {
        Some(d) if Instant::now() >= d.at => Err(IngestError::TimedOut {
            output: output.to_owned(),
            path: rel.to_owned(),
            timeout: d.timeout,
        }),
        _ => Ok(()),
    }
}

struct Walk<'a> {
    output: String,
    /// The filesystem the output is on.
    dev: u64,
    limits: IngestLimits,
    bytes: u64,
    entries: u64,
    tx: &'a Tx,
}

impl Walk<'_> {
    fn io(&self, path: &Path) -> impl FnOnce(nix::Error) -> IngestError + '_ {
        let path = path.to_owned();
        move |e| IngestError::reading(&self.output, &path, e.into())
    }

    fn limit(&self, rel: &Path, what: Cap) -> IngestError {
        IngestError::Limit {
            output: self.output.clone(),
            path: rel.to_owned(),
            what,
            limit: what.of(&self.limits),
        }
    }

    fn send(&self, entry: Entry<IngestError>) -> Result<(), IngestError> {
        self.tx
            .blocking_send(Ok(entry))
            .map_err(|_| IngestError::Task {
                output: self.output.clone(),
                msg: "the ingestion stopped".into(),
            })
    }

    /// Sends entry `name` of `dirfd`, at `rel`, and all below it.
    fn entry(&mut self, dirfd: &OwnedFd, name: &OsStr, rel: &Path) -> Result<(), IngestError> {
        in_time(&self.output, rel, self.limits.deadline)?;
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(self.limit(rel, Cap::Entries));
        }
        let st =
            fstatat(dirfd.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(self.io(rel))?;
        let fmt = st.st_mode & SFlag::S_IFMT.bits();
        if fmt == SFlag::S_IFLNK.bits() {
            let target = readlinkat(dirfd.as_fd(), name).map_err(self.io(rel))?;
            return self.send(Entry::Symlink {
                path: rel.to_owned(),
                target: target.into_encoded_bytes(),
            });
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
        Err(self.special(rel, st.st_mode))
    }

    fn special(&self, rel: &Path, mode: u32) -> IngestError {
        IngestError::Special {
            output: self.output.clone(),
            path: rel.to_owned(),
            kind: kind_of(mode),
        }
    }

    /// Sends the regular file open as `fd`, at `rel`.
    fn file(&mut self, fd: OwnedFd, rel: &Path) -> Result<(), IngestError> {
        let st = fstat(fd.as_fd()).map_err(self.io(rel))?;
        if st.st_mode & SFlag::S_IFMT.bits() != SFlag::S_IFREG.bits() {
            return Err(self.special(rel, st.st_mode));
        }
        let meta = FileMeta {
            executable: st.st_mode & 0o100 != 0,
            size: st.st_size as u64,
        };
        self.bytes = self.bytes.saturating_add(meta.size);
        if self.bytes > self.limits.max_bytes {
            return Err(self.limit(rel, Cap::Bytes));
        }
        let source = Box::new(OutputFile {
            file: File::from(fd),
            meta,
            output: self.output.clone(),
            rel: rel.to_owned(),
            deadline: self.limits.deadline,
        });
        self.send(Entry::File {
            path: rel.to_owned(),
            source,
        })
    }

    /// Sends the directory open as `fd`, at `rel`, its entries sorted by
    /// name, and its end.
    fn directory(&mut self, fd: OwnedFd, rel: &Path) -> Result<(), IngestError> {
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
        self.send(Entry::Directory {
            path: rel.to_owned(),
        })?;
        for name in names {
            self.entry(&fd, &name, &rel.join(&name))?;
        }
        self.send(Entry::DirectoryEnd {
            path: rel.to_owned(),
        })
    }
}

/// An output's regular file, open, read by the core's upload; the
/// deadline checked before each read.
struct OutputFile {
    file: File,
    meta: FileMeta,
    output: String,
    rel: PathBuf,
    deadline: Option<Deadline>,
}

impl FileSource for OutputFile {
    type Error = IngestError;

    fn open(&mut self) -> Result<FileMeta, IngestError> {
        Ok(self.meta)
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<usize, IngestError> {
        in_time(&self.output, &self.rel, self.deadline)?;
        self.file
            .read(buf)
            .map_err(|e| IngestError::reading(&self.output, &self.rel, e))
    }

    fn rewind(&mut self) -> Result<bool, IngestError> {
        in_time(&self.output, &self.rel, self.deadline)?;
        self.file
            .seek(SeekFrom::Start(0))
            .map(|_| true)
            .map_err(|e| IngestError::reading(&self.output, &self.rel, e))
    }
}
