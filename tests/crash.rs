//! Crash safety: SIGKILL the server at random moments; every acknowledged blob survives whole.

use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use blobvault::{BlobClient, BlobId, BlobStore, JobId};
use crossbeam_channel::unbounded;

mod common;
use common::{Rng, ServeProcess as Server};

fn start(dir: &Path) -> Server {
    Server::spawn(&[std::ffi::OsStr::new("--dir"), dir.as_os_str()])
}

fn verify_cli(dir: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_blobvault"))
        .args(["verify", "--dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "verify found damage: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Blobs the server acknowledged, with their bytes.
type Acked = Vec<(BlobId, Vec<u8>)>;

#[test]
fn sigkill_under_load_loses_no_acknowledged_blob() {
    let dir = tempfile::tempdir().unwrap();
    let acked: Arc<Mutex<Acked>> = Arc::default();
    let mut rng = Rng::new(0x5eed);
    for round in 0..4u64 {
        let server = start(dir.path());
        let kill_after = 20 + (rng.next_u64() % 80) as usize;
        let (ack_tx, ack_rx) = unbounded::<()>();
        let handles: Vec<_> = (0..8u64)
            .map(|t| {
                let (addr, acked, ack_tx) = (server.addr, acked.clone(), ack_tx.clone());
                std::thread::spawn(move || {
                    let mut rng = Rng::new((round << 32) ^ ((t + 1) * 0x9e37_79b9));
                    let job = JobId::random();
                    let Ok(mut c) = BlobClient::connect(addr) else {
                        return;
                    };
                    for i in 0.. {
                        let size = match rng.next_u64() % 10 {
                            0 => (1 << 20) | (rng.next_u64() % 500_000) as usize,
                            1..=3 => (rng.next_u64() % 200_000) as usize,
                            _ => (rng.next_u64() % 8_000) as usize,
                        };
                        let data = rng.bytes(size);
                        let id = if i % 3 == 0 {
                            let name = format!("r{round}-t{t}-{i}");
                            match c.put_named(job, &name, &data) {
                                Ok(()) => BlobId::Named(job, name),
                                Err(_) => return,
                            }
                        } else {
                            match c.put(&data) {
                                Ok(k) => BlobId::Content(k),
                                Err(_) => return,
                            }
                        };
                        acked.lock().unwrap().push((id, data));
                        if ack_tx.send(()).is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
        drop(ack_tx);
        for _ in 0..kill_after {
            ack_rx.recv().unwrap();
        }
        server.kill();
        drop(ack_rx);
        for h in handles {
            h.join().unwrap();
        }

        let server = start(dir.path());
        eprintln!(
            "round {round}: {} acknowledged so far",
            acked.lock().unwrap().len()
        );
        let mut c = BlobClient::connect(server.addr).unwrap();
        for (id, data) in acked.lock().unwrap().iter() {
            assert_eq!(
                &c.get_bytes(id).unwrap(),
                data,
                "round {round}: {id} lost or damaged"
            );
        }
        server.kill();
        verify_cli(dir.path());
    }
}

/// A reader of `len` pseudo-random bytes that reports when `signal_at` bytes were read.
struct Source {
    rng: Rng,
    left: usize,
    read: usize,
    signal_at: usize,
    signal: Option<crossbeam_channel::Sender<()>>,
}

impl Read for Source {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.left);
        for b in &mut buf[..n] {
            *b = self.rng.next_u64() as u8;
        }
        self.left -= n;
        self.read += n;
        if self.read >= self.signal_at
            && let Some(s) = self.signal.take()
        {
            let _ = s.send(());
        }
        Ok(n)
    }
}

#[test]
fn sigkill_during_a_large_put_leaves_nothing_half_written() {
    const BIG: usize = 64 << 20;
    let dir = tempfile::tempdir().unwrap();
    // Kill mid-upload, and again once the whole body is sent (while it is spooled or committed).
    for signal_at in [BIG / 2, BIG] {
        let server = start(dir.path());
        let (tx, rx) = unbounded();
        let addr = server.addr;
        let h = std::thread::spawn(move || {
            let mut c = BlobClient::connect(addr).unwrap();
            let src = Source {
                rng: Rng::new(42),
                left: BIG,
                read: 0,
                signal_at,
                signal: Some(tx),
            };
            c.put_reader(src).is_ok()
        });
        rx.recv().unwrap();
        server.kill();
        let acked = h.join().unwrap();
        eprintln!("killed at {signal_at} bytes; acknowledged: {acked}");

        let store = BlobStore::open(dir.path()).unwrap();
        let report = store.verify().unwrap();
        assert!(report.is_clean(), "{report:?}");
        let stats = store.stats().unwrap();
        if !acked {
            assert_eq!(
                stats.contents, 0,
                "a half-written blob is visible: {stats:?}"
            );
        }
        assert_eq!(
            stats.chunks as usize,
            stats.payload_bytes.div_ceil(stats.chunk_size) as usize
        );
        // The spool of the interrupted upload is gone.
        let spool = std::fs::read_dir(dir.path().join("spool")).unwrap().count();
        assert_eq!(spool, 0);
        // Space of the interrupted write is reused, not leaked: storing the blob now leaves the
        // file well under twice its size.
        store
            .put_reader(
                Source {
                    rng: Rng::new(42),
                    left: BIG,
                    read: 0,
                    signal_at: usize::MAX,
                    signal: None,
                },
                blobvault::PutTarget::Content,
            )
            .unwrap();
        let stats = store.stats().unwrap();
        assert!(
            stats.file_bytes < 2 * BIG as u64,
            "store file bloated: {stats:?}"
        );
        assert!(store.verify().unwrap().is_clean());
        // Start the next round empty.
        for e in store.list().unwrap() {
            if let BlobId::Content(k) = e.id {
                store.delete(blobvault::DeleteTarget::Content(k)).unwrap();
            }
        }
    }
}

/// `--no-fsync` bounds what a crash loses: a background durable commit follows every write
/// within `--no-fsync-interval` (1 s by default), idle or under load.
#[test]
fn sigkill_with_no_fsync_loses_only_the_last_interval() {
    use std::time::{Duration, Instant};
    // The documented bound, and a margin for the durable commit itself (one fsync) on a machine
    // shared with other builds.
    const BOUND: Duration = Duration::from_secs(1);
    const MARGIN: Duration = Duration::from_secs(2);
    let dir = tempfile::tempdir().unwrap();
    let args = [
        std::ffi::OsStr::new("--dir"),
        dir.path().as_os_str(),
        std::ffi::OsStr::new("--no-fsync"),
    ];
    let server = Server::spawn(&args);
    let mut rng = Rng::new(0xf5_1c);
    let mut c = BlobClient::connect(server.addr).unwrap();
    // Idle after a burst: the writer's timeout makes them durable.
    let mut acked: Vec<(BlobId, Vec<u8>, Instant)> = Vec::new();
    for i in 0..100 {
        let data = rng.bytes(if i % 10 == 0 { 300_000 } else { 4_000 });
        let key = c.put(&data).unwrap();
        acked.push((BlobId::Content(key), data, Instant::now()));
    }
    std::thread::sleep(BOUND + MARGIN);
    // Then under steady load, killed while it runs: the writer syncs between batches.
    let (stop_tx, stop_rx) = unbounded::<()>();
    let addr = server.addr;
    let load = std::thread::spawn(move || {
        let mut rng = Rng::new(0x10ad);
        let mut c = BlobClient::connect(addr).unwrap();
        let mut acked = Vec::new();
        while stop_rx.try_recv().is_err() {
            let size = 4_000 + (rng.next_u64() % 60_000) as usize;
            let data = rng.bytes(size);
            match c.put(&data) {
                Ok(key) => acked.push((BlobId::Content(key), data, Instant::now())),
                Err(_) => break,
            }
        }
        acked
    });
    std::thread::sleep(Duration::from_secs(5));
    let killed = Instant::now();
    server.kill();
    let _ = stop_tx.send(());
    let under_load = load.join().unwrap();
    let durable_by = killed - BOUND - MARGIN;
    let early: Vec<_> = under_load
        .iter()
        .filter(|(_, _, at)| *at < durable_by)
        .collect();
    eprintln!(
        "{} acknowledged under load, {} of them over {:?} before the kill",
        under_load.len(),
        early.len(),
        BOUND + MARGIN
    );
    assert!(
        !early.is_empty(),
        "the load phase acknowledged nothing early enough"
    );
    let must: Vec<_> = acked.iter().chain(early).collect();

    let server = start(dir.path());
    let mut c = BlobClient::connect(server.addr).unwrap();
    for (id, data, at) in must {
        let got = c.get_bytes(id);
        assert!(
            got.as_ref().is_ok_and(|g| g == data),
            "{id}, acknowledged {:?} before the kill, lost or damaged",
            killed - *at
        );
    }
    // For the record: how recent the oldest lost acknowledgement was.
    let lost = under_load
        .iter()
        .filter(|(id, _, _)| {
            let missing = c.get_bytes(id).is_err();
            if missing {
                // An error reply closes the connection.
                c = BlobClient::connect(server.addr).unwrap();
            }
            missing
        })
        .map(|(_, _, at)| killed - *at)
        .max();
    eprintln!("oldest acknowledgement lost: {lost:?} before the kill");
    server.kill();
    verify_cli(dir.path());
}

/// `verify` and `stat` say what the replay of the write-ahead log found; `verify` fails when
/// acknowledged writes were discarded.
#[test]
fn verify_and_stat_report_a_damaged_log() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    let store = BlobStore::open(&live).unwrap();
    for i in 0..10u8 {
        store.put(&vec![i; 3000]).unwrap();
    }
    let copies: Vec<_> = ["verify", "stat", "clean"]
        .iter()
        .map(|n| dir.path().join(n))
        .collect();
    for copy in &copies {
        std::fs::create_dir_all(copy).unwrap();
        for f in [blobvault::store::DB_FILE, blobvault::store::WAL_FILE] {
            std::fs::copy(live.join(f), copy.join(f)).unwrap();
        }
    }
    drop(store);
    for copy in &copies[..2] {
        let path = copy.join(blobvault::store::WAL_FILE);
        let mut log = std::fs::read(&path).unwrap();
        // A flipped byte in the second record: eight acknowledged records follow it.
        let second = u32::from_le_bytes(log[..4].try_into().unwrap()) as usize + 8;
        log[second + 30] ^= 1;
        std::fs::write(&path, &log).unwrap();
    }
    let run = |cmd: &str, dir: &Path| {
        Command::new(env!("CARGO_BIN_EXE_blobvault"))
            .args([cmd, "--dir"])
            .arg(dir)
            .output()
            .unwrap()
    };
    let out = run("verify", &copies[0]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("1 records replayed, DAMAGED, 8 records"),
        "{text}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("ERROR"));
    let out = run("stat", &copies[1]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("log replay") && text.contains("DAMAGED"),
        "{text}"
    );
    let out = run("verify", &copies[2]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("10 records replayed, clean"), "{text}");
}
