//! Progress on stderr: on a terminal, an indicatif spinner per build (its
//! phase and elapsed time) and per import (files and bytes so far), with the
//! build logs printed above them; otherwise plain lines, one per phase, so
//! logs in CI and pipes stay readable.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use tvix_oci_castore::import::{FileObserver, ImportObserver};
use tvix_oci_executor::runc::{LogSink, LogStream, Phase};

/// The progress display of one command.
#[derive(Clone, Debug)]
pub struct Progress {
    /// Set on a terminal.
    multi: Option<MultiProgress>,
}

impl Progress {
    /// Spinners when stderr is a terminal, plain lines otherwise.
    pub fn new() -> Self {
        Self {
            multi: std::io::stderr().is_terminal().then(MultiProgress::new),
        }
    }

    fn spinner(&self, prefix: String, msg: &'static str) -> Option<ProgressBar> {
        let multi = self.multi.as_ref()?;
        let style = ProgressStyle::with_template("{spinner} {prefix}: {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        let bar = multi.add(
            ProgressBar::new_spinner()
                .with_style(style)
                .with_prefix(prefix)
                .with_message(msg),
        );
        bar.enable_steady_tick(Duration::from_millis(100));
        Some(bar)
    }

    /// The log sink of build `label`: its logs to stderr, its phases on a
    /// spinner. The spinner shows "queued" until the build starts.
    pub fn build(&self, label: String) -> BuildProgress {
        BuildProgress {
            bar: self.spinner(label.clone(), "queued"),
            multi: self.multi.clone(),
            label,
        }
    }

    /// An import observer counting files and bytes of `path`.
    pub fn import(&self, path: &Path) -> Arc<ImportProgress> {
        Arc::new(ImportProgress {
            bar: self.spinner(format!("importing {}", path.display()), "starting"),
            files: AtomicU64::new(0),
            bytes: Arc::new(AtomicU64::new(0)),
        })
    }
}

/// One build's logs and phases.
#[derive(Debug)]
pub struct BuildProgress {
    label: String,
    bar: Option<ProgressBar>,
    multi: Option<MultiProgress>,
}

impl LogSink for BuildProgress {
    fn log(&self, _stream: LogStream, data: &[u8]) {
        let write = || {
            let mut e = std::io::stderr().lock();
            let _ = e.write_all(data);
            let _ = e.flush();
        };
        match &self.multi {
            Some(m) => m.suspend(write),
            None => write(),
        }
    }

    fn phase(&self, phase: Phase) {
        let msg: std::borrow::Cow<'static, str> = match phase {
            Phase::Queued { position } => format!("queued, number {position} in line").into(),
            Phase::Mounting => "mounting inputs".into(),
            Phase::Running => "running".into(),
            Phase::Ingesting => "ingesting outputs".into(),
        };
        match &self.bar {
            Some(bar) => bar.set_message(msg),
            None => eprintln!("{}: {msg}", self.label),
        }
    }
}

impl Drop for BuildProgress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Files and bytes imported so far.
#[derive(Debug)]
pub struct ImportProgress {
    bar: Option<ProgressBar>,
    files: AtomicU64,
    bytes: Arc<AtomicU64>,
}

impl ImportProgress {
    fn show(&self) {
        if let Some(bar) = &self.bar {
            let mib = self.bytes.load(Ordering::Relaxed) as f64 / (1 << 20) as f64;
            let files = self.files.load(Ordering::Relaxed);
            bar.set_message(format!("{files} files, {mib:.1} MiB"));
        }
    }
}

impl Drop for ImportProgress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl ImportObserver for ImportProgress {
    fn file(&self, _path: &Path, _executable: bool) -> Option<Box<dyn FileObserver>> {
        self.bar.as_ref()?;
        self.files.fetch_add(1, Ordering::Relaxed);
        self.show();
        Some(Box::new(ByteCount(self.bytes.clone())))
    }
}

/// Adds a file's bytes to the import's count.
struct ByteCount(Arc<AtomicU64>);
impl FileObserver for ByteCount {
    fn chunk(&mut self, data: &[u8]) {
        self.0.fetch_add(data.len() as u64, Ordering::Relaxed);
    }
}
