//! The kernel view against the FUSE view of the same inputs, on real
//! mounts: the same names, types, modes, owners, times, sizes, bytes and
//! link targets; read-only; nothing left mounted; and each reason it is
//! refused (the caller then uses FUSE). Needs root and /dev/fuse (CI has
//! both); skips saying why elsewhere.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tvix_oci_castore::blobservice::{BlobService, MemoryBlobService};
use tvix_oci_castore::directoryservice::{DirectoryService, MemoryDirectoryService};
use tvix_oci_castore::import::{ImportOptions, import_path};
use tvix_oci_castore::{B3Digest, Node, PathComponent, open_blob_service};
use tvix_oci_fuse::{MountOptions, ViewCache, ViewUnavailable, mount, mountinfo};

macro_rules! need_root {
    () => {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter("tvix_oci_fuse=debug")
            .try_init();
        tvix_oci_testkit::require!(root, fuse);
    };
}

/// Nested and empty dirs, empty and executable files, symlinks (relative,
/// absolute, dangling), odd names, a directory met twice.
fn fixture(root: &Path) {
    std::fs::create_dir_all(root.join("a/b/c")).unwrap();
    std::fs::create_dir_all(root.join("empty dir")).unwrap();
    std::fs::write(root.join("a/empty"), b"").unwrap();
    std::fs::write(root.join("a/b/c/deep.txt"), b"deep down\n").unwrap();
    std::fs::write(root.join("a/b/c/again.txt"), b"deep down\n").unwrap();
    std::fs::write(root.join("big.bin"), vec![7u8; 3 << 20]).unwrap();
    std::fs::write(root.join(OsStr::from_bytes(b"bytes-\xff sp")), b"odd").unwrap();
    std::fs::write(root.join("tool"), b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(root.join("tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("tool", root.join("rel")).unwrap();
    std::os::unix::fs::symlink("/nix/store/nowhere", root.join("absolute")).unwrap();
    std::os::unix::fs::symlink("missing", root.join("dangling")).unwrap();
    // The same directory twice (one tree, written twice in the view).
    std::fs::create_dir_all(root.join("twin1/x")).unwrap();
    std::fs::create_dir_all(root.join("twin2/x")).unwrap();
    std::fs::write(root.join("twin1/x/f"), b"same").unwrap();
    std::fs::write(root.join("twin2/x/f"), b"same").unwrap();
}

/// Everything a build could see of a tree, but inode numbers and link
/// counts: path -> kind, mode, owner, mtime, size, bytes or target.
fn describe(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
    {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(root).unwrap().to_owned();
        let m = std::fs::symlink_metadata(e.path()).unwrap();
        let what = if m.is_symlink() {
            format!("link {:?}", std::fs::read_link(e.path()).unwrap())
        } else if m.is_file() {
            let data = std::fs::read(e.path()).unwrap();
            format!("file {}", B3Digest::of(&data))
        } else {
            "dir".to_owned()
        };
        let mode = if m.is_symlink() { 0 } else { m.mode() & 0o7777 };
        out.insert(
            rel,
            format!(
                "{what} mode={mode:o} uid={} gid={} mtime={} size={}",
                m.uid(),
                m.gid(),
                m.mtime(),
                if m.is_dir() { 0 } else { m.len() }
            ),
        );
    }
    out
}

struct Stores {
    _dir: tempfile::TempDir,
    blobs: Arc<dyn BlobService>,
    dirs: Arc<dyn DirectoryService>,
    inputs: Vec<(PathComponent, Node)>,
    cache: PathBuf,
    scratch: PathBuf,
}

/// The fixture imported into an embedded `objects://` blob store, and
/// offered as three inputs: the tree, one of its files, one symlink.
async fn stores() -> Stores {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fixture(&src);
    let url = format!("objects://{}", dir.path().join("blobs").display());
    let blobs = open_blob_service(&url).await.unwrap();
    let dirs: Arc<dyn DirectoryService> = Arc::new(MemoryDirectoryService::default());
    let tree = import_path(blobs.clone(), &*dirs, &src, &ImportOptions::default())
        .await
        .unwrap();
    let file = import_path(
        blobs.clone(),
        &*dirs,
        &src.join("tool"),
        &ImportOptions::default(),
    )
    .await
    .unwrap();
    let name = |n: &str| PathComponent::try_from(n).unwrap();
    let link = Node::Symlink {
        target: b"tree/tool".as_slice().try_into().unwrap(),
    };
    let scratch = dir.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    Stores {
        blobs,
        dirs,
        inputs: vec![
            (name("tree"), tree),
            (name("file"), file),
            (name("link"), link),
        ],
        cache: dir.path().join("view-cache"),
        scratch,
        _dir: dir,
    }
}

/// A new, empty upper layer and work dir for a writable view.
fn upper_and_work(s: &Stores) -> (PathBuf, PathBuf) {
    let rw = tempfile::tempdir_in(&s.scratch).unwrap().keep();
    let (upper, work) = (rw.join("upper"), rw.join("work"));
    std::fs::create_dir_all(&upper).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    (upper, work)
}

/// The fixture's inputs planned in a cache opened at `s.cache`.
async fn plan_inputs(s: &Stores) -> tvix_oci_fuse::ViewPlan {
    let cache = ViewCache::open(&s.cache).unwrap();
    cache
        .plan(s.blobs.clone(), &*s.dirs, &s.inputs)
        .await
        .unwrap()
}

fn mounted_below(p: &Path) -> usize {
    mountinfo::mounts_below(p).unwrap().len()
}

#[tokio::test(flavor = "multi_thread")]
async fn shows_what_fuse_shows_read_only_and_leaves_nothing() {
    need_root!();
    let s = stores().await;
    let (fuse_at, view_at) = (s.scratch.join("fuse"), s.scratch.join("view"));
    std::fs::create_dir_all(&fuse_at).unwrap();
    std::fs::create_dir_all(&view_at).unwrap();
    let fuse = mount(
        s.blobs.clone(),
        s.dirs.clone(),
        s.inputs.clone(),
        &fuse_at,
        &MountOptions::default(),
    )
    .unwrap();
    let plan = plan_inputs(&s).await;
    let view = plan.mount(&view_at).unwrap();

    let want = describe(&fuse_at);
    assert!(want.len() > 15, "{want:#?}");
    assert_eq!(
        want,
        describe(&view_at),
        "the kernel view differs from FUSE's"
    );
    // Every mount of it is read-only (the top and each tree).
    let below = mountinfo::mounts_below(&s.scratch).unwrap();
    assert_eq!(below.len(), 3, "fuse, the view's top, its tree: {below:?}");
    // The exec bit and mode are as FUSE shows them, and nothing of the
    // overlay's own xattrs shows through.
    let tool = view_at.join("tree/tool");
    assert_eq!(std::fs::metadata(&tool).unwrap().mode() & 0o7777, 0o555);
    assert_eq!(xattr::list(&tool).unwrap().count(), 0);
    assert_eq!(
        std::fs::read(view_at.join("link")).unwrap(),
        b"#!/bin/sh\necho hi\n"
    );
    // Read-only, as the inputs are.
    let err = std::fs::write(view_at.join("tree/new"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    let err = std::fs::write(view_at.join("new"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    assert!(!view_at.join("t").exists());
    view.unmount().unwrap();

    // The writable form (one overlay over the trees, the caller's upper
    // layer) shows the same and hides the cache's trees' dir; every write
    // stays in the upper layer, and an input directory renamed is copied
    // there (`rename` is EXDEV), never left as a redirect into the cache.
    let (upper, work) = upper_and_work(&s);
    let view = plan.mount_writable(&view_at, &upper, &work).unwrap();
    // Its root is the upper layer's own (the caller's to make).
    let below_root = |mut d: BTreeMap<PathBuf, String>| {
        d.remove(Path::new(""));
        d
    };
    assert_eq!(
        below_root(want.clone()),
        below_root(describe(&view_at)),
        "the writable view differs from FUSE's"
    );
    assert!(!view_at.join("t").exists());
    std::fs::write(view_at.join("tree/new"), b"x").unwrap();
    let err = std::fs::rename(view_at.join("tree/a"), view_at.join("moved")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EXDEV), "{err}");
    let mv = std::process::Command::new("mv")
        .arg(view_at.join("tree/a"))
        .arg(view_at.join("moved"))
        .status()
        .unwrap();
    assert!(mv.success());
    view.unmount().unwrap();
    assert_eq!(std::fs::read(upper.join("tree/new")).unwrap(), b"x");
    let moved = upper.join("moved");
    assert_eq!(
        std::fs::read(moved.join("b/c/deep.txt")).unwrap(),
        b"deep down\n"
    );
    assert!(
        xattr::get(&moved, "trusted.overlay.redirect")
            .unwrap()
            .is_none()
    );
    let tree = tree_dir(&s);
    assert_eq!(
        std::fs::read(tree.join("a/b/c/deep.txt")).unwrap(),
        b"deep down\n"
    );
    assert!(!tree.join("new").exists());

    fuse.unmount().unwrap();
    assert_eq!(mounted_below(&s.scratch), 0);
    // One tree cached, by the tree's digest and size; nothing
    // half-written.
    let trees: Vec<_> = std::fs::read_dir(s.cache.join("layer/t"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(trees, vec![tree_dir(&s)]);
    // The top directories went with their views.
    assert_eq!(std::fs::read_dir(s.cache.join("tmp")).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cached_tree_is_reused_and_an_input_named_t_hides_nothing_it_should_not() {
    need_root!();
    let mut s = stores().await;
    plan_inputs(&s).await;
    let tree = tree_dir(&s);
    let ino = std::fs::metadata(&tree).unwrap().ino();
    // A second plan (a new cache handle, as a restarted builder) writes
    // nothing: the tree is the same inode.
    let again = ViewCache::open(&s.cache).unwrap();
    s.inputs
        .push((PathComponent::try_from("t").unwrap(), s.inputs[0].1.clone()));
    let plan = again
        .plan(s.blobs.clone(), &*s.dirs, &s.inputs)
        .await
        .unwrap();
    assert_eq!(std::fs::metadata(&tree).unwrap().ino(), ino);
    let at = s.scratch.join("view");
    std::fs::create_dir_all(&at).unwrap();
    // In both forms: the writable one hides the cache's own `t`.
    for writable in [false, true] {
        let view = match writable {
            true => {
                let (upper, work) = upper_and_work(&s);
                plan.mount_writable(&at, &upper, &work).unwrap()
            }
            false => plan.mount(&at).unwrap(),
        };
        assert_eq!(
            std::fs::read(at.join("t/a/b/c/deep.txt")).unwrap(),
            b"deep down\n"
        );
        let names: Vec<_> = std::fs::read_dir(&at)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(names, ["file", "link", "t", "tree"], "writable: {writable}");
        // `t` is the input, not the cache's trees' dir.
        assert_eq!(
            describe(&at.join("t")),
            describe(&at.join("tree")),
            "writable: {writable}"
        );
        drop(view);
        assert_eq!(mounted_below(&s.scratch), 0);
    }
}

/// A directory of one file, and `levels` directories above it each naming
/// the one below twice (`a`, `b`): stored, its digest and node.
async fn doubling(s: &Stores, levels: usize) -> (B3Digest, Node) {
    let blob = s
        .blobs
        .put(bytes::Bytes::from_static(b"leaf"))
        .await
        .unwrap();
    let mut below = tvix_oci_castore::Directory::new();
    let leaf = Node::File {
        digest: blob,
        size: 4,
        executable: false,
    };
    below
        .add(PathComponent::try_from("f").unwrap(), leaf)
        .unwrap();
    let mut put = s.dirs.put_multiple_start();
    put.put(below.clone()).await.unwrap();
    for _ in 0..levels {
        let mut d = tvix_oci_castore::Directory::new();
        for n in ["a", "b"] {
            d.add(PathComponent::try_from(n).unwrap(), below.as_node())
                .unwrap();
        }
        put.put(d.clone()).await.unwrap();
        below = d;
    }
    (put.close().await.unwrap(), below.as_node())
}

#[tokio::test(flavor = "multi_thread")]
async fn is_refused_naming_why() {
    need_root!();
    let s = stores().await;
    // A store without local files.
    let mem: Arc<dyn BlobService> = Arc::new(MemoryBlobService::default());
    let cache = ViewCache::open(&s.cache).unwrap();
    let e = cache.plan(mem, &*s.dirs, &s.inputs).await.unwrap_err();
    assert!(matches!(e, ViewUnavailable::NoLocalFiles), "{e}");

    // A tree larger than the cap: nothing of it stays in the cache.
    let small = ViewCache::open(&s.cache).unwrap().with_max_entries(5);
    let e = small
        .plan(s.blobs.clone(), &*s.dirs, &s.inputs)
        .await
        .unwrap_err();
    assert!(matches!(e, ViewUnavailable::TooLarge { max: 5, .. }), "{e}");
    assert!(e.to_string().contains("more than 5 entries"), "{e}");
    assert_eq!(
        std::fs::read_dir(s.cache.join("layer/t")).unwrap().count(),
        0
    );
    assert_eq!(std::fs::read_dir(s.cache.join("tmp")).unwrap().count(), 0);

    // A small closure expanding to 2^40 entries (each level names the one
    // below twice): refused from its sizes, before anything is written.
    let (bomb, node) = doubling(&s, 40).await;
    let bombs = vec![(PathComponent::try_from("bomb").unwrap(), node)];
    let e = cache
        .plan(s.blobs.clone(), &*s.dirs, &bombs)
        .await
        .unwrap_err();
    assert!(
        matches!(e, ViewUnavailable::TooLarge { root, .. } if root == bomb),
        "{e}"
    );
    assert_eq!(std::fs::read_dir(s.cache.join("tmp")).unwrap().count(), 0);

    // 18 levels naming the one below twice: 262,142 entries from 35
    // distinct ones, under the cap but refused as repetitive.
    let (doubled, node) = doubling(&s, 17).await;
    let doubles = vec![(PathComponent::try_from("doubled").unwrap(), node)];
    let e = cache
        .plan(s.blobs.clone(), &*s.dirs, &doubles)
        .await
        .unwrap_err();
    assert!(
        matches!(e, ViewUnavailable::Repetitive { root, distinct: 35, .. } if root == doubled),
        "{e}"
    );
    assert_eq!(std::fs::read_dir(s.cache.join("tmp")).unwrap().count(), 0);

    // The tree's node with a wrong size: refused (FUSE refuses it at its
    // first look), and no tree made under that size.
    let Node::Directory { digest, size } = s.inputs[0].1.clone() else {
        panic!()
    };
    let lying = vec![(
        PathComponent::try_from("lying").unwrap(),
        Node::Directory {
            digest,
            size: size + 2,
        },
    )];
    let e = cache
        .plan(s.blobs.clone(), &*s.dirs, &lying)
        .await
        .unwrap_err();
    assert!(
        matches!(e, ViewUnavailable::NodeSize { claimed, actual, .. } if claimed == size + 2 && actual == size),
        "{e}"
    );
    assert_eq!(
        std::fs::read_dir(s.cache.join("layer/t")).unwrap().count(),
        0
    );

    // A file whose blob is not in the store, named by its digest.
    let absent = B3Digest::of(b"not stored");
    let lone = vec![(
        PathComponent::try_from("lone").unwrap(),
        Node::File {
            digest: absent,
            size: 10,
            executable: false,
        },
    )];
    let e = cache
        .plan(s.blobs.clone(), &*s.dirs, &lone)
        .await
        .unwrap_err();
    assert!(e.to_string().contains(&absent.to_string()), "{e}");

    // A blob whose store file is a symlink (to a file of the right size):
    // never followed.
    let secret = s.scratch.join("secret");
    std::fs::write(&secret, b"0123456789").unwrap();
    let planted = B3Digest::of(b"planted");
    let planted_path = s.blobs.local_root().unwrap().join(&planted.to_hex()[..2]);
    std::fs::create_dir_all(&planted_path).unwrap();
    std::os::unix::fs::symlink(&secret, planted_path.join(planted.to_hex())).unwrap();
    let file = |digest, size, name: &str| {
        let node = Node::File {
            digest,
            size,
            executable: false,
        };
        vec![(PathComponent::try_from(name).unwrap(), node)]
    };
    let e = cache
        .plan(s.blobs.clone(), &*s.dirs, &file(planted, 10, "planted"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, ViewUnavailable::MissingBlob { digest, .. } if digest == planted),
        "{e}"
    );
    assert_eq!(std::fs::metadata(&secret).unwrap().mode() & 0o777, 0o644);

    // A store file another account owns whose bytes were changed: copied
    // only if it hashes to its digest.
    let odd = store_file(&s, b"odd");
    std::fs::set_permissions(&odd, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&odd, b"bad").unwrap();
    std::os::unix::fs::chown(&odd, Some(1000), Some(1000)).unwrap();
    let e = cache
        .plan(
            s.blobs.clone(),
            &*s.dirs,
            &file(B3Digest::of(b"odd"), 3, "odd"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, ViewUnavailable::CorruptBlob { digest } if digest == B3Digest::of(b"odd")),
        "{e}"
    );

    // A directory not in the directory store.
    let missing = vec![(
        PathComponent::try_from("gone").unwrap(),
        Node::Directory {
            digest: absent,
            size: 1,
        },
    )];
    let e = cache
        .plan(s.blobs.clone(), &*s.dirs, &missing)
        .await
        .unwrap_err();
    assert!(
        matches!(e, ViewUnavailable::MissingDirectory(d) if d == absent),
        "{e}"
    );
}

/// Where the cache keeps the fixture tree's metadata tree: by its digest
/// and size.
fn tree_dir(s: &Stores) -> PathBuf {
    let Node::Directory { digest, size } = &s.inputs[0].1 else {
        panic!()
    };
    s.cache
        .join("layer/t")
        .join(format!("{}.{size}", digest.to_hex()))
}

/// The store's file of the blob of `bytes`.
fn store_file(s: &Stores, bytes: &[u8]) -> PathBuf {
    s.blobs.local_path(&B3Digest::of(bytes)).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn files_are_the_stores_own_but_executables_and_foreign_ones_are_copies() {
    need_root!();
    let s = stores().await;
    let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
    // A blob file from before the store wrote mtime 1 (and made writable
    // since): it gets the view's mode and mtime, its bytes unchanged.
    let deep = store_file(&s, b"deep down\n");
    std::fs::set_permissions(&deep, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::File::options()
        .append(true)
        .open(&deep)
        .unwrap()
        .set_modified(std::time::SystemTime::now())
        .unwrap();
    // A blob file another account owns: never changed, copied.
    let odd = store_file(&s, b"odd");
    std::os::unix::fs::chown(&odd, Some(1000), Some(1000)).unwrap();

    plan_inputs(&s).await;
    let tree = tree_dir(&s);
    let m = std::fs::metadata(&deep).unwrap();
    assert_eq!((m.mode() & 0o7777, m.mtime()), (0o444, 1));
    assert_eq!(std::fs::read(&deep).unwrap(), b"deep down\n");
    // Both of its entries are the store's file.
    assert_eq!(ino(&tree.join("a/b/c/deep.txt")), ino(&deep));
    assert_eq!(ino(&tree.join("a/b/c/again.txt")), ino(&deep));
    assert_eq!(
        ino(&tree.join("big.bin")),
        ino(&store_file(&s, &[7u8; 3 << 20]))
    );
    // The executable is a 0555 copy, the store's file left 0444.
    let tool = store_file(&s, b"#!/bin/sh\necho hi\n");
    assert_ne!(ino(&tree.join("tool")), ino(&tool));
    assert_eq!(std::fs::metadata(&tool).unwrap().mode() & 0o7777, 0o444);
    // The foreign one is a copy; the store's file keeps its owner.
    let odd_entry = tree.join(OsStr::from_bytes(b"bytes-\xff sp"));
    assert_ne!(ino(&odd_entry), ino(&odd));
    assert_eq!(std::fs::metadata(&odd).unwrap().uid(), 1000);
    let copies: std::collections::BTreeSet<_> = std::fs::read_dir(s.cache.join("data"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let hex = |b: &[u8]| B3Digest::of(b).to_hex();
    assert_eq!(
        copies,
        [format!("{}.x", hex(b"#!/bin/sh\necho hi\n")), hex(b"odd")].into()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blob_met_more_often_than_its_file_system_links_is_copied_past_that() {
    need_root!();
    let s = stores().await;
    // One directory of 65,100 entries of one blob: ext4 allows 65,000
    // links to a file.
    let blob = s.blobs.put(bytes::Bytes::from_static(b"x")).await.unwrap();
    let mut d = tvix_oci_castore::Directory::new();
    for i in 0..65_100 {
        let f = Node::File {
            digest: blob,
            size: 1,
            executable: false,
        };
        d.add(PathComponent::try_from(format!("{i}").as_str()).unwrap(), f)
            .unwrap();
    }
    let node = d.as_node();
    let mut put = s.dirs.put_multiple_start();
    put.put(d).await.unwrap();
    let Node::Directory { digest, size } = node.clone() else {
        panic!()
    };
    put.close().await.unwrap();
    let cache = ViewCache::open(&s.cache).unwrap();
    let inputs = vec![(PathComponent::try_from("many").unwrap(), node)];
    cache
        .plan(s.blobs.clone(), &*s.dirs, &inputs)
        .await
        .unwrap();
    let tree = s
        .cache
        .join("layer/t")
        .join(format!("{}.{size}", digest.to_hex()));
    let store = s.blobs.local_path(&blob).unwrap();
    let store_ino = std::fs::metadata(&store).unwrap().ino();
    let mut inodes = std::collections::BTreeMap::<u64, u64>::new();
    for i in 0..65_100 {
        let p = tree.join(i.to_string());
        assert_eq!(std::fs::read(&p).unwrap(), b"x", "{}", p.display());
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!((m.mode() & 0o7777, m.mtime()), (0o444, 1));
        *inodes.entry(m.ino()).or_default() += 1;
    }
    if inodes.len() == 1 {
        println!("skipped: this file system took 65,100 links to one file, so no copy was made");
        return;
    }
    // The store's file up to the limit, then one shared copy for the rest
    // (not a copy per entry).
    assert_eq!(inodes.len(), 2, "{inodes:?}");
    let copy_entries: u64 = inodes
        .iter()
        .filter(|(i, _)| **i != store_ino)
        .map(|(_, n)| n)
        .sum();
    assert_eq!(copy_entries, 65_100 - inodes[&store_ino]);
    let copy = s.cache.join("data").join(blob.to_hex());
    assert_eq!(std::fs::read(&copy).unwrap(), b"x");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_build_cannot_change_the_stores_files_through_either_form() {
    need_root!();
    let s = stores().await;
    let plan = plan_inputs(&s).await;
    let store = store_file(&s, b"deep down\n");
    let before = |p: &Path| {
        let m = std::fs::metadata(p).unwrap();
        (
            std::fs::read(p).unwrap(),
            m.mode(),
            m.mtime(),
            m.ino(),
            m.uid(),
        )
    };
    let was = before(&store);
    let at = s.scratch.join("view");
    std::fs::create_dir_all(&at).unwrap();
    let input = at.join("tree/a/b/c/deep.txt");
    let times = std::fs::FileTimes::new().set_modified(std::time::SystemTime::now());

    // Read-only: every change is EROFS, as root too.
    let view = plan.mount(&at).unwrap();
    let rofs = |r: std::io::Result<()>| {
        let e = r.unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    };
    rofs(std::fs::set_permissions(
        &input,
        std::fs::Permissions::from_mode(0o777),
    ));
    rofs(std::os::unix::fs::chown(&input, Some(1), Some(1)));
    rofs(std::fs::File::options().append(true).open(&input).map(drop));
    rofs(std::fs::hard_link(&input, at.join("tree/link")));
    let e = std::fs::hard_link(&input, s.scratch.join("out-link")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EXDEV), "{e}");
    drop(view);

    // Writable: root's changes go to the upper layer (copied up), never
    // to the store's file.
    let (upper, work) = upper_and_work(&s);
    let view = plan.mount_writable(&at, &upper, &work).unwrap();
    std::fs::set_permissions(&input, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::os::unix::fs::chown(&input, Some(1), Some(1)).unwrap();
    let f = std::fs::File::options().append(true).open(&input).unwrap();
    f.set_times(times).unwrap();
    std::io::Write::write_all(&mut &f, b"more").unwrap();
    drop(f);
    std::fs::File::options()
        .write(true)
        .open(at.join("tree/a/b/c/again.txt"))
        .unwrap()
        .set_len(1)
        .unwrap();
    let e = std::fs::hard_link(at.join("tree/big.bin"), s.scratch.join("out-link")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EXDEV), "{e}");
    assert_eq!(std::fs::read(&input).unwrap(), b"deep down\nmore");
    drop(view);
    assert_eq!(before(&store), was, "the store's blob file changed");
    assert_eq!(
        std::fs::read(upper.join("tree/a/b/c/deep.txt")).unwrap(),
        b"deep down\nmore"
    );
    assert_eq!(mounted_below(&s.scratch), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn many_input_directories_are_one_overlay_not_a_mount_each() {
    need_root!();
    let s = stores().await;
    let n = tvix_oci_fuse::MAX_CLONED_TREES + 1;
    let inputs: Vec<_> = (0..n)
        .map(|i| {
            let name = PathComponent::try_from(format!("in{i}").as_str()).unwrap();
            (name, s.inputs[0].1.clone())
        })
        .collect();
    let cache = ViewCache::open(&s.cache).unwrap();
    let plan = cache
        .plan(s.blobs.clone(), &*s.dirs, &inputs)
        .await
        .unwrap();
    let at = s.scratch.join("view");
    std::fs::create_dir_all(&at).unwrap();
    let view = plan.mount(&at).unwrap();
    assert_eq!(mounted_below(&s.scratch), 1);
    assert_eq!(
        std::fs::read_dir(&at).unwrap().count(),
        n,
        "the trees' dir is hidden"
    );
    assert_eq!(
        std::fs::read(at.join(format!("in{}/a/b/c/deep.txt", n - 1))).unwrap(),
        b"deep down\n"
    );
    let e = std::fs::write(at.join("in0/new"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    drop(view);
    assert_eq!(mounted_below(&s.scratch), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cache_elsewhere_than_the_store_is_refused() {
    need_root!();
    let s = stores().await;
    let shm = Path::new("/dev/shm");
    let dev = |p: &Path| std::fs::metadata(p).unwrap().dev();
    if !shm.is_dir() || dev(shm) == dev(s.cache.parent().unwrap()) {
        println!("skipped: no other file system at /dev/shm");
        return;
    }
    let elsewhere = tempfile::tempdir_in(shm).unwrap();
    let cache = ViewCache::open(elsewhere.path()).unwrap();
    let e = cache
        .plan(s.blobs.clone(), &*s.dirs, &s.inputs)
        .await
        .unwrap_err();
    assert!(matches!(e, ViewUnavailable::OtherFileSystem { .. }), "{e}");
    assert!(e.to_string().contains("/dev/shm/"), "{e}");
}

#[test]
fn opening_removes_dead_writers_scratch_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    // A writer that died (no such pid) in this boot and pid namespace, and
    // a directory that is not a writer's at all.
    let tag = tvix_oci_castore::tempfiles::host_tag();
    let dead = tmp.join(format!("tree.2147483646.{tag}.abc"));
    std::fs::create_dir_all(dead.join("tree/x")).unwrap();
    let foreign = tmp.join("not-ours");
    std::fs::create_dir_all(&foreign).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    // A cache of the older layout (metacopy trees, no version): emptied.
    let old_tree = dir.path().join("layer/t/abc.1/f");
    std::fs::create_dir_all(&old_tree).unwrap();
    ViewCache::open(dir.path()).unwrap();
    assert!(!old_tree.exists());
    assert!(dir.path().join("layer/t").is_dir());
    assert!(!dead.exists());
    assert!(foreign.exists());
    // The directory given keeps its mode (as /tmp would); the cache's
    // own are closed.
    assert_eq!(mode(dir.path()), 0o1777);
    assert_eq!(mode(&tmp), 0o700);
}
