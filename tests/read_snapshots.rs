//! GETs share a read snapshot between commits (`src/store/snapshots.rs`): what was acknowledged
//! before a GET is seen by it, on any thread, and a shared snapshot never outlives the commit
//! after it (the database file stays bounded) nor a storage failure (the database reopens).

use std::sync::mpsc;

use blobvault::key::JobId;
use blobvault::protocol::DeleteTarget;
use blobvault::store::{FaultSwitch, MemoryImage, StoreOptions};
use blobvault::{BlobId, BlobStore};

mod common;

fn data(seed: u64, len: usize) -> Vec<u8> {
    common::Rng::new(seed).bytes(len)
}

fn memory_store() -> (tempfile::TempDir, MemoryImage, BlobStore) {
    let dir = tempfile::tempdir().unwrap();
    let image = MemoryImage::new();
    let store = StoreOptions::new(dir.path())
        .in_memory(image.clone())
        .open()
        .unwrap();
    (dir, image, store)
}

#[test]
fn a_get_sees_the_put_and_the_delete_acknowledged_before_it_on_the_same_thread() {
    let (_dir, _image, store) = memory_store();
    let kept = data(1, 4096);
    let kept_id = BlobId::Content(store.put(&kept).unwrap());
    let job = JobId::from_parts(1, 1);
    let named = BlobId::Named(job, "lib.jar".into());
    for i in 0..200u64 {
        // A GET first, so that the snapshot the next GET could reuse is shared.
        assert_eq!(
            store.get_bytes(&kept_id).unwrap().as_deref(),
            Some(&kept[..])
        );
        let blob = data(100 + i, 4096);
        let key = store.put(&blob).unwrap();
        let id = BlobId::Content(key);
        assert_eq!(
            store.get_bytes(&id).unwrap().as_deref(),
            Some(&blob[..]),
            "round {i}: the PUT before the GET is missing"
        );
        // Between two GETs of the same blob: a DELETE.
        assert_eq!(store.delete(DeleteTarget::Content(key)).unwrap(), 1);
        assert!(
            store.get(&id).unwrap().is_none(),
            "round {i}: a GET after the DELETE still finds it"
        );
        // A name moved to other content is read as moved.
        store.put_named(job, "lib.jar", &blob).unwrap();
        assert_eq!(store.get_bytes(&named).unwrap().as_deref(), Some(&blob[..]));
    }
    store.delete(DeleteTarget::Job(job)).unwrap();
    assert!(store.get(&named).unwrap().is_none());
}

#[test]
fn a_get_sees_what_another_thread_had_acknowledged() {
    let (_dir, _image, store) = memory_store();
    // Bounded waits: a failed assertion on one side must not leave the other blocked.
    let wait = std::time::Duration::from_secs(30);
    let (put_tx, put_rx) = mpsc::channel();
    let (deleted_tx, deleted_rx) = mpsc::channel();
    std::thread::scope(|s| {
        let writer = &store;
        s.spawn(move || {
            for i in 0..300u64 {
                let blob = data(1000 + i, 4096);
                let key = writer.put(&blob).unwrap();
                put_tx.send((key, blob)).unwrap();
                // The reader GETs it, then asks for its DELETE.
                let Ok(key) = deleted_rx.recv_timeout(wait) else {
                    return;
                };
                writer.delete(DeleteTarget::Content(key)).unwrap();
                put_tx.send((key, Vec::new())).unwrap();
            }
        });
        let deleted_tx = deleted_tx;
        for i in 0..300 {
            let (key, blob) = put_rx.recv_timeout(wait).unwrap();
            let id = BlobId::Content(key);
            assert_eq!(
                store.get_bytes(&id).unwrap().as_deref(),
                Some(&blob[..]),
                "round {i}: another thread's acknowledged PUT is missing"
            );
            deleted_tx.send(key).unwrap();
            let (gone, _) = put_rx.recv_timeout(wait).unwrap();
            assert!(
                store.get(&BlobId::Content(gone)).unwrap().is_none(),
                "round {i}: another thread's acknowledged DELETE is not seen"
            );
        }
    });
}

/// PUTs and DELETEs `n` distinct 4 KiB blobs, one commit each; GETs `read` after each pair.
fn churn(store: &BlobStore, seed: u64, n: u64, read: Option<&BlobId>) {
    for i in 0..n {
        let k = store.put(&data(seed * 1_000_000 + i, 4096)).unwrap();
        store.delete(DeleteTarget::Content(k)).unwrap();
        if let Some(id) = read {
            assert!(store.get_bytes(id).unwrap().is_some());
        }
    }
}

#[test]
fn a_shared_snapshot_is_not_kept_across_commits() {
    let (_dir, image, store) = memory_store();
    let id = BlobId::Content(store.put(&data(2, 1 << 20)).unwrap());
    churn(&store, 3, 500, None); // to a steady state
    let start = image.len();
    churn(&store, 4, 1600, None);
    let without = image.len() - start;
    // A GET shares a snapshot, then only writes follow: it must not be kept for them.
    let start = image.len();
    assert!(store.get_bytes(&id).unwrap().is_some());
    churn(&store, 5, 1600, None);
    let after_one = image.len() - start;
    // GETs between the writes, each sharing a snapshot until the next commit.
    let start = image.len();
    churn(&store, 6, 1600, Some(&id));
    let interleaved = image.len() - start;
    for (what, grew) in [("after a GET", after_one), ("with GETs", interleaved)] {
        assert!(
            grew <= without + (1 << 20),
            "the file grew by {grew} bytes {what}, {without} without"
        );
    }
}

#[test]
fn a_storage_failure_drops_the_shared_snapshot_and_the_store_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let faults = FaultSwitch::new();
    let store = StoreOptions::new(dir.path())
        .faults(faults.clone())
        .open()
        .unwrap();
    let kept = data(7, 10_000);
    let kept_id = BlobId::Content(store.put(&kept).unwrap());
    assert_eq!(
        store.get_bytes(&kept_id).unwrap().as_deref(),
        Some(&kept[..])
    );
    faults.fail_writes();
    let lost = data(8, 10_000);
    assert!(
        store.put(&lost).is_err(),
        "a PUT succeeded on failing storage"
    );
    faults.heal();
    // The database file is reopened: a snapshot of the failed one still shared would keep its
    // file (and its lock) open, and the reopen would fail.
    assert_eq!(
        store.get_bytes(&kept_id).unwrap().as_deref(),
        Some(&kept[..])
    );
    let key = store.put(&lost).unwrap();
    assert_eq!(
        store.get_bytes(&BlobId::Content(key)).unwrap().as_deref(),
        Some(&lost[..])
    );
    assert!(store.verify().unwrap().is_clean());
}
