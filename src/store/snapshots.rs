//! Read snapshots shared by the GETs that start between two commits.
//!
//! Opening a table in a redb read transaction costs more than the lookups a small GET makes in
//! it: redb checks the stored definition of the table at each open, formatting type names (about
//! 12,700 of a 4 KiB GET's 17,600 instructions went to the two opens, BENCHMARKS.md, issue
//! #13). Between two commits every GET would open the same snapshot, so they share one: the
//! first GET after a commit opens it, the others take it.
//!
//! Three rules keep that as correct as a snapshot per GET:
//! - *Read your writes.* The writer advances the *generation* after its commits and before it
//!   replies to any of their operations (and a storage failure advances it too: the database is
//!   reopened). A snapshot is tagged with the generation read before its transaction began and
//!   is taken only while that is still the generation: a write acknowledged before a GET began
//!   advanced the generation past every snapshot that might lack it.
//! - *No growth.* A snapshot held across a commit keeps redb from reusing the pages that commit
//!   frees (`read.rs`), so advancing the generation also drops the shared snapshot: it lives no
//!   longer than its generation, plus the lookups of the GETs that took it meanwhile (a reader
//!   keeps it past that only as `read.rs` says: while it hands out borrowed chunks).
//! - *Leases.* A snapshot carries the leases' epoch read before it began, which is what a lease
//!   taken for a blob found in it must be checked against however old it is (`lease.rs`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use redb::{ReadOnlyTable, ReadTransaction, ReadableDatabase};

use super::StoreError;
use super::handle::DbHandle;
use super::lease::Leases;
use super::read::Snapshot;
use super::schema::{CONTENT, ContentMeta, Layout, NAMED};

type ContentTable = ReadOnlyTable<[u8; 20], [u8; ContentMeta::SIZE]>;
type NamedTable = ReadOnlyTable<([u8; 16], &'static str), [u8; 20]>;

/// The shared snapshot of one store and the generation it is checked against.
pub(crate) struct Snapshots {
    generation: AtomicU64,
    current: Mutex<Option<Arc<SharedSnapshot>>>,
}

/// One read transaction with the tables GETs look in.
pub(crate) struct SharedSnapshot {
    generation: u64,
    /// The leases' epoch, read before the transaction began.
    pub(crate) epoch: u64,
    pub(crate) content: ContentTable,
    /// The chunk tables (and tails) a reader of a blob found here reads.
    pub(crate) chunks: Arc<Snapshot>,
    /// Opened by the first GET by name (content GETs never need it).
    named: OnceLock<NamedTable>,
    txn: Mutex<ReadTransaction>,
}

impl SharedSnapshot {
    /// The named table of this snapshot.
    pub(crate) fn named(&self) -> Result<&NamedTable, StoreError> {
        if let Some(t) = self.named.get() {
            return Ok(t);
        }
        let table = lock(&self.txn).open_table(NAMED)?;
        // A GET racing this one may have set it first: the same table of the same snapshot.
        Ok(self.named.get_or_init(|| table))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing is left half-updated under these locks (an Option swapped, a table opened).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Snapshots {
    pub(crate) fn new() -> Snapshots {
        Snapshots {
            generation: AtomicU64::new(0),
            current: Mutex::new(None),
        }
    }

    /// After commits, before any of their operations is acknowledged; and when the database is
    /// dropped for a reopen: later GETs take a snapshot begun after this call.
    pub(crate) fn advance(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let old = lock(&self.current).take();
        // Dropped outside the lock (ending a read transaction takes redb's own lock).
        drop(old);
    }

    /// A snapshot that holds every write acknowledged before this call: the shared one if it is
    /// still current, else a fresh one (then shared, unless a commit advanced the generation
    /// while it opened).
    pub(crate) fn get(
        &self,
        db: &DbHandle,
        leases: &Leases,
        layout: Layout,
    ) -> Result<Arc<SharedSnapshot>, StoreError> {
        let generation = self.generation.load(Ordering::SeqCst);
        if let Some(s) = lock(&self.current).as_ref()
            && s.generation == generation
        {
            return Ok(Arc::clone(s));
        }
        // Both read before the transaction begins (see the module docs and lease.rs).
        let epoch = leases.epoch();
        let generation = self.generation.load(Ordering::SeqCst);
        let txn = db.get()?.begin_read()?;
        let fresh = Arc::new(SharedSnapshot {
            generation,
            epoch,
            content: txn.open_table(CONTENT)?,
            chunks: Arc::new(Snapshot::open_all(&txn, layout)?),
            named: OnceLock::new(),
            txn: Mutex::new(txn),
        });
        let old = {
            let mut current = lock(&self.current);
            // Checked under the lock that `advance` takes after its increment: a snapshot of a
            // past generation is never left shared.
            if self.generation.load(Ordering::SeqCst) == generation {
                current.replace(Arc::clone(&fresh))
            } else {
                None
            }
        };
        drop(old);
        Ok(fresh)
    }

    /// Whether a snapshot is shared now (tests).
    #[cfg(test)]
    pub(crate) fn is_shared(&self) -> bool {
        lock(&self.current).is_some()
    }
}

#[cfg(test)]
mod tests {
    use crate::key::BlobId;
    use crate::store::{FaultSwitch, MemoryImage, StoreOptions};

    #[test]
    fn commits_and_storage_failures_drop_the_shared_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let faults = FaultSwitch::new();
        let store = StoreOptions::new(dir.path())
            .in_memory(MemoryImage::new())
            .faults(faults.clone())
            .open()
            .unwrap();
        let shared = &store.inner.shared;
        assert!(
            !store
                .contains(&BlobId::Content(crate::key::BlobKey::of(b"kept")))
                .unwrap()
        );
        assert!(shared.snapshots.is_shared(), "a GET shares its snapshot");
        let id = BlobId::Content(store.put(b"kept").unwrap());
        assert!(
            !shared.snapshots.is_shared(),
            "kept across the PUT's commit"
        );
        assert!(store.contains(&id).unwrap());
        assert!(shared.snapshots.is_shared(), "a GET shares its snapshot");
        // A failed commit, and a failure outside the writer, drop it too.
        faults.fail_writes();
        assert!(store.put(b"lost").is_err());
        assert!(!shared.snapshots.is_shared());
        faults.heal();
        assert!(store.contains(&id).unwrap());
        assert!(shared.snapshots.is_shared());
        shared.invalidate();
        assert!(!shared.snapshots.is_shared());
        assert_eq!(store.get_bytes(&id).unwrap().as_deref(), Some(&b"kept"[..]));
    }
}
