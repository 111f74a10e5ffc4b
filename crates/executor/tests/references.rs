//! References as Nix finds them: a needle counts where it appears in the
//! output's NAR serialisation (file contents, symlink targets, the names of
//! entries below the root), never in the output's own name, which is not
//! part of its NAR. Each case is checked against a NAR built here the
//! obvious way and searched naively; "found in" is the first path, in NAR
//! order, whose bytes hold the needle.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use proptest::prelude::*;
use tvix_oci_castore::blobservice::MemoryBlobService;
use tvix_oci_castore::directoryservice::MemoryDirectoryService;
use tvix_oci_executor::ingest::{CHUNK, IngestLimits, PIECE, ingest_output};
use tvix_oci_executor::refscan::Needles;

/// A NAR, with the span of every string that belongs to a path (a name, a
/// target, a file's contents) and that path, relative to the root.
#[derive(Default)]
struct Nar {
    bytes: Vec<u8>,
    spans: Vec<(Range<usize>, PathBuf)>,
}

impl Nar {
    fn of(p: &Path) -> Nar {
        let mut nar = Nar::default();
        nar.s(b"nix-archive-1");
        nar.node(p, Path::new(""));
        nar
    }

    fn s(&mut self, b: &[u8]) -> Range<usize> {
        self.bytes
            .extend_from_slice(&(b.len() as u64).to_le_bytes());
        let start = self.bytes.len();
        self.bytes.extend_from_slice(b);
        self.bytes
            .extend(std::iter::repeat_n(0u8, (8 - b.len() % 8) % 8));
        start..start + b.len()
    }

    fn held(&mut self, b: &[u8], rel: &Path) {
        let r = self.s(b);
        self.spans.push((r, rel.to_owned()));
    }

    fn node(&mut self, p: &Path, rel: &Path) {
        let m = std::fs::symlink_metadata(p).unwrap();
        self.s(b"(");
        self.s(b"type");
        if m.is_symlink() {
            self.s(b"symlink");
            self.s(b"target");
            self.held(std::fs::read_link(p).unwrap().as_os_str().as_bytes(), rel);
        } else if m.is_file() {
            self.s(b"regular");
            if m.permissions().mode() & 0o100 != 0 {
                self.s(b"executable");
                self.s(b"");
            }
            self.s(b"contents");
            self.held(&std::fs::read(p).unwrap(), rel);
        } else {
            self.s(b"directory");
            let mut names: Vec<_> = std::fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            for n in names {
                let child = rel.join(&n);
                self.s(b"entry");
                self.s(b"(");
                self.s(b"name");
                self.held(n.as_bytes(), &child);
                self.s(b"node");
                self.node(&p.join(&n), &child);
                self.s(b")");
            }
        }
        self.s(b")");
    }

    /// What Nix records: each needle found in the NAR, with the path
    /// holding its first occurrence.
    fn references(&self, needles: &[&[u8]]) -> BTreeMap<usize, PathBuf> {
        let mut found = BTreeMap::new();
        for (i, n) in needles.iter().enumerate() {
            let Some(at) = find(&self.bytes, n) else {
                continue;
            };
            let (_, path) = self
                .spans
                .iter()
                .find(|(r, _)| r.start <= at && at + n.len() <= r.end)
                .unwrap_or_else(|| panic!("needle {i} spans two NAR strings: not a test case"));
            found.insert(i, path.clone());
        }
        found
    }
}

/// The first place `needle` (not empty) starts in `hay`, naively.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(p) = hay[from..].iter().position(|&b| b == needle[0]) {
        if hay[from + p..].starts_with(needle) {
            return Some(from + p);
        }
        from += p + 1;
    }
    None
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

/// Ingests the output at `out` (its last component is its name, as a
/// store path's basename) and returns the needles it found, where.
fn ingest_refs(out: &Path, needles: &[&[u8]]) -> BTreeMap<usize, PathBuf> {
    let base = out.parent().unwrap().to_owned();
    let rel = out.file_name().unwrap().to_str().unwrap().to_owned();
    let needles = Arc::new(Needles::new(needles));
    runtime().block_on(async move {
        let dirs = MemoryDirectoryService::default();
        ingest_output(
            &base,
            &rel,
            &format!("nix/store/{rel}"),
            Arc::new(MemoryBlobService::default()),
            &dirs,
            needles,
            IngestLimits::default(),
        )
        .await
        .unwrap()
        .needles
    })
}

/// Ingests `out` and checks the needles against the NAR's; returns them.
fn checked_refs(out: &Path, needles: &[&str]) -> BTreeMap<usize, PathBuf> {
    let needles: Vec<&[u8]> = needles.iter().map(|n| n.as_bytes()).collect();
    let got = ingest_refs(out, &needles);
    assert_eq!(got, Nar::of(out).references(&needles), "against the NAR");
    got
}

/// Store-path hashes (nix-base32, 32 characters).
const SELF: &str = "5gx9f8h8sgiarhknkvdy91bll68q3rzy";
const BB: &str = "i72sh5s677q84k6rwyjdpx0p2j0x962f";

fn map(pairs: &[(usize, &str)]) -> BTreeMap<usize, PathBuf> {
    pairs.iter().map(|&(i, p)| (i, PathBuf::from(p))).collect()
}

#[test]
fn a_plain_output_never_refers_to_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join(format!("{SELF}-hello"));
    std::fs::write(&file, b"hi\n").unwrap();
    assert_eq!(checked_refs(&file, &[SELF, BB]), map(&[]));

    let dir = tmp.path().join(format!("{SELF}-dir"));
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::write(dir.join("bin/tool"), b"#!/bin/sh\n").unwrap();
    assert_eq!(checked_refs(&dir, &[SELF, BB]), map(&[]));

    // A symlink output: its target names busybox, its own name is not read.
    let link = tmp.path().join(format!("{SELF}-link"));
    std::os::unix::fs::symlink(format!("/nix/store/{BB}-busybox/bin/busybox"), &link).unwrap();
    assert_eq!(checked_refs(&link, &[SELF, BB]), map(&[(1, "")]));
}

#[test]
fn an_output_naming_itself_in_its_bytes_refers_to_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join(format!("{SELF}-self-ref"));
    std::fs::write(&file, format!("/nix/store/{SELF}-self-ref\n")).unwrap();
    assert_eq!(checked_refs(&file, &[SELF, BB]), map(&[(0, "")]));

    // In a directory: found in the file that holds it.
    let dir = tmp.path().join(format!("{SELF}-dir"));
    std::fs::create_dir_all(dir.join("lib")).unwrap();
    std::fs::write(dir.join("lib/rpath"), format!("/nix/store/{SELF}-dir/lib")).unwrap();
    assert_eq!(checked_refs(&dir, &[SELF, BB]), map(&[(0, "lib/rpath")]));
}

#[test]
fn an_entry_name_below_the_root_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join(format!("{SELF}-name-ref"));
    std::fs::create_dir_all(out.join(format!("share/{BB}-busybox.d"))).unwrap();
    std::fs::write(out.join(format!("{SELF}-marker")), b"").unwrap();
    assert_eq!(
        checked_refs(&out, &[SELF, BB]),
        map(&[
            (0, &format!("{SELF}-marker")),
            (1, &format!("share/{BB}-busybox.d")),
        ])
    );
}

/// A file of `len` bytes of filler with `needle` written at `at`.
fn planted(len: usize, at: usize, needle: &str) -> Vec<u8> {
    let mut b = vec![b'x'; len];
    b[at..at + needle.len()].copy_from_slice(needle.as_bytes());
    b
}

#[test]
fn needles_straddling_read_buffers_are_found() {
    let tmp = tempfile::tempdir().unwrap();
    // Across the 64 KiB pieces the scanner is fed, and the 1 MiB reads.
    for boundary in [PIECE, 2 * PIECE, CHUNK, CHUNK + PIECE] {
        for before in [1, 31] {
            let out = tmp.path().join(format!("{SELF}-at-{boundary}-{before}"));
            std::fs::write(&out, planted(boundary + 64, boundary - before, BB)).unwrap();
            assert_eq!(
                checked_refs(&out, &[SELF, BB]),
                map(&[(1, "")]),
                "{before} bytes before {boundary}"
            );
        }
    }
}

#[test]
fn a_needle_at_the_very_end_of_a_file_is_found() {
    let tmp = tempfile::tempdir().unwrap();
    // The whole file, a small file's end, the end of exactly one piece and
    // one read, and a file one byte past a read.
    for len in [BB.len(), 100, PIECE, CHUNK, CHUNK + 1] {
        let out = tmp.path().join(format!("{SELF}-end-{len}"));
        std::fs::write(&out, planted(len, len - BB.len(), BB)).unwrap();
        assert_eq!(checked_refs(&out, &[SELF, BB]), map(&[(1, "")]), "{len}");
    }
    // And at the very end of an entry name and of a symlink target.
    let dir = tmp.path().join(format!("{SELF}-ends"));
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::symlink(format!("../{SELF}"), dir.join("up")).unwrap();
    std::fs::write(dir.join(format!("x-{BB}")), b"").unwrap();
    assert_eq!(
        checked_refs(&dir, &[SELF, BB]),
        map(&[(0, "up"), (1, &format!("x-{BB}"))])
    );
}

#[test]
fn overlapping_needles_are_all_found() {
    let tmp = tempfile::tempdir().unwrap();
    // B starts inside A; C lies inside A; D is C's twin that is absent.
    let a = "0123456789abcdfghijklmnpqrsvwxyz";
    let b = "ghijklmnpqrsvwxyz0000000000000000";
    let c = "56789abcdfghijklmnpq";
    let d = "56789abcdfghijklmnpz";
    let out = tmp.path().join(format!("{SELF}-overlap"));
    // A's end and B's start share 17 bytes; the file ends with B, and the
    // shared bytes straddle a piece.
    let mut bytes = vec![b'x'; PIECE - 20];
    bytes.extend_from_slice(b"0123456789abcdfghijklmnpqrsvwxyz0000000000000000");
    std::fs::write(&out, &bytes).unwrap();
    assert_eq!(
        checked_refs(&out, &[a, b, c, d]),
        map(&[(0, ""), (1, ""), (2, "")])
    );
}

#[test]
fn a_needle_is_found_in_the_first_path_in_nar_order() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join(format!("{SELF}-order"));
    // NAR order: entries sorted bytewise ("B" < "a"), each name before its
    // contents, a directory's entries before its next sibling.
    std::fs::create_dir_all(out.join("a/z")).unwrap();
    std::fs::write(out.join("a/z/f"), BB).unwrap();
    std::fs::write(out.join("b"), BB).unwrap();
    std::fs::write(out.join("B"), format!("{BB}{SELF}")).unwrap();
    std::fs::write(out.join("a/y"), SELF).unwrap();
    assert_eq!(checked_refs(&out, &[SELF, BB]), map(&[(0, "B"), (1, "B")]));
    std::fs::remove_file(out.join("B")).unwrap();
    assert_eq!(
        checked_refs(&out, &[SELF, BB]),
        map(&[(0, "a/y"), (1, "a/z/f")])
    );
    // An entry named with a needle comes before what it holds.
    std::fs::create_dir(out.join(format!("0-{BB}"))).unwrap();
    std::fs::write(out.join(format!("0-{BB}/{SELF}")), BB).unwrap();
    assert_eq!(
        checked_refs(&out, &[SELF, BB]),
        map(&[(0, &format!("0-{BB}/{SELF}")), (1, &format!("0-{BB}"))])
    );
}

#[test]
fn needles_never_span_two_nar_strings() {
    // In a NAR, a name, a target or a file's contents is framed by a length
    // and padding, so a needle split between two of them is not there.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join(format!("{SELF}-split"));
    let (head, tail) = BB.split_at(16);
    for d in ["p1", "p2", "p3", &format!("p4/{head}")] {
        std::fs::create_dir_all(out.join(d)).unwrap();
    }
    // A name, then its file's contents.
    std::fs::write(out.join("p1").join(head), tail).unwrap();
    // A file's contents, then the next entry's name ("a" sorts first).
    std::fs::write(out.join("p2/a"), head).unwrap();
    std::fs::write(out.join("p2").join(tail), b"").unwrap();
    // A symlink's target, then the next entry's name.
    std::os::unix::fs::symlink(head, out.join("p3/a")).unwrap();
    std::fs::write(out.join("p3").join(tail), b"").unwrap();
    // A directory's name, then its entry's name.
    std::fs::write(out.join(format!("p4/{head}/{tail}")), b"").unwrap();
    assert_eq!(checked_refs(&out, &[SELF, BB]), map(&[]));
}

// Arbitrary trees against the NAR: needles planted anywhere (contents,
// targets, names, straddling a piece), overlapping, or cut short.

#[derive(Clone, Debug)]
enum Tree {
    File {
        exec: bool,
        pad: usize,
        bytes: Vec<u8>,
    },
    Link(Vec<u8>),
    Dir(BTreeMap<Vec<u8>, Tree>),
}

/// Needles with overlaps: 1 starts inside 0, 3 lies inside 2.
const NEEDLES: [&str; 4] = [
    "a6xgw8ck6z7vb3yzrn0m7bl0sfkxwlyk",
    "rn0m7bl0sfkxwlykzz4cpw0qy8j1smb2",
    "0k9yxm9zqc2dgw2xxbyh3mnbs5ijjc7v",
    "qc2dgw2xxbyh3mnbs5ij",
];

/// Bytes made of nix-base32 filler, needles, needle fragments and `extra`.
fn text(extra: &'static [u8], max: usize) -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        proptest::collection::vec(
            proptest::sample::select(b"0123456789abcdfghijklmnpqrsvwxyz".to_vec()),
            0..6
        ),
        (0..NEEDLES.len()).prop_map(|i| NEEDLES[i].as_bytes().to_vec()),
        (0..NEEDLES.len(), 1..32usize).prop_map(|(i, n)| {
            let s = NEEDLES[i].as_bytes();
            s[..n.min(s.len() - 1)].to_vec()
        }),
        (0..NEEDLES.len(), 1..32usize).prop_map(|(i, n)| {
            let s = NEEDLES[i].as_bytes();
            s[s.len() - n.min(s.len() - 1)..].to_vec()
        }),
        proptest::sample::select(extra.to_vec()).prop_map(|c| vec![c]),
    ];
    proptest::collection::vec(piece, 0..max).prop_map(|v| v.concat())
}

fn tree() -> impl Strategy<Value = Tree> {
    let file = (
        any::<bool>(),
        prop_oneof![3 => Just(0usize), 1 => PIECE - 40..PIECE],
        text(b"\n/ \0-", 6),
    )
        .prop_map(|(exec, pad, bytes)| Tree::File { exec, pad, bytes });
    let link = text(b"/.-", 5).prop_map(|mut t| {
        t.insert(0, b'/');
        Tree::Link(t)
    });
    let leaf = prop_oneof![2 => file, 1 => link];
    leaf.prop_recursive(3, 16, 4, |inner| {
        proptest::collection::vec((text(b".-_", 4), inner), 0..4).prop_map(|v| {
            Tree::Dir(
                v.into_iter()
                    .map(|(mut n, t)| {
                        n.insert(0, b'n'); // never empty, ".", ".."
                        n.truncate(255);
                        (n, t)
                    })
                    .collect(),
            )
        })
    })
}

fn write(p: &Path, t: &Tree) {
    match t {
        Tree::File { exec, pad, bytes } => {
            let mut b = vec![b'x'; *pad];
            b.extend_from_slice(bytes);
            std::fs::write(p, b).unwrap();
            let mode = if *exec { 0o755 } else { 0o644 };
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        Tree::Link(target) => {
            std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), p).unwrap()
        }
        Tree::Dir(entries) => {
            std::fs::create_dir(p).unwrap();
            for (n, t) in entries {
                write(&p.join(std::ffi::OsStr::from_bytes(n)), t);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn references_are_what_a_scan_of_the_nar_finds(t in tree(), own in 0..NEEDLES.len()) {
        let tmp = tempfile::tempdir().unwrap();
        // The output is named by a needle: that name is never a reference.
        let out = tmp.path().join(format!("{}-out", NEEDLES[own]));
        write(&out, &t);
        let needles: Vec<&[u8]> = NEEDLES.iter().map(|n| n.as_bytes()).collect();
        let got = ingest_refs(&out, &needles);
        prop_assert_eq!(got, Nar::of(&out).references(&needles));
    }
}
