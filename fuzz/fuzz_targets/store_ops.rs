//! Store operation sequences against an in-memory model, with reopens, and (unless the input's
//! first byte is a multiple of 40) a power cut after that many syncs, modulo 40.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use blobvault::store::{BlobStore, MemoryImage, SimDisk, StoreOptions};
use blobvault::{BlobId, BlobKey, DeleteTarget, JobId};
use libfuzzer_sys::fuzz_target;

#[derive(Default, Clone, PartialEq, Eq)]
struct Model {
    content: BTreeSet<BlobKey>,
    named: BTreeMap<(JobId, String), Vec<u8>>,
    bytes: BTreeMap<BlobKey, Vec<u8>>,
}

/// The upload spool's directory; the database itself lives in memory, so an execution costs
/// microseconds instead of a file and an fsync.
fn dir() -> &'static Path {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| std::env::temp_dir().join(format!("blobvault-fuzz-{}", std::process::id())))
}

/// Small chunks, so that blobs of a few hundred bytes span up to 8 of them.
const CHUNK: usize = 64;
/// Blob lengths: empty, around one chunk boundary, and several chunks whole or not.
const LENGTHS: [usize; 9] = [
    0,
    1,
    CHUNK - 1,
    CHUNK,
    CHUNK + 1,
    2 * CHUNK,
    200,
    7 * CHUNK + 8,
    8 * CHUNK,
];
fn jobs() -> [JobId; 2] {
    [JobId::from_parts(1, 2), JobId::from_parts(3, 4)]
}
const NAMES: [&str; 3] = ["a", "b", ""];

enum Op {
    Put(Vec<u8>),
    PutNamed(JobId, String, Vec<u8>),
    Delete(BlobKey),
    DeleteNamed(JobId, String),
    DeleteJob(JobId),
    Get(BlobKey),
    Reopen,
}

/// One operation from 4 bytes (fewer at the end of the input read as zeros).
fn op(bytes: &[u8]) -> Op {
    let at = |i: usize| *bytes.get(i).unwrap_or(&0);
    let (a, b, len) = (at(1), at(2), at(3));
    // Blob bytes: a few distinct contents, some of them shared between targets.
    let data: Vec<u8> = vec![a % 4; LENGTHS[len as usize % LENGTHS.len()]];
    let key = BlobKey::of(&data);
    let job = jobs()[b as usize % 2];
    let name = NAMES[a as usize % 3].to_string();
    // Reopen is 1 in 32: it costs as much as a dozen other operations.
    match at(0) % 32 {
        31 => Op::Reopen,
        c => match c % 6 {
            0 => Op::Put(data),
            1 => Op::PutNamed(job, name, data),
            2 => Op::Delete(key),
            3 => Op::DeleteNamed(job, name),
            4 => Op::DeleteJob(job),
            _ => Op::Get(key),
        },
    }
}

impl Model {
    fn apply(&mut self, op: &Op) {
        match op {
            Op::Put(data) => {
                let key = BlobKey::of(data);
                self.content.insert(key);
                self.bytes.insert(key, data.clone());
            }
            Op::PutNamed(job, name, data) => {
                self.bytes.insert(BlobKey::of(data), data.clone());
                self.named.insert((*job, name.clone()), data.clone());
            }
            Op::Delete(key) => {
                self.content.remove(key);
            }
            Op::DeleteNamed(job, name) => {
                self.named.remove(&(*job, name.clone()));
            }
            Op::DeleteJob(job) => self.named.retain(|(j, _), _| j != job),
            Op::Get(_) | Op::Reopen => {}
        }
    }

    /// Whether `store` holds exactly this model (every key and name it knows of, and nothing
    /// else), each blob whole.
    fn matches(&self, store: &BlobStore, also: &Model) -> bool {
        for (k, v) in self.bytes.iter().chain(&also.bytes) {
            let got = store.get_bytes(&BlobId::Content(*k)).expect("get");
            if got.as_ref() != self.content.contains(k).then_some(v) {
                return false;
            }
        }
        for (j, n) in self.named.keys().chain(also.named.keys()) {
            let got = store.get_bytes(&BlobId::Named(*j, n.clone())).expect("get");
            if got.as_ref() != self.named.get(&(*j, n.clone())) {
                return false;
            }
        }
        store.list().expect("list").len() == self.content.len() + self.named.len()
    }
}

/// Runs `op` on `store`; `Err` if the store failed it.
fn run(store: &BlobStore, op: &Op) -> Result<(), blobvault::StoreError> {
    match op {
        Op::Put(data) => assert_eq!(store.put(data)?, BlobKey::of(data)),
        Op::PutNamed(job, name, data) => {
            store.put_named(*job, name, data)?;
        }
        Op::Delete(key) => {
            store.delete(DeleteTarget::Content(*key))?;
        }
        Op::DeleteNamed(job, name) => {
            store.delete(DeleteTarget::Named(*job, name.clone()))?;
        }
        Op::DeleteJob(job) => {
            store.delete(DeleteTarget::Job(*job))?;
        }
        Op::Get(_) | Op::Reopen => {}
    }
    Ok(())
}

fn open(image: &MemoryImage) -> BlobStore {
    let mut opts = StoreOptions::new(dir())
        .in_memory(image.clone())
        .durable(false);
    opts.chunk_size = CHUNK;
    opts.open().expect("open store")
}

/// One store for the whole run (inputs starting with 0): each input starts from an empty store
/// and must leave it empty (its last step deletes everything it made), which also checks that
/// deletes leave no orphan chunk behind. Opening a store per input cost most of an execution.
fn shared() -> &'static Mutex<Option<(MemoryImage, BlobStore)>> {
    static S: OnceLock<Mutex<Option<(MemoryImage, BlobStore)>>> = OnceLock::new();
    S.get_or_init(|| {
        let image = MemoryImage::new();
        let store = open(&image);
        Mutex::new(Some((image, store)))
    })
}

fn without_power_cut(data: &[u8]) {
    let mut slot = shared().lock().expect("store lock");
    let (image, mut store) = slot.take().expect("the store of the last input");
    let mut model = Model::default();
    for bytes in data.chunks(4) {
        let op = op(bytes);
        match &op {
            Op::Reopen => {
                drop(store);
                store = open(&image);
            }
            Op::Get(key) => {
                let got = store.get_bytes(&BlobId::Content(*key)).expect("get");
                assert_eq!(got.is_some(), model.content.contains(key));
                if let Some(g) = got {
                    assert_eq!(BlobKey::of(&g), *key);
                }
            }
            _ => run(&store, &op).expect("store operation"),
        }
        model.apply(&op);
    }
    // The store holds exactly the model.
    assert!(
        model.matches(&store, &model),
        "the store differs from the model"
    );
    let report = store.verify().expect("verify");
    assert!(report.is_clean(), "{report:?}");

    // Delete everything this input made; nothing at all may remain.
    for job in jobs() {
        store.delete(DeleteTarget::Job(job)).expect("delete job");
    }
    for k in model.bytes.keys() {
        store.delete(DeleteTarget::Content(*k)).expect("delete");
    }
    assert_eq!(store.list().expect("list"), vec![]);
    let stats = store.stats().expect("stats");
    assert_eq!(
        (stats.contents, stats.chunks, stats.tails),
        (0, 0, 0),
        "{stats:?}"
    );
    *slot = Some((image, store));
}

fn open_sim(disk: &SimDisk) -> Result<BlobStore, blobvault::StoreError> {
    let mut opts = StoreOptions::new(dir()).on_sim_disk(disk.clone());
    opts.chunk_size = CHUNK;
    opts.open()
}

/// A fresh store on a simulated disk with the write-ahead log, whose power is cut after sync
/// `k`; `seed` picks the unsynced writes that survive (0: none). What the disk keeps must hold
/// every acknowledged operation, and the one in flight whole or not at all.
fn with_power_cut(k: u64, seed: u64, data: &[u8]) {
    let disk = SimDisk::new(seed);
    disk.cut_power_after_sync(k);
    let mut acked = Model::default();
    let mut in_flight = None;
    if let Ok(store) = open_sim(&disk) {
        let mut store = Some(store);
        for bytes in data.chunks(4) {
            let op = op(bytes);
            let done = match (&op, store.as_ref()) {
                (Op::Reopen, _) => {
                    drop(store.take());
                    store = open_sim(&disk).ok();
                    store.is_some()
                }
                (_, Some(s)) => run(s, &op).is_ok(),
                (_, None) => false,
            };
            if !done {
                assert!(disk.power_cut(), "an operation failed with the power on");
                in_flight = Some(op);
                break;
            }
            acked.apply(&op);
        }
    } else {
        assert!(disk.power_cut(), "open failed with the power on");
    }
    let mut landed = acked.clone();
    if let Some(op) = &in_flight {
        landed.apply(op);
    }
    let store = open_sim(&disk.after_power_cut()).expect("reopen after the power cut");
    assert!(
        acked.matches(&store, &landed) || landed.matches(&store, &acked),
        "after a power cut at sync {k} the store holds neither what was acknowledged nor that \
         and the operation in flight"
    );
    let report = store.verify().expect("verify");
    assert!(report.is_clean(), "{report:?}");
    let log = report.log.expect("a store with a log");
    assert!(!log.lost_writes(), "{log:?}");
}

/// Power cuts after sync 1..=39: an input of at most 64 bytes makes about that many.
const MAX_CUT: u8 = 40;

fuzz_target!(|data: &[u8]| {
    match data {
        [] => without_power_cut(&[]),
        [k, rest @ ..] if k % MAX_CUT == 0 => without_power_cut(rest),
        [k, seed, rest @ ..] => with_power_cut(u64::from(k % MAX_CUT), u64::from(*seed), rest),
        [k] => with_power_cut(u64::from(k % MAX_CUT), 0, &[]),
    }
});
