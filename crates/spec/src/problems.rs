//! [`Problems`]: what is wrong with a build request, every problem naming
//! the field and the offending value, and [`Problems::summary`], the short
//! form for channels that carry little (a gRPC status travels in an HTTP/2
//! header, ~16 KiB at most: a request with a thousand problems must still
//! be answered INVALID_ARGUMENT).

use std::fmt::{self, Write};

/// One problem: which field, which value, what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// e.g. `scratch_paths[1]`
    pub field: String,
    /// The offending value, as given.
    pub value: String,
    /// What is wrong with it.
    pub problem: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?} {}", self.field, self.value, self.problem)
    }
}

/// Every problem found in a request (never empty).
#[derive(Clone, Debug, PartialEq, Eq, Default, thiserror::Error)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [one] => write!(f, "invalid build request: {one}"),
            all => {
                write!(f, "invalid build request, {} problems:", all.len())?;
                for p in all {
                    write!(f, "\n  - {p}")?;
                }
                Ok(())
            }
        }
    }
}

/// Bytes kept of a field, a value and a problem's text in a summary.
const SUMMARY_CUT: usize = 200;
/// Bytes of a summary past which no further problem is listed.
const SUMMARY_BYTES: usize = 4096;

/// `s` cut to at most `max` bytes on a character boundary, `…` marking a
/// cut.
fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut at = max;
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    format!("{}…", &s[..at])
}

impl Problems {
    /// The first `max` problems (fewer when they are long), each field,
    /// value and text cut to 200 bytes, then `… and N more problems`: under
    /// 5 KiB whatever the problems (under 16 KiB even percent-encoded, as in
    /// a `grpc-message`), where [`Display`](fmt::Display) lists them all.
    pub fn summary(&self, max: usize) -> String {
        let all = self.0.len();
        let mut s = match all {
            1 => "invalid build request:".to_owned(),
            n => format!("invalid build request, {n} problems:"),
        };
        let mut shown = 0;
        for p in self.0.iter().take(max) {
            if s.len() > SUMMARY_BYTES {
                break;
            }
            let value = format!("{:?}", p.value);
            let _ = write!(
                s,
                "\n  - {} {} {}",
                cut(&p.field, SUMMARY_CUT),
                cut(&value, SUMMARY_CUT),
                cut(&p.problem, SUMMARY_CUT)
            );
            shown += 1;
        }
        if shown < all {
            let _ = write!(s, "\n  … and {} more problems", all - shown);
        }
        s
    }

    pub(crate) fn push(
        &mut self,
        field: impl Into<String>,
        value: impl Into<String>,
        problem: impl Into<String>,
    ) {
        self.0.push(Problem {
            field: field.into(),
            value: value.into(),
            problem: problem.into(),
        });
    }

    /// A size over its limit: `outputs "300000 entries" is more than the
    /// limit of 4096 (raise it with --max-outputs)`.
    pub(crate) fn over(&mut self, field: &str, n: u64, unit: &str, limit: u64, flag: &str) {
        self.push(
            field,
            format!("{n} {unit}"),
            format!("is more than the limit of {limit} (raise it with {flag})"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn many(n: usize, value: &str) -> Problems {
        let mut v = Problems::default();
        for i in 0..n {
            v.push(
                format!("outputs[{i}]"),
                value,
                "is not below a scratch path",
            );
        }
        v
    }

    #[test]
    fn a_summary_lists_the_first_problems_and_counts_the_rest() {
        let s = many(1000, "build/x").summary(20);
        assert!(
            s.starts_with("invalid build request, 1000 problems:"),
            "{s}"
        );
        assert!(s.contains("outputs[19] \"build/x\" is not below"), "{s}");
        assert!(!s.contains("outputs[20]"), "{s}");
        assert!(s.ends_with("… and 980 more problems"), "{s}");
    }

    #[test]
    fn a_summary_cuts_long_values_and_stays_small() {
        let long = "\u{1}é".repeat(100_000);
        let s = many(1000, &long).summary(20);
        assert!(s.len() < 5 << 10, "{} bytes", s.len());
        assert!(s.contains("\"\\u{1}é"), "{s}");
        assert!(s.contains("…"), "{s}");
        let shown = s.matches("\n  - ").count();
        assert!(shown >= 1, "{s}");
        assert!(s.ends_with(&format!("… and {} more problems", 1000 - shown)));
    }

    #[test]
    fn a_short_list_is_whole() {
        let s = many(2, "a").summary(20);
        assert!(!s.contains("more problems"), "{s}");
        assert_eq!(s.matches("\n  - ").count(), 2);
        let one = many(1, "a").summary(20);
        assert!(
            one.starts_with("invalid build request:\n  - outputs[0]"),
            "{one}"
        );
    }
}
