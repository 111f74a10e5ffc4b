//! The embedded persistent directory store (`redb:///path/directories.redb`):
//! directories in their canonical encoding in one redb table keyed by digest.
//! A closure is written in one transaction, so it is all there or not at all.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, TableDefinition};

use super::{BatchPutter, BatchStore, DirectoryPutter, DirectoryService, decode_stored};
use crate::{B3Digest, Directory, StoreError};

const DIRECTORIES: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("directories");

/// Directories in a redb database file.
#[derive(Clone, Debug)]
pub struct RedbDirectoryService {
    db: Arc<Database>,
    path: PathBuf,
}

impl RedbDirectoryService {
    /// Opens (creating it and its parent directory if needed) the database
    /// at `path`. One process at a time: when another has it open, the
    /// error is [`StoreError::InUse`], naming that process if it is seen.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let path = path.into();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| StoreError::io(format!("creating {}", parent.display()), e))?;
        }
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse {
                holder: super::find_holder(&path),
                path: path.clone(),
            },
            e => db_err(&path, e),
        })?;
        let txn = db.begin_write().map_err(|e| db_err(&path, e))?;
        txn.open_table(DIRECTORIES).map_err(|e| db_err(&path, e))?;
        txn.commit().map_err(|e| db_err(&path, e))?;
        Ok(Self {
            db: Arc::new(db),
            path,
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database, &Path) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (db, path) = (self.db.clone(), self.path.clone());
        tokio::task::spawn_blocking(move || f(&db, &path))
            .await
            .map_err(|e| StoreError::Database {
                path: self.path.clone(),
                msg: format!("task failed: {e}"),
            })?
    }
}

fn db_err(path: &Path, e: impl Into<redb::Error>) -> StoreError {
    StoreError::Database {
        path: path.to_owned(),
        msg: e.into().to_string(),
    }
}

#[async_trait]
impl DirectoryService for RedbDirectoryService {
    async fn get(&self, digest: &B3Digest) -> Result<Option<Directory>, StoreError> {
        let d = *digest;
        self.blocking(move |db, path| {
            let txn = db.begin_read().map_err(|e| db_err(path, e))?;
            let table = txn.open_table(DIRECTORIES).map_err(|e| db_err(path, e))?;
            let Some(bytes) = table.get(d.as_bytes()).map_err(|e| db_err(path, e))? else {
                return Ok(None);
            };
            decode_stored(bytes.value(), &d).map(Some)
        })
        .await
    }

    async fn put(&self, dir: Directory) -> Result<B3Digest, StoreError> {
        let digest = dir.digest();
        self.put_batch(vec![(digest, dir)]).await?;
        Ok(digest)
    }

    fn put_multiple_start(&self) -> Box<dyn DirectoryPutter + '_> {
        Box::new(BatchPutter::new(self))
    }
}

#[async_trait]
impl BatchStore for RedbDirectoryService {
    async fn put_batch(&self, dirs: Vec<(B3Digest, Directory)>) -> Result<(), StoreError> {
        self.blocking(move |db, path| {
            let txn = db.begin_write().map_err(|e| db_err(path, e))?;
            {
                let mut table = txn.open_table(DIRECTORIES).map_err(|e| db_err(path, e))?;
                for (digest, dir) in &dirs {
                    table
                        .insert(digest.as_bytes(), dir.encode().as_slice())
                        .map_err(|e| db_err(path, e))?;
                }
            }
            txn.commit().map_err(|e| db_err(path, e))
        })
        .await
    }
}
