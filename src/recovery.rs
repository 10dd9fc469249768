//! Recovery (high availability): every write replicated to a store on shared storage, so that
//! another server — another process, or another host on a shared mount — can serve every blob
//! after a failover.
//!
//! The redb implementation keeps one database file, `<recovery dir>/blob/recovery.redb`, in the
//! same schema as a local store, opened in redb's multi-process mode
//! ([`ConcurrencyMode::MultiWriter`]): every server using the directory writes it directly.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use redb::{ConcurrencyMode, Database, ReadableDatabase, ReadableTable};

use crate::config::{Configuration, keys};
use crate::key::{BlobId, BlobKey, JobId};
use crate::protocol::{DeleteTarget, PutTarget};
use crate::store::schema::{CHUNKS, CONTENT, ContentMeta, NAMED};
use crate::store::writer::Tables;
use crate::store::{
    BlobReader, BlobStore, DEFAULT_CHUNK_SIZE, FaultSwitch, StoreError, init_schema, open_db_file,
};

/// Errors of a recovery store.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// The store's database failed: opening it, a transaction, or its I/O.
    #[error("recovery store at {path}: {message}")]
    Backend {
        /// The database file, or its directory.
        path: String,
        /// The cause.
        message: String,
    },
    /// The recovery directory could not be created or resolved.
    #[error("recovery store I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// One blob to replicate: its identity, content key and bytes.
#[derive(Debug, Clone)]
pub struct RecoveryItem<'a> {
    /// Where the blob goes: by key, or by job and name.
    pub id: BlobId,
    /// Its content key (for a content blob, the key in `id`).
    pub key: BlobKey,
    /// Its bytes.
    pub data: &'a [u8],
}

/// Where writes are replicated. Small and free of storage-engine types so that stores on other
/// media (an object store) can implement it.
pub trait RecoveryStore: Send + Sync + std::fmt::Debug {
    /// Stores every item durably, all or nothing, replacing what was under the same id.
    fn put(&self, items: &[RecoveryItem<'_>]) -> Result<(), RecoveryError>;
    /// A reader of the blob, or `None` if it is not there.
    fn get(&self, id: &BlobId) -> Result<Option<Box<dyn Read + Send>>, RecoveryError>;
    /// The content key stored under `id`, or `None` if it is not there.
    fn key_of(&self, id: &BlobId) -> Result<Option<BlobKey>, RecoveryError>;
    /// Removes one blob; a missing one is not an error.
    fn delete(&self, id: &BlobId) -> Result<(), RecoveryError>;
    /// Removes every named blob of `job`.
    fn delete_job(&self, job: &JobId) -> Result<(), RecoveryError>;
    /// Every blob held.
    fn list(&self) -> Result<Vec<BlobId>, RecoveryError>;
    /// Removes everything.
    fn purge(&self) -> Result<(), RecoveryError>;
}

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
            txn.open_table(CHUNKS)?,
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
                t.put(item.key, item.data, &target)?;
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

/// A blob missing locally: fetch it from the store's recovery store, keep it locally, and open
/// it. `Ok(None)` when there is no recovery store or it lacks the blob too. Content fetched by
/// key is checked against the key before it is kept.
pub(crate) fn read_repair(
    store: &BlobStore,
    id: &BlobId,
) -> Result<Option<BlobReader>, StoreError> {
    let Some(rec) = store.recovery() else {
        return Ok(None);
    };
    let Some(mut reader) = store
        .counters()
        .recovery(crate::metrics::RecoveryCall::Get, || rec.get(id))
        .map_err(|e| StoreError::Recovery(e.to_string()))?
    else {
        return Ok(None);
    };
    let mut up = store.upload();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        up.write(&buf[..n])?;
    }
    let spooled = up.finish()?;
    let target = match id {
        BlobId::Content(k) => {
            if spooled.key() != *k {
                return Err(StoreError::Damaged {
                    key: *k,
                    what: format!("recovery copy hashes to {}", spooled.key()),
                });
            }
            PutTarget::Content
        }
        BlobId::Named(j, n) => PutTarget::Named(*j, n.clone()),
    };
    // Counted by the writer if it applied (read_repairs_total).
    store.commit_local(spooled, target)?;
    tracing::info!(blob = %id, "blob restored from the recovery store");
    store.get(id)
}

/// The recovery mode of Flink's `recovery.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecoveryMode {
    /// `standalone` (the default): no recovery store.
    Standalone,
    /// `zookeeper`: writes replicated to the directory Flink's state-backend keys name.
    Zookeeper,
}

/// Errors in the recovery configuration.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryConfigError {
    /// A `recovery.mode` other than `standalone` or `zookeeper` (either in any case); holds it.
    #[error("unknown {key} {0:?} (expected standalone or zookeeper)", key = keys::RECOVERY_MODE)]
    UnknownMode(String),
    /// In `zookeeper` mode, a `state.backend` other than `filesystem`; holds it.
    #[error("{key} {0:?} cannot hold recovery data: use filesystem", key = keys::STATE_BACKEND)]
    Backend(String),
    /// In `zookeeper` mode, a blank `state.backend.fs.dir.recovery`.
    #[error("{key} is empty", key = keys::RECOVERY_PATH)]
    EmptyPath,
    /// The recovery store could not be opened.
    #[error(transparent)]
    Open(#[from] RecoveryError),
}

/// The recovery directory Flink's keys ask for: `None` in standalone mode. A `file://` URI is
/// taken as its path. As in the original, `zookeeper` without the two state-backend keys falls
/// back to standalone (with a warning).
pub fn recovery_dir_from_config(
    conf: &Configuration,
) -> Result<Option<PathBuf>, RecoveryConfigError> {
    let mode = match conf
        .get(keys::RECOVERY_MODE)
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("standalone") => RecoveryMode::Standalone,
        Some("zookeeper") => RecoveryMode::Zookeeper,
        Some(other) => return Err(RecoveryConfigError::UnknownMode(other.to_string())),
    };
    if mode == RecoveryMode::Standalone {
        return Ok(None);
    }
    let (Some(backend), Some(path)) = (
        conf.get(keys::STATE_BACKEND),
        conf.get_raw(keys::RECOVERY_PATH),
    ) else {
        tracing::warn!(
            "recovery.mode is zookeeper but no filesystem state backend is configured; running without recovery"
        );
        return Ok(None);
    };
    if !backend.eq_ignore_ascii_case("filesystem") {
        return Err(RecoveryConfigError::Backend(backend.to_string()));
    }
    let path = path.trim();
    if path.is_empty() {
        return Err(RecoveryConfigError::EmptyPath);
    }
    Ok(Some(PathBuf::from(
        path.strip_prefix("file://").unwrap_or(path),
    )))
}

/// The recovery store named by `--recovery-dir`, or else by Flink's keys; `None` in standalone
/// mode.
pub fn from_cli_and_config(
    dir: Option<&Path>,
    conf: &Configuration,
) -> Result<Option<Arc<dyn RecoveryStore>>, RecoveryConfigError> {
    let dir = match dir {
        Some(d) => Some(d.to_path_buf()),
        None => recovery_dir_from_config(conf)?,
    };
    match dir {
        None => Ok(None),
        Some(d) => Ok(Some(RedbRecoveryStore::open(&d)? as Arc<dyn RecoveryStore>)),
    }
}
