//! The kernel view of the inputs in real builds: with a view cache and the
//! embedded store, a build sees its inputs as the host's own file system
//! (read-only clones of the cached trees: no FUSE, no overlay), or through
//! one overlay where its store dir is writable, exactly as a build through
//! FUSE sees them — names, modes, owners,
//! times, sizes, bytes — writes into a writable store dir go to its own
//! upper layer, never to the store's blob files, and nothing is left.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::*;
use tvix_oci_castore::{B3Digest, Node};
use tvix_oci_executor::runc::NoLogs;
use tvix_oci_fuse::ViewCache;

/// Everything the build sees of its inputs but inode numbers, link counts
/// and a directory's size (FUSE says 0; the view what the disk says), and
/// the file system showing them (the host's, or `fuse…`).
const DESCRIBE: &str = r#"cd /nix/store
find . | sort | while read -r p; do
  stat -c '%n %F %a %u %g %Y' "$p"
  [ -d "$p" ] || stat -c '%s' "$p"
  [ -L "$p" ] && readlink "$p"
  [ -f "$p" ] && [ ! -L "$p" ] && md5sum < "$p"
done > /build/out
awk '$5 == "/nix/store" { for (i = 7; i <= NF; i++) if ($i == "-") { print $(i+1); exit } }' /proc/self/mountinfo > /build/fs
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_build_sees_through_the_kernel_view_what_it_sees_through_fuse() {
    need_runtime!();
    let e = env().await;
    let cache_dir = e.tmp.path().join("view-cache");
    let cache = Arc::new(ViewCache::open(&cache_dir).unwrap());
    let viewed = e.executor(|c| c.kernel_view = Some(cache.clone()));
    let fused = e.executor(|_| {});
    // The store dir read-only, as the inputs themselves.
    let req = e.request(DESCRIBE, &["build/fs", "build/out"], |r| {
        r.scratch_paths = vec!["build".into()];
    });

    let by_view = viewed.build(&req, &NoLogs).await.unwrap();
    let by_fuse = fused.build(&req, &NoLogs).await.unwrap();
    let seen = |r: &tvix_oci_executor::BuildResult, i: usize| {
        let node = r.build.outputs[i].1.clone();
        let e = &e;
        async move { String::from_utf8(file_of(e, &node, "").await).unwrap() }
    };
    // Neither FUSE nor an overlay: the cache's own file system.
    let fs = seen(&by_view, 0).await;
    assert!(
        !["", "overlay"].contains(&fs.trim()) && !fs.starts_with("fuse"),
        "{fs}"
    );
    assert!(seen(&by_fuse, 0).await.starts_with("fuse"));
    let listing = seen(&by_view, 1).await;
    assert!(
        listing.contains(&format!("./{BB}/bin/busybox regular file 555 ")),
        "{listing}"
    );
    assert!(listing.contains(" 1\n1982256\n"), "{listing}");
    assert_eq!(listing, seen(&by_fuse, 1).await, "the views differ");
    assert_eq!(by_view.accounting.input_bytes_fetched, 0);
    // The busybox tree was written once, under its digest and size.
    let Node::Directory { digest, size } = &e.bb else {
        panic!()
    };
    let tree = format!("layer/t/{}.{size}", digest.to_hex());
    assert!(cache_dir.join(tree).is_dir());
    e.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_into_the_store_dir_are_the_builds_and_inputs_stay_as_they_are() {
    need_runtime!();
    let e = env().await;
    let cache = Arc::new(ViewCache::open(e.tmp.path().join("view-cache")).unwrap());
    let viewed = e.executor(|c| c.kernel_view = Some(cache.clone()));
    let fused = e.executor(|_| {});
    let Node::File { digest, .. } = &e.data else {
        panic!()
    };
    let blob = e.blobs.local_path(digest).unwrap();
    let before = std::fs::read(&blob).unwrap();
    // Changing an input is refused (it is read-only, not the build's), as
    // through FUSE; a new entry in the writable store dir is the build's.
    let script = format!(
        "echo more 2>/dev/null >> /nix/store/{DATA}; echo append=$? > $out; \
         rm -f /nix/store/{BB}/bin/busybox 2>/dev/null; echo rm=$? >> $out; \
         echo mine > /nix/store/new && cat /nix/store/new /nix/store/{DATA} >> $out"
    );
    let req = e.request(&script, &[&format!("nix/store/{OUT}")], |_| {});
    let by_view = viewed.build(&req, &NoLogs).await.unwrap();
    let by_fuse = fused.build(&req, &NoLogs).await.unwrap();
    let out = file_of(&e, &by_view.build.outputs[0].1, "").await;
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!("append=1\nrm=1\nmine\ndata that names /nix/store/{BB}\n")
    );
    assert_eq!(by_view.build.outputs, by_fuse.build.outputs);
    assert_eq!(
        std::fs::read(&blob).unwrap(),
        before,
        "the store's blob changed"
    );
    assert_eq!(B3Digest::of(&before), *digest);
    e.assert_clean();
}
