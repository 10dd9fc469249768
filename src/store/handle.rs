//! A redb database that reopens itself after an I/O failure.
//!
//! After any I/O error redb fails every later call on that `Database`; closing it and opening
//! the file again is how a store comes back once the storage works again (a full disk freed).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use redb::Database;

use super::StoreError;

type Opener = Box<dyn Fn(&Path) -> Result<Database, StoreError> + Send + Sync>;

pub(crate) struct DbHandle {
    slot: RwLock<Option<Arc<Database>>>,
    path: PathBuf,
    open: Opener,
}

impl DbHandle {
    /// Opens `path` with `open` now, and again after each [`invalidate`](Self::invalidate).
    pub(crate) fn open(
        path: PathBuf,
        open: impl Fn(&Path) -> Result<Database, StoreError> + Send + Sync + 'static,
    ) -> Result<DbHandle, StoreError> {
        let db = open(&path)?;
        Ok(DbHandle {
            slot: RwLock::new(Some(Arc::new(db))),
            path,
            open: Box::new(open),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The open database, reopening it if a failure closed it.
    pub(crate) fn get(&self) -> Result<Arc<Database>, StoreError> {
        if let Some(db) = self.slot.read().map_err(|_| StoreError::Closed)?.as_ref() {
            return Ok(Arc::clone(db));
        }
        let mut slot = self.slot.write().map_err(|_| StoreError::Closed)?;
        if let Some(db) = slot.as_ref() {
            return Ok(Arc::clone(db));
        }
        let db = Arc::new((self.open)(&self.path)?);
        *slot = Some(Arc::clone(&db));
        tracing::info!(path = %self.path.display(), "database reopened after a storage failure");
        Ok(db)
    }

    /// Drops a failed database so that the next access reopens it. Callers still holding the old
    /// one finish with errors; its file is closed once it is dropped.
    pub(crate) fn invalidate(&self) {
        if let Ok(mut slot) = self.slot.write() {
            slot.take();
        }
    }
}
