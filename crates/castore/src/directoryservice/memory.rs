//! The in-memory directory store (`memory://`): for tests and short-lived use.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;

use super::{BatchPutter, BatchStore, DirectoryPutter, DirectoryService};
use crate::{B3Digest, Directory, StoreError};

/// Directories in a hash map. Clones share the same map.
#[derive(Clone, Debug, Default)]
pub struct MemoryDirectoryService {
    dirs: Arc<RwLock<HashMap<B3Digest, Directory>>>,
}

#[async_trait]
impl DirectoryService for MemoryDirectoryService {
    async fn get(&self, digest: &B3Digest) -> Result<Option<Directory>, StoreError> {
        let map = self.dirs.read().unwrap_or_else(|p| p.into_inner());
        Ok(map.get(digest).cloned())
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
impl BatchStore for MemoryDirectoryService {
    async fn put_batch(&self, dirs: Vec<(B3Digest, Directory)>) -> Result<(), StoreError> {
        let mut map = self.dirs.write().unwrap_or_else(|p| p.into_inner());
        map.extend(dirs);
        Ok(())
    }
}
