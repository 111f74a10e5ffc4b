//! The request handlers without the kernel: what lookup, getattr and read
//! answer, and the errno of each failure. Runs anywhere (no FUSE needed).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsStr;
use std::sync::Arc;

use bytes::Bytes;
use tvix_oci_castore::blobservice::{BlobService, MemoryBlobService};
use tvix_oci_castore::directoryservice::{DirectoryService, MemoryDirectoryService};
use tvix_oci_castore::{Directory, Node, PathComponent};
use tvix_oci_fuse::handlers::{Handlers, ROOT};

fn pc(s: &str) -> PathComponent {
    PathComponent::try_from(s).unwrap()
}

#[test]
fn lookup_getattr_read_and_their_errors() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let blobs: Arc<dyn BlobService> = Arc::new(MemoryBlobService::default());
    let dirs: Arc<dyn DirectoryService> = Arc::new(MemoryDirectoryService::default());
    let data = Bytes::from_static(b"hello, handlers\n");
    let digest = rt.block_on(blobs.put(data.clone())).unwrap();
    let file = Node::File {
        digest,
        size: data.len() as u64,
        executable: false,
    };
    let mut dir = Directory::new();
    dir.add(pc("greeting"), file.clone()).unwrap();
    let dir_node = dir.as_node();
    rt.block_on(dirs.put(dir)).unwrap();
    let h = Handlers::new(
        blobs,
        dirs,
        vec![(pc("pkg"), dir_node), (pc("top"), file)],
        rt.handle().clone(),
    )
    .unwrap();

    let pkg = h.lookup(ROOT, OsStr::new("pkg")).unwrap();
    assert!(pkg.is_dir);
    let g = h.lookup(pkg.ino, OsStr::new("greeting")).unwrap();
    assert_eq!((g.is_dir, g.size), (false, data.len() as u64));
    assert_eq!(h.getattr(g.ino).unwrap(), g);
    assert_eq!(h.read(g.ino, 0, 4096).unwrap(), data);
    assert_eq!(h.read(g.ino, 7, 8).unwrap(), b"handlers");
    assert_eq!(h.read(g.ino, 1000, 8).unwrap(), b"");

    assert_eq!(h.lookup(ROOT, OsStr::new("nope")), Err(libc::ENOENT));
    let top = h.lookup(ROOT, OsStr::new("top")).unwrap();
    assert_eq!(h.lookup(top.ino, OsStr::new("x")), Err(libc::ENOTDIR));
    assert_eq!(h.getattr(999_999), Err(libc::ENOENT));
    assert_eq!(h.read(pkg.ino, 0, 1), Err(libc::EISDIR));
}
