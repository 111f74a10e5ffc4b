//! Skipping a test where what it needs is absent. Outside CI a skip prints
//! why and the test returns; in CI (which installs everything) a skip
//! would pass unseen, so it fails with the reason instead.

use std::path::Path;

/// What a test may need of the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// To run as root (mounts with `allow_other`, cgroups, the id pool).
    Root,
    /// `/dev/fuse`.
    Fuse,
    /// `runc` on `PATH`.
    Runc,
    /// A static busybox at `/bin/busybox` (the tests' sandbox shell and
    /// toolchain).
    Busybox,
}

/// Why a test needing `needs` cannot run here, if it cannot: the first
/// need missing, named.
pub fn missing(needs: &[Need]) -> Option<String> {
    needs.iter().find_map(|n| match n {
        Need::Root => (!tvix_oci_sys::process::is_root()).then(|| "needs root".to_owned()),
        Need::Fuse => absent("/dev/fuse"),
        Need::Busybox => absent("/bin/busybox"),
        Need::Runc => {
            let path = std::env::var_os("PATH").unwrap_or_default();
            let found = std::env::split_paths(&path).any(|d| d.join("runc").is_file());
            (!found).then(|| "runc is not installed".to_owned())
        }
    })
}

/// For a benchmark program: whether the machine lacks one of `needs`,
/// saying `SKIPPED: why` when it does (a benchmark skips, in CI too).
pub fn lacks(needs: &[Need]) -> bool {
    missing(needs)
        .inspect(|why| println!("SKIPPED: {why}"))
        .is_some()
}

fn absent(p: &str) -> Option<String> {
    (!Path::new(p).exists()).then(|| format!("{p} is absent"))
}

/// Whether this runs in CI: the variable `CI` set (CI sets `CI=true`),
/// and not to `false` or `0`.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// A test skipping for `reason`: outside CI it prints why (the caller
/// returns); in CI it panics with the reason.
pub fn skip_or_fail(reason: &str) {
    assert!(
        !in_ci(),
        "CI must run this test, but it would be skipped: {reason}"
    );
    println!("SKIPPED: {reason}");
}

/// Returns from the calling test, saying why, when the machine lacks one
/// of the needs named (`root`, `fuse`, `runc`, `busybox`); in CI it fails
/// instead (see [`skip_or_fail`]).
///
/// ```
/// fn a_test() {
///     tvix_oci_testkit::require!(root, fuse);
///     // …mounts something
/// }
/// ```
#[macro_export]
macro_rules! require {
    ($($need:ident),+ $(,)?) => {
        if let Some(why) = $crate::missing(&[$($crate::require!(@need $need)),+]) {
            $crate::skip_or_fail(&why);
            return;
        }
    };
    (@need root) => { $crate::Need::Root };
    (@need fuse) => { $crate::Need::Fuse };
    (@need runc) => { $crate::Need::Runc };
    (@need busybox) => { $crate::Need::Busybox };
}
