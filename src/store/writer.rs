//! The single writer thread: group commit of queued PUTs and DELETEs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use redb::{Database, Durability, ReadableTable, Table, WriteTransaction};

use super::lease::FreeBatch;
use super::replica::{RecoveryError, RecoveryItem, RecoveryStore};
use super::schema::*;
use super::{Shared, Spooled, StoreError, crc, oneshot, space, wal};
use crate::key::{BlobId, BlobKey, JobId};
use crate::metrics::{RecoveryCall, StoreDelta, StoreMetrics};
use crate::protocol::{DeleteTarget, PutTarget};

pub(crate) enum WriteOp {
    Put {
        blob: Spooled,
        target: PutTarget,
        /// Not replicated to the recovery store (it came from there, or the caller is a cache).
        local_only: bool,
        reply: oneshot::Sender<Result<BlobKey, StoreError>>,
    },
    Delete {
        target: DeleteTarget,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    DeleteLocal {
        target: DeleteTarget,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    Barrier {
        reply: oneshot::Sender<Result<(), StoreError>>,
        /// Also write every logged batch into the database and empty the log, as a clean stop
        /// does (`BlobStore::checkpoint`).
        checkpoint: bool,
    },
    /// Content deleted during a GET lost its last lease: free its chunks (`lease.rs`). Sent
    /// without blocking; each batch frees whatever is released, so a wake-up lost to a full
    /// queue is made up by the batch that queue is waiting for.
    FreePending,
}

/// How often an idle writer tries again to count the store's figures while a storage failure
/// keeps the database from reopening.
const RECOUNT_RETRY: Duration = Duration::from_secs(1);

/// Bytes of uploads after which a batch stops growing (one batch is one transaction).
const MAX_BATCH_BYTES: u64 = 64 * 1024 * 1024;

enum Outcome {
    Key(BlobKey),
    /// A read-repair (a local-only put) that was applied, not vetoed by a newer write.
    Repaired(BlobKey),
    Count(u64),
}

pub(crate) fn run(shared: Arc<Shared>, rx: Receiver<WriteOp>) {
    let mut lazy = LazySync::default();
    // When to try counting again after a storage failure uncounted the figures (at once, and
    // again each RECOUNT_RETRY while the database cannot be reopened), so that they come back
    // without waiting for a write. At start too: a server that only reads reports them.
    let mut recount_at: Option<Instant> = None;
    loop {
        if !shared.metrics.is_counted() {
            let at = *recount_at.get_or_insert_with(Instant::now);
            if at <= Instant::now() {
                count_if_needed(&shared);
                recount_at = (!shared.metrics.is_counted()).then(|| Instant::now() + RECOUNT_RETRY);
            }
        } else {
            recount_at = None;
        }
        // Group commit sized by load: a batch is whatever was queued while the previous commit
        // ran (up to `max_batch` operations and MAX_BATCH_BYTES). Waiting for more was measured
        // and rejected: on two cores, N busy writers split into two alternating half-batches
        // overlap one half's CPU work with the other half's fsync, while one full batch
        // serialises them (17% fewer 4 KiB PUTs/s with 8 connections; BENCHMARKS.md).
        let first = match lazy.due_at(&shared).into_iter().chain(recount_at).min() {
            None => match rx.recv() {
                Ok(op) => op,
                Err(_) => break,
            },
            Some(at) => match rx.recv_deadline(at) {
                Ok(op) => op,
                Err(RecvTimeoutError::Timeout) => {
                    if lazy.due_at(&shared).is_some_and(|at| at <= Instant::now()) {
                        lazy.sync(&shared);
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            },
        };
        count_if_needed(&shared);
        let mut batch = vec![first];
        let mut bytes = op_bytes(&batch[0]);
        while batch.len() < shared.opts.max_batch && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(op) => {
                    bytes += op_bytes(&op);
                    batch.push(op);
                }
                Err(_) => break,
            }
        }
        let writes = batch
            .iter()
            .any(|op| !matches!(op, WriteOp::Barrier { .. }));
        let (results, durable) = process(&shared, &batch);
        // Before any reply: a GET after an acknowledged write reads it (snapshots.rs). Barriers
        // too: they commit the frees of released content.
        shared.committed();
        // Counted once committed, and only the repairs that applied (a concurrent GET's repair
        // of the same blob, or a newer write, vetoes the others).
        let repaired = results
            .iter()
            .filter(|r| matches!(r, Ok(Outcome::Repaired(_))))
            .count();
        shared.metrics.read_repairs.add(repaired as u64);
        let mut results = results;
        let asked = |op: &WriteOp| {
            matches!(
                op,
                WriteOp::Barrier {
                    checkpoint: true,
                    ..
                }
            )
        };
        if batch.iter().any(asked)
            && let Err(e) = checkpoint_log(&shared)
        {
            for (_, r) in batch
                .iter()
                .zip(results.iter_mut())
                .filter(|(op, _)| asked(op))
            {
                *r = Err(e.duplicate());
            }
        }
        reply_all(batch, results);
        if writes && !durable {
            lazy.unsynced();
        }
        // Under steady load the channel never times out: sync between batches once due.
        if lazy.due_at(&shared).is_some_and(|at| at <= Instant::now()) {
            lazy.sync(&shared);
        }
    }
    if let Err(e) = checkpoint_log(&shared) {
        tracing::warn!(error = %e, "final checkpoint failed; the next open replays the log");
    }
}

/// Counts the store's figures for its metrics, unless counted (a storage failure clears it: the
/// reopen replays the log). Only ever before a commit, so that every later commit's changes apply
/// to this count.
fn count_if_needed(shared: &Shared) {
    if !shared.metrics.is_counted() {
        match super::live::count(shared) {
            Ok(d) => shared.metrics.set_counts(d),
            Err(e) => tracing::warn!(error = %e, "cannot count the store's blobs for its metrics"),
        }
    }
}

/// With `durable` off: when the oldest commit that is not durable yet was made, so that a
/// durable (empty) commit follows within `StoreOptions::no_fsync_interval` and a crash loses at
/// most that much.
#[derive(Default)]
struct LazySync {
    since: Option<Instant>,
}

impl LazySync {
    fn unsynced(&mut self) {
        self.since.get_or_insert_with(Instant::now);
    }

    fn due_at(&self, shared: &Shared) -> Option<Instant> {
        self.since.map(|t| t + shared.opts.no_fsync_interval)
    }

    /// A durable commit makes every earlier non-durable one durable (redb).
    fn sync(&mut self, shared: &Shared) {
        self.since = None;
        let result = shared.db().and_then(|db| match &shared.wal {
            Some(wal) => {
                let mut wal = wal.lock().map_err(|_| StoreError::Closed)?;
                wal::checkpoint(&db, &mut wal)?;
                shared.metrics.wal_checkpoints.inc();
                shared.metrics.wal_size.set(wal.len() as i64);
                Ok(())
            }
            None => {
                let mut txn = db.begin_write()?;
                txn.set_durability(Durability::Immediate)?;
                Ok(txn.commit()?)
            }
        });
        // No shared snapshot stays across this commit (snapshots.rs).
        shared.committed();
        if let Err(e) = result {
            // The commits since the last durable one are lost with the database's reopen, as a
            // crash would lose them.
            tracing::warn!(error = %e, "periodic durable commit (--no-fsync) failed");
            storage_failed(shared, &e);
        }
    }
}

/// After a failed commit outside a batch's own (a checkpoint, a periodic sync): the database is
/// reopened on next use, and a full disk releases the reserve.
fn storage_failed(shared: &Shared, e: &StoreError) {
    shared.invalidate();
    if let Some(space) = &shared.space
        && space::is_out_of_space(e)
    {
        space.release(&e.to_string());
    }
}

/// Commits `batch`; returns each operation's result and whether the commits were durable.
fn process(shared: &Shared, batch: &[WriteOp]) -> (Vec<Result<Outcome, StoreError>>, bool) {
    if let Some(space) = &shared.space
        && !space.try_restore()
    {
        let ops: Vec<&WriteOp> = batch.iter().collect();
        return (out_of_space(shared, space, &ops), true);
    }
    let mut results = match commit(shared, batch) {
        Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
        // A storage or recovery failure fails the whole commit it hit (retrying each op
        // would reopen the database once per op); an error of one op (its spool) must not
        // fail its neighbours: retry each on its own.
        Err(e)
            if batch.len() > 1
                && !matches!(
                    e,
                    StoreError::Storage(_) | StoreError::Recovery(_) | StoreError::Closed
                ) =>
        {
            tracing::warn!(error = %e, ops = batch.len(), "group commit failed; retrying one by one");
            batch
                .iter()
                .map(|op| commit(shared, std::slice::from_ref(op)).map(|mut o| o.remove(0)))
                .collect()
        }
        Err(e) => batch.iter().map(|_| Err(e.duplicate())).collect(),
    };
    // A memory image has nothing to sync.
    let durable = shared.opts.durable || shared.opts.memory.is_some();
    let Some(space) = &shared.space else {
        return (results, durable);
    };
    let full = |r: &Result<Outcome, StoreError>| matches!(r, Err(e) if space::is_out_of_space(e));
    let Some(cause) = results.iter().find(|r| full(r)) else {
        return (results, durable);
    };
    let cause = match cause {
        Err(e) => e.to_string(),
        Ok(_) => String::new(),
    };
    space.release(&cause);
    // The reserve is free now: the DELETEs that failed go through on it; the PUTs fail.
    let retry: Vec<usize> = (0..batch.len())
        .filter(|&i| full(&results[i]) && !matches!(batch[i], WriteOp::Put { .. }))
        .collect();
    let ops: Vec<&WriteOp> = retry.iter().map(|&i| &batch[i]).collect();
    for (i, r) in retry.into_iter().zip(out_of_space(shared, space, &ops)) {
        results[i] = r;
    }
    for r in results.iter_mut() {
        if full(r) && !matches!(r, Err(StoreError::NoSpace { .. })) {
            let detail = r.as_ref().err().map(|e| e.to_string()).unwrap_or_default();
            *r = Err(space.no_space(detail));
        }
    }
    (results, durable)
}

/// Commits while the disk is full (see `space.rs`): DELETEs first, durably and without the log;
/// PUTs only once a DELETE freed pages, with the reserve guarded, else they fail fast.
fn out_of_space(
    shared: &Shared,
    space: &space::Space,
    ops: &[&WriteOp],
) -> Vec<Result<Outcome, StoreError>> {
    let mut results: Vec<Option<Result<Outcome, StoreError>>> = ops.iter().map(|_| None).collect();
    let (puts, others): (Vec<usize>, Vec<usize>) =
        (0..ops.len()).partition(|&i| matches!(ops[i], WriteOp::Put { .. }));
    let mut run = |idx: &[usize], guarded: bool, released: &[[u8; 20]]| {
        let part: Vec<&WriteOp> = idx.iter().map(|&i| ops[i]).collect();
        // Reopen (after the failure) before arming: the repair and replay may use the reserve.
        let r = shared.db().and_then(|_| {
            space.arm(guarded);
            let r = commit_direct(shared, &part, released);
            space.arm(false);
            r
        });
        if matches!(r, Err(StoreError::Storage(_))) {
            shared.invalidate();
        }
        for (k, &i) in idx.iter().enumerate() {
            results[i] = Some(match &r {
                Ok(outcomes) => Ok(match outcomes[k] {
                    Outcome::Key(key) => Outcome::Key(key),
                    Outcome::Repaired(key) => Outcome::Repaired(key),
                    Outcome::Count(n) => Outcome::Count(n),
                }),
                Err(e) if guarded && space::is_out_of_space(e) => {
                    Err(space.no_space(e.to_string()))
                }
                Err(e) => Err(e.duplicate()),
            });
        }
        r
    };
    // Chunks of content deleted during GETs that have ended since are freed with the DELETEs:
    // space too, and only a durable commit lets redb reuse it.
    let released = shared.leases.take_released();
    if !others.is_empty() || !released.is_empty() {
        match run(&others, false, &released) {
            Ok(outcomes)
                if !released.is_empty()
                    || outcomes
                        .iter()
                        .any(|o| matches!(o, Outcome::Count(n) if *n > 0)) =>
            {
                space.set_puts_may_fit(true);
            }
            Ok(_) => {}
            Err(_) => shared.leases.requeue(released),
        }
    }
    if !puts.is_empty() {
        if space.puts_may_fit() {
            if let Err(e) = run(&puts, true, &[])
                && space::is_out_of_space(&e)
            {
                space.set_puts_may_fit(false);
            }
        } else {
            for &i in &puts {
                results[i] = Some(Err(space.no_space("PUTs are refused until space is freed")));
            }
        }
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or(Err(StoreError::Closed)))
        .collect()
}

/// A durable commit of `ops` that bypasses the write-ahead log.
///
/// `released` is content whose last GET ended since it was deleted: its chunks are freed in the
/// same commit (durably, so that redb reuses their pages at once).
fn commit_direct(
    shared: &Shared,
    ops: &[&WriteOp],
    released: &[[u8; 20]],
) -> Result<Vec<Outcome>, StoreError> {
    if released.is_empty()
        && ops
            .iter()
            .all(|op| matches!(op, WriteOp::Barrier { .. } | WriteOp::FreePending))
    {
        return Ok(ops.iter().map(|_| Outcome::Count(0)).collect());
    }
    let db: Arc<Database> = shared.db()?;
    // Kept until the commit has ended: the keys it frees refuse new leases meanwhile.
    let frees = shared.leases.batch();
    let txn = db.begin_write()?;
    let (outcomes, delta) = apply_and_replicate(shared, &txn, ops, &frees, released)?;
    txn.commit()?;
    shared.metrics.apply(delta);
    drop(frees);
    // A durable commit holds every earlier non-durable one: the log is done with.
    if let Some(wal) = &shared.wal {
        wal.lock().map_err(|_| StoreError::Closed)?.reset();
    }
    Ok(outcomes)
}

fn op_bytes(op: &WriteOp) -> u64 {
    match op {
        WriteOp::Put { blob, .. } => blob.len() + 64,
        _ => 64,
    }
}

fn reply_all(batch: Vec<WriteOp>, results: Vec<Result<Outcome, StoreError>>) {
    for (op, r) in batch.into_iter().zip(results) {
        match op {
            WriteOp::Put { reply, .. } => {
                let _ = reply.send(r.map(|o| match o {
                    Outcome::Key(k) | Outcome::Repaired(k) => k,
                    Outcome::Count(_) => BlobKey::default(),
                }));
            }
            WriteOp::Delete { reply, .. } | WriteOp::DeleteLocal { reply, .. } => {
                let _ = reply.send(r.map(|o| match o {
                    Outcome::Count(n) => n,
                    Outcome::Key(_) | Outcome::Repaired(_) => 0,
                }));
            }
            WriteOp::Barrier { reply, .. } => {
                let _ = reply.send(r.map(|_| ()));
            }
            WriteOp::FreePending => {}
        }
    }
}

/// Applies `batch` in one transaction: recovery first (so a failure there leaves no trace
/// anywhere), then the local commit.
fn commit(shared: &Shared, batch: &[WriteOp]) -> Result<Vec<Outcome>, StoreError> {
    // Content whose last lease dropped is freed with this batch (and tried again with the next
    // if this one fails).
    let released = shared.leases.take_released();
    let result = commit_inner(shared, batch, &released);
    if result.is_err() {
        shared.leases.requeue(released);
    }
    if let Err(StoreError::Storage(_)) = &result {
        shared.invalidate();
    }
    result
}

fn commit_inner(
    shared: &Shared,
    batch: &[WriteOp],
    released: &[[u8; 20]],
) -> Result<Vec<Outcome>, StoreError> {
    let frees_only = batch
        .iter()
        .all(|op| matches!(op, WriteOp::Barrier { .. } | WriteOp::FreePending));
    if frees_only && released.is_empty() {
        return Ok(batch.iter().map(|_| Outcome::Count(0)).collect());
    }
    let db: Arc<Database> = shared.db()?;
    // Small batches are made durable by the write-ahead log (one sequential fsync) instead of
    // by the database commit (an fsync of every page touched): see wal.rs.
    let log = match &shared.wal {
        Some(wal) if shared.opts.durable && !frees_only && wal::loggable(batch) => Some(wal),
        _ => None,
    };
    let ops: Vec<&WriteOp> = batch.iter().collect();
    // Kept until the commit has ended: the keys it frees refuse new leases meanwhile.
    let frees = shared.leases.batch();
    let mut txn = db.begin_write()?;
    // Freeing released chunks need not be durable: after a crash the next open frees them.
    if !shared.opts.durable || log.is_some() || frees_only {
        txn.set_durability(Durability::None)?;
    }
    let start = std::time::Instant::now();
    let applied;
    let outcomes;
    match log {
        Some(wal) => {
            let mut wal = wal.lock().map_err(|_| StoreError::Closed)?;
            let lsn = wal.next_lsn();
            let logged_before = wal.len();
            // The record goes to the disk while the batch is applied; the commit that makes
            // the batch visible waits for it: a batch that fails to log is dropped whole, and
            // a reader never sees a write that is not durable.
            wal.begin(batch, lsn)?;
            let result = apply_and_replicate(shared, &txn, &ops, &frees, released).and_then(|o| {
                wal.stamp(&txn, lsn)?;
                Ok(o)
            });
            // A record that cannot be taken back must not outlive this process's reopen, which
            // a storage error brings about (see Wal::abandon).
            let delta;
            (outcomes, delta) = result.map_err(|e| match wal.abandon() {
                true => e,
                false => StoreError::Storage(format!("{e}; the log could not take it back")),
            })?;
            applied = start.elapsed();
            wal.sync()?;
            // A failed commit may still have been applied (redb: "must not be assumed rolled
            // back"), so the record stays: replay applies it only if the database lacks it.
            // The client gets an error either way: the outcome is unknown, as after any
            // storage failure.
            txn.commit()?;
            shared.metrics.apply(delta);
            let m = &shared.metrics;
            m.wal_bytes.add(wal.len().saturating_sub(logged_before));
            let checkpoint = if wal.len() >= wal::CHECKPOINT_BYTES {
                wal::checkpoint(&db, &mut wal).inspect(|_| m.wal_checkpoints.inc())
            } else {
                Ok(())
            };
            m.wal_size.set(wal.len() as i64);
            drop(wal);
            if let Err(e) = checkpoint {
                // The batch is durable in the log; reopening replays it.
                tracing::warn!(error = %e, "checkpoint of the write-ahead log failed");
                storage_failed(shared, &e);
            }
        }
        None => {
            let delta;
            (outcomes, delta) = apply_and_replicate(shared, &txn, &ops, &frees, released)?;
            applied = start.elapsed();
            txn.commit()?;
            shared.metrics.apply(delta);
            // A durable commit holds every earlier non-durable one: the log is done with.
            if shared.opts.durable
                && !frees_only
                && let Some(wal) = &shared.wal
            {
                wal.lock().map_err(|_| StoreError::Closed)?.reset();
                shared.metrics.wal_size.set(0);
            }
        }
    }
    shared.metrics.batch_ops.observe(batch.len() as u64);
    shared.metrics.commit_time.time(start.elapsed());
    tracing::trace!(
        ops = batch.len(),
        logged = log.is_some(),
        apply_us = applied.as_micros() as u64,
        commit_us = (start.elapsed() - applied).as_micros() as u64,
        "group commit"
    );
    Ok(outcomes)
}

fn apply_and_replicate(
    shared: &Shared,
    txn: &WriteTransaction,
    batch: &[&WriteOp],
    frees: &Arc<FreeBatch>,
    released: &[[u8; 20]],
) -> Result<(Vec<Outcome>, StoreDelta), StoreError> {
    let mut t = Tables::open_leased(txn, shared.layout, Arc::clone(frees))?;
    let recovery = shared.opts.recovery.as_deref();
    let outcomes = apply(&mut t, batch, recovery.map(|r| (r, &*shared.metrics)))?;
    for key in released {
        t.free_pending(BlobKey(*key))?;
    }
    let delta = t.delta;
    drop(t);
    if let Some(rec) = &shared.opts.recovery {
        replicate(rec.as_ref(), batch, &shared.metrics)?;
    }
    Ok((outcomes, delta))
}

/// At shutdown (or when asked): makes every logged batch durable in the database and empties the
/// log, so the next open has nothing to replay.
pub(crate) fn checkpoint_log(shared: &Shared) -> Result<(), StoreError> {
    let Some(wal) = &shared.wal else {
        return Ok(());
    };
    let db = shared.db()?;
    let mut wal = wal.lock().map_err(|_| StoreError::Closed)?;
    if wal.len() == 0 {
        return Ok(());
    }
    wal::checkpoint(&db, &mut wal)?;
    shared.metrics.wal_checkpoints.inc();
    shared.metrics.wal_size.set(0);
    Ok(())
}

/// Replays the batch's puts and deletes on the recovery store, in order, puts grouped.
fn replicate(
    rec: &dyn RecoveryStore,
    batch: &[&WriteOp],
    m: &StoreMetrics,
) -> Result<(), StoreError> {
    let rec_err = |e: RecoveryError| StoreError::Recovery(e.to_string());
    let mut puts: Vec<RecoveryItem<'_>> = Vec::new();
    for &op in batch {
        match op {
            WriteOp::Put {
                local_only: true, ..
            } => {}
            WriteOp::Put { blob, target, .. } => puts.push(RecoveryItem {
                id: match target {
                    PutTarget::Content => BlobId::Content(blob.key()),
                    PutTarget::Named(j, n) => BlobId::Named(*j, n.clone()),
                },
                key: blob.key(),
                data: blob,
            }),
            WriteOp::Delete { target, .. } => {
                if !puts.is_empty() {
                    m.recovery(RecoveryCall::Put, || rec.put(&puts))
                        .map_err(rec_err)?;
                    puts.clear();
                }
                match target {
                    DeleteTarget::Content(k) => {
                        m.recovery(RecoveryCall::Delete, || rec.delete(&BlobId::Content(*k)))
                    }
                    DeleteTarget::Named(j, n) => m.recovery(RecoveryCall::Delete, || {
                        rec.delete(&BlobId::Named(*j, n.clone()))
                    }),
                    DeleteTarget::Job(j) => {
                        m.recovery(RecoveryCall::DeleteJob, || rec.delete_job(j))
                    }
                }
                .map_err(rec_err)?;
            }
            WriteOp::DeleteLocal { .. } | WriteOp::Barrier { .. } | WriteOp::FreePending => {}
        }
    }
    if !puts.is_empty() {
        m.recovery(RecoveryCall::Put, || rec.put(&puts))
            .map_err(rec_err)?;
    }
    Ok(())
}

/// The tables of one write transaction.
pub(crate) struct Tables<'t> {
    pub content: Table<'t, [u8; 20], [u8; ContentMeta::SIZE]>,
    pub named: Table<'t, ([u8; 16], &'static str), [u8; 20]>,
    pub chunks: Table<'t, ([u8; 20], u32), &'static [u8]>,
    /// The tails of split last chunks, opened at first use (`tails()`): a batch of large or
    /// tiny blobs never needs them, and a store of an older layout has none.
    tails: Option<Table<'t, &'static [u8], &'static [u8]>>,
    txn: &'t WriteTransaction,
    pub pending: Table<'t, [u8; 20], u64>,
    pub layout: Layout,
    /// The store's leases, when GETs may be reading: leased content is not freed but left
    /// pending. `None` where no reader exists (a first open, the recovery store).
    frees: Option<Arc<FreeBatch>>,
    /// What this transaction changed of the store's figures (`crate::metrics`).
    pub delta: StoreDelta,
}

impl<'t> Tables<'t> {
    /// Opens the store's tables in `txn`, freeing content as soon as nothing references it.
    pub fn open(txn: &'t WriteTransaction, layout: Layout) -> Result<Tables<'t>, StoreError> {
        Ok(Tables {
            content: txn.open_table(CONTENT)?,
            named: txn.open_table(NAMED)?,
            chunks: txn.open_table(CHUNKS)?,
            tails: None,
            txn,
            pending: txn.open_table(PENDING_FREE)?,
            layout,
            frees: None,
            delta: StoreDelta::default(),
        })
    }

    /// Like [`open`](Self::open), but content leased by a GET stays until its lease ends.
    /// `frees` must be kept until the transaction's commit has ended.
    pub fn open_leased(
        txn: &'t WriteTransaction,
        layout: Layout,
        frees: Arc<FreeBatch>,
    ) -> Result<Tables<'t>, StoreError> {
        let mut t = Self::open(txn, layout)?;
        t.frees = Some(frees);
        Ok(t)
    }
}

fn apply(
    t: &mut Tables<'_>,
    batch: &[&WriteOp],
    recovery: Option<(&dyn RecoveryStore, &StoreMetrics)>,
) -> Result<Vec<Outcome>, StoreError> {
    let mut out = Vec::with_capacity(batch.len());
    for &op in batch {
        out.push(match op {
            WriteOp::Put {
                blob,
                target,
                local_only: true,
                ..
            } => {
                if t.repair_applies(blob.key(), target, recovery)? {
                    Outcome::Repaired(t.put_with(
                        blob.key(),
                        blob.len(),
                        |offset, buf| blob.read_at(offset, buf),
                        target,
                    )?)
                } else {
                    Outcome::Key(blob.key())
                }
            }
            WriteOp::Put { blob, target, .. } => Outcome::Key(t.put_with(
                blob.key(),
                blob.len(),
                |offset, buf| blob.read_at(offset, buf),
                target,
            )?),
            WriteOp::Delete { target, .. } | WriteOp::DeleteLocal { target, .. } => {
                Outcome::Count(t.delete(target)?)
            }
            WriteOp::Barrier { .. } | WriteOp::FreePending => Outcome::Count(0),
        });
    }
    Ok(out)
}

impl<'t> Tables<'t> {
    /// Whether a read-repair of `target` with content `key` may still be applied: the target is
    /// absent locally, and the recovery store still holds that content under it. A PUT or DELETE
    /// committed since the repair read the recovery store wins over the repair.
    fn repair_applies(
        &self,
        key: BlobKey,
        target: &PutTarget,
        recovery: Option<(&dyn RecoveryStore, &StoreMetrics)>,
    ) -> Result<bool, StoreError> {
        let (present, id) = match target {
            PutTarget::Content => (
                self.content
                    .get(key.0)?
                    .is_some_and(|m| ContentMeta::decode(&m.value()).pinned),
                BlobId::Content(key),
            ),
            PutTarget::Named(j, n) => (
                self.named.get((j.0, n.as_str()))?.is_some(),
                BlobId::Named(*j, n.clone()),
            ),
        };
        if present {
            return Ok(false);
        }
        match recovery {
            None => Ok(true),
            Some((rec, m)) => Ok(m
                .recovery(RecoveryCall::KeyOf, || rec.key_of(&id))
                .map_err(|e| StoreError::Recovery(e.to_string()))?
                == Some(key)),
        }
    }

    /// Stores `data` (whose SHA-1 is `key`) under `target`.
    pub fn put(
        &mut self,
        key: BlobKey,
        data: &[u8],
        target: &PutTarget,
    ) -> Result<BlobKey, StoreError> {
        self.put_with(
            key,
            data.len() as u64,
            |offset, buf| {
                let start = offset as usize;
                buf.copy_from_slice(&data[start..start + buf.len()]);
                Ok(())
            },
            target,
        )
    }

    /// Stores the `len` bytes that `fill(offset, buf)` yields (whose SHA-1 is `key`) under
    /// `target`. Each chunk is reserved in the database and filled in place: no copy between.
    pub fn put_with(
        &mut self,
        key: BlobKey,
        len: u64,
        fill: impl Fn(u64, &mut [u8]) -> Result<(), StoreError>,
        target: &PutTarget,
    ) -> Result<BlobKey, StoreError> {
        let existing = self
            .content
            .get(key.0)?
            .map(|m| ContentMeta::decode(&m.value()));
        let before = existing.map(|m| (m.len, m.pinned));
        let mut meta = match existing {
            Some(m) => m,
            None => {
                let layout = self.layout;
                // Content deleted during a GET and stored again: its chunks are still here.
                let kept = self.pending.remove(key.0)?.map(|g| g.value());
                if let Some(old) = kept.filter(|&old| old != len) {
                    // Not the same bytes after all (only damage could do that): replace them.
                    self.remove_chunks(key, old)?;
                }
                let count = match kept == Some(len) {
                    true => 0,
                    false => layout.chunk_count(len),
                };
                for i in 0..count {
                    let offset = i as u64 * layout.chunk_size;
                    let n = layout.data_len(len, i) as usize;
                    let head = layout.split(len, i).map_or(n, |h| h as usize);
                    let mut slot = self
                        .chunks
                        .insert_reserve((key.0, i), head + layout.trailer())?;
                    fill_value(slot.as_mut(), &key, i, offset, layout, &fill)?;
                    drop(slot);
                    if head < n {
                        let size = n - head + layout.trailer();
                        let mut slot = self.tails()?.insert_reserve(key.0.as_slice(), size)?;
                        fill_value(slot.as_mut(), &key, i, offset + head as u64, layout, &fill)?;
                    }
                }
                ContentMeta {
                    len,
                    pinned: false,
                    named_refs: 0,
                    created_ms: now_ms(),
                }
            }
        };
        match target {
            PutTarget::Content => meta.pinned = true,
            PutTarget::Named(job, name) => {
                let old = self
                    .named
                    .insert((job.0, name.as_str()), key.0)?
                    .map(|g| g.value());
                match old {
                    // Same content again: no new reference (unless the content row was missing).
                    Some(old) if old == key.0 && existing.is_some() => {}
                    Some(old) => {
                        meta.named_refs += 1;
                        self.content.insert(key.0, meta.encode())?;
                        self.delta.content(before, Some((meta.len, meta.pinned)));
                        self.release(BlobKey(old), false)?;
                        return Ok(key);
                    }
                    None => {
                        meta.named_refs += 1;
                        self.delta.named_blobs += 1;
                    }
                }
            }
        }
        self.content.insert(key.0, meta.encode())?;
        self.delta.content(before, Some((meta.len, meta.pinned)));
        Ok(key)
    }

    /// Drops one reference to `key` (the pin, or one name); frees the content when none remain.
    fn release(&mut self, key: BlobKey, pin: bool) -> Result<bool, StoreError> {
        let Some(mut meta) = self
            .content
            .get(key.0)?
            .map(|m| ContentMeta::decode(&m.value()))
        else {
            return Ok(false);
        };
        let before = Some((meta.len, meta.pinned));
        if pin {
            if !meta.pinned {
                return Ok(false);
            }
            meta.pinned = false;
        } else {
            meta.named_refs = meta.named_refs.saturating_sub(1);
        }
        if meta.is_live() {
            self.content.insert(key.0, meta.encode())?;
            self.delta.content(before, Some((meta.len, meta.pinned)));
        } else {
            self.content.remove(key.0)?;
            self.delta.content(before, None);
            self.free_chunks(key, meta.len)?;
        }
        Ok(true)
    }

    /// Frees the chunks of content whose row is gone, or, while a GET leases them, records
    /// them in `PENDING_FREE` (in this transaction, so a crash cannot leak them).
    fn free_chunks(&mut self, key: BlobKey, len: u64) -> Result<(), StoreError> {
        if let Some(frees) = &self.frees
            && !frees.free_or_defer(key.0)
        {
            self.pending.insert(key.0, len)?;
            return Ok(());
        }
        self.remove_chunks(key, len)
    }

    /// Removes the chunks (and tail) of content of `len` bytes.
    fn remove_chunks(&mut self, key: BlobKey, len: u64) -> Result<(), StoreError> {
        let count = self.layout.chunk_count(len);
        for i in 0..count {
            self.chunks.remove((key.0, i))?;
        }
        if self.layout.has_tail(len) {
            self.tails()?.remove(key.0.as_slice())?;
        }
        Ok(())
    }

    /// `TAILS`, opened at its first use in this transaction.
    fn tails(&mut self) -> Result<&mut Table<'t, &'static [u8], &'static [u8]>, StoreError> {
        let table = match self.tails.take() {
            Some(t) => t,
            None => self.txn.open_table(TAILS)?,
        };
        Ok(self.tails.insert(table))
    }

    /// Frees content left pending by a GET, unless it is leased again or was stored again
    /// (then a re-PUT took its row already). Returns whether it was pending.
    pub fn free_pending(&mut self, key: BlobKey) -> Result<bool, StoreError> {
        let Some(len) = self.pending.remove(key.0)?.map(|g| g.value()) else {
            return Ok(false);
        };
        if self.content.get(key.0)?.is_none() {
            self.free_chunks(key, len)?;
        }
        Ok(true)
    }

    /// Frees everything `PENDING_FREE` lists that no GET leases (at every open of the
    /// database). Returns how many it freed or re-checked.
    pub fn free_all_pending(&mut self) -> Result<u64, StoreError> {
        let mut keys = Vec::new();
        for row in self.pending.iter()? {
            keys.push(BlobKey(row?.0.value()));
        }
        for key in &keys {
            self.free_pending(*key)?;
        }
        Ok(keys.len() as u64)
    }

    pub fn delete(&mut self, target: &DeleteTarget) -> Result<u64, StoreError> {
        match target {
            DeleteTarget::Content(key) => Ok(self.release(*key, true)? as u64),
            DeleteTarget::Named(job, name) => {
                let old = self
                    .named
                    .remove((job.0, name.as_str()))?
                    .map(|g| g.value());
                match old {
                    Some(k) => {
                        self.delta.named_blobs -= 1;
                        self.release(BlobKey(k), false)?;
                        Ok(1)
                    }
                    None => Ok(0),
                }
            }
            DeleteTarget::Job(job) => {
                let names = job_names(&self.named, job)?;
                for (name, key) in &names {
                    self.named.remove((job.0, name.as_str()))?;
                    self.delta.named_blobs -= 1;
                    self.release(*key, false)?;
                }
                Ok(names.len() as u64)
            }
        }
    }
}

/// Fills a reserved chunk (or tail) value with the blob bytes from `offset` on, then their
/// CRC-32C as chunk `i` of `key` when the layout keeps checksums.
fn fill_value(
    value: &mut [u8],
    key: &BlobKey,
    i: u32,
    offset: u64,
    layout: Layout,
    fill: &impl Fn(u64, &mut [u8]) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let (data, trailer) = value.split_at_mut(value.len() - layout.trailer());
    fill(offset, data)?;
    if layout.checksums {
        trailer.copy_from_slice(&crc::chunk_crc(&key.0, i, data).to_le_bytes());
    }
    Ok(())
}

/// The names of a job and the keys they point at.
pub(crate) fn job_names(
    named: &impl ReadableTable<([u8; 16], &'static str), [u8; 20]>,
    job: &JobId,
) -> Result<Vec<(String, BlobKey)>, StoreError> {
    let mut out = Vec::new();
    for row in named.range((job.0, "")..)? {
        let (k, v) = row?;
        let (j, name) = k.value();
        if j != job.0 {
            break;
        }
        out.push((name.to_owned(), BlobKey(v.value())));
    }
    Ok(out)
}
