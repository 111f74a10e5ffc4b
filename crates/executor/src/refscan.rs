//! Reference scanning as Nix does it: which of a set of needles (store path
//! hashes) occur anywhere in an output's bytes — file contents, symlink
//! targets and names. Streaming: data comes in chunks of any size, needles
//! that straddle chunk boundaries and needles that overlap are found.
//!
//! Store path hashes — needles of one length over a small alphabet
//! (nix-base32) — can only sit in a run of alphabet bytes at least as long
//! as a needle, and such runs are rare in binaries and in text alike. So
//! only windows made wholly of alphabet bytes are looked up (see
//! `SkipScan`): found 64 bytes at a time with SIMD where the CPU has it
//! (`AlphabetMask`), else the way Nix finds them — a window checked from
//! its end, jumping past the first byte outside the alphabet. Any other
//! needle set is searched with Aho-Corasick. A needle crossing the boundary
//! between two chunks is found by searching just the boundary window (the
//! previous chunk's last `max_len - 1` bytes and this chunk's first ones),
//! so no byte is copied twice for the common case.

use std::collections::HashMap;

use aho_corasick::{AhoCorasick, MatchKind};

use crate::refscan_mask::AlphabetMask;

/// The needles to look for, compiled once per build.
#[derive(Debug)]
pub struct Needles {
    matcher: Option<Matcher>,
    count: usize,
    max_len: usize,
}

/// How a needle set is searched.
#[derive(Debug)]
enum Matcher {
    Skip(Box<SkipScan>),
    Ac(AhoCorasick),
}

impl Matcher {
    /// Calls `hit(start, needle)` for every occurrence in `hay`, overlapping
    /// ones included.
    fn each_match(&self, hay: &[u8], mut hit: impl FnMut(usize, usize)) {
        match self {
            Matcher::Skip(s) => s.each_match(hay, hit),
            Matcher::Ac(ac) => {
                for m in ac.find_overlapping_iter(hay) {
                    hit(m.start(), m.pattern().as_usize());
                }
            }
        }
    }
}

/// Needles that all have one length, over an alphabet of at most
/// [`SkipScan::MAX_ALPHABET`] bytes (store path hashes: 32 bytes of
/// nix-base32). Only windows made wholly of alphabet bytes are looked up:
/// found by SIMD blocks, or else window by window from each one's end,
/// jumping past the first byte outside the alphabet (bytes already checked
/// are not checked again).
#[derive(Debug)]
struct SkipScan {
    len: usize,
    alphabet: [bool; 256],
    /// The alphabet as SIMD nibble tables, where exact and the CPU has
    /// them: then runs of alphabet bytes are found 64 bytes at a time.
    mask: Option<AlphabetMask>,
    /// The needles by their first 8 bytes (checked in full on a hit).
    by_prefix: HashMap<u64, Candidates>,
}

/// Needles sharing a prefix, each with its index.
type Candidates = Vec<(Box<[u8]>, usize)>;

impl SkipScan {
    const MAX_ALPHABET: usize = 64;
    const MIN_LEN: usize = 8;

    /// The skip scanner for `needles`, if they suit it.
    fn new(needles: &[&[u8]]) -> Option<Self> {
        let len = needles.first()?.len();
        if len < Self::MIN_LEN || needles.iter().any(|n| n.len() != len) {
            return None;
        }
        let mut alphabet = [false; 256];
        for &b in needles.iter().flat_map(|n| n.iter()) {
            alphabet[b as usize] = true;
        }
        if alphabet.iter().filter(|a| **a).count() > Self::MAX_ALPHABET {
            return None;
        }
        let mut by_prefix: HashMap<u64, Candidates> = HashMap::new();
        for (i, n) in needles.iter().enumerate() {
            by_prefix
                .entry(prefix(n))
                .or_default()
                .push(((*n).into(), i));
        }
        Some(Self {
            len,
            mask: (len <= AlphabetMask::MAX_RUN)
                .then(|| AlphabetMask::new(&alphabet))
                .flatten(),
            alphabet,
            by_prefix,
        })
    }

    fn each_match(&self, hay: &[u8], hit: impl FnMut(usize, usize)) {
        match &self.mask {
            // With AVX2 or AVX-512: 19-25 GiB/s whatever the data (SSSE3
            // alone: 9-10); jumping makes 14 on binaries, 7 or less on text.
            Some(m) => self.each_match_blocks(m, hay, hit),
            None => self.each_match_skipping(hay, hit),
        }
    }

    /// Looks `window` up, calling `hit(start, needle)` for each equal needle.
    fn look_up(&self, window: &[u8], start: usize, hit: &mut impl FnMut(usize, usize)) {
        if let Some(cands) = self.by_prefix.get(&prefix(window)) {
            for (n, i) in cands {
                if **n == *window {
                    hit(start, *i);
                }
            }
        }
    }

    /// The windows made wholly of alphabet bytes, found 64 bytes at a
    /// time by `m`, looked up.
    fn each_match_blocks(&self, m: &AlphabetMask, hay: &[u8], mut hit: impl FnMut(usize, usize)) {
        m.each_run_start(hay, self.len, |start| {
            if let Some(window) = hay.get(start..start + self.len) {
                self.look_up(window, start, &mut hit);
            }
        });
    }

    /// Window by window, from each window's end, jumping past bytes
    /// outside the alphabet (Nix's scanner).
    fn each_match_skipping(&self, hay: &[u8], mut hit: impl FnMut(usize, usize)) {
        let len = self.len;
        let mut start = 0;
        // hay[start..checked] are known to be alphabet bytes.
        let mut checked = 0;
        while start + len <= hay.len() {
            let end = start + len;
            if checked < end {
                // From the window's end back to what is known good.
                let mut j = end;
                let mut bad = None;
                while j > checked.max(start) {
                    j -= 1;
                    if !self.alphabet[hay[j] as usize] {
                        bad = Some(j);
                        break;
                    }
                }
                if let Some(b) = bad {
                    // No window holding hay[b] can match; hay[b+1..end]
                    // was checked on the way.
                    start = b + 1;
                    checked = end;
                    continue;
                }
                checked = end;
            }
            self.look_up(&hay[start..end], start, &mut hit);
            start += 1;
        }
    }
}

/// The first 8 bytes of a needle or window (at least 8 long).
fn prefix(b: &[u8]) -> u64 {
    let mut p = [0u8; 8];
    p.copy_from_slice(&b[..8]);
    u64::from_le_bytes(p)
}

impl Needles {
    /// Compiles `needles` (empty ones are ignored).
    pub fn new<S: AsRef<[u8]>>(needles: &[S]) -> Self {
        let refs: Vec<&[u8]> = needles.iter().map(|n| n.as_ref()).collect();
        let max_len = refs.iter().map(|n| n.len()).max().unwrap_or(0);
        let matcher = match SkipScan::new(&refs) {
            Some(s) => Some(Matcher::Skip(Box::new(s))),
            None => AhoCorasick::builder()
                .match_kind(MatchKind::Standard)
                .build(&refs)
                .ok()
                .filter(|_| max_len > 0)
                .map(Matcher::Ac),
        };
        Self {
            matcher,
            count: needles.len(),
            max_len,
        }
    }

    /// How many needles there are.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// A scanner over one stream of bytes.
    pub fn scanner(&self) -> Scanner<'_> {
        Scanner {
            needles: self,
            state: ScanState::new(self),
        }
    }
}

/// Scans one stream (a file's contents, a name, a target).
#[derive(Debug)]
pub struct Scanner<'a> {
    needles: &'a Needles,
    state: ScanState,
}

impl Scanner<'_> {
    /// Feeds the next bytes of the stream.
    pub fn update(&mut self, chunk: &[u8]) {
        self.state.update(self.needles, chunk);
    }

    /// Starts a new stream (needles do not span two streams).
    pub fn reset_stream(&mut self) {
        self.state.tail.clear();
    }

    /// Which needles were seen, by index.
    pub fn found(&self) -> &[bool] {
        &self.state.found
    }

    /// The needles found for the first time since the last call.
    pub fn take_new(&mut self) -> Vec<usize> {
        std::mem::take(&mut self.state.new)
    }
}

/// What a scan of some [`Needles`] knows so far, apart from them (so
/// that a scanner can own its needles: [`crate::refscan_observer`]).
#[derive(Debug)]
pub(crate) struct ScanState {
    /// The last `max_len - 1` bytes seen.
    pub(crate) tail: Vec<u8>,
    /// The tail and the next chunk's first bytes, searched for needles
    /// that straddle them (kept to reuse its allocation: ingestion calls
    /// `update` once per 64 KiB).
    boundary: Vec<u8>,
    found: Vec<bool>,
    /// Needles found for the first time since the last `take_new`.
    pub(crate) new: Vec<usize>,
}

impl ScanState {
    pub(crate) fn new(needles: &Needles) -> Self {
        Self {
            tail: Vec::with_capacity(needles.max_len),
            boundary: Vec::with_capacity(2 * needles.max_len),
            found: vec![false; needles.count],
            new: Vec::new(),
        }
    }

    /// Feeds the next bytes of the stream, searched for `needles` (the
    /// ones this state was made for).
    pub(crate) fn update(&mut self, needles: &Needles, chunk: &[u8]) {
        let Some(matcher) = &needles.matcher else {
            return;
        };
        let keep = needles.max_len - 1;
        let (found, new) = (&mut self.found, &mut self.new);
        if !self.tail.is_empty() && !chunk.is_empty() {
            // Needles that start in the tail and end in this chunk (one
            // wholly in the tail was found before).
            let window = &mut self.boundary;
            window.clear();
            window.extend_from_slice(&self.tail);
            window.extend_from_slice(&chunk[..keep.min(chunk.len())]);
            let tail_len = self.tail.len();
            matcher.each_match(window, |start, i| {
                if start < tail_len {
                    mark(found, new, i);
                }
            });
        }
        matcher.each_match(chunk, |_, i| mark(found, new, i));
        // Keep the last `keep` bytes of everything seen so far.
        if chunk.len() >= keep {
            self.tail.clear();
            self.tail.extend_from_slice(&chunk[chunk.len() - keep..]);
        } else {
            self.tail.extend_from_slice(chunk);
            let excess = self.tail.len().saturating_sub(keep);
            self.tail.drain(..excess);
        }
    }
}

fn mark(found: &mut [bool], new: &mut Vec<usize>, i: usize) {
    if let Some(f) = found.get_mut(i)
        && !*f
    {
        *f = true;
        new.push(i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NIX32: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";

    /// The obvious scanner, to check the fast one against.
    fn naive(data: &[u8], needles: &[Vec<u8>]) -> Vec<bool> {
        needles
            .iter()
            .map(|n| !n.is_empty() && data.windows(n.len()).any(|w| w == n.as_slice()))
            .collect()
    }

    fn scan(data: &[u8], needles: &[Vec<u8>], chunk: usize) -> Vec<bool> {
        scan_with(Needles::new(needles), data, chunk)
    }

    /// The same with the skip scanner's SIMD blocks turned off: the
    /// window-by-window path (`scan` takes the block path where the CPU
    /// allows).
    fn scan_skipping(data: &[u8], needles: &[Vec<u8>], chunk: usize) -> Vec<bool> {
        let mut n = Needles::new(needles);
        if let Some(Matcher::Skip(s)) = &mut n.matcher {
            s.mask = None;
        }
        scan_with(n, data, chunk)
    }

    fn scan_with(n: Needles, data: &[u8], chunk: usize) -> Vec<bool> {
        let mut s = n.scanner();
        for c in data.chunks(chunk.max(1)) {
            s.update(c);
        }
        s.found().to_vec()
    }

    #[test]
    fn straddling_and_overlapping() {
        let needles = vec![b"abcdef".to_vec(), b"defgh".to_vec(), b"zz".to_vec()];
        let data = b"xxabcdefghyy";
        for chunk in 1..data.len() + 1 {
            assert_eq!(
                scan(data, &needles, chunk),
                vec![true, true, false],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn no_needles() {
        assert_eq!(scan(b"anything", &[], 3), Vec::<bool>::new());
    }

    #[test]
    fn store_path_hashes_use_the_skip_scan() {
        let hashes = [
            b"0k9yxm9zqc2dgw2xxbyh3mnbs5ijjc7v",
            b"a6xgw8ck6z7vb3yzrn0m7bl0sfkxwlyk",
        ];
        assert!(matches!(
            Needles::new(&hashes).matcher,
            Some(Matcher::Skip(_))
        ));
        let mixed = [
            b"abc".as_slice(),
            b"0k9yxm9zqc2dgw2xxbyh3mnbs5ijjc7v".as_slice(),
        ];
        assert!(matches!(Needles::new(&mixed).matcher, Some(Matcher::Ac(_))));
        // Found across a chunk boundary, overlapping, and at the very end.
        let data =
            b"xx/nix/store/0k9yxm9zqc2dgw2xxbyh3mnbs5ijjc7v-a6xgw8ck6z7vb3yzrn0m7bl0sfkxwlyk";
        for chunk in 1..data.len() + 1 {
            let hs: Vec<Vec<u8>> = hashes.iter().map(|h| h.to_vec()).collect();
            assert_eq!(scan(data, &hs, chunk), vec![true, true], "chunk {chunk}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]
        #[test]
        fn skip_scan_same_as_naive(
            data in prop::collection::vec(prop_oneof![Just(b'a'), Just(b'b'), Just(b'-'), any::<u8>()], 0..700),
            needles in prop::collection::vec(prop::collection::vec(prop_oneof![Just(b'a'), Just(b'b')], 8..=8), 1..6),
            chunk in 1usize..40,
        ) {
            prop_assert!(matches!(Needles::new(&needles).matcher, Some(Matcher::Skip(_))));
            let want = naive(&data, &needles);
            prop_assert_eq!(scan(&data, &needles, chunk), want.clone());
            prop_assert_eq!(scan_skipping(&data, &needles, chunk), want);
        }

        /// Store path hashes (32 bytes, the length with its own SIMD loop)
        /// in data made of whole and cut needles, alphabet runs and other
        /// bytes, so runs of every length end and start at every offset.
        #[test]
        fn hashes_same_as_naive(
            needles in prop::collection::vec(prop::collection::vec(prop::sample::select(NIX32), 32..=32), 1..5),
            parts in prop::collection::vec((0usize..4, 0usize..5, 0usize..33, any::<u8>(), any::<bool>()), 0..40),
            chunk in 1usize..300,
        ) {
            let mut data = Vec::new();
            for (kind, which, cut, byte, apart) in parts {
                let n = &needles[which % needles.len()];
                match kind {
                    0 => data.extend_from_slice(n),
                    1 => data.extend_from_slice(&n[cut.min(32)..]),
                    2 => data.extend_from_slice(&n[..cut.min(32)]),
                    _ => data.extend(std::iter::repeat_n(byte, cut)),
                }
                if apart {
                    data.push(b'/');
                }
            }
            let want = naive(&data, &needles);
            prop_assert_eq!(scan(&data, &needles, chunk), want.clone());
            prop_assert_eq!(scan_skipping(&data, &needles, chunk), want);
        }

        #[test]
        fn same_as_naive(
            data in prop::collection::vec(prop_oneof![Just(b'a'), Just(b'b'), Just(b'c')], 0..300),
            needles in prop::collection::vec(prop::collection::vec(prop_oneof![Just(b'a'), Just(b'b'), Just(b'c')], 1..6), 0..6),
            chunk in 1usize..40,
        ) {
            prop_assert_eq!(scan(&data, &needles, chunk), naive(&data, &needles));
        }
    }
}
