//! The framing of the stream `nix-store --export` writes and `nix-store
//! --import` reads, so that a path we built can be handed to Nix's own
//! import (which hashes the NAR itself, takes the store lock, writes the
//! path and records it as valid). Per path: the number 1, the path's NAR,
//! [`EXPORT_MAGIC`], the path, its references, its deriver (or an empty
//! string) and 0 (no legacy signature); the number 0 ends the stream.
//! Numbers are 64-bit little-endian; strings their length as a number,
//! then the bytes, zero-padded to a multiple of 8. (Checked against Nix
//! 2.8's `nix-store --import`.)

use crate::StorePath;

/// Follows each NAR of an export stream.
pub const EXPORT_MAGIC: u64 = 0x4558_494e;

/// What precedes a path's NAR.
pub fn path_header() -> [u8; 8] {
    1u64.to_le_bytes()
}

/// What follows a path's NAR: the magic, `path`, `references` (in the
/// order given; Nix keeps them as a set), `deriver`, no signature.
pub fn path_trailer(
    path: &StorePath,
    references: &[StorePath],
    deriver: Option<&StorePath>,
) -> Vec<u8> {
    let mut b = EXPORT_MAGIC.to_le_bytes().to_vec();
    string(&mut b, path.absolute().as_bytes());
    b.extend_from_slice(&(references.len() as u64).to_le_bytes());
    for r in references {
        string(&mut b, r.absolute().as_bytes());
    }
    string(
        &mut b,
        deriver
            .map(StorePath::absolute)
            .unwrap_or_default()
            .as_bytes(),
    );
    b.extend_from_slice(&0u64.to_le_bytes());
    b
}

/// The end of the stream.
pub fn stream_end() -> [u8; 8] {
    0u64.to_le_bytes()
}

fn string(b: &mut Vec<u8>, s: &[u8]) {
    b.extend_from_slice(&(s.len() as u64).to_le_bytes());
    b.extend_from_slice(s);
    b.resize(b.len() + (8 - s.len() % 8) % 8, 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trailer_is_laid_out_as_nix_reads_it() {
        let p = StorePath::from_base_name("i72sh5s677q84k6rwyjdpx0p2j0x962f-busybox").unwrap();
        let d = StorePath::from_base_name("j32iaf6v4qsxf5ygzpr0mbx30p1g056h-a.drv").unwrap();
        let t = path_trailer(&p, std::slice::from_ref(&p), Some(&d));
        let abs = p.absolute();
        // "/nix/store/<32>-busybox": 51 bytes, padded to 56.
        assert_eq!(abs.len(), 51);
        let mut want = 0x4558_494eu64.to_le_bytes().to_vec();
        want.extend_from_slice(&51u64.to_le_bytes());
        want.extend_from_slice(abs.as_bytes());
        want.extend_from_slice(&[0; 5]);
        want.extend_from_slice(&1u64.to_le_bytes());
        want.extend_from_slice(&51u64.to_le_bytes());
        want.extend_from_slice(abs.as_bytes());
        want.extend_from_slice(&[0; 5]);
        want.extend_from_slice(&49u64.to_le_bytes());
        want.extend_from_slice(d.absolute().as_bytes());
        want.extend_from_slice(&[0; 7]);
        want.extend_from_slice(&0u64.to_le_bytes());
        assert_eq!(t, want);
        assert_eq!(path_header(), [1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(stream_end(), [0; 8]);
        // No deriver: the empty string, nothing padded.
        let t = path_trailer(&p, &[], None);
        assert_eq!(&t[t.len() - 16..], &[0; 16]);
    }
}
