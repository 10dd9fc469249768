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

mod baseline;
mod conn;
mod cpu;
#[cfg(feature = "object-store")]
mod direct;
mod rawtcp;
mod report;
mod threaded;
mod workload;

use std::io::{self, IsTerminal};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::config::ServerConfig;
use crate::key::{BlobId, BlobKey, JobId};
use crate::protocol::{self, DeleteTarget, PutTarget};
use crate::server::BlobServer;
use crate::store::StoreOptions;
use baseline::FileServer;
use conn::Conn;
use cpu::CpuMeter;
use rawtcp::{floor, raw_tcp};
use report::format_comparison;

pub use baseline::Baseline;
pub use report::{PhaseReport, Report, StoreBytes, floor_ratios, format_json, format_text};
pub use workload::{Rng, SizeSpec, blob_bytes, format_size, jar_mix_size, parse_size};

/// A phase of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    /// Store every blob (by content, or by name with `--named`)
    Put,
    /// Read every blob back, `--get-rounds` times; needs a put phase before it
    Get,
    /// Delete every blob; needs a put phase before it
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

/// Options of `blobvault bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Server to load, HOST:PORT (a host name or an IP address); with none, an in-process
    /// server on a temp store is started (BLOBVAULT_SERVER is not read: a bench never loads a
    /// server by accident).
    #[arg(long, value_name = "HOST:PORT")]
    pub server: Option<String>,
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
    /// Also run each phase against a raw-TCP floor first: a minimal blocking server that reads a
    /// request of the phase's size and writes a reply of its size, with no protocol and no store
    /// (phases `floor-put`, …); the report gives the server's CPU per request against it.
    #[arg(long)]
    pub floor: bool,
    /// Also time `dd … bs=1M conv=fdatasync` of the put phase's bytes into the store directory
    /// (`--dir`, or the in-process server's store).
    #[arg(long)]
    pub dd: bool,
    /// Also time SHA-1 (the `sha1` crate the server uses for keys) over as many bytes as the put
    /// phase stores, on one core: the ceiling of a PUT, which must hash every byte.
    #[arg(long)]
    pub sha1: bool,
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
    /// The process id of the external `--server`: the report gives its CPU time per request
    /// (from its CPU clock, or /proc/PID/stat) and its peak RSS (VmHWM).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Seed of sizes and content (default: from the clock, so runs never collide).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Run the same phases again against an in-process file-per-blob server (the original's
    /// layout: `cache/blob_<hex>`) and show both side by side.
    #[arg(long, value_enum)]
    pub compare: Option<Baseline>,
    /// TLS to the server (`--server` only).
    #[command(flatten)]
    pub tls: crate::tls::ClientTlsArgs,
    /// Also PUT the same blobs (sizes, content, connections) straight into this object store,
    /// s3://BUCKET/PREFIX, with endpoint and credentials from the AWS_* environment variables:
    /// the store's own rate beside blobvault's (phase `store-put`; its objects are deleted
    /// after).
    #[arg(long, value_name = "URI")]
    pub object_store: Option<String>,
    /// With --object-store: PUT as the object-store recovery backend writes a content object,
    /// create-only (If-None-Match: *) with two user-metadata headers (phase `store-create`),
    /// instead of plain PUTs (`store-put`).
    #[arg(long, requires = "object_store")]
    pub object_store_create: bool,
    /// Print the report as JSON on stdout (the text report then goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// No live progress line.
    #[arg(long, short = 'q')]
    pub quiet: bool,
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

/// The address of `server` (HOST:PORT) that accepts a connection: the first of those its name
/// resolves to, in turn, as any client tries them.
fn reachable(server: &str) -> Result<std::net::SocketAddr, Box<dyn std::error::Error>> {
    let addrs = crate::config::resolve_addr(server)?;
    let probe = std::net::TcpStream::connect(&addrs[..]).map_err(|e| {
        format!("cannot connect to {server}: {e}; is `blobvault serve` running on {server}?")
    })?;
    Ok(probe.peer_addr()?)
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
    let addr = match (&args.server, baseline) {
        (Some(a), _) => reachable(a)?,
        (None, Some(b)) => {
            let dir = store_dir.clone().ok_or("no store directory")?;
            let fs = FileServer::start(&dir, b == Baseline::FilesFsync)?;
            let a = fs.addr();
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
    if args.sha1 && extras {
        report.sha1_mb_per_sec = Some(sha1_rate(total_bytes));
    }

    // Whose CPU the phases measure: the external server's process, or the in-process server's
    // threads (named `blobvault-…`, or `bench-files…` for the baseline).
    let meter = match (args.server_pid, &server, baseline) {
        (Some(pid), _, None) if args.server.is_some() => Some(CpuMeter::Process(pid)),
        (_, Some(_), _) => Some(CpuMeter::Threads(cpu::SERVER_THREADS)),
        (_, None, Some(_)) => Some(CpuMeter::Threads(baseline::SERVER_THREADS)),
        _ => None,
    };
    if args.floor && extras {
        report.phases.extend(floor(
            &args.phases,
            &sizes,
            args.named,
            args.get_rounds.max(1),
            args.connections,
            &progress,
        )?);
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
        tls: match &args.server {
            Some(s) => args.tls.load(Some(crate::tls::host_of(s)))?,
            None if args.tls.tls_ca.is_some() => {
                return Err("--tls-ca needs --server: the in-process server is plaintext".into());
            }
            None => None,
        },
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
                report.phases.push(run_phase(
                    &plan,
                    &mut workers,
                    *phase,
                    1,
                    &progress,
                    meter.as_ref(),
                ));
                put_done = true;
                if let Some(s) = &server {
                    // The log's batches into the file first: a batch only logged takes no
                    // room in it yet.
                    s.store().checkpoint()?;
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
                report.phases.push(run_phase(
                    &plan,
                    &mut workers,
                    *phase,
                    rounds,
                    &progress,
                    meter.as_ref(),
                ));
            }
        }
    }
    drop(workers);
    drop(file_server);
    if let Some(uri) = args.object_store.as_deref().filter(|_| extras) {
        #[cfg(feature = "object-store")]
        report.phases.push(direct::store_put(
            uri,
            &plan.sizes,
            seed,
            args.connections,
            args.object_store_create,
            &progress,
        )?);
        #[cfg(not(feature = "object-store"))]
        return Err(format!(
            "--object-store {uri}: this build has no object-store support (cargo feature \"object-store\")"
        )
        .into());
    }

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
    tls: Option<crate::tls::ClientTls>,
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
///
/// With `meter`, also the server's CPU nanoseconds over the same span (`None` when it cannot be
/// read). Jobs should keep their connections open until returned (return them, or keep them in
/// their worker): the span ends before they close, while the server's threads still live.
fn timed<T: Send, F: FnOnce(&Barrier) -> T + Send>(
    name: &str,
    total: u64,
    progress: &Progress,
    meter: Option<&CpuMeter>,
    jobs: Vec<F>,
) -> (Vec<T>, f64, Option<u64>) {
    progress.ops.store(0, Ordering::Relaxed);
    progress.bytes.store(0, Ordering::Relaxed);
    let barrier = Barrier::new(jobs.len() + 1);
    let stop = AtomicBool::new(false);
    let mut results = Vec::new();
    let mut seconds = 0.0;
    let mut cpu = None;
    std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .into_iter()
            .map(|job| {
                let barrier = &barrier;
                s.spawn(move || job(barrier))
            })
            .collect();
        s.spawn(|| progress.show(name, total, &stop));
        // Sampled before the start is given: reading /proc takes a while (longer than a short
        // phase on a busy machine), and the jobs must not run meanwhile. So the connections'
        // handshakes count too (the first phase of a run only; they are kept for the next).
        let before = meter.map(CpuMeter::sample);
        barrier.wait();
        let start = Instant::now();
        results = handles.into_iter().filter_map(|h| h.join().ok()).collect();
        seconds = start.elapsed().as_secs_f64();
        if let (Some(m), Some(Ok(before))) = (meter, before) {
            cpu = m.sample().ok().map(|after| after.since(&before));
        }
        stop.store(true, Ordering::Relaxed);
    });
    (results, seconds, cpu)
}

fn run_phase(
    plan: &Plan,
    workers: &mut [Worker],
    phase: Phase,
    rounds: u32,
    progress: &Progress,
    meter: Option<&CpuMeter>,
) -> PhaseReport {
    let total = plan.sizes.len() as u64 * rounds as u64;
    let jobs: Vec<_> = workers
        .iter_mut()
        .map(|w| {
            move |start: &Barrier| {
                // Connect before the clock starts: a phase measures requests, not handshakes.
                if w.conn.is_none() {
                    w.conn = Conn::connect(plan.addr, plan.java, plan.tls.as_ref()).ok();
                }
                start.wait();
                work(plan, w, phase, rounds, progress)
            }
        })
        .collect();
    let (tallies, seconds, server_cpu_ns) = timed(phase.name(), total, progress, meter, jobs);
    phase_report(phase.name(), &tallies, seconds, server_cpu_ns)
}

/// p50, p99, p999 and max of latencies in nanoseconds, in microseconds (sorts `lat`).
fn percentiles(lat: &mut [u64]) -> [f64; 4] {
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i] as f64 / 1e3
    };
    [pct(0.50), pct(0.99), pct(0.999), pct(1.0)]
}

/// The figures of a phase from its connections' tallies.
fn phase_report(
    name: &str,
    tallies: &[Tally],
    seconds: f64,
    server_cpu_ns: Option<u64>,
) -> PhaseReport {
    let mut lat: Vec<u64> = tallies
        .iter()
        .flat_map(|t| t.lat_ns.iter().copied())
        .collect();
    PhaseReport {
        name: name.to_string(),
        ops: lat.len() as u64,
        errors: tallies.iter().map(|t| t.errors).sum(),
        bytes: tallies.iter().map(|t| t.bytes).sum(),
        seconds,
        latency_us: percentiles(&mut lat),
        first_error: tallies.iter().find_map(|t| t.first_error.clone()),
        server_cpu_ns,
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
                    w.conn = Some(Conn::connect(plan.addr, plan.java, plan.tls.as_ref())?);
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

/// MB/s of SHA-1 over `bytes` bytes on this thread (random bytes, 1 MiB reused: the rate does
/// not depend on the content).
fn sha1_rate(bytes: u64) -> f64 {
    let mut buf = vec![0u8; 1 << 20];
    Rng::new(bytes).fill(&mut buf);
    let mut h = crate::key::KeyHasher::new();
    let t = Instant::now();
    let mut left = bytes.max(1);
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        // Pieces of 64 KiB, as a PUT's chunks arrive.
        for piece in buf[..n].chunks(protocol::MAX_CHUNK) {
            h.update(piece);
        }
        left -= n as u64;
    }
    std::hint::black_box(h.finish());
    bytes.max(1) as f64 / 1e6 / t.elapsed().as_secs_f64().max(1e-9)
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

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn args(extra: &[&str]) -> BenchArgs {
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
            &["-n", "24", "-s", "3000", "--verify", "--sha1"][..],
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
            assert_eq!(
                r.sha1_mb_per_sec.is_some_and(|m| m > 0.0),
                extra.contains(&"--sha1"),
                "{extra:?}"
            );
            // The in-process server's threads did the work of every phase.
            assert!(
                r.phases
                    .iter()
                    .all(|p| p.server_cpu_ns.is_some_and(|ns| ns > 0)),
                "{extra:?}"
            );
        }
    }

    #[test]
    fn the_floor_runs_beside_the_phases_and_is_compared_with_them() {
        let a = args(&["-n", "30", "-s", "4KiB", "--floor", "--get-rounds", "2"]);
        let r = run(&a).expect("bench run");
        let names: Vec<(&str, u64, u64)> = r
            .phases
            .iter()
            .map(|p| (p.name.as_str(), p.ops, p.errors))
            .collect();
        assert_eq!(
            names,
            [
                ("floor-put", 30, 0),
                ("floor-get", 60, 0),
                ("floor-delete", 30, 0),
                ("put", 30, 0),
                ("get", 60, 0),
                ("delete", 30, 0)
            ]
        );
        let ratios: Vec<&str> = floor_ratios(&r).iter().map(|(n, _, _)| *n).collect();
        assert_eq!(ratios, ["put", "get", "delete"]);
        let text = format_text(&r);
        assert!(
            text.contains("get server CPU per request / raw-TCP floor"),
            "{text}"
        );
        let json = format_json(&r);
        assert!(json.contains("\"cpu_vs_floor\":{\"put\":"), "{json}");
        assert!(json.contains("\"server_cpu_us_per_op\":"), "{json}");
    }

    #[test]
    fn the_file_baseline_reports_its_server_cpu() {
        let a = args(&["-n", "12", "-s", "1KiB", "--compare", "files"]);
        let r = run_with(&a, Some(Baseline::Files), false).expect("baseline run");
        assert_eq!(r.target, "files");
        assert!(
            r.phases
                .iter()
                .all(|p| p.server_cpu_ns.is_some_and(|ns| ns > 0)),
            "{:?}",
            r.phases
        );
    }
}
