//! `LibraryCacheManager`: which jobs and tasks use which libraries (Flink's
//! `BlobLibraryCacheManager`), with reference counts per library and a periodic clean-up of
//! the libraries nothing references any more.
//!
//! It works over a [`BlobService`]: a [`BlobCache`] on a worker, or a [`StoreBlobService`]
//! (a `BlobServer`'s store, in-process) on the master. Either way a library is handed out as a
//! local file, since the runtime loads libraries from files.
//!
//! Semantics (PROTOCOL.md §12), with two deliberate changes:
//! - The first registration of a job fetches every library (in the order given), and only when
//!   all were fetched counts one reference per library; if one fails, the call fails, nothing is
//!   counted, and the libraries fetched before the failure are left with their previous count
//!   (0 if they were new), so the clean-up removes them, as in the original.
//! - A later registration of the same job (another task) must name a subset of the job's
//!   libraries, else [`LibraryError::NotSubset`]; it only adds the attempt as a holder.
//! - Unregistering the last holder of a job drops the job and one reference per library; counts
//!   never go below 0 and a library at 0 is kept (and counted by
//!   [`library_count`](LibraryCacheManager::library_count)) until the next clean-up.
//! - **Change 1**: the clean-up runs every `library-cache-manager.cleanup.interval` seconds,
//!   not once (the original scheduled a one-shot timer). It deletes, through
//!   [`BlobService::delete`], every library whose count is 0 and that no registration in
//!   progress is fetching.
//! - **Change 2**: fetching happens outside the manager's lock, so one slow download does not
//!   stall every other registration.
//! - Every library a registered job references is held in the service
//!   ([`BlobService::acquire`]), so a size-capped [`BlobCache`] never evicts it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{RecvTimeoutError, Sender, bounded};

use crate::cache::{BLOB_PREFIX, BlobCache, BlobFile, CacheError, CommitError, TEMP_PREFIX};
use crate::config::{ConfigError, Configuration, keys};
use crate::key::{BlobId, BlobKey, JobId};
use crate::protocol::DeleteTarget;
use crate::server::BlobServer;
use crate::store::{BlobStore, StoreError};

/// Default clean-up interval (`library-cache-manager.cleanup.interval`, in seconds).
pub const DEFAULT_CLEANUP_INTERVAL: Duration = Duration::from_secs(3600);

/// Flink's `ExecutionAttemptID`: 16 bytes, `lowerPart` then `upperPart` (big-endian i64s).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ExecutionAttemptId(pub [u8; 16]);

impl ExecutionAttemptId {
    /// The attempt under which [`LibraryCacheManager::register_job`] registers a whole job
    /// (Flink's `JOB_ATTEMPT_ID`, `ExecutionAttemptID(-1, -1)`).
    pub const JOB: ExecutionAttemptId = ExecutionAttemptId::from_parts(-1, -1);

    /// The id of Java's `ExecutionAttemptID(lower, upper)`: both longs big-endian, lower first.
    pub const fn from_parts(lower: i64, upper: i64) -> Self {
        let l = lower.to_be_bytes();
        let u = upper.to_be_bytes();
        let mut b = [0u8; 16];
        let mut i = 0;
        while i < 8 {
            b[i] = l[i];
            b[8 + i] = u[i];
            i += 1;
        }
        ExecutionAttemptId(b)
    }

    /// A random id.
    pub fn random() -> Self {
        ExecutionAttemptId(JobId::random().0)
    }

    /// The first long of Java's `ExecutionAttemptID`.
    pub fn lower_part(&self) -> i64 {
        JobId(self.0).lower_part()
    }

    /// The second long of Java's `ExecutionAttemptID`.
    pub fn upper_part(&self) -> i64 {
        JobId(self.0).upper_part()
    }
}

impl fmt::Display for ExecutionAttemptId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&JobId(self.0), f)
    }
}

impl fmt::Debug for ExecutionAttemptId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ExecutionAttemptId({self})")
    }
}

/// Errors of a [`BlobService`].
#[derive(Debug, thiserror::Error)]
pub enum BlobServiceError {
    /// The worker-side cache could not fetch the blob.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store does not hold the blob.
    #[error("Cannot find required BLOB {0}")]
    NotFound(BlobKey),
    /// The directory of library files could not be created, listed or written.
    #[error("library directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Where a [`LibraryCacheManager`] gets libraries as local files.
pub trait BlobService: Send + Sync + fmt::Debug {
    /// The local file of `key`, fetched or materialised first if needed.
    fn local_path(&self, key: &BlobKey) -> Result<PathBuf, BlobServiceError>;

    /// Like [`local_path`](Self::local_path), and holds the file (against eviction) until a
    /// matching [`release`](Self::release). By default there is nothing to hold.
    fn acquire(&self, key: &BlobKey) -> Result<PathBuf, BlobServiceError> {
        self.local_path(key)
    }

    /// Ends one hold taken by [`acquire`](Self::acquire).
    fn release(&self, key: &BlobKey) {
        let _ = key;
    }

    /// Deletes the blob (a missing one is not an error).
    fn delete(&self, key: &BlobKey) -> Result<(), BlobServiceError>;
}

/// On a worker: the cache's file, downloaded if needed; `delete` drops only the local copy.
/// `acquire`/`release` pin the blob in the cache; `local_path` takes no hold, so with a size
/// cap an unreferenced blob may be evicted again once other blobs arrive.
impl BlobService for BlobCache {
    fn local_path(&self, key: &BlobKey) -> Result<PathBuf, BlobServiceError> {
        Ok(self.get(key)?.path().to_path_buf())
    }

    fn acquire(&self, key: &BlobKey) -> Result<PathBuf, BlobServiceError> {
        Ok(BlobCache::acquire(self, key)?)
    }

    fn release(&self, key: &BlobKey) {
        BlobCache::release(self, key);
    }

    fn delete(&self, key: &BlobKey) -> Result<(), BlobServiceError> {
        Ok(BlobCache::delete(self, key)?)
    }
}

/// On the master: a server's [`BlobStore`], in-process. A library is materialised on demand as
/// `<dir>/blob_<hex>` (written to a temp file, checked against its key, renamed into place);
/// `delete` removes that file **and the blob from the store** (and so from its recovery store),
/// as the original's JobManager did.
///
/// The directory belongs to the service: files left in it by an earlier run are removed when it
/// is created (they are cheap to recreate), and a materialised file is only reused while the
/// store still holds the blob.
#[derive(Debug, Clone)]
pub struct StoreBlobService {
    store: BlobStore,
    dir: PathBuf,
}

impl StoreBlobService {
    /// Materialises libraries of `store` as files in `dir` (created if missing; files an earlier
    /// run left there are removed).
    pub fn new(store: BlobStore, dir: impl Into<PathBuf>) -> Result<Self, BlobServiceError> {
        let dir = dir.into();
        let err = |e| BlobServiceError::Dir {
            path: dir.clone(),
            source: e,
        };
        fs::create_dir_all(&dir).map_err(err)?;
        for ent in fs::read_dir(&dir).map_err(err)? {
            let ent = ent.map_err(err)?;
            let stale = ent
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(BLOB_PREFIX) || n.starts_with(TEMP_PREFIX));
            if stale && let Err(e) = fs::remove_file(ent.path()) {
                tracing::warn!(path = %ent.path().display(), error = %e, "cannot remove stale library file");
            }
        }
        Ok(StoreBlobService { store, dir })
    }

    /// Over the store of a running server.
    pub fn for_server(
        server: &BlobServer,
        dir: impl Into<PathBuf>,
    ) -> Result<Self, BlobServiceError> {
        Self::new(server.store().clone(), dir)
    }

    /// The store the libraries come from.
    pub fn store(&self) -> &BlobStore {
        &self.store
    }

    /// Where the library files are written.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, key: &BlobKey) -> PathBuf {
        crate::cache::blob_path(&self.dir, key)
    }
}

impl BlobService for StoreBlobService {
    fn local_path(&self, key: &BlobKey) -> Result<PathBuf, BlobServiceError> {
        let id = BlobId::Content(*key);
        let path = self.path_of(key);
        let reader = match self.store.get(&id)? {
            Some(r) => r,
            None => {
                // Deleted behind our back (e.g. a DELETE over the wire): drop a stale copy.
                if let Err(e) = fs::remove_file(&path)
                    && e.kind() != io::ErrorKind::NotFound
                {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove stale library file");
                }
                match self.store.read_repair(&id)? {
                    Some(r) => r,
                    None => return Err(BlobServiceError::NotFound(*key)),
                }
            }
        };
        if path.is_file() {
            return Ok(path);
        }
        let mut out = BlobFile::create(&self.dir, key)?;
        let mut reader = reader;
        while let Some(chunk) = reader.next_chunk()? {
            out.write(chunk.value())?;
        }
        match out.commit() {
            Ok(_) => Ok(path),
            Err(CommitError::Local(e)) => Err(e.into()),
            Err(CommitError::Mismatch(actual)) => Err(StoreError::Damaged {
                key: *key,
                what: format!("content hashes to {actual}"),
            }
            .into()),
        }
    }

    fn delete(&self, key: &BlobKey) -> Result<(), BlobServiceError> {
        let path = self.path_of(key);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(BlobServiceError::Dir { path, source: e }),
        }
        self.store.delete(DeleteTarget::Content(*key))?;
        Ok(())
    }
}

/// Errors of the [`LibraryCacheManager`].
#[derive(Debug, thiserror::Error)]
pub enum LibraryError {
    /// A library of the job could not be had from the [`BlobService`].
    #[error("Cannot get library with hash {key}: {source}")]
    Fetch {
        /// The library's key.
        key: BlobKey,
        /// Why.
        #[source]
        source: BlobServiceError,
    },
    /// A task named a library its job did not register.
    #[error(
        "job {job} is already registered with other libraries: {key} is not among them \
         (a task must use a subset of its job's libraries)"
    )]
    NotSubset {
        /// The job.
        job: JobId,
        /// The library outside the job's set.
        key: BlobKey,
    },
    /// The job has no registration.
    #[error("No libraries are registered for job {0}")]
    NotRegistered(JobId),
    /// The [`BlobService`] failed otherwise.
    #[error(transparent)]
    Service(#[from] BlobServiceError),
    /// The periodic clean-up thread could not be started.
    #[error("cannot start the clean-up thread: {0}")]
    Spawn(#[source] io::Error),
    /// A configuration value (the clean-up interval) is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

#[derive(Debug)]
struct JobEntry {
    keys: Vec<BlobKey>,
    paths: Vec<PathBuf>,
    holders: HashSet<ExecutionAttemptId>,
}

#[derive(Debug, Default)]
struct State {
    jobs: HashMap<JobId, JobEntry>,
    /// References per library, across jobs; 0 until the next clean-up.
    refs: BTreeMap<BlobKey, u32>,
    /// Libraries being fetched by registrations in progress (not to be cleaned up).
    pending: HashMap<BlobKey, u32>,
    /// Completed clean-up runs.
    cycles: u64,
    /// Counts of [`LibraryStats`].
    counts: LibraryStats,
}

/// What a [`LibraryCacheManager`] has done and holds, at one moment ([`LibraryCacheManager::stats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LibraryStats {
    /// Registrations that joined a job already registered: its libraries were there (hits).
    pub joined: u64,
    /// First registrations of a job, which fetch its libraries (misses).
    pub first_registrations: u64,
    /// Libraries fetched from the [`BlobService`] by first registrations (downloads, when the
    /// service is a [`BlobCache`]; already cached ones count too).
    pub fetched: u64,
    /// Registrations that failed to fetch a library.
    pub failed: u64,
    /// Libraries deleted by the clean-up once no job referenced them (evictions).
    pub removed: u64,
    /// Clean-up runs completed.
    pub cleanups: u64,
    /// Jobs registered now.
    pub jobs: u64,
    /// Libraries tracked now (referenced, or unreferenced until the next clean-up).
    pub libraries: u64,
}

impl State {
    /// The part of a registration for a job that is already registered.
    fn join(
        &mut self,
        job: JobId,
        attempt: ExecutionAttemptId,
        keys: &[BlobKey],
    ) -> Option<Result<(), LibraryError>> {
        let entry = self.jobs.get_mut(&job)?;
        if let Some(k) = keys.iter().find(|k| !entry.keys.contains(k)) {
            return Some(Err(LibraryError::NotSubset { job, key: *k }));
        }
        entry.holders.insert(attempt);
        Some(Ok(()))
    }

    fn unpend(&mut self, keys: &[BlobKey]) {
        for k in keys {
            if let Some(n) = self.pending.get_mut(k) {
                *n -= 1;
                if *n == 0 {
                    self.pending.remove(k);
                }
            }
        }
    }
}

struct Shared {
    service: Arc<dyn BlobService>,
    state: Mutex<State>,
    /// Signalled after every clean-up run.
    cleaned: Condvar,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn cleanup(&self) -> usize {
        let mut st = lock(&self.state);
        let idle: Vec<BlobKey> = st
            .refs
            .iter()
            .filter(|(k, n)| **n == 0 && !st.pending.contains_key(k))
            .map(|(k, _)| *k)
            .collect();
        let mut deleted = 0;
        for key in idle {
            match self.service.delete(&key) {
                Ok(()) => {
                    st.refs.remove(&key);
                    st.counts.removed += 1;
                    deleted += 1;
                }
                Err(e) => {
                    tracing::warn!(key = %key, error = %e, "cannot delete unreferenced library; keeping it for the next clean-up");
                }
            }
        }
        st.cycles += 1;
        self.cleaned.notify_all();
        if deleted > 0 {
            tracing::debug!(deleted, cycle = st.cycles, "library clean-up");
        }
        deleted
    }
}

/// Per-job and per-task registration of libraries; see the module docs.
///
/// Owns one clean-up thread, which [`shutdown`](Self::shutdown) (or dropping the manager) wakes
/// through a channel and joins. The [`BlobService`] is shared, not shut down.
pub struct LibraryCacheManager {
    shared: Arc<Shared>,
    interval: Duration,
    stop: Mutex<Option<Sender<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for LibraryCacheManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LibraryCacheManager")
            .field("service", &self.shared.service)
            .field("interval", &self.interval)
            .finish()
    }
}

impl LibraryCacheManager {
    /// Starts a manager over `service` whose clean-up runs every `cleanup_interval` (at least
    /// 1 ms).
    pub fn new(
        service: Arc<dyn BlobService>,
        cleanup_interval: Duration,
    ) -> Result<Self, LibraryError> {
        let interval = cleanup_interval.max(Duration::from_millis(1));
        let shared = Arc::new(Shared {
            service,
            state: Mutex::new(State::default()),
            cleaned: Condvar::new(),
        });
        let (tx, rx) = bounded::<()>(1);
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("blobvault-library-cleanup".into())
            .spawn(move || {
                // A message or a closed channel means stop; a timeout means another period.
                while let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(interval) {
                    s.cleanup();
                }
            })
            .map_err(LibraryError::Spawn)?;
        Ok(LibraryCacheManager {
            shared,
            interval,
            stop: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Like [`new`](Self::new), with the interval from `library-cache-manager.cleanup.interval`
    /// (seconds, default 3600; a value below 1 logs a warning and uses the default).
    pub fn from_config(
        service: Arc<dyn BlobService>,
        conf: &Configuration,
    ) -> Result<Self, LibraryError> {
        let secs = conf.get_at_least(
            keys::CLEANUP_INTERVAL,
            1,
            DEFAULT_CLEANUP_INTERVAL.as_secs() as i64,
        )?;
        Self::new(service, Duration::from_secs(secs as u64))
    }

    /// Where the libraries come from.
    pub fn service(&self) -> &Arc<dyn BlobService> {
        &self.shared.service
    }

    /// How often libraries no job or task holds any more are removed.
    pub fn cleanup_interval(&self) -> Duration {
        self.interval
    }

    /// Registers the whole job (attempt [`ExecutionAttemptId::JOB`]).
    pub fn register_job(&self, job: JobId, keys: &[BlobKey]) -> Result<(), LibraryError> {
        self.register_task(job, ExecutionAttemptId::JOB, keys)
    }

    /// Registers `attempt` of `job` as a user of the libraries `keys` (duplicates count once).
    /// The job's first registration fetches every library; see the module docs.
    pub fn register_task(
        &self,
        job: JobId,
        attempt: ExecutionAttemptId,
        keys: &[BlobKey],
    ) -> Result<(), LibraryError> {
        let mut uniq: Vec<BlobKey> = Vec::with_capacity(keys.len());
        for k in keys {
            if !uniq.contains(k) {
                uniq.push(*k);
            }
        }
        let keys = uniq;
        {
            let mut st = lock(&self.shared.state);
            if let Some(r) = st.join(job, attempt, &keys) {
                st.counts.joined += r.is_ok() as u64;
                return r;
            }
            st.counts.first_registrations += 1;
            for k in &keys {
                *st.pending.entry(*k).or_insert(0) += 1;
            }
        }
        let service = &self.shared.service;
        let mut paths = Vec::with_capacity(keys.len());
        let mut failure = None;
        for k in &keys {
            match service.acquire(k) {
                Ok(p) => paths.push(p),
                Err(e) => {
                    failure = Some(LibraryError::Fetch { key: *k, source: e });
                    break;
                }
            }
        }
        let mut st = lock(&self.shared.state);
        st.unpend(&keys);
        st.counts.fetched += paths.len() as u64;
        if let Some(err) = failure {
            st.counts.failed += 1;
            let fetched = &keys[..paths.len()];
            for k in fetched {
                service.release(k);
                // Counted and uncounted again: present (for the clean-up) with its old count.
                st.refs.entry(*k).or_insert(0);
            }
            tracing::warn!(job = %job, error = %err, "library registration failed");
            return Err(err);
        }
        if let Some(r) = st.join(job, attempt, &keys) {
            // Another registration of this job won the race: keep its entry.
            for k in &keys {
                service.release(k);
            }
            return r;
        }
        for k in &keys {
            *st.refs.entry(*k).or_insert(0) += 1;
        }
        tracing::debug!(job = %job, attempt = %attempt, libraries = keys.len(), "job registered");
        st.jobs.insert(
            job,
            JobEntry {
                keys,
                paths,
                holders: HashSet::from([attempt]),
            },
        );
        Ok(())
    }

    /// Removes `attempt` from the holders of `job` (idempotent). The last holder's removal
    /// drops the job and one reference per library.
    pub fn unregister_task(&self, job: JobId, attempt: ExecutionAttemptId) {
        let mut st = lock(&self.shared.state);
        let Some(entry) = st.jobs.get_mut(&job) else {
            return;
        };
        entry.holders.remove(&attempt);
        if !entry.holders.is_empty() {
            return;
        }
        let Some(entry) = st.jobs.remove(&job) else {
            return;
        };
        for k in &entry.keys {
            let n = st.refs.entry(*k).or_insert(0);
            *n = n.saturating_sub(1);
            self.shared.service.release(k);
        }
        tracing::debug!(job = %job, "job unregistered");
    }

    /// [`unregister_task`](Self::unregister_task) for [`ExecutionAttemptId::JOB`].
    pub fn unregister_job(&self, job: JobId) {
        self.unregister_task(job, ExecutionAttemptId::JOB)
    }

    /// The local files of the job's libraries, in the order of its first registration (the
    /// class path order of the original's class loader).
    pub fn library_paths(&self, job: JobId) -> Result<Vec<PathBuf>, LibraryError> {
        lock(&self.shared.state)
            .jobs
            .get(&job)
            .map(|e| e.paths.clone())
            .ok_or(LibraryError::NotRegistered(job))
    }

    /// The job's library keys, in registration order.
    pub fn library_keys(&self, job: JobId) -> Result<Vec<BlobKey>, LibraryError> {
        lock(&self.shared.state)
            .jobs
            .get(&job)
            .map(|e| e.keys.clone())
            .ok_or(LibraryError::NotRegistered(job))
    }

    /// Whether `job` is registered: some attempt (the job itself or one of its tasks) holds its
    /// libraries.
    pub fn is_registered(&self, job: JobId) -> bool {
        lock(&self.shared.state).jobs.contains_key(&job)
    }

    /// The local file of one library, fetched if needed (Flink's `getFile`). Not a reference:
    /// the clean-up may delete it if no job references it.
    pub fn get_file(&self, key: &BlobKey) -> Result<PathBuf, LibraryError> {
        Ok(self.shared.service.local_path(key)?)
    }

    /// Libraries with a reference count, including those at 0 not yet cleaned up (Flink's
    /// `getNumberOfCachedLibraries`).
    pub fn library_count(&self) -> usize {
        lock(&self.shared.state).refs.len()
    }

    /// References to one library, `None` if it is not tracked.
    pub fn reference_count(&self, key: &BlobKey) -> Option<u32> {
        lock(&self.shared.state).refs.get(key).copied()
    }

    /// Attempts holding the job (0 for an unknown job).
    pub fn reference_holders(&self, job: JobId) -> usize {
        lock(&self.shared.state)
            .jobs
            .get(&job)
            .map_or(0, |e| e.holders.len())
    }

    /// Runs a clean-up now, on this thread; returns how many libraries were deleted.
    pub fn run_cleanup_now(&self) -> usize {
        self.shared.cleanup()
    }

    /// What the manager has done and holds now (for metrics).
    pub fn stats(&self) -> LibraryStats {
        let st = lock(&self.shared.state);
        LibraryStats {
            cleanups: st.cycles,
            jobs: st.jobs.len() as u64,
            libraries: st.refs.len() as u64,
            ..st.counts.clone()
        }
    }

    /// Clean-up runs completed so far (periodic and [`run_cleanup_now`](Self::run_cleanup_now)).
    pub fn cleanup_cycles(&self) -> u64 {
        lock(&self.shared.state).cycles
    }

    /// Waits until more than `after` clean-up runs have completed, or `timeout` passes; returns
    /// whether they did. A run counted after a state change was observed started after it, so
    /// `wait_for_cleanup(m.cleanup_cycles(), t)` after an unregister waits for a run that saw it.
    pub fn wait_for_cleanup(&self, after: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = lock(&self.shared.state);
        while st.cycles <= after {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = match self.shared.cleaned.wait_timeout(st, deadline - now) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
        true
    }

    /// Stops the clean-up thread (woken at once) and joins it. Idempotent; registrations keep
    /// working afterwards, without periodic clean-up.
    pub fn shutdown(&self) {
        let tx = self.stop.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(tx) = tx {
            let _ = tx.send(());
        }
        let t = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = t
            && t.join().is_err()
        {
            tracing::error!("library clean-up thread panicked");
        }
    }

    /// Whether the clean-up thread is still running.
    pub fn is_running(&self) -> bool {
        self.thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|t| !t.is_finished())
    }
}

impl Drop for LibraryCacheManager {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_attempt_id_is_minus_one_minus_one() {
        let j = ExecutionAttemptId::JOB;
        assert_eq!(j.lower_part(), -1);
        assert_eq!(j.upper_part(), -1);
        assert_eq!(j.to_string(), "f".repeat(32));
        let a = ExecutionAttemptId::from_parts(0x0102030405060708, 9);
        assert_eq!(a.to_string(), "01020304050607080000000000000009");
        assert_ne!(ExecutionAttemptId::random(), ExecutionAttemptId::random());
    }
}
