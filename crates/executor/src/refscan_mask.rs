//! Which bytes of a 64-byte block belong to a small alphabet, as a bit
//! mask, 16 bytes per SSSE3 instruction sequence where the CPU has it: the
//! "shufti" technique, two 16-entry tables indexed by each byte's low and
//! high nibble whose AND is non-zero exactly for alphabet bytes. It is exact
//! when the alphabet's rows (the low nibbles present under each high
//! nibble) take at most 8 distinct shapes — nix-base32 takes 3. The
//! reference scanner uses it to find runs of alphabet bytes without a
//! branch per byte.

/// An alphabet, ready to classify 64 bytes at a time.
#[derive(Debug)]
pub(crate) struct AlphabetMask {
    lo: [u8; 16],
    hi: [u8; 16],
    /// 32 bytes per step instead of 16.
    avx2: bool,
}

impl AlphabetMask {
    /// The nibble tables of `alphabet`, if it is exact with them and the
    /// CPU can run them; `None` means: classify byte by byte.
    pub(crate) fn new(alphabet: &[bool; 256]) -> Option<Self> {
        if !Self::cpu_has_it() {
            return None;
        }
        let mut rows: Vec<u16> = Vec::new();
        let (mut lo, mut hi) = ([0u8; 16], [0u8; 16]);
        for h in 0..16usize {
            let row = (0..16usize)
                .filter(|l| alphabet[h << 4 | l])
                .fold(0u16, |r, l| r | 1 << l);
            if row == 0 {
                continue;
            }
            let bucket = match rows.iter().position(|r| *r == row) {
                Some(b) => b,
                None => {
                    rows.push(row);
                    rows.len() - 1
                }
            };
            if bucket >= 8 {
                return None;
            }
            hi[h] = 1 << bucket;
            for (l, entry) in lo.iter_mut().enumerate() {
                if row & (1 << l) != 0 {
                    *entry |= 1 << bucket;
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        let avx2 = std::is_x86_feature_detected!("avx2");
        #[cfg(not(target_arch = "x86_64"))]
        let avx2 = false;
        Some(Self { lo, hi, avx2 })
    }

    #[cfg(target_arch = "x86_64")]
    fn cpu_has_it() -> bool {
        std::is_x86_feature_detected!("ssse3")
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn cpu_has_it() -> bool {
        false
    }

    /// For each 64 bytes of `hay` (the last ones padded with bytes outside
    /// the alphabet), a mask whose bit `i` is set iff that block's byte `i`
    /// is in the alphabet, into `out` (replacing what it held).
    pub(crate) fn masks(&self, hay: &[u8], out: &mut Vec<u64>) {
        out.clear();
        out.resize(hay.len().div_ceil(64), 0);
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: `new` returned Self only where the CPU has SSSE3, and
            // set `avx2` only where it has AVX2.
            unsafe {
                if self.avx2 {
                    self.masks_avx2(hay, out)
                } else {
                    self.masks_ssse3(hay, out)
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = hay;
            unreachable!("AlphabetMask is only made where the CPU has SSSE3")
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn masks_avx2(&self, hay: &[u8], out: &mut [u64]) {
        use std::arch::x86_64::*;
        // SAFETY: as in `masks_ssse3`, with 32-byte loads inside a full
        // 64-byte block of `hay` or `last`.
        unsafe {
            let lo_t = _mm256_broadcastsi128_si256(_mm_loadu_si128(self.lo.as_ptr().cast()));
            let hi_t = _mm256_broadcastsi128_si256(_mm_loadu_si128(self.hi.as_ptr().cast()));
            let nibble = _mm256_set1_epi8(0x0f);
            let zero = _mm256_setzero_si256();
            let classify = |p: *const u8| -> u64 {
                let mut mask = 0u64;
                for k in 0..2 {
                    let v = _mm256_loadu_si256(p.add(32 * k).cast());
                    let lo = _mm256_and_si256(v, nibble);
                    let hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble);
                    let both = _mm256_and_si256(
                        _mm256_shuffle_epi8(lo_t, lo),
                        _mm256_shuffle_epi8(hi_t, hi),
                    );
                    let outside = _mm256_movemask_epi8(_mm256_cmpeq_epi8(both, zero));
                    mask |= u64::from(!(outside as u32)) << (32 * k);
                }
                mask
            };
            let full = hay.len() / 64;
            for (i, m) in out.iter_mut().enumerate().take(full) {
                *m = classify(hay.as_ptr().add(64 * i));
            }
            let rest = &hay[full * 64..];
            if !rest.is_empty() {
                let mut last = [0u8; 64];
                last[..rest.len()].copy_from_slice(rest);
                out[full] = classify(last.as_ptr()) & ((1u64 << rest.len()) - 1);
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "ssse3")]
    fn masks_ssse3(&self, hay: &[u8], out: &mut [u64]) {
        use std::arch::x86_64::*;
        // SAFETY: every load reads 16 bytes inside `self.lo`, `self.hi`, a
        // full 64-byte block of `hay`, or `last` (unaligned loads); the
        // rest are register operations.
        unsafe {
            let lo_t = _mm_loadu_si128(self.lo.as_ptr().cast());
            let hi_t = _mm_loadu_si128(self.hi.as_ptr().cast());
            let nibble = _mm_set1_epi8(0x0f);
            let zero = _mm_setzero_si128();
            let classify = |p: *const u8| -> u64 {
                let mut mask = 0u64;
                for k in 0..4 {
                    let v = _mm_loadu_si128(p.add(16 * k).cast());
                    let lo = _mm_and_si128(v, nibble);
                    let hi = _mm_and_si128(_mm_srli_epi16(v, 4), nibble);
                    let both =
                        _mm_and_si128(_mm_shuffle_epi8(lo_t, lo), _mm_shuffle_epi8(hi_t, hi));
                    let outside = _mm_movemask_epi8(_mm_cmpeq_epi8(both, zero));
                    mask |= u64::from(!(outside as u32) & 0xffff) << (16 * k);
                }
                mask
            };
            let full = hay.len() / 64;
            for (i, m) in out.iter_mut().enumerate().take(full) {
                *m = classify(hay.as_ptr().add(64 * i));
            }
            let rest = &hay[full * 64..];
            if !rest.is_empty() {
                let mut last = [0u8; 64];
                last[..rest.len()].copy_from_slice(rest);
                out[full] = classify(last.as_ptr()) & ((1u64 << rest.len()) - 1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_for_nix_base32_and_refused_when_too_varied() {
        let mut alphabet = [false; 256];
        for &b in b"0123456789abcdfghijklmnpqrsvwxyz" {
            alphabet[b as usize] = true;
        }
        let Some(m) = AlphabetMask::new(&alphabet) else {
            println!("SKIPPED: no SSSE3 on this CPU");
            return;
        };
        // Every byte value, and a tail shorter than a block; with AVX2
        // (where the CPU has it) and with SSSE3 alone.
        let hay: Vec<u8> = (0..=255u8).chain(b"abc-e0".iter().copied()).collect();
        let mut m = m;
        for avx2 in [m.avx2, false] {
            m.avx2 = avx2;
            let mut masks = Vec::new();
            m.masks(&hay, &mut masks);
            assert_eq!(masks.len(), 5);
            for (i, b) in hay.iter().enumerate() {
                let bit = masks[i / 64] >> (i % 64) & 1 == 1;
                assert_eq!(
                    bit, alphabet[*b as usize],
                    "byte {b:#x} at {i}, avx2 {avx2}"
                );
            }
            assert_eq!(masks[4] >> 6, 0, "nothing past the end");
        }
        // Nine rows of different shapes: not exact with 8 buckets.
        let mut varied = [false; 256];
        for h in 0..9usize {
            for l in 0..=h {
                varied[h << 4 | l] = true;
            }
        }
        assert!(AlphabetMask::new(&varied).is_none());
    }
}
