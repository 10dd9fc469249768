//! `BlobCache`: the worker side's local cache of content-addressed blobs (Flink's `BlobCache`),
//! fed from one or more BLOB servers.
//!
//! # Layout
//! One flat directory (default: [`default_cache_dir`]):
//! - `blob_<40 hex>`: a complete, verified blob (the same name as the original's `cache/` files);
//! - `tmp-<40 hex>-<pid>-<n>`: a download in progress, renamed to `blob_<hex>` once complete;
//!   leftovers of a crash are removed when the cache opens;
//! - `.lock`: an advisory lock held while a cache is open on the directory, so that a second
//!   cache (in this or another process) cannot clean up the first one's downloads.
//!
//! # Guarantees
//! - A blob is downloaded at most once at a time: concurrent [`BlobCache::get`]s of the same
//!   missing key share one download ("single flight"), and all see its outcome.
//! - A download is checked against its key (SHA-1 over the bytes written), written to a temp file,
//!   fsynced, renamed into place, and the directory fsynced. A `blob_<hex>` file is therefore
//!   always complete and correct; a failed or interrupted download leaves nothing behind (after a
//!   crash, at most a `tmp-` file that the next open removes).
//! - Unlike the original, a failed attempt is retried with backoff and moves on to the next
//!   server (see [`CacheOptions`]).
//! - Blobs already held are served without contacting any server, so the cache keeps working
//!   after the servers are gone.
//!
//! # Holds and eviction
//! With a size cap ([`CacheOptions::capacity`]) the least recently used blobs are evicted once
//! the cached bytes exceed it, but **only blobs that nothing holds**. A blob is *held* while
//! - a [`CachedBlob`] returned by [`BlobCache::get`] for it is alive (the handle is a lease;
//!   clones count separately), or
//! - it is pinned by [`BlobCache::acquire`] and not yet [`BlobCache::release`]d the same number
//!   of times (the [`LibraryCacheManager`](crate::library::LibraryCacheManager) pins every
//!   library a registered job references).
//!
//! If every blob is held the cache may exceed its cap until holds end; eviction is re-checked
//! whenever a hold ends. "Recently used" means handed out by `get`/`acquire`; the order is kept
//! in memory, and a restart starts from the files' modification times.
//! [`BlobCache::delete`] is explicit and removes the file even while held (open memory maps stay
//! valid on Unix; the path of a live handle then names a missing file).
//!
//! # Restart
//! Opening a cache on a directory that already holds blobs reuses them. By default every
//! `blob_<hex>` file is re-hashed on open and dropped if it does not match its name
//! ([`CacheOptions::verify_on_open`]); a caller that trusts its disk may turn that off and skip
//! the cost of reading everything once.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use memmap2::Mmap;

use crate::client::BlobClient;
use crate::config::{ConfigError, Configuration, keys};
use crate::key::{BlobKey, KeyHasher};

/// Prefix of a complete blob file.
pub const BLOB_PREFIX: &str = "blob_";
/// Prefix of a download in progress.
pub const TEMP_PREFIX: &str = "tmp-";
const LOCK_FILE: &str = ".lock";

/// Default of `blob.fetch.retries`: attempts after the first.
pub const DEFAULT_RETRIES: u32 = 5;

/// Where a cache lives when no directory is given: `<default data dir>/cache`.
pub fn default_cache_dir() -> PathBuf {
    crate::config::default_data_dir().join("cache")
}

/// Errors of the [`BlobCache`]. Cloneable, so that every caller waiting on one shared download
/// gets its outcome.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CacheError {
    #[error("no BLOB server address configured")]
    NoServers,
    #[error("cannot use cache directory {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },
    #[error("cache directory {0} is in use by another BlobCache")]
    Locked(PathBuf),
    #[error("Failed to fetch BLOB {key} from {servers} after {attempts} attempt(s): {last}")]
    Fetch {
        key: BlobKey,
        servers: String,
        attempts: u32,
        /// The last attempt's failure.
        last: String,
    },
    #[error("cannot store BLOB {key} under {path}: {source}")]
    Local {
        key: BlobKey,
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },
    #[error("cannot delete BLOB file {path}: {source}")]
    Delete {
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },
    #[error("cannot map BLOB file {path}: {source}")]
    Map {
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },
    #[error("the download of BLOB {0} was abandoned (the downloading thread panicked)")]
    Abandoned(BlobKey),
}

impl CacheError {
    fn dir(path: &Path, e: io::Error) -> Self {
        CacheError::Dir {
            path: path.to_path_buf(),
            source: Arc::new(e),
        }
    }
}

/// How to open a [`BlobCache`].
#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// BLOB servers, tried in turn; the first is preferred until it fails, after which the one
    /// that last served a download is tried first.
    pub servers: Vec<SocketAddr>,
    /// The cache directory (default [`default_cache_dir`]).
    pub dir: PathBuf,
    /// Attempts after the first (`blob.fetch.retries`, default 5), counted over all servers:
    /// a fetch makes at most `1 + retries` connection attempts in total.
    pub retries: u32,
    /// Pause after every failed round through all servers; it doubles each round up to
    /// `max_backoff`, with jitter (a random half of it is added to the other half). A failure
    /// followed by an untried server moves on at once.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Timeout of the connect and of every read and write of a download.
    pub timeout: Duration,
    /// Size cap in bytes over all cached blobs; `None` (default) keeps everything.
    pub capacity: Option<u64>,
    /// Re-hash every existing blob file on open and drop the ones that do not match (default
    /// true). Off: files named `blob_<hex>` are trusted as they are.
    pub verify_on_open: bool,
}

impl CacheOptions {
    /// Defaults for the given servers, in [`default_cache_dir`].
    pub fn new(servers: impl IntoIterator<Item = SocketAddr>) -> Self {
        CacheOptions {
            servers: servers.into_iter().collect(),
            dir: default_cache_dir(),
            retries: DEFAULT_RETRIES,
            backoff: Duration::from_millis(20),
            max_backoff: Duration::from_secs(2),
            timeout: Duration::from_secs(60),
            capacity: None,
            verify_on_open: true,
        }
    }

    /// Defaults plus Flink's keys: `blob.fetch.retries` (a negative value logs a warning and
    /// means 0, as in the original) and `blob.storage.directory` (the cache then lives in its
    /// `cache` subdirectory).
    pub fn from_config(
        servers: impl IntoIterator<Item = SocketAddr>,
        conf: &Configuration,
    ) -> Result<Self, ConfigError> {
        let mut o = Self::new(servers);
        let retries = conf.get_i64(keys::FETCH_RETRIES, DEFAULT_RETRIES as i64)?;
        o.retries = if retries < 0 {
            tracing::warn!(
                key = keys::FETCH_RETRIES,
                value = retries,
                "negative number of retries; using 0"
            );
            0
        } else {
            u32::try_from(retries).unwrap_or(u32::MAX)
        };
        if let Some(d) = conf.get(keys::STORAGE_DIRECTORY) {
            o.dir = PathBuf::from(d).join("cache");
        }
        Ok(o)
    }

    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = dir.into();
        self
    }

    pub fn retries(mut self, n: u32) -> Self {
        self.retries = n;
        self
    }

    pub fn backoff(mut self, first: Duration, max: Duration) -> Self {
        self.backoff = first;
        self.max_backoff = max;
        self
    }

    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    pub fn capacity(mut self, bytes: Option<u64>) -> Self {
        self.capacity = bytes;
        self
    }

    pub fn verify_on_open(mut self, on: bool) -> Self {
        self.verify_on_open = on;
        self
    }

    pub fn open(self) -> Result<BlobCache, CacheError> {
        BlobCache::open(self)
    }
}

/// Counters of a [`BlobCache`] since it was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Requests answered from the local copy.
    pub hits: u64,
    /// Requests that started a download (each shared by every concurrent request for the key).
    pub misses: u64,
    /// Requests that waited for a download another request had started (single flight); each
    /// then counts as a hit, or fails with that download's error.
    pub shared: u64,
    /// Connection attempts made to servers (one per attempt, so retries count).
    pub attempts: u64,
    /// Attempts that failed (remote errors, refused or dropped connections, corrupt data).
    pub failed_attempts: u64,
    /// Completed downloads.
    pub downloads: u64,
    /// Bytes downloaded by completed downloads.
    pub downloaded_bytes: u64,
    /// Blobs removed to stay under the size cap.
    pub evictions: u64,
    /// Blobs held now.
    pub blobs: u64,
    /// Bytes held now.
    pub bytes: u64,
}

#[derive(Debug)]
struct Entry {
    len: u64,
    tick: u64,
}

#[derive(Default)]
struct State {
    entries: HashMap<BlobKey, Entry>,
    /// Use order: tick -> key.
    lru: BTreeMap<u64, BlobKey>,
    /// Outstanding leases plus pins per key (independent of whether the file is present).
    holds: HashMap<BlobKey, usize>,
    /// The pins among `holds` ([`BlobCache::acquire`] not yet released), so that an extra
    /// [`BlobCache::release`] cannot end a [`CachedBlob`]'s lease.
    pins: HashMap<BlobKey, usize>,
    inflight: HashMap<BlobKey, Arc<Flight>>,
    tick: u64,
    bytes: u64,
}

impl State {
    fn touch(&mut self, key: &BlobKey) {
        self.tick += 1;
        let tick = self.tick;
        if let Some(e) = self.entries.get_mut(key) {
            self.lru.remove(&e.tick);
            e.tick = tick;
            self.lru.insert(tick, *key);
        }
    }

    fn insert(&mut self, key: BlobKey, len: u64) {
        self.remove(&key);
        self.tick += 1;
        self.entries.insert(
            key,
            Entry {
                len,
                tick: self.tick,
            },
        );
        self.lru.insert(self.tick, key);
        self.bytes += len;
    }

    fn remove(&mut self, key: &BlobKey) -> bool {
        match self.entries.remove(key) {
            Some(e) => {
                self.lru.remove(&e.tick);
                self.bytes -= e.len;
                true
            }
            None => false,
        }
    }

    fn hold(&mut self, key: BlobKey) {
        *self.holds.entry(key).or_insert(0) += 1;
    }

    /// Ends one pin (and so one hold); false when the key has no pin to end.
    fn unpin(&mut self, key: &BlobKey) -> bool {
        match self.pins.get_mut(key) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                self.pins.remove(key);
            }
            None => return false,
        }
        self.unhold(key)
    }

    /// Ends one hold; true when the key is no longer held.
    fn unhold(&mut self, key: &BlobKey) -> bool {
        match self.holds.get_mut(key) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                self.holds.remove(key);
                true
            }
            None => true,
        }
    }
}

/// One shared download: the first requester fetches, the others wait for `done`.
#[derive(Default)]
struct Flight {
    done: Mutex<Option<Result<(), CacheError>>>,
    cv: Condvar,
}

impl Flight {
    fn complete(&self, r: Result<(), CacheError>) {
        let mut d = lock(&self.done);
        *d = Some(r);
        self.cv.notify_all();
    }

    fn wait(&self) -> Result<(), CacheError> {
        let mut d = lock(&self.done);
        loop {
            if let Some(r) = d.as_ref() {
                return r.clone();
            }
            d = self.cv.wait(d).unwrap_or_else(|e| e.into_inner());
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    shared: AtomicU64,
    attempts: AtomicU64,
    failed_attempts: AtomicU64,
    downloads: AtomicU64,
    downloaded_bytes: AtomicU64,
    evictions: AtomicU64,
}

struct Inner {
    opts: CacheOptions,
    state: Mutex<State>,
    counters: Counters,
    /// Index into `servers` of the one to try first.
    preferred: AtomicUsize,
    /// Keeps the directory lock for the cache's lifetime.
    _lock: File,
}

/// The worker-side blob cache. Cheap to clone (clones share one cache); it has no threads of
/// its own, so dropping the last clone (and every [`CachedBlob`]) releases everything.
#[derive(Clone)]
pub struct BlobCache {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for BlobCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobCache")
            .field("dir", &self.inner.opts.dir)
            .field("servers", &self.inner.opts.servers)
            .finish()
    }
}

/// A cached blob handed out by [`BlobCache::get`]. It is a lease: while it (or a clone) lives,
/// the blob is not evicted.
pub struct CachedBlob {
    cache: Arc<Inner>,
    key: BlobKey,
    path: PathBuf,
    len: u64,
}

impl std::fmt::Debug for CachedBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedBlob")
            .field("key", &self.key)
            .field("path", &self.path)
            .field("len", &self.len)
            .finish()
    }
}

impl CachedBlob {
    pub fn key(&self) -> BlobKey {
        self.key
    }

    /// The local file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A read-only memory map of the file. The map stays valid on its own, even after the
    /// handle is dropped and the blob evicted or deleted (Unix keeps an unlinked file's data
    /// while it is mapped).
    pub fn map(&self) -> Result<Mmap, CacheError> {
        let err = |e| CacheError::Map {
            path: self.path.clone(),
            source: Arc::new(e),
        };
        let f = File::open(&self.path).map_err(err)?;
        // SAFETY: the cache never writes to a `blob_` file after renaming it into place; it is
        // replaced only by rename and removed only by unlink, neither of which changes the
        // mapped inode. Only an outside process writing into the cache directory could, and the
        // directory belongs to the cache (see the module docs).
        unsafe { Mmap::map(&f) }.map_err(err)
    }

    /// The whole blob in memory.
    pub fn read(&self) -> Result<Vec<u8>, CacheError> {
        Ok(self.map()?.to_vec())
    }
}

impl Clone for CachedBlob {
    fn clone(&self) -> Self {
        lock(&self.cache.state).hold(self.key);
        CachedBlob {
            cache: Arc::clone(&self.cache),
            key: self.key,
            path: self.path.clone(),
            len: self.len,
        }
    }
}

impl Drop for CachedBlob {
    fn drop(&mut self) {
        self.cache.end_hold(&self.key, false);
    }
}

impl BlobCache {
    /// Opens (creating if needed) the cache directory, removes leftover temp files and takes
    /// over the blobs already there (re-hashed first unless `verify_on_open` is off).
    pub fn open(opts: CacheOptions) -> Result<BlobCache, CacheError> {
        if opts.servers.is_empty() {
            return Err(CacheError::NoServers);
        }
        let dir = &opts.dir;
        fs::create_dir_all(dir).map_err(|e| CacheError::dir(dir, e))?;
        let lock_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(LOCK_FILE))
            .map_err(|e| CacheError::dir(dir, e))?;
        match lock_file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(CacheError::Locked(dir.clone())),
            Err(fs::TryLockError::Error(e)) => return Err(CacheError::dir(dir, e)),
        }
        let state = scan_dir(dir, opts.verify_on_open)?;
        tracing::info!(
            dir = %dir.display(),
            blobs = state.entries.len(),
            bytes = state.bytes,
            "BLOB cache opened"
        );
        let cache = BlobCache {
            inner: Arc::new(Inner {
                opts,
                state: Mutex::new(state),
                counters: Counters::default(),
                preferred: AtomicUsize::new(0),
                _lock: lock_file,
            }),
        };
        cache.inner.evict(&mut lock(&cache.inner.state));
        Ok(cache)
    }

    pub fn dir(&self) -> &Path {
        &self.inner.opts.dir
    }

    pub fn servers(&self) -> &[SocketAddr] {
        &self.inner.opts.servers
    }

    pub fn options(&self) -> &CacheOptions {
        &self.inner.opts
    }

    /// Where the blob's file is (or would be).
    pub fn path_of(&self, key: &BlobKey) -> PathBuf {
        blob_path(&self.inner.opts.dir, key)
    }

    /// Whether the blob is cached now.
    pub fn contains(&self, key: &BlobKey) -> bool {
        lock(&self.inner.state).entries.contains_key(key)
    }

    /// The blob, downloaded first if it is not cached (sharing a download already under way).
    /// The returned handle holds the blob against eviction while it lives.
    pub fn get(&self, key: &BlobKey) -> Result<CachedBlob, CacheError> {
        let len = self.inner.get_held(key)?;
        Ok(CachedBlob {
            cache: Arc::clone(&self.inner),
            key: *key,
            path: self.path_of(key),
            len,
        })
    }

    /// Like [`get`](Self::get), but the hold is a pin that lasts until a matching
    /// [`release`](Self::release) instead of a handle; returns the local path.
    pub fn acquire(&self, key: &BlobKey) -> Result<PathBuf, CacheError> {
        self.inner.get_held(key)?;
        // The hold taken above becomes a pin (no eviction can come between: it is held).
        *lock(&self.inner.state).pins.entry(*key).or_insert(0) += 1;
        Ok(self.path_of(key))
    }

    /// Ends one hold taken by [`acquire`](Self::acquire). Extra releases are ignored (they
    /// never end the lease of a live [`CachedBlob`]).
    pub fn release(&self, key: &BlobKey) {
        self.inner.end_hold(key, true);
    }

    /// Drops the local copy (the server is not told). A blob that is not cached is not an error.
    /// Removes the file even while it is held (see the module docs).
    pub fn delete(&self, key: &BlobKey) -> Result<(), CacheError> {
        let path = self.path_of(key);
        let mut st = lock(&self.inner.state);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                st.remove(key);
                return Ok(());
            }
            Err(e) => {
                return Err(CacheError::Delete {
                    path,
                    source: Arc::new(e),
                });
            }
        }
        st.remove(key);
        drop(st);
        sync_dir(&self.inner.opts.dir);
        tracing::debug!(key = %key, "cached BLOB deleted");
        Ok(())
    }

    /// Every cached key, least recently used first.
    pub fn keys(&self) -> Vec<BlobKey> {
        lock(&self.inner.state).lru.values().copied().collect()
    }

    pub fn stats(&self) -> CacheStats {
        let c = &self.inner.counters;
        let st = lock(&self.inner.state);
        CacheStats {
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            shared: c.shared.load(Ordering::Relaxed),
            attempts: c.attempts.load(Ordering::Relaxed),
            failed_attempts: c.failed_attempts.load(Ordering::Relaxed),
            downloads: c.downloads.load(Ordering::Relaxed),
            downloaded_bytes: c.downloaded_bytes.load(Ordering::Relaxed),
            evictions: c.evictions.load(Ordering::Relaxed),
            blobs: st.entries.len() as u64,
            bytes: st.bytes,
        }
    }
}

/// How an attempt failed.
enum AttemptError {
    /// The server or the transfer failed: try again, perhaps elsewhere.
    Remote(String),
    /// Storing locally failed: retrying a server would not help.
    Local(CacheError),
}

/// Ends a flight if its leader unwinds without completing it, so waiters do not hang.
struct FlightGuard<'a> {
    inner: &'a Inner,
    key: BlobKey,
    flight: Arc<Flight>,
    armed: bool,
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            lock(&self.inner.state).inflight.remove(&self.key);
            self.flight.complete(Err(CacheError::Abandoned(self.key)));
        }
    }
}

impl Inner {
    /// Makes the blob present and takes one hold on it; returns its length.
    fn get_held(&self, key: &BlobKey) -> Result<u64, CacheError> {
        loop {
            let mut st = lock(&self.state);
            if let Some(len) = st.entries.get(key).map(|e| e.len) {
                st.touch(key);
                st.hold(*key);
                self.counters.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(len);
            }
            if let Some(f) = st.inflight.get(key).cloned() {
                drop(st);
                // Another request is downloading this key: share its outcome, then look again.
                self.counters.shared.fetch_add(1, Ordering::Relaxed);
                f.wait()?;
                continue;
            }
            let flight = Arc::new(Flight::default());
            st.inflight.insert(*key, Arc::clone(&flight));
            drop(st);
            self.counters.misses.fetch_add(1, Ordering::Relaxed);
            let mut guard = FlightGuard {
                inner: self,
                key: *key,
                flight,
                armed: true,
            };
            let r = self.fetch(key);
            let mut st = lock(&self.state);
            st.inflight.remove(key);
            let out = match r {
                Ok(len) => {
                    st.insert(*key, len);
                    st.hold(*key);
                    self.evict(&mut st);
                    Ok(len)
                }
                Err(e) => Err(e),
            };
            drop(st);
            guard.armed = false;
            guard
                .flight
                .complete(out.as_ref().map(|_| ()).map_err(Clone::clone));
            return out;
        }
    }

    /// Ends a pin (`pin`) or a lease; eviction runs again once the key is no longer held.
    fn end_hold(&self, key: &BlobKey, pin: bool) {
        let mut st = lock(&self.state);
        let unheld = if pin { st.unpin(key) } else { st.unhold(key) };
        if unheld {
            self.evict(&mut st);
        }
    }

    /// Removes unheld blobs, least recently used first, until the cap is met.
    fn evict(&self, st: &mut State) {
        let Some(cap) = self.opts.capacity else {
            return;
        };
        if st.bytes <= cap {
            return;
        }
        let victims: Vec<BlobKey> = st
            .lru
            .values()
            .filter(|k| !st.holds.contains_key(k))
            .copied()
            .collect();
        let mut removed = false;
        for key in victims {
            if st.bytes <= cap {
                break;
            }
            let path = blob_path(&self.opts.dir, &key);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot evict BLOB");
                    continue;
                }
            }
            st.remove(&key);
            removed = true;
            self.counters.evictions.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(key = %key, "BLOB evicted (size cap)");
        }
        if removed {
            sync_dir(&self.opts.dir);
        }
        if st.bytes > cap {
            tracing::debug!(
                bytes = st.bytes,
                cap,
                "BLOB cache above its cap: the rest is held"
            );
        }
    }

    /// Downloads `key` into place, with retries across servers; returns its length.
    fn fetch(&self, key: &BlobKey) -> Result<u64, CacheError> {
        let servers = &self.opts.servers;
        let n = servers.len();
        let first = self.preferred.load(Ordering::Relaxed) % n;
        let total = self.opts.retries.saturating_add(1);
        let mut last = String::new();
        for attempt in 0..total {
            let round = attempt as usize / n;
            if attempt > 0 && (attempt as usize).is_multiple_of(n) {
                let pause = backoff(self.opts.backoff, self.opts.max_backoff, round);
                tracing::debug!(key = %key, ?pause, "every server failed; backing off");
                std::thread::sleep(pause);
            }
            let idx = (first + attempt as usize) % n;
            let addr = servers[idx];
            self.counters.attempts.fetch_add(1, Ordering::Relaxed);
            match self.attempt(key, addr) {
                Ok(len) => {
                    self.preferred.store(idx, Ordering::Relaxed);
                    self.counters.downloads.fetch_add(1, Ordering::Relaxed);
                    self.counters
                        .downloaded_bytes
                        .fetch_add(len, Ordering::Relaxed);
                    tracing::debug!(key = %key, %addr, len, attempt, "BLOB downloaded");
                    return Ok(len);
                }
                Err(AttemptError::Remote(msg)) => {
                    self.counters
                        .failed_attempts
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        key = %key,
                        %addr,
                        attempt = attempt + 1,
                        of = total,
                        error = %msg,
                        "BLOB download attempt failed"
                    );
                    last = format!("{addr}: {msg}");
                }
                Err(AttemptError::Local(e)) => {
                    self.counters
                        .failed_attempts
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::error!(key = %key, error = %e, "cannot store downloaded BLOB");
                    return Err(e);
                }
            }
        }
        Err(CacheError::Fetch {
            key: *key,
            servers: servers
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            attempts: total,
            last,
        })
    }

    /// One attempt: a new connection, a GET, the body into a temp file, then the rename.
    fn attempt(&self, key: &BlobKey, addr: SocketAddr) -> Result<u64, AttemptError> {
        let remote = |e: &dyn std::fmt::Display| AttemptError::Remote(e.to_string());
        let mut client =
            BlobClient::connect_timeout(&addr, self.opts.timeout).map_err(|e| remote(&e))?;
        let mut dl = client.get(*key).map_err(|e| remote(&e))?;
        let len = dl.len();
        let mut file = AtomicFile::create(&self.opts.dir, key).map_err(AttemptError::Local)?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match dl.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(remote(&dl.error_of(e))),
            };
            file.write(&buf[..n]).map_err(AttemptError::Local)?;
        }
        drop(dl);
        if file.written() != len {
            return Err(AttemptError::Remote(format!(
                "received {} of {len} bytes",
                file.written()
            )));
        }
        file.commit().map_err(|e| match e {
            CommitError::Mismatch(actual) => AttemptError::Remote(format!(
                "Detected data corruption during transfer (got {actual})"
            )),
            CommitError::Local(e) => AttemptError::Local(e),
        })
    }
}

/// `base * 2^(round-1)`, capped, with half of it randomised.
fn backoff(base: Duration, max: Duration, round: usize) -> Duration {
    let shift = round.saturating_sub(1).min(20) as u32;
    let d = base.saturating_mul(1u32 << shift).min(max);
    let half = d / 2;
    let jitter_ns = half.as_nanos() as u64;
    let jitter = if jitter_ns == 0 {
        0
    } else {
        crate::key::random_u64() % (jitter_ns + 1)
    };
    half + Duration::from_nanos(jitter)
}

pub(crate) fn blob_path(dir: &Path, key: &BlobKey) -> PathBuf {
    dir.join(format!("{BLOB_PREFIX}{key}"))
}

/// fsyncs a directory so a rename or unlink in it is durable (no-op where unsupported).
pub(crate) fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot fsync directory");
    }
    #[cfg(not(unix))]
    let _ = dir;
}

pub(crate) enum CommitError {
    /// The bytes written do not hash to the key (carries the actual key).
    Mismatch(BlobKey),
    Local(CacheError),
}

/// A blob being written: a temp file in the target directory, hashed as it is written, that
/// becomes `blob_<hex>` on [`commit`](Self::commit) and is removed if dropped before.
pub(crate) struct AtomicFile {
    key: BlobKey,
    dir: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
    hasher: KeyHasher,
    written: u64,
}

impl AtomicFile {
    pub(crate) fn create(dir: &Path, key: &BlobKey) -> Result<AtomicFile, CacheError> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let tmp = dir.join(format!(
            "{TEMP_PREFIX}{key}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| CacheError::Local {
                key: *key,
                path: tmp.clone(),
                source: Arc::new(e),
            })?;
        Ok(AtomicFile {
            key: *key,
            dir: dir.to_path_buf(),
            tmp,
            out: Some(BufWriter::with_capacity(256 * 1024, f)),
            hasher: KeyHasher::new(),
            written: 0,
        })
    }

    fn local(&self, e: io::Error) -> CacheError {
        CacheError::Local {
            key: self.key,
            path: self.tmp.clone(),
            source: Arc::new(e),
        }
    }

    pub(crate) fn write(&mut self, data: &[u8]) -> Result<(), CacheError> {
        let r = match self.out.as_mut() {
            Some(w) => w.write_all(data),
            None => Err(io::Error::other("file already committed")),
        };
        r.map_err(|e| self.local(e))?;
        self.hasher.update(data);
        self.written += data.len() as u64;
        Ok(())
    }

    pub(crate) fn written(&self) -> u64 {
        self.written
    }

    /// Checks the hash, fsyncs, renames into place and fsyncs the directory; returns the length.
    pub(crate) fn commit(mut self) -> Result<u64, CommitError> {
        let actual = std::mem::take(&mut self.hasher).finish();
        if actual != self.key {
            return Err(CommitError::Mismatch(actual));
        }
        let Some(w) = self.out.take() else {
            return Err(CommitError::Local(
                self.local(io::Error::other("file already committed")),
            ));
        };
        let f = w
            .into_inner()
            .map_err(|e| CommitError::Local(self.local(e.into_error())))?;
        f.sync_all()
            .map_err(|e| CommitError::Local(self.local(e)))?;
        drop(f);
        let dest = blob_path(&self.dir, &self.key);
        fs::rename(&self.tmp, &dest).map_err(|e| {
            CommitError::Local(CacheError::Local {
                key: self.key,
                path: dest.clone(),
                source: Arc::new(e),
            })
        })?;
        // Renamed: nothing left for Drop to clean.
        self.tmp = PathBuf::new();
        sync_dir(&self.dir);
        Ok(self.written)
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        self.out.take();
        if !self.tmp.as_os_str().is_empty()
            && let Err(e) = fs::remove_file(&self.tmp)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.tmp.display(), error = %e, "cannot remove temp file");
        }
    }
}

/// Removes the `tmp-` files in `dir` (downloads cut short by a crash).
pub(crate) fn clean_temp_files(dir: &Path) -> Result<(), CacheError> {
    for ent in fs::read_dir(dir).map_err(|e| CacheError::dir(dir, e))? {
        let ent = ent.map_err(|e| CacheError::dir(dir, e))?;
        let name = ent.file_name();
        if name.to_str().is_some_and(|n| n.starts_with(TEMP_PREFIX)) {
            let p = ent.path();
            match fs::remove_file(&p) {
                Ok(()) => tracing::info!(path = %p.display(), "removed leftover temp file"),
                Err(e) => {
                    tracing::warn!(path = %p.display(), error = %e, "cannot remove temp file")
                }
            }
        }
    }
    Ok(())
}

fn scan_dir(dir: &Path, verify: bool) -> Result<State, CacheError> {
    clean_temp_files(dir)?;
    let mut found: Vec<(SystemTime, BlobKey, u64)> = Vec::new();
    for ent in fs::read_dir(dir).map_err(|e| CacheError::dir(dir, e))? {
        let ent = ent.map_err(|e| CacheError::dir(dir, e))?;
        let name = ent.file_name();
        let Some(hex) = name.to_str().and_then(|n| n.strip_prefix(BLOB_PREFIX)) else {
            continue;
        };
        let path = ent.path();
        let Ok(key) = hex.parse::<BlobKey>() else {
            tracing::warn!(path = %path.display(), "ignoring a file that is not named by a BLOB key");
            continue;
        };
        let meta = match ent.metadata() {
            Ok(m) if m.is_file() => m,
            Ok(_) => continue,
            Err(e) => return Err(CacheError::dir(dir, e)),
        };
        if verify {
            match hash_file(&path) {
                Ok(actual) if actual == key => {}
                Ok(actual) => {
                    tracing::warn!(
                        path = %path.display(),
                        %actual,
                        "cached BLOB does not match its key; removing it"
                    );
                    if let Err(e) = fs::remove_file(&path) {
                        return Err(CacheError::Delete {
                            path,
                            source: Arc::new(e),
                        });
                    }
                    continue;
                }
                Err(e) => return Err(CacheError::dir(&path, e)),
            }
        }
        let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        found.push((mtime, key, meta.len()));
    }
    found.sort();
    let mut st = State::default();
    for (_, key, len) in found {
        st.insert(key, len);
    }
    Ok(st)
}

fn hash_file(path: &Path) -> io::Result<BlobKey> {
    let mut f = File::open(path)?;
    let mut h = KeyHasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match f.read(&mut buf) {
            Ok(0) => return Ok(h.finish()),
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let b = Duration::from_millis(100);
        let m = Duration::from_millis(300);
        for _ in 0..50 {
            let d1 = backoff(b, m, 1);
            assert!(d1 >= Duration::from_millis(50) && d1 <= b, "{d1:?}");
            let d2 = backoff(b, m, 2);
            assert!(d2 >= Duration::from_millis(100) && d2 <= 2 * b, "{d2:?}");
            let d9 = backoff(b, m, 9);
            assert!(d9 >= Duration::from_millis(150) && d9 <= m, "{d9:?}");
        }
        assert_eq!(backoff(Duration::ZERO, m, 3), Duration::ZERO);
    }

    #[test]
    fn atomic_file_leaves_nothing_when_dropped_or_mismatched() {
        let dir = tempfile::tempdir().unwrap();
        let key = BlobKey::of(b"abc");
        let mut f = AtomicFile::create(dir.path(), &key).unwrap();
        f.write(b"ab").unwrap();
        drop(f);
        let mut f = AtomicFile::create(dir.path(), &key).unwrap();
        f.write(b"abd").unwrap();
        assert!(matches!(f.commit(), Err(CommitError::Mismatch(_))));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        let mut f = AtomicFile::create(dir.path(), &key).unwrap();
        f.write(b"abc").unwrap();
        assert!(matches!(f.commit(), Ok(3)));
        assert_eq!(fs::read(blob_path(dir.path(), &key)).unwrap(), b"abc");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
