//! The putter of an ingestion's directories: one batch, leaves first,
//! closed once every directory came, each call bounded by the deadline.

use std::future::Future;
use std::path::PathBuf;
use std::time::Instant;

use tokio::sync::mpsc;

use super::super::IngestionError;
use crate::directoryservice::DirectoryService;
use crate::{Directory, StoreError};

/// Puts every directory `rx` yields, in order, in one batch started with
/// the first and closed when `rx` ends (none when none came).
pub(super) async fn put_all<E>(
    dirs: &dyn DirectoryService,
    mut rx: mpsc::UnboundedReceiver<Directory>,
    deadline: Option<Instant>,
) -> Result<(), IngestionError<E>> {
    let Some(first) = rx.recv().await else {
        return Ok(());
    };
    let mut putter = dirs.put_multiple_start();
    bounded(deadline, putter.put(first)).await?;
    while let Some(d) = rx.recv().await {
        bounded(deadline, putter.put(d)).await?;
    }
    bounded(deadline, putter.close()).await.map(drop)
}

/// Runs a directory store call until `deadline` at most.
async fn bounded<T, E>(
    deadline: Option<Instant>,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, IngestionError<E>> {
    let res = match deadline {
        Some(at) => tokio::time::timeout_at(at.into(), call)
            .await
            .map_err(|_| IngestionError::StoreTimedOut {
                path: PathBuf::new(),
            })?,
        None => call.await,
    };
    res.map_err(IngestionError::Store)
}
