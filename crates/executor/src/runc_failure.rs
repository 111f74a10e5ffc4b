//! Why runc failed before the build ran, from what it said: the builder
//! could not be executed, or its working dir entered — the build's fault,
//! named — rather than runc's or the host's. Matched on runc 1.1.5's
//! messages (Debian 12), checked by running it.

/// Why runc could not exec the build's command, from what it said before
/// the build started (`runc run failed: unable to start container process:
/// exec: "/x": stat /x: no such file or directory`, runc 1.1 and later),
/// as the rest of the sentence "the builder X ...". `None` when runc failed
/// for another reason (its own, or the host's).
pub fn exec_failure(said: &str) -> Option<&'static str> {
    let line = said
        .lines()
        .find(|l| l.contains("unable to start container process: exec: "))?;
    let why = &line[line.find("unable to start container process: exec: ")?..];
    if why.contains("no such file or directory") || why.contains("not a directory") {
        Some("does not exist in the sandbox")
    } else if why.contains("executable file not found in $PATH") {
        Some("is not on the sandbox's PATH")
    } else if why.contains("permission denied") {
        Some(
            "is not an executable file in the sandbox (a directory, or a file without the executable bit)",
        )
    } else {
        None
    }
}

/// Why runc could not enter the build's working dir `cwd` (absolute, as
/// in the container), from what it said before the build started (runc
/// 1.1.5: `error during container init: mkdir /nix/store/x/f: not a
/// directory` when a component is a file of an input, `... permission
/// denied` below a read-only input; `chdir to cwd ("/x") set in
/// config.json failed`), as the rest of the sentence "the working dir X
/// ...". `None` when runc failed for another reason.
pub fn cwd_failure(said: &str, cwd: &str) -> Option<&'static str> {
    let line = said
        .lines()
        .find(|l| l.contains("unable to start container process: "))?;
    let chdir = format!("chdir to cwd (\\\"{cwd}\\\")");
    let on_the_way = line
        .split("error during container init: mkdir ")
        .nth(1)
        .is_some_and(|rest| {
            let path = rest.split(": ").next().unwrap_or_default();
            // The component that failed: the dir itself or one above it.
            cwd == path || cwd.strip_prefix(path).is_some_and(|r| r.starts_with('/'))
        });
    if !on_the_way && !line.contains(&chdir) {
        return None;
    }
    if line.contains("not a directory") {
        Some("is, or is below, a file in the sandbox")
    } else if line.contains("permission denied") || line.contains("read-only file system") {
        Some("does not exist and cannot be made in the sandbox (below a read-only input)")
    } else if line.contains("no such file or directory") {
        Some("does not exist in the sandbox")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::{cwd_failure, exec_failure};

    /// What runc 1.1.5 (Debian 12) prints for a working dir it cannot
    /// enter, checked by running it (`run --workdir`).
    #[test]
    fn working_dirs_that_fail_are_told_from_runc_failing() {
        let said = |cause: &str| {
            format!(
                "time=\"2026-12-03T18:36:18Z\" level=error msg=\"runc run failed: unable to start container process: error during container init: {cause}\""
            )
        };
        let file = said("mkdir /nix/store/bb/bin/busybox: not a directory");
        assert_eq!(
            cwd_failure(&file, "/nix/store/bb/bin/busybox"),
            Some("is, or is below, a file in the sandbox")
        );
        assert_eq!(
            cwd_failure(&file, "/nix/store/bb/bin/busybox/sub"),
            Some("is, or is below, a file in the sandbox")
        );
        // Another path failing is not the working dir's doing.
        assert_eq!(cwd_failure(&file, "/nix/store/bb/bin/busy"), None);
        assert_eq!(cwd_failure(&file, "/build"), None);
        let ro = said("mkdir /nix/store/bb/nothere: permission denied");
        assert!(cwd_failure(&ro, "/nix/store/bb/nothere").is_some_and(|p| p.contains("read-only")));
        let chdir =
            said("chdir to cwd (\\\"/x\\\") set in config.json failed: no such file or directory");
        assert_eq!(
            cwd_failure(&chdir, "/x"),
            Some("does not exist in the sandbox")
        );
        assert_eq!(
            cwd_failure(&said("mkdir /x: no space left on device"), "/x"),
            None
        );
    }

    /// What runc 1.1.5 (Debian 12) prints, checked by running it.
    #[test]
    fn execs_that_fail_are_told_from_runc_failing() {
        let said = |cause: &str| {
            format!(
                "time=\"2026-12-01T20:04:59Z\" level=error msg=\"runc run failed: unable to start container process: exec: \\\"/x\\\": {cause}\""
            )
        };
        let missing = "does not exist in the sandbox";
        assert_eq!(
            exec_failure(&said("stat /x: no such file or directory")),
            Some(missing)
        );
        assert_eq!(
            exec_failure(&said("stat /x: not a directory")),
            Some(missing)
        );
        assert!(
            exec_failure(&said("permission denied"))
                .is_some_and(|p| p.starts_with("is not an executable file"))
        );
        assert_eq!(
            exec_failure(&said("executable file not found in $PATH")),
            Some("is not on the sandbox's PATH")
        );
        for other in [
            "time=\"x\" level=error msg=\"runc run failed: unable to start container process: error during container init: error mounting \\\"proc\\\": permission denied\"",
            "level=error msg=\"cannot create the container\"",
            "",
        ] {
            assert_eq!(exec_failure(other), None, "{other}");
        }
    }
}
