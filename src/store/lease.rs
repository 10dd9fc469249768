//! Leases: what keeps a blob's chunks while a GET streams it from snapshots that move on.
//!
//! A reader re-opens its database snapshot as it goes (`read.rs`), so that a slow or stalled
//! GET does not keep redb from reusing the pages freed since it began. Without more, a DELETE
//! committed meanwhile would free the chunks under it. So the GET takes a lease on its content
//! key, and the writer, about to free leased content, removes its content row only (new GETs no
//! longer find it) and records the key in `PENDING_FREE` in the same transaction (a crash never
//! leaks the chunks: every open frees what that table lists). When the last lease drops, the
//! writer is woken to free the chunks, unless the same content was stored again meanwhile.
//!
//! The race. A reader finds the content in a snapshot S, then leases it. A batch that frees the
//! key decides so at D and commits by E (both under this table's lock). The lease is safe when
//! every free of the key either comes after it (it sees the lease and defers) or is visible in
//! S already. So the writer marks the keys it frees as *freeing* from D until E, and counts the
//! batches that freed anything (the *epoch*, bumped at E). A reader reads the epoch before S and
//! leases with it, however long ago S began (GETs share snapshots: `snapshots.rs`): a key being
//! freed refuses the lease; a changed epoch makes the reader check a fresh snapshot taken after
//! the lease (the content is still there: safe; gone: it was just deleted). A reader that cannot
//! lease pins its first snapshot for the whole read, as every GET did before leases: rare (a GET
//! racing a DELETE of its own blob), and correct.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

type Key = [u8; 20];

/// Hashes a content key by its first eight bytes: a key is a SHA-1 digest, as evenly spread as
/// SipHash's output, which cost a small GET more than its lease did otherwise (issue #13). Keys
/// sharing those bytes would take 2^32 SHA-1s per pair to find, and only slow their own leases.
#[derive(Default)]
struct PrefixHasher(u64);

impl Hasher for PrefixHasher {
    fn write(&mut self, bytes: &[u8]) {
        // A `[u8; 20]` hashes as its length (eight bytes), then its bytes: the last write wins.
        match bytes.first_chunk::<8>() {
            Some(b) => self.0 = u64::from_le_bytes(*b),
            None => bytes
                .iter()
                .for_each(|&b| self.0 = self.0.rotate_left(8) ^ u64::from(b)),
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type KeyMap<V> = HashMap<Key, V, BuildHasherDefault<PrefixHasher>>;
type KeySet = HashSet<Key, BuildHasherDefault<PrefixHasher>>;

/// The leases of one store, shared by its readers and its writer.
pub(crate) struct Leases {
    state: Mutex<State>,
    /// Tells the writer that pending content lost its last lease (a non-blocking send).
    wake: OnceLock<Box<dyn Fn() + Send + Sync>>,
}

#[derive(Default)]
struct State {
    /// Leases per content key.
    held: KeyMap<u32>,
    /// Leased keys whose content was deleted: freed when their last lease drops.
    pending: KeySet,
    /// Keys that open batches free, with the number of such batches.
    freeing: KeyMap<u32>,
    /// Pending keys no longer leased: the writer frees them with its next batch.
    released: Vec<Key>,
    /// Batches that freed chunks, counted when their commit ended.
    epoch: u64,
}

/// Whether a lease may be taken, and what the reader must check first.
pub(crate) enum Grant {
    /// Safe with the snapshot the reader looked in.
    Lease(Lease),
    /// Batches freed chunks since: safe once a snapshot begun after the lease still has the
    /// content.
    Recheck(Lease),
    /// A batch that frees this key is being committed: pin the snapshot instead.
    Refused,
}

impl Leases {
    pub(crate) fn new() -> Arc<Leases> {
        Arc::new(Leases {
            state: Mutex::new(State::default()),
            wake: OnceLock::new(),
        })
    }

    /// Sets how the writer is woken when pending content can be freed (once, at open).
    pub(crate) fn set_waker(&self, wake: impl Fn() + Send + Sync + 'static) {
        let _ = self.wake.set(Box::new(wake));
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across a panic (each update is a few map operations).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The epoch to read before the snapshot a lease will be taken for.
    pub(crate) fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// Leases `key`, found in a snapshot begun after `epoch` was read.
    pub(crate) fn lease(self: &Arc<Self>, key: Key, epoch: u64) -> Grant {
        let mut s = self.lock();
        if s.freeing.contains_key(&key) {
            return Grant::Refused;
        }
        *s.held.entry(key).or_default() += 1;
        let lease = Lease {
            leases: Arc::clone(self),
            key,
        };
        if s.epoch == epoch {
            Grant::Lease(lease)
        } else {
            Grant::Recheck(lease)
        }
    }

    /// Starts a batch that may free chunks; keep it until its commit has ended.
    pub(crate) fn batch(self: &Arc<Self>) -> Arc<FreeBatch> {
        Arc::new(FreeBatch {
            leases: Arc::clone(self),
            keys: Mutex::new(Vec::new()),
        })
    }

    /// Pending keys whose last lease dropped, for the writer to free.
    pub(crate) fn take_released(&self) -> Vec<Key> {
        std::mem::take(&mut self.lock().released)
    }

    /// Gives back keys of [`take_released`](Self::take_released) whose batch failed.
    pub(crate) fn requeue(&self, keys: Vec<Key>) {
        if !keys.is_empty() {
            self.lock().released.extend(keys);
        }
    }
}

/// A lease on one content key: its chunks stay until it drops.
pub(crate) struct Lease {
    leases: Arc<Leases>,
    key: Key,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let wake = {
            let mut s = self.leases.lock();
            match s.held.get_mut(&self.key) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                _ => {
                    s.held.remove(&self.key);
                    let pending = s.pending.remove(&self.key);
                    if pending {
                        s.released.push(self.key);
                    }
                    pending
                }
            }
        };
        if wake && let Some(w) = self.leases.wake.get() {
            w();
        }
    }
}

/// The keys one write transaction frees, marked *freeing* until it drops (after the commit).
pub(crate) struct FreeBatch {
    leases: Arc<Leases>,
    keys: Mutex<Vec<Key>>,
}

impl FreeBatch {
    /// Whether the chunks of `key`, whose content this transaction drops, may be freed now;
    /// `false` when `key` is leased: it is then pending until the last lease drops.
    pub(crate) fn free_or_defer(&self, key: Key) -> bool {
        let mut s = self.leases.lock();
        if s.held.contains_key(&key) {
            s.pending.insert(key);
            return false;
        }
        *s.freeing.entry(key).or_default() += 1;
        self.keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(key);
        true
    }
}

impl Drop for FreeBatch {
    fn drop(&mut self) {
        let keys = std::mem::take(self.keys.get_mut().unwrap_or_else(|e| e.into_inner()));
        if keys.is_empty() {
            return;
        }
        let mut s = self.leases.lock();
        for k in keys {
            if let Some(n) = s.freeing.get_mut(&k) {
                *n -= 1;
                if *n == 0 {
                    s.freeing.remove(&k);
                }
            }
        }
        s.epoch += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_defers_a_free_and_its_drop_releases_it() {
        let l = Leases::new();
        let woken = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let w = Arc::clone(&woken);
        l.set_waker(move || {
            w.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        });
        let Grant::Lease(a) = l.lease([1; 20], l.epoch()) else {
            panic!("refused")
        };
        let Grant::Lease(b) = l.lease([1; 20], l.epoch()) else {
            panic!("refused")
        };
        let batch = l.batch();
        assert!(!batch.free_or_defer([1; 20]));
        assert!(batch.free_or_defer([2; 20]));
        drop(batch);
        drop(a);
        assert!(l.take_released().is_empty());
        drop(b);
        assert_eq!(l.take_released(), vec![[1; 20]]);
        assert_eq!(woken.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    #[test]
    fn a_key_being_freed_refuses_leases_and_a_finished_free_asks_for_a_recheck() {
        let l = Leases::new();
        let epoch = l.epoch();
        let batch = l.batch();
        assert!(batch.free_or_defer([3; 20]));
        assert!(matches!(l.lease([3; 20], epoch), Grant::Refused));
        // Committed: leased, but the reader's snapshot may predate the commit.
        drop(batch);
        assert!(matches!(l.lease([3; 20], epoch), Grant::Recheck(_)));
        assert!(matches!(l.lease([3; 20], l.epoch()), Grant::Lease(_)));
    }

    use std::path::Path;

    use crate::key::{BlobId, BlobKey, JobId};
    use crate::protocol::DeleteTarget;
    use crate::store::writer::Tables;
    use crate::store::{BlobReader, BlobStore, DB_FILE, MemoryImage, StoreOptions, WAL_FILE};

    fn data(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn small_chunks(dir: &Path) -> StoreOptions {
        let mut o = StoreOptions::new(dir);
        o.chunk_size = 1000;
        o
    }

    fn read_rest(r: &mut BlobReader, out: &mut Vec<u8>) {
        while let Some(c) = r.next_chunk().unwrap() {
            out.extend_from_slice(c.value());
        }
    }

    /// PUTs and DELETEs `n` distinct 4 KiB blobs, one commit each.
    fn churn(store: &BlobStore, seed: u64, n: u64) {
        for i in 0..n {
            let k = store.put(&data(seed * 1_000_000 + i, 4096)).unwrap();
            store.delete(DeleteTarget::Content(k)).unwrap();
        }
    }

    #[test]
    fn a_paused_read_across_churn_keeps_the_file_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let image = MemoryImage::new();
        let store = StoreOptions::new(dir.path())
            .in_memory(image.clone())
            .open()
            .unwrap();
        let blob = data(1, 1 << 20); // 17 chunks
        let id = BlobId::Content(store.put(&blob).unwrap());
        churn(&store, 2, 500); // to a steady state
        let start = image.len();
        churn(&store, 3, 1600);
        let without = image.len() - start;
        // A reader parked between chunks while others commit, each chunk kept meanwhile, as a
        // server keeps what the socket did not take yet.
        let start = image.len();
        let mut r = store.get(&id).unwrap().unwrap();
        let mut out = Vec::new();
        for round in 0..16 {
            let chunk = r.next_chunk().unwrap().unwrap();
            r.release_snapshot();
            assert!(!chunk.holds_snapshot() && !r.holds_snapshot());
            churn(&store, 10 + round, 100);
            out.extend_from_slice(chunk.value());
        }
        read_rest(&mut r, &mut out);
        assert!(out == blob, "the paused read came back different");
        let with = image.len() - start;
        assert!(
            with <= without + (1 << 20),
            "the file grew by {with} bytes with a paused reader, {without} without"
        );
    }

    #[test]
    fn a_fast_consumer_borrows_chunks_and_a_pause_puts_it_back_to_copies() {
        let dir = tempfile::tempdir().unwrap();
        let store = StoreOptions::new(dir.path())
            .in_memory(MemoryImage::new())
            .open()
            .unwrap();
        let blob = data(11, 2 * crate::store::BORROW_AFTER as usize);
        let id = BlobId::Content(store.put(&blob).unwrap());
        // Proving fast takes BORROW_AFTER bytes without a pause of SNAPSHOT_MAX_AGE: a few
        // milliseconds here, retried in case the machine paused this thread.
        let mut borrowed = false;
        for _ in 0..5 {
            let mut r = store.get(&id).unwrap().unwrap();
            let mut taken = 0u64;
            while let Some(c) = r.next_chunk().unwrap() {
                if c.holds_snapshot() {
                    assert!(
                        taken >= crate::store::BORROW_AFTER,
                        "borrowed after {taken}"
                    );
                    borrowed = true;
                    break;
                }
                taken += c.value().len() as u64;
            }
            if borrowed {
                // A pause longer than a snapshot may live: copies again.
                std::thread::sleep(crate::store::SNAPSHOT_MAX_AGE * 2);
                let c = r.next_chunk().unwrap().unwrap();
                assert!(!c.holds_snapshot() && !r.holds_snapshot());
                break;
            }
        }
        assert!(borrowed, "never proved fast");
        // A consumer that promises to detach what it keeps borrows from the start.
        let mut r = store.get(&id).unwrap().unwrap();
        r.borrow_chunks();
        let mut c = r.next_chunk().unwrap().unwrap();
        assert!(c.holds_snapshot());
        r.release_snapshot();
        c.detach();
        assert!(!c.holds_snapshot() && !r.holds_snapshot());
        assert!(c.value() == &blob[..c.value().len()]);
        assert!(r.next_chunk().unwrap().unwrap().holds_snapshot());
    }

    /// Opens a reader of `id`, reads its first chunk and drops its snapshot.
    fn start_read(store: &BlobStore, id: &BlobId) -> (BlobReader, Vec<u8>) {
        let mut r = store.get(id).unwrap().unwrap();
        let out = r.next_chunk().unwrap().unwrap().value().to_vec();
        r.release_snapshot();
        (r, out)
    }

    #[test]
    fn a_read_survives_deletes_by_key_name_and_job() {
        let dir = tempfile::tempdir().unwrap();
        let store = small_chunks(dir.path()).open().unwrap();
        let job = JobId::from_parts(4, 2);
        let cases = [
            (
                BlobId::Content(BlobKey::of(&data(1, 10_500))),
                DeleteTarget::Content(BlobKey::of(&data(1, 10_500))),
            ),
            (
                BlobId::Named(job, "lib.jar".into()),
                DeleteTarget::Named(job, "lib.jar".into()),
            ),
            (
                BlobId::Named(job, "other.jar".into()),
                DeleteTarget::Job(job),
            ),
        ];
        for (i, (id, target)) in cases.into_iter().enumerate() {
            let blob = data(1 + i as u64, 10_500);
            match &id {
                BlobId::Content(_) => drop(store.put(&blob).unwrap()),
                BlobId::Named(j, n) => drop(store.put_named(*j, n, &blob).unwrap()),
            }
            let (mut r, mut out) = start_read(&store, &id);
            assert!(store.delete(target).unwrap() > 0);
            assert!(
                store.get(&id).unwrap().is_none(),
                "{id}: a new GET still finds it"
            );
            let report = store.verify().unwrap();
            assert!(report.is_clean(), "{report:?}");
            assert_eq!(report.pending_chunks, 11, "{id}");
            read_rest(&mut r, &mut out);
            assert!(out == blob, "{id}: the read in flight came back different");
            drop(r);
            store.sync().unwrap();
            let report = store.verify().unwrap();
            assert!(
                report.is_clean() && report.pending_chunks == 0,
                "{report:?}"
            );
            assert_eq!(store.stats().unwrap().chunks, 0, "{id}: chunks left");
        }
    }

    #[test]
    fn pending_chunks_are_freed_at_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let blob = data(5, 10_500);
        let key = BlobKey::of(&blob);
        let (r, _) = {
            let store = small_chunks(dir.path()).open().unwrap();
            store.put(&blob).unwrap();
            let read = start_read(&store, &BlobId::Content(key));
            store.delete(DeleteTarget::Content(key)).unwrap();
            // A large PUT commits durably: the pending row is in the database itself.
            store.put(&data(6, 100_000)).unwrap();
            // A crash now: copies of the files as they are.
            let crashed = dir.path().join("crashed");
            std::fs::create_dir(&crashed).unwrap();
            for f in [DB_FILE, WAL_FILE] {
                std::fs::copy(dir.path().join(f), crashed.join(f)).unwrap();
            }
            let reopened = BlobStore::open(&crashed).unwrap();
            let report = reopened.verify().unwrap();
            assert!(
                report.is_clean() && report.pending_chunks == 0,
                "{report:?}"
            );
            assert_eq!(reopened.stats().unwrap().chunks, 100);
            read
            // The store closes with the read still going: nothing can free its chunks now.
        };
        drop(r);
        let store = small_chunks(dir.path()).open().unwrap();
        let report = store.verify().unwrap();
        assert!(
            report.is_clean() && report.pending_chunks == 0,
            "{report:?}"
        );
        assert_eq!(store.stats().unwrap().chunks, 100);
        assert!(store.get(&BlobId::Content(key)).unwrap().is_none());
    }

    #[test]
    fn a_re_put_during_pending_keeps_the_content() {
        let dir = tempfile::tempdir().unwrap();
        let store = small_chunks(dir.path()).open().unwrap();
        let blob = data(7, 10_500);
        let id = BlobId::Content(store.put(&blob).unwrap());
        let (mut r, mut out) = start_read(&store, &id);
        store
            .delete(DeleteTarget::Content(BlobKey::of(&blob)))
            .unwrap();
        assert!(store.get(&id).unwrap().is_none());
        store.put(&blob).unwrap();
        assert_eq!(store.verify().unwrap().pending_chunks, 0);
        read_rest(&mut r, &mut out);
        assert!(out == blob);
        drop(r);
        store.sync().unwrap();
        assert!(store.get_bytes(&id).unwrap() == Some(blob.clone()));
        // And once more by name, then deleted for good.
        let job = JobId::from_parts(1, 2);
        let (mut r, mut out) = start_read(&store, &id);
        store
            .delete(DeleteTarget::Content(BlobKey::of(&blob)))
            .unwrap();
        store.put_named(job, "again", &blob).unwrap();
        store
            .delete(DeleteTarget::Named(job, "again".into()))
            .unwrap();
        assert_eq!(store.verify().unwrap().pending_chunks, 11);
        read_rest(&mut r, &mut out);
        assert!(out == blob);
        drop(r);
        assert_all_freed(&store);
    }

    /// Deletes `key` the way the writer does, in a transaction of this thread; `between` runs
    /// after the free is decided and before the commit.
    fn delete_with(store: &BlobStore, key: BlobKey, between: impl FnOnce()) {
        store.sync().unwrap(); // the writer is idle: this thread's transaction is the only one
        commit_delete(store, key, between);
        // As the writer does after its commits.
        store.inner.shared.committed();
    }

    /// Deletes `key` as the writer does, up to the end of its commit: the shared snapshot is
    /// not dropped yet (the writer's window between a commit and its replies).
    fn delete_unannounced(store: &BlobStore, key: BlobKey) {
        // No sync(): a barrier drops the shared snapshot too. A write the writer is still
        // committing holds redb's write lock, which `begin_write` waits for.
        commit_delete(store, key, || {});
    }

    fn commit_delete(store: &BlobStore, key: BlobKey, between: impl FnOnce()) {
        let shared = &store.inner.shared;
        let db = store.db().unwrap();
        let frees = shared.leases.batch();
        let txn = db.begin_write().unwrap();
        Tables::open_leased(&txn, shared.layout, Arc::clone(&frees))
            .unwrap()
            .delete(&DeleteTarget::Content(key))
            .unwrap();
        between();
        txn.commit().unwrap();
        drop(frees);
    }

    #[test]
    fn a_get_in_a_snapshot_older_than_a_free_checks_with_the_epoch_read_before_it_began() {
        let dir = tempfile::tempdir().unwrap();
        let store = small_chunks(dir.path()).open().unwrap();
        let shared = &store.inner.shared;
        let blob = data(12, 10_500);
        let key = BlobKey::of(&blob);
        let id = BlobId::Content(key);
        // Other content freed after the shared snapshot began: leased after a check.
        store.put(&blob).unwrap();
        let other = store.put(&data(13, 100)).unwrap();
        assert!(store.contains(&id).unwrap() && shared.snapshots.is_shared());
        delete_unannounced(&store, other);
        assert!(shared.snapshots.is_shared());
        let mut r = store.get(&id).unwrap().unwrap();
        r.release_snapshot();
        assert!(!r.holds_snapshot(), "not leased");
        let mut out = Vec::new();
        read_rest(&mut r, &mut out);
        assert!(out == blob);
        drop(r);
        // The blob itself freed after the shared snapshot began: found there, the lease is
        // refused by the check, and the reader keeps that snapshot, whose pages still hold it.
        shared.committed();
        assert!(store.contains(&id).unwrap() && shared.snapshots.is_shared());
        delete_unannounced(&store, key);
        let mut r = store
            .get(&id)
            .unwrap()
            .expect("found in the shared snapshot");
        r.release_snapshot();
        assert!(
            r.holds_snapshot(),
            "leased content freed since its snapshot"
        );
        let mut out = Vec::new();
        read_rest(&mut r, &mut out);
        assert!(out == blob, "the read came back different");
        drop(r);
        shared.committed();
        assert!(store.get(&id).unwrap().is_none());
        let report = store.verify().unwrap();
        assert!(
            report.is_clean() && report.pending_chunks == 0,
            "{report:?}"
        );
    }

    #[test]
    fn a_get_racing_the_commit_that_frees_its_blob_keeps_its_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let store = small_chunks(dir.path()).open().unwrap();
        let blob = data(8, 10_500);
        let key = BlobKey::of(&blob);
        let id = BlobId::Content(key);
        // Found, then leased while the free is between its decision and its commit.
        store.put(&blob).unwrap();
        let found = store.find(&id).unwrap().unwrap();
        let mut reader = None;
        delete_with(&store, key, || {
            reader = Some(store.open_found(found).unwrap());
        });
        let mut r = reader.unwrap();
        r.release_snapshot();
        assert!(r.holds_snapshot(), "leased a key being freed");
        let mut first = r.next_chunk().unwrap().unwrap();
        assert!(first.holds_snapshot());
        first.detach();
        assert!(!first.holds_snapshot());
        let mut out = first.value().to_vec();
        read_rest(&mut r, &mut out);
        assert!(out == blob);
        // Found, then leased after the free committed.
        store.put(&blob).unwrap();
        let found = store.find(&id).unwrap().unwrap();
        delete_with(&store, key, || {});
        let mut r = store.open_found(found).unwrap();
        r.release_snapshot();
        assert!(r.holds_snapshot(), "leased a key freed since its snapshot");
        let mut out = Vec::new();
        read_rest(&mut r, &mut out);
        assert!(out == blob);
        // Found, other content freed meanwhile: leased after a check.
        store.put(&blob).unwrap();
        let other = store.put(&data(9, 100)).unwrap();
        let found = store.find(&id).unwrap().unwrap();
        delete_with(&store, other, || {});
        let mut r = store.open_found(found).unwrap();
        r.release_snapshot();
        assert!(!r.holds_snapshot(), "not leased");
        assert!(store.inner.shared.leases.epoch() > 0);
        drop(r);
        let report = store.verify().unwrap();
        assert!(
            report.is_clean() && report.pending_chunks == 0,
            "{report:?}"
        );
    }

    #[test]
    fn gets_racing_deletes_of_their_blob_read_it_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = small_chunks(dir.path())
            .in_memory(MemoryImage::new())
            .open()
            .unwrap();
        let blob = data(10, 20_500);
        let key = BlobKey::of(&blob);
        let id = BlobId::Content(key);
        let job = JobId::from_parts(3, 3);
        std::thread::scope(|s| {
            let writer = s.spawn(|| {
                for i in 0..300 {
                    store.put(&blob).unwrap();
                    store.put_named(job, "n", &blob).unwrap();
                    match i % 3 {
                        0 => store.delete(DeleteTarget::Content(key)).unwrap(),
                        1 => store.delete(DeleteTarget::Named(job, "n".into())).unwrap(),
                        _ => store.delete(DeleteTarget::Job(job)).unwrap(),
                    };
                    store.delete(DeleteTarget::Content(key)).unwrap();
                }
            });
            for t in 0..2 {
                let (store, blob, id) = (&store, &blob, &id);
                s.spawn(move || {
                    let mut whole = 0;
                    for _ in 0..2000 {
                        let named = BlobId::Named(job, "n".into());
                        let Some(mut r) = store.get(if t == 0 { id } else { &named }).unwrap()
                        else {
                            continue;
                        };
                        let mut out = Vec::new();
                        while let Some(c) = r.next_chunk().unwrap() {
                            out.extend_from_slice(c.value());
                            r.release_snapshot();
                        }
                        assert!(out == *blob, "a GET came back different");
                        whole += 1;
                    }
                    whole
                });
            }
            writer.join().unwrap();
        });
        assert_all_freed(&store);
    }

    /// Once the writer has caught up, nothing is pending and no chunk is left.
    fn assert_all_freed(store: &BlobStore) {
        store.sync().unwrap();
        let report = store.verify().unwrap();
        assert!(
            report.is_clean() && report.pending_chunks == 0,
            "{report:?}"
        );
        assert_eq!(store.stats().unwrap().chunks, 0);
    }
}
