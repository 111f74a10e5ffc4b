//! Who holds an embedded database open. redb lets one process open a
//! database file; a second one fails with "Database already open", which
//! does not say by whom. This finds the holder through `/proc`: the
//! process with the file open (by device and inode, so any path to it
//! matches), its command line, and the gRPC addresses it listens on, so
//! the error can say which URL to use instead.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The process holding a database file open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Its pid, as this process sees it.
    pub pid: u32,
    /// Its command line (arguments joined by spaces, cut at 200 bytes).
    pub command: String,
    /// Store URLs it listens on (`grpc+http://127.0.0.1:8000`,
    /// `grpc+unix:///run/x.sock`); empty if none or not visible.
    pub listening: Vec<String>,
}

/// The process other than this one with `path` open, if one can be seen
/// (processes of other users are invisible unless we are root; those of
/// other pid namespaces always are).
pub fn find_holder(path: &Path) -> Option<Holder> {
    let meta = std::fs::metadata(path).ok()?;
    let me = std::process::id();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::metadata(fd.path())
                .is_ok_and(|m| m.dev() == meta.dev() && m.ino() == meta.ino())
        });
        if holds {
            return Some(Holder {
                pid,
                command: command_of(pid),
                listening: listening(pid),
            });
        }
    }
    None
}

fn command_of(pid: u32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let mut cmd: String = raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(String::from_utf8_lossy)
        .collect::<Vec<_>>()
        .join(" ");
    if cmd.len() > 200 {
        let mut end = 200;
        while !cmd.is_char_boundary(end) {
            end -= 1;
        }
        cmd.truncate(end);
        cmd.push('…');
    }
    if cmd.is_empty() {
        "command unknown".into()
    } else {
        cmd
    }
}

/// The inodes of the sockets `pid` has open.
fn socket_inodes(pid: u32) -> Vec<u64> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    fds.flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|l| {
            let l = l.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?;
            l.parse().ok()
        })
        .collect()
}

/// Store URLs of the sockets `pid` listens on.
fn listening(pid: u32) -> Vec<String> {
    let inodes = socket_inodes(pid);
    let mut out = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            let (Some(local), Some("0A"), Some(inode)) = (f.get(1), f.get(3).copied(), f.get(9))
            else {
                continue;
            };
            if inode.parse().is_ok_and(|i: u64| inodes.contains(&i))
                && let Some(addr) = tcp_addr(local)
            {
                out.push(format!("grpc+http://{addr}"));
            }
        }
    }
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/unix")).unwrap_or_default();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        // Num RefCount Protocol Flags Type St Inode Path; 0x10000: listening
        let listens = f
            .get(3)
            .and_then(|fl| u32::from_str_radix(fl, 16).ok())
            .is_some_and(|fl| fl & 0x10000 != 0);
        if let (true, Some(inode), Some(path)) = (listens, f.get(6), f.get(7))
            && path.starts_with('/')
            && inode.parse().is_ok_and(|i: u64| inodes.contains(&i))
        {
            out.push(format!("grpc+unix://{path}"));
        }
    }
    out
}

/// `0100007F:1F40` (the kernel's hex, address words in host order) as
/// `127.0.0.1:8000`; an unspecified address as the loopback one.
fn tcp_addr(hex: &str) -> Option<std::net::SocketAddr> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let (a, p) = hex.split_once(':')?;
    let port = u16::from_str_radix(p, 16).ok()?;
    let word = |i: usize| {
        a.get(i * 8..i * 8 + 8)
            .and_then(|w| u32::from_str_radix(w, 16).ok())
            .map(u32::to_ne_bytes)
    };
    let ip = match a.len() {
        8 => {
            let ip = Ipv4Addr::from(word(0)?);
            IpAddr::V4(if ip.is_unspecified() {
                Ipv4Addr::LOCALHOST
            } else {
                ip
            })
        }
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            let ip = Ipv6Addr::from(b);
            IpAddr::V6(if ip.is_unspecified() {
                Ipv6Addr::LOCALHOST
            } else {
                ip
            })
        }
        _ => return None,
    };
    Some((ip, port).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_tcp_addresses() {
        if cfg!(target_endian = "little") {
            assert_eq!(
                tcp_addr("0100007F:1F40").unwrap().to_string(),
                "127.0.0.1:8000"
            );
            assert_eq!(
                tcp_addr("00000000:0050").unwrap().to_string(),
                "127.0.0.1:80"
            );
            assert_eq!(
                tcp_addr("00000000000000000000000001000000:1F40")
                    .unwrap()
                    .to_string(),
                "[::1]:8000"
            );
        }
        assert!(tcp_addr("zz:1").is_none());
    }

    #[test]
    fn finds_a_child_holding_a_file() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("db");
        std::fs::write(&file, b"x").unwrap();
        // A child holding the file open on fd 3 while it sleeps.
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg("exec 3<\"$0\"; exec sleep 30")
            .arg(&file)
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let found = loop {
            // Caught between `sh` opening the file and `exec sleep`, the
            // process has no command line yet ("unknown"): look again.
            if let Some(h) = find_holder(&file)
                && h.command.contains("sleep")
            {
                break Some(h);
            }
            if std::time::Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let _ = child.kill();
        let _ = child.wait();
        let h = found.expect("the child holding the file is found");
        assert_eq!(h.pid, child.id());
        assert!(h.command.contains("sleep"), "{}", h.command);
    }
}
