//! Output ingestion: the same nodes as a castore import, a NAR hash equal to
//! an independent serialiser's, needles wherever they are, and nothing
//! outside the output ever read.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tvix_oci_castore::Node;
use tvix_oci_castore::blobservice::{BlobService, MemoryBlobService};
use tvix_oci_castore::directoryservice::{DirectoryService, MemoryDirectoryService};
use tvix_oci_castore::import::{ImportOptions, import_path};
use tvix_oci_executor::ingest::{Deadline, IngestLimits};
use tvix_oci_executor::ingest::{IngestError, ingest_output};
use tvix_oci_executor::refscan::Needles;

/// The NAR of `p`, built in memory the obvious way.
fn naive_nar(p: &Path) -> Vec<u8> {
    fn s(out: &mut Vec<u8>, b: &[u8]) {
        out.extend_from_slice(&(b.len() as u64).to_le_bytes());
        out.extend_from_slice(b);
        out.extend(std::iter::repeat_n(0u8, (8 - b.len() % 8) % 8));
    }
    fn node(out: &mut Vec<u8>, p: &Path) {
        let m = std::fs::symlink_metadata(p).unwrap();
        s(out, b"(");
        s(out, b"type");
        if m.is_symlink() {
            s(out, b"symlink");
            s(out, b"target");
            s(out, std::fs::read_link(p).unwrap().as_os_str().as_bytes());
        } else if m.is_file() {
            s(out, b"regular");
            if m.permissions().mode() & 0o100 != 0 {
                s(out, b"executable");
                s(out, b"");
            }
            s(out, b"contents");
            s(out, &std::fs::read(p).unwrap());
        } else {
            s(out, b"directory");
            let mut names: Vec<_> = std::fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            for n in names {
                s(out, b"entry");
                s(out, b"(");
                s(out, b"name");
                s(out, n.as_bytes());
                s(out, b"node");
                node(out, &p.join(n));
                s(out, b")");
            }
        }
        s(out, b")");
    }
    let mut out = Vec::new();
    s(&mut out, b"nix-archive-1");
    node(&mut out, p);
    out
}

fn stores() -> (Arc<dyn BlobService>, Arc<dyn DirectoryService>) {
    (
        Arc::new(MemoryBlobService::default()),
        Arc::new(MemoryDirectoryService::default()),
    )
}

const NEEDLES: [&str; 5] = [
    "a6xgw8ck6z7vb3yzrn0m7bl0sfkxwlyk", // in a file, across the 1 MiB read boundary
    "0k9yxm9zqc2dgw2xxbyh3mnbs5ijjc7v", // in a symlink target
    "zzdlmfvpllz3g0b3cg4zcla3bqhmc5ii", // in a file name
    "1ix2mk3svkrrc1kkwxbflfg6ydfcpxxq", // nowhere
    "bl0sfkxwlykzz",                    // overlaps the first one's end
];

fn output_tree(root: &Path) {
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("share/empty")).unwrap();
    // The hash straddles the first 1 MiB read (and a 64 KiB piece).
    let mut big = vec![b'x'; (1 << 20) - 11 - 16];
    big.extend_from_slice(b"/nix/store/a6xgw8ck6z7vb3yzrn0m7bl0sfkxwlykzz-dep\n");
    std::fs::write(root.join("share/big"), &big).unwrap();
    std::fs::write(root.join("bin/tool"), b"#!/bin/sh\n").unwrap();
    // setuid and odd modes: only the executable bit survives.
    std::fs::set_permissions(
        root.join("bin/tool"),
        std::fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        "/nix/store/0k9yxm9zqc2dgw2xxbyh3mnbs5ijjc7v-busybox/bin/sh",
        root.join("bin/sh"),
    )
    .unwrap();
    std::fs::write(root.join("share/zzdlmfvpllz3g0b3cg4zcla3bqhmc5ii-doc"), b"").unwrap();
    std::os::unix::fs::symlink("/", root.join("root-link")).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", root.join("shadow")).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn ingest_matches_import_nar_and_needles() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("upper/abc-out");
    output_tree(&out);
    let (blobs, dirs) = stores();
    let needles = Arc::new(Needles::new(&NEEDLES));
    let got = ingest_output(
        &tmp.path().join("upper"),
        "abc-out",
        "nix/store/abc-out",
        blobs.clone(),
        &*dirs,
        needles,
        IngestLimits::default(),
    )
    .await
    .unwrap();

    // The same node a castore import of the tree gives (only the exec bit kept).
    let (b2, d2) = stores();
    let imported = import_path(b2, &*d2, &out, &ImportOptions::default())
        .await
        .unwrap();
    assert_eq!(got.node, imported);

    let nar = naive_nar(&out);
    assert_eq!(got.nar_size, nar.len() as u64);
    assert_eq!(got.nar_sha256, <[u8; 32]>::from(Sha256::digest(&nar)));

    let found: Vec<usize> = got.needles.keys().copied().collect();
    assert_eq!(found, vec![0, 1, 2, 4]);
    assert_eq!(got.needles[&0], PathBuf::from("share/big"));
    assert_eq!(got.needles[&1], PathBuf::from("bin/sh"));
    assert_eq!(
        got.needles[&2],
        PathBuf::from("share/zzdlmfvpllz3g0b3cg4zcla3bqhmc5ii-doc")
    );

    // The closure is in the store, readable back.
    let Node::Directory { digest, .. } = got.node else {
        panic!("not a directory")
    };
    assert!(dirs.get(&digest).await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn symlink_outputs_are_stored_never_followed() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("upper")).unwrap();
    std::os::unix::fs::symlink("/", tmp.path().join("upper/out")).unwrap();
    let (blobs, dirs) = stores();
    let got = ingest_output(
        &tmp.path().join("upper"),
        "out",
        "out",
        blobs,
        &*dirs,
        Arc::new(Needles::new::<&str>(&[])),
        IngestLimits::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        got.node,
        Node::Symlink {
            target: "/".try_into().unwrap()
        }
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_symlink_on_the_way_to_an_output_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("scratch")).unwrap();
    // build/out where build -> / : must not read /out (or anything of the host).
    std::os::unix::fs::symlink("/", tmp.path().join("scratch/sub")).unwrap();
    let (blobs, dirs) = stores();
    let err = ingest_output(
        &tmp.path().join("scratch"),
        "sub/etc",
        "build/sub/etc",
        blobs,
        &*dirs,
        Arc::new(Needles::new::<&str>(&[])),
        IngestLimits::default(),
    )
    .await
    .unwrap_err();
    assert!(err.is_build_failure(), "{err}");
    assert_eq!(
        err.to_string(),
        "output build/sub/etc: build/sub is a symlink; outputs are read without following symlinks"
    );
    // Deeper on the way: the symlink component is named.
    std::fs::create_dir_all(tmp.path().join("scratch/a")).unwrap();
    std::os::unix::fs::symlink("../a", tmp.path().join("scratch/a/b")).unwrap();
    let (blobs, dirs) = stores();
    let err = ingest_output(
        &tmp.path().join("scratch"),
        "a/b/c/out",
        "build/a/b/c/out",
        blobs,
        &*dirs,
        Arc::new(Needles::new::<&str>(&[])),
        IngestLimits::default(),
    )
    .await
    .unwrap_err();
    assert!(err.is_build_failure(), "{err}");
    assert_eq!(
        err.to_string(),
        "output build/a/b/c/out: build/a/b is a symlink; outputs are read without following symlinks"
    );
    // A file on the way: the build's fault too (was the host's, ENOTDIR).
    std::fs::write(tmp.path().join("scratch/file"), b"").unwrap();
    let (blobs, dirs) = stores();
    let err = ingest_output(
        &tmp.path().join("scratch"),
        "file/out",
        "build/file/out",
        blobs,
        &*dirs,
        Arc::new(Needles::new::<&str>(&[])),
        IngestLimits::default(),
    )
    .await
    .unwrap_err();
    assert!(err.is_build_failure(), "{err}");
    assert_eq!(
        err.to_string(),
        "output build/file/out at file: is not a directory, so the output cannot be below it"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_output_and_special_files_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("upper");
    std::fs::create_dir_all(base.join("out/sub")).unwrap();
    let (blobs, dirs) = stores();
    let none = Arc::new(Needles::new::<&str>(&[]));
    let err = ingest_output(
        &base,
        "gone",
        "nix/store/gone",
        blobs.clone(),
        &*dirs,
        none.clone(),
        IngestLimits::default(),
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the build did not produce output nix/store/gone"
    );

    let fifo = std::ffi::CString::new(base.join("out/sub/pipe").as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    let err = ingest_output(
        &base,
        "out",
        "nix/store/out",
        blobs,
        &*dirs,
        none,
        IngestLimits::default(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, IngestError::Special { kind: "FIFO", .. }),
        "{err}"
    );
    assert!(err.to_string().contains("sub/pipe"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_on_bytes_entries_and_depth_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("upper");
    let out = base.join("out");
    std::fs::create_dir_all(out.join("d")).unwrap();
    std::fs::write(out.join("d/a"), vec![b'x'; 1000]).unwrap();
    std::fs::write(out.join("d/b"), vec![b'y'; 1000]).unwrap();
    let none = Arc::new(Needles::new::<&str>(&[]));
    let run = |limits: IngestLimits| {
        let (blobs, dirs) = stores();
        let (base, none) = (base.clone(), none.clone());
        async move { ingest_output(&base, "out", "nix/store/out", blobs, &*dirs, none, limits).await }
    };
    let lim = |max_bytes, max_entries, max_depth| IngestLimits {
        max_bytes,
        max_entries,
        max_depth,
        deadline: None,
    };
    // Within the caps: the figures of what was read.
    let got = run(lim(2000, 4, 1)).await.unwrap();
    assert_eq!((got.bytes, got.entries), (2000, 4));
    assert_eq!(
        IngestLimits::default()
            .less(got.bytes, got.entries)
            .max_bytes,
        IngestLimits::default().max_bytes - 2000
    );

    let err = run(lim(1999, 4, 1)).await.unwrap_err();
    assert!(err.is_build_failure());
    assert_eq!(
        err.to_string(),
        "output nix/store/out at d/b: the build's outputs exceed the limit of 1999 bytes"
    );
    let err = run(lim(2000, 3, 1)).await.unwrap_err();
    assert!(
        err.to_string().ends_with("exceed the limit of 3 entries"),
        "{err}"
    );
    let err = run(lim(2000, 4, 0)).await.unwrap_err();
    assert!(
        err.to_string()
            .ends_with("exceed the limit of 0 levels of directories"),
        "{err}"
    );

    // Deeper than the default cap: refused, never a stack overflow.
    let mut deep = out.clone();
    for _ in 0..300 {
        deep = deep.join("d");
    }
    std::fs::create_dir_all(&deep).unwrap();
    let err = run(IngestLimits::default()).await.unwrap_err();
    assert!(err.to_string().contains("limit of 256 levels"), "{err}");
}

/// `n` directories of `per` one-byte files below `out`.
fn many_files(out: &Path, n: usize, per: usize) {
    for d in 0..n {
        let dir = out.join(format!("d{d:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..per {
            std::fs::write(dir.join(format!("f{f:03}")), b"x").unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn past_the_entries_limit_no_file_is_read() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("upper");
    // 2,021 entries against a limit of 1,000: refused before any file's
    // bytes are read (before, about 950 files were stored first).
    many_files(&base.join("out"), 20, 100);
    let blobs = common::counting_blobs(Arc::new(MemoryBlobService::default()), common::Fault::None);
    let dirs = MemoryDirectoryService::default();
    let limits = IngestLimits {
        max_entries: 1000,
        ..IngestLimits::default()
    };
    let none = Arc::new(Needles::new::<&str>(&[]));
    let err = ingest_output(
        &base,
        "out",
        "nix/store/out",
        blobs.clone(),
        &dirs,
        none,
        limits,
    )
    .await
    .unwrap_err();
    assert!(err.is_build_failure(), "{err}");
    let msg = err.to_string();
    assert!(
        msg.starts_with("output nix/store/out at d")
            && msg.ends_with("the build's outputs exceed the limit of 1000 entries"),
        "{msg}"
    );
    assert_eq!(blobs.write_count(), 0, "files were read before the refusal");
}

#[tokio::test(flavor = "multi_thread")]
async fn past_the_bytes_limit_no_file_is_read() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("upper");
    std::fs::create_dir_all(base.join("out")).unwrap();
    std::fs::write(base.join("out/a"), vec![b'a'; 600 << 10]).unwrap();
    std::fs::write(base.join("out/b"), vec![b'b'; 600 << 10]).unwrap();
    let blobs = common::counting_blobs(Arc::new(MemoryBlobService::default()), common::Fault::None);
    let dirs = MemoryDirectoryService::default();
    let limits = IngestLimits {
        max_bytes: 1 << 20,
        ..IngestLimits::default()
    };
    let none = Arc::new(Needles::new::<&str>(&[]));
    let err = ingest_output(
        &base,
        "out",
        "nix/store/out",
        blobs.clone(),
        &dirs,
        none,
        limits,
    )
    .await
    .unwrap_err();
    assert!(err.is_build_failure(), "{err}");
    assert_eq!(
        err.to_string(),
        "output nix/store/out at b: the build's outputs exceed the limit of 1048576 bytes"
    );
    assert_eq!(blobs.write_count(), 0, "a was read before the refusal");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_failing_blob_writes_is_not_the_builds_fault() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("upper");
    std::fs::create_dir_all(base.join("out")).unwrap();
    std::fs::write(base.join("out/f"), b"data").unwrap();
    // Permission denied by the store's disk: the store's fault, not an
    // output the executor may not read.
    let blobs = common::counting_blobs(Arc::new(MemoryBlobService::default()), common::Fault::Fail);
    let dirs = MemoryDirectoryService::default();
    let none = Arc::new(Needles::new::<&str>(&[]));
    let err = ingest_output(
        &base,
        "out",
        "nix/store/out",
        blobs,
        &dirs,
        none,
        IngestLimits::default(),
    )
    .await
    .unwrap_err();
    assert!(!err.is_build_failure(), "{err}");
    assert_eq!(
        err.to_string(),
        "output nix/store/out at f: storing the blob: injected: the store's disk refuses writes"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ingestion_ends_by_the_deadline() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("upper");
    std::fs::create_dir_all(base.join("out")).unwrap();
    std::fs::write(base.join("out/f"), b"data").unwrap();
    let none = Arc::new(Needles::new::<&str>(&[]));
    let with = |at, fault| {
        let blobs = common::counting_blobs(Arc::new(MemoryBlobService::default()), fault);
        let (base, none) = (base.clone(), none.clone());
        let limits = IngestLimits {
            deadline: Some(Deadline {
                at,
                timeout: std::time::Duration::from_secs(3),
            }),
            ..IngestLimits::default()
        };
        async move {
            let dirs = MemoryDirectoryService::default();
            ingest_output(&base, "out", "nix/store/out", blobs, &dirs, none, limits).await
        }
    };
    // Out of time before the store was asked anything: the build's fault
    // (its run and outputs took the time).
    let err = with(std::time::Instant::now(), common::Fault::None)
        .await
        .unwrap_err();
    assert!(err.is_build_failure(), "{err}");
    assert_eq!(
        err.to_string(),
        "output nix/store/out: ingesting the outputs ran past the build's timeout of 3s"
    );
    // A store that never answers: its fault, and over at the deadline.
    let t = std::time::Instant::now();
    let soon = t + std::time::Duration::from_millis(500);
    let err = with(soon, common::Fault::Hang).await.unwrap_err();
    assert!(t.elapsed() < std::time::Duration::from_secs(10));
    assert!(!err.is_build_failure(), "{err}");
    assert_eq!(
        err.to_string(),
        "output nix/store/out at f: the store did not answer before the build's timeout of 3s ran out"
    );
}

/// The NAR streamed back out of the castore node (what a fixed output in
/// sha1 or sha512 is checked with) is the NAR of the tree, byte for byte;
/// a blob the store lost is named by its path in the output.
#[tokio::test(flavor = "multi_thread")]
async fn the_nar_of_a_stored_node_is_the_nar_of_the_tree() {
    use tvix_oci_executor::nar::{NarSink, NarWriter};
    use tvix_oci_executor::nar_node::{NarNodeError, write_node};

    #[derive(Default)]
    struct Collect(Vec<u8>);
    impl NarSink for Collect {
        fn update(&mut self, data: &[u8]) {
            self.0.extend_from_slice(data);
        }
    }

    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    output_tree(&out);
    std::fs::write(tmp.path().join("single"), b"hi\n").unwrap();
    std::os::unix::fs::symlink("../x", tmp.path().join("link")).unwrap();
    for p in [out, tmp.path().join("single"), tmp.path().join("link")] {
        let (blobs, dirs) = stores();
        let node = import_path(blobs.clone(), &*dirs, &p, &ImportOptions::default())
            .await
            .unwrap();
        let mut nar = NarWriter::<Collect>::new();
        write_node(&mut nar, &node, &*blobs, &*dirs).await.unwrap();
        let (got, size) = nar.into_sink();
        let want = naive_nar(&p);
        assert_eq!(size, want.len() as u64, "{}", p.display());
        assert!(got.0 == want, "{}: NARs differ", p.display());

        if matches!(node, Node::Directory { .. }) {
            let (empty, _) = stores();
            let mut nar = NarWriter::<Collect>::new();
            let e = write_node(&mut nar, &node, &*empty, &*dirs)
                .await
                .unwrap_err();
            assert!(matches!(e, NarNodeError::MissingBlob { .. }), "{e}");
            assert!(e.to_string().starts_with("bin/tool: blob "), "{e}");
        }
    }
}
