//! Where runs of a small alphabet's bytes start, 64 bytes at a time: the
//! "shufti" technique classifies each byte with two 16-entry tables
//! indexed by its low and high nibble (their AND is non-zero exactly for
//! alphabet bytes), one SIMD shuffle per 16, 32 or 64 bytes (SSSE3, AVX2,
//! AVX-512BW, whichever the CPU has), and the block's bit mask is narrowed
//! with shifts until a bit says "a whole run starts here" — no branch per
//! byte, no buffer. The tables are exact when the alphabet's rows (the low
//! nibbles present under each high nibble) take at most 8 distinct shapes;
//! nix-base32 takes 3. The reference scanner uses it to find the only
//! windows that can hold a store path hash.

/// An alphabet, ready to classify 64 bytes at a time.
#[derive(Debug)]
pub(crate) struct AlphabetMask {
    lo: [u8; 16],
    hi: [u8; 16],
    /// The widest instructions this CPU runs.
    level: Level,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Ssse3,
    Avx2,
    Avx512,
}

impl AlphabetMask {
    /// The longest run [`Self::each_run_start`] looks for.
    pub(crate) const MAX_RUN: usize = 64;

    /// The nibble tables of `alphabet`, if it is exact with them and the
    /// CPU can run them; `None` means: classify byte by byte.
    pub(crate) fn new(alphabet: &[bool; 256]) -> Option<Self> {
        let level = Level::of_this_cpu()?;
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
        Some(Self { lo, hi, level })
    }

    /// Calls `start(i)`, `i` increasing, for every `i` such that the `len`
    /// bytes `hay[i..i + len]` are all in the alphabet. `len` must be in
    /// `1..=MAX_RUN` (otherwise nothing is called).
    pub(crate) fn each_run_start(&self, hay: &[u8], len: usize, mut start: impl FnMut(usize)) {
        if !(1..=Self::MAX_RUN).contains(&len) {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `new` chose `level` from what this CPU reported it runs.
        unsafe {
            // Store path hashes are 32 bytes: a copy of the loop for that
            // length, with its shifts known at compile time (variable
            // 128-bit shifts cost several times more).
            const HASH: usize = 32;
            match (self.level, len) {
                (Level::Avx512, HASH) => self.runs_avx512::<HASH>(hay, len, &mut start),
                (Level::Avx512, _) => self.runs_avx512::<0>(hay, len, &mut start),
                (Level::Avx2, HASH) => self.runs_avx2::<HASH>(hay, len, &mut start),
                (Level::Avx2, _) => self.runs_avx2::<0>(hay, len, &mut start),
                (Level::Ssse3, HASH) => self.runs_ssse3::<HASH>(hay, len, &mut start),
                (Level::Ssse3, _) => self.runs_ssse3::<0>(hay, len, &mut start),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (hay, &mut start);
            unreachable!("AlphabetMask is only made where the CPU has SSSE3")
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512bw")]
    fn runs_avx512<const LEN: usize>(&self, hay: &[u8], len: usize, start: &mut impl FnMut(usize)) {
        use std::arch::x86_64::*;
        // SAFETY: every load reads 16 bytes of a table or 64 bytes inside
        // a block `each_block` hands over (unaligned loads).
        unsafe {
            let lo_t = _mm512_broadcast_i32x4(_mm_loadu_si128(self.lo.as_ptr().cast()));
            let hi_t = _mm512_broadcast_i32x4(_mm_loadu_si128(self.hi.as_ptr().cast()));
            let nibble = _mm512_set1_epi8(0x0f);
            each_block::<LEN>(hay, len, start, |p| {
                let v = _mm512_loadu_si512(p.cast());
                let lo = _mm512_and_si512(v, nibble);
                let hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble);
                _mm512_test_epi8_mask(_mm512_shuffle_epi8(lo_t, lo), _mm512_shuffle_epi8(hi_t, hi))
            })
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn runs_avx2<const LEN: usize>(&self, hay: &[u8], len: usize, start: &mut impl FnMut(usize)) {
        use std::arch::x86_64::*;
        // SAFETY: as in `runs_avx512`, 32 bytes at a time.
        unsafe {
            let lo_t = _mm256_broadcastsi128_si256(_mm_loadu_si128(self.lo.as_ptr().cast()));
            let hi_t = _mm256_broadcastsi128_si256(_mm_loadu_si128(self.hi.as_ptr().cast()));
            let nibble = _mm256_set1_epi8(0x0f);
            let zero = _mm256_setzero_si256();
            each_block::<LEN>(hay, len, start, |p| {
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
            })
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "ssse3")]
    fn runs_ssse3<const LEN: usize>(&self, hay: &[u8], len: usize, start: &mut impl FnMut(usize)) {
        use std::arch::x86_64::*;
        // SAFETY: as in `runs_avx512`, 16 bytes at a time.
        unsafe {
            let lo_t = _mm_loadu_si128(self.lo.as_ptr().cast());
            let hi_t = _mm_loadu_si128(self.hi.as_ptr().cast());
            let nibble = _mm_set1_epi8(0x0f);
            let zero = _mm_setzero_si128();
            each_block::<LEN>(hay, len, start, |p| {
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
            })
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl Level {
    fn of_this_cpu() -> Option<Self> {
        if std::is_x86_feature_detected!("avx512bw") {
            Some(Level::Avx512)
        } else if std::is_x86_feature_detected!("avx2") {
            Some(Level::Avx2)
        } else if std::is_x86_feature_detected!("ssse3") {
            Some(Level::Ssse3)
        } else {
            None
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
impl Level {
    fn of_this_cpu() -> Option<Self> {
        None
    }
}

/// The driver every instruction set shares (inlined into each, so it is
/// compiled with its features): `classify(p)` gives the alphabet mask of
/// the 64 bytes at `p` (bit `i` for byte `i`); the last, partial block is
/// copied into a padded one first. The windows starting in a block are
/// judged once the next block's mask is known: the two masks, side by
/// side, are narrowed (`t &= t >> s`, `s` doubling) until bit `i` is set
/// iff the `len` bytes from `i` on are all alphabet bytes; for hash-long
/// runs only after a cheaper test ([`has_full_16`]) says there may be one.
///
/// # Safety
/// `classify` may read 64 bytes from the pointer it is given, no more.
#[inline(always)]
unsafe fn each_block<const LEN: usize>(
    hay: &[u8],
    len: usize,
    start: &mut impl FnMut(usize),
    classify: impl Fn(*const u8) -> u64,
) {
    // `LEN`, where the caller fixed it at compile time (0: not fixed).
    let len = if LEN > 0 { LEN } else { len };
    // The shifts that narrow a mask to the starts of runs of `len`.
    let mut shifts = [0u32; 7];
    let mut steps = 0;
    let mut run = 1;
    while run < len {
        let s = run.min(len - run);
        shifts[steps] = s as u32;
        steps += 1;
        run += s;
    }
    let shifts = &shifts[..steps];
    let mut prev = 0u64;
    // Judges the windows that start in block `k - 1`.
    let mut judge = |k: usize, cur: u64| {
        if len == 32 && !has_full_16(prev, cur) {
            prev = cur;
            return;
        }
        let mut t = u128::from(cur) << 64 | u128::from(prev);
        for &s in shifts {
            t &= t >> s;
        }
        let mut starts = t as u64;
        while starts != 0 {
            let i = starts.trailing_zeros() as usize;
            starts &= starts - 1;
            start(64 * k + i - 64);
        }
        prev = cur;
    };
    let full = hay.len() / 64;
    for k in 0..full {
        // SAFETY: the block `64 * k..64 * k + 64` lies inside `hay`.
        judge(k, classify(unsafe { hay.as_ptr().add(64 * k) }));
    }
    let rest = &hay[full * 64..];
    if rest.is_empty() {
        judge(full, 0);
    } else {
        let mut last = [0u8; 64];
        last[..rest.len()].copy_from_slice(rest);
        judge(full, classify(last.as_ptr()) & ((1u64 << rest.len()) - 1));
        judge(full + 1, 0);
    }
}

/// Whether one of the 16-bit groups of `prev`, or the lowest of `cur`, has
/// all bits set: a run of 32 that starts in `prev` at bit `i < 64` covers
/// bits `i..i + 32` of the two side by side, and so the whole aligned
/// group that starts at the multiple of 16 in `i..=i + 16` — at most bit
/// 64, the lowest group of `cur`. Most blocks of text fail this test,
/// which costs a few operations without a chain of dependent ones; the
/// narrowing's chain of shifts runs only for the rest.
#[inline(always)]
fn has_full_16(prev: u64, cur: u64) -> bool {
    const ONES: u64 = 0x0001_0001_0001_0001;
    const HIGHS: u64 = 0x8000_8000_8000_8000;
    // A group of all ones is a group of zeros in the complement, which
    // the classic test finds: subtracting 1 per group borrows through a
    // zero group's top bit.
    let zero_group = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS != 0;
    zero_group(!prev) | zero_group(!cur | 0xffff_ffff_ffff_0000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nix32() -> [bool; 256] {
        let mut alphabet = [false; 256];
        for &b in b"0123456789abcdfghijklmnpqrsvwxyz" {
            alphabet[b as usize] = true;
        }
        alphabet
    }

    /// Every level this CPU runs, down from the one `new` picked.
    fn levels(m: &AlphabetMask) -> Vec<Level> {
        [Level::Avx512, Level::Avx2, Level::Ssse3]
            .into_iter()
            .skip_while(|l| *l != m.level)
            .collect()
    }

    fn starts(m: &AlphabetMask, hay: &[u8], len: usize) -> Vec<usize> {
        let mut out = Vec::new();
        m.each_run_start(hay, len, |i| out.push(i));
        out
    }

    fn naive(alphabet: &[bool; 256], hay: &[u8], len: usize) -> Vec<usize> {
        (0..hay.len().saturating_sub(len - 1))
            .filter(|&i| hay[i..i + len].iter().all(|b| alphabet[*b as usize]))
            .collect()
    }

    #[test]
    fn runs_as_found_byte_by_byte() {
        let alphabet = nix32();
        let Some(mut m) = AlphabetMask::new(&alphabet) else {
            println!("SKIPPED: no SSSE3 on this CPU");
            return;
        };
        // Every byte value once (so each is classified), then runs of
        // alphabet bytes of every length 0..=70 between outsiders, so runs
        // start and end at every offset of a block.
        let mut hay: Vec<u8> = (0..=255u8).collect();
        for n in 0..=70usize {
            hay.extend((0..n).map(|i| b"0123456789abcdfghijklmnpqrsvwxyz"[i % 32]));
            hay.push(b'e');
        }
        for level in levels(&m) {
            m.level = level;
            for len in 1..=AlphabetMask::MAX_RUN {
                // Whole, and cut short at every length near a block's end.
                for cut in [hay.len(), 1, 63, 64, 65, 127, 300, 301] {
                    let h = &hay[..cut.min(hay.len())];
                    assert_eq!(
                        starts(&m, h, len),
                        naive(&alphabet, h, len),
                        "{level:?}, len {len}, {} bytes",
                        h.len()
                    );
                }
            }
            // Hash-long runs (the length with its own copy of the loop
            // and a pre-test) and one byte shorter, at every offset of
            // two blocks.
            for run in [31, 32, 33] {
                for at in 0..160 {
                    let mut h = vec![b'e'; 256];
                    h[at..at + run].fill(b'z');
                    assert_eq!(
                        starts(&m, &h, 32),
                        naive(&alphabet, &h, 32),
                        "{level:?}, a run of {run} at {at}"
                    );
                }
            }
            assert!(starts(&m, &hay, 0).is_empty());
            assert!(starts(&m, &hay, 65).is_empty());
        }
    }

    #[test]
    fn refused_when_too_varied() {
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
