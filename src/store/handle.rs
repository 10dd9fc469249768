//! A redb database that reopens itself after an I/O failure.
//!
//! After any I/O error redb fails every later call on that `Database`; closing it and opening
//! the file again is how a store comes back once the storage works again (a full disk freed).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use redb::Database;

use super::StoreError;

type Opener = Box<dyn Fn(&Path) -> Result<Database, StoreError> + Send + Sync>;

pub(crate) struct DbHandle {
    slot: RwLock<Option<Arc<Database>>>,
    path: PathBuf,
    open: Opener,
    /// Device and inode of the file at `path` when it was last opened; `None` where the
    /// database is not a file on disk (in memory, simulated) or the platform has no inodes.
    opened: Mutex<Option<(u64, u64)>>,
}

/// Device and inode of the file at `path`, if there is one.
fn identity(path: &Path) -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
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
            opened: Mutex::new(identity(&path)),
            path,
            open: Box::new(open),
        })
    }

    /// Whether the file at the database's path is still the one open. A database file deleted
    /// (or its directory removed, or another file moved over it) while open takes writes that
    /// no later open will see: every acknowledged PUT from then on would be lost at the next
    /// restart.
    pub(crate) fn file_check(&self) -> Result<(), String> {
        let Some(opened) = self.opened.lock().ok().and_then(|o| *o) else {
            return Ok(());
        };
        let path = self.path.display();
        match identity(&self.path) {
            Some(now) if now == opened => Ok(()),
            Some(_) => Err(format!(
                "the store's database file {path} was replaced by another file while open; \
                 writes go to the old one: restart the server"
            )),
            None => Err(format!(
                "the store's database file {path} is gone (deleted, or its directory removed) \
                 while open; writes go to a deleted file and are lost at the next restart: \
                 restore the directory or restart the server"
            )),
        }
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
        if let Ok(mut opened) = self.opened.lock() {
            *opened = identity(&self.path);
        }
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
