//! Store operation sequences against an in-memory model, with reopens.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use blobvault::store::{BlobStore, MemoryImage, StoreOptions};
use blobvault::{BlobId, BlobKey, DeleteTarget, JobId, PutTarget};
use libfuzzer_sys::fuzz_target;

#[derive(Default)]
struct Model {
    content: BTreeSet<BlobKey>,
    named: BTreeMap<(JobId, String), Vec<u8>>,
    bytes: BTreeMap<BlobKey, Vec<u8>>,
}

/// The upload spool's directory; the database itself lives in a memory image per input, so an
/// execution costs microseconds instead of a file and an fsync.
fn dir() -> &'static Path {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| std::env::temp_dir().join(format!("blobvault-fuzz-{}", std::process::id())))
}

/// Small chunks, so that blobs of a few hundred bytes span up to 8 of them.
const CHUNK: usize = 64;
const REOPEN: u8 = 6;
/// Blob lengths: empty, around one chunk boundary, and several chunks whole or not.
const LENGTHS: [usize; 9] = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 200, 7 * CHUNK + 8, 8 * CHUNK];

fn open(image: &MemoryImage) -> BlobStore {
    let mut opts = StoreOptions::new(dir()).in_memory(image.clone()).durable(false);
    opts.chunk_size = CHUNK;
    opts.open().expect("open store")
}

/// One store for the whole run: each input starts from an empty store and must leave it empty
/// (its last step deletes everything it made), which also checks that deletes leave no orphan
/// chunk behind. Opening a store per input cost most of an execution.
fn shared() -> &'static Mutex<Option<(MemoryImage, BlobStore)>> {
    static S: OnceLock<Mutex<Option<(MemoryImage, BlobStore)>>> = OnceLock::new();
    S.get_or_init(|| {
        let image = MemoryImage::new();
        let store = open(&image);
        Mutex::new(Some((image, store)))
    })
}

fuzz_target!(|data: &[u8]| {
    let mut slot = shared().lock().expect("store lock");
    let (image, mut store) = slot.take().expect("the store of the last input");
    let mut model = Model::default();
    let jobs = [JobId::from_parts(1, 2), JobId::from_parts(3, 4)];
    let names = ["a", "b", ""];
    let mut it = data.chunks(4);
    while let Some(op) = it.next() {
        let (code, a, b, len) = (
            // Reopen is 1 in 32: it costs as much as a dozen other operations.
            match op[0] % 32 {
                31 => REOPEN,
                c => c % 6,
            },
            *op.get(1).unwrap_or(&0),
            *op.get(2).unwrap_or(&0),
            *op.get(3).unwrap_or(&0),
        );
        // Blob bytes: a few distinct contents, some of them shared between targets.
        let bytes: Vec<u8> = vec![a % 4; LENGTHS[len as usize % LENGTHS.len()]];
        let key = BlobKey::of(&bytes);
        let job = jobs[b as usize % 2];
        let name = names[a as usize % 3].to_string();
        match code {
            0 => {
                assert_eq!(store.put(&bytes).expect("put"), key);
                model.content.insert(key);
                model.bytes.insert(key, bytes);
            }
            1 => {
                store.commit(
                    { let mut u = store.upload(); u.write(&bytes).expect("w"); u.finish().expect("f") },
                    PutTarget::Named(job, name.clone()),
                ).expect("put named");
                model.named.insert((job, name), bytes);
            }
            2 => {
                store.delete(DeleteTarget::Content(key)).expect("delete");
                model.content.remove(&key);
            }
            3 => {
                store.delete(DeleteTarget::Named(job, name.clone())).expect("delete named");
                model.named.remove(&(job, name));
            }
            4 => {
                store.delete(DeleteTarget::Job(job)).expect("delete job");
                model.named.retain(|(j, _), _| *j != job);
            }
            REOPEN => {
                drop(store);
                store = open(&image);
            }
            _ => {
                let got = store.get_bytes(&BlobId::Content(key)).expect("get");
                assert_eq!(got.is_some(), model.content.contains(&key));
                if let Some(g) = got {
                    assert_eq!(BlobKey::of(&g), key);
                }
            }
        }
    }
    // The store holds exactly the model.
    for (k, v) in &model.bytes {
        let got = store.get_bytes(&BlobId::Content(*k)).expect("get");
        assert_eq!(got.as_ref(), model.content.contains(k).then_some(v));
    }
    for ((j, n), v) in &model.named {
        assert_eq!(store.get_bytes(&BlobId::Named(*j, n.clone())).expect("get").as_ref(), Some(v));
    }
    let listed = store.list().expect("list");
    assert_eq!(listed.len(), model.content.len() + model.named.len());
    let report = store.verify().expect("verify");
    assert!(report.is_clean(), "{report:?}");

    // Delete everything this input made; nothing at all may remain.
    for job in jobs {
        store.delete(DeleteTarget::Job(job)).expect("delete job");
    }
    for k in model.bytes.keys() {
        store.delete(DeleteTarget::Content(*k)).expect("delete");
    }
    assert_eq!(store.list().expect("list"), vec![]);
    let stats = store.stats().expect("stats");
    assert_eq!((stats.contents, stats.chunks), (0, 0), "{stats:?}");
    *slot = Some((image, store));
});
