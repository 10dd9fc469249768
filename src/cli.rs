//! The `blobvault` command line: a thin layer over the library.
//!
//! Exit codes: 0 success, 1 failure, 2 usage error (clap's), 3 no such blob (`get`).

use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::{
    Configuration, DEFAULT_PORT, PortRange, ServerConfig, default_data_dir, keys, resolve_addr,
    resolve_bind,
};
use crate::json::json_str;
use crate::key::{BlobId, BlobKey, JobId};
use crate::protocol::{DeleteTarget, PutTarget};
use crate::store::{BlobStore, DB_FILE, StoreError, StoreOptions};
use crate::tls::{ClientTlsArgs, ServerTls, ServerTlsFiles};
use crate::{BlobClient, BlobServer, ClientError};

/// Exit status of a failure.
const EXIT_FAILURE: i32 = 1;
/// Exit status of a usage error (clap's own).
const EXIT_USAGE: i32 = 2;
/// Exit status of `get` when the blob is not there.
const EXIT_NO_SUCH_BLOB: i32 = 3;
/// Environment variable naming the server of `put`, `get` and `delete`.
const SERVER_ENV: &str = "BLOBVAULT_SERVER";

/// A failed command: what to print and the exit status.
#[derive(Debug)]
struct Fail {
    code: i32,
    msg: String,
}

impl Fail {
    fn new(msg: impl Into<String>) -> Fail {
        Fail {
            code: EXIT_FAILURE,
            msg: msg.into(),
        }
    }
}

impl<E: std::error::Error> From<E> for Fail {
    fn from(e: E) -> Fail {
        Fail::new(e.to_string())
    }
}

type CliResult<T = ()> = Result<T, Fail>;

#[derive(Debug, Parser)]
#[command(
    name = "blobvault",
    version,
    about = "A blob store for job artifacts speaking Flink 0.10's BLOB protocol",
    after_help = "Start a server with `blobvault serve` (port 6124), then `blobvault put FILE` and \
                  `blobvault get KEY -o FILE` talk to it.\n\
                  Exit status: 0 success, 1 failure, 2 usage error, 3 no such blob (get)."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Where put/get/delete act: a running server, or a store directory directly.
#[derive(Debug, clap::Args)]
struct Target {
    /// Server to talk to, HOST:PORT (a host name or an IP address). Default: the environment
    /// variable BLOBVAULT_SERVER, else 127.0.0.1:6124.
    #[arg(long, short = 's', value_name = "HOST:PORT", conflicts_with = "dir")]
    server: Option<String>,
    /// Open this store directory directly instead of talking to a server (it must not be open
    /// in a running server: stop that, or use --server).
    #[arg(long, short = 'd', value_name = "DIR")]
    dir: Option<PathBuf>,
    #[command(flatten)]
    tls: ClientTlsArgs,
}

/// Where a put/get/delete goes, once resolved.
enum Via {
    Server(String, ClientTlsArgs),
    Dir(PathBuf),
}

impl Target {
    /// `--dir` means the store directly; otherwise `--server`, `$BLOBVAULT_SERVER`, the default.
    fn via(self) -> Via {
        match (self.dir, self.server) {
            (Some(d), _) => Via::Dir(absolute(d)),
            (None, Some(s)) => Via::Server(s, self.tls),
            (None, None) => Via::Server(
                std::env::var(SERVER_ENV)
                    .ok()
                    .filter(|s| !s.trim().is_empty())
                    .unwrap_or_else(|| format!("127.0.0.1:{DEFAULT_PORT}")),
                self.tls,
            ),
        }
    }
}

/// A named blob: --job and --name together.
#[derive(Debug, clap::Args)]
struct Named {
    /// Job of a named blob: a 32-hex-digit job id as Flink prints it, or any other text (e.g.
    /// `nightly-etl`), from which a stable id is derived (the first 16 bytes of its SHA-1).
    #[arg(long, value_name = "JOB", value_parser = parse_job)]
    job: Option<JobId>,
    /// Name of the blob within the job (at most 64 bytes of UTF-8).
    #[arg(long, requires = "job")]
    name: Option<String>,
}

/// A job id: 32 hex digits as they are, anything else hashed (documented on `--job`).
fn parse_job(s: &str) -> Result<JobId, String> {
    if s.is_empty() {
        return Err("a job cannot be empty".into());
    }
    if s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return s.parse().map_err(|e: crate::key::KeyError| e.to_string());
    }
    let digest = BlobKey::of(s.as_bytes());
    let mut id = [0u8; JobId::LEN];
    id.copy_from_slice(&digest.as_bytes()[..JobId::LEN]);
    Ok(JobId(id))
}

/// The store directory of the offline commands.
#[derive(Debug, clap::Args)]
struct StoreDir {
    /// Store directory (default: the embedded location: $BLOBVAULT_DIR, else
    /// $XDG_DATA_HOME/blobvault, else ~/.local/share/blobvault). No server may have it open.
    #[arg(long, short = 'd', value_name = "DIR")]
    dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Serve a store over the BLOB protocol (port 6124 unless told otherwise).
    #[command(
        after_help = "Example:\n  blobvault serve --dir /var/lib/blobvault --config \
                            conf/flink-conf.yaml -D blob.fetch.num-concurrent=16\n\n\
                            Prints `listening on ADDR` on stdout once it accepts connections; \
                            SIGINT/SIGTERM stop it."
    )]
    Serve(Box<ServeArgs>),
    /// Store a file (or stdin with `-`) on a server, or in a store with --dir.
    #[command(
        after_help = "Prints the blob's key (content PUT) or `--job JOB --name NAME` \
                            (named PUT), which `get` takes.\n\nExamples:\n  blobvault put \
                            app.jar\n  blobvault put app.jar --job nightly-etl --name lib/app.jar \
                            --json"
    )]
    Put {
        /// File to store, `-` for stdin.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        named: Named,
        /// Print one JSON object (key, size, and job and name of a named blob).
        #[arg(long)]
        json: bool,
    },
    /// Fetch a blob by KEY or by --job/--name, to stdout or --output.
    #[command(
        after_help = "Exit status 3 when the blob is not there.\n\nExamples:\n  \
                            blobvault get 3f78…e1 -o app.jar\n  blobvault get --job nightly-etl \
                            --name lib/app.jar > app.jar"
    )]
    Get {
        /// Content key of the blob (40 hex digits, as `put` prints it).
        #[arg(value_name = "KEY")]
        key: Option<BlobKey>,
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        named: Named,
        /// Write the blob to this file (written whole, then renamed into place) instead of
        /// stdout.
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Delete a blob by KEY, by --job/--name, or a whole job with --job alone.
    #[command(
        after_help = "Examples:\n  blobvault delete 3f78…e1\n  blobvault delete --job \
                            nightly-etl"
    )]
    Delete {
        /// Content key of the blob (40 hex digits).
        #[arg(value_name = "KEY")]
        key: Option<BlobKey>,
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        named: Named,
    },
    /// List the blobs of a store directory, or of a running server with --metrics: key and
    /// size, then job and name of named blobs.
    #[command(
        after_help = "Examples:\n  blobvault ls --dir /var/lib/blobvault --json\n  \
                            blobvault ls --metrics 127.0.0.1:9249\n\nExit status 1 when the \
                            store cannot be opened or the endpoint not reached."
    )]
    Ls {
        #[command(flatten)]
        dir: StoreDir,
        /// List a running server's store through its metrics endpoint (the HOST:PORT given to
        /// `serve --metrics`) instead of opening a directory.
        #[arg(long, value_name = "HOST:PORT", conflicts_with = "dir", value_parser = parse_host_port)]
        metrics: Option<String>,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Show figures of a store directory, or of a running server with --metrics.
    #[command(
        after_help = "Examples:\n  blobvault stat --dir /var/lib/blobvault\n  \
                            blobvault stat --metrics 127.0.0.1:9249 --json\n\nExit status 1 \
                            when the store cannot be opened or the endpoint not reached."
    )]
    Stat {
        #[command(flatten)]
        dir: StoreDir,
        /// Ask a running server through its metrics endpoint (the HOST:PORT given to `serve
        /// --metrics`) instead of opening a directory.
        #[arg(long, value_name = "HOST:PORT", conflicts_with = "dir", value_parser = parse_host_port)]
        metrics: Option<String>,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Re-hash every blob of a store directory and report what the replay of its write-ahead
    /// log found; exit status 1 if a blob is damaged or the log lost acknowledged writes.
    #[command(after_help = "Example:\n  blobvault verify --dir /var/lib/blobvault")]
    Verify {
        #[command(flatten)]
        dir: StoreDir,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Compact a store directory that no server has open: give back the free space at the end
    /// of its file.
    #[command(after_help = "Example:\n  blobvault compact --dir /var/lib/blobvault")]
    Compact {
        #[command(flatten)]
        dir: StoreDir,
    },
    /// Load generator over the wire protocol (an in-process server unless --server is given).
    #[command(after_help = "Example:\n  blobvault bench --server localhost:6124 -s 1MiB -n 500")]
    Bench(Box<crate::loadgen::BenchArgs>),
    /// Inspect or purge a recovery directory.
    Recovery {
        #[command(subcommand)]
        cmd: RecoveryCmd,
    },
}

#[derive(Debug, Subcommand)]
enum RecoveryCmd {
    /// List the blobs held for failover.
    #[command(
        after_help = "Examples:\n  blobvault recovery ls --recovery-dir /mnt/ha/blobvault\n  \
        AWS_ENDPOINT_URL=http://127.0.0.1:8333 AWS_ALLOW_HTTP=true blobvault recovery ls --recovery-dir s3://blobs/ha"
    )]
    Ls(RecoveryArgs),
    /// Delete stored bytes no blob refers to any more (object stores; the redb file frees them
    /// as it goes). Safe while servers run: see the README, "Object-store recovery".
    #[command(
        after_help = "Example:\n  blobvault recovery gc --recovery-dir s3://blobs/ha -D blob.recovery.gc.grace=3600"
    )]
    Gc(RecoveryArgs),
    /// Remove every blob held for failover (no running server needs them any more).
    #[command(after_help = "Example:\n  blobvault recovery purge --recovery-dir /mnt/ha/blobvault")]
    Purge(RecoveryArgs),
}

#[derive(Debug, clap::Args)]
struct RecoveryArgs {
    /// Recovery store, as given to `serve --recovery-dir`: a directory, file:///path, or
    /// s3://bucket/prefix.
    #[arg(long, value_name = "URI")]
    recovery_dir: String,
    /// A Flink flink-conf.yaml to read (s3.* keys, blob.recovery.*); -D entries override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Configuration entries, e.g. -D s3.endpoint=http://127.0.0.1:8333.
    #[arg(short = 'D', value_name = "KEY=VALUE", value_parser = parse_kv)]
    conf: Vec<(String, String)>,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Store directory, created if missing (default: the embedded location: $BLOBVAULT_DIR,
    /// else $XDG_DATA_HOME/blobvault, else ~/.local/share/blobvault).
    #[arg(long, short = 'd', value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Port, 0 for any free one, or a range like 50100-50200 (default: blob.server.port, else
    /// 6124).
    #[arg(long, short = 'p', value_name = "PORT")]
    port: Option<PortRange>,
    /// Address to bind: an IP address or a host name (its first IPv4 address).
    #[arg(long, value_name = "HOST", default_value = "127.0.0.1")]
    bind: String,
    /// Recovery store; turns recovery on: a directory on shared storage (or file:///path), or
    /// s3://bucket/prefix for an object store (endpoint and credentials from AWS_ENDPOINT_URL,
    /// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ALLOW_HTTP=true, or -D s3.*).
    #[arg(long, value_name = "URI")]
    recovery_dir: Option<String>,
    /// A Flink flink-conf.yaml (`key: value` lines) to read; -D entries override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Flink configuration entries, e.g. -D blob.fetch.num-concurrent=16.
    #[arg(short = 'D', value_name = "KEY=VALUE", value_parser = parse_kv)]
    conf: Vec<(String, String)>,
    /// Seconds a connection may stay silent between requests before it is closed.
    #[arg(long, alias = "read-timeout", value_name = "SECS", default_value = "60", value_parser = parse_secs)]
    idle_timeout: Duration,
    /// Seconds within which a request's header must arrive whole, from its first byte.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_secs)]
    header_timeout: Duration,
    /// Seconds a request may go without a byte moving either way; also the grace period
    /// before --min-rate applies.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_secs)]
    stall_timeout: Duration,
    /// Bytes per second a request's body and reply must average once --stall-timeout has
    /// passed (0: no minimum).
    #[arg(long, value_name = "BYTES", default_value_t = 64 * 1024)]
    min_rate: u64,
    /// Seconds a request may take from its first byte to the end of its reply.
    #[arg(long, value_name = "SECS", default_value = "3600", value_parser = parse_secs)]
    request_timeout: Duration,
    /// Most connections open at once, at least 1 (each needs a file descriptor; the soft limit
    /// is raised towards the hard one to fit).
    #[arg(long, value_name = "N", default_value_t = crate::config::DEFAULT_MAX_CONNECTIONS,
          value_parser = parse_at_least_one)]
    max_connections: usize,
    /// Acknowledge PUTs without waiting for fsync (faster; a crash may lose the PUTs and
    /// DELETEs of the last --no-fsync-interval seconds).
    #[arg(long)]
    no_fsync: bool,
    /// With --no-fsync: seconds after which a write is made durable in the background, the most
    /// a crash can lose (decimals allowed).
    #[arg(long, value_name = "SECS", default_value_t = 1.0, value_parser = parse_interval)]
    no_fsync_interval: f64,
    /// MiB kept in `<dir>/blobs.reserve` so that DELETEs still work on a full disk (0: none).
    #[arg(long, value_name = "MIB", default_value_t = 8)]
    reserve_mib: u64,
    /// Serve over TLS with this certificate chain (PEM, leaf first); needs --tls-key. The files
    /// are re-read when they change or on SIGHUP.
    #[arg(long, value_name = "CERT.pem", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, value_name = "KEY.pem", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM): mutual TLS.
    #[arg(long, value_name = "CA.pem", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Serve metrics and health over HTTP at HOST:PORT (/metrics in Prometheus' format,
    /// /healthz, /stat, /blobs), e.g. 127.0.0.1:9249. Off by default; the configuration key
    /// metrics.reporter.prom.port turns it on at 127.0.0.1 only.
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_host_port)]
    metrics: Option<String>,
}

/// The server's TLS files from the flags, else the configuration; `None` for plaintext.
fn serve_tls(a: &ServeArgs, conf: &Configuration) -> CliResult<Option<ServerTlsFiles>> {
    let key_path = |k: &str| conf.get(k).map(PathBuf::from);
    let cert = a.tls_cert.clone().or_else(|| key_path(keys::TLS_CERT));
    let key = a.tls_key.clone().or_else(|| key_path(keys::TLS_KEY));
    let client_ca = a
        .tls_client_ca
        .clone()
        .or_else(|| key_path(keys::TLS_CLIENT_CA));
    let on = |k: &str| conf.get(k).map(|v| v.eq_ignore_ascii_case("true"));
    // Flink: TLS on the blob port when internal TLS is on and the blob service does not opt out.
    let flink_wants = (on(keys::SSL_INTERNAL_ENABLED) == Some(true)
        || on(keys::SSL_ENABLED) == Some(true))
        && on(keys::BLOB_SSL_ENABLED) != Some(false);
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(ServerTlsFiles {
            cert,
            key,
            client_ca,
        })),
        (None, None) if !flink_wants && client_ca.is_none() => Ok(None),
        _ => {
            let keystore = if conf.get(keys::SSL_INTERNAL_KEYSTORE).is_some() {
                format!(
                    " ({} is a Java keystore, which blobvault does not read: export its \
                     certificate and key as PEM, e.g. with `keytool -importkeystore \
                     -deststoretype PKCS12` then `openssl pkcs12 -nodes`)",
                    keys::SSL_INTERNAL_KEYSTORE
                )
            } else {
                String::new()
            };
            Err(Fail::new(format!(
                "TLS needs both a certificate and its key: give --tls-cert and --tls-key (or {} \
                 and {}){keystore}",
                keys::TLS_CERT,
                keys::TLS_KEY
            )))
        }
    }
}

/// A `--metrics` value: a HOST:PORT that resolves (checked before any store is opened, so a
/// typo is a usage error).
fn parse_host_port(s: &str) -> Result<String, String> {
    use std::net::ToSocketAddrs;
    match s.to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(_)) => Ok(s.to_string()),
        Ok(None) => Err(format!("{s} resolves to no address; e.g. 127.0.0.1:9249")),
        Err(e) => Err(format!(
            "not a HOST:PORT that resolves ({e}); e.g. 127.0.0.1:9249"
        )),
    }
}

fn parse_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 86_400.0 => Ok(v),
        _ => Err(format!("expected seconds between 0 and 86400, got {s:?}")),
    }
}

fn parse_at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("expected a number of at least 1, got {s:?}")),
    }
}

/// Seconds, fractions allowed; more than zero.
fn parse_secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("expected seconds, got {s:?}"))?;
    if !(v > 0.0 && v <= 1e9) {
        return Err(format!("expected more than 0 seconds, got {s:?}"));
    }
    Ok(Duration::from_secs_f64(v))
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

/// Whether log lines may carry ANSI colours: only to a terminal, and never with `NO_COLOR` set
/// (<https://no-color.org>: any non-empty value).
fn log_colours() -> bool {
    io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Runs the command line; returns the exit status.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let _ = tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_ansi(log_colours())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
    let result = match cli.cmd {
        Cmd::Serve(a) => serve(*a),
        Cmd::Put {
            file,
            target,
            named,
            json,
        } => put(file, target.via(), named, json),
        Cmd::Get {
            key,
            target,
            named,
            output,
        } => get(key, target.via(), named, output),
        Cmd::Delete { key, target, named } => delete(key, target.via(), named),
        Cmd::Ls {
            metrics: Some(addr),
            json,
            ..
        } => ls_live(&addr, json),
        Cmd::Ls { dir, json, .. } => ls(dir, json),
        Cmd::Stat {
            metrics: Some(addr),
            json,
            ..
        } => stat_live(&addr, json),
        Cmd::Stat { dir, json, .. } => stat(dir, json),
        Cmd::Verify { dir, json } => verify(dir, json),
        Cmd::Compact { dir } => compact(dir),
        Cmd::Bench(a) => crate::loadgen::run_cli(&a).map_err(|e| Fail::new(e.to_string())),
        Cmd::Recovery { cmd } => recovery(cmd),
    };
    match result {
        Ok(()) => 0,
        Err(f) => {
            eprintln!("blobvault: {}", f.msg);
            f.code
        }
    }
}

/// What a command wanted a store for: it decides the advice when another process has it.
#[derive(Clone, Copy)]
enum Use {
    /// `serve`.
    Serve,
    /// `put`, `get`, `delete` with `--dir`: a server could do them instead.
    Direct,
    /// `ls`, `stat`, `verify`, `compact`: they need the store closed.
    Offline,
}

/// A store error, with what to do when another process holds the store.
fn store_fail(e: StoreError, dir: &Path, used: Use) -> Fail {
    let StoreError::Locked(_) = e else {
        return Fail::new(e.to_string());
    };
    let todo = match used {
        Use::Serve => "stop that process, or serve a different --dir",
        Use::Direct => "stop that server, or go through it: --server HOST:PORT instead of --dir",
        Use::Offline => "stop that server first (this command needs the store closed)",
    };
    Fail::new(format!(
        "the store at {} is open in another process (a running `blobvault serve`?): {todo}",
        dir.display()
    ))
}

/// The directory of an offline command: `--dir`, or the embedded default.
fn store_dir(dir: StoreDir) -> PathBuf {
    absolute(dir.dir.unwrap_or_else(default_data_dir))
}

/// `dir` made absolute, so that messages name it unambiguously (and the store never sees a
/// bare relative name, whose parent is the empty path).
fn absolute(dir: PathBuf) -> PathBuf {
    std::path::absolute(&dir).unwrap_or(dir)
}

/// Refuses a directory that holds no store, so that read-only commands create nothing.
fn require_store(dir: &Path) -> CliResult {
    if dir.join(DB_FILE).is_file() {
        return Ok(());
    }
    let why = if !dir.exists() {
        "no such directory"
    } else if !dir.is_dir() {
        "not a directory"
    } else {
        "no blobs.redb in it"
    };
    Err(Fail::new(format!(
        "no store at {} ({why}); give a store's directory with --dir",
        dir.display()
    )))
}

/// Opens an existing store for an offline command.
fn open_existing(dir: &Path, used: Use) -> CliResult<BlobStore> {
    require_store(dir)?;
    BlobStore::open(dir).map_err(|e| store_fail(e, dir, used))
}

/// Refuses a path that exists but is not a directory (`what` names the flag).
fn check_dir_arg(dir: &Path, what: &str) -> CliResult {
    if dir.exists() && !dir.is_dir() {
        return Err(Fail::new(format!(
            "{what} {} is not a directory",
            dir.display()
        )));
    }
    Ok(())
}

/// Connects to `addr` (HOST:PORT), trying each address its name resolves to; over TLS if the
/// flags ask for it.
fn connect(addr: &str, tls: &ClientTlsArgs) -> CliResult<BlobClient> {
    let addrs = resolve_addr(addr)?;
    let tls = tls
        .load(Some(crate::tls::host_of(addr)))
        .map_err(|e| Fail::new(e.to_string()))?;
    let mut last = None;
    for a in &addrs {
        match BlobClient::connect_with(a, tls.as_ref(), None) {
            Ok(c) => return Ok(c),
            Err(e) => last = Some(e),
        }
    }
    let e = last.unwrap_or_else(|| io::Error::other("no address"));
    if tls.is_some() && e.kind() != io::ErrorKind::ConnectionRefused {
        // A TLS failure: its message says what failed and what to do.
        return Err(Fail::new(format!("cannot connect to {addr}: {e}")));
    }
    let tried: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    let tried = if tried.len() == 1 && tried[0] == addr {
        String::new()
    } else {
        format!(" ({})", tried.join(", "))
    };
    Err(Fail::new(format!(
        "cannot connect to {addr}{tried}: {e}; is `blobvault serve` running on {addr}? \
         (the server comes from --server, else ${SERVER_ENV}, else 127.0.0.1:{DEFAULT_PORT})"
    )))
}

fn serve(a: ServeArgs) -> CliResult {
    let mut conf = match &a.config {
        Some(path) => Configuration::load_file(path)?,
        None => Configuration::new(),
    };
    for (k, v) in &a.conf {
        conf.set(k, v);
    }
    let ignored = conf.unknown_keys();
    if !ignored.is_empty() {
        tracing::warn!(
            "ignoring configuration keys blobvault does not read: {} (it reads {})",
            ignored.join(", "),
            keys::ALL.join(", ")
        );
    }
    let mut config = ServerConfig::from_config(&conf)?;
    config.bind = resolve_bind(&a.bind)?;
    // `--port` wins over `blob.server.port`, which `from_config` has read; neither: 6124.
    match a.port {
        Some(ports) => config.ports = ports,
        None if conf.get(keys::SERVER_PORT).is_none() => {
            config.ports = PortRange::single(DEFAULT_PORT)
        }
        None => {}
    }
    config.deadlines = crate::config::Deadlines {
        idle: a.idle_timeout,
        header: a.header_timeout,
        stall: a.stall_timeout,
        min_rate: a.min_rate,
        request: a.request_timeout,
    };
    config.max_connections = a.max_connections;
    if let Some(files) = serve_tls(&a, &conf)? {
        config.tls = Some(Arc::new(
            ServerTls::load(files).map_err(|e| Fail::new(e.to_string()))?,
        ));
    }
    let workers = config.num_concurrent;
    let need = crate::server::descriptors_needed(a.max_connections, workers);
    if let Some(limit) = crate::server::raise_fd_limit(need) {
        tracing::debug!(limit, "descriptor limit");
    }
    let metrics_at = metrics_at(a.metrics.as_deref(), &conf)?;
    let dir = absolute(a.dir.unwrap_or_else(default_data_dir));
    check_dir_arg(&dir, "--dir")?;
    let mut opts = StoreOptions::new(&dir)
        .durable(!a.no_fsync)
        .no_fsync_interval(Duration::from_secs_f64(a.no_fsync_interval))
        .reserve_bytes(a.reserve_mib.saturating_mul(1024 * 1024));
    if let Some(r) = &a.recovery_dir
        && let crate::recovery::RecoveryTarget::File(dir) =
            crate::recovery::RecoveryTarget::parse(r)?
    {
        check_dir_arg(&dir, "--recovery-dir")?;
    }
    if let Some(r) = crate::recovery::from_cli_and_config(a.recovery_dir.as_deref(), &conf)? {
        let interval = conf.get_i64(keys::RECOVERY_GC_INTERVAL, 0)?;
        if interval > 0 {
            periodic_gc(Arc::clone(&r), Duration::from_secs(interval as u64))?;
        }
        opts = opts.recovery(r);
    }
    let store = opts.open().map_err(|e| store_fail(e, &dir, Use::Serve))?;
    let server = BlobServer::start(store, config).map_err(|e| match &e {
        crate::server::ServerError::Bind { source, .. }
            if source.kind() == io::ErrorKind::AddrInUse =>
        {
            Fail::new(format!(
                "{e}: another process listens there; give another port with --port (0: any \
                 free one)"
            ))
        }
        _ => Fail::new(e.to_string()),
    })?;
    let server = Arc::new(server);
    let stop_rx = handle_signals(&server)?;
    tracing::info!(dir = %dir.display(), "serving store");
    let admin = start_metrics(metrics_at, &server)?;
    let mut out = io::stdout().lock();
    writeln!(out, "listening on {}", server.local_addr())?;
    if let Some(admin) = &admin {
        writeln!(out, "metrics on http://{}/metrics", admin.local_addr())?;
    }
    out.flush()?;
    drop(out);
    let _ = stop_rx.recv();
    tracing::info!("stopping");
    drop(admin);
    // Dropping the last handle shuts it down (the SIGHUP thread holds only a weak one, strong
    // for the moment of a reload).
    drop(server);
    Ok(())
}

/// A thread that turns SIGINT and SIGTERM into a stop (the receiver gets a message) and SIGHUP
/// into a reload of the TLS files (as daemons do for their certificates).
fn handle_signals(server: &Arc<BlobServer>) -> CliResult<crossbeam_channel::Receiver<()>> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    let server = Arc::downgrade(server);
    std::thread::Builder::new()
        .name("blobvault-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if sig != SIGHUP {
                    let _ = stop_tx.try_send(());
                    continue;
                }
                let Some(s) = server.upgrade() else { return };
                match s.reload_tls() {
                    Ok(true) => {}
                    Ok(false) => tracing::info!("SIGHUP: TLS is off; nothing to reload"),
                    Err(e) => tracing::error!(error = %e,
                        "SIGHUP: TLS certificates cannot be reloaded; keeping the previous ones"),
                }
            }
        })?;
    Ok(stop_rx)
}

/// Where `serve` puts its metrics endpoint, decided before the store opens.
enum MetricsAt {
    /// `--metrics HOST:PORT`: every address it resolves to, tried in turn; failing is fatal.
    Flag(String, Vec<std::net::SocketAddr>),
    /// `metrics.reporter.prom.port`: these ports on 127.0.0.1 only (the key was meant for
    /// Flink's reporter: it must not expose the blob listing on a cluster address, and a port
    /// already taken, e.g. by that reporter, only turns the endpoint off, with a warning).
    Key(Vec<std::net::SocketAddr>),
    /// Off.
    Off,
}

fn metrics_at(flag: Option<&str>, conf: &Configuration) -> CliResult<MetricsAt> {
    use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
    match (flag, conf.get(keys::METRICS_PORT)) {
        (Some(addr), _) => {
            let addrs = addr.to_socket_addrs().map_err(|e| Fail {
                code: EXIT_USAGE,
                msg: format!(
                    "--metrics {addr}: not a HOST:PORT that resolves ({e}); e.g. 127.0.0.1:9249"
                ),
            })?;
            Ok(MetricsAt::Flag(addr.to_string(), addrs.collect()))
        }
        (None, Some(v)) => match v.parse::<PortRange>() {
            Ok(ports) => Ok(MetricsAt::Key(
                (ports.first..=ports.last)
                    .map(|p| SocketAddr::new(Ipv4Addr::LOCALHOST.into(), p))
                    .collect(),
            )),
            Err(e) => {
                tracing::warn!(
                    key = keys::METRICS_PORT,
                    value = v,
                    error = %e,
                    "not a port or port range; the metrics endpoint is off (or give --metrics HOST:PORT)"
                );
                Ok(MetricsAt::Off)
            }
        },
        (None, None) => Ok(MetricsAt::Off),
    }
}

/// The metrics endpoint of `serve`, where [`metrics_at`] decided.
fn start_metrics(
    at: MetricsAt,
    server: &BlobServer,
) -> CliResult<Option<crate::admin::AdminServer>> {
    let sources = crate::admin::Sources::new().server(server.probe());
    let (candidates, flag) = match at {
        MetricsAt::Flag(text, addrs) => (addrs, Some(text)),
        MetricsAt::Key(addrs) => (addrs, None),
        MetricsAt::Off => return Ok(None),
    };
    let mut last = None;
    for addr in candidates {
        match crate::admin::AdminServer::start(addr, sources.clone()) {
            Ok(a) => return Ok(Some(a)),
            Err(e) => last = Some(e),
        }
    }
    let why = last.map_or("no address".to_string(), |e| e.to_string());
    match flag {
        Some(text) => Err(Fail::new(format!(
            "--metrics {text}: {why}; give another address with --metrics HOST:PORT"
        ))),
        None => {
            tracing::warn!(
                key = keys::METRICS_PORT,
                error = %why,
                "the metrics endpoint is off (is Flink's own Prometheus reporter on that port?); \
                 give --metrics HOST:PORT to choose its address"
            );
            Ok(None)
        }
    }
}

/// `ls --metrics`: a running server's blobs, streamed from its endpoint's `/blobs`.
fn ls_live(addr: &str, json: bool) -> CliResult {
    let body = crate::admin::fetch(addr, "/blobs").map_err(|e| Fail::new(e.to_string()))?;
    let mut out = io::BufWriter::new(io::stdout().lock());
    if json {
        write!(out, "{{\"server\":{},\"blobs\":[", json_str(addr))?;
    }
    // A listing line is at most a key, a job id and a JSON-escaped name of 64 bytes.
    const MAX_LINE: u64 = 4096;
    let mut body = body;
    let mut complete = false;
    let mut n = 0u64;
    let mut raw = Vec::new();
    loop {
        raw.clear();
        io::BufRead::read_until(
            &mut io::Read::take(&mut body, MAX_LINE + 1),
            b'\n',
            &mut raw,
        )
        .map_err(|e| Fail::new(format!("metrics endpoint {addr}: {e}")))?;
        if raw.is_empty() {
            break;
        }
        if raw.len() as u64 > MAX_LINE {
            return Err(Fail::new(format!(
                "metrics endpoint {addr}: a listing line over {MAX_LINE} bytes (is it a \
                 blobvault metrics endpoint?)"
            )));
        }
        let line = String::from_utf8_lossy(&raw);
        let line = line.trim_end_matches(['\n', '\r']);
        if line.starts_with("{\"end\":true") {
            let said = crate::admin::parse_flat_json(line)
                .and_then(|f| f.into_iter().find(|(k, _)| k == "blobs"))
                .and_then(|(_, v)| v.parse::<u64>().ok());
            if said != Some(n) {
                out.flush()?;
                return Err(Fail::new(format!(
                    "metrics endpoint {addr}: the listing's end line {line:?} does not match the \
                     {n} blobs received"
                )));
            }
            complete = true;
            break;
        }
        let entry = crate::admin::parse_entry(line).ok_or_else(|| {
            Fail::new(format!(
                "metrics endpoint {addr}: bad listing line {line:?}"
            ))
        })?;
        if json {
            write!(out, "{}{}", if n == 0 { "" } else { "," }, line.trim_end())?;
        } else {
            match &entry.named {
                None => writeln!(out, "{}\t{}", entry.key, entry.size)?,
                Some((j, name)) => writeln!(out, "{}\t{}\t{j}\t{name}", entry.key, entry.size)?,
            }
        }
        n += 1;
    }
    if !complete {
        out.flush()?;
        return Err(Fail::new(format!(
            "metrics endpoint {addr}: the listing ended early after {n} blobs (server stopped, or \
             its store failed: see its log)"
        )));
    }
    if json {
        writeln!(out, "]}}")?;
    }
    out.flush()?;
    Ok(())
}

/// `stat --metrics`: a running server's figures from its endpoint's `/stat`.
fn stat_live(addr: &str, json: bool) -> CliResult {
    let mut body = String::new();
    io::Read::read_to_string(
        &mut io::Read::take(
            crate::admin::fetch(addr, "/stat").map_err(|e| Fail::new(e.to_string()))?,
            1024 * 1024,
        ),
        &mut body,
    )
    .map_err(|e| Fail::new(format!("metrics endpoint {addr}: {e}")))?;
    let fields = crate::admin::parse_flat_json(&body)
        .ok_or_else(|| Fail::new(format!("metrics endpoint {addr}: bad /stat reply {body:?}")))?;
    if json {
        println!("{}", body.trim_end());
        return Ok(());
    }
    let get = |k: &str| {
        fields
            .iter()
            .find(|(key, _)| key == k)
            .map_or("?".to_string(), |(_, v)| v.clone())
    };
    println!("server         {addr}");
    println!("dir            {}", get("dir"));
    println!("content blobs  {}", get("content_blobs"));
    println!("named blobs    {}", get("named_blobs"));
    println!("contents       {}", get("contents"));
    println!("payload bytes  {}", get("payload_bytes"));
    println!("chunk size     {}", get("chunk_size"));
    println!("file bytes     {}", get("file_bytes"));
    println!("log bytes      {}", get("wal_bytes"));
    println!("connections    {}", get("connections_open"));
    println!("requests       {}", get("requests"));
    Ok(())
}

fn named_id(key: Option<BlobKey>, named: &Named) -> CliResult<BlobId> {
    match (key, &named.job, &named.name) {
        (Some(k), None, None) => Ok(BlobId::Content(k)),
        (None, Some(j), Some(n)) => Ok(BlobId::Named(*j, n.clone())),
        _ => Err(Fail::new("give either a KEY or --job with --name")),
    }
}

/// An input that counts its bytes and names its path in read errors.
struct Input<'a> {
    inner: Box<dyn Read + 'a>,
    path: String,
    read: u64,
}

impl Read for Input<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self
            .inner
            .read(buf)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot read {}: {e}", self.path)))?;
        self.read += n as u64;
        Ok(n)
    }
}

fn open_input(file: &Path) -> CliResult<Input<'static>> {
    let path = file.display().to_string();
    if file.as_os_str() == "-" {
        return Ok(Input {
            inner: Box::new(io::stdin()),
            path: "stdin".into(),
            read: 0,
        });
    }
    let f = std::fs::File::open(file).map_err(|e| Fail::new(format!("cannot read {path}: {e}")))?;
    if f.metadata().is_ok_and(|m| m.is_dir()) {
        return Err(Fail::new(format!(
            "cannot read {path}: it is a directory (put stores one file)"
        )));
    }
    Ok(Input {
        inner: Box::new(f),
        path,
        read: 0,
    })
}

/// `s` as a shell word (quoted when it needs to be), so that printed flags can be pasted.
fn shell_word(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./:@%+=,".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn put(file: PathBuf, via: Via, named: Named, json: bool) -> CliResult {
    let mut input = open_input(&file)?;
    let put_target = match (&named.job, &named.name) {
        (Some(j), Some(n)) => PutTarget::Named(*j, n.clone()),
        (None, None) => PutTarget::Content,
        _ => return Err(Fail::new("a named PUT needs both --job and --name")),
    };
    let key = match via {
        Via::Server(addr, tls) => {
            let mut c = connect(&addr, &tls)?;
            match &put_target {
                PutTarget::Content => c.put_reader(&mut input)?,
                PutTarget::Named(j, n) => {
                    let mut hashing = crate::key::HashingReader::new(&mut input);
                    c.put_named_reader(*j, n, &mut hashing)?;
                    hashing.key()
                }
            }
        }
        Via::Dir(dir) => {
            check_dir_arg(&dir, "--dir")?;
            let store = BlobStore::open(&dir).map_err(|e| store_fail(e, &dir, Use::Direct))?;
            store.put_reader(&mut input, put_target.clone())?
        }
    };
    let size = input.read;
    let mut out = io::stdout().lock();
    match (&put_target, json) {
        (PutTarget::Content, false) => writeln!(out, "{key}")?,
        (PutTarget::Named(j, n), false) => writeln!(out, "--job {j} --name {}", shell_word(n))?,
        (PutTarget::Content, true) => writeln!(out, "{{\"key\":\"{key}\",\"size\":{size}}}")?,
        (PutTarget::Named(j, n), true) => writeln!(
            out,
            "{{\"key\":\"{key}\",\"size\":{size},\"job\":\"{j}\",\"name\":{}}}",
            json_str(n)
        )?,
    }
    Ok(())
}

fn get(key: Option<BlobKey>, via: Via, named: Named, output: Option<PathBuf>) -> CliResult {
    let id = named_id(key, &named)?;
    let Some(path) = output else {
        let mut out = io::stdout().lock();
        fetch(&id, via, &mut out)?;
        out.flush()?;
        return Ok(());
    };
    // Written beside the target and renamed into place once whole: a failed or cut-short GET
    // leaves no empty or partial FILE behind (and does not clobber one that was there).
    let file_name = path
        .file_name()
        .ok_or_else(|| Fail::new(format!("-o {}: needs a file name", path.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".part-{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let named_io = |e: io::Error| Fail::new(format!("cannot write {}: {e}", path.display()));
    let result = (|| -> CliResult {
        let file = std::fs::File::create(&tmp).map_err(named_io)?;
        let mut out = io::BufWriter::new(file);
        fetch(&id, via, &mut out)?;
        out.into_inner()
            .map_err(|e| named_io(e.into_error()))?
            .sync_all()
            .map_err(named_io)?;
        std::fs::rename(&tmp, &path).map_err(named_io)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Copies blob `id` from a server or a store directory to `out`.
fn fetch(id: &BlobId, via: Via, out: &mut impl Write) -> CliResult {
    let missing = |place: &str| Fail {
        code: EXIT_NO_SUCH_BLOB,
        msg: format!("no such blob: {id} (in {place})"),
    };
    match via {
        Via::Server(addr, tls) => {
            let mut c = connect(&addr, &tls)?;
            let started = match id {
                BlobId::Content(k) => c.get(*k),
                BlobId::Named(j, n) => c.get_named(*j, n),
            };
            let mut d = match started {
                Ok(d) => d,
                // The server's reply for a blob it has not got (PROTOCOL.md §5.4).
                Err(ClientError::Server { message, .. })
                    if message == format!("Cannot find required BLOB {id}") =>
                {
                    return Err(missing(&format!("the server at {addr}")));
                }
                Err(e) => return Err(e.into()),
            };
            io::copy(&mut d, out).map_err(|e| d.error_of(e))?;
        }
        Via::Dir(dir) => {
            let store = open_existing(&dir, Use::Direct)?;
            let mut r = store
                .get(id)?
                .ok_or_else(|| missing(&format!("the store at {}", dir.display())))?;
            io::copy(&mut r, out)?;
        }
    }
    Ok(())
}

fn delete(key: Option<BlobKey>, via: Via, named: Named) -> CliResult {
    let what = match (key, named.job, named.name) {
        (Some(k), None, None) => DeleteTarget::Content(k),
        (None, Some(j), Some(n)) => DeleteTarget::Named(j, n),
        (None, Some(j), None) => DeleteTarget::Job(j),
        _ => return Err(Fail::new("give a KEY, --job with --name, or --job alone")),
    };
    match via {
        Via::Server(addr, tls) => {
            let mut c = connect(&addr, &tls)?;
            match what {
                DeleteTarget::Content(k) => c.delete(k)?,
                DeleteTarget::Named(j, n) => c.delete_named(j, &n)?,
                DeleteTarget::Job(j) => c.delete_job(j)?,
            }
        }
        Via::Dir(dir) => {
            open_existing(&dir, Use::Direct)?.delete(what)?;
        }
    }
    Ok(())
}

/// `Some(x)` as a JSON string, `None` as `null`.
fn json_opt(v: Option<impl std::fmt::Display>) -> String {
    v.map_or_else(|| "null".into(), |v| json_str(&v.to_string()))
}

fn ls(dir: StoreDir, json: bool) -> CliResult {
    let dir = store_dir(dir);
    let store = open_existing(&dir, Use::Offline)?;
    let mut out = io::BufWriter::new(io::stdout().lock());
    let list = store.list()?;
    if json {
        write!(
            out,
            "{{\"dir\":{},\"blobs\":[",
            json_str(&dir.display().to_string())
        )?;
    }
    for (i, e) in list.iter().enumerate() {
        match (&e.id, json) {
            (BlobId::Content(k), false) => writeln!(out, "{k}\t{}", e.len)?,
            (BlobId::Named(j, n), false) => writeln!(out, "{}\t{}\t{j}\t{n}", e.key, e.len)?,
            (id, true) => {
                let sep = if i == 0 { "" } else { "," };
                write!(out, "{sep}{{\"key\":\"{}\",\"size\":{}", e.key, e.len)?;
                if let BlobId::Named(j, n) = id {
                    write!(out, ",\"job\":\"{j}\",\"name\":{}", json_str(n))?;
                }
                write!(out, "}}")?;
            }
        }
    }
    if json {
        writeln!(out, "]}}")?;
    }
    out.flush()?;
    Ok(())
}

fn stat(dir: StoreDir, json: bool) -> CliResult {
    let dir = store_dir(dir);
    let store = open_existing(&dir, Use::Offline)?;
    let s = store.stats()?;
    if json {
        println!(
            "{{\"dir\":{},\"content_blobs\":{},\"named_blobs\":{},\"contents\":{},\
             \"payload_bytes\":{},\"chunks\":{},\"tails\":{},\"chunk_size\":{},\
             \"file_bytes\":{},\"log_replay\":{}}}",
            json_str(&store.dir().display().to_string()),
            s.content_blobs,
            s.named_blobs,
            s.contents,
            s.payload_bytes,
            s.chunks,
            s.tails,
            s.chunk_size,
            s.file_bytes,
            json_opt(s.log.as_ref())
        );
        return Ok(());
    }
    println!("dir            {}", store.dir().display());
    println!("content blobs  {}", s.content_blobs);
    println!("named blobs    {}", s.named_blobs);
    println!("contents       {}", s.contents);
    println!("payload bytes  {}", s.payload_bytes);
    println!("chunks         {}", s.chunks);
    println!("tails          {}", s.tails);
    println!("chunk size     {}", s.chunk_size);
    println!("file bytes     {}", s.file_bytes);
    if let Some(log) = &s.log {
        println!("log replay     {log}");
    }
    Ok(())
}

fn compact(dir: StoreDir) -> CliResult {
    let dir = store_dir(dir);
    require_store(&dir)?;
    let (before, after) =
        BlobStore::compact(&dir).map_err(|e| store_fail(e, &dir, Use::Offline))?;
    println!("file bytes     {before} -> {after}");
    Ok(())
}

fn verify(dir: StoreDir, json: bool) -> CliResult {
    let dir = store_dir(dir);
    let store = open_existing(&dir, Use::Offline)?;
    let r = store.verify()?;
    let log_lost = r.log.as_ref().is_some_and(|l| l.lost_writes());
    let clean = r.is_clean() && !log_lost;
    if json {
        let damaged: Vec<String> = r
            .damaged
            .iter()
            .map(|d| format!("{{\"key\":\"{}\",\"what\":{}}}", d.key, json_str(&d.what)))
            .collect();
        println!(
            "{{\"clean\":{clean},\"blobs_checked\":{},\"bytes_checked\":{},\"damaged\":[{}],\
             \"orphan_chunks\":{},\"dangling_names\":{},\"log_replay\":{},\"log_lost_writes\":{}}}",
            r.blobs_checked,
            r.bytes_checked,
            damaged.join(","),
            r.orphan_chunks,
            r.dangling_names,
            json_opt(r.log.as_ref()),
            log_lost
        );
    } else {
        println!(
            "checked {} blobs, {} bytes: {} damaged, {} orphan chunks, {} dangling names",
            r.blobs_checked,
            r.bytes_checked,
            r.damaged.len(),
            r.orphan_chunks,
            r.dangling_names
        );
        for d in &r.damaged {
            println!("damaged {}: {}", d.key, d.what);
        }
        if let Some(log) = &r.log {
            println!("write-ahead log: {log}");
        }
    }
    if clean {
        Ok(())
    } else {
        Err(Fail::new(format!(
            "the store at {} has damage or lost writes (see above)",
            dir.display()
        )))
    }
}

/// The server's periodic garbage collection of its recovery store, on a thread of its own.
fn periodic_gc(rec: Arc<dyn crate::recovery::RecoveryStore>, every: Duration) -> CliResult {
    std::thread::Builder::new()
        .name("blobvault-recovery-gc".into())
        .spawn(move || {
            loop {
                std::thread::sleep(every);
                if let Err(e) = rec.gc() {
                    tracing::warn!(error = %e, "recovery store garbage collection failed; next in {every:?}");
                }
            }
        })?;
    Ok(())
}

fn recovery(cmd: RecoveryCmd) -> CliResult {
    use crate::recovery::{RecoveryTarget, recovery_db_path};
    let (RecoveryCmd::Ls(a) | RecoveryCmd::Gc(a) | RecoveryCmd::Purge(a)) = &cmd;
    let mut conf = match &a.config {
        Some(path) => Configuration::load_file(path)?,
        None => Configuration::new(),
    };
    for (k, v) in &a.conf {
        conf.set(k, v);
    }
    let target = RecoveryTarget::parse(&a.recovery_dir)?;
    // Each needs an existing recovery store: opening a redb file would create an empty one.
    if let RecoveryTarget::File(dir) = &target
        && !recovery_db_path(dir).is_file()
    {
        return Err(Fail::new(format!(
            "no recovery store at {} (no blob/recovery.redb in it)",
            dir.display()
        )));
    }
    let rec = target.open(&conf)?;
    match cmd {
        RecoveryCmd::Ls(_) => {
            let mut out = io::stdout().lock();
            for id in rec.list()? {
                match id {
                    BlobId::Content(k) => writeln!(out, "{k}")?,
                    BlobId::Named(j, n) => writeln!(out, "{j}\t{n}")?,
                }
            }
        }
        RecoveryCmd::Gc(_) => {
            let r = rec.gc()?;
            println!(
                "collected {} of {} content objects in {target} ({} referenced, {} younger than \
                 the grace period, {} held by another collection)",
                r.deleted, r.content_objects, r.kept_referenced, r.kept_young, r.skipped_marked
            );
        }
        RecoveryCmd::Purge(_) => {
            let n = rec.list()?.len();
            rec.purge()?;
            println!("purged {n} blobs from {target}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_is_32_hex_digits_as_given_or_any_text_hashed_stably() {
        let hex = "00112233445566778899aabbccddeeff";
        assert_eq!(parse_job(hex).unwrap().to_string(), hex);
        let a = parse_job("nightly-etl").unwrap();
        assert_eq!(a, parse_job("nightly-etl").unwrap());
        assert_ne!(a, parse_job("nightly-etl2").unwrap());
        let sha = BlobKey::of(b"nightly-etl").to_string();
        assert_eq!(a.to_string(), sha[..32]);
        assert!(parse_job("").is_err());
    }

    #[test]
    fn names_print_as_shell_words() {
        assert_eq!(shell_word("lib/app-1.0.jar"), "lib/app-1.0.jar");
        assert_eq!(shell_word("a b"), "'a b'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        assert_eq!(shell_word(""), "''");
    }

    #[test]
    fn every_argument_is_described_and_every_command_has_an_example() {
        use clap::CommandFactory;
        fn walk(cmd: &clap::Command, path: &str) {
            for a in cmd.get_arguments() {
                if a.get_id() == "help" || a.get_id() == "version" {
                    continue;
                }
                assert!(a.get_help().is_some(), "{path}: {} has no help", a.get_id());
            }
            let leaf = cmd.get_subcommands().next().is_none();
            if leaf && path != "blobvault" {
                let after = cmd
                    .get_after_help()
                    .map(|s| s.to_string())
                    .unwrap_or_default();
                assert!(after.contains("blobvault "), "{path}: no example");
            }
            for s in cmd.get_subcommands() {
                walk(s, &format!("{path} {}", s.get_name()));
            }
        }
        walk(&Cli::command(), "blobvault");
    }
}
