//! [`VerifyingReader`]: hashes a blob as it is read and fails the read at
//! EOF when the bytes do not match the digest they were asked for. Remote
//! stores are not trusted; this is how that is enforced on every read.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, ReadBuf};

use crate::B3Digest;

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
}
