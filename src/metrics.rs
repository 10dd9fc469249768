//! What the server and the store count while they work, and the plain snapshots of it that
//! embedders read ([`BlobServer::metrics`](crate::BlobServer::metrics),
//! [`BlobStore::metrics`](crate::BlobStore::metrics)) and the admin endpoint exposes
//! (`admin/`).
//!
//! A leaf: the server and the store call down into it. The hot path is a handful of relaxed
//! atomic adds per request: no lock, no allocation. Histograms have fixed buckets; a snapshot
//! reads each atomic once, so figures taken while requests run may be off by the requests under
//! way, never torn within one counter.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// A monotonic count.
#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    pub(crate) fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub(crate) struct Gauge(AtomicI64);

impl Gauge {
    pub(crate) fn add(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn set(&self, n: i64) {
        self.0.store(n, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed).max(0) as u64
    }
}

/// Upper bounds of the duration buckets, in microseconds: 100 µs to 10 s.
const DURATION_BOUNDS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];
/// Upper bounds of the group-commit size buckets, in operations.
const BATCH_BOUNDS: [u64; 11] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];

/// A histogram of fixed buckets: one atomic per bucket (not cumulative), a sum and a count.
#[derive(Debug)]
pub(crate) struct Histogram<const N: usize> {
    bounds: &'static [u64; N],
    /// `buckets[N]` counts what is above the last bound.
    buckets: [AtomicU64; 17],
    sum: AtomicU64,
    /// Divides `bounds` and `sum` into the exposed unit (1e6: microseconds to seconds).
    scale: f64,
}

impl<const N: usize> Histogram<N> {
    const fn with(bounds: &'static [u64; N], scale: f64) -> Self {
        assert!(N < 17);
        Histogram {
            bounds,
            buckets: [const { AtomicU64::new(0) }; 17],
            sum: AtomicU64::new(0),
            scale,
        }
    }

    pub(crate) fn observe(&self, v: u64) {
        // At most 16 comparisons of one cache line: cheaper than the atomics that follow.
        let i = self.bounds.iter().position(|&b| v <= b).unwrap_or(N);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(v, Ordering::Relaxed);
    }

    fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(N);
        for (i, &b) in self.bounds.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            buckets.push((b as f64 / self.scale, cumulative));
        }
        let count = cumulative + self.buckets[N].load(Ordering::Relaxed);
        HistogramSnapshot {
            buckets,
            count,
            sum: self.sum.load(Ordering::Relaxed) as f64 / self.scale,
        }
    }
}

/// Durations, observed in microseconds and exposed in seconds.
pub(crate) type Timer = Histogram<16>;

impl Timer {
    pub(crate) const fn new() -> Timer {
        Histogram::with(&DURATION_BOUNDS_US, 1e6)
    }

    pub(crate) fn time(&self, d: Duration) {
        self.observe(d.as_micros().min(u64::MAX as u128) as u64);
    }
}

impl Default for Timer {
    fn default() -> Self {
        Timer::new()
    }
}

/// A histogram at one moment: cumulative bucket counts, as Prometheus has them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound, observations ≤ bound)` per bucket, bounds ascending; the `+Inf` bucket is
    /// [`count`](Self::count).
    pub buckets: Vec<(f64, u64)>,
    /// Observations in all.
    pub count: u64,
    /// Their sum (seconds for durations).
    pub sum: f64,
}

/// A BLOB request's operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// PUT (content or named).
    Put,
    /// GET.
    Get,
    /// DELETE (by key, by name or a whole job).
    Delete,
}

impl Op {
    /// Every op, in the order of [`ServerSnapshot::requests`].
    pub const ALL: [Op; 3] = [Op::Put, Op::Get, Op::Delete];

    /// The label value: `put`, `get`, `delete`.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Get => "get",
            Op::Delete => "delete",
        }
    }
}

/// How a BLOB request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered with success.
    Ok,
    /// A GET of a blob that is not stored (answered with an error reply, as Flink's server does).
    Missing,
    /// Failed: a store or recovery error, bad input, a full disk, a damaged blob, or the
    /// connection cut mid-request (by the peer, or by a deadline).
    Error,
}

impl Outcome {
    /// Every outcome, in the order of [`ServerSnapshot::requests`].
    pub const ALL: [Outcome; 3] = [Outcome::Ok, Outcome::Missing, Outcome::Error];

    /// The label value: `ok`, `missing`, `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Missing => "missing",
            Outcome::Error => "error",
        }
    }
}

/// The server's counters (one per server, shared by its threads).
#[derive(Debug, Default)]
pub(crate) struct ServerMetrics {
    /// The served store's counters (a GET that finds damage counts there too).
    pub(crate) store: std::sync::Arc<StoreMetrics>,
    requests: [[Counter; 3]; 3],
    durations: [Timer; 3],
    pub(crate) bytes_received: Counter,
    pub(crate) bytes_sent: Counter,
    pub(crate) accepted: Counter,
    pub(crate) refused: Counter,
    pub(crate) workers_busy: Gauge,
    pub(crate) damaged_reads: Counter,
}

impl ServerMetrics {
    /// The counters of a server over a store with these counters.
    pub(crate) fn for_store(store: &std::sync::Arc<StoreMetrics>) -> ServerMetrics {
        ServerMetrics {
            store: std::sync::Arc::clone(store),
            ..ServerMetrics::default()
        }
    }

    /// Counts a finished request and its duration (from its first byte to its last reply byte
    /// handed to the kernel).
    pub(crate) fn request(&self, op: Op, outcome: Outcome, took: Duration) {
        self.requests[op as usize][outcome as usize].inc();
        self.durations[op as usize].time(took);
    }

    /// Counts a GET refused or cut short by a damaged chunk.
    pub(crate) fn damaged(&self, _why: &dyn std::error::Error) {
        self.damaged_reads.inc();
        self.store.damaged_chunks.inc();
    }

    /// The counts; the caller fills in what the server reads elsewhere.
    pub(crate) fn snapshot(&self) -> ServerSnapshot {
        ServerSnapshot {
            requests: self
                .requests
                .each_ref()
                .map(|r| r.each_ref().map(Counter::get)),
            durations: self.durations.each_ref().map(Timer::snapshot),
            bytes_received: self.bytes_received.get(),
            bytes_sent: self.bytes_sent.get(),
            connections_accepted: self.accepted.get(),
            connections_refused: self.refused.get(),
            workers_busy: self.workers_busy.get(),
            damaged_reads: self.damaged_reads.get(),
            ..ServerSnapshot::default()
        }
    }
}

/// What a [`BlobServer`](crate::BlobServer) has done and is doing, at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServerSnapshot {
    /// Finished requests, indexed `[op][outcome]` in the order of [`Op::ALL`] and
    /// [`Outcome::ALL`] (see [`requests_of`](Self::requests_of)).
    pub requests: [[u64; 3]; 3],
    /// Request durations per op, in the order of [`Op::ALL`].
    pub durations: [HistogramSnapshot; 3],
    /// Bytes read from BLOB connections.
    pub bytes_received: u64,
    /// Bytes written to BLOB connections.
    pub bytes_sent: u64,
    /// Connections open now.
    pub connections_open: u64,
    /// Connections accepted since the start.
    pub connections_accepted: u64,
    /// Connections refused (over `--max-connections`, or out of descriptors).
    pub connections_refused: u64,
    /// Connections waiting in the listen backlog, not yet accepted (Linux; `None` elsewhere).
    pub listen_queue: Option<u64>,
    /// The listen backlog's length as the kernel applies it (Linux; `None` elsewhere).
    pub listen_queue_max: Option<u64>,
    /// Worker threads.
    pub workers: u64,
    /// Workers handling connections now (not waiting for readiness).
    pub workers_busy: u64,
    /// GETs refused or cut short because a stored chunk failed its check.
    pub damaged_reads: u64,
    /// The served store's figures.
    pub store: StoreSnapshot,
}

impl ServerSnapshot {
    /// Finished requests of `op` that ended with `outcome`.
    pub fn requests_of(&self, op: Op, outcome: Outcome) -> u64 {
        self.requests[op as usize][outcome as usize]
    }

    /// Durations of `op`'s requests.
    pub fn duration_of(&self, op: Op) -> &HistogramSnapshot {
        &self.durations[op as usize]
    }
}

/// A call the store makes to its recovery store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryCall {
    /// Replicating the PUTs of a commit.
    Put,
    /// Reading a blob for a read-repair.
    Get,
    /// Looking up which content a name holds (before a read-repair is applied).
    KeyOf,
    /// Replicating a DELETE by key or name.
    Delete,
    /// Replicating the DELETE of a whole job.
    DeleteJob,
}

impl RecoveryCall {
    /// Every call, in the order of [`StoreSnapshot::recovery`].
    pub const ALL: [RecoveryCall; 5] = [
        RecoveryCall::Put,
        RecoveryCall::Get,
        RecoveryCall::KeyOf,
        RecoveryCall::Delete,
        RecoveryCall::DeleteJob,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RecoveryCall::Put => "put",
            RecoveryCall::Get => "get",
            RecoveryCall::KeyOf => "key_of",
            RecoveryCall::Delete => "delete",
            RecoveryCall::DeleteJob => "delete_job",
        }
    }
}

/// Changes to the stored figures made by one transaction, applied once it commits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct StoreDelta {
    pub contents: i64,
    pub content_blobs: i64,
    pub named_blobs: i64,
    pub payload_bytes: i64,
}

impl StoreDelta {
    /// The change from a content row `old` to `new` (`None`: no row), each `(len, pinned)`.
    pub(crate) fn content(&mut self, old: Option<(u64, bool)>, new: Option<(u64, bool)>) {
        for (row, sign) in [(old, -1i64), (new, 1)] {
            if let Some((len, pinned)) = row {
                self.contents += sign;
                self.content_blobs += sign * pinned as i64;
                self.payload_bytes += sign * len as i64;
            }
        }
    }
}

/// The store's counters, and its figures kept up to date by the writer (no scan per read).
#[derive(Debug, Default)]
pub(crate) struct StoreMetrics {
    pub(crate) batch_ops: Histogram<11>,
    pub(crate) commit_time: Timer,
    pub(crate) wal_bytes: Counter,
    pub(crate) wal_checkpoints: Counter,
    pub(crate) wal_size: Gauge,
    contents: Gauge,
    content_blobs: Gauge,
    named_blobs: Gauge,
    payload_bytes: Gauge,
    /// Whether the figures above were counted yet (by one scan when the writer starts).
    counted: std::sync::atomic::AtomicBool,
    recovery_calls: [Counter; 5],
    recovery_errors: [Counter; 5],
    recovery_time: [Timer; 5],
    pub(crate) read_repairs: Counter,
    pub(crate) damaged_chunks: Counter,
    /// Why the last put to the recovery store failed, until one succeeds (readiness).
    recovery_put_failure: std::sync::Mutex<Option<String>>,
}

impl Default for Histogram<11> {
    fn default() -> Self {
        Histogram::with(&BATCH_BOUNDS, 1.0)
    }
}

impl StoreMetrics {
    /// Sets the stored figures from a full count (at the writer's start).
    pub(crate) fn set_counts(&self, d: StoreDelta) {
        self.contents.set(d.contents);
        self.content_blobs.set(d.content_blobs);
        self.named_blobs.set(d.named_blobs);
        self.payload_bytes.set(d.payload_bytes);
        self.counted.store(true, Ordering::Relaxed);
    }

    /// Whether the stored figures are counted (else the writer counts them before its next
    /// commit).
    pub(crate) fn is_counted(&self) -> bool {
        self.counted.load(Ordering::Relaxed)
    }

    /// After a storage failure the database reopens (and replays its log): count again.
    pub(crate) fn uncount(&self) {
        self.counted.store(false, Ordering::Relaxed);
    }

    /// Applies the changes of a committed transaction.
    pub(crate) fn apply(&self, d: StoreDelta) {
        self.contents.add(d.contents);
        self.content_blobs.add(d.content_blobs);
        self.named_blobs.add(d.named_blobs);
        self.payload_bytes.add(d.payload_bytes);
    }

    /// Times one recovery call and counts it (and its failure).
    pub(crate) fn recovery<T, E>(
        &self,
        call: RecoveryCall,
        f: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: std::fmt::Display,
    {
        let started = std::time::Instant::now();
        let r = f();
        let i = call as usize;
        self.recovery_time[i].time(started.elapsed());
        self.recovery_calls[i].inc();
        if r.is_err() {
            self.recovery_errors[i].inc();
        }
        if call == RecoveryCall::Put
            && let Ok(mut last) = self.recovery_put_failure.lock()
        {
            *last = r.as_ref().err().map(ToString::to_string);
        }
        r
    }

    /// Why the last put to the recovery store failed, unless one succeeded since.
    pub(crate) fn recovery_put_failure(&self) -> Option<String> {
        self.recovery_put_failure.lock().ok()?.clone()
    }

    /// The counts; the caller fills in the file's size and what it reads elsewhere.
    pub(crate) fn snapshot(&self) -> StoreSnapshot {
        StoreSnapshot {
            counted: self.counted.load(Ordering::Relaxed),
            contents: self.contents.get(),
            content_blobs: self.content_blobs.get(),
            named_blobs: self.named_blobs.get(),
            payload_bytes: self.payload_bytes.get(),
            batch_ops: self.batch_ops.snapshot(),
            commit_seconds: self.commit_time.snapshot(),
            wal_bytes_written: self.wal_bytes.get(),
            wal_checkpoints: self.wal_checkpoints.get(),
            wal_bytes: self.wal_size.get(),
            recovery: RecoveryCall::ALL.map(|c| {
                let i = c as usize;
                RecoverySnapshot {
                    calls: self.recovery_calls[i].get(),
                    errors: self.recovery_errors[i].get(),
                    seconds: self.recovery_time[i].snapshot(),
                }
            }),
            read_repairs: self.read_repairs.get(),
            damaged_chunks: self.damaged_chunks.get(),
            ..StoreSnapshot::default()
        }
    }
}

/// Calls of one kind to the recovery store.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecoverySnapshot {
    /// Calls made.
    pub calls: u64,
    /// Calls that failed.
    pub errors: u64,
    /// How long they took.
    pub seconds: HistogramSnapshot,
}

/// What a [`BlobStore`](crate::BlobStore) holds and has done, at one moment; read without a scan
/// (the counts are kept up to date by the writer as it commits).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoreSnapshot {
    /// Whether the counts below are known yet: the writer counts them once when the store opens,
    /// before its first commit.
    pub counted: bool,
    /// Distinct contents stored.
    pub contents: u64,
    /// Contents reachable by key (stored by a content PUT).
    pub content_blobs: u64,
    /// Named blobs.
    pub named_blobs: u64,
    /// Bytes of distinct content.
    pub payload_bytes: u64,
    /// Size of the database file (0 for a memory image).
    pub file_bytes: u64,
    /// The store's chunk size.
    pub chunk_size: u64,
    /// Operations per group commit.
    pub batch_ops: HistogramSnapshot,
    /// Group-commit durations (apply, log or database sync, commit).
    pub commit_seconds: HistogramSnapshot,
    /// Bytes appended to the write-ahead log.
    pub wal_bytes_written: u64,
    /// Checkpoints of the write-ahead log (its batches made durable in the database, the log
    /// emptied).
    pub wal_checkpoints: u64,
    /// Bytes in the write-ahead log now.
    pub wal_bytes: u64,
    /// Calls to the recovery store, in the order of [`RecoveryCall::ALL`] (all zero without
    /// one).
    pub recovery: [RecoverySnapshot; 5],
    /// Blobs missing locally restored from the recovery store.
    pub read_repairs: u64,
    /// Damaged chunks found by reads (a chunk missing, short, or failing its checksum or the
    /// blob's hash).
    pub damaged_chunks: u64,
    /// Whether the store is out of space (see [`BlobStore::is_out_of_space`]): PUTs are refused
    /// but after a DELETE freed pages, until the file system has room for the reserve again.
    ///
    /// [`BlobStore::is_out_of_space`]: crate::BlobStore::is_out_of_space
    pub out_of_space: bool,
}

impl StoreSnapshot {
    /// Calls of one kind to the recovery store.
    pub fn recovery_of(&self, call: RecoveryCall) -> &RecoverySnapshot {
        &self.recovery[call as usize]
    }
}

/// The listen backlog of a listening TCP socket: `(queued now, its maximum)`, from `TCP_INFO`
/// (for a listener Linux reports the accept queue's length in `tcpi_unacked` and its limit in
/// `tcpi_sacked`). `None` off Linux or on failure.
pub(crate) fn listen_queue(socket: &socket2::Socket) -> Option<(u64, u64)> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::fd::AsRawFd;
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `info`, which is that large, and
        // the length through the pointer we pass.
        let r = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&mut info as *mut libc::tcp_info).cast(),
                &mut len,
            )
        };
        (r == 0).then_some((info.tcpi_unacked as u64, info.tcpi_sacked as u64))
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = socket;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_the_last_catches_the_rest() {
        let t = Timer::new();
        t.time(Duration::from_micros(50));
        t.time(Duration::from_micros(100));
        t.time(Duration::from_millis(3));
        t.time(Duration::from_secs(60));
        let s = t.snapshot();
        assert_eq!(s.count, 4);
        assert_eq!(s.buckets[0], (100e-6, 2));
        let at_5ms = s
            .buckets
            .iter()
            .find(|b| (b.0 - 0.005).abs() < 1e-9)
            .unwrap();
        assert_eq!(at_5ms.1, 3);
        assert_eq!(s.buckets.last().unwrap().1, 3);
        assert!((s.sum - 60.00315).abs() < 1e-9);
    }

    #[test]
    fn content_delta_counts_rows_pins_and_bytes() {
        let mut d = StoreDelta::default();
        d.content(None, Some((10, true)));
        d.content(Some((10, true)), Some((10, false)));
        d.content(None, Some((5, false)));
        d.content(Some((5, false)), None);
        assert_eq!(
            d,
            StoreDelta {
                contents: 1,
                content_blobs: 0,
                named_blobs: 0,
                payload_bytes: 10
            }
        );
    }

    #[test]
    fn requests_are_counted_by_op_and_outcome() {
        let m = ServerMetrics::default();
        m.request(Op::Get, Outcome::Missing, Duration::from_millis(1));
        m.request(Op::Get, Outcome::Missing, Duration::from_millis(1));
        m.request(Op::Put, Outcome::Ok, Duration::from_millis(1));
        let s = m.snapshot();
        assert_eq!(s.requests_of(Op::Get, Outcome::Missing), 2);
        assert_eq!(s.requests_of(Op::Put, Outcome::Ok), 1);
        assert_eq!(s.requests_of(Op::Delete, Outcome::Ok), 0);
        assert_eq!(s.duration_of(Op::Get).count, 2);
    }
}
