//! [`BundleLayout`]: every path of a bundle from one place, where each
//! requested output is found on the host after the build, and
//! [`BundleLayout::write_skeleton`], the only IO in this crate.
//!
//! ```text
//! <bundle>/config.json
//!          root/              read-only root: etc/{passwd,group,hosts}, mount points
//!          inputs/            the FUSE mount of the inputs (the executor's)
//!          outputs/upper      overlay upper layer: what the build writes to inputs_dir
//!          outputs/work       overlay work dir
//!          store/             the overlay, bound at inputs_dir
//!          scratch/<name>     one per other scratch path
//!          tmp/               the build's /tmp (on disk, not RAM)
//!          ro/<n>             the executor's read-only clones of the allowed available_ro_paths
//! ```

use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::BuildRequest;
use crate::path::CleanPath;
use crate::spec::{BUILD_GID, BUILD_UID, SpecError, SpecOptions, make_spec, to_config_json};

/// The bundle directory name of a scratch path: stable and collision-free
/// (`%` and `/` are percent-encoded, so `nix/store` is `nix%2Fstore`).
pub fn scratch_name(p: &CleanPath) -> String {
    p.as_str().replace('%', "%25").replace('/', "%2F")
}

/// The paths of one bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundleLayout {
    dir: PathBuf,
}

/// Why a bundle skeleton could not be written. Names the path.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("writing config.json: {0}")]
    Json(#[from] serde_json::Error),
}

fn at(path: &Path) -> impl FnOnce(io::Error) -> BundleError + '_ {
    move |source| BundleError::Io {
        path: path.to_owned(),
        source,
    }
}

impl BundleLayout {
    /// Relative names inside a bundle, as the spec refers to them.
    pub const ROOTFS: &'static str = "root";
    pub const INPUTS: &'static str = "inputs";
    pub const STORE: &'static str = "store";
    pub const SCRATCH: &'static str = "scratch";
    pub const UPPER: &'static str = "outputs/upper";
    pub const WORK: &'static str = "outputs/work";
    pub const TMP: &'static str = "tmp";
    /// The parent of the read-only clones of `available_ro_paths`.
    pub const RO: &'static str = "ro";

    /// The layout of a bundle at `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn config(&self) -> PathBuf {
        self.dir.join("config.json")
    }
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join(Self::ROOTFS)
    }
    /// Where the FUSE inputs are mounted.
    pub fn inputs(&self) -> PathBuf {
        self.dir.join(Self::INPUTS)
    }
    pub fn upper(&self) -> PathBuf {
        self.dir.join(Self::UPPER)
    }
    pub fn work(&self) -> PathBuf {
        self.dir.join(Self::WORK)
    }
    /// Where the overlay is mounted.
    pub fn store(&self) -> PathBuf {
        self.dir.join(Self::STORE)
    }
    /// The host dir behind the build's `/tmp`.
    pub fn tmp(&self) -> PathBuf {
        self.dir.join(Self::TMP)
    }
    /// Where the executor attaches the read-only clone of the `n`th of
    /// the request's `available_ro_paths`; [`Self::ro_source`] is how the
    /// spec names it.
    pub fn ro(&self, n: usize) -> PathBuf {
        self.dir.join(Self::ro_source(n))
    }
    /// [`Self::ro`] relative to the bundle.
    pub fn ro_source(n: usize) -> PathBuf {
        Path::new(Self::RO).join(n.to_string())
    }
    /// The host dir behind scratch path `p`.
    pub fn scratch(&self, p: &CleanPath) -> PathBuf {
        self.dir.join(Self::SCRATCH).join(scratch_name(p))
    }

    /// Where `output` (one of `req`'s outputs) is on the host after the
    /// build, as a directory of the bundle the build cannot replace and
    /// the path below it: the overlay's upper layer when under a writable
    /// inputs dir, else its scratch dir. `None` when the build could not
    /// have written it (under a read-only inputs dir, or under no scratch
    /// path): it is missing.
    pub fn output_location<'a>(
        &self,
        req: &BuildRequest,
        output: &'a CleanPath,
    ) -> Option<(PathBuf, &'a str)> {
        if req.inputs_dir_is_scratch()
            && let Some(rest) = output.strip_prefix(req.inputs_dir())
        {
            return Some((self.upper(), rest));
        }
        req.scratch_paths()
            .iter()
            .find_map(|s| output.strip_prefix(s).map(|rest| (self.scratch(s), rest)))
    }

    /// Writes the skeleton of a bundle for `req`: the bundle dir (0700,
    /// created if missing), `config.json`, the root skeleton
    /// (`etc/passwd`, `etc/group`, `etc/hosts`, mount points), the mount
    /// points of the inputs and the overlay, the scratch dirs and the
    /// overlay upper dir (owned by the build user), and the additional
    /// files. The root skeleton goes to `opts.rootfs` when set. As root
    /// with a user namespace, the root skeleton belongs to the container's
    /// root (its host id), so runc, running as it, can make its mount
    /// points; inside, it is root's as without one. Mounting is the
    /// executor's job.
    pub fn write_skeleton(
        &self,
        req: &BuildRequest,
        opts: &SpecOptions,
    ) -> Result<(), BundleError> {
        let spec = make_spec(req, opts)?;
        let owner = opts
            .build_owner_on_host()
            .ok_or(SpecError::RootlessMappings)?;
        let root_owner = opts.root_on_host().ok_or(SpecError::RootlessMappings)?;
        // The dirs the build writes, with Nix's modes: `/build` (and every
        // other scratch dir) the build user's, 0700; `/tmp` root's, 1777;
        // the store dir (the overlay's upper dir gives the overlay's root
        // its owner and mode) root's and the build group's, 1775, so the
        // build creates outputs but cannot delete or rename an input
        // (sticky). Rootless, where the build user is a sub-id no one may
        // chown to, they are ours (the container's root) with the build
        // user's rights given to all (only the container reaches into the
        // 0700 bundle): 0777 and 1777.
        let dir = |p: &Path, owner: (u32, u32), mode: u32| {
            mkdir(p)?;
            if !opts.rootless {
                chown_if_needed(p, owner)?;
            }
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).map_err(at(p))
        };
        let (scratch_mode, store_mode) = if opts.rootless {
            (0o777, 0o1777)
        } else {
            (0o700, 0o1775)
        };
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(&self.dir)
            .map_err(at(&self.dir))?;
        let root = opts.rootfs.clone().unwrap_or_else(|| self.rootfs());
        for d in [
            root.clone(),
            self.inputs(),
            self.store(),
            self.work(),
            self.dir.join(Self::SCRATCH),
        ] {
            mkdir(&d)?;
        }
        dir(&self.upper(), (root_owner.0, owner.1), store_mode)?;
        dir(&self.tmp(), root_owner, 0o1777)?;
        for s in req.scratch_paths() {
            if s != req.inputs_dir() {
                dir(&self.scratch(s), owner, scratch_mode)?;
            }
        }

        mkdir(&root.join("etc"))?;
        let home = format!("/{}", req.working_dir());
        write_file(
            &root.join("etc/passwd"),
            format!(
                "root:x:0:0:Build root:{home}:/noshell\nnixbld:x:{BUILD_UID}:{BUILD_GID}:Build user:{home}:/noshell\nnobody:x:65534:65534:Nobody:/:/noshell\n"
            )
            .as_bytes(),
        )?;
        write_file(
            &root.join("etc/group"),
            format!("root:x:0:\nnixbld:!:{BUILD_GID}:\nnogroup:x:65534:\n").as_bytes(),
        )?;
        write_file(
            &root.join("etc/hosts"),
            b"127.0.0.1 localhost\n::1 localhost\n",
        )?;
        // Mount points, so runc need not create them in the read-only root.
        for m in spec.mounts().iter().flatten() {
            let rel = m.destination().strip_prefix("/").unwrap_or(m.destination());
            let first = rel.components().next().map(|c| c.as_os_str().to_owned());
            if first.is_some_and(|f| f == "proc" || f == "sys" || f == "dev") {
                continue; // the runtime's own
            }
            let target = root.join(rel);
            // A relative source is in the bundle (a read-only clone of a
            // file, say): looked at there.
            let is_file = m.source().as_ref().is_some_and(|s| {
                if s.is_absolute() {
                    !s.is_dir()
                } else {
                    let s = self.dir.join(s);
                    s.exists() && !s.is_dir()
                }
            });
            if is_file {
                if let Some(parent) = target.parent() {
                    mkdir(parent)?;
                }
                if !target.exists() {
                    write_file(&target, b"")?;
                }
            } else if m.typ().as_deref() == Some("tmpfs") {
                // runc gives a tmpfs the mode of the dir it covers.
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .recursive(true)
                    .create(&target)
                    .map_err(at(&target))?;
            } else {
                mkdir(&target)?;
            }
        }
        for (path, contents) in req.additional_files() {
            let host = match req
                .scratch_paths()
                .iter()
                .find_map(|s| path.strip_prefix(s).map(|r| (s, r)))
            {
                Some((s, rest)) => self.scratch(s).join(rest),
                None => root.join(path.as_str()),
            };
            if let Some(parent) = host.parent() {
                mkdir(parent)?;
            }
            write_file(&host, contents)?;
        }
        if opts.user_namespace.is_some() && !opts.rootless {
            let container_root = opts.root_on_host().ok_or(SpecError::RootlessMappings)?;
            chown_tree(&root, container_root)?;
        }
        write_file(&self.config(), to_config_json(&spec)?.as_bytes())?;
        Ok(())
    }
}

fn mkdir(p: &Path) -> Result<(), BundleError> {
    std::fs::DirBuilder::new()
        .mode(0o755)
        .recursive(true)
        .create(p)
        .map_err(at(p))
}

/// Gives `p` to `(uid, gid)`.
fn chown_if_needed(p: &Path, (uid, gid): (u32, u32)) -> Result<(), BundleError> {
    // Only chown when it changes something: unprivileged users can still
    // write bundles whose build user is themselves.
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(p).map_err(at(p))?;
    if (meta.uid(), meta.gid()) != (uid, gid) {
        std::os::unix::fs::chown(p, Some(uid), Some(gid)).map_err(at(p))?;
    }
    Ok(())
}

/// Gives the tree at `p` (written by us, no symlinks followed) to
/// `(uid, gid)`.
fn chown_tree(p: &Path, (uid, gid): (u32, u32)) -> Result<(), BundleError> {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).map_err(at(p))?;
    if std::fs::symlink_metadata(p).map_err(at(p))?.is_dir() {
        for e in std::fs::read_dir(p).map_err(at(p))? {
            chown_tree(&e.map_err(at(p))?.path(), (uid, gid))?;
        }
    }
    Ok(())
}

/// Writes a file, never through a symlink planted in the bundle.
fn write_file(p: &Path, data: &[u8]) -> Result<(), BundleError> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(p)
        .map_err(at(p))?;
    f.write_all(data).map_err(at(p))
}
