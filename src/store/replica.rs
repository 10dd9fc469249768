//! The seam between the store and where its writes are replicated for failover: the trait a
//! recovery backend implements (`crate::recovery` holds the backends) and its types. A leaf: it
//! needs only the key types, so the store can call a backend without knowing any.

use std::io::Read;

use crate::key::{BlobId, BlobKey, JobId};

/// Errors of a recovery store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecoveryError {
    /// The store failed: opening it, a transaction or a request, its I/O.
    #[error("recovery store at {path}: {message}")]
    Backend {
        /// Where the store is: its database file or directory, or `URI at ENDPOINT`.
        path: String,
        /// The cause.
        message: String,
    },
    /// The recovery directory could not be created or resolved.
    #[error("recovery store I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// The bytes of a blob to replicate, read at any offset: a spooled upload (in memory or in a
/// temp file) or a slice. A backend streams them in pieces of its choosing, so replicating a
/// blob never needs the whole of it in memory.
pub trait BlobBytes: Send + Sync {
    /// The length in bytes.
    fn len(&self) -> u64;
    /// True when there are no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Fills `buf` with the bytes at `offset`; fails when that runs past the end.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()>;
}

fn slice_read_at(data: &[u8], offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
    let src = usize::try_from(offset)
        .ok()
        .and_then(|start| data.get(start..start.checked_add(buf.len())?))
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
    buf.copy_from_slice(src);
    Ok(())
}

impl BlobBytes for &[u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        slice_read_at(self, offset, buf)
    }
}

impl BlobBytes for Vec<u8> {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        slice_read_at(self, offset, buf)
    }
}

impl<const N: usize> BlobBytes for [u8; N] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        slice_read_at(self, offset, buf)
    }
}

/// One blob to replicate: its identity, content key and bytes.
#[derive(Clone)]
pub struct RecoveryItem<'a> {
    /// Where the blob goes: by key, or by job and name.
    pub id: BlobId,
    /// Its content key (for a content blob, the key in `id`).
    pub key: BlobKey,
    /// Its bytes, read piece by piece.
    pub data: &'a dyn BlobBytes,
}

impl std::fmt::Debug for RecoveryItem<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecoveryItem")
            .field("id", &self.id)
            .field("key", &self.key)
            .field("len", &self.data.len())
            .finish()
    }
}

impl RecoveryItem<'_> {
    /// A sequential reader of the bytes.
    pub fn reader(&self) -> ItemReader<'_> {
        ItemReader {
            data: self.data,
            offset: 0,
        }
    }
}

/// A sequential reader over [`BlobBytes`] (see [`RecoveryItem::reader`]).
pub struct ItemReader<'a> {
    data: &'a dyn BlobBytes,
    offset: u64,
}

impl Read for ItemReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.data.len().saturating_sub(self.offset);
        let n = (buf.len() as u64).min(left) as usize;
        self.data.read_at(self.offset, &mut buf[..n])?;
        self.offset += n as u64;
        Ok(n)
    }
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
    /// Collects stored bytes no blob refers to any more. A backend that frees them as it goes
    /// (the redb file) has nothing to do: the default reports nothing collected.
    fn gc(&self) -> Result<GcReport, RecoveryError> {
        Ok(GcReport::default())
    }
}

/// What a garbage collection of a recovery store found and did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Content objects found.
    pub content_objects: u64,
    /// Of them, deleted: no blob referred to them.
    pub deleted: u64,
    /// Kept: a blob refers to them.
    pub kept_referenced: u64,
    /// Kept: younger than the grace period.
    pub kept_young: u64,
    /// Skipped: another collection holds them.
    pub skipped_marked: u64,
}
