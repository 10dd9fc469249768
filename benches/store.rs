//! Store-level PUT and GET: blobvault beside a file-per-blob baseline (the original's layout).
//!
//! Every benchmark group holds, side by side:
//! - `blobvault` — a [`BlobStore`] (durable: every PUT acknowledged after fsync; the group commit
//!   shares one fsync among the PUTs that arrive together),
//! - `blobvault-nofsync` — the same with `durable(false)` (PUT groups only),
//! - `files-fsync` — Flink 0.10's layout: SHA-1 while writing `incoming/temp-N`, fsync of the
//!   file, rename to `cache/blob_<hex>`, fsync of the directory,
//! - `files` — the same without either fsync (what the original server actually did).
//!
//! Sizes: 1 KiB, 4 KiB, 64 KiB, 1 MiB and the JAR-like mix of `blobvault bench` (most 2–200 KiB,
//! a few MiB); 1 thread and 8 threads. Every PUT stores distinct content (a counter is written
//! into the first bytes), so deduplication never helps blobvault.
//!
//! Run: `cargo bench --bench store` (a few minutes); narrow with a filter, e.g.
//! `cargo bench --bench store -- 'put/4KiB'`.

use std::fs::{self, File};
use std::hint::black_box;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
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
}

impl Impl {
    fn name(self) -> &'static str {
        match self {
            Impl::Vault { durable: true } => "blobvault",
            Impl::Vault { durable: false } => "blobvault-nofsync",
            Impl::Files { fsync: true } => "files-fsync",
            Impl::Files { fsync: false } => "files",
        }
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
        }
    }

    fn put(&self, data: &[u8]) -> BlobKey {
        match self {
            Target::Vault(s) => s.put(data).expect("put"),
            Target::Files(f) => f.put(data),
        }
    }

    fn get(&self, key: &BlobKey, buf: &mut [u8]) -> u64 {
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
        }
    }
}

/// Runs `iters` operations spread over `threads` threads; returns the wall time.
fn spread(iters: u64, threads: usize, op: impl Fn(u64, &mut Vec<u8>) + Sync) -> Duration {
    let next = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut scratch = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= iters {
                        break;
                    }
                    op(i, &mut scratch);
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
                        spread(iters, threads, |i, buf| {
                            let n = spec.size_of(MIX_SEED, i) as usize;
                            buf.clear();
                            buf.extend_from_slice(&base[..n]);
                            let stamp = unique.fetch_add(1, Ordering::Relaxed).to_le_bytes();
                            let k = stamp.len().min(n);
                            buf[..k].copy_from_slice(&stamp[..k]);
                            black_box(target.put(buf));
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
    let impls = [Impl::Vault { durable: true }, Impl::Files { fsync: false }];
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
                                    (i, target.put(&data))
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
                        spread(iters, threads, |i, buf| {
                            if buf.is_empty() {
                                buf.resize(256 * 1024, 0);
                            }
                            let k = &keys[(i % blobs) as usize];
                            black_box(target.get(k, buf));
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
