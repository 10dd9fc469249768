//! Configuration: Flink's key names where they exist, and the embedded default location.

use std::path::{Path, PathBuf};

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
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// Flink's configuration keys that blobvault reads.
pub mod keys {
    /// Worker threads of a server.
    pub const FETCH_CONCURRENT: &str = "blob.fetch.num-concurrent";
    /// A server's listen backlog.
    pub const FETCH_BACKLOG: &str = "blob.fetch.backlog";
    /// `BlobCache`: attempts after the first.
    pub const FETCH_RETRIES: &str = "blob.fetch.retries";
    /// A server's port or port range.
    pub const SERVER_PORT: &str = "blob.server.port";
    /// `BlobCache`: the folder holding the cache.
    pub const STORAGE_DIRECTORY: &str = "blob.storage.directory";
    /// `standalone` or `zookeeper` (recovery on).
    pub const RECOVERY_MODE: &str = "recovery.mode";
    /// Must be `filesystem` for recovery.
    pub const STATE_BACKEND: &str = "state.backend";
    /// The recovery directory.
    pub const RECOVERY_PATH: &str = "state.backend.fs.dir.recovery";
    /// Seconds between library clean-ups.
    pub const CLEANUP_INTERVAL: &str = "library-cache-manager.cleanup.interval";
    /// Flink 1.x: TLS for the cluster's internal connections (with [`BLOB_SSL_ENABLED`]).
    pub const SSL_INTERNAL_ENABLED: &str = "security.ssl.internal.enabled";
    /// Flink 1.x's older switch for the same.
    pub const SSL_ENABLED: &str = "security.ssl.enabled";
    /// Flink 1.x: TLS on the blob port when TLS is on (default true).
    pub const BLOB_SSL_ENABLED: &str = "blob.service.ssl.enabled";
    /// Flink's Java keystore for internal TLS: not read (blobvault takes PEM files); named so
    /// that its presence is refused with advice rather than ignored.
    pub const SSL_INTERNAL_KEYSTORE: &str = "security.ssl.internal.keystore";
    /// blobvault: the server's certificate chain, PEM (as `--tls-cert`).
    pub const TLS_CERT: &str = "blobvault.tls.cert";
    /// blobvault: its private key, PEM (as `--tls-key`).
    pub const TLS_KEY: &str = "blobvault.tls.key";
    /// blobvault: CA certificates clients must present a certificate of (as `--tls-client-ca`).
    pub const TLS_CLIENT_CA: &str = "blobvault.tls.client-ca";

    /// `serve`: the port (or range) of the metrics endpoint, on the `--bind` address; off when
    /// absent. Flink's own Prometheus reporter key (whose port is 9249 by convention).
    pub const METRICS_PORT: &str = "metrics.reporter.prom.port";

    /// Object-store recovery: the S3 endpoint URL (Flink's S3 file systems' key).
    pub const S3_ENDPOINT: &str = "s3.endpoint";
    /// Object-store recovery: the access key.
    pub const S3_ACCESS_KEY: &str = "s3.access-key";
    /// Object-store recovery: the secret key (never logged).
    pub const S3_SECRET_KEY: &str = "s3.secret-key";
    /// Object-store recovery: `true` for path-style requests (the default with an endpoint).
    pub const S3_PATH_STYLE: &str = "s3.path.style.access";
    /// Object-store recovery: seconds one replication may take before the PUT fails (30).
    pub const RECOVERY_TIMEOUT: &str = "blob.recovery.timeout";
    /// Object-store recovery: seconds content must be unreferenced before GC collects it (3600).
    pub const RECOVERY_GC_GRACE: &str = "blob.recovery.gc.grace";
    /// Object-store recovery: seconds between a server's garbage collections (0: none, default).
    pub const RECOVERY_GC_INTERVAL: &str = "blob.recovery.gc.interval";

    /// Every key above: the others of a configuration are ignored (with a warning).
    pub const ALL: [&str; 24] = [
        FETCH_CONCURRENT,
        FETCH_BACKLOG,
        FETCH_RETRIES,
        SERVER_PORT,
        STORAGE_DIRECTORY,
        RECOVERY_MODE,
        STATE_BACKEND,
        RECOVERY_PATH,
        CLEANUP_INTERVAL,
        SSL_INTERNAL_ENABLED,
        SSL_ENABLED,
        BLOB_SSL_ENABLED,
        SSL_INTERNAL_KEYSTORE,
        TLS_CERT,
        TLS_KEY,
        TLS_CLIENT_CA,
        METRICS_PORT,
        S3_ENDPOINT,
        S3_ACCESS_KEY,
        S3_SECRET_KEY,
        S3_PATH_STYLE,
        RECOVERY_TIMEOUT,
        RECOVERY_GC_GRACE,
        RECOVERY_GC_INTERVAL,
    ];
}

/// The port `blobvault serve` binds when neither `--port` nor `blob.server.port` says otherwise:
/// the one Flink deployments conventionally pin for the blob server. ([`ServerConfig::default`]
/// keeps any free port, for embedding and tests.)
pub const DEFAULT_PORT: u16 = 6124;

/// A bad configuration value, file or address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A value that does not parse.
    #[error("{key}: cannot parse {value:?}: {why}")]
    Invalid {
        /// The key.
        key: String,
        /// The value as given.
        value: String,
        /// What is wrong with it.
        why: String,
    },
    /// A configuration file that cannot be read.
    #[error("cannot read configuration file {}: {why}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        why: String,
    },
    /// A line of a configuration file that is not `key: value`.
    #[error("{}:{line}: {why}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The line number, from 1.
        line: usize,
        /// What is wrong with the line.
        why: String,
    },
    /// An address that is malformed or whose host name does not resolve.
    #[error("cannot resolve {addr:?}: {why}")]
    Address {
        /// The address as given.
        addr: String,
        /// Why it does not resolve.
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
    /// An empty configuration.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads a Flink `flink-conf.yaml`: see [`parse_yaml`](Self::parse_yaml).
    pub fn load_file(path: &Path) -> Result<Configuration, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_path_buf(),
            why: e.to_string(),
        })?;
        Self::parse_yaml(&text, path)
    }

    /// Parses the flat form of a Flink `flink-conf.yaml` (`path` names it in errors): one
    /// `key: value` a line; blank lines; `#` outside quotes starts a comment (as in Flink, also
    /// in mid-line); a value in `"…"` (escapes `\"` and `\\`) or `'…'` (`''` for a quote) is
    /// taken literally. A later line wins over an earlier one with the same key. Anything else
    /// (a line without `: `, an empty key, an unclosed quote) is an error naming the line:
    /// Flink skips such lines with a warning, which hides typos.
    pub fn parse_yaml(text: &str, path: &Path) -> Result<Configuration, ConfigError> {
        let mut conf = Configuration::new();
        for (i, raw) in text.lines().enumerate() {
            let err = |why: &str| ConfigError::Syntax {
                path: path.to_path_buf(),
                line: i + 1,
                why: why.to_string(),
            };
            let line = strip_comment(raw).trim();
            if line.is_empty() {
                continue;
            }
            let (key, value) = match line.split_once(": ") {
                Some((k, v)) => (k.trim(), v.trim()),
                None => match line.strip_suffix(':') {
                    Some(k) => (k.trim(), ""),
                    None => return Err(err("expected `key: value`")),
                },
            };
            if key.is_empty() {
                return Err(err("empty key"));
            }
            conf.set(key, unquote(value).map_err(|why| err(&why))?);
        }
        Ok(conf)
    }

    /// Copies every entry of `other` into this one (`other` wins).
    pub fn merge(&mut self, other: &Configuration) -> &mut Self {
        for (k, v) in &other.0 {
            self.0.insert(k.clone(), v.clone());
        }
        self
    }

    /// The keys blobvault does not read ([`keys::ALL`]), in order.
    pub fn unknown_keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .map(String::as_str)
            .filter(|k| !keys::ALL.contains(k))
            .collect()
    }

    /// Sets `key` to `value`.
    pub fn set(&mut self, key: &str, value: impl ToString) -> &mut Self {
        self.0.insert(key.to_string(), value.to_string());
        self
    }

    /// The raw value, untrimmed and possibly empty.
    pub fn get_raw(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// The trimmed value; `None` when unset or empty.
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
            tracing::warn!("{key}={v} is above the maximum {max}; using {max}");
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
            tracing::warn!("{key}={v} is below the minimum {min}; using the default {default}");
            return Ok(default);
        }
        Ok(v)
    }
}

/// `line` without its comment: from the first `#` outside quotes.
fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '#') => return &line[..i],
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            _ => {}
        }
    }
    line
}

/// A value without its quotes, if it has them.
fn unquote(v: &str) -> Result<String, String> {
    let unclosed = || format!("unclosed quote in {v}");
    if let Some(rest) = v.strip_prefix('"') {
        let inner = rest.strip_suffix('"').ok_or_else(unclosed)?;
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => out.push(chars.next().ok_or_else(unclosed)?),
                '"' => return Err(format!("stray quote in {v}")),
                c => out.push(c),
            }
        }
        return Ok(out);
    }
    if let Some(rest) = v.strip_prefix('\'') {
        let inner = rest.strip_suffix('\'').ok_or_else(unclosed)?;
        return Ok(inner.replace("''", "'"));
    }
    Ok(v.to_string())
}

/// Resolves `HOST:PORT` (a name, an IPv4 address, or `[IPv6]`) to its addresses, as any network
/// tool does; a connection tries them in turn.
pub fn resolve_addr(addr: &str) -> Result<Vec<SocketAddr>, ConfigError> {
    let bad = |why: String| ConfigError::Address {
        addr: addr.to_string(),
        why,
    };
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| bad("expected HOST:PORT".into()))?;
    let port: u16 = port
        .parse()
        .map_err(|_| bad(format!("{port:?} is not a port number")))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err(bad("no host name".into()));
    }
    let found: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| bad(format!("host name {host:?} does not resolve ({e})")))?
        .collect();
    if found.is_empty() {
        return Err(bad(format!("host name {host:?} has no address")));
    }
    Ok(found)
}

/// Resolves a host name or IP address to bind: the first IPv4 address it has, else the first
/// (so that `localhost` binds 127.0.0.1, which clients try by default).
pub fn resolve_bind(host: &str) -> Result<IpAddr, ConfigError> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let found: Vec<SocketAddr> = (bare, 0)
        .to_socket_addrs()
        .map_err(|e| ConfigError::Address {
            addr: host.to_string(),
            why: format!("host name {bare:?} does not resolve ({e})"),
        })?
        .collect();
    found
        .iter()
        .find(|a| a.is_ipv4())
        .or(found.first())
        .map(SocketAddr::ip)
        .ok_or_else(|| ConfigError::Address {
            addr: host.to_string(),
            why: format!("host name {bare:?} has no address"),
        })
}

/// The ports a server may bind: one, or the first free one of an inclusive range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// The first port tried (0: any free port).
    pub first: u16,
    /// The last port tried (inclusive).
    pub last: u16,
}

impl PortRange {
    /// Just `port` (0: any free port).
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
    /// The port, or the range whose first free port is bound (`blob.server.port`; default 0
    /// here, any free port; the `serve` command defaults to 6124).
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
    /// Serve the protocol inside TLS (with client certificates required if it has a client
    /// CA); `None` (default) is plaintext, which the original Java client speaks.
    pub tls: Option<std::sync::Arc<crate::tls::ServerTls>>,
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
            tls: None,
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

    fn parse(text: &str) -> Result<Configuration, ConfigError> {
        Configuration::parse_yaml(text, Path::new("flink-conf.yaml"))
    }

    #[test]
    fn a_flink_conf_yaml_reads_as_flink_does() {
        let c = parse(
            "# The blob server\n\
             \n\
             blob.server.port: 6130\n\
             blob.fetch.num-concurrent:   16   # workers\n\
             state.backend.fs.dir.recovery: \"file:///mnt/ha # not a comment\"\n\
             recovery.mode: 'zoo''keeper'\n\
             jobmanager.rpc.address: \"a \\\"b\\\" \\\\c\"\n\
             blob.fetch.backlog:\n\
             blob.server.port: 6131\n",
        )
        .unwrap();
        assert_eq!(c.get(keys::SERVER_PORT), Some("6131"), "a later line wins");
        assert_eq!(c.get(keys::FETCH_CONCURRENT), Some("16"));
        assert_eq!(
            c.get(keys::RECOVERY_PATH),
            Some("file:///mnt/ha # not a comment")
        );
        assert_eq!(c.get(keys::RECOVERY_MODE), Some("zoo'keeper"));
        assert_eq!(c.get("jobmanager.rpc.address"), Some(r#"a "b" \c"#));
        assert_eq!(c.get_raw(keys::FETCH_BACKLOG), Some(""));
        assert_eq!(c.get(keys::FETCH_BACKLOG), None, "empty means unset");
        assert_eq!(c.unknown_keys(), ["jobmanager.rpc.address"]);
    }

    #[test]
    fn a_bad_line_is_an_error_naming_file_and_line() {
        for (text, line, why) in [
            ("a: 1\nblob.server.port 6124\n", 2, "expected `key: value`"),
            ("\n\n: 5\n", 3, "empty key"),
            ("a: \"open\n", 1, "unclosed quote"),
            ("a: 'open\n", 1, "unclosed quote"),
            ("a: \"x\"y\"\n", 1, "stray quote"),
        ] {
            let e = parse(text).unwrap_err();
            let ConfigError::Syntax {
                line: l, why: w, ..
            } = &e
            else {
                panic!("{e:?}")
            };
            assert_eq!(*l, line, "{text:?}");
            assert!(w.contains(why), "{text:?}: {w}");
            assert!(e.to_string().starts_with("flink-conf.yaml:"), "{e}");
        }
    }

    #[test]
    fn a_typo_is_an_unknown_key_and_merge_lets_the_later_win() {
        let mut c = parse("blob.fetch.num-concurent: 8\nblob.server.port: 1\n").unwrap();
        assert_eq!(c.unknown_keys(), ["blob.fetch.num-concurent"]);
        let mut d = Configuration::new();
        d.set(keys::SERVER_PORT, 2);
        c.merge(&d);
        assert_eq!(c.get(keys::SERVER_PORT), Some("2"));
    }

    #[test]
    fn a_missing_file_is_named() {
        let e = Configuration::load_file(Path::new("/nonexistent/flink-conf.yaml")).unwrap_err();
        assert!(
            e.to_string().contains("/nonexistent/flink-conf.yaml"),
            "{e}"
        );
    }

    #[test]
    fn addresses_resolve_host_names_and_say_which_did_not() {
        let a = resolve_addr("127.0.0.1:6124").unwrap();
        assert_eq!(a, ["127.0.0.1:6124".parse().unwrap()]);
        assert_eq!(resolve_addr("[::1]:7").unwrap()[0].port(), 7);
        let local = resolve_addr("localhost:6124").unwrap();
        assert!(
            local
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 6124)
        );
        for (bad, says) in [
            ("localhost", "expected HOST:PORT"),
            ("localhost:http", "not a port number"),
            (":6124", "no host name"),
            (
                "no-such-host.invalid:6124",
                "\"no-such-host.invalid\" does not resolve",
            ),
        ] {
            let e = resolve_addr(bad).unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains(says), "{bad}: {e}");
        }
        assert_eq!(
            resolve_bind("localhost").unwrap(),
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        );
        assert_eq!(
            resolve_bind("::1").unwrap(),
            "::1".parse::<IpAddr>().unwrap()
        );
        assert!(resolve_bind("no-such-host.invalid").is_err());
    }
}
