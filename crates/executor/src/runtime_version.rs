//! The runc version floor. runc before 1.1.12 leaks a host directory fd
//! into the container (CVE-2024-21626: a build could set its working
//! directory to `/proc/self/fd/N` and walk out to the host's root), so the
//! executor refuses it — unless it is a distribution build known to carry
//! that fix (Debian bookworm's `1.1.5+ds1-1+deb12u1` and later). Later
//! fixes it misses are logged as warnings, with why our configuration is
//! not exposed (see SECURITY.md). Runtimes other than runc are not judged.

use std::path::Path;

/// A version `major.minor.patch` (what follows, e.g. `+ds1`, is ignored).
pub type Version = (u32, u32, u32);

/// The upstream version and the `commit:` line of `runc --version`, or
/// `None` when the text is not runc's.
pub fn parse(text: &str) -> Option<(Version, String)> {
    let v = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("runc version "))?;
    let mut nums = v
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u32>().ok());
    let version = (nums.next()??, nums.next()??, nums.next()??);
    let commit = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("commit: "))
        .unwrap_or("")
        .to_owned();
    Some((version, commit))
}

/// Debian's bookworm package with the CVE-2024-21626 fix backported:
/// `1.1.5+ds1-1+deb12uN`, N ≥ 1.
fn debian_backport(commit: &str) -> bool {
    commit
        .strip_prefix("1.1.5+ds1-1+deb12u")
        .and_then(|n| n.parse::<u32>().ok())
        .is_some_and(|n| n >= 1)
}

/// What the executor makes of a runc version: `Err` names why it refuses,
/// `Ok` carries a warning to log, naming the later fixes it lacks.
pub fn judge(version: Version, commit: &str) -> Result<Option<String>, String> {
    let (a, b, c) = version;
    let shown = format!("runc {a}.{b}.{c} ({commit})");
    if version < (1, 1, 12) && !debian_backport(commit) {
        return Err(format!(
            "{shown} is older than 1.1.12 and lets a container escape to the host (CVE-2024-21626); install runc 1.1.12 or later (Debian bookworm: 1.1.5+ds1-1+deb12u1 from bookworm-security)"
        ));
    }
    let mut missing = Vec::new();
    if version < (1, 1, 14) {
        // Files created on the host through a volume shared by containers.
        missing.push("CVE-2024-45310");
    }
    let fixed_2025 = match (a, b) {
        (1, 2) => c >= 8,
        (1, 3) => c >= 3,
        (1, minor) => minor >= 4,
        (major, _) => major > 1,
    };
    if !fixed_2025 {
        // Masked paths, /dev/console and /proc writes redirected by an image.
        missing.extend(["CVE-2025-31133", "CVE-2025-52565", "CVE-2025-52881"]);
    }
    Ok((!missing.is_empty()).then(|| {
        format!(
            "{shown} lacks the fixes of {}; builds here share no volumes and run from a read-only root the executor writes, never an image, so they are not exposed (SECURITY.md)",
            missing.join(", ")
        )
    }))
}

/// Runs `runc --version` and judges it. A runtime that is not runc passes.
pub fn check(runtime: &Path) -> Result<Option<String>, String> {
    let out = std::process::Command::new(runtime)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("running {} --version: {e}", runtime.display()))?;
    match parse(&String::from_utf8_lossy(&out.stdout)) {
        Some((v, commit)) => judge(v, &commit),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN: &str = "runc version 1.1.5+ds1\ncommit: 1.1.5+ds1-1+deb12u1\nspec: 1.0.2-dev\n";

    #[test]
    fn parses_runc_only() {
        assert_eq!(
            parse(DEBIAN),
            Some(((1, 1, 5), "1.1.5+ds1-1+deb12u1".to_owned()))
        );
        assert_eq!(
            parse("runc version 1.2.8\ncommit: v1.2.8-0-gabc\n"),
            Some(((1, 2, 8), "v1.2.8-0-gabc".to_owned()))
        );
        assert_eq!(parse("crun version 1.8.1\n"), None);
        assert_eq!(parse("runc version garbage\n"), None);
    }

    #[test]
    fn the_floor() {
        // Upstream 1.1.11 and Debian's unpatched 1.1.5: refused, saying why.
        let e = judge((1, 1, 11), "v1.1.11").unwrap_err();
        assert!(e.contains("CVE-2024-21626") && e.contains("1.1.12"), "{e}");
        assert!(judge((1, 1, 5), "1.1.5+ds1-1").is_err());
        // Debian's backport: accepted, naming the later fixes it lacks.
        let lacks = |v, c| judge(v, c).unwrap().unwrap_or_default();
        let w = lacks((1, 1, 5), "1.1.5+ds1-1+deb12u1");
        assert!(
            w.contains("CVE-2024-45310") && w.contains("CVE-2025-31133"),
            "{w}"
        );
        assert!(lacks((1, 1, 12), "v1.1.12").contains("CVE-2024-45310"));
        let w = lacks((1, 1, 15), "v1.1.15");
        assert!(
            !w.contains("CVE-2024-45310") && w.contains("CVE-2025-52881"),
            "{w}"
        );
        assert_eq!(judge((1, 2, 8), "v1.2.8").unwrap(), None);
        assert!(lacks((1, 3, 2), "v1.3.2").contains("CVE-2025-52565"));
        assert_eq!(judge((1, 3, 3), "v1.3.3").unwrap(), None);
        assert_eq!(judge((1, 4, 0), "v1.4.0").unwrap(), None);
    }
}
