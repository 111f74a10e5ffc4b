//! [`Handlers`]: the filesystem's request handlers called directly, without
//! the kernel or a mount — what `lookup`, `getattr`, `open`+`read` answer
//! for a tree of inputs. For benchmarking the handlers' own cost and for
//! testing their logic where FUSE is absent. Passthrough is off here (it
//! needs the kernel), so reads are served by the handlers themselves.

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::Duration;

use fuser::{FileHandle, INodeNo, OpenFlags};
use tvix_oci_castore::blobservice::BlobService;
use tvix_oci_castore::directoryservice::DirectoryService;
use tvix_oci_castore::{Node, PathComponent};

use crate::cache::BlobCache;
use crate::fetch::Fetcher;
use crate::fs::InputsFs;
use crate::inodes::InodeTable;
use crate::stats::Stats;

/// The root directory's inode.
pub const ROOT: u64 = crate::inodes::ROOT_INO;

/// The handlers of a filesystem of `inputs`, unmounted. Errors are errno
/// values, as the kernel would get them.
pub struct Handlers {
    fs: InputsFs,
    _cache_dir: tempfile::TempDir,
}

impl std::fmt::Debug for Handlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Handlers")
    }
}

/// What `getattr` says of an inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub size: u64,
    pub is_dir: bool,
}

impl Handlers {
    /// Handlers over `inputs`; store calls run on `rt`, which must not be
    /// the caller's own runtime thread (they block on it).
    pub fn new(
        blobs: Arc<dyn BlobService>,
        dirs: Arc<dyn DirectoryService>,
        inputs: Vec<(PathComponent, Node)>,
        rt: tokio::runtime::Handle,
    ) -> std::io::Result<Self> {
        let cache_dir = tempfile::Builder::new()
            .prefix("tvix-oci-handlers-cache-")
            .tempdir()?;
        let cache = BlobCache::open(cache_dir.path(), u64::MAX)?;
        let inodes = InodeTable::new(inputs).map_err(std::io::Error::other)?;
        let (fetcher, _read_ahead) = Fetcher::new(
            Arc::new(inodes),
            (blobs, dirs),
            Arc::new(cache),
            Arc::new(Stats::default()),
            tokio_util::sync::CancellationToken::new(),
            (Duration::from_secs(60), Duration::from_secs(30), 64),
            // Every blob checked whole before it is read.
            (u64::MAX, false, rt.clone()),
        );
        let fs = InputsFs::new(Arc::new(fetcher), rt, (0, 0), (false, false), false);
        Ok(Self {
            fs,
            _cache_dir: cache_dir,
        })
    }

    /// `lookup(parent, name)`: the child's attributes.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Attr, i32> {
        let a = self
            .fs
            .do_lookup(INodeNo(parent), name, 0)
            .map_err(|e| e.code())?;
        Ok(Attr {
            ino: a.ino.0,
            size: a.size,
            is_dir: a.kind == fuser::FileType::Directory,
        })
    }

    /// `getattr(ino)`.
    pub fn getattr(&self, ino: u64) -> Result<Attr, i32> {
        let inode = self.fs.inode(INodeNo(ino)).map_err(|e| e.code())?;
        let a = self.fs.attr(ino, &inode);
        Ok(Attr {
            ino,
            size: a.size,
            is_dir: a.kind == fuser::FileType::Directory,
        })
    }

    /// `open`, then `read(offset, size)`, then `release`.
    pub fn read(&self, ino: u64, offset: u64, size: u32) -> Result<Vec<u8>, i32> {
        let no_kernel = |_: &std::fs::File| Err(std::io::Error::other("no kernel"));
        let (fh, _) = self
            .fs
            .do_open(INodeNo(ino), OpenFlags(libc::O_RDONLY), 0, &no_kernel)
            .map_err(|e| e.code())?;
        let data = self
            .fs
            .do_read(INodeNo(ino), FileHandle(fh), offset, size, 0);
        self.fs.do_release(FileHandle(fh));
        data.map_err(|e| e.code())
    }
}
