//! The blob store: every blob chunked into one redb database.
//!
//! Writes go through one writer thread that commits whatever PUTs and DELETEs are queued in one
//! transaction (group commit), so concurrent uploads share one fsync. GETs find their blob in a
//! snapshot shared until the next commit (`snapshots.rs`), then stream it chunk by chunk from
//! short-lived read transactions, the blob's content leased against deletion meanwhile: a GET in
//! flight when its blob is deleted finishes whole, a new GET does not find it (`read.rs`,
//! `lease.rs`). See `schema.rs` for the tables and the reference-counting rule.

mod crc;
mod faults;
mod handle;
mod lease;
mod live;
mod logfile;
mod memory;
mod oneshot;
mod read;
mod replica;
pub(crate) mod schema;
mod sim;
mod snapshots;
mod space;
mod spool;
#[cfg(test)]
mod tail_tests;
mod verify;
mod wal;
pub(crate) mod writer;

use std::fs::{self, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Sender, bounded};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableHandle};

pub use faults::FaultSwitch;
pub(crate) use handle::DbHandle;
pub use live::ListCursor;
pub use memory::MemoryImage;
pub(crate) use read::Snapshot;
pub use read::{BORROW_AFTER, BlobReader, Chunk, SNAPSHOT_MAX_AGE};
pub use replica::{BlobBytes, GcReport, ItemReader, RecoveryError, RecoveryItem, RecoveryStore};
#[doc(hidden)]
pub use sim::SimDisk;
pub use space::{DEFAULT_RESERVE_BYTES, RESERVE_FILE};
pub use spool::{Spooled, Upload};
pub use verify::{Damage, VerifyReport};
pub use wal::{LogEnd, LogReplay, WAL_FILE};

use crate::key::{BlobId, BlobKey, JobId, check_name};
use crate::protocol::{DeleteTarget, PutTarget};
use lease::{Grant, Leases};
use schema::*;
use writer::WriteOp;

/// Chunk size of new stores: 64 KiB − 128 B. redb keeps a value of exactly 2^k bytes in a
/// 2^(k+1) allocation; a little under a power of two fits in 2^k. 64 KiB rather than 256 KiB
/// because a blob's last, partial chunk is rounded up to a power of two too: with the JAR-like
/// mix (most blobs 2–200 KiB) the file is 1.10× the payload at 64 KiB − 128 and 1.59× at
/// 256 KiB − 128, while large reads and writes stay as fast (measured: BENCHMARKS.md).
pub const DEFAULT_CHUNK_SIZE: usize = 64 * 1024 - 128;

/// The database file inside a store directory.
pub const DB_FILE: &str = "blobs.redb";
const SPOOL_DIR: &str = "spool";

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be opened: its directory, database file, log or spool could not be
    /// created or opened (another process holding the database included), or there is no store
    /// at the path given to [`BlobStore::compact`]. Holds the path and the cause.
    #[error("cannot open store at {0}: {1}")]
    Open(PathBuf, String),
    /// The database file is open in another process (redb locks it: one process at a time).
    #[error("{} is open in another process (a store is used by one process at a time)", .0.display())]
    Locked(PathBuf),
    /// redb failed (I/O, corruption, a transaction), or the write-ahead log or a compaction did;
    /// holds the message. Also what every operation of a failed group commit gets for an error
    /// that cannot be cloned (an I/O error, say): its message.
    #[error("storage error: {0}")]
    Storage(String),
    /// An upload's temp file in the spool directory could not be written or read back; holds
    /// the file and the cause.
    #[error("cannot spool upload to {0}: {1}")]
    Spool(PathBuf, std::io::Error),
    /// An upload past [`MAX_BLOB_LEN`](crate::protocol::MAX_BLOB_LEN) (2 GiB − 1), which no GET
    /// could serve; holds the length it would have reached.
    #[error("blob of {0} bytes exceeds the maximum size (2 GB)")]
    TooLarge(u64),
    /// A blob name longer than [`MAX_NAME_LEN`](crate::key::MAX_NAME_LEN) bytes.
    #[error("invalid blob name: {0}")]
    Name(#[from] crate::key::KeyError),
    /// A stored blob failed a check: a chunk is missing or short, or its bytes do not hash to
    /// its key.
    #[error("BLOB {key} is damaged: {what}")]
    Damaged {
        /// The blob's content key.
        key: BlobKey,
        /// What is wrong.
        what: String,
    },
    /// The recovery store failed, on a write or on the read-repair of a local miss; holds its
    /// message. A PUT or DELETE that fails so is not applied locally.
    #[error("recovery store failed: {0}")]
    Recovery(String),
    /// The store takes no more operations: its writer thread has stopped, or a lock was
    /// poisoned by a panic.
    #[error("the store is closed")]
    Closed,
    /// The file system holding the store is full (see [`StoreOptions::reserve_bytes`]).
    #[error(
        "no space left on device for the store at {}: {detail}; DELETE blobs or free space on \
         its file system (PUTs resume then, without a restart)",
        dir.display()
    )]
    NoSpace {
        /// The store directory.
        dir: PathBuf,
        /// What could not be written.
        detail: String,
    },
    /// Any other I/O failure (opening the write-ahead log, syncing the directory, starting the
    /// writer thread, reading a PUT's source).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl StoreError {
    /// Whether the store's file system is full: the operation may succeed once space is freed.
    pub fn is_no_space(&self) -> bool {
        space::is_out_of_space(self)
    }

    /// The same error for another waiter of a failed group commit (I/O errors are not `Clone`).
    pub(crate) fn duplicate(&self) -> StoreError {
        match self {
            StoreError::Storage(s) => StoreError::Storage(s.clone()),
            StoreError::Recovery(s) => StoreError::Recovery(s.clone()),
            StoreError::Closed => StoreError::Closed,
            StoreError::NoSpace { dir, detail } => StoreError::NoSpace {
                dir: dir.clone(),
                detail: detail.clone(),
            },
            other => StoreError::Storage(other.to_string()),
        }
    }
}

macro_rules! storage_from {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Storage(e.to_string())
            }
        }
    )*};
}
storage_from!(
    redb::StorageError,
    redb::TransactionError,
    redb::TableError,
    redb::CommitError,
    redb::DatabaseError,
    redb::SetDurabilityError
);

/// How to open a store.
#[derive(Clone)]
pub struct StoreOptions {
    /// Directory holding `blobs.redb` and the upload spool.
    pub dir: PathBuf,
    /// fsync every commit before acknowledging it (default). Off: faster, and a crash may lose
    /// the most recent acknowledged writes (never corrupt the store).
    pub durable: bool,
    /// redb page cache in bytes.
    pub cache_size: usize,
    /// Uploads up to this size are spooled in memory; larger ones in a temp file.
    pub spool_memory_limit: usize,
    /// Most bytes all uploads together keep in memory; past it they spool to files (default
    /// 64 MiB), so that many connections sending at once cannot exhaust memory.
    pub spool_memory_total: usize,
    /// Re-hash blobs while reading them and fail a damaged one before its last byte is handed out.
    pub verify_reads: bool,
    /// Most operations in one group commit.
    pub max_batch: usize,
    /// Chunk size for a new store (an existing store keeps its own).
    pub chunk_size: usize,
    /// Storage fault injection (tests, chaos drills).
    pub faults: FaultSwitch,
    /// Where writes are replicated for failover (`replica.rs`; the backends are in `crate::recovery`).
    pub recovery: Option<Arc<dyn RecoveryStore>>,
    /// Keep the database in this image instead of `dir/blobs.redb` (`dir` still holds the
    /// upload spool). Nothing survives the process; `durable` has nothing to sync.
    pub memory: Option<MemoryImage>,
    /// Bytes of the ballast file (`dir/blobs.reserve`) kept so that DELETEs still work on a
    /// full disk; 0 keeps none (then a full disk may fail DELETEs too). Costs this much disk.
    /// Default [`DEFAULT_RESERVE_BYTES`] (8 MiB). See `space.rs`.
    pub reserve_bytes: u64,
    /// With `durable` off: the longest a commit stays non-durable. The writer makes a durable
    /// commit once the oldest non-durable one is this old, so a crash loses at most the writes
    /// of about this long (plus one commit's time). Default 1 s; each costs one fsync.
    pub no_fsync_interval: Duration,
    /// Test support (power-loss tests, fuzzing): keep the database, the log and the directory
    /// entries on a simulated disk ([`SimDisk`]). Not a stable interface.
    #[doc(hidden)]
    pub sim_disk: Option<SimDisk>,
}

impl std::fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreOptions")
            .field("dir", &self.dir)
            .field("durable", &self.durable)
            .field("cache_size", &self.cache_size)
            .field("recovery", &self.recovery.is_some())
            .field("memory", &self.memory)
            .field("sim_disk", &self.sim_disk.is_some())
            .finish_non_exhaustive()
    }
}

impl StoreOptions {
    /// Options for the store in `dir`, with the defaults: durable, a 32 MiB page cache, uploads
    /// over 1 MiB (or over 64 MiB all together) spooled to files, reads verified, at most 512
    /// operations per commit, [`DEFAULT_CHUNK_SIZE`], no faults, no recovery store, on disk,
    /// [`DEFAULT_RESERVE_BYTES`] of reserve, and a 1 s `no_fsync_interval`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        StoreOptions {
            dir: dir.into(),
            durable: true,
            // 32 MiB: as fast as 64 MiB for 4 KiB and JAR-mix GETs (misses come from the OS
            // page cache), and it keeps a server streaming large blobs on 16 connections well
            // under 128 MiB of RSS (BENCHMARKS.md).
            cache_size: 32 * 1024 * 1024,
            spool_memory_limit: 1024 * 1024,
            spool_memory_total: 64 * 1024 * 1024,
            verify_reads: true,
            max_batch: 512,
            chunk_size: DEFAULT_CHUNK_SIZE,
            faults: FaultSwitch::new(),
            recovery: None,
            memory: None,
            reserve_bytes: DEFAULT_RESERVE_BYTES,
            no_fsync_interval: Duration::from_secs(1),
            sim_disk: None,
        }
    }

    /// Sets [`durable`](Self::durable).
    pub fn durable(mut self, on: bool) -> Self {
        self.durable = on;
        self
    }

    /// Sets [`reserve_bytes`](Self::reserve_bytes).
    pub fn reserve_bytes(mut self, bytes: u64) -> Self {
        self.reserve_bytes = bytes;
        self
    }

    /// Sets [`no_fsync_interval`](Self::no_fsync_interval).
    pub fn no_fsync_interval(mut self, interval: Duration) -> Self {
        self.no_fsync_interval = interval;
        self
    }

    /// Sets [`recovery`](Self::recovery): writes are replicated to `r`, and local misses of
    /// [`BlobStore::fetch`] are looked up there.
    pub fn recovery(mut self, r: Arc<dyn RecoveryStore>) -> Self {
        self.recovery = Some(r);
        self
    }

    /// Sets [`faults`](Self::faults).
    pub fn faults(mut self, f: FaultSwitch) -> Self {
        self.faults = f;
        self
    }

    /// Keeps the database in `image` (see [`MemoryImage`]); opening another store on a clone of
    /// the same image after this one closed is a reopen.
    pub fn in_memory(mut self, image: MemoryImage) -> Self {
        self.memory = Some(image);
        self
    }

    /// Test support: keeps the store on `disk` (see [`SimDisk`]).
    #[doc(hidden)]
    pub fn on_sim_disk(mut self, disk: SimDisk) -> Self {
        self.sim_disk = Some(disk);
        self
    }

    /// Opens (or creates) the store: [`BlobStore::open_with`].
    pub fn open(self) -> Result<BlobStore, StoreError> {
        BlobStore::open_with(self)
    }
}

/// A blob found by [`BlobStore::get`], not leased yet.
struct Found {
    /// The leases' epoch, read before `chunks`' snapshot began.
    epoch: u64,
    chunks: Arc<read::Snapshot>,
    key: BlobKey,
    len: u64,
}

/// One entry of [`BlobStore::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobEntry {
    /// How the blob is addressed: by key (stored by a content PUT), or by job and name.
    pub id: BlobId,
    /// Its content key.
    pub key: BlobKey,
    /// Its length in bytes.
    pub len: u64,
}

/// Figures of [`BlobStore::stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Distinct contents stored.
    pub contents: u64,
    /// Contents reachable by key (stored by a content PUT).
    pub content_blobs: u64,
    /// Named blobs.
    pub named_blobs: u64,
    /// Bytes of distinct content.
    pub payload_bytes: u64,
    /// Chunks stored, of at most `chunk_size` bytes each.
    pub chunks: u64,
    /// Tails of split last chunks stored (`TAILS`; none in stores created before them).
    pub tails: u64,
    /// The store's chunk size in bytes.
    pub chunk_size: u64,
    /// Size of the database file.
    pub file_bytes: u64,
    /// What the replay of the write-ahead log found when this handle opened the store (`None`
    /// for a store without a log: a memory image).
    pub log: Option<LogReplay>,
}

/// The parts shared by the store's handles and its writer thread.
pub(crate) struct Shared {
    db: Arc<handle::DbHandle>,
    /// What GETs in flight read, kept from the writer's frees (`lease.rs`).
    leases: Arc<Leases>,
    /// The snapshot GETs share until the next commit (`snapshots.rs`).
    snapshots: snapshots::Snapshots,
    /// The write-ahead log of a store on disk (`wal.rs`); `None` for a memory image.
    wal: Option<Arc<Mutex<wal::Wal>>>,
    /// The reserve for a full disk of a store on disk (`space.rs`); `None` for a memory image.
    space: Option<Arc<space::Space>>,
    spool_dir: PathBuf,
    spool_budget: spool::MemoryBudget,
    opts: StoreOptions,
    layout: Layout,
    /// Counters and the stored figures, kept by the writer (`crate::metrics`).
    pub(crate) metrics: Arc<crate::metrics::StoreMetrics>,
}

struct Inner {
    shared: Arc<Shared>,
    /// Shared with the leases' waker, which must not keep the channel open once this closes it.
    tx: Arc<Mutex<Option<Sender<WriteOp>>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // No handle is left to GET: the writer's last commits need not keep a snapshot's pages.
        self.shared.snapshots.advance();
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        if let Ok(mut w) = self.writer.lock()
            && let Some(h) = w.take()
        {
            let _ = h.join();
        }
    }
}

/// A handle to an open store; clones share it. The store closes when the last handle drops.
#[derive(Clone)]
pub struct BlobStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore")
            .field("dir", &self.inner.shared.opts.dir)
            .finish()
    }
}

/// Opens a redb file through the fault-injecting backend (a no-op unless switched on).
pub(crate) fn open_db_file(
    path: &Path,
    builder: &redb::Builder,
    faults: &FaultSwitch,
) -> Result<Database, StoreError> {
    open_db_file_guarded(path, builder, faults, None)
}

/// [`open_db_file`], with the store's full-disk guard when given.
fn open_db_file_guarded(
    path: &Path,
    builder: &redb::Builder,
    faults: &FaultSwitch,
    guard: Option<Arc<space::Guard>>,
) -> Result<Database, StoreError> {
    let file = redb::backends::FileBackend::new(open_rw(path)?).map_err(|e| open_error(path, e))?;
    let mut backend = faults::FaultyBackend::new(file, faults.clone());
    if let Some(g) = guard {
        backend = backend.with_guard(g);
    }
    builder
        .create_with_backend(backend)
        .map_err(|e| open_error(path, e))
}

/// A failed open of the database file at `path`; a lock held elsewhere gets its own variant, so
/// that callers can say what to do about it.
fn open_error(path: &Path, e: redb::DatabaseError) -> StoreError {
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked(path.to_path_buf()),
        e => StoreError::Open(path.to_path_buf(), e.to_string()),
    }
}

/// Opens a database over a memory image or a simulated disk, through the fault-injecting
/// backend too.
fn open_db_memory(
    path: &Path,
    builder: &redb::Builder,
    backend: impl redb::StorageBackend,
    faults: &FaultSwitch,
) -> Result<Database, StoreError> {
    let backend = faults::FaultyBackend::new(backend, faults.clone());
    builder
        .create_with_backend(backend)
        .map_err(|e| StoreError::Open(path.to_path_buf(), e.to_string()))
}

impl BlobStore {
    /// Opens (or creates) the store in `dir` with default options.
    pub fn open(dir: impl Into<PathBuf>) -> Result<BlobStore, StoreError> {
        StoreOptions::new(dir).open()
    }

    /// Opens the store at the embedded default location ([`crate::config::default_data_dir`]).
    pub fn open_default() -> Result<BlobStore, StoreError> {
        Self::open(crate::config::default_data_dir())
    }

    /// Opens (or creates, with its directory) the store `opts` describe: replays the write-ahead
    /// log, frees chunks whose release was still pending and starts the writer thread. Fails
    /// with [`StoreError::Open`] when the store is already open (in another process, say).
    pub fn open_with(opts: StoreOptions) -> Result<BlobStore, StoreError> {
        limit_malloc_arenas();
        let created_dir = !opts.dir.exists();
        fs::create_dir_all(&opts.dir)
            .map_err(|e| StoreError::Open(opts.dir.clone(), e.to_string()))?;
        // The reserve first: on a nearly full disk it is what the open may need.
        // (None for a memory image or a simulated disk: nothing of theirs is on this disk.)
        let space = match (&opts.memory, &opts.sim_disk) {
            (Some(_), _) | (_, Some(_)) => None,
            (None, None) => Some(Arc::new(space::Space::open(
                &opts.dir,
                opts.reserve_bytes,
                opts.faults.clone(),
            ))),
        };
        let guard = space.as_ref().map(|s| s.guard());
        // Every open of a store on disk replays its log, durable or not: a store last used
        // durably may hold acknowledged writes only there.
        let wal_path = opts.dir.join(WAL_FILE);
        let wal = match (&opts.memory, &opts.sim_disk) {
            (Some(_), _) => None,
            (None, Some(disk)) => Some(wal::Wal::with_file(
                Box::new(disk.log_file()),
                &wal_path,
                opts.faults.clone(),
            )),
            (None, None) => Some(wal::Wal::open(&wal_path, opts.faults.clone())?),
        }
        .map(|w| Arc::new(Mutex::new(w)));
        let leases = Leases::new();
        let (cache_size, faults, memory, sim, chunk_size, log, held) = (
            opts.cache_size,
            opts.faults.clone(),
            opts.memory.clone(),
            opts.sim_disk.clone(),
            opts.chunk_size as u64,
            wal.clone(),
            Arc::clone(&leases),
        );
        let attempt = move |path: &Path| {
            let mut b = Database::builder();
            b.set_cache_size(cache_size);
            let db = match (&memory, &sim) {
                (Some(image), _) => open_db_memory(path, &b, image.backend(), &faults)?,
                (None, Some(disk)) => open_db_memory(path, &b, disk.db_backend(), &faults)?,
                (None, None) => open_db_file_guarded(path, &b, &faults, guard.clone())?,
            };
            let layout = init_schema(&db, chunk_size)?;
            if let Some(log) = &log {
                log.lock()
                    .map_err(|_| StoreError::Closed)?
                    .replay(&db, layout, &held)?;
            }
            free_pending(&db, layout, &held)?;
            Ok(db)
        };
        let reserve = space.clone();
        let db = handle::DbHandle::open(opts.dir.join(DB_FILE), move |path| {
            match attempt(path) {
                // Opening writes too (a repair after a crash, the log's replay): on a full disk
                // it gets the reserve.
                Err(e)
                    if space::is_out_of_space(&e)
                        && reserve.as_ref().is_some_and(|s| s.release(&e.to_string())) =>
                {
                    attempt(path)
                }
                other => other,
            }
        })?;
        let layout = init_schema(db.get()?.as_ref(), opts.chunk_size as u64)?;
        if let Some(disk) = &opts.sim_disk {
            disk.sync_dir()
                .map_err(|e| StoreError::Open(opts.dir.clone(), e.to_string()))?;
        } else if opts.memory.is_none() {
            // The names of the database and the log must survive a power loss as well as what
            // is written to them: a lost database file would orphan the log's records.
            sync_dir(&opts.dir)?;
            if created_dir && let Some(parent) = opts.dir.parent() {
                // A relative name's parent is "": the working directory.
                let parent = if parent.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    parent
                };
                sync_dir(parent)?;
            }
        }
        let spool_dir = opts.dir.join(SPOOL_DIR);
        spool::clean_spool_dir(&spool_dir)
            .map_err(|e| StoreError::Open(spool_dir.clone(), e.to_string()))?;
        let shared = Arc::new(Shared {
            db: Arc::new(db),
            leases,
            snapshots: snapshots::Snapshots::new(),
            wal,
            spool_budget: spool::MemoryBudget::new(opts.spool_memory_total),
            space,
            spool_dir,
            opts,
            layout,
            metrics: Arc::default(),
        });
        let (tx, rx) = bounded(shared.opts.max_batch * 2);
        let tx = Arc::new(Mutex::new(Some(tx)));
        let wake = Arc::clone(&tx);
        // From a reader's drop: never blocks (see WriteOp::FreePending). Once the store has
        // closed, what is pending stays in PENDING_FREE for the next open.
        shared.leases.set_waker(move || {
            if let Ok(tx) = wake.lock()
                && let Some(tx) = tx.as_ref()
            {
                let _ = tx.try_send(WriteOp::FreePending);
            }
        });
        let w = Arc::clone(&shared);
        let handle = std::thread::Builder::new()
            .name("blobvault-writer".into())
            .spawn(move || writer::run(w, rx))?;
        Ok(BlobStore {
            inner: Arc::new(Inner {
                shared,
                tx,
                writer: Mutex::new(Some(handle)),
            }),
        })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.shared.opts.dir
    }

    /// The options the store was opened with.
    pub fn options(&self) -> &StoreOptions {
        &self.inner.shared.opts
    }

    /// The store's chunk size in bytes, fixed when it was created.
    pub fn chunk_size(&self) -> u64 {
        self.inner.shared.layout.chunk_size
    }

    /// Whether the store is out of space: PUTs fail with [`StoreError::NoSpace`] until space is
    /// freed (DELETEs still work). Always `false` for a memory image.
    pub fn is_out_of_space(&self) -> bool {
        self.inner.shared.space.as_ref().is_some_and(|s| s.is_out())
    }

    /// The recovery store writes are replicated to, if any.
    pub fn recovery(&self) -> Option<&Arc<dyn RecoveryStore>> {
        self.inner.shared.opts.recovery.as_ref()
    }

    /// Starts an upload to feed incrementally (what the server does with a PUT body).
    pub fn upload(&self) -> Upload {
        Upload::new(
            &self.inner.shared.spool_dir,
            self.inner.shared.opts.spool_memory_limit,
            &self.inner.shared.spool_budget,
            self.inner.shared.space.clone(),
        )
    }

    /// Stores a received blob under `target` once it is durable; returns its content key.
    pub fn commit(&self, blob: Spooled, target: PutTarget) -> Result<BlobKey, StoreError> {
        self.commit_with(blob, target, false)
    }

    /// Like [`commit`](Self::commit), but never replicated to the recovery store.
    pub fn commit_local(&self, blob: Spooled, target: PutTarget) -> Result<BlobKey, StoreError> {
        self.commit_with(blob, target, true)
    }

    fn commit_with(
        &self,
        blob: Spooled,
        target: PutTarget,
        local_only: bool,
    ) -> Result<BlobKey, StoreError> {
        if let PutTarget::Named(_, name) = &target {
            check_name(name)?;
        }
        let (reply, rx) = oneshot::channel();
        self.send(WriteOp::Put {
            blob,
            target,
            local_only,
            reply,
        })?;
        rx.recv().map_err(|_| StoreError::Closed)?
    }

    /// Stores `data` by content.
    pub fn put(&self, data: &[u8]) -> Result<BlobKey, StoreError> {
        self.put_target(data, PutTarget::Content)
    }

    /// Stores `data` under `(job, name)`, replacing what was there.
    pub fn put_named(&self, job: JobId, name: &str, data: &[u8]) -> Result<BlobKey, StoreError> {
        self.put_target(data, PutTarget::Named(job, name.to_owned()))
    }

    /// Stores what `reader` yields, streamed through the spool.
    pub fn put_reader(
        &self,
        mut reader: impl Read,
        target: PutTarget,
    ) -> Result<BlobKey, StoreError> {
        let mut up = self.upload();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            up.write(&buf[..n])?;
        }
        self.commit(up.finish()?, target)
    }

    fn put_target(&self, data: &[u8], target: PutTarget) -> Result<BlobKey, StoreError> {
        let mut up = self.upload();
        up.write(data)?;
        self.commit(up.finish()?, target)
    }

    /// Deletes by key, by name or a whole job; returns how many entries went (0 is not an error).
    ///
    /// Deleting by key removes the content-addressed entry only: named blobs with the same bytes
    /// keep them.
    pub fn delete(&self, target: DeleteTarget) -> Result<u64, StoreError> {
        if let DeleteTarget::Named(_, name) = &target {
            check_name(name)?;
        }
        let (reply, rx) = oneshot::channel();
        self.send(WriteOp::Delete { target, reply })?;
        rx.recv().map_err(|_| StoreError::Closed)?
    }

    /// Local deletion only, never touching the recovery store (a worker dropping its copy).
    pub fn delete_local(&self, target: DeleteTarget) -> Result<u64, StoreError> {
        if let DeleteTarget::Named(_, name) = &target {
            check_name(name)?;
        }
        let (reply, rx) = oneshot::channel();
        self.send(WriteOp::DeleteLocal { target, reply })?;
        rx.recv().map_err(|_| StoreError::Closed)?
    }

    fn send(&self, op: WriteOp) -> Result<(), StoreError> {
        let tx = self
            .inner
            .tx
            .lock()
            .map_err(|_| StoreError::Closed)?
            .clone()
            .ok_or(StoreError::Closed)?;
        tx.send(op).map_err(|_| StoreError::Closed)
    }

    pub(crate) fn db(&self) -> Result<Arc<Database>, StoreError> {
        self.inner.shared.db()
    }

    /// Opens a streaming reader of the blob, or `None` when it is not stored.
    ///
    /// The reader holds no snapshot for long (see [`BlobReader`]); a DELETE while it reads does
    /// not cut it short: the content's chunks stay until it is dropped.
    pub fn get(&self, id: &BlobId) -> Result<Option<BlobReader>, StoreError> {
        match self.find(id)? {
            Some(found) => self.open_found(found).map(Some),
            None => Ok(None),
        }
    }

    /// The first half of [`get`](Self::get): finds the blob in a snapshot that holds every
    /// write acknowledged before this call (shared with other GETs: `snapshots.rs`).
    fn find(&self, id: &BlobId) -> Result<Option<Found>, StoreError> {
        let shared = &self.inner.shared;
        let snap = shared
            .snapshots
            .get(&shared.db, &shared.leases, shared.layout)?;
        let key = match id {
            BlobId::Content(k) => *k,
            BlobId::Named(job, name) => match snap.named()?.get((job.0, name.as_str()))? {
                Some(k) => BlobKey(k.value()),
                None => return Ok(None),
            },
        };
        let meta = match snap.content.get(key.0)? {
            Some(m) => ContentMeta::decode(&m.value()),
            None => return Ok(None),
        };
        if matches!(id, BlobId::Content(_)) && !meta.pinned {
            return Ok(None);
        }
        Ok(Some(Found {
            // Read before the snapshot began, however long ago: see lease.rs.
            epoch: snap.epoch,
            chunks: Arc::clone(&snap.chunks),
            key,
            len: meta.len,
        }))
    }

    /// The second half of [`get`](Self::get): leases the content found and opens its reader.
    fn open_found(&self, found: Found) -> Result<BlobReader, StoreError> {
        let shared = &self.inner.shared;
        let Found {
            epoch,
            chunks,
            key,
            len,
        } = found;
        let (layout, verify) = (shared.layout, shared.opts.verify_reads);
        let lease = match shared.leases.lease(key.0, epoch) {
            Grant::Lease(lease) => Some(lease),
            // Chunks were freed since the snapshot began: the content must still be there
            // after the lease was taken (then every later free of it waits for the lease).
            Grant::Recheck(lease) => {
                let fresh = self.db()?.begin_read()?;
                let there = fresh.open_table(CONTENT)?.get(key.0)?.is_some();
                there.then_some(lease)
            }
            Grant::Refused => None,
        };
        Ok(match lease {
            Some(lease) => {
                let db = Arc::clone(&shared.db);
                BlobReader::leased(db, lease, chunks, key, len, layout, verify)
            }
            None => {
                // Deleted as this GET opened it: served from the snapshot it was found in, which
                // this reader keeps to its end (the file may grow meanwhile). Rare.
                tracing::debug!(key = %key, "GET keeps its snapshot: its blob is being deleted");
                BlobReader::new(chunks, key, len, layout, verify)
            }
        })
    }

    /// Like [`get`](Self::get), but a local miss is looked up in the recovery store (and kept
    /// locally when found there).
    pub fn fetch(&self, id: &BlobId) -> Result<Option<BlobReader>, StoreError> {
        match self.get(id)? {
            Some(r) => Ok(Some(r)),
            None => self.read_repair(id),
        }
    }

    /// A blob missing locally: fetch it from the store's recovery store, keep it locally, and open
    /// it. `Ok(None)` when there is no recovery store or it lacks the blob too. Content fetched by
    /// key is checked against the key before it is kept.
    pub(crate) fn read_repair(&self, id: &BlobId) -> Result<Option<BlobReader>, StoreError> {
        let store = self;
        let Some(rec) = store.recovery() else {
            return Ok(None);
        };
        let Some(mut reader) = store
            .counters()
            .recovery(crate::metrics::RecoveryCall::Get, || rec.get(id))
            .map_err(|e| StoreError::Recovery(e.to_string()))?
        else {
            return Ok(None);
        };
        let mut up = store.upload();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                break;
            }
            up.write(&buf[..n])?;
        }
        let spooled = up.finish()?;
        let target = match id {
            BlobId::Content(k) => {
                if spooled.key() != *k {
                    return Err(StoreError::Damaged {
                        key: *k,
                        what: format!("recovery copy hashes to {}", spooled.key()),
                    });
                }
                PutTarget::Content
            }
            BlobId::Named(j, n) => {
                // Checked against the key the recovery store names, as content is against its
                // key: a damaged copy is an error, not a silent miss.
                let named = rec
                    .key_of(id)
                    .map_err(|e| StoreError::Recovery(e.to_string()))?;
                if let Some(k) = named.filter(|k| *k != spooled.key()) {
                    return Err(StoreError::Damaged {
                        key: k,
                        what: format!("recovery copy of {id} hashes to {}", spooled.key()),
                    });
                }
                PutTarget::Named(*j, n.clone())
            }
        };
        // Counted by the writer if it applied (read_repairs_total).
        store.commit_local(spooled, target)?;
        tracing::info!(blob = %id, "blob restored from the recovery store");
        store.get(id)
    }

    /// Reads a whole blob into memory.
    pub fn get_bytes(&self, id: &BlobId) -> Result<Option<Vec<u8>>, StoreError> {
        match self.get(id)? {
            None => Ok(None),
            Some(mut r) => {
                let mut out = Vec::with_capacity(r.len() as usize);
                while let Some(c) = r.next_chunk()? {
                    out.extend_from_slice(c.value());
                }
                Ok(Some(out))
            }
        }
    }

    /// Whether the blob is stored.
    pub fn contains(&self, id: &BlobId) -> Result<bool, StoreError> {
        Ok(self.get(id)?.is_some())
    }

    /// Every content blob (reachable by key) and every named blob, in key order.
    pub fn list(&self) -> Result<Vec<BlobEntry>, StoreError> {
        let txn = self.db()?.begin_read()?;
        let content = txn.open_table(CONTENT)?;
        let named = txn.open_table(NAMED)?;
        let mut out = Vec::new();
        for row in content.iter()? {
            let (k, m) = row?;
            let meta = ContentMeta::decode(&m.value());
            if meta.pinned {
                let key = BlobKey(k.value());
                out.push(BlobEntry {
                    id: BlobId::Content(key),
                    key,
                    len: meta.len,
                });
            }
        }
        for row in named.iter()? {
            let (k, v) = row?;
            let (job, name) = k.value();
            let key = BlobKey(v.value());
            let len = content
                .get(key.0)?
                .map(|m| ContentMeta::decode(&m.value()).len)
                .unwrap_or(0);
            out.push(BlobEntry {
                id: BlobId::Named(JobId(job), name.to_owned()),
                key,
                len,
            });
        }
        Ok(out)
    }

    /// Compacts the closed store in `dir` (redb's `compact`): pages move towards the start of
    /// the file and the free space at its end is given back, so the file's length comes down to
    /// about the space it uses. Offline: fails while the store is open anywhere. Returns the
    /// file's length before and after.
    pub fn compact(dir: impl Into<PathBuf>) -> Result<(u64, u64), StoreError> {
        let dir = dir.into();
        if !dir.join(DB_FILE).is_file() {
            return Err(StoreError::Open(dir, "no store here".into()));
        }
        // An open replays the write-ahead log, and a clean close leaves nothing in it.
        drop(StoreOptions::new(&dir).open()?);
        let path = dir.join(DB_FILE);
        let len = |p: &Path| fs::metadata(p).map(|m| m.len());
        let before = len(&path)?;
        let mut b = Database::builder();
        b.set_cache_size(64 * 1024 * 1024);
        let mut db = open_db_file(&path, &b, &FaultSwitch::new())?;
        db.compact()
            .map_err(|e| StoreError::Storage(format!("compaction failed: {e}")))?;
        drop(db);
        Ok((before, len(&path)?))
    }

    /// Counts and sizes of what is stored, from one snapshot. Reads every content entry, so it
    /// takes time in proportion to the number of distinct contents.
    pub fn stats(&self) -> Result<StoreStats, StoreError> {
        let txn = self.db()?.begin_read()?;
        let content = txn.open_table(CONTENT)?;
        let named = txn.open_table(NAMED)?;
        let chunks = txn.open_table(CHUNKS)?;
        let mut s = StoreStats {
            named_blobs: named.len()?,
            chunks: chunks.len()?,
            tails: match self.inner.shared.layout.tails {
                true => txn.open_table(TAILS)?.len()?,
                false => 0,
            },
            chunk_size: self.inner.shared.layout.chunk_size,
            file_bytes: match (
                &self.inner.shared.opts.memory,
                &self.inner.shared.opts.sim_disk,
            ) {
                (Some(image), _) => image.len(),
                (None, Some(disk)) => disk.db_len(),
                (None, None) => fs::metadata(self.inner.shared.db.path()).map_or(0, |m| m.len()),
            },
            log: self.last_replay(),
            ..StoreStats::default()
        };
        for row in content.iter()? {
            let meta = ContentMeta::decode(&row?.1.value());
            s.contents += 1;
            s.content_blobs += meta.pinned as u64;
            s.payload_bytes += meta.len;
        }
        Ok(s)
    }

    /// Re-hashes every stored blob and reports the damaged ones and orphan chunks.
    ///
    /// The report also carries what the replay of the write-ahead log found when this handle
    /// opened the store ([`VerifyReport::log`]).
    ///
    /// Chunks of content deleted while a GET was reading it are counted apart
    /// ([`VerifyReport::pending_chunks`]), not as orphans.
    pub fn verify(&self) -> Result<VerifyReport, StoreError> {
        let mut report = verify::verify(self.db()?.as_ref(), self.inner.shared.layout)?;
        report.log = self.last_replay();
        let m = &self.inner.shared.metrics;
        m.damaged_chunks.add(report.damaged.len() as u64);
        Ok(report)
    }

    fn last_replay(&self) -> Option<LogReplay> {
        let wal = self.inner.shared.wal.as_ref()?;
        wal.lock().ok()?.last_replay()
    }

    /// Waits until every write queued so far is committed.
    pub fn sync(&self) -> Result<(), StoreError> {
        self.barrier(false)
    }

    /// Waits until every write queued so far is committed, then writes the batches the
    /// write-ahead log holds into the database file and empties the log, as a clean stop does.
    /// Until then a logged batch may be in the log alone: the database file's size says how
    /// much the store takes only after this (the load generator's space figures).
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        self.barrier(true)
    }

    fn barrier(&self, checkpoint: bool) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(WriteOp::Barrier { reply, checkpoint })?;
        rx.recv().map_err(|_| StoreError::Closed)?
    }
}

impl Shared {
    pub(crate) fn db(&self) -> Result<Arc<Database>, StoreError> {
        self.db.get()
    }

    pub(crate) fn invalidate(&self) {
        // The reopen replays the log: the figures are counted again before the next commit.
        self.metrics.uncount();
        self.db.invalidate();
        // GETs stop reading the failed database (and writes the reopen may replay are seen).
        self.snapshots.advance();
    }

    /// After the writer's commits, before it acknowledges any of their operations: later GETs
    /// read a snapshot that holds them (`snapshots.rs`).
    pub(crate) fn committed(&self) {
        self.snapshots.advance();
    }
}

/// Caps glibc's malloc arenas at two, once per process (at the first store opened).
///
/// The database's page cache allocates 64 KiB pages on one thread and frees them on another;
/// glibc gives each thread an arena of its own (up to 8 per core) and keeps what is freed in
/// every one of them. A server with 16 connections each streaming 256 MiB down grew to 210 MiB
/// of RSS with the default, 118 MiB with two arenas and 74 MiB with one, at the same speed for
/// large blobs; one arena made small PUTs slower (lock contention), two did not (BENCHMARKS.md).
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: mallopt only sets an allocator parameter; any value is accepted.
            unsafe {
                libc::mallopt(libc::M_ARENA_MAX, 2);
            }
        });
    }
}

/// Creates the tables and records the layout on first open (`chunk_size`, per-chunk CRC-32C and
/// split last chunks); returns the store's layout. A store created before checksums keeps chunks
/// without, one created before split chunks keeps its last chunks whole.
pub(crate) fn init_schema(db: &Database, chunk_size: u64) -> Result<Layout, StoreError> {
    let txn = db.begin_write()?;
    let (layout, created) = {
        txn.open_table(CONTENT)?;
        txn.open_table(NAMED)?;
        txn.open_table(CHUNKS)?;
        // Added after the first stores: created (and committed) on their next open.
        let has_pending = txn.list_tables()?.any(|t| t.name() == PENDING_FREE.name());
        txn.open_table(PENDING_FREE)?;
        let mut settings = txn.open_table(SETTINGS)?;
        let existing = settings.get(CHUNK_SIZE_SETTING)?.map(|v| v.value());
        let (layout, mut created) = match existing {
            Some(chunk_size) => {
                let format = settings.get(CHUNK_FORMAT_SETTING)?.map(|v| v.value());
                // Format 2 keeps its chunk size apart, 0 in the old key (see schema.rs).
                let chunk_size = match format {
                    Some(CHUNK_FORMAT_TAILS) => {
                        settings.get(CHUNK_SIZE_2_SETTING)?.map_or(0, |v| v.value())
                    }
                    _ => chunk_size,
                };
                if let Some(f) = format.filter(|&f| f > CHUNK_FORMAT_TAILS) {
                    return Err(StoreError::Storage(format!(
                        "chunk format {f} of this store is newer than this build reads \
                         (up to {CHUNK_FORMAT_TAILS}): open it with a newer blobvault"
                    )));
                }
                let layout = Layout {
                    chunk_size,
                    checksums: format.is_some_and(|f| f >= CHUNK_FORMAT_CRC),
                    tails: format == Some(CHUNK_FORMAT_TAILS),
                };
                (layout, false)
            }
            None => {
                settings.insert(CHUNK_SIZE_SETTING, 0)?;
                settings.insert(CHUNK_SIZE_2_SETTING, chunk_size)?;
                settings.insert(CHUNK_FORMAT_SETTING, CHUNK_FORMAT_TAILS)?;
                txn.open_table(TAILS)?;
                let layout = Layout {
                    chunk_size,
                    checksums: true,
                    tails: true,
                };
                (layout, true)
            }
        };
        if settings.get(STORE_ID_SETTING)?.is_none() {
            settings.insert(STORE_ID_SETTING, random_id())?;
            created = true;
        }
        created |= !has_pending;
        (layout, created)
    };
    // A value holds at most one chunk: redb's limit is far above this, and 0 would mean no chunks.
    if layout.chunk_size == 0 || layout.chunk_size > MAX_CHUNK_SIZE {
        return Err(StoreError::Storage(format!(
            "invalid chunk size {} (1..={MAX_CHUNK_SIZE})",
            layout.chunk_size
        )));
    }
    // An existing store's schema is read, not rewritten: no commit (and no fsync) per open.
    if created {
        txn.commit()?;
    } else {
        txn.abort()?;
    }
    Ok(layout)
}

/// Frees the chunks of content deleted during GETs that ended before they could be freed
/// (a crash, or a store closed first): at every open, after the log's replay. Content that a
/// GET still leases (a reopen after a storage failure) stays pending.
fn free_pending(db: &Database, layout: Layout, leases: &Arc<Leases>) -> Result<(), StoreError> {
    // Most opens find nothing: they commit nothing either.
    if db.begin_read()?.open_table(PENDING_FREE)?.is_empty()? {
        return Ok(());
    }
    let txn = db.begin_write()?;
    // Kept until the commit has ended (see lease.rs).
    let frees = leases.batch();
    let n = writer::Tables::open_leased(&txn, layout, Arc::clone(&frees))?.free_all_pending()?;
    txn.commit()?;
    drop(frees);
    tracing::info!(
        contents = n,
        "freed the chunks of blobs deleted during GETs"
    );
    Ok(())
}

/// Opens `path` for reading and writing, creating it if missing. It must be a regular file (or
/// a link to one): a device or a pipe would take writes and never keep them.
pub(crate) fn open_rw(path: &Path) -> Result<fs::File, StoreError> {
    // Checked before opening too: opening a FIFO or a device can block or have effects.
    if let Ok(meta) = fs::metadata(path) {
        check_regular(path, &meta)?;
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| StoreError::Open(path.to_path_buf(), e.to_string()))?;
    let meta = file
        .metadata()
        .map_err(|e| StoreError::Open(path.to_path_buf(), e.to_string()))?;
    check_regular(path, &meta)?;
    Ok(file)
}

fn check_regular(path: &Path, meta: &fs::Metadata) -> Result<(), StoreError> {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_file() {
        return Ok(());
    }
    let kind = match () {
        _ if t.is_dir() => "a directory",
        _ if t.is_char_device() => "a character device",
        _ if t.is_block_device() => "a block device",
        _ if t.is_fifo() => "a FIFO",
        _ if t.is_socket() => "a socket",
        _ => "not a file",
    };
    Err(StoreError::Open(
        path.to_path_buf(),
        format!(
            "{kind}, not a regular file: the store keeps its database and write-ahead log in \
             regular files; put the store's own file back, or remove this entry to start an \
             empty one"
        ),
    ))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::Open(dir.to_path_buf(), e.to_string()))
}

/// A store id: not secret, only unlikely to repeat (the hasher's keys are random per process).
fn random_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(now_ms() as u128 ^ ((std::process::id() as u128) << 64));
    h.finish().max(1)
}

/// Largest chunk size a store may use.
pub const MAX_CHUNK_SIZE: u64 = 16 * 1024 * 1024;
