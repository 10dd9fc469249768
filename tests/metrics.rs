//! The metrics endpoint: counters move by exactly what was done, readiness, a streamed listing,
//! hostile HTTP clients that leave the BLOB port unaffected, and `stat`/`ls` of a running server
//! from the command line. Everything binds 127.0.0.1 port 0.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use blobvault::admin::{self, AdminServer, Sources};
use blobvault::metrics::{Op, Outcome};
use blobvault::{BlobId, BlobKey, JobId};
use common::{IO_TIMEOUT, TestServer};

fn endpoint(ts: &TestServer) -> AdminServer {
    AdminServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Sources::new().server(ts.server.probe()),
    )
    .expect("start the metrics endpoint")
}

/// GETs `path`; the status and the whole body.
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).expect("read the reply");
    let status = reply
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {reply:?}"));
    let body = reply.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_string())
}

/// The value of the sample `name` (with its labels exactly as written) in a scrape.
fn sample(scrape: &str, name: &str) -> f64 {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in:\n{scrape}"))
}

fn scrape(addr: SocketAddr) -> String {
    let (status, body) = http_get(addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    body
}

#[test]
fn counters_move_by_exactly_the_requests_made() {
    let ts = TestServer::start_durable();
    let admin = endpoint(&ts);
    let before = scrape(admin.local_addr());
    let snap_before = ts.server.metrics();

    let mut c = ts.client();
    let job = JobId::random();
    let a = c.put(b"first blob").unwrap();
    let b = c.put(b"second blob, longer").unwrap();
    c.put_named(job, "lib/x.jar", b"first blob").unwrap();
    assert_eq!(c.get_bytes(&BlobId::Content(a)).unwrap(), b"first blob");
    assert_eq!(
        c.get_bytes(&BlobId::Named(job, "lib/x.jar".into()))
            .unwrap(),
        b"first blob"
    );
    let missing = BlobKey::of(b"never stored");
    assert!(c.get_bytes(&BlobId::Content(missing)).is_err());
    // The missing GET's error reply closes the connection: a new client for the rest.
    let mut c = ts.client();
    c.delete(b).unwrap();
    c.delete_named(job, "lib/x.jar").unwrap();
    drop(c);
    ts.store().sync().unwrap();

    let after = scrape(admin.local_addr());
    let moved = |name: &str| sample(&after, name) - sample(&before, name);
    let req = |op: &str, outcome: &str| {
        moved(&format!(
            "blobvault_requests_total{{op=\"{op}\",outcome=\"{outcome}\"}}"
        ))
    };
    assert_eq!(req("put", "ok"), 3.0);
    assert_eq!(req("get", "ok"), 2.0);
    assert_eq!(req("get", "missing"), 1.0);
    assert_eq!(req("delete", "ok"), 2.0);
    for op in ["put", "get", "delete"] {
        assert_eq!(req(op, "error"), 0.0, "{op} errors");
    }
    assert_eq!(req("put", "missing") + req("delete", "missing"), 0.0);
    let count = |op: &str| {
        moved(&format!(
            "blobvault_request_duration_seconds_count{{op=\"{op}\"}}"
        ))
    };
    assert_eq!(
        (count("put"), count("get"), count("delete")),
        (3.0, 3.0, 2.0)
    );
    // Every write was one operation of some group commit; reads commit nothing.
    assert_eq!(moved("blobvault_commit_batch_ops_sum"), 5.0);
    assert!(moved("blobvault_commit_duration_seconds_count") >= 1.0);
    assert!(moved("blobvault_wal_written_bytes_total") > 0.0);
    assert_eq!(moved("blobvault_connections_accepted_total"), 2.0);
    let payload = (b"first blob".len() * 2 + b"second blob, longer".len()) as f64;
    assert!(moved("blobvault_received_bytes_total") > payload);
    assert!(moved("blobvault_sent_bytes_total") > (b"first blob".len() * 2) as f64);
    // What is left: content `a` (by key, also once named, now unnamed); `b` deleted.
    assert_eq!(sample(&after, "blobvault_store_content_blobs"), 1.0);
    assert_eq!(sample(&after, "blobvault_store_named_blobs"), 0.0);
    assert_eq!(sample(&after, "blobvault_store_contents"), 1.0);
    assert_eq!(
        sample(&after, "blobvault_store_payload_bytes"),
        b"first blob".len() as f64
    );

    // The same figures from the library, without HTTP.
    let snap = ts.server.metrics();
    let lib_moved =
        |op, outcome| snap.requests_of(op, outcome) - snap_before.requests_of(op, outcome);
    assert_eq!(lib_moved(Op::Put, Outcome::Ok), 3);
    assert_eq!(lib_moved(Op::Get, Outcome::Missing), 1);
    assert_eq!(lib_moved(Op::Delete, Outcome::Ok), 2);
    assert_eq!(snap.store.content_blobs, 1);
    assert_eq!(snap.store.payload_bytes, b"first blob".len() as u64);
    // The store's figures agree with a full count.
    let full = ts.store().stats().unwrap();
    assert_eq!(
        (
            full.contents,
            full.content_blobs,
            full.named_blobs,
            full.payload_bytes
        ),
        (
            snap.store.contents,
            snap.store.content_blobs,
            snap.store.named_blobs,
            snap.store.payload_bytes
        )
    );
}

#[test]
fn healthz_is_ready_while_serving_and_says_why_not_after() {
    let mut ts = TestServer::start();
    let admin = endpoint(&ts);
    assert_eq!(
        http_get(admin.local_addr(), "/healthz"),
        (200, "ready\n".into())
    );
    assert_eq!(
        http_get(admin.local_addr(), "/healthz/live"),
        (200, "live\n".into())
    );
    let blob_port = ts.addr();
    ts.server.shutdown();
    // The endpoint outlives the server without keeping its port listening.
    assert!(
        TcpStream::connect(blob_port).is_err(),
        "{blob_port} still accepts"
    );
    let (status, body) = http_get(admin.local_addr(), "/healthz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("stopped"), "{body}");
    // Liveness is the endpoint's own.
    assert_eq!(http_get(admin.local_addr(), "/healthz/live").0, 200);
}

#[test]
fn blobs_are_listed_a_page_at_a_time_to_the_end() {
    let ts = TestServer::start();
    let job = JobId::random();
    // More than two pages of each kind.
    for i in 0..600u32 {
        ts.store().put(format!("blob {i}").as_bytes()).unwrap();
    }
    for i in 0..300u32 {
        ts.store()
            .put_named(job, &format!("n/{i}"), b"shared bytes")
            .unwrap();
    }
    let admin = endpoint(&ts);
    let body = admin::fetch(&admin.local_addr().to_string(), "/blobs").unwrap();
    let mut content = std::collections::HashSet::new();
    let mut named = 0;
    let mut end = None;
    for line in body.lines() {
        let line = line.unwrap();
        if line.starts_with("{\"end\":true") {
            end = Some(line);
            break;
        }
        let e = admin::parse_entry(&line).expect("a listing line");
        match e.named {
            Some((j, _)) => {
                assert_eq!(j, job.to_string());
                named += 1;
            }
            None => assert!(content.insert(e.key), "listed twice"),
        }
    }
    assert_eq!((content.len(), named), (600, 300));
    assert_eq!(end.as_deref(), Some("{\"end\":true,\"blobs\":900}"));
}

/// Reads until the peer closes (or resets); what came.
fn until_closed(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    got
}

#[test]
fn hostile_http_clients_leave_the_blob_port_and_the_endpoint_working() {
    let ts = TestServer::start();
    let admin = endpoint(&ts);
    let at = admin.local_addr();

    // Garbage instead of HTTP: 400.
    let mut g = TcpStream::connect(at).unwrap();
    g.write_all(b"\x16\x03\x01\x00\xffnot http at all\r\n\r\n")
        .unwrap();
    let reply = String::from_utf8_lossy(&until_closed(&mut g)).into_owned();
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");

    // A head over the limit: 431, and the endpoint reads no more than the limit.
    let mut h = TcpStream::connect(at).unwrap();
    let mut big = b"GET /metrics HTTP/1.1\r\n".to_vec();
    while big.len() < admin::MAX_HEAD + 1024 {
        big.extend_from_slice(
            b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
        );
    }
    let _ = h.write_all(&big);
    let reply = String::from_utf8_lossy(&until_closed(&mut h)).into_owned();
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply}");

    // Many connections at once, every one silent (slow clients): more than the endpoint serves.
    let held: Vec<TcpStream> = (0..admin::MAX_CONNECTIONS + 20)
        .map(|_| {
            let mut s = TcpStream::connect(at).unwrap();
            s.write_all(b"GET /metr").unwrap();
            s
        })
        .collect();
    // The BLOB port is untouched meanwhile.
    let mut c = ts.client();
    let key = c.put(b"served while the endpoint is flooded").unwrap();
    assert_eq!(
        c.get_bytes(&BlobId::Content(key)).unwrap(),
        b"served while the endpoint is flooded"
    );
    // Each connection beyond the limit evicted the oldest one with an incomplete head, so the
    // 20 oldest were closed at once; the others at the head deadline.
    let started = Instant::now();
    let mut closed_early = 0;
    // Oldest first: those evicted.
    for mut s in held.into_iter() {
        let _ = until_closed(&mut s);
        if started.elapsed() < admin::HEAD_TIMEOUT / 2 {
            closed_early += 1;
        }
    }
    assert!(closed_early >= 20, "only {closed_early} evicted at once");
    assert!(started.elapsed() < admin::HEAD_TIMEOUT + Duration::from_secs(5));
    // And the endpoint serves again, and the blob port still does.
    let after = scrape(at);
    assert_eq!(
        sample(
            &after,
            "blobvault_requests_total{op=\"put\",outcome=\"ok\"}"
        ),
        1.0
    );
    ts.assert_serves();
}

#[test]
fn idle_connections_filling_the_endpoint_do_not_lock_out_health_probes() {
    let ts = TestServer::start();
    let admin = endpoint(&ts);
    let at = admin.local_addr();
    // Every slot taken by a connection that sends nothing (accepted in connect order).
    let mut idle: Vec<TcpStream> = (0..admin::MAX_CONNECTIONS)
        .map(|_| TcpStream::connect(at).unwrap())
        .collect();
    // A probe still gets its answer: it evicts the oldest idle connection.
    let (status, body) = http_get(at, "/healthz/live");
    assert_eq!((status, body.as_str()), (200, "live\n"));
    let first = until_closed(&mut idle[0]);
    assert!(first.is_empty(), "{first:?}");
    // Silent connections are let go at the first-byte deadline, before the head deadline.
    let started = Instant::now();
    let last = idle.last_mut().unwrap();
    assert!(until_closed(last).is_empty());
    assert!(
        started.elapsed() < admin::HEAD_TIMEOUT,
        "{:?}",
        started.elapsed()
    );
    let (status, body) = http_get(at, "/healthz");
    assert_eq!((status, body.as_str()), (200, "ready\n"));
}

/// `blobvault serve --metrics 127.0.0.1:0` over `dir`: the child, the BLOB address and the
/// metrics address (from its two stdout lines).
struct Served {
    child: std::process::Child,
    blob: String,
    metrics: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve_with_metrics(dir: &std::path::Path) -> Served {
    serve_with(dir, &["--metrics", "127.0.0.1:0"])
}

fn serve_with(dir: &std::path::Path, args: &[&str]) -> Served {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_blobvault"))
        .args(["serve", "--port", "0"])
        .args(args)
        .arg("--dir")
        .arg(dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn blobvault serve");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = |prefix: &str| {
        let mut l = String::new();
        out.read_line(&mut l).expect("read serve's stdout");
        l.trim()
            .strip_prefix(prefix)
            .unwrap_or_else(|| panic!("expected {prefix:?}, got {l:?}"))
            .to_string()
    };
    let blob = line("listening on ");
    let metrics = line("metrics on http://")
        .trim_end_matches("/metrics")
        .to_string();
    Served {
        child,
        blob,
        metrics,
    }
}

fn cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_blobvault"))
        .args(args)
        .env_remove("BLOBVAULT_SERVER")
        .output()
        .expect("run blobvault")
}

#[test]
fn stat_and_ls_of_a_running_server_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let input = tmp.path().join("in");
    std::fs::write(&input, b"cli bytes").unwrap();
    let s = serve_with_metrics(&store);
    let input = input.to_str().unwrap();
    for extra in [
        &[][..],
        &["--job", "nightly", "--name", "a \"quoted\" name"][..],
    ] {
        let mut args = vec!["put", input, "--server", &s.blob];
        args.extend_from_slice(extra);
        let o = cli(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }

    let o = cli(&["stat", "--metrics", &s.metrics, "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stat = admin::parse_flat_json(&String::from_utf8_lossy(&o.stdout)).expect("one object");
    let field = |k: &str| stat.iter().find(|(f, _)| f == k).map(|(_, v)| v.clone());
    assert_eq!(field("content_blobs").as_deref(), Some("1"));
    assert_eq!(field("named_blobs").as_deref(), Some("1"));
    assert_eq!(field("payload_bytes").as_deref(), Some("9"));
    let o = cli(&["stat", "--metrics", &s.metrics]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && text.contains("content blobs  1"),
        "{text}"
    );

    let o = cli(&["ls", "--metrics", &s.metrics]);
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let key = BlobKey::of(b"cli bytes").to_string();
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.lines().all(|l| l.starts_with(&key)), "{text}");
    assert!(text.contains("a \"quoted\" name"), "{text}");
    let o = cli(&["ls", "--metrics", &s.metrics, "--json"]);
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        text.starts_with("{\"server\":") && text.contains("\"name\":\"a \\\"quoted\\\" name\""),
        "{text}"
    );

    // The store stays open in the server: --dir refuses, --metrics is the way.
    let o = cli(&["stat", "--dir", store.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));

    // Nothing listening: exit 1, the address named, and a hint.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    for cmd in ["stat", "ls"] {
        let o = cli(&[cmd, "--metrics", &closed]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(
            err.contains(&closed) && err.contains("serve --metrics"),
            "{err}"
        );
    }
    // A BLOB port given by mistake: no valid HTTP reply, said so.
    let o = cli(&["stat", "--metrics", &s.blob]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn an_embedded_cache_and_library_manager_are_scraped_too() {
    use blobvault::{BlobCache, CacheOptions, LibraryCacheManager};
    use std::sync::Arc;
    let ts = TestServer::start();
    let key = ts.store().put(b"library bytes").unwrap();
    let other = ts.store().put(b"other library").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache: BlobCache = CacheOptions::new([ts.addr()])
        .dir(dir.path())
        .retries(0)
        .open()
        .unwrap();
    let manager = Arc::new(
        LibraryCacheManager::new(Arc::new(cache.clone()), Duration::from_secs(1_000_000)).unwrap(),
    );
    let admin = AdminServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Sources::new()
            .server(ts.server.probe())
            .cache(cache.clone())
            .library(Arc::clone(&manager)),
    )
    .unwrap();
    let job = JobId::random();
    manager.register_job(job, &[key, other]).unwrap(); // first registration: 2 downloads
    manager
        .register_task(job, blobvault::ExecutionAttemptId::random(), &[key])
        .unwrap(); // joins
    cache.get(&key).unwrap(); // a hit
    manager.unregister_job(job);

    let m = scrape(admin.local_addr());
    assert_eq!(sample(&m, "blobvault_cache_misses_total"), 2.0);
    assert_eq!(sample(&m, "blobvault_cache_downloads_total"), 2.0);
    assert_eq!(sample(&m, "blobvault_cache_hits_total"), 1.0);
    assert_eq!(sample(&m, "blobvault_cache_blobs"), 2.0);
    assert_eq!(
        sample(&m, "blobvault_cache_bytes"),
        (b"library bytes".len() + b"other library".len()) as f64
    );
    assert_eq!(sample(&m, "blobvault_library_misses_total"), 1.0);
    assert_eq!(sample(&m, "blobvault_library_hits_total"), 1.0);
    assert_eq!(sample(&m, "blobvault_library_fetches_total"), 2.0);
    assert_eq!(sample(&m, "blobvault_library_jobs"), 1.0);
    assert_eq!(manager.run_cleanup_now(), 0, "the task still holds the job");
    assert_eq!(manager.stats().removed, 0);
    // The server side saw the two downloads as GETs.
    assert_eq!(
        sample(&m, "blobvault_requests_total{op=\"get\",outcome=\"ok\"}"),
        2.0
    );
}

#[test]
fn a_reopened_store_reports_its_figures_before_any_write() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = blobvault::BlobStore::open(dir.path()).unwrap();
        store.put(b"kept one").unwrap();
        store
            .put_named(JobId::random(), "kept/two", b"kept two!")
            .unwrap();
    }
    let store = blobvault::BlobStore::open(dir.path()).unwrap();
    // The writer counts as it starts, without waiting for an operation (a server that only
    // reads reports its figures too): wait for it, bounded, sending nothing.
    let deadline = Instant::now() + IO_TIMEOUT;
    while !store.metrics().counted && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let m = store.metrics();
    assert!(m.counted, "not counted within {IO_TIMEOUT:?}");
    assert_eq!(
        (m.contents, m.content_blobs, m.named_blobs, m.payload_bytes),
        (2, 1, 1, 17)
    );
}

#[test]
fn flinks_prometheus_port_key_turns_the_endpoint_on() {
    let tmp = tempfile::tempdir().unwrap();
    // The BLOB port on another loopback address: the key's endpoint stays on 127.0.0.1, never
    // on --bind's address (a cluster address would expose the blob listing).
    let s = serve_with(
        &tmp.path().join("store"),
        &["--bind", "127.0.0.2", "-D", "metrics.reporter.prom.port=0"],
    );
    assert!(s.blob.starts_with("127.0.0.2:"), "{}", s.blob);
    let addr: SocketAddr = s.metrics.parse().expect("the metrics address");
    assert_eq!(addr.ip(), std::net::Ipv4Addr::LOCALHOST, "{addr}");
    assert_eq!(http_get(addr, "/healthz/live"), (200, "live\n".into()));
}

#[test]
fn a_taken_prometheus_port_from_the_key_only_turns_the_endpoint_off() {
    // Flink's own reporter already holds the port.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let tmp = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_blobvault"))
        .args(["serve", "--port", "0", "-D"])
        .arg(format!("metrics.reporter.prom.port={port}"))
        .arg("--dir")
        .arg(tmp.path().join("store"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn blobvault serve");
    // The warning comes before the BLOB port is announced (bounded: the log is short).
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut warned = None;
    for _ in 0..50 {
        let mut l = String::new();
        if err.read_line(&mut l).unwrap_or(0) == 0 {
            break;
        }
        if l.contains("metrics endpoint is off") {
            warned = Some(l);
            break;
        }
    }
    let warned = warned.expect("a warning that the metrics endpoint is off");
    assert!(warned.contains("metrics.reporter.prom.port"), "{warned}");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut l = String::new();
    out.read_line(&mut l).unwrap();
    let blob = l
        .trim()
        .strip_prefix("listening on ")
        .expect(&l)
        .to_string();
    // The BLOB server serves.
    let mut c = blobvault::BlobClient::connect_timeout(&blob.parse().unwrap(), IO_TIMEOUT)
        .expect("connect to the BLOB port");
    let key = c.put(b"served without metrics").unwrap();
    assert_eq!(
        c.get_bytes(&BlobId::Content(key)).unwrap(),
        b"served without metrics"
    );
    let _ = child.kill();
    let _ = child.wait();
    let mut rest = String::new();
    let _ = out.read_to_string(&mut rest);
    assert!(!rest.contains("metrics on"), "{rest}");
}

#[test]
fn a_bad_metrics_address_is_a_usage_error_before_the_store_opens() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    for bad in ["no-port-here", "127.0.0.1:notaport", "127.0.0.1:99999"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_blobvault"))
            .args(["serve", "--port", "0", "--metrics", bad, "--dir"])
            .arg(&store)
            .output()
            .expect("run blobvault serve");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {err}");
        assert!(
            err.contains("--metrics") && err.contains(bad),
            "{bad}: {err}"
        );
        assert!(!store.exists(), "{bad}: the store was opened");
        for cmd in ["stat", "ls"] {
            let out = cli(&[cmd, "--metrics", bad]);
            assert_eq!(out.status.code(), Some(2), "{cmd} --metrics {bad}");
        }
    }
}

#[test]
fn recovery_calls_and_read_repairs_are_counted() {
    use blobvault::config::ServerConfig;
    use blobvault::metrics::RecoveryCall;
    use blobvault::recovery::RedbRecoveryStore;
    use blobvault::store::{FaultSwitch, StoreOptions};
    let tmp = tempfile::tempdir().unwrap();
    let faults = FaultSwitch::new();
    let rec = RedbRecoveryStore::open_with_faults(&tmp.path().join("rec"), faults.clone()).unwrap();
    let serve = |name: &str| {
        let store = StoreOptions::new(tmp.path().join(name))
            .durable(false)
            .recovery(rec.clone())
            .open()
            .unwrap();
        blobvault::BlobServer::start(store, ServerConfig::default()).unwrap()
    };
    let (s0, s1) = (serve("s0"), serve("s1"));
    let job = JobId::random();
    let mut c = blobvault::BlobClient::connect(s0.local_addr()).unwrap();
    let key = c.put(b"replicated").unwrap();
    c.put_named(job, "gone", b"replicated").unwrap();
    c.delete_named(job, "gone").unwrap();
    let m0 = s0.metrics().store;
    assert_eq!(m0.recovery_of(RecoveryCall::Put).calls, 2);
    assert_eq!(m0.recovery_of(RecoveryCall::Delete).calls, 1);
    assert_eq!(m0.recovery_of(RecoveryCall::Put).seconds.count, 2);
    assert_eq!(m0.read_repairs, 0);

    // s1 has it only in the recovery store: a read-repair.
    let mut c = blobvault::BlobClient::connect(s1.local_addr()).unwrap();
    assert_eq!(c.get_bytes(&BlobId::Content(key)).unwrap(), b"replicated");
    let m1 = s1.metrics();
    assert_eq!(m1.store.read_repairs, 1);
    assert_eq!(m1.store.recovery_of(RecoveryCall::Get).calls, 1);
    assert_eq!(m1.requests_of(Op::Get, Outcome::Ok), 1);
    assert_eq!(m1.store.content_blobs, 1, "the repaired blob is kept");

    // Readiness asks the recovery store, which answers.
    let admin = endpoint_of(&s1);
    assert_eq!(http_get(admin.local_addr(), "/healthz").0, 200);
    drop(admin);
    // A failing recovery store: the PUT fails, and so does the call, counted.
    faults.fail_writes();
    let mut c = blobvault::BlobClient::connect(s1.local_addr()).unwrap();
    assert!(c.put(b"refused: recovery fails").is_err());
    let m1 = s1.metrics().store;
    assert_eq!(m1.recovery_of(RecoveryCall::Put).errors, 1);
    // Not ready while the last put to the recovery store failed (though it still answers
    // lookups), ready again once one succeeds.
    let admin = endpoint_of(&s1);
    let (status, body) = http_get(admin.local_addr(), "/healthz");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("last put to the recovery store failed"),
        "{body}"
    );
    faults.heal();
    let mut c = blobvault::BlobClient::connect(s1.local_addr()).unwrap();
    c.put(b"accepted: recovery works again").unwrap();
    assert_eq!(
        http_get(admin.local_addr(), "/healthz"),
        (200, "ready\n".into())
    );
}

#[test]
fn healthz_is_not_ready_while_the_store_is_out_of_space() {
    let ts = TestServer::start_durable();
    let admin = endpoint(&ts);
    let store = ts.store();
    store.put(b"stored before the disk filled").unwrap();
    ts.faults.disk_full();
    let big: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8).collect();
    assert!(store.put(&big).unwrap_err().is_no_space());
    assert!(store.is_out_of_space());
    let (status, body) = http_get(admin.local_addr(), "/healthz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("out of space"), "{body}");
    assert!(body.contains(&store.dir().display().to_string()), "{body}");
    // Space returns: the next PUT restores the reserve, and the store is ready again.
    ts.faults.heal();
    store.put(&big).unwrap();
    assert!(!store.is_out_of_space());
    assert_eq!(
        http_get(admin.local_addr(), "/healthz"),
        (200, "ready\n".into())
    );
}

#[test]
fn healthz_is_not_ready_once_the_database_file_is_deleted_or_replaced() {
    let ts = TestServer::start_durable();
    let admin = endpoint(&ts);
    let store = ts.store();
    store.put(b"stored before the file went").unwrap();
    assert_eq!(
        http_get(admin.local_addr(), "/healthz"),
        (200, "ready\n".into())
    );
    let file = store.dir().join(blobvault::store::DB_FILE);
    let moved = store.dir().join("moved-aside.redb");
    std::fs::rename(&file, &moved).unwrap();
    let (status, body) = http_get(admin.local_addr(), "/healthz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("is gone"), "{body}");
    assert!(body.contains(&file.display().to_string()), "{body}");
    // Another file at the path is not the one open either.
    std::fs::copy(&moved, &file).unwrap();
    let (status, body) = http_get(admin.local_addr(), "/healthz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("replaced"), "{body}");
    // The open file back where it was: ready again.
    std::fs::rename(&moved, &file).unwrap();
    assert_eq!(
        http_get(admin.local_addr(), "/healthz"),
        (200, "ready\n".into())
    );
}

fn endpoint_of(server: &blobvault::BlobServer) -> AdminServer {
    AdminServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Sources::new().server(server.probe()),
    )
    .unwrap()
}

#[test]
fn a_request_cut_off_by_a_deadline_counts_as_failed() {
    use blobvault::config::ServerConfig;
    use blobvault::protocol::{self, PutTarget};
    let mut config = ServerConfig::default();
    config.deadlines.stall = Duration::from_millis(200);
    let ts = TestServer::start_config(config);
    let mut s = ts.raw();
    let mut req = Vec::new();
    protocol::encode_put_header(&PutTarget::Content, &mut req);
    protocol::encode_chunk(b"half a body, then silence", &mut req);
    s.write_all(&req).unwrap();
    // The server cuts the stalled PUT off: wait for the close (bounded by IO_TIMEOUT).
    let _ = until_closed(&mut s);
    let deadline = Instant::now() + IO_TIMEOUT;
    while ts.server.metrics().requests_of(Op::Put, Outcome::Error) == 0 && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(1));
    }
    let m = ts.server.metrics();
    assert_eq!(m.requests_of(Op::Put, Outcome::Error), 1);
    assert_eq!(m.requests_of(Op::Put, Outcome::Ok), 0);
    assert_eq!(m.duration_of(Op::Put).count, 1);
}

#[test]
fn the_listen_backlog_and_workers_are_reported() {
    use blobvault::config::ServerConfig;
    let config = ServerConfig {
        backlog: 37,
        num_concurrent: 3,
        ..ServerConfig::default()
    };
    let ts = TestServer::start_config(config);
    let m = ts.server.metrics();
    assert_eq!(m.workers, 3);
    if cfg!(all(target_os = "linux", target_env = "gnu")) {
        // TCP_INFO of the listening socket: the limit as the kernel applies it (somaxconn caps).
        let cap = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(u64::MAX);
        assert_eq!(m.listen_queue_max, Some(37.min(cap)));
        assert_eq!(
            m.listen_queue,
            Some(0),
            "the acceptor keeps the queue empty"
        );
    }
    assert!(m.workers_busy <= m.workers);
}

#[test]
fn store_figures_come_back_after_a_storage_failure_without_a_write() {
    let ts = TestServer::start_durable();
    let admin = endpoint(&ts);
    let mut c = ts.client();
    c.put(b"counted before the failure").unwrap();
    ts.faults.fail_writes();
    assert!(c.put(b"this one fails").is_err());
    drop(c);
    // The failure uncounted the figures (the reopen replays the log); storage works again, and
    // nothing more is written: the writer counts again on its own (bounded wait, polled).
    ts.faults.heal();
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let (status, body) = http_get(admin.local_addr(), "/stat");
        assert_eq!(status, 200, "{body}");
        if !body.contains("null") || Instant::now() > deadline {
            break body;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(body.contains("\"content_blobs\":1,"), "{body}");
    let after = scrape(admin.local_addr());
    assert_eq!(sample(&after, "blobvault_store_content_blobs"), 1.0);
    assert_eq!(
        sample(&after, "blobvault_store_payload_bytes"),
        b"counted before the failure".len() as f64
    );
}

#[test]
fn a_reply_is_not_cut_short_when_the_client_sent_more_than_its_request() {
    let ts = TestServer::start();
    let admin = endpoint(&ts);
    let at = admin.local_addr();
    // A small receive window: most of the reply is still queued on the server's side when it
    // has written it all. Closing with unread input would reset the connection and drop it.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(2048).unwrap();
    sock.connect(&at.into()).unwrap();
    let mut s: TcpStream = sock.into();
    let extra = vec![b'z'; 20_000];
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        extra.len()
    )
    .unwrap();
    s.write_all(&extra).unwrap();
    // The endpoint is one thread: once a later connection is answered, this one has had its
    // whole reply written (and, before the fix, its socket closed).
    assert_eq!(http_get(at, "/healthz/live"), (200, "live\n".into()));
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got)
        .expect("the whole reply, without a reset");
    let reply = String::from_utf8_lossy(&got);
    let (head, body) = reply.split_once("\r\n\r\n").expect("a reply head");
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("a Content-Length");
    assert!(len > 8192, "a reply larger than the window: {len}");
    assert_eq!(body.len(), len);
}

/// A stand-in for a metrics endpoint: answers each of `bodies`, in turn, to one connection
/// with a 200 and that body.
fn fake_endpoint(bodies: Vec<String>) -> (SocketAddr, std::thread::JoinHandle<()>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        for body in bodies {
            let (mut s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                if s.read(&mut b).unwrap_or(0) == 0 {
                    break;
                }
                head.push(b[0]);
            }
            let _ = write!(s, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{body}");
        }
    });
    (addr, t)
}

#[test]
fn stat_and_ls_refuse_replies_that_are_not_what_the_endpoint_sends() {
    let key = "0".repeat(40);
    let bodies = vec![
        "<html>a proxy's page</html>\n".to_string(),
        format!("{{\"key\":\"{key}\",\"size\":3}}\n{{\"end\":true,\"blobs\":2}}\n"),
        format!(
            "{{\"key\":\"{key}\",\"size\":3,\"pad\":\"{}\"}}\n",
            "x".repeat(100_000)
        ),
        format!("{{\"key\":\"{key}\",\"size\":3}}\n{{\"end\":true,\"blobs\":1}}\n"),
    ];
    let (addr, t) = fake_endpoint(bodies);
    let at = addr.to_string();
    let run = |args: &[&str]| {
        let out = cli(args);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["stat", "--metrics", &at, "--json"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("bad /stat reply"), "{err}");
    let (code, err) = run(&["ls", "--metrics", &at]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("does not match the 1 blobs received"), "{err}");
    let (code, err) = run(&["ls", "--metrics", &at]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("over 4096 bytes"), "{err}");
    // A listing that agrees with its end line is accepted.
    let (code, err) = run(&["ls", "--metrics", &at]);
    assert_eq!(code, Some(0), "{err}");
    t.join().unwrap();
}

#[test]
fn only_read_repairs_that_apply_are_counted() {
    use blobvault::PutTarget;
    use blobvault::recovery::RedbRecoveryStore;
    use blobvault::store::StoreOptions;
    let tmp = tempfile::tempdir().unwrap();
    let rec = RedbRecoveryStore::open(&tmp.path().join("rec")).unwrap();
    let open = |name: &str| {
        StoreOptions::new(tmp.path().join(name))
            .recovery(rec.clone())
            .open()
            .unwrap()
    };
    let (a, b) = (open("a"), open("b"));
    let key = a.put(b"held by the recovery store").unwrap();
    let repair = || {
        let mut up = b.upload();
        up.write(b"held by the recovery store").unwrap();
        b.commit_local(up.finish().unwrap(), PutTarget::Content)
            .unwrap()
    };
    // Absent from b, held by the recovery store: the repair applies.
    assert_eq!(repair(), key);
    assert_eq!(b.metrics().read_repairs, 1);
    // A second repair of the same blob (as a concurrent GET's would be) is vetoed: not counted.
    assert_eq!(repair(), key);
    assert_eq!(b.metrics().read_repairs, 1);
    assert_eq!(b.metrics().content_blobs, 1);
}
