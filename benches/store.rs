//! Store-level PUT and GET: blobvault beside a file-per-blob baseline (the original's layout)
//! and the embedded stores users would pick instead.
//!
//! Every benchmark group holds, side by side:
//! - `blobvault` — a [`BlobStore`] (durable: every PUT acknowledged after fsync; the group commit
//!   shares one fsync among the PUTs that arrive together),
//! - `blobvault-nofsync` — the same with `durable(false)` (PUT groups only),
//! - `files-fsync` — Flink 0.10's layout: SHA-1 while writing `incoming/temp-N`, fsync of the
//!   file, rename to `cache/blob_<hex>`, fsync of the directory,
//! - `files` — the same without either fsync (what the original server actually did),
//! - `sqlite` — SQLite (rusqlite, bundled) with the blobs in a table keyed by their SHA-1, WAL
//!   journal, `synchronous=FULL` (every commit fsyncs the log: as durable as `blobvault`), one
//!   connection per thread, one transaction per PUT (the SQLite project's claim is that small
//!   blobs are faster in a table than in files); `sqlite-wlock` (PUT only) the same with the
//!   writers queued on a mutex first, instead of sleeping in SQLite's busy handler,
//! - `cacache` — the Rust content-addressed cache (`write_hash_sync` / `read_hash_sync`: content
//!   named by its SHA-256, checked on every read). It has **no way to fsync**: a write goes to a
//!   temp file that is renamed into place, with no `fsync` anywhere in its write path (13.1), so
//!   it compares with `blobvault-nofsync` and `files`, not with the durable rows.
//!
//! Sizes: 1 KiB, 4 KiB, 64 KiB, 1 MiB and the JAR-like mix of `blobvault bench` (most 2–200 KiB,
//! a few MiB); 1 thread and 8 threads. Every PUT stores distinct content (a counter is written
//! into the first bytes), so deduplication never helps blobvault.
//!
//! Run: `cargo bench --bench store` (a few minutes); narrow with a filter, e.g.
//! `cargo bench --bench store -- 'put/4KiB'`.

use std::collections::HashMap;
use std::fs::{self, File};
use std::hint::black_box;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use blobvault::key::{BlobId, BlobKey, KeyHasher};
use blobvault::loadgen::{Rng, SizeSpec, format_size};
use blobvault::store::{BlobStore, StoreOptions};
use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};

const THREADS: [usize; 2] = [1, 8];
const MIX_SEED: u64 = 0x5EED;

fn sizes() -> Vec<SizeSpec> {
    vec![
        SizeSpec::Fixed(1 << 10),
        SizeSpec::Fixed(4 << 10),
        SizeSpec::Fixed(64 << 10),
        SizeSpec::Fixed(1 << 20),
        SizeSpec::JarMix,
    ]
}

/// Mean size of a spec (for the throughput figure of the mix).
fn mean_size(s: SizeSpec) -> u64 {
    match s {
        SizeSpec::Fixed(n) => n,
        SizeSpec::JarMix => (0..10_000).map(|i| s.size_of(MIX_SEED, i)).sum::<u64>() / 10_000,
    }
}

fn max_size(s: SizeSpec) -> usize {
    match s {
        SizeSpec::Fixed(n) => n as usize,
        SizeSpec::JarMix => 8 << 20,
    }
}

/// Which implementation a benchmark drives.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Impl {
    Vault { durable: bool },
    Files { fsync: bool },
    Sqlite { write_lock: bool },
    Cacache,
}

impl Impl {
    fn name(self) -> &'static str {
        match self {
            Impl::Vault { durable: true } => "blobvault",
            Impl::Vault { durable: false } => "blobvault-nofsync",
            Impl::Files { fsync: true } => "files-fsync",
            Impl::Files { fsync: false } => "files",
            Impl::Sqlite { write_lock: false } => "sqlite",
            Impl::Sqlite { write_lock: true } => "sqlite-wlock",
            Impl::Cacache => "cacache",
        }
    }
}

/// Most threads a benchmark runs (one SQLite connection each).
const MAX_THREADS: usize = 8;

/// SQLite as an application would keep blobs in it: a table keyed by the content's SHA-1, WAL
/// journal, `synchronous=FULL`, one connection per thread (a connection is not shared between
/// threads; each thread locks only its own, so the mutex is never contended).
///
/// SQLite has one write lock per database: a writer that finds it taken sleeps in its busy
/// handler (1, 2, 5, 10 … 100 ms), which with 8 writers costs far more than the work. So the
/// `sqlite-wlock` variant also queues its writers on a mutex of the process first, as an
/// application that knows it has several writing threads would.
struct SqliteStore {
    conns: Vec<Mutex<rusqlite::Connection>>,
    write_lock: Option<Mutex<()>>,
}

impl SqliteStore {
    fn new(dir: &Path, write_lock: bool) -> SqliteStore {
        let path = dir.join("blobs.sqlite");
        let conns = (0..MAX_THREADS)
            .map(|_| {
                let c = rusqlite::Connection::open(&path).expect("open sqlite");
                // Writers queue on SQLite's one write lock; wait for it rather than fail.
                c.busy_timeout(Duration::from_secs(30))
                    .expect("busy timeout");
                let mode: String = c
                    .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
                    .expect("WAL");
                assert_eq!(mode, "wal");
                c.execute_batch(
                    "PRAGMA synchronous=FULL;
                     CREATE TABLE IF NOT EXISTS blobs (key BLOB PRIMARY KEY, data BLOB NOT NULL);",
                )
                .expect("schema");
                Mutex::new(c)
            })
            .collect();
        SqliteStore {
            conns,
            write_lock: write_lock.then(Mutex::default),
        }
    }

    fn put(&self, thread: usize, data: &[u8]) -> BlobKey {
        let key = BlobKey::of(data);
        let _writer = self
            .write_lock
            .as_ref()
            .map(|m| m.lock().expect("write lock"));
        let c = self.conns[thread].lock().expect("connection");
        c.prepare_cached("INSERT OR IGNORE INTO blobs (key, data) VALUES (?1, ?2)")
            .and_then(|mut st| st.execute(rusqlite::params![&key.0[..], data]))
            .expect("sqlite insert");
        key
    }

    fn get(&self, thread: usize, key: &BlobKey) -> u64 {
        let c = self.conns[thread].lock().expect("connection");
        let mut st = c
            .prepare_cached("SELECT data FROM blobs WHERE key = ?1")
            .expect("prepare");
        st.query_row([&key.0[..]], |r| {
            Ok(black_box(r.get_ref(0)?.as_blob()?).len() as u64)
        })
        .expect("sqlite select")
    }
}

/// The file-per-blob baseline: Flink 0.10's `BlobServer` storage scheme.
struct FileStore {
    incoming: PathBuf,
    cache: PathBuf,
    fsync: bool,
    temp_counter: AtomicU64,
}

impl FileStore {
    fn new(root: &Path, fsync: bool) -> FileStore {
        let incoming = root.join("incoming");
        let cache = root.join("cache");
        fs::create_dir_all(&incoming).expect("incoming dir");
        fs::create_dir_all(&cache).expect("cache dir");
        FileStore {
            incoming,
            cache,
            fsync,
            temp_counter: AtomicU64::new(0),
        }
    }

    fn path_of(&self, key: &BlobKey) -> PathBuf {
        self.cache.join(format!("blob_{key}"))
    }

    /// Temp file, write (hashing on the way, in 64 KiB pieces as the server received them),
    /// optional fsync, rename into `cache/blob_<hex>`, optional fsync of the directory.
    fn put(&self, data: &[u8]) -> BlobKey {
        let n = self.temp_counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self.incoming.join(format!("temp-{n:08}"));
        let mut f = File::create(&tmp).expect("create temp");
        let mut h = KeyHasher::new();
        for piece in data.chunks(64 * 1024) {
            h.update(piece);
            f.write_all(piece).expect("write temp");
        }
        if self.fsync {
            f.sync_all().expect("fsync file");
        }
        drop(f);
        let key = h.finish();
        fs::rename(&tmp, self.path_of(&key)).expect("rename");
        if self.fsync {
            File::open(&self.cache)
                .and_then(|d| d.sync_all())
                .expect("fsync dir");
        }
        key
    }

    fn get(&self, key: &BlobKey, buf: &mut [u8]) -> u64 {
        let mut f = File::open(self.path_of(key)).expect("open blob");
        let mut total = 0u64;
        loop {
            let n = f.read(buf).expect("read blob");
            if n == 0 {
                return total;
            }
            total += n as u64;
        }
    }
}

enum Target {
    Vault(BlobStore),
    Files(FileStore),
    Sqlite(SqliteStore),
    /// cacache's directory, and the key (its SHA-256 integrity) of every blob by our SHA-1 key.
    Cacache(PathBuf, Mutex<HashMap<BlobKey, cacache::Integrity>>),
}

impl Target {
    fn open(imp: Impl, dir: &Path) -> Target {
        match imp {
            Impl::Vault { durable } => Target::Vault(
                StoreOptions::new(dir)
                    .durable(durable)
                    .open()
                    .expect("open store"),
            ),
            Impl::Files { fsync } => Target::Files(FileStore::new(dir, fsync)),
            Impl::Sqlite { write_lock } => Target::Sqlite(SqliteStore::new(dir, write_lock)),
            Impl::Cacache => Target::Cacache(dir.join("cacache"), Mutex::default()),
        }
    }

    /// Stores `data` from thread number `thread` (< [`MAX_THREADS`]).
    fn put(&self, thread: usize, data: &[u8]) -> BlobKey {
        match self {
            Target::Vault(s) => s.put(data).expect("put"),
            Target::Files(f) => f.put(data),
            Target::Sqlite(s) => s.put(thread, data),
            Target::Cacache(dir, _) => {
                // cacache names content by its own hash; the returned integrity is the key.
                black_box(cacache::write_hash_sync(dir, data).expect("cacache write"));
                BlobKey([0; 20])
            }
        }
    }

    /// Stores `data` and remembers how to read it by `BlobKey` (setup of the GET benchmarks,
    /// where cacache needs its own key).
    fn put_keyed(&self, data: &[u8]) -> BlobKey {
        match self {
            Target::Cacache(dir, keys) => {
                let sri = cacache::write_hash_sync(dir, data).expect("cacache write");
                let key = BlobKey::of(data);
                keys.lock().expect("keys").insert(key, sri);
                key
            }
            _ => self.put(0, data),
        }
    }

    fn get(&self, thread: usize, key: &BlobKey, buf: &mut [u8]) -> u64 {
        match self {
            Target::Vault(s) => {
                let mut r = s.get(&BlobId::Content(*key)).expect("get").expect("stored");
                let mut total = 0u64;
                while let Some(c) = r.next_chunk().expect("chunk") {
                    total += black_box(c.value()).len() as u64;
                }
                total
            }
            Target::Files(f) => f.get(key, buf),
            Target::Sqlite(s) => s.get(thread, key),
            Target::Cacache(dir, keys) => {
                let sri = keys
                    .lock()
                    .expect("keys")
                    .get(key)
                    .cloned()
                    .expect("stored");
                let data = cacache::read_hash_sync(dir, &sri).expect("cacache read");
                black_box(data).len() as u64
            }
        }
    }
}

/// Runs `iters` operations spread over `threads` threads; returns the wall time. `op` gets the
/// thread's number, the operation's and a scratch buffer.
fn spread(iters: u64, threads: usize, op: impl Fn(usize, u64, &mut Vec<u8>) + Sync) -> Duration {
    assert!(threads <= MAX_THREADS);
    let next = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (next, op) = (&next, &op);
            s.spawn(move || {
                let mut scratch = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= iters {
                        break;
                    }
                    op(t, i, &mut scratch);
                }
            });
        }
    });
    start.elapsed()
}

fn configure<'c>(
    c: &'c mut Criterion,
    name: &str,
    spec: SizeSpec,
) -> criterion::BenchmarkGroup<'c, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(format!("{name}/{}", spec_label(spec)));
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Bytes(mean_size(spec)));
    g
}

fn spec_label(spec: SizeSpec) -> String {
    match spec {
        SizeSpec::Fixed(n) => format_size(n),
        SizeSpec::JarMix => "jar-mix".into(),
    }
}

fn bench_put(c: &mut Criterion) {
    let impls = [
        Impl::Vault { durable: true },
        Impl::Vault { durable: false },
        Impl::Files { fsync: true },
        Impl::Files { fsync: false },
        Impl::Sqlite { write_lock: false },
        Impl::Sqlite { write_lock: true },
        Impl::Cacache,
    ];
    let unique = AtomicU64::new(1);
    for spec in sizes() {
        // One buffer of random bytes; each PUT copies the part it needs and stamps a counter in.
        let mut base = vec![0u8; max_size(spec)];
        Rng::new(42).fill(&mut base);
        let mut g = configure(c, "put", spec);
        for threads in THREADS {
            for imp in impls {
                let dir = tempfile::tempdir().expect("temp dir");
                let target = Target::open(imp, dir.path());
                let id = BenchmarkId::new(imp.name(), format!("{threads}t"));
                g.bench_function(id, |b| {
                    b.iter_custom(|iters| {
                        spread(iters, threads, |t, i, buf| {
                            let n = spec.size_of(MIX_SEED, i) as usize;
                            buf.clear();
                            buf.extend_from_slice(&base[..n]);
                            let stamp = unique.fetch_add(1, Ordering::Relaxed).to_le_bytes();
                            let k = stamp.len().min(n);
                            buf[..k].copy_from_slice(&stamp[..k]);
                            black_box(target.put(t, buf));
                        })
                    })
                });
                drop(target);
            }
        }
        g.finish();
    }
}

fn bench_get(c: &mut Criterion) {
    let impls = [
        Impl::Vault { durable: true },
        Impl::Files { fsync: false },
        Impl::Sqlite { write_lock: false },
        Impl::Cacache,
    ];
    for spec in sizes() {
        // Enough distinct blobs that reads are not all of one page, few enough to set up fast.
        let blobs: u64 = match spec {
            SizeSpec::Fixed(n) if n >= 1 << 20 => 64,
            SizeSpec::JarMix => 256,
            _ => 2_000,
        };
        let mut g = configure(c, "get", spec);
        for imp in impls {
            let dir = tempfile::tempdir().expect("temp dir");
            let target = Target::open(imp, dir.path());
            let keys: Vec<BlobKey> = std::thread::scope(|s| {
                let hs: Vec<_> = (0..8u64)
                    .map(|t| {
                        let target = &target;
                        s.spawn(move || {
                            (t..blobs)
                                .step_by(8)
                                .map(|i| {
                                    let n = spec.size_of(MIX_SEED, i) as usize;
                                    let mut data = vec![0u8; n];
                                    Rng::for_op(7, i).fill(&mut data);
                                    (i, target.put_keyed(&data))
                                })
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                let mut all: Vec<(u64, BlobKey)> = hs
                    .into_iter()
                    .flat_map(|h| h.join().expect("setup"))
                    .collect();
                all.sort_by_key(|(i, _)| *i);
                all.into_iter().map(|(_, k)| k).collect()
            });
            for threads in THREADS {
                let id = BenchmarkId::new(imp.name(), format!("{threads}t"));
                g.bench_function(id, |b| {
                    b.iter_custom(|iters| {
                        spread(iters, threads, |t, i, buf| {
                            if buf.is_empty() {
                                buf.resize(256 * 1024, 0);
                            }
                            let k = &keys[(i % blobs) as usize];
                            black_box(target.get(t, k, buf));
                        })
                    })
                });
            }
            drop(target);
        }
        g.finish();
    }
}

criterion_group!(benches, bench_put, bench_get);
criterion_main!(benches);
