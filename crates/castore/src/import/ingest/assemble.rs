//! Nodes not yet known — a file still being stored, a directory waiting
//! for such files — and the assembly of a directory from its children.

use std::path::PathBuf;

use tokio::sync::mpsc;

use super::super::IngestionError;
use crate::{Directory, Node, PathComponent};

/// A task aborted when dropped, so a failed ingestion stops its other work.
pub(super) struct Task<T>(pub tokio::task::JoinHandle<T>);

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> Task<T> {
    /// Waits for the task; its death is an [`IngestionError::Task`].
    pub(super) async fn join<E>(mut self) -> Result<T, IngestionError<E>> {
        (&mut self.0)
            .await
            .map_err(|e| IngestionError::Task(e.to_string()))
    }
}

/// A node, or the task that will know it.
pub(super) enum Pending<E> {
    Ready(Node),
    Running(Task<Result<Node, IngestionError<E>>>),
}

impl<E> Pending<E> {
    /// The node, once known.
    pub(super) async fn resolve(self) -> Result<Node, IngestionError<E>> {
        match self {
            Pending::Ready(n) => Ok(n),
            Pending::Running(t) => t.join().await?,
        }
    }
}

/// The directory at `path` made of `children`, sent to the putter through
/// `dirs` before its node is known (so before its parent is sent): at
/// once when every child is known, else by a task that waits for them.
pub(super) fn assemble<E: Send + 'static>(
    path: PathBuf,
    children: Vec<(PathComponent, Pending<E>)>,
    dirs: mpsc::UnboundedSender<Directory>,
) -> Result<Pending<E>, IngestionError<E>> {
    if children.iter().all(|(_, p)| matches!(p, Pending::Ready(_))) {
        let mut dir = Directory::new();
        for (name, p) in children {
            if let Pending::Ready(node) = p {
                add(&mut dir, &path, name, node)?;
            }
        }
        return Ok(Pending::Ready(send(dir, &dirs)));
    }
    Ok(Pending::Running(Task(tokio::spawn(async move {
        let mut dir = Directory::new();
        for (name, p) in children {
            add(&mut dir, &path, name, p.resolve().await?)?;
        }
        Ok(send(dir, &dirs))
    }))))
}

fn add<E>(
    dir: &mut Directory,
    path: &std::path::Path,
    name: PathComponent,
    node: Node,
) -> Result<(), IngestionError<E>> {
    dir.add(name, node)
        .map_err(|err| IngestionError::Directory {
            path: path.to_owned(),
            err,
        })
}

/// Sends `dir` to the putter; returns its node.
fn send(dir: Directory, dirs: &mpsc::UnboundedSender<Directory>) -> Node {
    let node = dir.as_node();
    // The putter is gone only when the ingestion failed.
    let _ = dirs.send(dir);
    node
}
