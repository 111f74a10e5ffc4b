//! Readers that hold a store to what it is asked for. A store is not
//! trusted: it may send other bytes than the digest names, fewer or more
//! bytes than the node declares (a stream that never ends), or stop
//! sending. Every reader of a blob whose size is known (FUSE, `cat`,
//! `export`, the cache) goes through [`CheckedReader`]: it never yields a
//! byte past the declared size, and fails as the store's fault at one byte
//! more or less, at a digest mismatch, or after an idle limit, naming the
//! digest and both sizes. [`VerifyingReader`] checks the digest only, for
//! reads whose size nobody declared (a gRPC Read, which carries none).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf, Take};

use super::{BlobReader, BlobService};
use crate::B3Digest;

/// How a store lied about a blob. Carried inside the `io::Error`
/// (kind `InvalidData`, or `TimedOut` for [`BlobLie::Idle`]) that a
/// [`CheckedReader`] fails with; get it back with [`BlobLie::of`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlobLie {
    #[error(
        "blob {digest}: the store sent more than the {declared} bytes declared ({received} received)"
    )]
    TooLong {
        digest: B3Digest,
        declared: u64,
        received: u64,
    },
    #[error("blob {digest}: the store sent {received} bytes, {declared} declared")]
    TooShort {
        digest: B3Digest,
        declared: u64,
        received: u64,
    },
    #[error("blob {digest}: the store sent {received} bytes that hash to {actual}")]
    WrongDigest {
        digest: B3Digest,
        received: u64,
        actual: B3Digest,
    },
    #[error(
        "blob {digest}: the store sent no byte for {idle:?}, after {received} of {declared} bytes"
    )]
    Idle {
        digest: B3Digest,
        declared: u64,
        received: u64,
        idle: Duration,
    },
}

impl BlobLie {
    /// The lie behind `err`, if a checking reader found one.
    pub fn of(err: &io::Error) -> Option<&BlobLie> {
        err.get_ref()?.downcast_ref::<BlobLie>()
    }

    fn into_io(self) -> io::Error {
        let kind = match self {
            BlobLie::Idle { .. } => io::ErrorKind::TimedOut,
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, self)
    }
}

/// Reads blob `digest` of the declared `size`: yields at most `size` bytes,
/// and instead of EOF fails with a [`BlobLie`] when the store sent one byte
/// more or less than `size` or bytes that do not hash to `digest`, so a
/// clean EOF means the whole blob, verified. With [`Self::idle_limit`], a
/// read waiting longer than that for a byte fails too.
#[derive(Debug)]
pub struct CheckedReader<R> {
    /// Limited to `size + 1`: one byte more proves the store lied, and an
    /// endless stream is never read further.
    inner: Take<R>,
    hasher: blake3::Hasher,
    digest: B3Digest,
    size: u64,
    got: u64,
    done: bool,
    idle: Option<(Duration, Pin<Box<tokio::time::Sleep>>)>,
}

impl<R: AsyncRead + Unpin> CheckedReader<R> {
    /// `inner` must yield the blob from its first byte.
    pub fn new(inner: R, digest: B3Digest, size: u64) -> Self {
        Self {
            inner: inner.take(size.saturating_add(1)),
            hasher: blake3::Hasher::new(),
            digest,
            size,
            got: 0,
            done: false,
            idle: None,
        }
    }

    /// Fails a read that waits more than `limit` for the store's next byte.
    /// Needs a tokio runtime with the time driver.
    pub fn idle_limit(mut self, limit: Duration) -> Self {
        self.idle = Some((limit, Box::pin(tokio::time::sleep(limit))));
        self
    }

    /// Bytes read so far.
    pub fn received(&self) -> u64 {
        self.got
    }

    fn fail(&mut self, lie: BlobLie) -> Poll<io::Result<()>> {
        self.done = true;
        Poll::Ready(Err(lie.into_io()))
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for CheckedReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.done || buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if polled.is_pending() {
            if let Some((limit, sleep)) = &mut this.idle
                && sleep.as_mut().poll(cx).is_ready()
            {
                let lie = BlobLie::Idle {
                    digest: this.digest,
                    declared: this.size,
                    received: this.got,
                    idle: *limit,
                };
                return this.fail(lie);
            }
            return Poll::Pending;
        }
        if let Poll::Ready(Err(e)) = polled {
            // Say how far it got: the store's own error lacks the sizes.
            this.done = true;
            return Poll::Ready(Err(io::Error::new(
                e.kind(),
                format!(
                    "{e} ({} of {} declared bytes received)",
                    this.got, this.size
                ),
            )));
        }
        if let Some((limit, sleep)) = &mut this.idle {
            sleep.as_mut().reset(tokio::time::Instant::now() + *limit);
        }
        let n = buf.filled().len() - before;
        if n > 0 {
            this.got += n as u64;
            if this.got > this.size {
                buf.set_filled(before);
                let lie = BlobLie::TooLong {
                    digest: this.digest,
                    declared: this.size,
                    received: this.got,
                };
                return this.fail(lie);
            }
            this.hasher.update(&buf.filled()[before..]);
            return Poll::Ready(Ok(()));
        }
        // EOF from the store.
        if this.got < this.size {
            let lie = BlobLie::TooShort {
                digest: this.digest,
                declared: this.size,
                received: this.got,
            };
            return this.fail(lie);
        }
        let actual = B3Digest::from(this.hasher.finalize());
        if actual != this.digest {
            let lie = BlobLie::WrongDigest {
                digest: this.digest,
                received: this.got,
                actual,
            };
            return this.fail(lie);
        }
        this.done = true;
        Poll::Ready(Ok(()))
    }
}

/// Opens blob `digest` of declared `size` from `blobs` for a checked read
/// ([`CheckedReader`]), or `None` when the store does not have it.
pub async fn open_checked(
    blobs: &dyn BlobService,
    digest: &B3Digest,
    size: u64,
) -> io::Result<Option<CheckedReader<BlobReader>>> {
    Ok(blobs
        .open_read(digest)
        .await?
        .map(|r| CheckedReader::new(r, *digest, size)))
}

/// Reads blob `digest` of declared `size` whole into memory, verified:
/// nothing is returned unless every byte was checked.
pub async fn read_checked(
    blobs: &dyn BlobService,
    digest: &B3Digest,
    size: u64,
) -> io::Result<Option<Vec<u8>>> {
    let Some(mut r) = open_checked(blobs, digest, size).await? else {
        return Ok(None);
    };
    // Capacity from the declared size, bounded: a lie about it costs nothing.
    let mut out = Vec::with_capacity(usize::try_from(size.min(64 << 20)).unwrap_or(0));
    r.read_to_end(&mut out).await?;
    Ok(Some(out))
}

/// A reader of the stream `bytes` of the whole blob `digest`, verified
/// ([`VerifyingReader`]), starting `offset` bytes in: the bytes before it
/// are read and hashed too, as verification needs every byte.
pub(crate) async fn verified_at<S>(
    bytes: S,
    digest: B3Digest,
    offset: u64,
) -> io::Result<BlobReader>
where
    S: futures::Stream<Item = io::Result<bytes::Bytes>> + Send + Unpin + 'static,
{
    let mut reader = VerifyingReader::new(tokio_util::io::StreamReader::new(bytes), digest);
    if offset > 0 {
        let mut skip = (&mut reader).take(offset);
        tokio::io::copy(&mut skip, &mut tokio::io::sink()).await?;
    }
    Ok(Box::new(reader))
}

/// Wraps a reader of the whole blob `expected`. The last read (the one that
/// would return EOF) returns `InvalidData` instead when the bytes read do not
/// hash to `expected`, so a reader never sees a clean EOF on corrupt data.
#[derive(Debug)]
pub struct VerifyingReader<R> {
    inner: R,
    hasher: blake3::Hasher,
    expected: B3Digest,
    done: bool,
}

impl<R> VerifyingReader<R> {
    /// `inner` must yield the blob from its first byte.
    pub fn new(inner: R, expected: B3Digest) -> Self {
        Self {
            inner,
            hasher: blake3::Hasher::new(),
            expected,
            done: false,
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for VerifyingReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let this = &mut *self;
        let new = &buf.filled()[before..];
        if !new.is_empty() {
            this.hasher.update(new);
        } else if !this.done {
            this.done = true;
            let actual = B3Digest::from(this.hasher.finalize());
            if actual != this.expected {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "blob {}: the store sent bytes that hash to {actual}",
                        this.expected
                    ),
                )));
            }
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn good_and_bad() {
        let data = b"Hello World!".to_vec();
        let mut ok = VerifyingReader::new(&data[..], B3Digest::of(&data));
        let mut out = Vec::new();
        ok.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, data);

        let mut bad = VerifyingReader::new(&b"Hello World?"[..], B3Digest::of(&data));
        let err = bad.read_to_end(&mut Vec::new()).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains(&B3Digest::of(&data).to_hex()));
    }

    async fn checked(data: &[u8], digest: B3Digest, size: u64) -> (Vec<u8>, io::Result<usize>) {
        let mut r = CheckedReader::new(data, digest, size);
        let mut out = Vec::new();
        let res = r.read_to_end(&mut out).await;
        (out, res)
    }

    #[tokio::test]
    async fn checked_reader_holds_the_store_to_size_and_digest() {
        let data = b"Hello World!";
        let d = B3Digest::of(data);
        let (out, res) = checked(data, d, 12).await;
        assert_eq!(res.unwrap(), 12);
        assert_eq!(out, data);

        // One byte more or less than declared, each named with both sizes.
        let (_, res) = checked(data, d, 11).await;
        let err = res.unwrap_err();
        assert_eq!(
            BlobLie::of(&err),
            Some(&BlobLie::TooLong {
                digest: d,
                declared: 11,
                received: 12
            })
        );
        assert!(err.to_string().contains(&d.to_hex()), "{err}");
        let (_, res) = checked(data, d, 13).await;
        let err = res.unwrap_err();
        assert!(
            matches!(
                BlobLie::of(&err),
                Some(BlobLie::TooShort {
                    declared: 13,
                    received: 12,
                    ..
                })
            ),
            "{err}"
        );
        let (_, res) = checked(b"Hello World?", d, 12).await;
        let err = res.unwrap_err();
        assert!(
            matches!(BlobLie::of(&err), Some(BlobLie::WrongDigest { .. })),
            "{err}"
        );
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn an_endless_stream_is_read_one_byte_past_the_size_only() {
        let endless = tokio::io::repeat(b'x');
        let mut r = CheckedReader::new(endless, B3Digest::of(b""), 300_001);
        let mut out = Vec::new();
        let err = r.read_to_end(&mut out).await.unwrap_err();
        assert!(
            matches!(BlobLie::of(&err), Some(BlobLie::TooLong { .. })),
            "{err}"
        );
        assert!(r.received() <= 300_002, "{}", r.received());
        assert!(out.len() <= 300_001);
    }

    #[tokio::test]
    async fn a_silent_store_is_cut_off_at_the_idle_limit() {
        let (client, mut server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut server, b"abc")
            .await
            .unwrap();
        let mut r = CheckedReader::new(client, B3Digest::of(b"abcdef"), 6)
            .idle_limit(Duration::from_millis(100));
        let err = r.read_to_end(&mut Vec::new()).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(
            matches!(
                BlobLie::of(&err),
                Some(BlobLie::Idle {
                    received: 3,
                    declared: 6,
                    ..
                })
            ),
            "{err}"
        );
        drop(server);
    }
}
