//! Split last chunks (`schema::Layout::split`): the redb leaf format they rely on, round trips at
//! every boundary, damage, frees, old stores, replay, and the space 4 KiB blobs take.

use std::fs;
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableHandle};

use super::schema::{
    CHUNK_FORMAT_CRC, CHUNK_FORMAT_SETTING, CHUNK_FORMAT_TAILS, CHUNK_LEAF_OVERHEAD,
    CHUNK_SIZE_2_SETTING, CHUNK_SIZE_SETTING, CHUNKS, SETTINGS, TAIL_MAX, TAILS,
};
use super::{BlobStore, DB_FILE, DEFAULT_CHUNK_SIZE, StoreError, WAL_FILE};
use crate::key::{BlobId, BlobKey, JobId};
use crate::protocol::{DeleteTarget, PutTarget};

/// Blob bytes of a last chunk that fill a one-page leaf alone (with the CRC).
const ONE_PAGE: u64 = 4096 - CHUNK_LEAF_OVERHEAD - 4;
const CHUNK: u64 = DEFAULT_CHUNK_SIZE as u64;

/// `len` bytes, distinct for each `seed` (from 8 bytes long).
fn data(len: u64, seed: u64) -> Vec<u8> {
    let mut out: Vec<u8> = (0..len)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 9) ^ seed.wrapping_mul(131)) as u8)
        .collect();
    let n = out.len().min(8);
    out[..n].copy_from_slice(&seed.to_le_bytes()[..n]);
    out
}

/// Pages redb has allocated in `db` (of 4 KiB).
fn allocated_pages(db: &Database) -> u64 {
    let txn = db.begin_write().unwrap();
    let pages = txn.stats().unwrap().allocated_pages();
    txn.abort().unwrap();
    pages
}

/// Fails if redb's leaf format changes under the split: `ONE_PAGE` bytes + CRC in a `CHUNKS`
/// leaf alone fit one page, one byte more takes two.
#[test]
fn a_chunk_of_the_head_capacity_fills_exactly_one_page() {
    const N: u32 = 200;
    let pages_for = |data_len: u64| {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .unwrap();
        let before = allocated_pages(&db);
        let value = vec![7u8; (data_len + 4) as usize];
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(CHUNKS).unwrap();
            for i in 0..N {
                t.insert((BlobKey::of(&i.to_le_bytes()).0, 0), value.as_slice())
                    .unwrap();
            }
        }
        txn.commit().unwrap();
        allocated_pages(&db) - before
    };
    let fits = pages_for(ONE_PAGE);
    let over = pages_for(ONE_PAGE + 1);
    // Leaves, plus a few branch pages and table metadata.
    assert!(
        fits <= N as u64 + 16,
        "{fits} pages for {N} one-page chunks"
    );
    assert!(
        over >= 2 * N as u64,
        "{over} pages for {N} chunks a byte over a page"
    );
}

fn tails(store: &BlobStore) -> u64 {
    store.stats().unwrap().tails
}

fn get(store: &BlobStore, key: BlobKey) -> Result<Option<Vec<u8>>, StoreError> {
    store.get_bytes(&BlobId::Content(key))
}

#[test]
fn blobs_round_trip_at_every_boundary_of_the_split() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path()).unwrap();
    // (length, split?)
    let cases = [
        (0, false),
        (1, false),
        (ONE_PAGE - 1, false),
        (ONE_PAGE, false),
        (ONE_PAGE + 1, true),
        (4096, true),
        (ONE_PAGE + TAIL_MAX, true),
        (ONE_PAGE + TAIL_MAX + 1, false),
        (8192 - 36 + 1, true),
        (CHUNK, false),
        // Several chunks, the last one split.
        (2 * CHUNK + 4096, true),
        (CHUNK + 16384 - 36 + TAIL_MAX, true),
    ];
    let mut keys = Vec::new();
    for (n, (len, split)) in cases.into_iter().enumerate() {
        let blob = data(len, n as u64);
        let before = tails(&store);
        let key = store.put(&blob).unwrap();
        assert_eq!(
            tails(&store) - before,
            split as u64,
            "tail rows for {len} bytes"
        );
        assert_eq!(
            get(&store, key).unwrap().as_deref(),
            Some(&blob[..]),
            "{len}"
        );
        // Through `Read`, a few bytes at a time across the head and tail.
        let mut r = store.get(&BlobId::Content(key)).unwrap().unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 1000];
        loop {
            let k = std::io::Read::read(&mut r, &mut buf).unwrap();
            if k == 0 {
                break;
            }
            out.extend_from_slice(&buf[..k]);
        }
        assert_eq!(out, blob, "{len} bytes by Read");
        keys.push(key);
    }
    let report = store.verify().unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.blobs_checked, cases.len() as u64);
    // DELETE frees the tails with the chunks: no row is left.
    for key in keys {
        assert_eq!(store.delete(DeleteTarget::Content(key)).unwrap(), 1);
    }
    let s = store.stats().unwrap();
    assert_eq!((s.contents, s.chunks, s.tails), (0, 0, 0), "{s:?}");
}

#[test]
fn a_named_blob_replaced_and_its_job_deleted_leave_no_tail() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path()).unwrap();
    let job = JobId::from_parts(3, 4);
    let put = |blob: &[u8]| {
        let mut u = store.upload();
        u.write(blob).unwrap();
        let spooled = u.finish().unwrap();
        store
            .commit(spooled, PutTarget::Named(job, "a.jar".into()))
            .unwrap();
    };
    put(&data(4096, 1));
    put(&data(4100, 2));
    assert_eq!(tails(&store), 1);
    assert_eq!(store.delete(DeleteTarget::Job(job)).unwrap(), 1);
    assert_eq!(tails(&store), 0);
    assert!(store.verify().unwrap().is_clean());
}

/// Flips byte `at` of `key`'s tail.
fn damage_tail(store: &BlobStore, key: BlobKey, at: usize) {
    let db = store.db().unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut t = txn.open_table(TAILS).unwrap();
        let mut v = t.get(key.0.as_slice()).unwrap().unwrap().value().to_vec();
        v[at] ^= 0x10;
        t.insert(key.0.as_slice(), v.as_slice()).unwrap();
    }
    txn.commit().unwrap();
    // As the writer does after its commits: GETs see the change (snapshots.rs).
    store.inner.shared.committed();
}

#[test]
fn damage_in_a_tail_is_caught_by_its_checksum_and_by_verify() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path()).unwrap();
    let (a, b, c) = (data(4096, 1), data(4096, 2), data(CHUNK + 4200, 3));
    let (ka, kb, kc) = (
        store.put(&a).unwrap(),
        store.put(&b).unwrap(),
        store.put(&c).unwrap(),
    );
    assert!(store.verify().unwrap().is_clean());
    damage_tail(&store, ka, 3); // a tail byte
    damage_tail(&store, kb, 4096 - ONE_PAGE as usize + 1); // its CRC
    let e = get(&store, ka).unwrap_err();
    assert!(
        e.to_string().contains("tail of chunk 0 fails its checksum"),
        "{e}"
    );
    assert!(get(&store, kb).is_err());
    // The first chunk of a long blob comes out; the damage shows at its last.
    damage_tail(&store, kc, 0);
    let mut r = store.get(&BlobId::Content(kc)).unwrap().unwrap();
    assert_eq!(
        r.next_chunk().unwrap().unwrap().value(),
        &c[..CHUNK as usize]
    );
    let e = r.next_chunk().unwrap_err();
    assert!(
        e.to_string().contains("tail of chunk 1 fails its checksum"),
        "{e}"
    );
    drop(r);
    let report = store.verify().unwrap();
    assert_eq!(report.damaged.len(), 3, "{report:?}");

    // A missing tail is damage too, and a tail of no blob is an orphan.
    let db = store.db().unwrap();
    let txn = db.begin_write().unwrap();
    let mut t = txn.open_table(TAILS).unwrap();
    t.remove(ka.0.as_slice()).unwrap();
    t.insert(&[9u8; 20][..], &[1u8, 2, 3, 4, 5][..]).unwrap();
    drop(t);
    txn.commit().unwrap();
    // As the writer does after its commits: GETs see the change (snapshots.rs).
    store.inner.shared.committed();
    let e = get(&store, ka).unwrap_err();
    assert!(e.to_string().contains("tail of chunk 0 is missing"), "{e}");
    let report = store.verify().unwrap();
    assert_eq!(
        (report.damaged.len(), report.orphan_chunks),
        (3, 1),
        "{report:?}"
    );
}

/// Builds before format 2 read the chunk size from `chunk_size` and refuse 0 at open: a
/// format-2 store keeps 0 there, so they cannot take it for a store without checksums and write
/// chunks this format cannot read (found by review: they did, and a crash's log replayed by one
/// of them left every acknowledged blob unreadable).
#[test]
fn a_new_store_is_refused_by_builds_before_format_2() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path()).unwrap();
    store.put(&data(4096, 1)).unwrap();
    assert_eq!(store.chunk_size(), CHUNK);
    drop(store);
    let db = Database::open(dir.path().join(DB_FILE)).unwrap();
    let txn = db.begin_read().unwrap();
    let s = txn.open_table(SETTINGS).unwrap();
    let value = |k: &str| s.get(k).unwrap().map(|v| v.value());
    assert_eq!(
        value(CHUNK_SIZE_SETTING),
        Some(0),
        "what earlier builds read"
    );
    assert_eq!(value(CHUNK_FORMAT_SETTING), Some(CHUNK_FORMAT_TAILS));
    assert_eq!(value(CHUNK_SIZE_2_SETTING), Some(CHUNK));
    drop((s, txn, db));
    // And this build reads it back whole.
    let store = BlobStore::open(dir.path()).unwrap();
    assert_eq!(store.chunk_size(), CHUNK);
    assert_eq!(
        get(&store, BlobKey::of(&data(4096, 1))).unwrap(),
        Some(data(4096, 1))
    );
}

/// A store as created before split chunks: chunk format 1 in its settings.
fn create_format_1(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    let db = Database::create(dir.join(DB_FILE)).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut s = txn.open_table(SETTINGS).unwrap();
        s.insert(CHUNK_SIZE_SETTING, CHUNK).unwrap();
        s.insert(CHUNK_FORMAT_SETTING, CHUNK_FORMAT_CRC).unwrap();
    }
    txn.commit().unwrap();
}

#[test]
fn a_store_of_format_1_is_read_and_written_in_its_format() {
    let dir = tempfile::tempdir().unwrap();
    create_format_1(dir.path());
    let blobs: Vec<Vec<u8>> = [4096, ONE_PAGE + 1, 2 * CHUNK + 4096]
        .iter()
        .enumerate()
        .map(|(i, &len)| data(len, i as u64))
        .collect();
    let keys: Vec<BlobKey> = {
        let store = BlobStore::open(dir.path()).unwrap();
        blobs.iter().map(|b| store.put(b).unwrap()).collect()
    };
    let store = BlobStore::open(dir.path()).unwrap();
    for (k, b) in keys.iter().zip(&blobs) {
        assert_eq!(get(&store, *k).unwrap().as_deref(), Some(&b[..]));
    }
    let db = store.db().unwrap();
    let txn = db.begin_read().unwrap();
    // Whole last chunks, and no tails table at all.
    let chunks = txn.open_table(CHUNKS).unwrap();
    assert_eq!(
        chunks.get((keys[0].0, 0)).unwrap().unwrap().value().len(),
        4100
    );
    assert_eq!(
        chunks.get((keys[2].0, 2)).unwrap().unwrap().value().len(),
        4100
    );
    assert!(!txn.list_tables().unwrap().any(|t| t.name() == TAILS.name()));
    let settings = txn.open_table(SETTINGS).unwrap();
    let format = settings.get(CHUNK_FORMAT_SETTING).unwrap().unwrap().value();
    assert_eq!(format, CHUNK_FORMAT_CRC);
    drop((chunks, settings, txn));
    assert_eq!(store.stats().unwrap().tails, 0);
    assert!(store.verify().unwrap().is_clean());
    store.delete(DeleteTarget::Content(keys[0])).unwrap();
    assert_eq!(get(&store, keys[0]).unwrap(), None);
}

#[test]
fn a_store_of_an_unknown_newer_format_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Database::create(dir.path().join(DB_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut s = txn.open_table(SETTINGS).unwrap();
            s.insert(CHUNK_SIZE_SETTING, CHUNK).unwrap();
            s.insert(CHUNK_FORMAT_SETTING, 99).unwrap();
        }
        txn.commit().unwrap();
    }
    let e = BlobStore::open(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("chunk format 99") && e.contains("newer blobvault"),
        "{e}"
    );
}

#[test]
fn split_blobs_survive_a_crash_through_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (live, copy) = (dir.path().join("live"), dir.path().join("copy"));
    let store = BlobStore::open(&live).unwrap();
    let blobs: Vec<Vec<u8>> = (0..30).map(|i| data(4096 + i * 13, i)).collect();
    let keys: Vec<BlobKey> = blobs.iter().map(|b| store.put(b).unwrap()).collect();
    store.delete(DeleteTarget::Content(keys[5])).unwrap();
    // What a crash now would leave: the database as of its last durable commit, and the log.
    fs::create_dir_all(&copy).unwrap();
    fs::copy(live.join(DB_FILE), copy.join(DB_FILE)).unwrap();
    fs::copy(live.join(WAL_FILE), copy.join(WAL_FILE)).unwrap();
    let recovered = BlobStore::open(&copy).unwrap();
    assert!(
        recovered
            .stats()
            .unwrap()
            .log
            .is_some_and(|l| l.records_replayed > 0)
    );
    for (i, (k, b)) in keys.iter().zip(&blobs).enumerate() {
        let want = (i != 5).then(|| b.clone());
        assert_eq!(get(&recovered, *k).unwrap(), want, "blob {i}");
    }
    assert_eq!(recovered.stats().unwrap().tails, 29);
    assert!(recovered.verify().unwrap().is_clean());
}

/// Pages allocated per 4 KiB blob after `n` of them, in a store created with `format_1` or new.
fn bytes_per_4k_blob(dir: &Path, format_1: bool, n: u64) -> f64 {
    if format_1 {
        create_format_1(dir);
    }
    let store = BlobStore::open(dir).unwrap();
    let empty = allocated_pages(&store.db().unwrap());
    for i in 0..n {
        store.put(&data(4096, i)).unwrap();
    }
    // Closed, so that the last commit is durable and what it freed is free.
    drop(store);
    let store = BlobStore::open(dir).unwrap();
    let pages = allocated_pages(&store.db().unwrap()) - empty;
    (pages * 4096) as f64 / (n * 4096) as f64
}

#[test]
fn four_kib_blobs_take_at_most_1_15_times_their_size() {
    let dir = tempfile::tempdir().unwrap();
    let n = 1000;
    let new = bytes_per_4k_blob(&dir.path().join("new"), false, n);
    let old = bytes_per_4k_blob(&dir.path().join("old"), true, n);
    assert!(new <= 1.15, "4 KiB blobs take {new:.3}x their size");
    // What the split saves: whole, each takes two pages.
    assert!(old >= 1.9, "format 1: {old:.3}x");
}

/// Through the server, whose GETs take borrowed chunks: the joined last chunk goes out whole.
#[test]
fn split_blobs_round_trip_through_the_server() {
    use crate::config::ServerConfig;
    use crate::{BlobClient, BlobServer};
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path()).unwrap();
    let server = BlobServer::start(store.clone(), ServerConfig::default()).unwrap();
    let mut c = BlobClient::connect(server.local_addr()).unwrap();
    for (n, len) in [4096, ONE_PAGE + TAIL_MAX, 3 * CHUNK + 4100, 77]
        .into_iter()
        .enumerate()
    {
        let blob = data(len, n as u64);
        let key = c.put(&blob).unwrap();
        assert_eq!(c.get_bytes(&BlobId::Content(key)).unwrap(), blob, "{len}");
    }
    assert_eq!(tails(&store), 3);
}
