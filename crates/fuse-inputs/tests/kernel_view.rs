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
    let cache = ViewCache::open(&s.cache).unwrap();
    let plan = cache
        .plan(s.blobs.clone(), &*s.dirs, &s.inputs)
        .await
        .unwrap();
    let top = s.scratch.join("top");
    let view = plan.mount(&top, &view_at).unwrap();

    let (want, got) = (describe(&fuse_at), describe(&view_at));
    assert!(want.len() > 15, "{want:#?}");
    assert_eq!(want, got, "the kernel view differs from FUSE's");
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
    // The trees' dir of the cache is not visible.
    assert!(!view_at.join("t").exists());

    view.unmount().unwrap();
    fuse.unmount().unwrap();
    assert_eq!(mounted_below(&s.scratch), 0);
    assert!(!top.exists(), "the top layer is removed with the view");
    // One tree cached, by the tree's digest and size; nothing
    // half-written.
    let trees: Vec<_> = std::fs::read_dir(s.cache.join("layer/t"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(trees, vec![tree_dir(&s)]);
    assert_eq!(std::fs::read_dir(s.cache.join("tmp")).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cached_tree_is_reused_and_an_input_named_t_hides_nothing_it_should_not() {
    need_root!();
    let mut s = stores().await;
    let cache = ViewCache::open(&s.cache).unwrap();
    cache
        .plan(s.blobs.clone(), &*s.dirs, &s.inputs)
        .await
        .unwrap();
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
    let view = plan.mount(&s.scratch.join("top"), &at).unwrap();
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
    assert_eq!(names, ["file", "link", "t", "tree"]);
    drop(view);
    assert_eq!(mounted_below(&s.scratch), 0);
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

/// The redirect (in the cache's metadata layer) of file `rel` of the tree.
fn redirect_of(s: &Stores, rel: &str) -> Vec<u8> {
    let f = tree_dir(s).join(rel);
    xattr::get(&f, "trusted.overlay.redirect").unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_is_redirected_by_a_short_name_unless_another_file_holds_it() {
    need_root!();
    let s = stores().await;
    // Another file squats the short name of `tool`'s blob: that blob is
    // then reached by its long path in the store, never by the squatter.
    let tool = std::fs::read(s.scratch.parent().unwrap().join("src/tool")).unwrap();
    let tool_hex = B3Digest::of(&tool).to_hex();
    let links = s.cache.join("data");
    std::fs::create_dir_all(&links).unwrap();
    std::fs::write(links.join(&tool_hex[..22]), b"#!/bin/sh\necho evil\n").unwrap();

    let cache = ViewCache::open(&s.cache).unwrap();
    let plan = cache
        .plan(s.blobs.clone(), &*s.dirs, &s.inputs)
        .await
        .unwrap();
    // A short name fits the file's xattrs in its inode (24 bytes at most).
    let deep = redirect_of(&s, "a/b/c/deep.txt");
    assert!(deep.len() <= 24, "{:?}", String::from_utf8_lossy(&deep));
    let long = redirect_of(&s, "tool");
    assert_eq!(long, format!("/{}/{tool_hex}", &tool_hex[..2]).into_bytes());

    let at = s.scratch.join("view");
    std::fs::create_dir_all(&at).unwrap();
    let view = plan.mount(&s.scratch.join("top"), &at).unwrap();
    assert_eq!(std::fs::read(at.join("tree/tool")).unwrap(), tool);
    assert_eq!(std::fs::read(at.join("file")).unwrap(), tool);
    assert_eq!(
        std::fs::read(at.join("tree/a/b/c/deep.txt")).unwrap(),
        b"deep down\n"
    );
    drop(view);
    assert_eq!(mounted_below(&s.scratch), 0);
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
    ViewCache::open(dir.path()).unwrap();
    assert!(!dead.exists());
    assert!(foreign.exists());
    // The directory given keeps its mode (as /tmp would); the cache's
    // own are closed.
    assert_eq!(mode(dir.path()), 0o1777);
    assert_eq!(mode(&tmp), 0o700);
}
