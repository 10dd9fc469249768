//! BlobCache: Flink's BlobCacheSuccessTest and BlobCacheRetriesTest, plus what the port adds
//! (atomic downloads, single flight, failover, LRU cap, restart, directory lock).

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;
use std::time::Duration;

use blobvault::cache::{BLOB_PREFIX, CacheError, CacheOptions, TEMP_PREFIX};
use blobvault::config::{Configuration, keys};
use blobvault::{BlobCache, BlobKey};
use common::{TestServer, put_all};

/// A cache in its own temp dir with fast backoff (the retry counts stay the defaults).
fn cache_opts(servers: &[SocketAddr], dir: &Path) -> CacheOptions {
    CacheOptions::new(servers.iter().copied())
        .dir(dir)
        .backoff(Duration::from_millis(2), Duration::from_millis(20))
        .timeout(Duration::from_secs(10))
}

/// Names in the cache directory other than the lock file, sorted.
fn dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".lock")
        .collect();
    v.sort();
    v
}

/// An address nothing listens on: bound, then released.
fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

/// A fake BLOB server answering `conns` GETs, each with what `reply(i)` returns, then closing.
struct FakeServer {
    addr: SocketAddr,
    seen: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl FakeServer {
    fn start(conns: usize, reply: impl Fn(usize) -> Vec<u8> + Send + 'static) -> FakeServer {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(AtomicUsize::new(0));
        let s = Arc::clone(&seen);
        let thread = std::thread::spawn(move || {
            for i in 0..conns {
                let (mut sock, _) = l.accept().unwrap();
                s.fetch_add(1, Ordering::SeqCst);
                let mut req = [0u8; 22];
                sock.read_exact(&mut req).unwrap();
                assert_eq!(&req[..2], &[1, 0], "a content GET");
                let _ = sock.write_all(&reply(i));
                // Dropping the socket closes it.
            }
        });
        FakeServer {
            addr,
            seen,
            thread: Some(thread),
        }
    }

    fn join(mut self) -> usize {
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.seen.load(Ordering::SeqCst)
    }
}

/// A GET reply: `00`, len32 (little-endian) of `announced`, then `body`.
fn get_reply(announced: usize, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    blobvault::protocol::encode_get_header(announced as u32, &mut out);
    out.extend_from_slice(body);
    out
}

// ---- Flink's BlobCacheSuccessTest ----

#[test]
fn blob_cache_serves_after_server_shutdown() {
    let mut s = TestServer::start();
    let mut buf = vec![0u8; 128];
    let a = buf.clone();
    buf[0] = 1;
    let keys = put_all(s.server.local_addr(), &[&a, &buf]);
    assert_ne!(keys[0], keys[1]);

    let dir = tempfile::tempdir().unwrap();
    let cache = cache_opts(&[s.server.local_addr()], dir.path())
        .open()
        .unwrap();
    for k in &keys {
        let b = cache.get(k).unwrap();
        assert_eq!(b.len(), 128);
    }
    s.server.shutdown();

    for (k, want) in keys.iter().zip([&a, &buf]) {
        let b = cache.get(k).unwrap();
        assert!(b.path().is_file());
        assert_eq!(fs::metadata(b.path()).unwrap().len(), 128);
        assert_eq!(&b.map().unwrap()[..], &want[..]);
        assert_eq!(
            b.path().file_name().unwrap().to_str().unwrap(),
            format!("blob_{k}")
        );
    }
    let st = cache.stats();
    assert_eq!((st.downloads, st.hits, st.blobs, st.bytes), (2, 2, 2, 256));
}

// ---- Flink's BlobCacheRetriesTest (TestingFailingBlobServer = drop_next_connections) ----

#[test]
fn blob_fetch_retries_succeed_after_two_dropped_connections() {
    let s = TestServer::start();
    let data: Vec<u8> = (1..=9).chain([0]).collect();
    let key = put_all(s.server.local_addr(), &[&data])[0];
    s.server.drop_next_connections(2);

    let dir = tempfile::tempdir().unwrap();
    let cache = cache_opts(&[s.server.local_addr()], dir.path())
        .open()
        .unwrap();
    assert_eq!(cache.options().retries, 5, "the default");
    let b = cache.get(&key).unwrap();
    assert_eq!(b.read().unwrap(), data);
    let mut via_path = Vec::new();
    fs::File::open(b.path())
        .unwrap()
        .read_to_end(&mut via_path)
        .unwrap();
    assert_eq!(via_path, data);
    let st = cache.stats();
    assert_eq!((st.attempts, st.failed_attempts, st.downloads), (3, 2, 1));
}

#[test]
fn blob_fetch_with_too_many_failures_fails_and_leaves_nothing() {
    let s = TestServer::start();
    let data: Vec<u8> = (1..=9).chain([0]).collect();
    let key = put_all(s.server.local_addr(), &[&data])[0];
    s.server.drop_next_connections(10);

    let dir = tempfile::tempdir().unwrap();
    let cache = cache_opts(&[s.server.local_addr()], dir.path())
        .open()
        .unwrap();
    let err = cache.get(&key).unwrap_err();
    assert!(
        matches!(err, CacheError::Fetch { attempts: 6, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("Failed to fetch BLOB"), "{err}");
    let st = cache.stats();
    assert_eq!((st.attempts, st.failed_attempts, st.downloads), (6, 6, 0));
    assert!(!cache.contains(&key));
    assert_eq!(dir_names(dir.path()), Vec::<String>::new());
}

#[test]
fn retries_come_from_the_flink_key() {
    let addr = dead_addr();
    let mut conf = Configuration::new();
    let o = CacheOptions::from_config([addr], &conf).unwrap();
    assert_eq!(o.retries, 5);
    assert_eq!(o.dir, blobvault::cache::default_cache_dir());
    conf.set(keys::FETCH_RETRIES, 7);
    assert_eq!(CacheOptions::from_config([addr], &conf).unwrap().retries, 7);
    conf.set(keys::FETCH_RETRIES, -3);
    assert_eq!(CacheOptions::from_config([addr], &conf).unwrap().retries, 0);
    conf.set(keys::FETCH_RETRIES, "many");
    assert!(CacheOptions::from_config([addr], &conf).is_err());
    conf.set(keys::FETCH_RETRIES, 1);
    conf.set(keys::STORAGE_DIRECTORY, "/srv/blobs");
    assert_eq!(
        CacheOptions::from_config([addr], &conf).unwrap().dir,
        Path::new("/srv/blobs/cache")
    );
}

#[test]
fn retries_zero_means_one_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_opts(&[dead_addr()], dir.path())
        .retries(0)
        .open()
        .unwrap();
    assert!(cache.get(&BlobKey::of(b"x")).is_err());
    assert_eq!(cache.stats().attempts, 1);
}

// ---- atomicity ----

#[test]
fn a_download_cut_mid_body_leaves_no_file_and_the_next_request_downloads_again() {
    let data: Vec<u8> = (0..1000u32).map(|i| (i * 31) as u8).collect();
    let key = BlobKey::of(&data);
    let d = data.clone();
    let fake = FakeServer::start(2, move |i| match i {
        // Announce 1000 bytes, send 400, close.
        0 => get_reply(d.len(), &d[..400]),
        _ => get_reply(d.len(), &d),
    });

    let dir = tempfile::tempdir().unwrap();
    let cache = cache_opts(&[fake.addr], dir.path())
        .retries(0)
        .open()
        .unwrap();
    let err = cache.get(&key).unwrap_err();
    assert!(matches!(err, CacheError::Fetch { .. }), "{err}");
    assert!(!cache.contains(&key));
    assert!(!cache.path_of(&key).exists());
    assert_eq!(
        dir_names(dir.path()),
        Vec::<String>::new(),
        "neither blob nor temp file"
    );

    let b = cache.get(&key).unwrap();
    assert_eq!(b.read().unwrap(), data);
    drop(b);
    assert_eq!(fake.join(), 2, "the second request downloaded again");
    let st = cache.stats();
    assert_eq!((st.misses, st.attempts, st.downloads), (2, 2, 1));
    assert_eq!(dir_names(dir.path()), vec![format!("{BLOB_PREFIX}{key}")]);
}

#[test]
fn corrupt_bytes_are_refused_and_retried() {
    let data = b"the real content".to_vec();
    let key = BlobKey::of(&data);
    let d = data.clone();
    let fake = FakeServer::start(2, move |i| match i {
        0 => get_reply(d.len(), b"the fake content"),
        _ => get_reply(d.len(), &d),
    });
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_opts(&[fake.addr], dir.path()).open().unwrap();
    assert_eq!(cache.get(&key).unwrap().read().unwrap(), data);
    assert_eq!(fake.join(), 2);
    let st = cache.stats();
    assert_eq!((st.attempts, st.failed_attempts, st.downloads), (2, 1, 1));
}

#[test]
fn a_missing_blob_is_an_error_and_leaves_nothing() {
    let s = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_opts(&[s.server.local_addr()], dir.path())
        .retries(1)
        .open()
        .unwrap();
    let err = cache.get(&BlobKey::default()).unwrap_err();
    assert!(
        err.to_string().contains("Cannot find required BLOB"),
        "{err}"
    );
    assert_eq!(dir_names(dir.path()), Vec::<String>::new());
}

// ---- single flight ----

#[test]
fn sixteen_concurrent_requests_share_one_download() {
    let s = TestServer::start();
    let data: Vec<u8> = (0..4_000_000u32).map(|i| (i ^ (i >> 9)) as u8).collect();
    let key = put_all(s.server.local_addr(), &[&data])[0];
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_opts(&[s.server.local_addr()], dir.path())
        .open()
        .unwrap();

    let barrier = Arc::new(Barrier::new(16));
    let data = Arc::new(data);
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let (cache, barrier, data) = (cache.clone(), Arc::clone(&barrier), Arc::clone(&data));
            std::thread::spawn(move || {
                barrier.wait();
                let b = cache.get(&key).unwrap();
                assert_eq!(&b.map().unwrap()[..], &data[..]);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let st = cache.stats();
    assert_eq!(st.attempts, 1, "one connection to the server: {st:?}");
    assert_eq!((st.misses, st.downloads, st.hits), (1, 1, 15), "{st:?}");
}

/// Waits (bounded) until `cond` holds. Used only where the cache offers no event to wait on.
fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A fake server for one GET that sends the header and half the body, then waits for `gate`
/// before sending the rest (or, if `cut`, closing instead).
fn gated_server(
    data: Vec<u8>,
    cut: bool,
) -> (SocketAddr, std::sync::mpsc::Sender<()>, JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (gate_tx, gate) = std::sync::mpsc::channel::<()>();
    let t = std::thread::spawn(move || {
        let (mut sock, _) = l.accept().unwrap();
        drop(l); // any second connection is refused
        let mut req = [0u8; 22];
        sock.read_exact(&mut req).unwrap();
        let half = data.len() / 2;
        sock.write_all(&get_reply(data.len(), &data[..half]))
            .unwrap();
        gate.recv().unwrap();
        if !cut {
            sock.write_all(&data[half..]).unwrap();
        }
    });
    (addr, gate_tx, t)
}

fn sixteen_gets(cache: &BlobCache, key: BlobKey) -> Vec<JoinHandle<Result<Vec<u8>, CacheError>>> {
    let barrier = Arc::new(Barrier::new(16));
    (0..16)
        .map(|_| {
            let (cache, barrier) = (cache.clone(), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                cache.get(&key).map(|b| b.read().unwrap())
            })
        })
        .collect()
}

#[test]
fn sixteen_requests_wait_on_one_gated_download() {
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let key = BlobKey::of(&data);
    let (addr, gate, server) = gated_server(data.clone(), false);
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_opts(&[addr], dir.path()).open().unwrap();
    let threads = sixteen_gets(&cache, key);
    // The download is stuck mid-body until the gate opens: every other request must be waiting.
    wait_until("15 waiting requests", || cache.stats().shared == 15);
    gate.send(()).unwrap();
    for t in threads {
        assert_eq!(t.join().unwrap().unwrap(), data);
    }
    server.join().unwrap();
    let st = cache.stats();
    assert_eq!(
        (st.misses, st.shared, st.hits, st.attempts, st.downloads),
        (1, 15, 15, 1, 1),
        "{st:?}"
    );
}

#[test]
fn a_failed_shared_download_fails_every_waiting_request_and_leaves_nothing() {
    let data = vec![7u8; 10_000];
    let key = BlobKey::of(&data);
    let (addr, gate, server) = gated_server(data, true);
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_opts(&[addr], dir.path()).retries(0).open().unwrap();
    let threads = sixteen_gets(&cache, key);
    wait_until("15 waiting requests", || cache.stats().shared == 15);
    gate.send(()).unwrap();
    for t in threads {
        let err = t.join().unwrap().unwrap_err();
        assert!(
            matches!(err, CacheError::Fetch { attempts: 1, .. }),
            "{err}"
        );
    }
    server.join().unwrap();
    let st = cache.stats();
    assert_eq!((st.misses, st.shared, st.attempts), (1, 15, 1), "{st:?}");
    assert_eq!(dir_names(dir.path()), Vec::<String>::new());
}

// ---- failover ----

#[test]
fn a_dead_first_server_fails_over_to_the_second() {
    let s = TestServer::start();
    let key = put_all(s.server.local_addr(), &[b"failover"])[0];
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_opts(&[dead_addr(), s.server.local_addr()], dir.path())
        .retries(1)
        .open()
        .unwrap();
    assert_eq!(cache.get(&key).unwrap().read().unwrap(), b"failover");
    let st = cache.stats();
    assert_eq!((st.attempts, st.failed_attempts, st.downloads), (2, 1, 1));

    // The server that served is tried first from now on: no time lost on the dead one.
    let k2 = put_all(s.server.local_addr(), &[b"second"])[0];
    cache.get(&k2).unwrap();
    let st = cache.stats();
    assert_eq!((st.attempts, st.failed_attempts, st.downloads), (3, 1, 2));
}

// ---- size cap ----

#[test]
fn lru_cap_evicts_the_least_recently_used_unheld_blob() {
    let s = TestServer::start();
    let blobs: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 1000]).collect();
    let refs: Vec<&[u8]> = blobs.iter().map(|b| &b[..]).collect();
    let k = put_all(s.server.local_addr(), &refs);
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_opts(&[s.server.local_addr()], dir.path())
        .capacity(Some(3000))
        .open()
        .unwrap();

    let held = cache.get(&k[0]).unwrap(); // least recently used, but held
    drop(cache.get(&k[1]).unwrap());
    drop(cache.get(&k[2]).unwrap());
    drop(cache.get(&k[1]).unwrap()); // k2 is now the least recently used unheld blob
    assert_eq!(cache.keys(), vec![k[0], k[2], k[1]]);

    drop(cache.get(&k[3]).unwrap());
    assert!(!cache.contains(&k[2]), "k2 evicted");
    assert!(!cache.path_of(&k[2]).exists());
    for i in [0, 1, 3] {
        assert!(
            cache.contains(&k[i]) && cache.path_of(&k[i]).exists(),
            "{i}"
        );
    }
    let st = cache.stats();
    assert_eq!((st.evictions, st.blobs, st.bytes), (1, 3, 3000));

    // Once released, k0 is the least recently used and goes next.
    drop(held);
    drop(cache.get(&k[4]).unwrap());
    assert!(!cache.contains(&k[0]));
    assert_eq!(cache.keys(), vec![k[1], k[3], k[4]]);
    assert_eq!(cache.stats().evictions, 2);
}

#[test]
fn pinned_blobs_are_not_evicted_and_the_cap_is_met_when_released() {
    let s = TestServer::start();
    let blobs: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 1000]).collect();
    let refs: Vec<&[u8]> = blobs.iter().map(|b| &b[..]).collect();
    let k = put_all(s.server.local_addr(), &refs);
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_opts(&[s.server.local_addr()], dir.path())
        .capacity(Some(1500))
        .open()
        .unwrap();
    let p0 = cache.acquire(&k[0]).unwrap();
    let b1 = cache.get(&k[1]).unwrap();
    let b1b = b1.clone();
    assert_eq!(
        cache.stats().bytes,
        2000,
        "over the cap: everything is held"
    );
    drop(b1);
    assert!(cache.contains(&k[1]), "a clone still holds it");
    drop(b1b);
    assert!(!cache.contains(&k[1]), "released and over the cap: evicted");
    assert!(p0.exists());
    cache.release(&k[0]);
    cache.release(&k[0]); // extra releases are ignored
    assert!(cache.contains(&k[0]), "under the cap again");
    drop(cache.get(&k[2]).unwrap());
    assert_eq!(cache.keys(), vec![k[2]]);
}

// ---- delete, restart, lock ----

#[test]
fn delete_drops_the_local_copy_and_the_next_get_downloads_again() {
    let s = TestServer::start();
    let key = put_all(s.server.local_addr(), &[b"delete me"])[0];
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_opts(&[s.server.local_addr()], dir.path())
        .open()
        .unwrap();
    let path = cache.get(&key).unwrap().path().to_path_buf();
    cache.delete(&key).unwrap();
    assert!(!path.exists() && !cache.contains(&key));
    cache.delete(&key).unwrap(); // missing is fine
    assert_eq!(cache.get(&key).unwrap().read().unwrap(), b"delete me");
    assert_eq!(cache.stats().downloads, 2);
}

#[test]
fn restart_reuses_verified_blobs_and_removes_damaged_and_temp_files() {
    let mut s = TestServer::start();
    let keys = put_all(s.server.local_addr(), &[b"one", b"two"]);
    let dir = tempfile::tempdir().unwrap();
    let addr = s.server.local_addr();
    {
        let cache = cache_opts(&[addr], dir.path()).open().unwrap();
        for k in &keys {
            cache.get(k).unwrap();
        }
    }
    s.server.shutdown();
    // A crash mid-download, and a damaged blob.
    let tmp = dir.path().join(format!("{TEMP_PREFIX}{}-1-1", keys[0]));
    fs::write(&tmp, b"on").unwrap();
    let damaged = dir.path().join(format!("{BLOB_PREFIX}{}", keys[1]));
    fs::write(&damaged, b"tw0").unwrap();

    let cache = cache_opts(&[addr], dir.path()).retries(0).open().unwrap();
    assert!(!tmp.exists());
    assert!(!damaged.exists());
    assert_eq!(cache.get(&keys[0]).unwrap().read().unwrap(), b"one");
    assert!(cache.get(&keys[1]).is_err(), "gone, and the server is down");
    assert_eq!(cache.stats().downloads, 0);
    drop(cache);

    // Trusting the directory skips the re-hash: the damaged file is taken as it is.
    fs::write(&damaged, b"tw0").unwrap();
    let cache = cache_opts(&[addr], dir.path())
        .verify_on_open(false)
        .open()
        .unwrap();
    assert!(cache.contains(&keys[1]));
    assert_eq!(cache.stats().blobs, 2);
}

#[test]
fn restart_applies_the_cap_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    for (i, body) in [b"aaaa", b"bbbb", b"cccc"].iter().enumerate() {
        let p = dir
            .path()
            .join(format!("{BLOB_PREFIX}{}", BlobKey::of(*body)));
        fs::write(&p, body).unwrap();
        let t = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + i as u64);
        fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }
    let cache = cache_opts(&[dead_addr()], dir.path())
        .capacity(Some(8))
        .open()
        .unwrap();
    assert_eq!(
        cache.keys(),
        vec![BlobKey::of(b"bbbb"), BlobKey::of(b"cccc")]
    );
}

#[test]
fn one_cache_per_directory() {
    let dir = tempfile::tempdir().unwrap();
    let a = cache_opts(&[dead_addr()], dir.path()).open().unwrap();
    let err = cache_opts(&[dead_addr()], dir.path()).open().unwrap_err();
    assert!(matches!(err, CacheError::Locked(_)), "{err}");
    drop(a);
    cache_opts(&[dead_addr()], dir.path()).open().unwrap();
}

#[test]
fn no_servers_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = BlobCache::open(cache_opts(&[], dir.path())).unwrap_err();
    assert!(matches!(err, CacheError::NoServers));
}

#[test]
fn an_empty_blob_is_cached_and_mapped() {
    let s = TestServer::start();
    let key = put_all(s.server.local_addr(), &[b""])[0];
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_opts(&[s.server.local_addr()], dir.path())
        .open()
        .unwrap();
    let b = cache.get(&key).unwrap();
    assert!(b.is_empty() && b.path().is_file());
    assert!(b.map().unwrap().is_empty());
}

#[test]
fn a_cache_dir_that_is_a_file_is_a_local_error_without_retries() {
    let s = TestServer::start();
    let key = put_all(s.server.local_addr(), &[b"x"])[0];
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_opts(&[s.server.local_addr()], dir.path())
        .open()
        .unwrap();
    // Fault injection that works as root too: the directory becomes a regular file.
    fs::remove_dir_all(dir.path()).unwrap();
    fs::write(dir.path(), b"not a directory").unwrap();
    let err = cache.get(&key).unwrap_err();
    assert!(matches!(err, CacheError::Local { .. }), "{err}");
    assert_eq!(cache.stats().attempts, 1, "storing locally is not retried");
    fs::remove_file(dir.path()).unwrap();
    fs::create_dir(dir.path()).unwrap();
}

#[test]
fn an_extra_release_does_not_end_a_live_lease() {
    let s = TestServer::start();
    let k = put_all(s.addr(), &[&[0u8; 1000], &[1u8; 1000]]);
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_opts(&[s.addr()], dir.path())
        .capacity(Some(1000))
        .open()
        .unwrap();
    let lease = cache.get(&k[0]).unwrap();
    cache.release(&k[0]); // nothing was acquired: ignored, the lease still holds k0
    drop(cache.get(&k[1]).unwrap()); // over the cap: only the unheld k1 may go
    assert!(cache.contains(&k[0]), "a leased blob was evicted");
    assert_eq!(lease.read().unwrap(), [0u8; 1000]);
    assert!(!cache.contains(&k[1]));
    // A pin and a lease on one key: releasing the pin leaves the lease's hold.
    cache.acquire(&k[0]).unwrap();
    cache.release(&k[0]);
    drop(cache.get(&k[1]).unwrap());
    assert!(cache.contains(&k[0]) && !cache.contains(&k[1]));
    drop(lease);
    drop(cache.get(&k[1]).unwrap());
    assert_eq!(
        cache.keys(),
        vec![k[1]],
        "released: k0 goes once over the cap"
    );
}
