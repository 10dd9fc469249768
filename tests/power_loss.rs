//! Power loss, not only process death: the store runs on a simulated disk (`SimDisk`) that keeps
//! only what each finished sync made durable, plus a random subset of the writes since (a real
//! disk may reorder them). A workload of small PUTs (through the write-ahead log), large PUTs
//! (committed to the database directly), DELETEs by key, name and job, and clean reopens
//! (checkpoints) has its power cut after sync 1, 2, … n, every sync point it has; each time the
//! store reopened from what the disk kept holds every acknowledged write whole, no acknowledged
//! delete came back, the one write in flight is whole or absent, and `verify` is clean.
//!
//! A kill -9 keeps what the OS cached, so `tests/crash.rs` cannot catch a missing or misordered
//! fsync; this does.

use std::collections::BTreeMap;
use std::path::Path;

mod common;
use common::Rng;

use blobvault::store::{BlobStore, LogEnd, SimDisk, StoreOptions};
use blobvault::{BlobId, BlobKey, DeleteTarget, JobId, PutTarget};

#[derive(Debug, Clone)]
enum Step {
    Put(PutTarget, Vec<u8>),
    Delete(DeleteTarget),
    /// Close (which checkpoints the log into the database) and open again.
    Reopen,
}

/// What the store holds: content blobs by key, named blobs by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Model {
    content: BTreeMap<BlobKey, Vec<u8>>,
    named: BTreeMap<(JobId, String), Vec<u8>>,
}

impl Model {
    fn apply(&mut self, step: &Step) {
        match step {
            Step::Put(PutTarget::Content, d) => {
                self.content.insert(BlobKey::of(d), d.clone());
            }
            Step::Put(PutTarget::Named(j, n), d) => {
                self.named.insert((*j, n.clone()), d.clone());
            }
            Step::Delete(DeleteTarget::Content(k)) => {
                self.content.remove(k);
            }
            Step::Delete(DeleteTarget::Named(j, n)) => {
                self.named.remove(&(*j, n.clone()));
            }
            Step::Delete(DeleteTarget::Job(j)) => self.named.retain(|(job, _), _| job != j),
            Step::Reopen => {}
        }
    }

    fn after(steps: &[Step]) -> Model {
        let mut m = Model::default();
        steps.iter().for_each(|s| m.apply(s));
        m
    }

    /// Everything the store lists, read back whole.
    fn of(store: &BlobStore) -> Model {
        let mut m = Model::default();
        for e in store.list().unwrap() {
            let bytes = store.get_bytes(&e.id).unwrap().expect("listed but absent");
            assert_eq!(BlobKey::of(&bytes), e.key, "{:?} is not whole", e.id);
            match e.id {
                BlobId::Content(k) => m.content.insert(k, bytes),
                BlobId::Named(j, n) => m.named.insert((j, n), bytes),
            };
        }
        m
    }
}

/// `base` bytes and up to `spread` more, from `rng`.
fn sized(rng: &mut Rng, base: usize, spread: u64) -> Vec<u8> {
    let n = base + (rng.next_u64() % spread.max(1)) as usize;
    rng.bytes(n)
}

fn workload() -> Vec<Step> {
    let mut rng = Rng::new(0x5eed_1055);
    let jobs = [JobId::from_parts(1, 1), JobId::from_parts(2, 2)];
    let mut steps = Vec::new();
    let mut keys: Vec<BlobKey> = Vec::new();
    for i in 0..48u64 {
        let job = jobs[(rng.next_u64() % 2) as usize];
        let name = format!("lib-{}.jar", rng.next_u64() % 4);
        let step = match i % 12 {
            // Small blobs: the log takes them (up to 64 KiB); together they grow it past its
            // first 1 MiB step.
            0 | 3 | 6 => Step::Put(PutTarget::Content, sized(&mut rng, 2000, 62_000)),
            1 | 7 => Step::Put(PutTarget::Named(job, name), sized(&mut rng, 60_000, 0)),
            // Large blobs: committed to the database directly (and the log starts over).
            2 => Step::Put(PutTarget::Content, sized(&mut rng, 200_000, 100_000)),
            8 => Step::Put(PutTarget::Named(job, name), sized(&mut rng, 150_000, 0)),
            4 | 10 if !keys.is_empty() => {
                let k = keys[(rng.next_u64() % keys.len() as u64) as usize];
                Step::Delete(DeleteTarget::Content(k))
            }
            5 => Step::Delete(DeleteTarget::Named(job, name)),
            9 => Step::Delete(DeleteTarget::Job(job)),
            11 if i % 24 == 11 => Step::Reopen,
            _ => Step::Put(PutTarget::Content, sized(&mut rng, 3000, 0)),
        };
        if let Step::Put(PutTarget::Content, d) = &step {
            keys.push(BlobKey::of(d));
        }
        steps.push(step);
    }
    steps
}

fn open(disk: &SimDisk, spool: &Path) -> Result<BlobStore, blobvault::StoreError> {
    StoreOptions::new(spool).on_sim_disk(disk.clone()).open()
}

/// Runs `steps` until one fails (the power is gone); returns how many were acknowledged.
fn run(disk: &SimDisk, spool: &Path, steps: &[Step]) -> usize {
    let Ok(store) = open(disk, spool) else {
        return 0;
    };
    let mut store = Some(store);
    for (i, step) in steps.iter().enumerate() {
        let Some(s) = store.as_ref() else {
            return i;
        };
        let ok = match step {
            Step::Put(target, data) => s.put_reader(&data[..], target.clone()).is_ok(),
            Step::Delete(target) => s.delete(target.clone()).is_ok(),
            Step::Reopen => {
                drop(store.take());
                store = open(disk, spool).ok();
                store.is_some()
            }
        };
        if !ok {
            assert!(disk.power_cut(), "step {i} failed with the power on");
            return i;
        }
    }
    steps.len()
}

#[test]
fn every_acknowledged_write_survives_a_power_cut_at_every_sync_point() {
    let spool = tempfile::tempdir().unwrap();
    let steps = workload();

    // How many syncs the whole workload makes, its final close included.
    let probe = SimDisk::new(0);
    assert_eq!(run(&probe, spool.path(), &steps), steps.len());
    let total = probe.syncs();
    let whole = Model::after(&steps);
    {
        let store = open(&probe.after_power_cut(), spool.path()).unwrap();
        assert!(
            Model::of(&store) == whole,
            "the whole workload is not durable"
        );
    }
    assert!(total > 60, "only {total} sync points");

    let mut cases = 0;
    for k in 1..=total {
        // Unsynced writes all lost, then a random half of them kept.
        for seed in [0, k] {
            let disk = SimDisk::new(seed);
            disk.cut_power_after_sync(k);
            let acked = run(&disk, spool.path(), &steps);
            let ctx = format!(
                "power cut after sync {k} of {total} (seed {seed}), {acked} steps acknowledged"
            );
            let store = open(&disk.after_power_cut(), spool.path())
                .unwrap_or_else(|e| panic!("{ctx}: reopen failed: {e}"));
            let got = Model::of(&store);
            let before = Model::after(&steps[..acked]);
            // The step in flight may have landed or not (its outcome was unknown), but whole.
            let with_next = Model::after(&steps[..(acked + 1).min(steps.len())]);
            assert!(
                got == before || got == with_next,
                "{ctx}: the store holds neither what was acknowledged nor that plus the step in \
                 flight ({:?})\n got {} contents / {} names, want {} / {}",
                steps.get(acked).map(|s| match s {
                    Step::Put(t, d) => format!("put {t:?} {} bytes", d.len()),
                    other => format!("{other:?}"),
                }),
                got.content.len(),
                got.named.len(),
                before.content.len(),
                before.named.len(),
            );
            let report = store.verify().unwrap();
            assert!(report.is_clean(), "{ctx}: {report:?}");
            if let Some(log) = &report.log {
                assert!(
                    !log.lost_writes() && log.end != LogEnd::Damaged,
                    "{ctx}: {log:?}"
                );
            }
            cases += 1;
        }
    }
    eprintln!("{total} sync points, {cases} power cuts checked");
}
