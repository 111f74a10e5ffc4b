//! How long a gRPC store client waits before it gives up on a store. A
//! store that accepts a connection and then never answers would otherwise
//! hold every command forever; with these bounds each call fails with a
//! [`Timeout`] naming the store and what it waited for.
//!
//! Three waits are bounded: connecting, the first answer to a call (the
//! response of a unary call, the headers of a stream, the reply to an
//! upload once it is sent), and the silence between two messages of a
//! stream (a blob's next chunk, the next directory, or room to send the
//! next chunk of an upload). A long transfer that keeps moving is never
//! cut off; one that stops is.

use std::future::Future;
use std::time::Duration;

use futures::stream::{BoxStream, Stream, StreamExt};
use url::Url;

use crate::StoreError;

/// The bounds on a gRPC store's waits. Set per store by the URL's
/// `connect_timeout`, `timeout` and `idle_timeout` parameters (seconds,
/// fractions allowed), which override the values given to
/// [`crate::open_blob_service_with`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreTimeouts {
    /// Connecting (TCP or unix socket, and the HTTP/2 handshake).
    pub connect: Duration,
    /// The first answer to a call.
    pub first_byte: Duration,
    /// Between two messages of a stream, either way.
    pub idle: Duration,
}

impl StoreTimeouts {
    /// Connect: 10 s.
    pub const DEFAULT_CONNECT: Duration = Duration::from_secs(10);
    /// First answer: 30 s.
    pub const DEFAULT_FIRST_BYTE: Duration = Duration::from_secs(30);
    /// Idle stream: 30 s.
    pub const DEFAULT_IDLE: Duration = Duration::from_secs(30);
}

impl Default for StoreTimeouts {
    fn default() -> Self {
        Self {
            connect: Self::DEFAULT_CONNECT,
            first_byte: Self::DEFAULT_FIRST_BYTE,
            idle: Self::DEFAULT_IDLE,
        }
    }
}

/// A positive, finite number of seconds (`30`, `2.5`), as a duration.
pub fn parse_seconds(s: &str) -> Result<Duration, String> {
    s.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| *v > 0.0)
        .and_then(|v| Duration::try_from_secs_f64(v).ok())
        .ok_or_else(|| format!("{s:?} is not a positive number of seconds"))
}

/// Applies a `connect_timeout`, `timeout` or `idle_timeout` query
/// parameter; `Ok(false)` when `key` is none of them.
pub(crate) fn apply_param(
    t: &mut StoreTimeouts,
    url: &Url,
    key: &str,
    value: &str,
) -> Result<bool, StoreError> {
    let slot = match key {
        "connect_timeout" => &mut t.connect,
        "timeout" => &mut t.first_byte,
        "idle_timeout" => &mut t.idle,
        _ => return Ok(false),
    };
    *slot =
        parse_seconds(value).map_err(|e| StoreError::url(url.as_str(), format!("{key}: {e}")))?;
    Ok(true)
}

/// A store that did not answer in time.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the {kind} store {url} did not {what} within {}", secs(*after))]
pub struct Timeout {
    /// `blob` or `directory`.
    pub kind: &'static str,
    /// The store's URL.
    pub url: String,
    /// What it did not do, e.g. `answer Stat of blob 8b5b…`.
    pub what: String,
    /// How long it was given.
    pub after: Duration,
}

impl Timeout {
    /// As an `io::Error` of kind `TimedOut` (blob errors are `io::Error`s).
    pub(crate) fn into_io(self) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::TimedOut, self)
    }
}

/// `30 s`, `2.5 s`.
pub(crate) fn secs(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

/// Which store a client talks to, for its timeout errors.
#[derive(Clone, Debug)]
pub(crate) struct Waits {
    pub kind: &'static str,
    pub url: String,
    pub t: StoreTimeouts,
}

impl Waits {
    pub(crate) fn timeout(&self, what: impl Into<String>, after: Duration) -> Timeout {
        Timeout {
            kind: self.kind,
            url: self.url.clone(),
            what: what.into(),
            after,
        }
    }

    /// `fut`, given [`StoreTimeouts::first_byte`] to finish.
    pub(crate) async fn first<T>(
        &self,
        what: impl FnOnce() -> String,
        fut: impl Future<Output = T>,
    ) -> Result<T, Timeout> {
        tokio::time::timeout(self.t.first_byte, fut)
            .await
            .map_err(|_| self.timeout(what(), self.t.first_byte))
    }

    /// `fut`, given [`StoreTimeouts::idle`] to finish.
    pub(crate) async fn idle<T>(
        &self,
        what: impl FnOnce() -> String,
        fut: impl Future<Output = T>,
    ) -> Result<T, Timeout> {
        tokio::time::timeout(self.t.idle, fut)
            .await
            .map_err(|_| self.timeout(what(), self.t.idle))
    }

    /// `stream` with each `next()` given [`StoreTimeouts::idle`]. The
    /// clock starts when the consumer asks for the next item, so a
    /// consumer that pauses is never timed out for its own pause. After a
    /// timeout the stream ends.
    pub(crate) fn idle_stream<S, T>(
        &self,
        stream: S,
        what: String,
    ) -> BoxStream<'static, Result<T, Timeout>>
    where
        S: Stream<Item = T> + Send + Unpin + 'static,
        T: Send + 'static,
    {
        let idle = self.t.idle;
        let state = Some((stream, self.clone(), what));
        futures::stream::unfold(state, move |state| async move {
            let (mut s, waits, what) = state?;
            match tokio::time::timeout(idle, s.next()).await {
                Ok(Some(item)) => Some((Ok(item), Some((s, waits, what)))),
                Ok(None) => None,
                Err(_) => Some((Err(waits.timeout(what, idle)), None)),
            }
        })
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds() {
        assert_eq!(parse_seconds("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_seconds("0.5"), Ok(Duration::from_millis(500)));
        for bad in ["0", "-1", "nan", "inf", "", "1e400", "x"] {
            assert!(parse_seconds(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn message_names_store_and_wait() {
        let w = Waits {
            kind: "blob",
            url: "grpc+http://127.0.0.1:4000".into(),
            t: StoreTimeouts::default(),
        };
        let e = w.timeout("answer Stat of blob ab", Duration::from_secs(30));
        assert_eq!(
            e.to_string(),
            "the blob store grpc+http://127.0.0.1:4000 did not answer Stat of blob ab within 30 s"
        );
    }

    #[tokio::test]
    async fn a_paused_consumer_is_not_timed_out() {
        let w = Waits {
            kind: "blob",
            url: "u".into(),
            t: StoreTimeouts {
                idle: Duration::from_millis(300),
                ..StoreTimeouts::default()
            },
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut s = w.idle_stream(tokio_stream::wrappers::ReceiverStream::new(rx), "x".into());
        tx.send(1).await.unwrap();
        assert_eq!(s.next().await.unwrap().unwrap(), 1);
        // The consumer pauses past the limit; the next item comes quickly
        // once asked for.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let late = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            tx.send(2).await.unwrap();
            tx
        });
        assert_eq!(s.next().await.unwrap().unwrap(), 2);
        let _tx = late.await.unwrap();
        // Silence past the limit ends the stream with the timeout.
        assert!(s.next().await.unwrap().is_err());
        assert!(s.next().await.is_none());
    }
}
