//! [`TracingLogs`]: a build's log lines in the server's own log, as
//! `tracing` events, for DoBuild (whose client sees no log) and next to the
//! event stream alike; and the build's id, for the line logged when it
//! ends.

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
        buf.extend_from_slice(data);
        while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            self.emit(stream, &line[..nl]);
        }
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
