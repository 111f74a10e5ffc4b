//! The census of a build's outputs before any of them is read: entries
//! counted as their directories are listed, file sizes summed and nesting
//! checked against the build's [`IngestLimits`], from names and `fstatat`
//! alone. Outputs past a limit are refused before a byte of them is read or
//! stored, and a listing stops at the first entry past the cap: a build
//! that makes ten million files costs the executor neither the time to
//! store a million of them nor the memory to list them all.
//!
//! Also where an output is opened ([`open_output`]): the path to it without
//! following symlinks or crossing mounts, a symlink on the way named as the
//! build's fault.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat, openat2};
use nix::sys::stat::{Mode, SFlag, fstat, fstatat};

use crate::ingest::{IngestError, IngestLimits, OutputAt};
use crate::ingest_error::{Cap, kind_of};

/// An output's parent directory, opened, and the output's name in it.
pub(crate) struct Opened {
    pub parent: OwnedFd,
    pub name: OsString,
    /// The filesystem the output must be on.
    pub dev: u64,
}

/// Opens the parent of output `output` at `rel` below the trusted `base`
/// (`openat2` beneath it, no symlinks, no mounts), and checks the output
/// is there.
pub(crate) fn open_output(base: &Path, rel: &str, output: &str) -> Result<Opened, IngestError> {
    let host = |path: &Path, e: nix::Error| IngestError::Io {
        output: output.to_owned(),
        path: path.to_owned(),
        source: e.into(),
    };
    let base_fd = nix::fcntl::open(
        base,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| host(base, e))?;
    let rel_path = Path::new(rel);
    let (parent, name) = match (rel_path.parent(), rel_path.file_name()) {
        (Some(p), Some(n)) => (p, n.to_owned()),
        _ => {
            return Err(IngestError::Invalid {
                output: output.to_owned(),
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
            Err(nix::Error::ENOENT) => return Err(IngestError::Missing(output.to_owned())),
            Err(nix::Error::ELOOP | nix::Error::ENOTDIR) => {
                return Err(on_the_way(&base_fd, parent, rel, output));
            }
            Err(nix::Error::EXDEV) => {
                return Err(IngestError::Invalid {
                    output: output.to_owned(),
                    path: parent.to_owned(),
                    msg: "a mount is on the way to the output".into(),
                });
            }
            Err(e) => return Err(IngestError::reading(output, parent, e.into())),
        }
    };
    let dev = fstat(parent_fd.as_fd())
        .map_err(|e| host(parent, e))?
        .st_dev;
    match fstatat(
        parent_fd.as_fd(),
        name.as_os_str(),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    ) {
        Err(nix::Error::ENOENT) => return Err(IngestError::Missing(output.to_owned())),
        Err(e) => return Err(IngestError::reading(output, rel_path, e.into())),
        Ok(_) => {}
    }
    Ok(Opened {
        parent: parent_fd,
        name,
        dev,
    })
}

/// What stopped the walk to `parent` (of output `output` at `rel`): the
/// first component that is a symlink, or not a directory.
fn on_the_way(base: &OwnedFd, parent: &Path, rel: &str, output: &str) -> IngestError {
    // The output's path in the sandbox ends with `rel`: the rest is the
    // base dir's own path there (`build/` for a scratch dir `build`).
    let prefix = output.strip_suffix(rel).unwrap_or("");
    let mut so_far = PathBuf::new();
    for c in parent.components() {
        so_far.push(c);
        // Every component before this one is a real directory, so this
        // follows no symlink.
        let Ok(st) = fstatat(base.as_fd(), &so_far, AtFlags::AT_SYMLINK_NOFOLLOW) else {
            break;
        };
        let fmt = st.st_mode & SFlag::S_IFMT.bits();
        if fmt == SFlag::S_IFLNK.bits() {
            return IngestError::SymlinkOnTheWay {
                output: output.to_owned(),
                path: Path::new(prefix).join(&so_far),
            };
        }
        if fmt != SFlag::S_IFDIR.bits() {
            return IngestError::Invalid {
                output: output.to_owned(),
                path: so_far,
                msg: "is not a directory, so the output cannot be below it".into(),
            };
        }
    }
    // Changed since: as if it had never been there.
    IngestError::Missing(output.to_owned())
}

/// Counts output `at` against `limits`; returns the bytes and entries it
/// holds.
pub(crate) async fn census(at: &OutputAt, limits: IngestLimits) -> Result<(u64, u64), IngestError> {
    let at = at.clone();
    let output = at.output.clone();
    tokio::task::spawn_blocking(move || {
        let opened = open_output(&at.base, &at.rel, &at.output)?;
        let mut c = Census {
            output: &at.output,
            dev: opened.dev,
            limits,
            bytes: 0,
            entries: 0,
        };
        c.count(Path::new(""))?;
        c.entry(&opened.parent, &opened.name, Path::new(""))?;
        Ok((c.bytes, c.entries))
    })
    .await
    .map_err(|e| IngestError::Task {
        output,
        msg: e.to_string(),
    })?
}

struct Census<'a> {
    output: &'a str,
    dev: u64,
    limits: IngestLimits,
    bytes: u64,
    entries: u64,
}

impl Census<'_> {
    fn limit(&self, rel: &Path, what: Cap) -> IngestError {
        IngestError::Limit {
            output: self.output.to_owned(),
            path: rel.to_owned(),
            what,
            limit: what.of(&self.limits),
        }
    }

    /// One more entry, at `rel`; past the cap, fails there.
    fn count(&mut self, rel: &Path) -> Result<(), IngestError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(self.limit(rel, Cap::Entries));
        }
        Ok(())
    }

    /// Counts entry `name` of `dirfd`, at `rel` (already counted itself).
    fn entry(&mut self, dirfd: &OwnedFd, name: &OsStr, rel: &Path) -> Result<(), IngestError> {
        if let Some(d) = self.limits.deadline
            && Instant::now() >= d.at
        {
            return Err(IngestError::TimedOut {
                output: self.output.to_owned(),
                path: rel.to_owned(),
                timeout: d.timeout,
            });
        }
        let output = self.output;
        let read = |e: nix::Error| IngestError::reading(output, rel, e.into());
        let st = fstatat(dirfd.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(read)?;
        let fmt = st.st_mode & SFlag::S_IFMT.bits();
        if fmt == SFlag::S_IFLNK.bits() {
            return Ok(());
        }
        if fmt == SFlag::S_IFREG.bits() {
            self.bytes = self.bytes.saturating_add(st.st_size as u64);
            if self.bytes > self.limits.max_bytes {
                return Err(self.limit(rel, Cap::Bytes));
            }
            return Ok(());
        }
        if fmt != SFlag::S_IFDIR.bits() {
            return Err(IngestError::Special {
                output: self.output.to_owned(),
                path: rel.to_owned(),
                kind: kind_of(st.st_mode),
            });
        }
        if rel.components().count() > self.limits.max_depth as usize {
            return Err(self.limit(rel, Cap::Depth));
        }
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = openat(dirfd.as_fd(), name, flags, Mode::empty()).map_err(read)?;
        if fstat(fd.as_fd()).map_err(read)?.st_dev != self.dev {
            return Err(IngestError::Invalid {
                output: self.output.to_owned(),
                path: rel.to_owned(),
                msg: "is on another filesystem (a mount inside the output)".into(),
            });
        }
        let listing = fd
            .try_clone()
            .map_err(|e| IngestError::reading(output, rel, e))?;
        let mut names = Vec::new();
        for e in nix::dir::Dir::from_fd(listing).map_err(read)?.into_iter() {
            let e = e.map_err(read)?;
            let n = OsStr::from_bytes(e.file_name().to_bytes());
            if n == "." || n == ".." {
                continue;
            }
            self.count(&rel.join(n))?;
            names.push(n.to_owned());
        }
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for n in names {
            self.entry(&fd, &n, &rel.join(&n))?;
        }
        Ok(())
    }
}
