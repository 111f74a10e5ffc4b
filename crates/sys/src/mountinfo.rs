//! Reading `/proc/self/mountinfo`: which mounts exist, to find stale ones
//! before mounting, to find the cgroup hierarchies, and to check that
//! nothing is left behind after.

use std::path::{Path, PathBuf};

/// One line of mountinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// The minor device number (for FUSE: the connection number).
    pub minor: u32,
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub source: String,
    /// The filesystem's own options (for cgroup v1: its controllers).
    pub super_options: String,
}

/// Undoes mountinfo's octal escapes (`\040` for a space, …).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    use std::os::unix::ffi::OsStringExt;
    std::ffi::OsString::from_vec(out)
        .to_string_lossy()
        .into_owned()
}

/// Parses mountinfo text; lines that do not parse are skipped.
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fields: Vec<&str> = left.split(' ').collect();
            let minor = fields.get(2)?.split_once(':')?.1.parse().ok()?;
            let mount_point = fields.get(4)?;
            let mut r = right.split(' ');
            let fs_type = r.next()?.to_owned();
            let source = unescape(r.next()?);
            let super_options = r.next().unwrap_or_default().to_owned();
            Some(MountEntry {
                minor,
                mount_point: PathBuf::from(unescape(mount_point)),
                fs_type,
                source,
                super_options,
            })
        })
        .collect()
}

/// The mounts of this process's mount namespace.
pub fn mounts() -> std::io::Result<Vec<MountEntry>> {
    Ok(parse(&std::fs::read_to_string("/proc/self/mountinfo")?))
}

/// The mounts at or below `dir`.
pub fn mounts_below(dir: &Path) -> std::io::Result<Vec<MountEntry>> {
    Ok(mounts()?
        .into_iter()
        .filter(|m| m.mount_point.starts_with(dir))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_unescapes() {
        let text = "36 35 98:0 /mnt1 /mnt\\040with\\040space rw,noatime master:1 - fuse.tvix-oci-inputs tvix-oci-inputs rw,user_id=0\n\
                    bogus line\n\
                    40 35 0:51 / /tmp rw - tmpfs tmpfs rw\n";
        let m = parse(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mount_point, PathBuf::from("/mnt with space"));
        assert_eq!(m[0].fs_type, "fuse.tvix-oci-inputs");
        assert_eq!(m[0].source, "tvix-oci-inputs");
        assert_eq!(m[0].minor, 0);
        assert_eq!(m[1].minor, 51);
        assert_eq!(m[1].mount_point, PathBuf::from("/tmp"));
    }

    #[test]
    fn reads_this_process() {
        assert!(
            mounts()
                .unwrap()
                .iter()
                .any(|m| m.mount_point == Path::new("/"))
        );
    }
}
