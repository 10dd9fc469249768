//! The redb-file recovery backend: every write replicated to one redb database file on shared
//! storage, `<recovery dir>/blob/recovery.redb`, in the same schema as a local store, opened in
//! redb's multi-process mode ([`ConcurrencyMode::MultiWriter`]): every server using the
//! directory writes it directly.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use redb::{ConcurrencyMode, Database, ReadableDatabase, ReadableTable};

use crate::key::{BlobId, BlobKey, JobId};
use crate::protocol::{DeleteTarget, PutTarget};
use crate::store::schema::{CONTENT, ContentMeta, NAMED};
use crate::store::writer::Tables;
use crate::store::{
    BlobReader, DEFAULT_CHUNK_SIZE, FaultSwitch, RecoveryError, RecoveryItem, RecoveryStore,
    Snapshot, StoreError, init_schema, open_db_file,
};

/// The file of the recovery database inside a recovery directory.
pub fn recovery_db_path(dir: &Path) -> PathBuf {
    dir.join("blob").join("recovery.redb")
}

/// The redb recovery store: one multi-writer database file on shared storage.
pub struct RedbRecoveryStore {
    db: crate::store::DbHandle,
    layout: crate::store::schema::Layout,
}

impl std::fmt::Debug for RedbRecoveryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbRecoveryStore")
            .field("path", &self.db.path())
            .finish()
    }
}

fn registry() -> &'static Mutex<HashMap<PathBuf, Weak<RedbRecoveryStore>>> {
    static R: OnceLock<Mutex<HashMap<PathBuf, Weak<RedbRecoveryStore>>>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(HashMap::new()))
}

impl RedbRecoveryStore {
    /// Opens the recovery store of `dir`, sharing one handle per path within this process (redb
    /// allows one handle per file and process).
    pub fn open(dir: &Path) -> Result<Arc<RedbRecoveryStore>, RecoveryError> {
        Self::open_with_faults(dir, FaultSwitch::new())
    }

    /// Like [`open`](Self::open), with storage fault injection (used by the failure tests). The
    /// switch only applies when this call opens the file.
    pub fn open_with_faults(
        dir: &Path,
        faults: FaultSwitch,
    ) -> Result<Arc<RedbRecoveryStore>, RecoveryError> {
        let blob_dir = dir.join("blob");
        // Errors name the folder: a recovery directory given on a file is a common slip.
        std::fs::create_dir_all(&blob_dir).map_err(|e| backend_err(&blob_dir, e))?;
        let canon = blob_dir
            .canonicalize()
            .map_err(|e| backend_err(&blob_dir, e))?;
        let mut reg = registry()
            .lock()
            .map_err(|_| backend_err(&canon, "registry poisoned"))?;
        if let Some(s) = reg.get(&canon).and_then(Weak::upgrade) {
            return Ok(s);
        }
        let path = canon.join("recovery.redb");
        let db = crate::store::DbHandle::open(path.clone(), move |p| {
            let mut b = Database::builder();
            b.set_concurrency_mode(ConcurrencyMode::MultiWriter)
                .set_cache_size(16 * 1024 * 1024);
            open_db_file(p, &b, &faults)
        })
        .map_err(|e| backend_err(&path, e))?;
        let layout = db
            .get()
            .and_then(|d| init_schema(&d, DEFAULT_CHUNK_SIZE as u64))
            .map_err(|e| backend_err(&path, e))?;
        let store = Arc::new(RedbRecoveryStore { db, layout });
        reg.retain(|_, w| w.strong_count() > 0);
        reg.insert(canon, Arc::downgrade(&store));
        tracing::info!(path = %path.display(), "recovery store open");
        Ok(store)
    }

    fn err(&self, e: impl std::fmt::Display) -> RecoveryError {
        backend_err(self.db.path(), e)
    }

    /// Runs `f` in one write transaction over the store's tables.
    fn write<T>(
        &self,
        f: impl FnOnce(&mut Tables<'_>) -> Result<T, StoreError>,
    ) -> Result<T, RecoveryError> {
        let run = || -> Result<T, StoreError> {
            let db = self.db.get()?;
            let txn = db.begin_write()?;
            let out = f(&mut Tables::open(&txn, self.layout)?)?;
            txn.commit()?;
            Ok(out)
        };
        run().map_err(|e| {
            if matches!(e, StoreError::Storage(_)) {
                self.db.invalidate();
            }
            self.err(e)
        })
    }

    fn reader(&self, id: &BlobId) -> Result<Option<BlobReader>, StoreError> {
        let txn = self.db.get()?.begin_read()?;
        let key = match id {
            BlobId::Content(k) => *k,
            BlobId::Named(job, name) => match txn.open_table(NAMED)?.get((job.0, name.as_str()))? {
                Some(k) => BlobKey(k.value()),
                None => return Ok(None),
            },
        };
        let meta = match txn.open_table(CONTENT)?.get(key.0)? {
            Some(m) => ContentMeta::decode(&m.value()),
            None => return Ok(None),
        };
        if matches!(id, BlobId::Content(_)) && !meta.pinned {
            return Ok(None);
        }
        Ok(Some(BlobReader::new(
            Snapshot::open(&txn, self.layout, meta.len)?,
            key,
            meta.len,
            self.layout,
            true,
        )))
    }
}

fn backend_err(path: &Path, e: impl std::fmt::Display) -> RecoveryError {
    RecoveryError::Backend {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

fn delete_target(id: &BlobId) -> DeleteTarget {
    match id {
        BlobId::Content(k) => DeleteTarget::Content(*k),
        BlobId::Named(j, n) => DeleteTarget::Named(*j, n.clone()),
    }
}

impl RecoveryStore for RedbRecoveryStore {
    fn put(&self, items: &[RecoveryItem<'_>]) -> Result<(), RecoveryError> {
        self.write(|t| {
            for item in items {
                let target = match &item.id {
                    BlobId::Content(_) => PutTarget::Content,
                    BlobId::Named(j, n) => PutTarget::Named(*j, n.clone()),
                };
                let data = item.data;
                t.put_with(
                    item.key,
                    data.len(),
                    |offset, buf| {
                        data.read_at(offset, buf).map_err(|e| {
                            StoreError::Storage(format!("replicating {}: {e}", item.id))
                        })
                    },
                    &target,
                )?;
            }
            Ok(())
        })
    }

    fn get(&self, id: &BlobId) -> Result<Option<Box<dyn Read + Send>>, RecoveryError> {
        match self.reader(id) {
            Ok(r) => Ok(r.map(|r| Box::new(r) as Box<dyn Read + Send>)),
            Err(e) => Err(self.err(e)),
        }
    }

    fn key_of(&self, id: &BlobId) -> Result<Option<BlobKey>, RecoveryError> {
        self.reader(id)
            .map(|r| r.map(|r| r.key()))
            .map_err(|e| self.err(e))
    }

    fn delete(&self, id: &BlobId) -> Result<(), RecoveryError> {
        self.write(|t| t.delete(&delete_target(id)).map(|_| ()))
    }

    fn delete_job(&self, job: &JobId) -> Result<(), RecoveryError> {
        self.write(|t| t.delete(&DeleteTarget::Job(*job)).map(|_| ()))
    }

    fn list(&self) -> Result<Vec<BlobId>, RecoveryError> {
        let run = || -> Result<Vec<BlobId>, StoreError> {
            let txn = self.db.get()?.begin_read()?;
            let mut out = Vec::new();
            for row in txn.open_table(CONTENT)?.iter()? {
                let (k, m) = row?;
                if ContentMeta::decode(&m.value()).pinned {
                    out.push(BlobId::Content(BlobKey(k.value())));
                }
            }
            for row in txn.open_table(NAMED)?.iter()? {
                let (k, _) = row?;
                let (job, name) = k.value();
                out.push(BlobId::Named(JobId(job), name.to_owned()));
            }
            Ok(out)
        };
        run().map_err(|e| self.err(e))
    }

    fn purge(&self) -> Result<(), RecoveryError> {
        let ids = self.list()?;
        self.write(|t| {
            for id in &ids {
                t.delete(&delete_target(id))?;
            }
            Ok(())
        })?;
        tracing::info!(path = %self.db.path().display(), blobs = ids.len(), "recovery store purged");
        Ok(())
    }
}
