//! [`CacheOptions`]: how to open a cache, with Flink's configuration keys.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::store::RecoveryStore;
use std::time::Duration;

use crate::config::{ConfigError, Configuration, keys};

/// Default of `blob.fetch.retries`: attempts after the first.
pub const DEFAULT_RETRIES: u32 = 5;

/// Where a cache lives when no directory is given: `<default data dir>/cache`.
pub fn default_cache_dir() -> PathBuf {
    crate::config::default_data_dir().join("cache")
}

/// How to open a [`BlobCache`](super::BlobCache).
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
    /// The longest pause between rounds (see `backoff`).
    pub max_backoff: Duration,
    /// Timeout of the connect and of every read and write of a download.
    pub timeout: Duration,
    /// Size cap in bytes over all cached blobs; `None` (default) keeps everything.
    pub capacity: Option<u64>,
    /// Re-hash every existing blob file on open and drop the ones that do not match (default
    /// true). Off: files named `blob_<hex>` are trusted as they are.
    pub verify_on_open: bool,
    /// The servers' recovery store (default none): when every attempt at every server has
    /// failed, the blob is read from it instead, and checked against its key like any download.
    /// Jobs keep starting while every blob server is down.
    pub recovery: Option<Arc<dyn RecoveryStore>>,
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
            recovery: None,
        }
    }

    /// Sets [`recovery`](Self::recovery): e.g.
    /// `RecoveryTarget::parse(uri)?.open(&conf)?` for the URI the servers were given.
    pub fn recovery(mut self, store: Arc<dyn RecoveryStore>) -> Self {
        self.recovery = Some(store);
        self
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

    /// Sets [`dir`](Self::dir).
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = dir.into();
        self
    }

    /// Sets [`retries`](Self::retries).
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = n;
        self
    }

    /// Sets [`backoff`](Self::backoff) and [`max_backoff`](Self::max_backoff).
    pub fn backoff(mut self, first: Duration, max: Duration) -> Self {
        self.backoff = first;
        self.max_backoff = max;
        self
    }

    /// Sets [`timeout`](Self::timeout).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Sets [`capacity`](Self::capacity).
    pub fn capacity(mut self, bytes: Option<u64>) -> Self {
        self.capacity = bytes;
        self
    }

    /// Sets [`verify_on_open`](Self::verify_on_open).
    pub fn verify_on_open(mut self, on: bool) -> Self {
        self.verify_on_open = on;
        self
    }
}
