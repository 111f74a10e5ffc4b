//! [`TracingLogs`]: a build's log lines in the server's own log, as
//! `tracing` events, for DoBuild (whose client sees no log) and next to the
//! event stream alike; and the build's id, for the line logged when it
//! ends.

use crate::logs::split_lines;
use crate::runc::{LogSink, LogStream};

/// Build logs as `tracing` events (target `tvix_oci_executor::build_log`,
/// level INFO), one per line, tagged with the request number.
#[derive(Debug)]
pub struct TracingLogs {
    request: u64,
    build_id: std::sync::OnceLock<String>,
    partial: std::sync::Mutex<[Vec<u8>; 2]>,
}

impl TracingLogs {
    /// The log of request number `request`.
    pub fn new(request: u64) -> Self {
        Self {
            request,
            build_id: std::sync::OnceLock::new(),
            partial: Default::default(),
        }
    }

    /// The executor's id of the build, once it started.
    pub fn build_id(&self) -> Option<&str> {
        self.build_id.get().map(String::as_str)
    }

    fn emit(&self, stream: LogStream, line: &[u8]) {
        let line = String::from_utf8_lossy(line);
        tracing::info!(target: "tvix_oci_executor::build_log", request = self.request, ?stream, "{line}");
    }
}

impl LogSink for TracingLogs {
    fn started(&self, build_id: &str) {
        let _ = self.build_id.set(build_id.to_owned());
    }

    fn log(&self, stream: LogStream, data: &[u8]) {
        let Ok(mut partial) = self.partial.lock() else {
            return;
        };
        let buf = &mut partial[stream as usize];
        split_lines(buf, data, false, |line| self.emit(stream, &line));
    }
}

impl Drop for TracingLogs {
    fn drop(&mut self) {
        let rest = match self.partial.get_mut() {
            Ok(p) => std::mem::take(p),
            Err(_) => return,
        };
        for (buf, stream) in rest.iter().zip([LogStream::Stdout, LogStream::Stderr]) {
            if !buf.is_empty() {
                self.emit(stream, buf);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::logs::{LINE_PIECE, split_lines};

    fn lines(chunks: &[&[u8]]) -> (Vec<Vec<u8>>, Vec<u8>) {
        let (mut buf, mut out) = (Vec::new(), Vec::new());
        for c in chunks {
            split_lines(&mut buf, c, false, |l| out.push(l));
        }
        (out, buf)
    }

    #[test]
    fn lines_across_chunks_and_the_rest_kept() {
        let (out, rest) = lines(&[b"a\nb", b"c\n\nd", b"e"]);
        assert_eq!(out, [b"a".to_vec(), b"bc".to_vec(), b"".to_vec()]);
        assert_eq!(rest, b"de");
    }

    #[test]
    fn a_line_without_end_is_cut_into_pieces() {
        let chunk = vec![b'x'; 4096];
        let chunks: Vec<&[u8]> = (0..40).map(|_| chunk.as_slice()).collect();
        let (out, rest) = lines(&chunks);
        assert_eq!(out.len(), 40 * 4096 / LINE_PIECE);
        assert!(out.iter().all(|l| l.len() == LINE_PIECE));
        assert_eq!(rest.len(), 40 * 4096 % LINE_PIECE);
    }
}
