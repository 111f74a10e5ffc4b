//! The object storage behind the `objectstore+…` blob and directory
//! backends: one [`object_store`] store (S3, a local directory, or memory)
//! opened from a URL, and where our objects live in it.
//!
//! URLs, in the forms tvix and snix use:
//!
//! - `objectstore+s3://BUCKET/PREFIX?KEY=VALUE…`: endpoint, region and
//!   credentials come from the `AWS_*` environment variables and from the
//!   URL's parameters (`endpoint`, `region`, `access_key_id`,
//!   `secret_access_key`, `allow_http`, `timeout`, …: every key
//!   [`object_store::aws::AmazonS3ConfigKey`] knows, as `object_store`
//!   reads them; the URL wins). An unknown parameter is an error, not
//!   ignored.
//! - `objectstore+file:///PATH`: a directory on the local disk (created if
//!   needed), each object a file, written to a temp name, fsynced and
//!   renamed.
//! - `objectstore+memory:///[PREFIX]`: in memory; each URL opens a new,
//!   empty store.
//!
//! Layout under `PREFIX` (ours, not snix's: snix chunks blobs and keeps
//! whole closures under `blobs/b3`, `chunks/b3` and `dirs/b3`; the names
//! differ, so both can share a prefix without meeting):
//!
//! - `blobs/whole/HH/HEX`: a blob's bytes, whole and uncompressed, where
//!   `HEX` is its BLAKE3 digest in lower-case hex and `HH` its first two
//!   characters;
//! - `directories/HH/HEX`: one directory's canonical protobuf encoding
//!   (`tvix.castore.v1.Directory`), under its digest.

use std::io;
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use url::Url;

use crate::{B3Digest, StoreError};

/// An object store and the prefix our objects live under.
#[derive(Clone, Debug)]
pub(crate) struct Bucket {
    pub(crate) store: Arc<dyn ObjectStore>,
    /// MiB of multipart upload parts in memory at once (all uploads).
    pub(crate) part_budget: Arc<tokio::sync::Semaphore>,
    prefix: Path,
    /// The URL without its parameters (they may hold credentials), for
    /// messages.
    base: String,
}

/// What kind of object a key is for.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    Blob,
    Directory,
}

impl Bucket {
    /// Opens the store an `objectstore+…` URL names (see the module docs).
    pub(crate) fn open(url: &Url) -> Result<Self, StoreError> {
        let shown = redacted(url);
        let raw = shown.as_str();
        let (store, prefix, base): (Arc<dyn ObjectStore>, &str, String) = match url.scheme() {
            "objectstore+memory" => {
                no_params(url)?;
                (
                    Arc::new(InMemory::new()),
                    url.path(),
                    "objectstore+memory://".into(),
                )
            }
            "objectstore+file" => {
                no_params(url)?;
                let dir = crate::open::local_path(url)?;
                std::fs::create_dir_all(&dir)
                    .map_err(|e| StoreError::io(format!("creating {}", dir.display()), e))?;
                let fs = LocalFileSystem::new_with_prefix(&dir)
                    .map_err(|e| StoreError::url(raw, e.to_string()))?
                    .with_fsync(true);
                (
                    Arc::new(fs),
                    "",
                    format!("objectstore+file://{}", dir.display()),
                )
            }
            "objectstore+s3" => {
                let bucket = url.host_str().filter(|h| !h.is_empty()).ok_or_else(|| {
                    StoreError::url(
                        raw,
                        "expected a bucket, as in objectstore+s3://BUCKET/PREFIX",
                    )
                })?;
                let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
                let mut chosen = std::env::var_os("AWS_UNSIGNED_PAYLOAD").is_some();
                for (k, v) in url.query_pairs() {
                    let key: AmazonS3ConfigKey = k
                        .to_ascii_lowercase()
                        .parse()
                        .map_err(|_| StoreError::url(raw, format!("unknown S3 parameter {k:?}")))?;
                    chosen |= matches!(key, AmazonS3ConfigKey::UnsignedPayload);
                    b = b.with_config(key, v);
                }
                // Over HTTPS, bodies are not hashed for the request's
                // signature unless asked (`unsigned_payload=false`): TLS
                // guards them on the way and every read is checked against
                // its digest, while a SHA-256 of every body is CPU the
                // client and the server spend on top of the import. Over
                // plain HTTP they are signed: nothing else would stop a
                // body changed on the way from being stored.
                let https = b
                    .get_config_value(&AmazonS3ConfigKey::Endpoint)
                    .is_none_or(|e| e.starts_with("https://"));
                if !chosen && https {
                    b = b.with_unsigned_payload(true);
                }
                let s3 = b.build().map_err(|e| StoreError::url(raw, e.to_string()))?;
                (
                    Arc::new(s3),
                    url.path(),
                    format!("objectstore+s3://{bucket}"),
                )
            }
            other => {
                return Err(StoreError::url(
                    raw,
                    format!("not an object store scheme: {other:?}"),
                ));
            }
        };
        let prefix = Path::parse(prefix.trim_matches('/'))
            .map_err(|e| StoreError::url(raw, format!("invalid prefix: {e}")))?;
        let mib = crate::blobservice::PART_BUDGET_MIB as usize;
        Ok(Self {
            store,
            part_budget: Arc::new(tokio::sync::Semaphore::new(mib)),
            prefix,
            base,
        })
    }

    /// Where the object of `kind` with `digest` is kept.
    pub(crate) fn key(&self, kind: Kind, digest: &B3Digest) -> Path {
        let hex = digest.to_hex();
        let dir = match kind {
            Kind::Blob => self.prefix.clone().join("blobs").join("whole"),
            Kind::Directory => self.prefix.clone().join("directories"),
        };
        dir.join(&hex[..2]).join(hex.as_str())
    }

    /// `key` as a URL, for messages.
    pub(crate) fn show(&self, key: &Path) -> String {
        format!("{}/{key}", self.base)
    }

    /// An `io::Error` for a failed call on `key` about `what` (e.g.
    /// "blob DIGEST: reading"), naming both; the kind is kept.
    pub(crate) fn io_err(&self, what: &str, key: &Path, e: object_store::Error) -> io::Error {
        let msg = format!("{what} {}: {e}", self.show(key));
        io::Error::new(io::Error::from(e).kind(), msg)
    }
}

/// `url` for messages: the values of parameters that may be secrets
/// (keys, tokens, passwords) replaced by `…`.
fn redacted(url: &Url) -> String {
    if url.query().is_none() {
        return url.as_str().to_owned();
    }
    let secret = |k: &str| {
        ["secret", "token", "key", "password"]
            .iter()
            .any(|w| k.to_ascii_lowercase().contains(w))
    };
    let mut shown = url.clone();
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| {
            let v = if secret(&k) {
                "…".to_owned()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    shown.query_pairs_mut().clear().extend_pairs(pairs);
    shown.as_str().to_owned()
}

fn no_params(url: &Url) -> Result<(), StoreError> {
    match url.query_pairs().next() {
        Some((k, _)) => Err(StoreError::url(
            url.as_str(),
            format!("{}: unknown parameter {k:?}", url.scheme()),
        )),
        None => Ok(()),
    }
}
