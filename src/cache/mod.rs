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
//!
//! # Inside
//! This file holds the API, the single-flight `get` and eviction, over one lock. Below it, each
//! in its own file: `holds` (use order and holds, no I/O), `flight` (a shared download's
//! outcome), `fetch` (attempts over the servers, backoff), `blobfile` (a hash-checked
//! `AtomicFile` (`src/fsutil.rs`) named by its key), `dir` (file names, lock, scan at open),
//! `options`, `error`, `stats`.

mod blobfile;
mod dir;
mod error;
mod fetch;
mod flight;
mod holds;
mod options;
mod stats;

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};

use memmap2::Mmap;

pub(crate) use blobfile::{BlobFile, CommitError};
pub(crate) use dir::blob_path;
pub use dir::{BLOB_PREFIX, TEMP_PREFIX};
pub use error::CacheError;
pub use options::{CacheOptions, DEFAULT_RETRIES, default_cache_dir};
pub use stats::CacheStats;

use crate::fsutil::sync_dir_or_warn;
use crate::key::BlobKey;
use flight::{Flight, lock};
use holds::Holds;
use stats::Counters;

/// Everything behind the cache's one lock: checking for a blob and joining its download happen
/// together, so a request never starts a second download of a key whose first just finished.
#[derive(Default)]
struct State {
    holds: Holds,
    inflight: HashMap<BlobKey, Arc<Flight>>,
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
    /// The blob's key.
    pub fn key(&self) -> BlobKey {
        self.key
    }

    /// The local file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The blob's length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the blob is empty.
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
        lock(&self.cache.state).holds.hold(self.key);
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

impl CacheOptions {
    /// Opens a cache with these options ([`BlobCache::open`]).
    pub fn open(self) -> Result<BlobCache, CacheError> {
        BlobCache::open(self)
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
        let lock_file = dir::lock_dir(dir)?;
        let holds = dir::scan(dir, opts.verify_on_open)?;
        tracing::info!(
            dir = %dir.display(),
            blobs = holds.count(),
            bytes = holds.bytes(),
            "BLOB cache opened"
        );
        let cache = BlobCache {
            inner: Arc::new(Inner {
                opts,
                state: Mutex::new(State {
                    holds,
                    inflight: HashMap::new(),
                }),
                counters: Counters::default(),
                preferred: AtomicUsize::new(0),
                _lock: lock_file,
            }),
        };
        cache.inner.evict(&mut lock(&cache.inner.state).holds);
        Ok(cache)
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.inner.opts.dir
    }

    /// The servers downloads come from.
    pub fn servers(&self) -> &[SocketAddr] {
        &self.inner.opts.servers
    }

    /// The options the cache was opened with.
    pub fn options(&self) -> &CacheOptions {
        &self.inner.opts
    }

    /// Where the blob's file is (or would be).
    pub fn path_of(&self, key: &BlobKey) -> PathBuf {
        blob_path(&self.inner.opts.dir, key)
    }

    /// Whether the blob is cached now.
    pub fn contains(&self, key: &BlobKey) -> bool {
        lock(&self.inner.state).holds.contains(key)
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
        lock(&self.inner.state).holds.pin_held(*key);
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
                st.holds.remove(key);
                return Ok(());
            }
            Err(e) => {
                return Err(CacheError::Delete {
                    path,
                    source: Arc::new(e),
                });
            }
        }
        st.holds.remove(key);
        drop(st);
        sync_dir_or_warn(&self.inner.opts.dir);
        tracing::debug!(key = %key, "cached BLOB deleted");
        Ok(())
    }

    /// Every cached key, least recently used first.
    pub fn keys(&self) -> Vec<BlobKey> {
        lock(&self.inner.state).holds.keys().copied().collect()
    }

    /// The counters since the cache was opened, and what it holds now.
    pub fn stats(&self) -> CacheStats {
        let st = lock(&self.inner.state);
        self.inner
            .counters
            .snapshot(st.holds.count() as u64, st.holds.bytes())
    }
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
    /// Makes the blob present and takes one hold on it; returns its length. The first request
    /// for a missing key downloads it; concurrent ones wait for that download (single flight).
    fn get_held(&self, key: &BlobKey) -> Result<u64, CacheError> {
        loop {
            let mut st = lock(&self.state);
            if let Some(len) = st.holds.len_of(key) {
                st.holds.touch(key);
                st.holds.hold(*key);
                Counters::bump(&self.counters.hits);
                return Ok(len);
            }
            if let Some(f) = st.inflight.get(key).cloned() {
                drop(st);
                // Another request is downloading this key: share its outcome, then look again.
                Counters::bump(&self.counters.shared);
                f.wait()?;
                continue;
            }
            let flight = Arc::new(Flight::default());
            st.inflight.insert(*key, Arc::clone(&flight));
            drop(st);
            Counters::bump(&self.counters.misses);
            let mut guard = FlightGuard {
                inner: self,
                key: *key,
                flight,
                armed: true,
            };
            let r = fetch::fetch(&self.opts, &self.preferred, &self.counters, key);
            let mut st = lock(&self.state);
            st.inflight.remove(key);
            let out = match r {
                Ok(len) => {
                    st.holds.insert(*key, len);
                    st.holds.hold(*key);
                    self.evict(&mut st.holds);
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
        let h = &mut st.holds;
        let unheld = if pin { h.unpin(key) } else { h.unhold(key) };
        if unheld {
            self.evict(h);
        }
    }

    /// Removes unheld blobs, least recently used first, until the cap is met.
    fn evict(&self, h: &mut Holds) {
        let Some(cap) = self.opts.capacity else {
            return;
        };
        if h.bytes() <= cap {
            return;
        }
        let mut removed = false;
        for key in h.unheld() {
            if h.bytes() <= cap {
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
            h.remove(&key);
            removed = true;
            Counters::bump(&self.counters.evictions);
            tracing::debug!(key = %key, "BLOB evicted (size cap)");
        }
        if removed {
            sync_dir_or_warn(&self.opts.dir);
        }
        if h.bytes() > cap {
            tracing::debug!(
                bytes = h.bytes(),
                cap,
                "BLOB cache above its cap: the rest is held"
            );
        }
    }
}
