//! The seam between the store and where its writes are replicated for failover: the trait a
//! recovery backend implements (`crate::recovery` holds the backends) and its types. A leaf: it
//! needs only the key types, so the store can call a backend without knowing any.

use std::io::Read;

use crate::key::{BlobId, BlobKey, JobId};

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
