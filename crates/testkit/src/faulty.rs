//! [`FaultyBlobs`]: a blob store that misbehaves on purpose — on the reads
//! of one blob or of all, on writes — around a real one, and counts what
//! it was asked. For the tests of what a fault must become (a store's
//! fault, a failed build, a verified read refused).

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use tvix_oci_castore::B3Digest;
use tvix_oci_castore::blobservice::{BlobReader, BlobService, BlobWriter, read_to_end};

/// How a call misbehaves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fault {
    /// It does not: the call goes to the inner store.
    #[default]
    None,
    /// It never answers.
    Hang,
    /// It fails with an I/O error saying it was injected.
    Fail,
    /// (Reads) every byte served is flipped: a blob that is not what its
    /// digest says.
    Corrupt,
    /// (Reads) the first this many bytes are sent, then nothing more, ever
    /// (a store that stalls mid-blob).
    HangAfter(u64),
    /// (Reads) the blob with its last byte flipped, its last 64 KiB sent
    /// only after this many milliseconds: the head arrives at once, the
    /// corruption is found late.
    CorruptSlowTail(u64),
}

/// A blob store around `inner` whose reads (of one blob, or all) and
/// writes misbehave as told.
#[derive(Debug)]
pub struct FaultyBlobs {
    inner: Arc<dyn BlobService>,
    /// The blob whose reads misbehave; `None`: every blob.
    target: Option<B3Digest>,
    read: Fault,
    write: Fault,
    /// Served as a remote store is: no local files, no range reads.
    remote: bool,
    reads: AtomicU64,
    writes: AtomicU64,
}

impl FaultyBlobs {
    /// A store that passes everything to `inner` (until told otherwise).
    pub fn new(inner: Arc<dyn BlobService>) -> Self {
        Self {
            inner,
            target: None,
            read: Fault::None,
            write: Fault::None,
            remote: false,
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
        }
    }

    /// Reads misbehave as `fault`, of `target` only when given.
    pub fn reads(mut self, fault: Fault, target: Option<B3Digest>) -> Self {
        self.read = fault;
        self.target = target;
        self
    }

    /// Writes misbehave as `fault` ([`Fault::Corrupt`] is not one).
    pub fn writes(mut self, fault: Fault) -> Self {
        self.write = fault;
        self
    }

    /// Served as a remote store is: no local file of a blob, no range
    /// reads, so a reader fetches through it.
    pub fn remote(mut self) -> Self {
        self.remote = true;
        self
    }

    /// Shared, as stores are used.
    pub fn shared(self) -> Arc<Self> {
        Arc::new(self)
    }

    /// Blob writes opened so far.
    pub fn write_count(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    /// Blob reads opened so far.
    pub fn read_count(&self) -> u64 {
        self.reads.load(Ordering::SeqCst)
    }
}

/// A reader that sends `data` once `sleep` is over.
struct Late {
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    data: io::Cursor<Vec<u8>>,
}

impl tokio::io::AsyncRead for Late {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        if self.sleep.as_mut().poll(cx).is_pending() {
            return std::task::Poll::Pending;
        }
        std::pin::Pin::new(&mut self.data).poll_read(cx, buf)
    }
}

/// A reader that never sends a byte (and never ends).
struct Stalled;

impl tokio::io::AsyncRead for Stalled {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Pending
    }
}

fn injected(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, format!("injected: {what}"))
}

#[async_trait]
impl BlobService for FaultyBlobs {
    async fn has(&self, d: &B3Digest) -> io::Result<bool> {
        self.inner.has(d).await
    }

    async fn open_read_at(&self, d: &B3Digest, offset: u64) -> io::Result<Option<BlobReader>> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        if self.target.as_ref().is_none_or(|t| t == d) {
            match self.read {
                Fault::None => {}
                Fault::Hang => futures::future::pending::<()>().await,
                Fault::Fail => return Err(injected("the disk is on fire")),
                Fault::Corrupt => {
                    let Some(mut data) = read_to_end(&*self.inner, d).await? else {
                        return Ok(None);
                    };
                    data.iter_mut().for_each(|b| *b ^= 0x55);
                    let data = data.split_off(
                        usize::try_from(offset)
                            .unwrap_or(usize::MAX)
                            .min(data.len()),
                    );
                    return Ok(Some(Box::new(io::Cursor::new(data))));
                }
                Fault::CorruptSlowTail(ms) => {
                    let Some(mut data) = read_to_end(&*self.inner, d).await? else {
                        return Ok(None);
                    };
                    if let Some(last) = data.last_mut() {
                        *last ^= 0x55;
                    }
                    let start = usize::try_from(offset)
                        .unwrap_or(usize::MAX)
                        .min(data.len());
                    let tail = data.len().saturating_sub(64 << 10).max(start);
                    let head = io::Cursor::new(data[start..tail].to_vec());
                    let late = Late {
                        sleep: Box::pin(tokio::time::sleep(std::time::Duration::from_millis(ms))),
                        data: io::Cursor::new(data[tail..].to_vec()),
                    };
                    return Ok(Some(Box::new(tokio::io::AsyncReadExt::chain(head, late))));
                }
                Fault::HangAfter(n) => {
                    let Some(data) = read_to_end(&*self.inner, d).await? else {
                        return Ok(None);
                    };
                    let n = usize::try_from(n).unwrap_or(usize::MAX).min(data.len());
                    let start = usize::try_from(offset).unwrap_or(usize::MAX).min(n);
                    let head = io::Cursor::new(data[start..n].to_vec());
                    return Ok(Some(Box::new(tokio::io::AsyncReadExt::chain(
                        head, Stalled,
                    ))));
                }
            }
        }
        self.inner.open_read_at(d, offset).await
    }

    async fn open_write(&self) -> io::Result<Box<dyn BlobWriter>> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        match self.write {
            Fault::Hang => futures::future::pending().await,
            Fault::Fail => Err(injected("the store's disk refuses writes")),
            Fault::None | Fault::Corrupt | Fault::HangAfter(_) | Fault::CorruptSlowTail(_) => {
                self.inner.open_write().await
            }
        }
    }

    fn range_reads(&self) -> bool {
        !self.remote && self.inner.range_reads()
    }

    fn local_path(&self, d: &B3Digest) -> Option<PathBuf> {
        match self.remote || self.read != Fault::None {
            true => None,
            false => self.inner.local_path(d),
        }
    }
}
