//! The overlay that makes the inputs dir writable: lower = the FUSE inputs,
//! upper = `outputs/upper`. An [`Overlay`] unmounts on drop.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use tracing::warn;

/// A mounted overlay.
#[derive(Debug)]
pub struct Overlay {
    target: Option<PathBuf>,
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

impl Overlay {
    /// Mounts `lower` + `upper` (with `work`) at `target`.
    pub fn mount(lower: &Path, upper: &Path, work: &Path, target: &Path) -> io::Result<Self> {
        // userxattr-free, metacopy off: upper-layer contents are plain files
        // we ingest; index and redirect_dir off keep the upper layer simple.
        let opts = format!(
            "lowerdir={},upperdir={},workdir={},index=off,metacopy=off,redirect_dir=off",
            lower.display(),
            upper.display(),
            work.display()
        );
        let data =
            CString::new(opts).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let (src, typ, dst) = (c"overlay", c"overlay", cstr(target)?);
        let flags = libc::MS_NOSUID | libc::MS_NODEV;
        // SAFETY: valid NUL-terminated strings.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                dst.as_ptr(),
                typ.as_ptr(),
                flags,
                data.as_ptr().cast(),
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("mounting overlay at {}: {e}", target.display()),
            ));
        }
        Ok(Self {
            target: Some(target.to_owned()),
        })
    }

    /// Unmounts (lazily if busy).
    pub fn unmount(mut self) -> io::Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> io::Result<()> {
        let Some(t) = self.target.take() else {
            return Ok(());
        };
        let c = cstr(&t)?;
        // SAFETY: a valid path.
        if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
            return Ok(());
        }
        let first = io::Error::last_os_error();
        // SAFETY: a valid path.
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
            warn!(path = %t.display(), "overlay busy ({first}); detached");
            return Ok(());
        }
        Err(io::Error::new(
            first.kind(),
            format!("unmounting overlay at {}: {first}", t.display()),
        ))
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            warn!("{e}");
        }
    }
}
