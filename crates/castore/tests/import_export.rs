//! Import then export reproduces a tree exactly (names, types, sizes,
//! contents, exec bits, symlink targets), for random trees with hostile
//! names; special files are refused naming their path.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use common::Backend;
use proptest::prelude::*;
use tvix_oci_castore::export::export_node;
use tvix_oci_castore::import::{
    FileObserver, ImportError, ImportObserver, ImportOptions, import_path,
};
use tvix_oci_castore::{B3Digest, Node};

#[derive(Debug, Clone)]
enum Entry {
    File(Vec<u8>, bool),
    Symlink(Vec<u8>),
    Dir(BTreeMap<Vec<u8>, Entry>),
}

fn name() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            Just(b'a'),
            Just(b'.'),
            Just(b' '),
            Just(b'\n'),
            Just(0xffu8),
            Just(b'z'),
            1u8..=127
        ],
        1..6,
    )
    .prop_filter("valid name", |n| {
        n != b"." && n != b".." && !n.contains(&b'/') && !n.contains(&0)
    })
}

fn entry() -> impl Strategy<Value = Entry> {
    let leaf = prop_oneof![
        (prop::collection::vec(any::<u8>(), 0..3000), any::<bool>())
            .prop_map(|(d, x)| Entry::File(d, x)),
        // Big enough to cross the 1 MiB read chunk.
        (1_048_570usize..1_048_600)
            .prop_map(|n| Entry::File((0..n).map(|i| i as u8).collect(), false)),
        prop_oneof![
            Just(b"/".to_vec()),
            Just(b"../../etc/passwd".to_vec()),
            Just(b"dangling".to_vec()),
            name()
        ]
        .prop_map(Entry::Symlink),
    ];
    leaf.prop_recursive(4, 40, 6, |inner| {
        prop::collection::btree_map(name(), inner, 0..6).prop_map(Entry::Dir)
    })
}

fn write(path: &Path, e: &Entry) {
    match e {
        Entry::File(data, exec) => {
            std::fs::write(path, data).unwrap();
            let mode = if *exec { 0o755 } else { 0o644 };
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        Entry::Symlink(t) => std::os::unix::fs::symlink(OsStr::from_bytes(t), path).unwrap(),
        Entry::Dir(children) => {
            std::fs::create_dir(path).unwrap();
            for (n, c) in children {
                write(&path.join(OsStr::from_bytes(n)), c);
            }
        }
    }
}

/// What a tree on disk looks like: relative path -> description.
fn describe(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(root).follow_root_links(false) {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(root).unwrap().to_owned();
        let meta = std::fs::symlink_metadata(e.path()).unwrap();
        let desc = if meta.is_symlink() {
            format!("symlink {:?}", std::fs::read_link(e.path()).unwrap())
        } else if meta.is_file() {
            let data = std::fs::read(e.path()).unwrap();
            format!(
                "file x={} len={} {}",
                meta.permissions().mode() & 0o100 != 0,
                data.len(),
                B3Digest::of(&data)
            )
        } else {
            "dir".to_owned()
        };
        out.insert(rel, desc);
    }
    out
}

async fn roundtrip(backend: Backend, tree: &Entry) -> Node {
    let s = backend.open().await.expect("backend available");
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    write(&src, tree);
    let node = import_path(s.blobs.clone(), &*s.dirs, &src, &ImportOptions::default())
        .await
        .unwrap();
    let dst = tmp.path().join("dst");
    export_node(s.blobs.clone(), &*s.dirs, &node, &dst)
        .await
        .unwrap();
    assert_eq!(describe(&src), describe(&dst));
    node
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn import_export_roundtrip(tree in entry()) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let local = rt.block_on(roundtrip(Backend::Local, &tree));
        // The same tree gets the same root node in every store.
        let mem = rt.block_on(roundtrip(Backend::Memory, &tree));
        prop_assert_eq!(local, mem);
    }
}

#[tokio::test]
async fn roundtrip_over_grpc() {
    let mut d = BTreeMap::new();
    d.insert(b"bin".to_vec(), Entry::File(b"#!/bin/sh\n".to_vec(), true));
    d.insert(
        b"lib".to_vec(),
        Entry::Dir(BTreeMap::from([(
            b"a b".to_vec(),
            Entry::File(vec![7; 5000], false),
        )])),
    );
    d.insert(b"link".to_vec(), Entry::Symlink(b"/nix/store/x".to_vec()));
    let tree = Entry::Dir(d);
    let a = roundtrip(Backend::GrpcTcp, &tree).await;
    assert_eq!(a, roundtrip(Backend::Local, &tree).await);
}

#[tokio::test]
async fn refuses_fifo_naming_it() {
    let s = Backend::Memory.open().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("d")).unwrap();
    let fifo = tmp.path().join("d/pipe");
    nix_mkfifo(&fifo);
    let err = import_path(
        s.blobs.clone(),
        &*s.dirs,
        tmp.path(),
        &ImportOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, ImportError::Unsupported { kind: "FIFO", .. }),
        "{err}"
    );
    assert!(err.to_string().contains(&*fifo.to_string_lossy()), "{err}");
}

fn nix_mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
}

type Seen = Arc<Mutex<Vec<(PathBuf, Vec<u8>)>>>;

/// Records every byte and target the import shows it.
#[derive(Default)]
struct Recorder(Seen);

struct FileRec(Seen, PathBuf, Vec<u8>);

impl FileObserver for FileRec {
    fn chunk(&mut self, data: &[u8]) {
        self.2.extend_from_slice(data);
    }
    fn finish(self: Box<Self>) {
        self.0.lock().unwrap().push((self.1, self.2));
    }
}

impl ImportObserver for Recorder {
    fn file(&self, path: &Path, _x: bool) -> Option<Box<dyn FileObserver>> {
        Some(Box::new(FileRec(
            self.0.clone(),
            path.to_owned(),
            Vec::new(),
        )))
    }
    fn symlink(&self, path: &Path, target: &[u8]) {
        self.0
            .lock()
            .unwrap()
            .push((path.to_owned(), target.to_vec()));
    }
}

#[tokio::test]
async fn observer_sees_bytes_and_targets() {
    let s = Backend::Memory.open().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..2_500_000u32).map(|i| (i % 13) as u8).collect();
    std::fs::write(tmp.path().join("big"), &big).unwrap();
    std::fs::write(tmp.path().join("small"), b"hi").unwrap();
    std::os::unix::fs::symlink("/nix/store/abc", tmp.path().join("l")).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let opts = ImportOptions {
        observer: Arc::new(Recorder(seen.clone())),
        ..Default::default()
    };
    import_path(s.blobs.clone(), &*s.dirs, tmp.path(), &opts)
        .await
        .unwrap();
    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            (PathBuf::from("big"), big),
            (PathBuf::from("l"), b"/nix/store/abc".to_vec()),
            (PathBuf::from("small"), b"hi".to_vec()),
        ]
    );
}

#[tokio::test]
async fn single_file_and_symlink_roots() {
    let s = Backend::Memory.open().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("f");
    std::fs::write(&f, b"Hello World!").unwrap();
    let node = import_path(s.blobs.clone(), &*s.dirs, &f, &ImportOptions::default())
        .await
        .unwrap();
    assert_eq!(
        node,
        Node::File {
            digest: B3Digest::of(b"Hello World!"),
            size: 12,
            executable: false
        }
    );
    let l = tmp.path().join("l");
    std::os::unix::fs::symlink("f", &l).unwrap();
    let node = import_path(s.blobs.clone(), &*s.dirs, &l, &ImportOptions::default())
        .await
        .unwrap();
    assert!(matches!(node, Node::Symlink { .. }), "{node:?}");
}
