//! The `blobvault` command line: a thin layer over the library.

use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::{Configuration, PortRange, ServerConfig, default_data_dir};
use crate::key::{BlobId, BlobKey, JobId};
use crate::protocol::{DeleteTarget, PutTarget};
use crate::store::{BlobStore, StoreOptions};
use crate::{BlobClient, BlobServer};

type CliResult = Result<(), Box<dyn std::error::Error>>;

#[derive(Debug, Parser)]
#[command(
    name = "blobvault",
    version,
    about = "A blob store for job artifacts speaking Flink 0.10's BLOB protocol"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Where put/get/delete act: a running server, or a store directory directly.
#[derive(Debug, clap::Args)]
struct Target {
    /// Address of a running server (host:port).
    #[arg(long, short = 's')]
    server: Option<SocketAddr>,
    /// Store directory to use directly when no --server is given (default: the embedded location).
    #[arg(long, short = 'd')]
    dir: Option<PathBuf>,
}

/// A named blob: --job and --name together.
#[derive(Debug, clap::Args)]
struct Named {
    /// Job id (32 hex characters) of a named blob.
    #[arg(long)]
    job: Option<JobId>,
    /// Name of the blob within the job (at most 64 bytes of UTF-8).
    #[arg(long, requires = "job")]
    name: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Serve a store over the BLOB protocol.
    Serve(ServeArgs),
    /// Store a file (or stdin with `-`); prints its key.
    Put {
        file: PathBuf,
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        named: Named,
    },
    /// Fetch a blob by KEY or by --job/--name, to stdout or --output.
    Get {
        key: Option<BlobKey>,
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        named: Named,
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
    },
    /// Delete a blob by KEY, by --job/--name, or a whole job with --job alone.
    Delete {
        key: Option<BlobKey>,
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        named: Named,
    },
    /// List the blobs of a store directory.
    Ls {
        #[arg(long, short = 'd')]
        dir: Option<PathBuf>,
    },
    /// Show figures of a store directory.
    Stat {
        #[arg(long, short = 'd')]
        dir: Option<PathBuf>,
    },
    /// Re-hash every blob of a store directory and report what the replay of its write-ahead
    /// log found; exit status 1 if a blob is damaged or the log lost acknowledged writes.
    Verify {
        #[arg(long, short = 'd')]
        dir: Option<PathBuf>,
    },
    /// Compact a store directory that no server has open: give back the free space at the end
    /// of its file.
    Compact {
        #[arg(long, short = 'd')]
        dir: Option<PathBuf>,
    },
    /// Load generator over the wire protocol.
    Bench(crate::loadgen::BenchArgs),
    /// Inspect or purge a recovery directory.
    Recovery {
        #[command(subcommand)]
        cmd: RecoveryCmd,
    },
}

#[derive(Debug, Subcommand)]
enum RecoveryCmd {
    /// List the blobs held for failover.
    Ls {
        #[arg(long)]
        recovery_dir: PathBuf,
    },
    /// Remove every blob held for failover (no running server needs them any more).
    Purge {
        #[arg(long)]
        recovery_dir: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Store directory (default: the embedded location, see README).
    #[arg(long, short = 'd')]
    dir: Option<PathBuf>,
    /// Port, 0 for any free one, or a range like 50100-50200 (default: `-D blob.server.port`,
    /// else 0).
    #[arg(long, short = 'p')]
    port: Option<PortRange>,
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// Recovery directory on shared storage; turns recovery on.
    #[arg(long)]
    recovery_dir: Option<PathBuf>,
    /// Flink configuration entries, e.g. -D blob.fetch.num-concurrent=16.
    #[arg(short = 'D', value_parser = parse_kv)]
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
    /// Most connections open at once (each needs a file descriptor; the soft limit is raised
    /// towards the hard one to fit).
    #[arg(long, value_name = "N", default_value_t = crate::config::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Acknowledge PUTs without waiting for fsync (faster; a crash may lose the PUTs and
    /// DELETEs of the last --no-fsync-interval seconds).
    #[arg(long)]
    no_fsync: bool,
    /// With --no-fsync: seconds after which a write is made durable in the background, the most
    /// a crash can lose (decimals allowed).
    #[arg(long, default_value_t = 1.0, value_parser = parse_interval)]
    no_fsync_interval: f64,
    /// MiB kept in `<dir>/blobs.reserve` so that DELETEs still work on a full disk (0: none).
    #[arg(long, default_value_t = 8)]
    reserve_mib: u64,
}

fn parse_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 86_400.0 => Ok(v),
        _ => Err(format!("expected seconds between 0 and 86400, got {s:?}")),
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

/// Runs the command line; returns the exit status.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let _ = tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
    let result = match cli.cmd {
        Cmd::Serve(a) => serve(a),
        Cmd::Put {
            file,
            target,
            named,
        } => put(file, target, named),
        Cmd::Get {
            key,
            target,
            named,
            output,
        } => get(key, target, named, output),
        Cmd::Delete { key, target, named } => delete(key, target, named),
        Cmd::Ls { dir } => ls(dir),
        Cmd::Stat { dir } => stat(dir),
        Cmd::Verify { dir } => return verify(dir),
        Cmd::Compact { dir } => compact(dir),
        Cmd::Bench(a) => crate::loadgen::run_cli(&a),
        Cmd::Recovery { cmd } => recovery(cmd),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("blobvault: {e}");
            1
        }
    }
}

fn open_store(dir: Option<PathBuf>) -> Result<BlobStore, Box<dyn std::error::Error>> {
    Ok(BlobStore::open(dir.unwrap_or_else(default_data_dir))?)
}

fn serve(a: ServeArgs) -> CliResult {
    let mut conf = Configuration::new();
    for (k, v) in &a.conf {
        conf.set(k, v);
    }
    let mut config = ServerConfig::from_config(&conf)?;
    config.bind = a.bind;
    // `--port` wins over `-D blob.server.port`, which `from_config` has read.
    if let Some(ports) = a.port {
        config.ports = ports;
    }
    config.deadlines = crate::config::Deadlines {
        idle: a.idle_timeout,
        header: a.header_timeout,
        stall: a.stall_timeout,
        min_rate: a.min_rate,
        request: a.request_timeout,
    };
    config.max_connections = a.max_connections;
    let workers = config.num_concurrent;
    let need = crate::server::descriptors_needed(a.max_connections, workers);
    if let Some(limit) = crate::server::raise_fd_limit(need) {
        tracing::debug!(limit, "descriptor limit");
    }
    let dir = a.dir.unwrap_or_else(default_data_dir);
    let mut opts = StoreOptions::new(&dir)
        .durable(!a.no_fsync)
        .no_fsync_interval(Duration::from_secs_f64(a.no_fsync_interval))
        .reserve_bytes(a.reserve_mib.saturating_mul(1024 * 1024));
    if let Some(r) = crate::recovery::from_cli_and_config(a.recovery_dir.as_deref(), &conf)? {
        opts = opts.recovery(r);
    }
    let store = opts.open()?;
    let mut server = BlobServer::start(store, config)?;
    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
    ctrlc::set_handler(move || {
        let _ = stop_tx.try_send(());
    })?;
    tracing::info!(dir = %dir.display(), "serving store");
    let mut out = io::stdout().lock();
    writeln!(out, "listening on {}", server.local_addr())?;
    out.flush()?;
    drop(out);
    let _ = stop_rx.recv();
    tracing::info!("stopping");
    server.shutdown();
    Ok(())
}

fn named_id(key: Option<BlobKey>, named: &Named) -> Result<BlobId, Box<dyn std::error::Error>> {
    match (key, &named.job, &named.name) {
        (Some(k), None, None) => Ok(BlobId::Content(k)),
        (None, Some(j), Some(n)) => Ok(BlobId::Named(*j, n.clone())),
        _ => Err("give either a KEY or --job with --name".into()),
    }
}

fn put(file: PathBuf, target: Target, named: Named) -> CliResult {
    let input: Box<dyn io::Read> = if file.as_os_str() == "-" {
        Box::new(io::stdin().lock())
    } else {
        Box::new(std::fs::File::open(&file).map_err(|e| format!("{}: {e}", file.display()))?)
    };
    let put_target = match (&named.job, &named.name) {
        (Some(j), Some(n)) => PutTarget::Named(*j, n.clone()),
        (None, None) => PutTarget::Content,
        _ => return Err("a named PUT needs both --job and --name".into()),
    };
    let key = match target.server {
        Some(addr) => {
            let mut c = BlobClient::connect(addr)?;
            match &put_target {
                PutTarget::Content => c.put_reader(input)?,
                PutTarget::Named(j, n) => {
                    let mut hashing = crate::key::HashingReader::new(input);
                    c.put_named_reader(*j, n, &mut hashing)?;
                    hashing.key()
                }
            }
        }
        None => open_store(target.dir)?.put_reader(input, put_target)?,
    };
    println!("{key}");
    Ok(())
}

fn get(key: Option<BlobKey>, target: Target, named: Named, output: Option<PathBuf>) -> CliResult {
    let id = named_id(key, &named)?;
    let Some(path) = output else {
        let mut out = io::stdout().lock();
        fetch(&id, target, &mut out)?;
        out.flush()?;
        return Ok(());
    };
    // Written beside the target and renamed into place once whole: a failed or cut-short GET
    // leaves no empty or partial FILE behind (and does not clobber one that was there).
    let file_name = path.file_name().ok_or("-o needs a file name")?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".part-{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = (|| -> CliResult {
        let mut out = io::BufWriter::new(std::fs::File::create(&tmp)?);
        fetch(&id, target, &mut out)?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Copies blob `id` from a server or a store directory to `out`.
fn fetch(id: &BlobId, target: Target, out: &mut impl Write) -> CliResult {
    match target.server {
        Some(addr) => {
            let mut c = BlobClient::connect(addr)?;
            let mut d = match id {
                BlobId::Content(k) => c.get(*k)?,
                BlobId::Named(j, n) => c.get_named(*j, n)?,
            };
            io::copy(&mut d, out).map_err(|e| d.error_of(e))?;
        }
        None => {
            let store = open_store(target.dir)?;
            let mut r = store
                .get(id)?
                .ok_or_else(|| format!("no such blob: {id}"))?;
            io::copy(&mut r, out)?;
        }
    }
    Ok(())
}

fn delete(key: Option<BlobKey>, target: Target, named: Named) -> CliResult {
    let what = match (key, named.job, named.name) {
        (Some(k), None, None) => DeleteTarget::Content(k),
        (None, Some(j), Some(n)) => DeleteTarget::Named(j, n),
        (None, Some(j), None) => DeleteTarget::Job(j),
        _ => return Err("give a KEY, --job with --name, or --job alone".into()),
    };
    match target.server {
        Some(addr) => {
            let mut c = BlobClient::connect(addr)?;
            match what {
                DeleteTarget::Content(k) => c.delete(k)?,
                DeleteTarget::Named(j, n) => c.delete_named(j, &n)?,
                DeleteTarget::Job(j) => c.delete_job(j)?,
            }
        }
        None => {
            open_store(target.dir)?.delete(what)?;
        }
    }
    Ok(())
}

fn ls(dir: Option<PathBuf>) -> CliResult {
    let store = open_store(dir)?;
    let mut out = io::stdout().lock();
    for e in store.list()? {
        match &e.id {
            BlobId::Content(k) => writeln!(out, "{k}\t{}", e.len)?,
            BlobId::Named(j, n) => writeln!(out, "{}\t{}\t{j}\t{n}", e.key, e.len)?,
        }
    }
    Ok(())
}

fn stat(dir: Option<PathBuf>) -> CliResult {
    let store = open_store(dir)?;
    let s = store.stats()?;
    println!("dir            {}", store.dir().display());
    println!("content blobs  {}", s.content_blobs);
    println!("named blobs    {}", s.named_blobs);
    println!("contents       {}", s.contents);
    println!("payload bytes  {}", s.payload_bytes);
    println!("chunks         {}", s.chunks);
    println!("chunk size     {}", s.chunk_size);
    println!("file bytes     {}", s.file_bytes);
    if let Some(log) = &s.log {
        println!("log replay     {log}");
    }
    Ok(())
}

fn compact(dir: Option<PathBuf>) -> CliResult {
    let (before, after) = BlobStore::compact(dir.unwrap_or_else(default_data_dir))?;
    println!("file bytes     {before} -> {after}");
    Ok(())
}

fn verify(dir: Option<PathBuf>) -> i32 {
    let run = || -> Result<bool, Box<dyn std::error::Error>> {
        let store = open_store(dir)?;
        let r = store.verify()?;
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
        let log_lost = r.log.as_ref().is_some_and(|l| l.lost_writes());
        Ok(r.is_clean() && !log_lost)
    };
    match run() {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("blobvault: {e}");
            2
        }
    }
}

fn recovery(cmd: RecoveryCmd) -> CliResult {
    use crate::recovery::{RecoveryStore, RedbRecoveryStore};
    match cmd {
        RecoveryCmd::Ls { recovery_dir } => {
            let mut out = io::stdout().lock();
            for id in RedbRecoveryStore::open(&recovery_dir)?.list()? {
                match id {
                    BlobId::Content(k) => writeln!(out, "{k}")?,
                    BlobId::Named(j, n) => writeln!(out, "{j}\t{n}")?,
                }
            }
        }
        RecoveryCmd::Purge { recovery_dir } => {
            let rec = RedbRecoveryStore::open(&recovery_dir)?;
            let n = rec.list()?.len();
            rec.purge()?;
            println!("purged {n} blobs from {}", recovery_dir.display());
        }
    }
    Ok(())
}
