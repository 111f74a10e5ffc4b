//! The filesystem on a real FUSE mount, against the same tree on disk.
//! Needs /dev/fuse and root (CI has both); skips saying why elsewhere.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tvix_oci_castore::blobservice::{BlobService, MemoryBlobService};
use tvix_oci_castore::directoryservice::{DirectoryService, MemoryDirectoryService};
use tvix_oci_castore::import::{ImportOptions, import_path};
use tvix_oci_castore::{B3Digest, Node, PathComponent, open_blob_service, open_directory_service};
use tvix_oci_fuse::{BlobCache, MountOptions, mount, mountinfo};
use tvix_oci_testkit::{Fault, FaultyBlobs};

macro_rules! need_fuse {
    () => {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter("tvix_oci_fuse=debug")
            .try_init();
        tvix_oci_testkit::require!(root, fuse);
    };
}

/// The fixture: nested dirs, empty files, a 64 MiB file, executables,
/// symlinks (dangling, absolute), names with spaces and non-UTF-8 bytes.
fn fixture(root: &Path) {
    std::fs::create_dir_all(root.join("a/b/c")).unwrap();
    std::fs::create_dir_all(root.join("empty dir")).unwrap();
    std::fs::write(root.join("a/empty"), b"").unwrap();
    std::fs::write(root.join("a/b/c/deep.txt"), b"deep down\n").unwrap();
    let big: Vec<u8> = (0..64u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(root.join("big.bin"), &big).unwrap();
    std::fs::write(root.join("with space.txt"), b"spaced").unwrap();
    std::fs::write(
        root.join(OsStr::from_bytes(b"bytes-\xff\xfe")),
        b"not utf-8 name",
    )
    .unwrap();
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .or_else(|_| std::fs::copy("/bin/true", root.join("bin/busybox")))
        .unwrap();
    std::fs::set_permissions(
        root.join("bin/busybox"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    std::os::unix::fs::symlink("/nix/store/nowhere", root.join("absolute")).unwrap();
    std::os::unix::fs::symlink("missing", root.join("dangling")).unwrap();
}

/// What a tree looks like: path -> type, size, exec bit, digest or target.
fn describe(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
    {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(root).unwrap().to_owned();
        let m = std::fs::symlink_metadata(e.path()).unwrap();
        let d = if m.is_symlink() {
            format!("link {:?}", std::fs::read_link(e.path()).unwrap())
        } else if m.is_file() {
            let data = std::fs::read(e.path()).unwrap();
            format!(
                "file {} x={} {}",
                m.len(),
                m.mode() & 0o100 != 0,
                B3Digest::of(&data)
            )
        } else {
            "dir".into()
        };
        out.insert(rel, d);
    }
    out
}

struct Fixture {
    _tmp: tempfile::TempDir,
    src: PathBuf,
    mnt: PathBuf,
    blobs: Arc<dyn BlobService>,
    dirs: Arc<dyn DirectoryService>,
    node: Node,
}

async fn setup(local: bool) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fixture(&src);
    let (blobs, dirs): (Arc<dyn BlobService>, Arc<dyn DirectoryService>) = if local {
        let p = tmp.path().display();
        (
            open_blob_service(&format!("objects://{p}/blobs"))
                .await
                .unwrap(),
            open_directory_service(&format!("redb://{p}/dirs.redb"))
                .await
                .unwrap(),
        )
    } else {
        (
            Arc::new(MemoryBlobService::default()),
            Arc::new(MemoryDirectoryService::default()),
        )
    };
    let node = import_path(blobs.clone(), &*dirs, &src, &ImportOptions::default())
        .await
        .unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    Fixture {
        _tmp: tmp,
        src,
        mnt,
        blobs,
        dirs,
        node,
    }
}

impl Fixture {
    /// The fixture mounted as input "tree" with default options.
    fn mount_tree(&self) -> tvix_oci_fuse::InputsMount {
        self.mount_tree_with(&MountOptions::default())
    }

    /// The fixture mounted as input "tree".
    fn mount_tree_with(&self, opts: &MountOptions) -> tvix_oci_fuse::InputsMount {
        let inputs = input("tree", &self.node);
        mount(
            self.blobs.clone(),
            self.dirs.clone(),
            inputs,
            &self.mnt,
            opts,
        )
        .unwrap()
    }
}

/// Files opened through this process, and passed through where local.
fn passthrough() -> MountOptions {
    MountOptions {
        no_open: false,
        ..MountOptions::default()
    }
}

fn input(name: &str, node: &Node) -> Vec<(PathComponent, Node)> {
    vec![(PathComponent::try_from(name).unwrap(), node.clone())]
}

fn no_fuse_mount_at(p: &Path) -> bool {
    !mountinfo::mounts()
        .unwrap()
        .iter()
        .any(|m| m.mount_point == p)
}

fn random_reads(a: &Path, b: &Path) {
    let (mut fa, mut fb) = (
        std::fs::File::open(a).unwrap(),
        std::fs::File::open(b).unwrap(),
    );
    let len = fa.metadata().unwrap().len();
    let mut x = 12345u64;
    for _ in 0..200 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let off = x % len.max(1);
        let n = ((x >> 40) % 300_000) as usize;
        let (mut ba, mut bb) = (vec![0u8; n], vec![0u8; n]);
        fa.seek(SeekFrom::Start(off)).unwrap();
        fb.seek(SeekFrom::Start(off)).unwrap();
        let ra = fa.read(&mut ba).unwrap();
        let rb = fb.read(&mut bb).unwrap();
        assert_eq!(ra, rb, "read size at {off}");
        assert_eq!(ba[..ra], bb[..rb], "bytes at {off}");
    }
}

async fn walk_matches_disk(local: bool, opts: MountOptions) {
    let f = setup(local).await;
    let m = f.mount_tree_with(&opts);
    let mnt_tree = f.mnt.join("tree");
    let (src, mt) = (f.src.clone(), mnt_tree.clone());
    tokio::task::spawn_blocking(move || {
        assert_eq!(describe(&src), describe(&mt));
        random_reads(&src.join("big.bin"), &mt.join("big.bin"));
        // Modes: 0555 executable, 0444 not, 0555 dirs.
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&mt.join("bin/busybox")), 0o555);
        assert_eq!(mode(&mt.join("a/empty")), 0o444);
        assert_eq!(mode(&mt.join("a")), 0o555);
        assert_eq!(
            std::fs::read_link(mt.join("absolute")).unwrap(),
            PathBuf::from("/nix/store/nowhere")
        );
        // statfs answers, read-only, with the usual name length.
        let root = std::ffi::CString::new(mt.as_os_str().as_bytes()).unwrap();
        let mut sv: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(root.as_ptr(), &mut sv) }, 0);
        assert_eq!(sv.f_namemax, 255);
        assert_ne!(sv.f_flag & libc::ST_RDONLY, 0);
        // xattrs: none.
        let c = std::ffi::CString::new(mt.join("a/empty").as_os_str().as_bytes()).unwrap();
        let n = unsafe { libc::listxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
        assert_eq!(n, 0);
        let name = std::ffi::CString::new("user.x").unwrap();
        let n = unsafe { libc::getxattr(c.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
        assert_eq!(n, -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::ENODATA)
        );
    })
    .await
    .unwrap();
    let path = m.mountpoint().to_owned();
    drop(m);
    assert!(
        no_fuse_mount_at(&path),
        "mount left behind at {}",
        path.display()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn walk_matches_disk_local_store() {
    need_fuse!();
    walk_matches_disk(true, MountOptions::default()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn walk_matches_disk_local_store_passthrough() {
    need_fuse!();
    walk_matches_disk(true, passthrough()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn walk_matches_disk_memory_store() {
    need_fuse!();
    walk_matches_disk(false, MountOptions::default()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn executables_run_and_mmap() {
    need_fuse!();
    let f = setup(true).await;
    let m = f.mount_tree();
    let bb = f.mnt.join("tree/bin/busybox");
    let out = tokio::process::Command::new(&bb)
        .arg("echo")
        .arg("ran from fuse")
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, b"ran from fuse\n");
    let file = std::fs::File::open(f.mnt.join("tree/big.bin")).unwrap();
    let len = 64usize << 20;
    // SAFETY: a read-only private mapping of an open file, unmapped below.
    unsafe {
        use std::os::fd::AsRawFd;
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            file.as_raw_fd(),
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        let s = std::slice::from_raw_parts(p as *const u8, len);
        assert_eq!(
            B3Digest::of(s),
            B3Digest::of(&std::fs::read(f.src.join("big.bin")).unwrap())
        );
        libc::munmap(p, len);
    }
    drop(file);
    // Running it while it is open (as a shell runs a second applet of
    // itself): the second open shares the first one's backing file.
    let held = std::fs::File::open(&bb).unwrap();
    let out = tokio::process::Command::new(&bb)
        .arg("true")
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        std::fs::read(&bb).unwrap(),
        std::fs::read(f.src.join("bin/busybox")).unwrap()
    );
    drop(held);
    m.unmount().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn sixteen_threads_read_the_right_bytes() {
    need_fuse!();
    // Ranges from the memory store, and files opened in the kernel or
    // passed through from the local one.
    for (local, opts) in [
        (false, MountOptions::default()),
        (true, MountOptions::default()),
        (true, passthrough()),
    ] {
        sixteen_threads(local, opts).await;
    }
}

async fn sixteen_threads(local: bool, opts: MountOptions) {
    let f = setup(local).await;
    let m = f.mount_tree_with(&opts);
    let files = ["big.bin", "a/b/c/deep.txt", "with space.txt", "bin/busybox"];
    let want: Vec<B3Digest> = files
        .iter()
        .map(|p| B3Digest::of(&std::fs::read(f.src.join(p)).unwrap()))
        .collect();
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let p = f.mnt.join("tree").join(files[i % files.len()]);
            let w = want[i % files.len()];
            std::thread::spawn(move || {
                for _ in 0..3 {
                    assert_eq!(
                        B3Digest::of(&std::fs::read(&p).unwrap()),
                        w,
                        "{}",
                        p.display()
                    );
                }
            })
        })
        .collect();
    for t in threads {
        tokio::task::spawn_blocking(move || t.join().unwrap())
            .await
            .unwrap();
    }
    m.unmount().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_fail_with_erofs() {
    need_fuse!();
    let f = setup(true).await;
    let m = f.mount_tree();
    let t = f.mnt.join("tree");
    let erofs =
        |r: std::io::Result<()>| assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EROFS));
    erofs(std::fs::write(t.join("new"), b"x"));
    erofs(std::fs::write(t.join("a/empty"), b"x"));
    erofs(std::fs::create_dir(t.join("d")));
    erofs(std::fs::remove_file(t.join("a/empty")));
    erofs(std::fs::rename(t.join("a/empty"), t.join("a/moved")));
    erofs(std::fs::set_permissions(
        t.join("a/empty"),
        std::fs::Permissions::from_mode(0o777),
    ));
    erofs(std::os::unix::fs::symlink("x", t.join("l")));
    m.unmount().unwrap();
}

/// A build that syncs or closes what it read (many tools do) sees success,
/// every time (the daemon answers ENOSYS once, which the kernel takes as
/// success and remembers).
#[tokio::test(flavor = "multi_thread")]
async fn fsync_and_close_of_inputs_succeed() {
    need_fuse!();
    let f = setup(true).await;
    let m = f.mount_tree();
    let t = f.mnt.join("tree");
    for _ in 0..2 {
        let file = std::fs::File::open(t.join("a/empty")).unwrap();
        file.sync_all().unwrap();
        file.sync_data().unwrap();
        // SAFETY: the fd is ours, closed once (forgotten below).
        let fd = std::os::fd::IntoRawFd::into_raw_fd(file);
        assert_eq!(unsafe { libc::close(fd) }, 0, "close of an input file");
        std::fs::File::open(t.join("a"))
            .unwrap()
            .sync_all()
            .unwrap();
    }
    m.unmount().unwrap();
}

/// A name that is not there is ENOENT every time, and the daemon is asked
/// once: the kernel keeps the negative entry (the inputs never change).
#[tokio::test(flavor = "multi_thread")]
async fn missing_names_are_asked_once() {
    need_fuse!();
    let f = setup(true).await;
    let m = f.mount_tree();
    let t = f.mnt.join("tree");
    let before = m.stats().negative_lookups;
    for _ in 0..5 {
        for name in ["nope", "a/nope", "a/empty/below-a-file"] {
            let e = std::fs::symlink_metadata(t.join(name)).unwrap_err();
            let want = match name {
                "a/empty/below-a-file" => libc::ENOTDIR,
                _ => libc::ENOENT,
            };
            assert_eq!(e.raw_os_error(), Some(want), "{name}");
        }
    }
    assert_eq!(
        m.stats().negative_lookups - before,
        2,
        "each missing name asked once"
    );
    // A name that is there is still found.
    assert!(std::fs::symlink_metadata(t.join("a/empty")).is_ok());
    m.unmount().unwrap();
}

/// By default the kernel opens files without asking: no open reaches the
/// daemon, and a file read once is read again from the kernel's cache
/// (nothing more served here), the right bytes each time.
#[tokio::test(flavor = "multi_thread")]
async fn files_are_opened_in_the_kernel_and_stay_cached() {
    need_fuse!();
    let f = setup(true).await;
    let m = f.mount_tree();
    let (t, src) = (f.mnt.join("tree"), f.src.clone());
    let read_all = move || {
        for name in ["big.bin", "a/b/c/deep.txt", "bin/busybox"] {
            assert_eq!(
                std::fs::read(t.join(name)).unwrap(),
                std::fs::read(src.join(name)).unwrap(),
                "{name}"
            );
        }
    };
    tokio::task::spawn_blocking(read_all).await.unwrap();
    let first = m.stats();
    assert!(first.bytes_served >= 64 << 20, "{first:?}");
    let deep = f.mnt.join("tree/a/b/c/deep.txt");
    tokio::task::spawn_blocking(move || {
        for _ in 0..100 {
            assert_eq!(std::fs::read(&deep).unwrap(), b"deep down\n");
        }
    })
    .await
    .unwrap();
    let second = m.stats();
    assert_eq!((second.opens, second.backing_files), (0, 0), "{second:?}");
    // 10 bytes a read if each came here; a few re-reads are another
    // program dropping the page cache meanwhile.
    assert!(
        second.bytes_served - first.bytes_served <= 50,
        "read again from the kernel's cache: {second:?}"
    );
    m.unmount().unwrap();
}

/// A file opened again reuses the backing file its first open registered
/// (no new one per open), and every open reads the right bytes, at once and
/// in turn.
#[tokio::test(flavor = "multi_thread")]
async fn reopened_files_reuse_their_backing_file() {
    need_fuse!();
    let f = setup(true).await;
    let m = f.mount_tree_with(&passthrough());
    assert!(m.stats().passthrough, "this kernel has FUSE passthrough");
    let (t, src) = (f.mnt.join("tree"), f.src.clone());
    let before = m.stats();
    tokio::task::spawn_blocking(move || {
        for _ in 0..20 {
            for name in ["big.bin", "a/b/c/deep.txt", "with space.txt"] {
                assert_eq!(
                    std::fs::read(t.join(name)).unwrap(),
                    std::fs::read(src.join(name)).unwrap(),
                    "{name}"
                );
            }
        }
        // Two opens of one file at once, and a third while they are open.
        let a = std::fs::File::open(t.join("big.bin")).unwrap();
        let b = std::fs::File::open(t.join("big.bin")).unwrap();
        assert_eq!(std::fs::read(t.join("big.bin")).unwrap().len(), 64 << 20);
        drop((a, b));
    })
    .await
    .unwrap();
    let after = m.stats();
    assert!(after.opens - before.opens >= 62, "{after:?}");
    // One per file (3), unless the kernel dropped its inodes meanwhile
    // (another program's drop_caches); one per open (63) without keeping.
    let registered = after.backing_files - before.backing_files;
    assert!((3..16).contains(&registered), "{after:?}");
    m.unmount().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn busy_mountpoint_and_bad_inputs_are_refused() {
    need_fuse!();
    let f = setup(false).await;
    std::fs::write(f.mnt.join("something"), b"").unwrap();
    let err = mount(
        f.blobs.clone(),
        f.dirs.clone(),
        input("tree", &f.node),
        &f.mnt,
        &MountOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("is not empty"), "{err}");
    std::fs::remove_file(f.mnt.join("something")).unwrap();
    let dup = [input("x", &f.node), input("x", &f.node)].concat();
    let err = mount(
        f.blobs.clone(),
        f.dirs.clone(),
        dup,
        &f.mnt,
        &MountOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("\"x\""), "{err}");
    assert!(no_fuse_mount_at(&f.mnt.canonicalize().unwrap()));
}

async fn serve(
    blobs: Arc<dyn BlobService>,
    dirs: Arc<dyn DirectoryService>,
) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("grpc+http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_routes(tvix_oci_castore::grpc::castore_routes(blobs, dirs))
            .serve_with_incoming(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            )
            .await
            .unwrap();
    });
    (url, task)
}

#[tokio::test(flavor = "multi_thread")]
async fn remote_blobs_are_checked_cached_and_corruption_is_eio() {
    need_fuse!();
    let f = setup(false).await;
    // A good remote store: reads come from the cache, fetched once.
    let (url, server) = serve(f.blobs.clone(), f.dirs.clone()).await;
    let remote_b = open_blob_service(&url).await.unwrap();
    let remote_d = open_directory_service(&url).await.unwrap();
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(BlobCache::open(cache_dir.path(), 1 << 30).unwrap());
    let opts = MountOptions {
        cache: Some(cache.clone()),
        ..Default::default()
    };
    let m = mount(
        remote_b.clone(),
        remote_d.clone(),
        input("tree", &f.node),
        &f.mnt,
        &opts,
    )
    .unwrap();
    let deep = f.mnt.join("tree/a/b/c/deep.txt");
    assert_eq!(tokio::fs::read(&deep).await.unwrap(), b"deep down\n");
    let digest = B3Digest::of(b"deep down\n");
    assert!(cache.path(&digest).exists(), "fetched blob is in the cache");
    assert_eq!(m.stats().blobs_fetched, 1);
    m.unmount().unwrap();
    server.abort();

    // A corrupting remote store: EIO, and nothing cached; the blob is
    // fetched for a read (files opened in the kernel) or for an open
    // (passthrough).
    let corrupt: Arc<dyn BlobService> = Arc::new(
        FaultyBlobs::new(Arc::new(MemoryBlobService::default())).reads(Fault::Corrupt, None),
    );
    corrupt
        .put(bytes::Bytes::from_static(b"precious"))
        .await
        .unwrap();
    let (url, server) = serve(corrupt, f.dirs.clone()).await;
    let remote_b = open_blob_service(&url).await.unwrap();
    let node = Node::File {
        digest: B3Digest::of(b"precious"),
        size: 8,
        executable: false,
    };
    for no_open in [true, false] {
        let opts = MountOptions {
            no_open,
            ..opts.clone()
        };
        let inputs = input("p", &node);
        let m = mount(remote_b.clone(), f.dirs.clone(), inputs, &f.mnt, &opts).unwrap();
        let err = tokio::fs::read(f.mnt.join("p")).await.unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
        assert!(!cache.path(&B3Digest::of(b"precious")).exists());
        let trouble = m.store_trouble(std::time::Duration::from_secs(60)).unwrap();
        assert!(
            trouble.contains(&B3Digest::of(b"precious").to_hex()),
            "{trouble}"
        );
        m.unmount().unwrap();
    }
    server.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_blob_is_eio_not_a_hang() {
    need_fuse!();
    let f = setup(false).await;
    let node = Node::File {
        digest: B3Digest::of(b"never stored"),
        size: 12,
        executable: false,
    };
    let m = mount(
        f.blobs.clone(),
        f.dirs.clone(),
        input("gone", &node),
        &f.mnt,
        &MountOptions::default(),
    )
    .unwrap();
    // The memory store reads ranges directly: the open works, the read fails.
    let err = tokio::fs::read(f.mnt.join("gone")).await.unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    m.unmount().unwrap();
}

/// Run by `stale_mount_of_a_killed_process_is_cleaned_up` in a child
/// process, which it then kills.
#[test]
#[ignore = "helper run in a child process"]
fn child_mounts_and_waits() {
    let Some(path) = std::env::var_os("TVIX_OCI_CHILD_MOUNT") else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _g = rt.enter();
    let node = Node::Symlink {
        target: "x".try_into().unwrap(),
    };
    let m = mount(
        Arc::new(MemoryBlobService::default()),
        Arc::new(MemoryDirectoryService::default()),
        input("l", &node),
        Path::new(&path),
        &MountOptions::default(),
    )
    .unwrap();
    println!("MOUNTED");
    std::thread::sleep(std::time::Duration::from_secs(60));
    drop(m);
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_mount_of_a_killed_process_is_cleaned_up() {
    need_fuse!();
    let f = setup(false).await;
    let mnt = f.mnt.canonicalize().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_mounts_and_waits",
            "--ignored",
            "--nocapture",
        ])
        .env("TVIX_OCI_CHILD_MOUNT", &mnt)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while no_fuse_mount_at(&mnt) {
        assert!(std::time::Instant::now() < deadline, "child never mounted");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // The daemon is dead; the mount stays: a new mount detaches it.
    assert!(!no_fuse_mount_at(&mnt));
    let m = f.mount_tree();
    assert_eq!(
        tokio::fs::read(mnt.join("tree/with space.txt"))
            .await
            .unwrap(),
        b"spaced"
    );
    m.unmount().unwrap();
    assert!(
        no_fuse_mount_at(&mnt),
        "{:?}",
        mountinfo::mounts_below(&mnt)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn abort_unblocks_readers_and_unmount_leaves_nothing() {
    need_fuse!();
    let f = setup(false).await;
    let m = f.mount_tree();
    let held = std::fs::File::open(f.mnt.join("tree/with space.txt")).unwrap();
    assert!(m.abort(), "no connection to abort");
    let err = std::fs::read(f.mnt.join("tree/a/b/c/deep.txt")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN), "{err}");
    // A file still open keeps the mount busy: unmount detaches it anyway.
    let path = m.mountpoint().to_owned();
    m.unmount().unwrap();
    drop(held);
    assert!(no_fuse_mount_at(&path));
}

fn mount_overlay(
    lower: &Path,
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), tvix_oci_sys::mount::MountError> {
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    let flags = tvix_oci_sys::mount::MsFlags::empty();
    tvix_oci_sys::mount::mount("overlay", target, "overlay", flags, Some(&opts))
}

#[tokio::test(flavor = "multi_thread")]
async fn passthrough_works_below_an_overlay() {
    need_fuse!();
    let f = setup(true).await;
    let m = f.mount_tree_with(&passthrough());
    assert!(
        m.stats().passthrough,
        "this kernel has FUSE passthrough; it must be on"
    );
    let base = f.mnt.parent().unwrap().to_owned();
    let (upper, work, merged) = (base.join("upper"), base.join("work"), base.join("merged"));
    for d in [&upper, &work, &merged] {
        std::fs::create_dir(d).unwrap();
    }
    mount_overlay(&f.mnt, &upper, &work, &merged).unwrap();
    let (src, mg) = (f.src.clone(), merged.clone());
    let res = tokio::task::spawn_blocking(move || {
        // Reads through the overlay reach the passthrough files.
        assert_eq!(describe(&src), describe(&mg.join("tree")));
        let out = std::process::Command::new(mg.join("tree/bin/busybox"))
            .args(["echo", "via overlay"])
            .output()
            .unwrap();
        assert_eq!(out.stdout, b"via overlay\n");
        // Writes go to the upper layer.
        std::fs::write(mg.join("tree/new-file"), b"x").unwrap();
    })
    .await;
    assert!(
        !tvix_oci_sys::mount::unmount_or_detach(&merged).unwrap(),
        "the overlay was busy"
    );
    res.unwrap();
    assert!(upper.join("tree/new-file").exists());
    m.unmount().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn prefetch_fills_the_cache_in_the_background() {
    need_fuse!();
    let f = setup(false).await;
    let (url, server) = serve(f.blobs.clone(), f.dirs.clone()).await;
    let rb = open_blob_service(&url).await.unwrap();
    let rd = open_directory_service(&url).await.unwrap();
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(BlobCache::open(cache_dir.path(), 1 << 30).unwrap());
    let opts = MountOptions {
        cache: Some(cache.clone()),
        prefetch: vec![PathBuf::from("tree/a")],
        ..Default::default()
    };
    let m = mount(rb, rd, input("tree", &f.node), &f.mnt, &opts).unwrap();
    let deep = B3Digest::of(b"deep down\n");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !cache.path(&deep).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "prefetch never fetched a/b/c/deep.txt"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Only what is below the path: the big file elsewhere is not fetched.
    let big = B3Digest::of(&std::fs::read(f.src.join("big.bin")).unwrap());
    assert!(!cache.path(&big).exists());
    m.unmount().unwrap();
    server.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_store_does_not_hold_up_the_unmount() {
    need_fuse!();
    let f = setup(false).await;
    let node = Node::File {
        digest: B3Digest::of(b"x"),
        size: 1,
        executable: false,
    };
    let opts = MountOptions {
        fetch_timeout: std::time::Duration::from_secs(120),
        ..Default::default()
    };
    let m = mount(
        Arc::new(FaultyBlobs::new(Arc::new(MemoryBlobService::default())).reads(Fault::Hang, None)),
        f.dirs.clone(),
        input("stuck", &node),
        &f.mnt,
        &opts,
    )
    .unwrap();
    // A reader gets stuck in the store, and is killed (as a build is at
    // its timeout): the mount is idle again, but a FUSE worker still waits
    // on the store.
    let mut reader = std::process::Command::new("cat")
        .arg(f.mnt.join("stuck"))
        .spawn()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    reader.kill().unwrap();
    reader.wait().unwrap();
    // Unmounting does not wait for that worker's store call to time out.
    let t = std::time::Instant::now();
    let mp = m.mountpoint().to_owned();
    tokio::task::spawn_blocking(move || m.unmount())
        .await
        .unwrap()
        .unwrap();
    assert!(
        t.elapsed() < std::time::Duration::from_secs(10),
        "unmount waited {:?}",
        t.elapsed()
    );
    assert!(no_fuse_mount_at(&mp));
}
