//! Many clients at once: 32 threads putting, overwriting, getting and deleting content and named
//! blobs of varied sizes (some racing on the same content), every byte checked; then the store's
//! list, stats and verify must agree with what the threads did.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Barrier};

use blobvault::{BlobId, BlobKey, JobId};
use common::*;

const THREADS: usize = 32;

/// The store's chunk size (a new store's default).
const CHUNK: usize = blobvault::store::DEFAULT_CHUNK_SIZE;

/// Sizes around the protocol's (65,536) and the store's (`CHUNK`, one and four chunks) chunk
/// boundaries, up to a little over 1 MiB.
const SIZES: [usize; 14] = [
    0,
    1,
    1000,
    CHUNK,
    CHUNK + 1,
    65_535,
    65_536,
    65_537,
    200_000,
    4 * CHUNK,
    4 * CHUNK + 1,
    500_000,
    1_048_576,
    1_048_577,
];

/// Content every fourth thread uploads at the same moment (one key, many racing PUTs).
fn shared_data() -> Vec<u8> {
    Rng::new(0xC0FFEE).bytes(1_000_000)
}

/// What one thread leaves behind.
struct Outcome {
    contents: Vec<Vec<u8>>,
    named: Vec<(JobId, String, Vec<u8>)>,
}

fn job_of(t: usize) -> JobId {
    // Four jobs shared by the threads: names of different threads live side by side.
    JobId::from_parts(t as i64 % 4, 0x5eed)
}

fn run_thread(addr: std::net::SocketAddr, t: usize, start: &Barrier) -> Outcome {
    let mut rng = Rng::new(t as u64 + 1);
    let size = |k: usize| SIZES[(t * 5 + k * 7) % SIZES.len()];
    let kept = rng.bytes(size(0));
    // At least 1000 random bytes: no other thread's blob can share this content by chance, so
    // deleting it by key is this thread's business only.
    let dropped = rng.bytes(size(1).max(1000));
    let first = rng.bytes(size(2));
    let second = rng.bytes(size(3));
    let job = job_of(t);
    let (a, b) = (format!("thread {t} a"), format!("thread {t} b"));

    let mut c = blobvault::BlobClient::connect_timeout(&addr, IO_TIMEOUT).expect("connect");
    start.wait();
    // Content: one kept, one deleted again, and (every fourth thread) the shared one.
    let k = c.put(&kept).expect("put kept");
    assert_eq!(k, BlobKey::of(&kept));
    let d = c.put(&dropped).expect("put dropped");
    assert_eq!(
        c.get_bytes(&BlobId::Content(d)).expect("get dropped"),
        dropped
    );
    let mut contents = vec![kept.clone()];
    if t.is_multiple_of(4) {
        let shared = shared_data();
        assert_eq!(c.put(&shared).expect("put shared"), BlobKey::of(&shared));
        assert_eq!(
            c.get_bytes(&BlobId::Content(BlobKey::of(&shared)))
                .expect("get shared"),
            shared
        );
        contents.push(shared);
    }
    // Named: one overwritten, one pointing at the kept content (deduplicated).
    c.put_named(job, &a, &first).expect("put a");
    assert_eq!(
        c.get_bytes(&BlobId::Named(job, a.clone())).expect("get a"),
        first
    );
    c.put_named(job, &a, &second).expect("overwrite a");
    c.put_named(job, &b, &kept).expect("put b");
    // A second connection for the deletes, interleaved with the first one's gets.
    let mut c2 = blobvault::BlobClient::connect_timeout(&addr, IO_TIMEOUT).expect("connect");
    c2.delete(d).expect("delete dropped");
    assert_eq!(
        c.get_bytes(&BlobId::Named(job, a.clone())).expect("get a"),
        second
    );
    assert_eq!(
        c.get_bytes(&BlobId::Named(job, b.clone())).expect("get b"),
        kept
    );
    assert_eq!(c.get_bytes(&BlobId::Content(k)).expect("get kept"), kept);
    Outcome {
        contents,
        named: vec![(job, a, second), (job, b, kept)],
    }
}

#[test]
fn thirty_two_clients_at_once() {
    let s = TestServer::start();
    let addr = s.addr();
    let start = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let start = Arc::clone(&start);
            std::thread::Builder::new()
                .name(format!("client-{t}"))
                .spawn(move || run_thread(addr, t, &start))
                .expect("spawn")
        })
        .collect();
    let outcomes: Vec<Outcome> = handles
        .into_iter()
        .map(|h| h.join().expect("client thread panicked"))
        .collect();

    // What the store must hold now.
    let mut expected: BTreeMap<BlobId, (BlobKey, u64)> = BTreeMap::new();
    let mut distinct: BTreeMap<BlobKey, u64> = BTreeMap::new();
    for o in &outcomes {
        for data in &o.contents {
            let key = BlobKey::of(data);
            expected.insert(BlobId::Content(key), (key, data.len() as u64));
            distinct.insert(key, data.len() as u64);
        }
        for (job, name, data) in &o.named {
            let key = BlobKey::of(data);
            expected.insert(BlobId::Named(*job, name.clone()), (key, data.len() as u64));
            distinct.insert(key, data.len() as u64);
        }
    }
    let store = s.store();
    let listed: BTreeMap<BlobId, (BlobKey, u64)> = store
        .list()
        .expect("list")
        .into_iter()
        .map(|e| (e.id, (e.key, e.len)))
        .collect();
    let content_ids: BTreeSet<_> = listed
        .keys()
        .filter(|id| matches!(id, BlobId::Content(_)))
        .collect();
    for id in &content_ids {
        assert!(
            expected.contains_key(*id),
            "{id} is listed but was deleted or never stored"
        );
    }
    assert_eq!(listed, expected, "list() vs what the clients did");

    let stats = store.stats().expect("stats");
    let chunk = stats.chunk_size;
    assert_eq!(
        stats.content_blobs,
        expected
            .keys()
            .filter(|id| matches!(id, BlobId::Content(_)))
            .count() as u64
    );
    assert_eq!(stats.named_blobs, (THREADS * 2) as u64);
    assert_eq!(stats.contents, distinct.len() as u64, "distinct contents");
    assert_eq!(stats.payload_bytes, distinct.values().sum::<u64>());
    assert_eq!(
        stats.chunks,
        distinct
            .values()
            .map(|len| len.div_ceil(chunk))
            .sum::<u64>(),
        "chunks"
    );

    let report = store.verify().expect("verify");
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.blobs_checked, distinct.len() as u64);
    assert_eq!(report.bytes_checked, distinct.values().sum::<u64>());

    // And over the wire, from a fresh client, every blob once more.
    let mut c = s.client();
    for o in &outcomes {
        for data in &o.contents {
            let id = BlobId::Content(BlobKey::of(data));
            assert!(c.get_bytes(&id).expect("final get") == *data, "{id}");
        }
        for (job, name, data) in &o.named {
            let id = BlobId::Named(*job, name.clone());
            assert!(c.get_bytes(&id).expect("final get") == *data, "{id}");
        }
    }
}
