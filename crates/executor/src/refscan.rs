//! Reference scanning as Nix does it: which of a set of needles (store path
//! hashes) occur anywhere in an output's bytes — file contents, symlink
//! targets and names. Streaming: data comes in chunks of any size, needles
//! that straddle chunk boundaries and needles that overlap are found.
//!
//! Each chunk is searched with Aho-Corasick (fast, prefiltered); a needle
//! crossing the boundary between two chunks is found by searching just the
//! boundary window (the previous chunk's last `max_len - 1` bytes and this
//! chunk's first ones), so no byte is copied twice for the common case.

use aho_corasick::{AhoCorasick, MatchKind};

/// The needles to look for, compiled once per build.
#[derive(Debug)]
pub struct Needles {
    ac: Option<AhoCorasick>,
    count: usize,
    max_len: usize,
}

impl Needles {
    /// Compiles `needles` (empty ones are ignored).
    pub fn new<S: AsRef<[u8]>>(needles: &[S]) -> Self {
        let max_len = needles.iter().map(|n| n.as_ref().len()).max().unwrap_or(0);
        let ac = AhoCorasick::builder()
            .match_kind(MatchKind::Standard)
            .build(needles.iter().map(|n| n.as_ref()))
            .ok()
            .filter(|_| max_len > 0);
        Self {
            ac,
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
            tail: Vec::with_capacity(self.max_len),
            found: vec![false; self.count],
            new: Vec::new(),
        }
    }
}

/// Scans one stream (a file's contents, a name, a target).
#[derive(Debug)]
pub struct Scanner<'a> {
    needles: &'a Needles,
    /// The last `max_len - 1` bytes seen.
    tail: Vec<u8>,
    found: Vec<bool>,
    /// Needles found for the first time since the last `take_new`.
    new: Vec<usize>,
}

impl Scanner<'_> {
    /// Feeds the next bytes of the stream.
    pub fn update(&mut self, chunk: &[u8]) {
        let Some(ac) = &self.needles.ac else { return };
        let keep = self.needles.max_len - 1;
        if !self.tail.is_empty() && !chunk.is_empty() {
            // Needles that start in the tail and end in this chunk.
            let mut window = Vec::with_capacity(self.tail.len() + keep.min(chunk.len()));
            window.extend_from_slice(&self.tail);
            window.extend_from_slice(&chunk[..keep.min(chunk.len())]);
            for m in ac.find_overlapping_iter(&window) {
                if m.start() < self.tail.len() && m.end() > self.tail.len() {
                    mark(&mut self.found, &mut self.new, m.pattern().as_usize());
                }
            }
        }
        for m in ac.find_overlapping_iter(chunk) {
            mark(&mut self.found, &mut self.new, m.pattern().as_usize());
        }
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

    /// Starts a new stream (needles do not span two streams).
    pub fn reset_stream(&mut self) {
        self.tail.clear();
    }

    /// Which needles were seen, by index.
    pub fn found(&self) -> &[bool] {
        &self.found
    }

    /// The needles found for the first time since the last call.
    pub fn take_new(&mut self) -> Vec<usize> {
        std::mem::take(&mut self.new)
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

    /// The obvious scanner, to check the fast one against.
    fn naive(data: &[u8], needles: &[Vec<u8>]) -> Vec<bool> {
        needles
            .iter()
            .map(|n| !n.is_empty() && data.windows(n.len()).any(|w| w == n.as_slice()))
            .collect()
    }

    fn scan(data: &[u8], needles: &[Vec<u8>], chunk: usize) -> Vec<bool> {
        let n = Needles::new(needles);
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

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]
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
