//! [`CacheStats`] and the counters behind them.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of a [`BlobCache`](super::BlobCache) since it was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Requests answered from the local copy.
    pub hits: u64,
    /// Requests that started a download (each shared by every concurrent request for the key).
    pub misses: u64,
    /// Requests that waited for a download another request had started (single flight); each
    /// then counts as a hit, or fails with that download's error.
    pub shared: u64,
    /// Connection attempts made to servers (one per attempt, so retries count).
    pub attempts: u64,
    /// Attempts that failed (remote errors, refused or dropped connections, corrupt data).
    pub failed_attempts: u64,
    /// Completed downloads.
    pub downloads: u64,
    /// Bytes downloaded by completed downloads.
    pub downloaded_bytes: u64,
    /// Blobs removed to stay under the size cap.
    pub evictions: u64,
    /// Blobs held now.
    pub blobs: u64,
    /// Bytes held now.
    pub bytes: u64,
}

/// The event counts of [`CacheStats`], bumped without a lock.
#[derive(Default)]
pub(super) struct Counters {
    pub(super) hits: AtomicU64,
    pub(super) misses: AtomicU64,
    pub(super) shared: AtomicU64,
    pub(super) attempts: AtomicU64,
    pub(super) failed_attempts: AtomicU64,
    pub(super) downloads: AtomicU64,
    pub(super) downloaded_bytes: AtomicU64,
    pub(super) evictions: AtomicU64,
}

impl Counters {
    /// Adds one to `c`.
    pub(super) fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts, plus what the cache holds now.
    pub(super) fn snapshot(&self, blobs: u64, bytes: u64) -> CacheStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CacheStats {
            hits: get(&self.hits),
            misses: get(&self.misses),
            shared: get(&self.shared),
            attempts: get(&self.attempts),
            failed_attempts: get(&self.failed_attempts),
            downloads: get(&self.downloads),
            downloaded_bytes: get(&self.downloaded_bytes),
            evictions: get(&self.evictions),
            blobs,
            bytes,
        }
    }
}
