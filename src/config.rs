//! Configuration: Flink's key names where they exist, and the embedded default location.

use std::path::PathBuf;

/// Where a store lives when none is given: `$BLOBVAULT_DIR`, else `$XDG_DATA_HOME/blobvault`,
/// else `~/.local/share/blobvault`, else `<temp>/blobvault`.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("BLOBVAULT_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("blobvault");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(h).join(".local/share/blobvault");
    }
    std::env::temp_dir().join("blobvault")
}

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

/// Flink's configuration keys that blobvault reads.
pub mod keys {
    pub const FETCH_CONCURRENT: &str = "blob.fetch.num-concurrent";
    pub const FETCH_BACKLOG: &str = "blob.fetch.backlog";
    pub const FETCH_RETRIES: &str = "blob.fetch.retries";
    pub const SERVER_PORT: &str = "blob.server.port";
    pub const STORAGE_DIRECTORY: &str = "blob.storage.directory";
    pub const RECOVERY_MODE: &str = "recovery.mode";
    pub const STATE_BACKEND: &str = "state.backend";
    pub const RECOVERY_PATH: &str = "state.backend.fs.dir.recovery";
    pub const CLEANUP_INTERVAL: &str = "library-cache-manager.cleanup.interval";
}

/// A bad configuration value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{key}: cannot parse {value:?}: {why}")]
    Invalid {
        key: String,
        value: String,
        why: String,
    },
}

fn invalid(key: &str, value: &str, why: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        value: value.to_string(),
        why: why.into(),
    }
}

/// Flink-style string key/value configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Configuration(BTreeMap<String, String>);

impl Configuration {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set(&mut self, key: &str, value: impl ToString) -> &mut Self {
        self.0.insert(key.to_string(), value.to_string());
        self
    }

    /// The raw value, untrimmed and possibly empty.
    pub fn get_raw(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|s| s.trim()).filter(|s| !s.is_empty())
    }

    /// An integer value; `default` when unset.
    pub fn get_i64(&self, key: &str, default: i64) -> Result<i64, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|e: std::num::ParseIntError| invalid(key, v, e.to_string())),
        }
    }

    /// Like Flink: a value below `min` logs a warning and falls back to `default`.
    /// Like [`get_at_least`](Self::get_at_least), and a value above `max` is capped at it.
    pub(crate) fn get_between(
        &self,
        key: &str,
        min: i64,
        max: i64,
        default: i64,
    ) -> Result<i64, ConfigError> {
        let v = self.get_at_least(key, min, default)?;
        if v > max {
            tracing::warn!(key, value = v, max, "value too large; using the maximum");
            return Ok(max);
        }
        Ok(v)
    }

    pub(crate) fn get_at_least(
        &self,
        key: &str,
        min: i64,
        default: i64,
    ) -> Result<i64, ConfigError> {
        let v = self.get_i64(key, default)?;
        if v < min {
            tracing::warn!(key, value = v, default, "invalid value; using the default");
            return Ok(default);
        }
        Ok(v)
    }
}

/// The ports a server may bind: one, or the first free one of an inclusive range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn single(port: u16) -> Self {
        PortRange {
            first: port,
            last: port,
        }
    }
}

impl std::str::FromStr for PortRange {
    type Err = ConfigError;
    /// `0` (any free port), `50100`, or `50100-50200`.
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let bad = |why: &str| invalid(keys::SERVER_PORT, s, why);
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .map_err(|_| bad("not a port number"))
        };
        match s.split_once('-') {
            None => Ok(PortRange::single(port(s)?)),
            Some((a, b)) => {
                let (first, last) = (port(a)?, port(b)?);
                if first > last || first == 0 {
                    return Err(bad("expected FIRST-LAST with 0 < FIRST <= LAST"));
                }
                Ok(PortRange { first, last })
            }
        }
    }
}

/// Most worker threads a server starts: a larger `blob.fetch.num-concurrent` (a typo, say) would
/// be a storm of threads.
pub const MAX_NUM_CONCURRENT: usize = 4096;
/// Longest listen backlog asked for.
pub const MAX_BACKLOG: usize = 65536;

/// How a [`BlobServer`](crate::server::BlobServer) serves.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to bind (default 127.0.0.1; the original bound every interface).
    pub bind: IpAddr,
    pub ports: PortRange,
    /// Worker threads: requests served at once (`blob.fetch.num-concurrent`, default 50;
    /// 1..=[`MAX_NUM_CONCURRENT`]). Each worker runs a readiness loop over its share of the
    /// connections, so idle or slow connections do not take one up.
    pub num_concurrent: usize,
    /// The kernel's queue of connections not yet accepted (`blob.fetch.backlog`, default 1000;
    /// 1..=[`MAX_BACKLOG`]; Linux caps it at `net.core.somaxconn`).
    pub backlog: usize,
    /// Limits on how long and how slowly a peer may take (see [`Deadlines`]).
    pub deadlines: Deadlines,
    /// Most connections open at once; one more is accepted and closed at once (with a warning),
    /// so that a flood cannot exhaust the process's descriptors. Each costs one descriptor.
    pub max_connections: usize,
}

/// How long a peer may take: every request (header, body and reply) has a total deadline and a
/// minimum transfer rate, and a connection between requests an idle timeout. A peer past any of
/// them is cut off with a log line naming it. None of them holds a worker: waiting happens in the
/// readiness loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// A connection with no request under way is closed after this long without a byte
    /// (default 60 s).
    pub idle: Duration,
    /// A request's header (op, addressing, key or job and name) must arrive whole within this
    /// long of its first byte (default 10 s).
    pub header: Duration,
    /// Longest a request may go without a byte moving either way (default 30 s); also the grace
    /// period before [`min_rate`](Self::min_rate) applies.
    pub stall: Duration,
    /// Bytes per second a request's body and reply must average, counted from its first byte,
    /// once [`stall`](Self::stall) has passed (default 64 KiB/s; 0 turns the check off).
    pub min_rate: u64,
    /// Longest a request may take from its first byte to the last byte of its reply (default
    /// 1 h: a 2 GiB blob then needs about 600 KB/s).
    pub request: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            idle: Duration::from_secs(60),
            header: Duration::from_secs(10),
            stall: Duration::from_secs(30),
            min_rate: 64 * 1024,
            request: Duration::from_secs(3600),
        }
    }
}

/// Default [`ServerConfig::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            ports: PortRange::single(0),
            num_concurrent: 50,
            backlog: 1000,
            deadlines: Deadlines::default(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

impl ServerConfig {
    /// Reads `blob.fetch.num-concurrent`, `blob.fetch.backlog` and `blob.server.port`.
    pub fn from_config(c: &Configuration) -> Result<Self, ConfigError> {
        let mut s = ServerConfig {
            num_concurrent: c.get_between(
                keys::FETCH_CONCURRENT,
                1,
                MAX_NUM_CONCURRENT as i64,
                50,
            )? as usize,
            backlog: c.get_between(keys::FETCH_BACKLOG, 1, MAX_BACKLOG as i64, 1000)? as usize,
            ..ServerConfig::default()
        };
        if let Some(p) = c.get(keys::SERVER_PORT) {
            s.ports = p.parse()?;
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_and_backlog_sizes_are_bounded_both_ways() {
        let mut c = Configuration::new();
        c.set(keys::FETCH_CONCURRENT, 1_000_000_000)
            .set(keys::FETCH_BACKLOG, i64::MAX);
        let s = ServerConfig::from_config(&c).unwrap();
        assert_eq!(
            (s.num_concurrent, s.backlog),
            (MAX_NUM_CONCURRENT, MAX_BACKLOG)
        );
        c.set(keys::FETCH_CONCURRENT, 0)
            .set(keys::FETCH_BACKLOG, -5);
        let s = ServerConfig::from_config(&c).unwrap();
        assert_eq!((s.num_concurrent, s.backlog), (50, 1000));
        c.set(keys::FETCH_CONCURRENT, 7).set(keys::FETCH_BACKLOG, 9);
        let s = ServerConfig::from_config(&c).unwrap();
        assert_eq!((s.num_concurrent, s.backlog), (7, 9));
    }
}
