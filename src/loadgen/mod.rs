//! `blobvault bench`: a load generator over the wire protocol.
//!
//! It runs phases (`put`, `get`, `delete`) over N connections against any server address, or —
//! with no address — against an in-process server on a temporary store, so that one command gives
//! a number. Each phase reports ops/s, MB/s (10^6 bytes) and latency p50 / p99 / p999 / max.
//!
//! Extras measured in the same run, so that ratios compare like with like:
//! - `--raw-tcp`: the same bytes over plain loopback TCP (upload and download, no protocol, no
//!   store): the ceiling of this machine's network stack.
//! - `--dd`: `dd if=/dev/zero bs=1M conv=fdatasync` of the PUT phase's bytes into the store's
//!   directory: the ceiling of the disk for durable writes.
//! - `--java-client`: requests written the way Flink's Java `BlobClient` writes them (op byte,
//!   addressing byte, each length and each chunk a separate `write`, TCP_NODELAY never set).
//! - `--reopen`: (in-process server) the time to open the store again after a clean stop.
//!
//! The generator's own client is lean: it does not hash what it sends or receives unless
//! `--verify` is given, so the figures are the server's, not the client's SHA-1.

use std::fmt::Write as _;
use std::io::{self, IsTerminal, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crate::config::ServerConfig;
use crate::key::{BlobId, BlobKey, JobId, KeyHasher};
use crate::protocol::{
    self, CONTENT_ADDRESSABLE, DeleteTarget, Expect, MAX_CHUNK, NAME_ADDRESSABLE, PUT_OPERATION,
    PutTarget, ResponseDecoder, ResponseEvent,
};
use crate::server::BlobServer;
use crate::store::StoreOptions;

/// Blob sizes of a run: one fixed size, or the JAR-like mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeSpec {
    Fixed(u64),
    /// Most blobs 2–200 KiB, some up to 1 MiB, a few 1–8 MiB (see [`jar_mix_size`]).
    JarMix,
}

impl FromStr for SizeSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "jar" | "mix" | "jar-mix" => Ok(SizeSpec::JarMix),
            _ => parse_size(s).map(SizeSpec::Fixed),
        }
    }
}

impl std::fmt::Display for SizeSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SizeSpec::JarMix => f.write_str("jar-mix"),
            SizeSpec::Fixed(n) => f.write_str(&format_size(*n)),
        }
    }
}

impl SizeSpec {
    /// Size of operation `i` of a run seeded with `seed`.
    pub fn size_of(&self, seed: u64, i: u64) -> u64 {
        match self {
            SizeSpec::Fixed(n) => *n,
            SizeSpec::JarMix => jar_mix_size(seed, i),
        }
    }
}

/// Parses `4096`, `4k`, `4KiB`, `1M`, `256MiB`, `1g` (K, M, G are binary: KiB, MiB, GiB).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 4KiB, 1MiB, or jar)"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?} in {s:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// `4096` → `4KiB`, `1048576` → `1MiB`, `1500` → `1500B`.
pub fn format_size(n: u64) -> String {
    for (unit, shift) in [("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if n >= 1 << shift && n.is_multiple_of(1 << shift) {
            return format!("{}{unit}", n >> shift);
        }
    }
    format!("{n}B")
}

/// SplitMix64: a small, fast, well-mixed generator for sizes and content.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The generator of operation `i` of a run seeded with `seed`.
    pub fn for_op(seed: u64, i: u64) -> Rng {
        let mut r = Rng(seed ^ i.wrapping_add(1).wrapping_mul(0xA076_1D64_78BD_642F));
        r.next_u64();
        r
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Fills `buf` with pseudo-random bytes (incompressible, distinct per seed).
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let v = self.next_u64().to_le_bytes();
            let n = rest.len();
            rest.copy_from_slice(&v[..n]);
        }
    }
}

/// The JAR-like size mix ("many small JARs"): 94% log-uniform in 2–200 KiB, 5% in 200 KiB–1 MiB,
/// 1% in 1–8 MiB. Mean about 100 KiB; deterministic for `(seed, i)`.
pub fn jar_mix_size(seed: u64, i: u64) -> u64 {
    let mut r = Rng::for_op(seed ^ 0x5EED_0F51_2200_0001, i);
    let pick = r.next_f64();
    let (lo, hi): (f64, f64) = if pick < 0.94 {
        (2.0 * 1024.0, 200.0 * 1024.0)
    } else if pick < 0.99 {
        (200.0 * 1024.0, 1024.0 * 1024.0)
    } else {
        (1024.0 * 1024.0, 8.0 * 1024.0 * 1024.0)
    };
    let x: f64 = lo * (hi / lo).powf(r.next_f64());
    x as u64
}

/// The content of blob `i` of a run: `len` pseudo-random bytes.
pub fn blob_bytes(seed: u64, i: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Rng::for_op(seed, i).fill(&mut v);
    v
}

/// A phase of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    Put,
    Get,
    Delete,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Put => "put",
            Phase::Get => "get",
            Phase::Delete => "delete",
        }
    }
}

/// A file-per-blob server to compare with (`--compare`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Baseline {
    /// Flink 0.10's layout as the original wrote it: temp file, write, rename, no fsync.
    Files,
    /// The same with fsync of the file and of its directory before the reply (durable).
    FilesFsync,
}

impl Baseline {
    fn name(self) -> &'static str {
        match self {
            Baseline::Files => "files",
            Baseline::FilesFsync => "files-fsync",
        }
    }
}

/// Options of `blobvault bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Server to load; with none, an in-process server on a temp store is started.
    #[arg(long)]
    pub server: Option<std::net::SocketAddr>,
    /// Blobs per phase.
    #[arg(long, short = 'n', default_value_t = 10_000)]
    pub count: u64,
    /// Blob size (4096, 4KiB, 1MiB, 256MiB; K/M/G are binary) or `jar` for the JAR-like mix
    /// (most 2–200 KiB, a few MiB).
    #[arg(long, short = 's', default_value = "4KiB")]
    pub size: SizeSpec,
    /// Parallel connections (one thread each).
    #[arg(long, short = 'c', default_value_t = 8)]
    pub connections: usize,
    /// Named blobs (one random job, names bench-0, bench-1, …) instead of content-addressed.
    #[arg(long)]
    pub named: bool,
    /// Phases to run, in order, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "put,get,delete")]
    pub phases: Vec<Phase>,
    /// Read every blob this many times in the get phase.
    #[arg(long, default_value_t = 1)]
    pub get_rounds: u32,
    /// Write requests the way Flink's Java client does: each field and chunk in its own write,
    /// TCP_NODELAY never set (measures round-trip latency with Nagle on).
    #[arg(long)]
    pub java_client: bool,
    /// Also measure plain TCP over loopback with the same bytes and connections.
    #[arg(long)]
    pub raw_tcp: bool,
    /// Also time `dd … bs=1M conv=fdatasync` of the put phase's bytes into the store directory
    /// (`--dir`, or the in-process server's store).
    #[arg(long)]
    pub dd: bool,
    /// Hash what is sent and received and check every GET against it (costs client CPU).
    #[arg(long)]
    pub verify: bool,
    /// Store directory of the in-process server (default: a fresh temp directory, removed after).
    #[arg(long, short = 'd')]
    pub dir: Option<PathBuf>,
    /// In-process server: acknowledge PUTs without waiting for fsync.
    #[arg(long)]
    pub no_fsync: bool,
    /// In-process server: redb cache size in MiB (default: the store's default).
    #[arg(long)]
    pub cache_mib: Option<usize>,
    /// In-process server: chunk size of the new store in bytes (default: the store's default).
    #[arg(long)]
    pub chunk_size: Option<usize>,
    /// In-process server: do not check blobs on GET (shows what the check costs).
    #[arg(long)]
    pub no_read_verify: bool,
    /// In-process server: after the phases, stop cleanly and time opening the store again.
    #[arg(long)]
    pub reopen: bool,
    /// Report the peak RSS (VmHWM) of this process id at the end (e.g. an external server's).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Seed of sizes and content (default: from the clock, so runs never collide).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Run the same phases again against an in-process file-per-blob server (the original's
    /// layout: `cache/blob_<hex>`) and show both side by side.
    #[arg(long, value_enum)]
    pub compare: Option<Baseline>,
    /// Print the report as JSON on stdout (the text report then goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// No live progress line.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// Figures of one phase.
#[derive(Debug, Clone)]
pub struct PhaseReport {
    pub name: String,
    pub ops: u64,
    pub errors: u64,
    pub bytes: u64,
    pub seconds: f64,
    /// Latency percentiles in microseconds: p50, p99, p999, max.
    pub latency_us: [f64; 4],
    pub first_error: Option<String>,
}

impl PhaseReport {
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.seconds.max(1e-9)
    }

    pub fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.seconds.max(1e-9)
    }
}

/// Size of the store against what it holds.
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreBytes {
    /// Length of the database file. redb grows it by doubling (up to 4 GiB regions), so this
    /// jumps by 2x at thresholds; the part not yet used is sparse.
    pub file: u64,
    /// Blocks the database file occupies on disk.
    pub disk: u64,
    /// Bytes of distinct content stored.
    pub payload: u64,
}

/// The whole report of a run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// What served: `blobvault`, `files` or `files-fsync` (in-process), or `external`.
    pub target: String,
    pub server: String,
    pub in_process: bool,
    pub durable: Option<bool>,
    pub size: String,
    pub count: u64,
    pub connections: usize,
    pub named: bool,
    pub java_client: bool,
    pub phases: Vec<PhaseReport>,
    pub dd_mb_per_sec: Option<f64>,
    pub peak_rss_bytes: Option<u64>,
    /// Figures of the store after the put phase (in-process server).
    pub store_bytes: Option<StoreBytes>,
    pub reopen_ms: Option<f64>,
}

/// Runs the load generator and prints its report.
pub fn run_cli(args: &BenchArgs) -> Result<(), Box<dyn std::error::Error>> {
    let mut reports = vec![run(args)?];
    if let Some(b) = args.compare {
        if args.server.is_some() {
            return Err("--compare needs the in-process server (no --server)".into());
        }
        reports.push(run_with(args, Some(b), false)?);
    }
    let mut text: String = reports
        .iter()
        .map(format_text)
        .collect::<Vec<_>>()
        .join("\n");
    if let [a, b] = reports.as_slice() {
        text.push_str(&format_comparison(a, b));
    }
    if args.json {
        eprint!("{text}");
        match reports.as_slice() {
            [one] => println!("{}", format_json(one)),
            many => {
                let runs: Vec<String> = many.iter().map(format_json).collect();
                println!("{{\"runs\":[{}]}}", runs.join(","));
            }
        }
    } else {
        print!("{text}");
    }
    let errors: u64 = reports
        .iter()
        .flat_map(|r| &r.phases)
        .map(|p| p.errors)
        .sum();
    if errors > 0 {
        return Err(format!("{errors} operations failed").into());
    }
    Ok(())
}

/// Ops/s of `b` against `a`, phase by phase.
fn format_comparison(a: &Report, b: &Report) -> String {
    let mut s = format!("\n{} vs {} (ops/s ratio):\n", a.target, b.target);
    for pa in &a.phases {
        if let Some(pb) = b.phases.iter().find(|p| p.name == pa.name) {
            let _ = writeln!(
                s,
                "  {:<8} {:>10.0} vs {:>10.0}  = {:.2}x",
                pa.name,
                pa.ops_per_sec(),
                pb.ops_per_sec(),
                pa.ops_per_sec() / pb.ops_per_sec().max(1e-9)
            );
        }
    }
    s
}

/// A temp directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> io::Result<TempDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let p =
            std::env::temp_dir().join(format!("blobvault-bench-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p)?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs a benchmark as `args` describe and returns its figures.
pub fn run(args: &BenchArgs) -> Result<Report, Box<dyn std::error::Error>> {
    run_with(args, None, true)
}

/// Runs against `baseline` (in-process) instead of blobvault when given; `extras` are the raw
/// TCP and dd measurements.
fn run_with(
    args: &BenchArgs,
    baseline: Option<Baseline>,
    extras: bool,
) -> Result<Report, Box<dyn std::error::Error>> {
    if args.connections == 0 {
        return Err("--connections must be at least 1".into());
    }
    if let SizeSpec::Fixed(n) = args.size
        && n > protocol::MAX_BLOB_LEN
    {
        return Err(format!("--size {n} exceeds the protocol's 2 GiB limit").into());
    }
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let temp = match (&args.server, &args.dir) {
        (None, None) => Some(TempDir::new()?),
        (None, Some(_)) if baseline.is_some() => Some(TempDir::new()?),
        _ => None,
    };
    let store_dir: Option<PathBuf> = match (&args.dir, &temp) {
        (_, Some(t)) => Some(t.0.clone()),
        (Some(d), None) => Some(d.clone()),
        (None, None) => None,
    };
    let mut server = None;
    let mut file_server = None;
    let addr = match (args.server, baseline) {
        (Some(a), _) => a,
        (None, Some(b)) => {
            let dir = store_dir.clone().ok_or("no store directory")?;
            let fs = FileServer::start(&dir, b == Baseline::FilesFsync)?;
            let a = fs.addr;
            file_server = Some(fs);
            a
        }
        (None, None) => {
            let dir = store_dir.clone().ok_or("no store directory")?;
            let mut opts = StoreOptions::new(&dir).durable(!args.no_fsync);
            if let Some(mib) = args.cache_mib {
                opts.cache_size = mib << 20;
            }
            opts.verify_reads = !args.no_read_verify;
            if let Some(c) = args.chunk_size {
                opts.chunk_size = c.max(1);
            }
            let store = opts.open()?;
            // Every connection keeps its worker for the whole run: enough workers for all.
            let mut config = ServerConfig::default();
            config.num_concurrent = config.num_concurrent.max(args.connections + 2);
            let s = BlobServer::start(store, config)?;
            let a = s.local_addr();
            server = Some(s);
            a
        }
    };

    let mut report = Report {
        target: match (baseline, &server) {
            (Some(b), _) => b.name().to_string(),
            (None, Some(_)) => "blobvault".to_string(),
            (None, None) => "external".to_string(),
        },
        server: addr.to_string(),
        in_process: server.is_some() || file_server.is_some(),
        durable: match baseline {
            Some(b) => Some(b == Baseline::FilesFsync),
            None => server.as_ref().map(|_| !args.no_fsync),
        },
        size: args.size.to_string(),
        count: args.count,
        connections: args.connections,
        named: args.named,
        java_client: args.java_client,
        ..Report::default()
    };
    let sizes: Vec<u64> = (0..args.count)
        .map(|i| args.size.size_of(seed, i))
        .collect();
    let total_bytes: u64 = sizes.iter().sum();
    let progress = Progress::new(!args.quiet);

    if args.raw_tcp && extras {
        report
            .phases
            .extend(raw_tcp(total_bytes, args.connections, &progress)?);
    }
    if args.dd && extras {
        let dir = store_dir
            .clone()
            .ok_or("--dd needs a store directory: --dir, or no --server")?;
        report.dd_mb_per_sec = Some(dd(&dir, total_bytes)?);
    }

    let job = JobId::from_parts(Rng::new(seed).next_u64() as i64, seed as i64);
    let plan = Plan {
        addr,
        seed,
        job,
        named: args.named,
        java: args.java_client,
        verify: args.verify,
        sizes,
    };
    let mut workers: Vec<Worker> = (0..args.connections)
        .map(|c| Worker {
            conn: None,
            ops: (c as u64..args.count)
                .step_by(args.connections)
                .map(|i| (i, None))
                .collect(),
        })
        .collect();
    let mut put_done = false;
    for phase in &args.phases {
        match phase {
            Phase::Put => {
                report
                    .phases
                    .push(run_phase(&plan, &mut workers, *phase, 1, &progress));
                put_done = true;
                if let Some(s) = &server {
                    s.store().sync()?;
                    let st = s.store().stats()?;
                    report.store_bytes = Some(StoreBytes {
                        file: st.file_bytes,
                        disk: disk_usage(&s.store().dir().join(crate::store::DB_FILE))
                            .unwrap_or(st.file_bytes),
                        payload: st.payload_bytes,
                    });
                }
            }
            Phase::Get | Phase::Delete => {
                if !put_done {
                    return Err(format!(
                        "the {} phase needs a put phase before it in the same run",
                        phase.name()
                    )
                    .into());
                }
                let rounds = if *phase == Phase::Get {
                    args.get_rounds.max(1)
                } else {
                    1
                };
                report
                    .phases
                    .push(run_phase(&plan, &mut workers, *phase, rounds, &progress));
            }
        }
    }
    drop(workers);
    drop(file_server);

    if let Some(pid) = args.server_pid {
        report.peak_rss_bytes = peak_rss(&format!("/proc/{pid}/status"));
    } else if server.is_some() {
        report.peak_rss_bytes = peak_rss("/proc/self/status");
    }
    if let Some(mut s) = server.take() {
        s.shutdown();
        let store = s.store().clone();
        drop(s);
        drop(store);
        if args.reopen {
            let dir = store_dir.clone().ok_or("no store directory")?;
            let t = Instant::now();
            let store = StoreOptions::new(&dir).durable(!args.no_fsync).open()?;
            report.reopen_ms = Some(t.elapsed().as_secs_f64() * 1e3);
            drop(store);
        }
    }
    drop(temp);
    Ok(report)
}

/// Bytes of disk blocks a file occupies (its length where that cannot be known).
fn disk_usage(path: &Path) -> Option<u64> {
    let m = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Some(m.blocks() * 512)
    }
    #[cfg(not(unix))]
    Some(m.len())
}

fn peak_rss(status: &str) -> Option<u64> {
    let s = std::fs::read_to_string(status).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// What every connection of a run shares.
struct Plan {
    addr: SocketAddr,
    seed: u64,
    job: JobId,
    named: bool,
    java: bool,
    verify: bool,
    sizes: Vec<u64>,
}

impl Plan {
    fn name(i: u64) -> String {
        format!("bench-{i}")
    }
}

/// One connection's share of the operations: indexes and, after the put phase, their keys.
struct Worker {
    conn: Option<Conn>,
    ops: Vec<(u64, Option<BlobKey>)>,
}

/// Live progress on stderr.
struct Progress {
    on: bool,
    ops: AtomicU64,
    bytes: AtomicU64,
}

impl Progress {
    fn new(on: bool) -> Progress {
        Progress {
            on,
            ops: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        }
    }

    fn add(&self, bytes: u64) {
        self.ops.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Prints progress until `stop` is set.
    fn show(&self, name: &str, total: u64, stop: &AtomicBool) {
        if !self.on {
            return;
        }
        let tty = io::stderr().is_terminal();
        let every = if tty {
            Duration::from_millis(250)
        } else {
            Duration::from_secs(2)
        };
        let start = Instant::now();
        let mut next = start + every;
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
            if Instant::now() < next {
                continue;
            }
            next += every;
            let secs = start.elapsed().as_secs_f64();
            let ops = self.ops.load(Ordering::Relaxed);
            let mb = self.bytes.load(Ordering::Relaxed) as f64 / 1e6;
            let line = format!(
                "{name:>8} {ops}/{total}  {:.0} ops/s  {:.1} MB/s  {secs:.1} s",
                ops as f64 / secs,
                mb / secs
            );
            if tty {
                eprint!("\r\x1b[2K{line}");
            } else {
                eprintln!("{line}");
            }
        }
        if tty {
            eprint!("\r\x1b[2K");
        }
    }
}

/// Result of one connection in one phase.
#[derive(Default)]
struct Tally {
    lat_ns: Vec<u64>,
    bytes: u64,
    errors: u64,
    first_error: Option<String>,
}

/// Runs each job on its own thread and times them together: a job prepares (connects), waits
/// on the barrier, then works; the clock runs from the common start until the last one ends,
/// while a progress line for `name` shows on stderr.
fn timed<T: Send, F: FnOnce(&Barrier) -> T + Send>(
    name: &str,
    total: u64,
    progress: &Progress,
    jobs: Vec<F>,
) -> (Vec<T>, f64) {
    progress.ops.store(0, Ordering::Relaxed);
    progress.bytes.store(0, Ordering::Relaxed);
    let barrier = Barrier::new(jobs.len() + 1);
    let stop = AtomicBool::new(false);
    let mut results = Vec::new();
    let mut seconds = 0.0;
    std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .into_iter()
            .map(|job| {
                let barrier = &barrier;
                s.spawn(move || job(barrier))
            })
            .collect();
        s.spawn(|| progress.show(name, total, &stop));
        barrier.wait();
        let start = Instant::now();
        results = handles.into_iter().filter_map(|h| h.join().ok()).collect();
        seconds = start.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
    });
    (results, seconds)
}

fn run_phase(
    plan: &Plan,
    workers: &mut [Worker],
    phase: Phase,
    rounds: u32,
    progress: &Progress,
) -> PhaseReport {
    let total = plan.sizes.len() as u64 * rounds as u64;
    let jobs: Vec<_> = workers
        .iter_mut()
        .map(|w| {
            move |start: &Barrier| {
                // Connect before the clock starts: a phase measures requests, not handshakes.
                if w.conn.is_none() {
                    w.conn = Conn::connect(plan.addr, plan.java).ok();
                }
                start.wait();
                work(plan, w, phase, rounds, progress)
            }
        })
        .collect();
    let (tallies, seconds) = timed(phase.name(), total, progress, jobs);
    let mut lat: Vec<u64> = tallies
        .iter()
        .flat_map(|t| t.lat_ns.iter().copied())
        .collect();
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i] as f64 / 1e3
    };
    PhaseReport {
        name: phase.name().to_string(),
        ops: lat.len() as u64,
        errors: tallies.iter().map(|t| t.errors).sum(),
        bytes: tallies.iter().map(|t| t.bytes).sum(),
        seconds,
        latency_us: [pct(0.50), pct(0.99), pct(0.999), pct(1.0)],
        first_error: tallies.iter().find_map(|t| t.first_error.clone()),
    }
}

/// One connection's loop over its operations.
fn work(plan: &Plan, w: &mut Worker, phase: Phase, rounds: u32, progress: &Progress) -> Tally {
    let mut t = Tally {
        lat_ns: Vec::with_capacity(w.ops.len() * rounds as usize),
        ..Tally::default()
    };
    for _ in 0..rounds {
        for (i, key) in w.ops.iter_mut() {
            let i = *i;
            let size = plan.sizes[i as usize];
            let start = Instant::now();
            let r = (|| -> io::Result<u64> {
                if w.conn.is_none() {
                    w.conn = Some(Conn::connect(plan.addr, plan.java)?);
                }
                let Some(c) = w.conn.as_mut() else {
                    return Err(io::Error::other("not connected"));
                };
                match phase {
                    Phase::Put => {
                        let target = if plan.named {
                            PutTarget::Named(plan.job, Plan::name(i))
                        } else {
                            PutTarget::Content
                        };
                        *key = c.put(&target, size, Rng::for_op(plan.seed, i), plan.verify)?;
                        Ok(size)
                    }
                    Phase::Get => {
                        let id = if plan.named {
                            BlobId::Named(plan.job, Plan::name(i))
                        } else {
                            BlobId::Content(key.ok_or_else(|| io::Error::other("no key"))?)
                        };
                        let check = if plan.verify { *key } else { None };
                        let n = c.get(&id, check)?;
                        if n != size {
                            return Err(io::Error::other(format!(
                                "GET returned {n} bytes, expected {size}"
                            )));
                        }
                        Ok(n)
                    }
                    Phase::Delete => {
                        let target = if plan.named {
                            DeleteTarget::Named(plan.job, Plan::name(i))
                        } else {
                            DeleteTarget::Content(key.ok_or_else(|| io::Error::other("no key"))?)
                        };
                        c.delete(&target)?;
                        Ok(0)
                    }
                }
            })();
            match r {
                Ok(bytes) => {
                    t.lat_ns.push(start.elapsed().as_nanos() as u64);
                    t.bytes += bytes;
                    progress.add(bytes);
                }
                Err(e) => {
                    t.errors += 1;
                    if t.first_error.is_none() {
                        t.first_error = Some(format!("{} #{i}: {e}", phase.name()));
                    }
                    // After an error the server closes the connection: start a new one.
                    w.conn = None;
                }
            }
        }
    }
    t
}

const CLIENT_BUF: usize = 256 * 1024;

/// The generator's client: the sans-IO codec over a socket, without hashing by default.
struct Conn {
    stream: TcpStream,
    java: bool,
    out: Vec<u8>,
    piece: Vec<u8>,
    rbuf: Box<[u8]>,
    rpos: usize,
    rlen: usize,
}

/// What a reply carried.
enum Reply {
    Key(BlobKey),
    Ok,
    Body(u64),
}

impl Conn {
    fn connect(addr: SocketAddr, java: bool) -> io::Result<Conn> {
        let stream = TcpStream::connect(addr)?;
        if !java {
            stream.set_nodelay(true)?;
        }
        stream.set_read_timeout(Some(Duration::from_secs(120)))?;
        stream.set_write_timeout(Some(Duration::from_secs(120)))?;
        Ok(Conn {
            stream,
            java,
            out: Vec::with_capacity(CLIENT_BUF + MAX_CHUNK + 64),
            piece: vec![0u8; MAX_CHUNK],
            rbuf: vec![0u8; CLIENT_BUF].into_boxed_slice(),
            rpos: 0,
            rlen: 0,
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out)?;
            self.out.clear();
        }
        Ok(())
    }

    /// In Java-client mode: one `write` per field, as `BlobClient` does with an unbuffered
    /// socket stream.
    fn java_write(&mut self, field: &[u8]) -> io::Result<()> {
        self.stream.write_all(field)
    }

    fn java_name(&mut self, job: &JobId, name: &str) -> io::Result<()> {
        self.java_write(&job.0)?;
        self.java_write(&(name.len() as i32).to_le_bytes())?;
        self.java_write(name.as_bytes())
    }

    /// PUTs `size` bytes from `rng`; returns the key (the server's, or with `hash` our own
    /// SHA-1 of what was sent, checked against the server's).
    fn put(
        &mut self,
        target: &PutTarget,
        size: u64,
        mut rng: Rng,
        hash: bool,
    ) -> io::Result<Option<BlobKey>> {
        let mut hasher = hash.then(KeyHasher::new);
        self.out.clear();
        if self.java {
            self.java_write(&[PUT_OPERATION])?;
            match target {
                PutTarget::Content => self.java_write(&[CONTENT_ADDRESSABLE])?,
                PutTarget::Named(job, name) => {
                    self.java_write(&[NAME_ADDRESSABLE])?;
                    self.java_name(job, name)?;
                }
            }
        } else {
            protocol::encode_put_header(target, &mut self.out);
        }
        let mut left = size;
        while left > 0 {
            let n = left.min(MAX_CHUNK as u64) as usize;
            let mut piece = std::mem::take(&mut self.piece);
            rng.fill(&mut piece[..n]);
            if let Some(h) = hasher.as_mut() {
                h.update(&piece[..n]);
            }
            let r = if self.java {
                self.java_write(&(n as i32).to_le_bytes())
                    .and_then(|_| self.java_write(&piece[..n]))
            } else {
                protocol::encode_chunk(&piece[..n], &mut self.out);
                if self.out.len() >= CLIENT_BUF {
                    self.flush()
                } else {
                    Ok(())
                }
            };
            self.piece = piece;
            r?;
            left -= n as u64;
        }
        if self.java {
            self.java_write(&protocol::TERMINATOR.to_le_bytes())?;
        } else {
            protocol::encode_terminator(&mut self.out);
            self.flush()?;
        }
        let expect = match target {
            PutTarget::Content => Expect::PutContent,
            PutTarget::Named(..) => Expect::PutNamed,
        };
        let ours = hasher.map(KeyHasher::finish);
        match self.reply(expect, |_| {})? {
            Reply::Key(k) => match ours {
                Some(o) if o != k => Err(io::Error::other(format!(
                    "server answered key {k}, we sent {o}"
                ))),
                _ => Ok(Some(k)),
            },
            _ => Ok(ours),
        }
    }

    /// GETs `id`; returns the body length. With `check`, the body's SHA-1 must equal it.
    fn get(&mut self, id: &BlobId, check: Option<BlobKey>) -> io::Result<u64> {
        self.out.clear();
        if self.java {
            self.java_write(&[protocol::GET_OPERATION])?;
            match id {
                BlobId::Content(k) => {
                    self.java_write(&[CONTENT_ADDRESSABLE])?;
                    self.java_write(&k.0)?;
                }
                BlobId::Named(job, name) => {
                    self.java_write(&[NAME_ADDRESSABLE])?;
                    self.java_name(job, name)?;
                }
            }
        } else {
            protocol::encode_get(id, &mut self.out);
            self.flush()?;
        }
        let mut hasher = check.map(|_| KeyHasher::new());
        let r = self.reply(Expect::Get, |d| {
            if let Some(h) = hasher.as_mut() {
                h.update(d);
            }
        })?;
        if let (Some(h), Some(k)) = (hasher, check) {
            let got = h.finish();
            if got != k {
                return Err(io::Error::other(format!(
                    "GET body hashes to {got}, not {k}"
                )));
            }
        }
        match r {
            Reply::Body(n) => Ok(n),
            _ => Err(io::Error::other("unexpected reply to GET")),
        }
    }

    fn delete(&mut self, target: &DeleteTarget) -> io::Result<()> {
        self.out.clear();
        protocol::encode_delete(target, &mut self.out);
        if self.java {
            // op byte, addressing byte, then the rest (key, or job / length / name) field by field
            let out = std::mem::take(&mut self.out);
            let r = (|| {
                self.java_write(&out[..1])?;
                self.java_write(&out[1..2])?;
                match target {
                    DeleteTarget::Named(job, name) => self.java_name(job, name),
                    _ => self.java_write(&out[2..]),
                }
            })();
            self.out = out;
            self.out.clear();
            r?;
        } else {
            self.flush()?;
        }
        match self.reply(Expect::Delete, |_| {})? {
            Reply::Ok => Ok(()),
            _ => Err(io::Error::other("unexpected reply to DELETE")),
        }
    }

    /// Reads one reply, handing GET body bytes to `on_data` straight from the read buffer.
    fn reply(&mut self, expect: Expect, mut on_data: impl FnMut(&[u8])) -> io::Result<Reply> {
        let mut dec = ResponseDecoder::new(expect);
        let mut len = 0u64;
        loop {
            let input = &self.rbuf[self.rpos..self.rlen];
            let (used, ev) = dec.decode(input).map_err(io::Error::other)?;
            let more = ev.is_none();
            match ev {
                None => {}
                Some(ResponseEvent::Key(k)) => {
                    self.rpos += used;
                    return Ok(Reply::Key(k));
                }
                Some(ResponseEvent::Ok) => {
                    self.rpos += used;
                    return Ok(Reply::Ok);
                }
                Some(ResponseEvent::Length(n)) => len = n as u64,
                Some(ResponseEvent::Data(d)) => on_data(d),
                Some(ResponseEvent::End) => {
                    self.rpos += used;
                    return Ok(Reply::Body(len));
                }
                Some(ResponseEvent::Error(m)) => {
                    return Err(io::Error::other(format!("server error: {m}")));
                }
            }
            self.rpos += used;
            if more {
                if self.rpos < self.rlen {
                    return Err(io::Error::other("reply decoder made no progress"));
                }
                let n = loop {
                    match self.stream.read(&mut self.rbuf) {
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        r => break r?,
                    }
                };
                if n == 0 {
                    return Err(dec.finish().err().map(io::Error::other).unwrap_or_else(|| {
                        io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed")
                    }));
                }
                self.rpos = 0;
                self.rlen = n;
            }
        }
    }
}

/// The file-per-blob baseline over the same protocol: Flink 0.10's storage scheme. A thread per
/// connection (as the original); a PUT goes to `incoming/temp-N` (hashed on the way), is renamed
/// to `cache/blob_<hex>` (named: `job_<hex>/blob_<hex of name>`), with fsync of the file and the
/// directory when `fsync` is set; a GET sends the file.
struct FileServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    acceptor: Option<std::thread::JoinHandle<()>>,
}

struct FileLayout {
    incoming: PathBuf,
    root: PathBuf,
    fsync: bool,
    temp: AtomicU64,
}

impl FileServer {
    fn start(dir: &Path, fsync: bool) -> io::Result<FileServer> {
        let layout = Arc::new(FileLayout {
            incoming: dir.join("incoming"),
            root: dir.to_path_buf(),
            fsync,
            temp: AtomicU64::new(0),
        });
        std::fs::create_dir_all(&layout.incoming)?;
        std::fs::create_dir_all(dir.join("cache"))?;
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let acceptor = std::thread::spawn(move || {
            for s in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(s) = s {
                    let layout = Arc::clone(&layout);
                    std::thread::spawn(move || {
                        let _ = s.set_nodelay(true);
                        let _ = file_serve(&layout, s);
                    });
                }
            }
        });
        Ok(FileServer {
            addr,
            stop,
            acceptor: Some(acceptor),
        })
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

impl FileLayout {
    fn content_path(&self, key: &BlobKey) -> PathBuf {
        self.root
            .join("cache")
            .join(format!("blob_{}", hex(&key.0)))
    }

    fn named_path(&self, job: &JobId, name: &str) -> PathBuf {
        self.root
            .join(format!("job_{}", hex(&job.0)))
            .join(format!("blob_{}", hex(name.as_bytes())))
    }

    fn path_of(&self, id: &BlobId) -> PathBuf {
        match id {
            BlobId::Content(k) => self.content_path(k),
            BlobId::Named(j, n) => self.named_path(j, n),
        }
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        if self.fsync {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

/// One connection of the baseline server; any failure closes it.
fn file_serve(layout: &FileLayout, mut s: TcpStream) -> io::Result<()> {
    use crate::protocol::{Request, RequestDecoder, RequestEvent};
    let mut dec = RequestDecoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::with_capacity(64 * 1024);
    let mut upload: Option<(std::fs::File, PathBuf, KeyHasher, PutTarget)> = None;
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        let mut pos = 0;
        while pos < n {
            let (used, ev) = dec.decode(&buf[pos..n]).map_err(io::Error::other)?;
            pos += used;
            let Some(ev) = ev else { continue };
            let r: io::Result<()> = (|| {
                match ev {
                    RequestEvent::Request(Request::Put(target)) => {
                        let i = layout.temp.fetch_add(1, Ordering::Relaxed);
                        let tmp = layout.incoming.join(format!("temp-{i:08}"));
                        let f = std::fs::File::create(&tmp)?;
                        upload = Some((f, tmp, KeyHasher::new(), target));
                    }
                    RequestEvent::Chunk(d) => {
                        if let Some((f, _, h, _)) = upload.as_mut() {
                            h.update(d);
                            f.write_all(d)?;
                        }
                    }
                    RequestEvent::End => {
                        let (f, tmp, h, target) =
                            upload.take().ok_or_else(|| io::Error::other("no PUT"))?;
                        if layout.fsync {
                            f.sync_all()?;
                        }
                        drop(f);
                        let key = h.finish();
                        let dest = match &target {
                            PutTarget::Content => layout.content_path(&key),
                            PutTarget::Named(j, n) => layout.named_path(j, n),
                        };
                        let parent = dest.parent().map(Path::to_path_buf).unwrap_or_default();
                        std::fs::create_dir_all(&parent)?;
                        std::fs::rename(&tmp, &dest)?;
                        layout.sync_dir(&parent)?;
                        match target {
                            PutTarget::Content => protocol::encode_put_key(&key, &mut out),
                            PutTarget::Named(..) => protocol::encode_ok(&mut out),
                        }
                    }
                    RequestEvent::Request(Request::Get(id)) => {
                        let mut f = std::fs::File::open(layout.path_of(&id))?;
                        let len = f.metadata()?.len();
                        protocol::encode_get_header(len as u32, &mut out);
                        let start = out.len();
                        out.resize(start + len as usize, 0);
                        f.read_exact(&mut out[start..])?;
                    }
                    RequestEvent::Request(Request::Delete(target)) => {
                        let path = match &target {
                            DeleteTarget::Content(k) => layout.content_path(k),
                            DeleteTarget::Named(j, n) => layout.named_path(j, n),
                            DeleteTarget::Job(j) => layout.root.join(format!("job_{}", hex(&j.0))),
                        };
                        if matches!(target, DeleteTarget::Job(_)) {
                            let _ = std::fs::remove_dir_all(&path);
                        } else {
                            let _ = std::fs::remove_file(&path);
                        }
                        if let Some(parent) = path.parent() {
                            layout.sync_dir(parent)?;
                        }
                        protocol::encode_ok(&mut out);
                    }
                }
                Ok(())
            })();
            if let Err(e) = r {
                out.clear();
                protocol::encode_error(&e.to_string(), &mut out);
                s.write_all(&out)?;
                return Err(e);
            }
            if out.len() >= 256 * 1024 {
                s.write_all(&out)?;
                out.clear();
            }
        }
        if !out.is_empty() {
            s.write_all(&out)?;
            out.clear();
        }
    }
}

/// Plain TCP over loopback, the same bytes and connections: upload (client writes, server
/// reads) and download (server writes, client reads), each as a phase.
fn raw_tcp(total: u64, conns: usize, progress: &Progress) -> io::Result<Vec<PhaseReport>> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let done = Arc::new(AtomicBool::new(false));
    let d2 = Arc::clone(&done);
    let acceptor = std::thread::spawn(move || {
        for s in listener.incoming() {
            if d2.load(Ordering::SeqCst) {
                break;
            }
            if let Ok(s) = s {
                std::thread::spawn(move || {
                    let _ = raw_serve(s);
                });
            }
        }
    });
    let per_conn = total.div_ceil(conns as u64).max(1);
    let mut out = Vec::new();
    for (name, up) in [("raw-up", true), ("raw-down", false)] {
        let jobs: Vec<_> = (0..conns)
            .map(|_| {
                move |start: &Barrier| {
                    let stream = TcpStream::connect(addr).and_then(|st| {
                        st.set_nodelay(true)?;
                        Ok(st)
                    });
                    start.wait();
                    let t = Instant::now();
                    stream
                        .and_then(|st| raw_client(st, per_conn, up, progress))
                        .map(|_| t.elapsed().as_nanos() as u64)
                }
            })
            .collect();
        let (results, seconds) = timed(name, conns as u64, progress, jobs);
        let mut lat: Vec<u64> = results
            .iter()
            .filter_map(|r| r.as_ref().ok().copied())
            .collect();
        lat.sort_unstable();
        let errors = results.iter().filter(|r| r.is_err()).count() as u64;
        let first_error = results
            .iter()
            .find_map(|r| r.as_ref().err().map(|e| format!("{name}: {e}")));
        let max = lat.last().copied().unwrap_or(0) as f64 / 1e3;
        let mid = lat.get(lat.len() / 2).copied().unwrap_or(0) as f64 / 1e3;
        out.push(PhaseReport {
            name: name.into(),
            ops: lat.len() as u64,
            errors,
            bytes: per_conn * lat.len() as u64,
            seconds,
            latency_us: [mid, max, max, max],
            first_error,
        });
    }
    done.store(true, Ordering::SeqCst);
    let _ = TcpStream::connect(addr);
    let _ = acceptor.join();
    Ok(out)
}

fn raw_client(mut s: TcpStream, len: u64, up: bool, progress: &Progress) -> io::Result<()> {
    let mut cmd = [0u8; 9];
    cmd[0] = if up { b'U' } else { b'D' };
    cmd[1..].copy_from_slice(&len.to_le_bytes());
    s.write_all(&cmd)?;
    let mut buf = vec![0u8; CLIENT_BUF];
    let mut left = len;
    if up {
        Rng::new(len).fill(&mut buf);
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            s.write_all(&buf[..n])?;
            left -= n as u64;
        }
        let mut ack = [0u8; 1];
        s.read_exact(&mut ack)?;
    } else {
        while left > 0 {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            left = left.saturating_sub(n as u64);
        }
    }
    progress.add(len);
    Ok(())
}

fn raw_serve(mut s: TcpStream) -> io::Result<()> {
    s.set_nodelay(true)?;
    let mut cmd = [0u8; 9];
    s.read_exact(&mut cmd)?;
    let mut len = [0u8; 8];
    len.copy_from_slice(&cmd[1..]);
    let mut left = u64::from_le_bytes(len);
    let mut buf = vec![0u8; CLIENT_BUF];
    if cmd[0] == b'U' {
        while left > 0 {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            left = left.saturating_sub(n as u64);
        }
        s.write_all(&[0])?;
    } else {
        Rng::new(left).fill(&mut buf);
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            s.write_all(&buf[..n])?;
            left -= n as u64;
        }
    }
    let _ = s.shutdown(Shutdown::Write);
    Ok(())
}

/// Times `dd if=/dev/zero of=<dir>/… bs=1M count=… conv=fdatasync`; returns MB/s.
fn dd(dir: &Path, bytes: u64) -> Result<f64, Box<dyn std::error::Error>> {
    std::fs::create_dir_all(dir)?;
    let mib = bytes.div_ceil(1 << 20).max(1);
    let file = dir.join(format!("dd-bench-{}.tmp", std::process::id()));
    let t = Instant::now();
    let status = std::process::Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", file.display()))
        .arg("bs=1M")
        .arg(format!("count={mib}"))
        .arg("conv=fdatasync")
        .arg("status=none")
        .status();
    let secs = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&file);
    match status {
        Ok(s) if s.success() => Ok((mib << 20) as f64 / 1e6 / secs),
        Ok(s) => Err(format!("dd failed: {s}").into()),
        Err(e) => Err(format!("cannot run dd: {e}").into()),
    }
}

/// The human-readable report.
pub fn format_text(r: &Report) -> String {
    let mut s = String::new();
    let mode = match (r.in_process, r.durable) {
        (true, Some(true)) => "in-process server, durable (fsync)",
        (true, _) => "in-process server, no fsync",
        _ => "external server",
    };
    let _ = writeln!(
        s,
        "[{}] {} {}, {} connection(s), size {}, {}{}",
        r.target,
        r.count,
        if r.named { "named blobs" } else { "blobs" },
        r.connections,
        r.size,
        mode,
        if r.java_client {
            ", Java-style client (small writes, Nagle on)"
        } else {
            ""
        }
    );
    let _ = writeln!(s, "server {}", r.server);
    let _ = writeln!(
        s,
        "{:<9} {:>9} {:>11} {:>10} {:>10} {:>10} {:>10} {:>10} {:>7}",
        "phase", "ops", "ops/s", "MB/s", "p50 ms", "p99 ms", "p999 ms", "max ms", "errors"
    );
    for p in &r.phases {
        let _ = writeln!(
            s,
            "{:<9} {:>9} {:>11.0} {:>10.1} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>7}",
            p.name,
            p.ops,
            p.ops_per_sec(),
            p.mb_per_sec(),
            p.latency_us[0] / 1e3,
            p.latency_us[1] / 1e3,
            p.latency_us[2] / 1e3,
            p.latency_us[3] / 1e3,
            p.errors
        );
        if let Some(e) = &p.first_error {
            let _ = writeln!(s, "          first error: {e}");
        }
    }
    if let Some(d) = r.dd_mb_per_sec {
        let _ = writeln!(s, "dd conv=fdatasync: {d:.1} MB/s");
        if let Some(p) = r.phases.iter().find(|p| p.name == "put") {
            let _ = writeln!(s, "  put / dd: {:.0}%", 100.0 * p.mb_per_sec() / d);
        }
    }
    let raw_down = r.phases.iter().find(|p| p.name == "raw-down");
    if let (Some(raw), Some(get)) = (raw_down, r.phases.iter().find(|p| p.name == "get")) {
        let _ = writeln!(
            s,
            "get / raw-down: {:.0}%",
            100.0 * get.mb_per_sec() / raw.mb_per_sec().max(1e-9)
        );
    }
    if let Some(b) = r.store_bytes {
        let p = b.payload.max(1) as f64;
        let _ = writeln!(
            s,
            "store after put: payload {} bytes; on disk {} bytes ({:.3}x); file length {} bytes ({:.3}x)",
            b.payload,
            b.disk,
            b.disk as f64 / p,
            b.file,
            b.file as f64 / p
        );
    }
    if let Some(rss) = r.peak_rss_bytes {
        let _ = writeln!(s, "peak RSS: {:.1} MiB", rss as f64 / (1 << 20) as f64);
    }
    if let Some(ms) = r.reopen_ms {
        let _ = writeln!(s, "reopen after clean stop: {ms:.1} ms");
    }
    s
}

fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// A JSON number (non-finite values become `null`).
fn json_num(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.3}")
    } else {
        "null".into()
    }
}

/// The report as one JSON object (hand-written: no serde).
pub fn format_json(r: &Report) -> String {
    let mut s = String::from("{");
    let _ = write!(
        s,
        "\"target\":{},\"server\":{},\"in_process\":{},\"durable\":{},\"size\":{},\"count\":{},\"connections\":{},\"named\":{},\"java_client\":{},\"phases\":[",
        json_str(&r.target),
        json_str(&r.server),
        r.in_process,
        r.durable.map_or("null".into(), |d| d.to_string()),
        json_str(&r.size),
        r.count,
        r.connections,
        r.named,
        r.java_client
    );
    for (i, p) in r.phases.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(
            s,
            "{{\"name\":{},\"ops\":{},\"errors\":{},\"bytes\":{},\"seconds\":{},\"ops_per_sec\":{},\"mb_per_sec\":{},\"latency_us\":{{\"p50\":{},\"p99\":{},\"p999\":{},\"max\":{}}}",
            json_str(&p.name),
            p.ops,
            p.errors,
            p.bytes,
            json_num(p.seconds),
            json_num(p.ops_per_sec()),
            json_num(p.mb_per_sec()),
            json_num(p.latency_us[0]),
            json_num(p.latency_us[1]),
            json_num(p.latency_us[2]),
            json_num(p.latency_us[3]),
        );
        if let Some(e) = &p.first_error {
            let _ = write!(s, ",\"first_error\":{}", json_str(e));
        }
        s.push('}');
    }
    s.push(']');
    let opt = |x: Option<f64>| x.map_or("null".to_string(), json_num);
    let _ = write!(
        s,
        ",\"dd_mb_per_sec\":{},\"peak_rss_bytes\":{},\"reopen_ms\":{}",
        opt(r.dd_mb_per_sec),
        r.peak_rss_bytes.map_or("null".into(), |b| b.to_string()),
        opt(r.reopen_ms)
    );
    match r.store_bytes {
        Some(b) => {
            let p = b.payload.max(1) as f64;
            let _ = write!(
                s,
                ",\"store\":{{\"file_bytes\":{},\"disk_bytes\":{},\"payload_bytes\":{},\"file_ratio\":{},\"disk_ratio\":{}}}",
                b.file,
                b.disk,
                b.payload,
                json_num(b.file as f64 / p),
                json_num(b.disk as f64 / p)
            );
        }
        None => s.push_str(",\"store\":null"),
    }
    s.push('}');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert!(parse_size("4x").is_err());
        assert!(parse_size("").is_err());
        assert_eq!("jar".parse::<SizeSpec>(), Ok(SizeSpec::JarMix));
        assert_eq!(format_size(4096), "4KiB");
        assert_eq!(format_size(1500), "1500B");
    }

    #[test]
    fn jar_mix_is_mostly_small() {
        let sizes: Vec<u64> = (0..10_000).map(|i| jar_mix_size(7, i)).collect();
        let small = sizes
            .iter()
            .filter(|&&s| (2048..=200 * 1024).contains(&s))
            .count();
        assert!(small > 9_000, "{small}");
        assert!(sizes.iter().all(|&s| (2048..=8 << 20).contains(&s)));
        assert!(sizes.iter().any(|&s| s > 1 << 20));
        assert_eq!(jar_mix_size(7, 3), jar_mix_size(7, 3));
    }

    fn args(extra: &[&str]) -> BenchArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            bench: BenchArgs,
        }
        let mut argv = vec!["bench", "-q", "-c", "3", "--no-fsync"];
        argv.extend_from_slice(extra);
        <Cli as clap::Parser>::parse_from(argv).bench
    }

    fn phases(r: &Report) -> Vec<(String, u64, u64)> {
        r.phases
            .iter()
            .map(|p| (p.name.clone(), p.ops, p.errors))
            .collect()
    }

    #[test]
    fn every_mode_runs_against_an_in_process_server() {
        for extra in [
            &["-n", "24", "-s", "3000", "--verify"][..],
            &["-n", "6", "-s", "jar", "--named", "--get-rounds", "2"][..],
            &["-n", "24", "-s", "70000", "--java-client"][..],
            &[
                "-n",
                "24",
                "-s",
                "1KiB",
                "--named",
                "--java-client",
                "--verify",
            ][..],
        ] {
            let a = args(extra);
            let r = run(&a).expect("bench run");
            let n = a.count;
            let gets = n * a.get_rounds as u64;
            assert_eq!(
                phases(&r),
                [
                    ("put".to_string(), n, 0),
                    ("get".to_string(), gets, 0),
                    ("delete".to_string(), n, 0)
                ],
                "{extra:?}"
            );
            let b = r.store_bytes.expect("store figures");
            assert!(b.payload > 0 && b.file > 0, "{extra:?}");
        }
    }

    #[test]
    fn the_file_baseline_serves_the_same_phases() {
        for b in [Baseline::Files, Baseline::FilesFsync] {
            for extra in [
                &["-n", "24", "-s", "5000"][..],
                &["-n", "24", "-s", "70000", "--named"][..],
            ] {
                let r = run_with(&args(extra), Some(b), false).expect("baseline run");
                assert_eq!(r.target, b.name());
                assert!(
                    r.phases.iter().all(|p| p.errors == 0 && p.ops == 24),
                    "{:?}",
                    r.phases
                );
            }
        }
    }

    #[test]
    fn raw_tcp_moves_the_bytes() {
        let p = Progress::new(false);
        let r = raw_tcp(3_000_000, 2, &p).expect("raw tcp");
        assert_eq!(r.len(), 2);
        assert!(r.iter().all(|p| p.errors == 0 && p.bytes == 3_000_000));
    }

    #[test]
    fn json_escapes() {
        assert_eq!(json_str("a\"b\\\n\u{1}"), "\"a\\\"b\\\\\\n\\u0001\"");
        assert_eq!(json_num(f64::NAN), "null");
    }
}
