//! Object-store recovery against a real SeaweedFS (tests/common/seaweed.rs): the harness itself
//! first, then `blobvault` processes recovering through an S3 bucket.

use std::ffi::OsStr;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use blobvault::{BlobClient, BlobId, JobId};

mod common;
use common::ServeProcess;
use common::seaweed::Seaweed;

/// The shared single node: a bucket of one's own, fsync on, objects listed through the filer.
#[test]
fn harness_single_node_bucket() {
    let Some(sw) = Seaweed::shared("harness_single_node_bucket") else {
        return;
    };
    let bucket = sw.new_bucket("harness");
    assert!(sw.objects(&bucket, "").is_empty());
    sw.filer_put(&bucket, "p/a/1", b"one");
    sw.filer_put(&bucket, "p/b/2", b"two!");
    sw.filer_put(&bucket, "q/3", b"3");
    assert_eq!(
        sw.objects(&bucket, "p/"),
        vec![("p/a/1".to_string(), 3), ("p/b/2".to_string(), 4)]
    );
    assert_eq!(sw.filer_get(&bucket, "q/3").as_deref(), Some(&b"3"[..]));
    assert_eq!(sw.filer_get(&bucket, "q/none"), None);
    let other = sw.new_bucket("harness");
    assert_ne!(bucket, other);
    assert!(sw.objects(&other, "").is_empty());
}

// ---- blobvault processes recovering through a bucket ----

/// A short bound on each replication (`blob.recovery.timeout`, seconds) for the servers of the
/// unreachable-store and gc tests: a gc pass waits about twice that for PUTs in flight.
const TIMEOUT_ARGS: &[&str] = &["-D", "blob.recovery.timeout=3"];
/// What a PUT against a stopped gateway may take at most with that timeout (the slack covers a
/// busy machine; the default timeout, 30 s, would exceed it).
const TIMEOUT_BOUND: Duration = Duration::from_secs(15);
/// `recovery gc` arguments: no grace period (content unreferenced now is collected now), and
/// the servers' replication bound (gc waits for PUTs in flight that long).
const GC_ARGS: &[&str] = &[
    "-D",
    "blob.recovery.gc.grace=0",
    "-D",
    "blob.recovery.timeout=3",
];

/// The blob objects under the recovery prefix `ha/` of `bucket`.
fn blob_objects(sw: &Seaweed, bucket: &str) -> Vec<(String, u64)> {
    sw.objects(bucket, "ha/")
}

/// `blobvault serve --dir DIR --recovery-dir URI ARGS…` with the store's environment; its log
/// (RUST_LOG=info) goes to `DIR.log`.
fn serve(sw: &Seaweed, dir: &Path, uri: &str, args: &[&str]) -> ServeProcess {
    let mut all: Vec<&OsStr> = vec![
        "--dir".as_ref(),
        dir.as_os_str(),
        "--recovery-dir".as_ref(),
        uri.as_ref(),
    ];
    all.extend(args.iter().map(|a| OsStr::new(*a)));
    let mut env = sw.env();
    env.push(("RUST_LOG", "info"));
    ServeProcess::spawn_logging_env(&all, &dir.with_extension("log"), &env)
}

/// Runs `blobvault ARGS…` with `env` to its end (bounded): exit status, stdout, stderr.
fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (std::process::ExitStatus, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_blobvault"))
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn blobvault");
    // Readers on threads: a full pipe must not stall the child while we wait for it.
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for blobvault") {
            break s;
        }
        if start.elapsed() > CLI_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "blobvault {args:?} still running after {CLI_TIMEOUT:?}; stderr: {}",
                err.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status,
        out.join().expect("stdout reader"),
        err.join().expect("stderr reader"),
    )
}

/// Longest a `blobvault` command in these tests may take (a safety net: none waits for it).
const CLI_TIMEOUT: Duration = Duration::from_secs(120);

/// Peak RSS (VmHWM) of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    let line = s
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM line");
    let kb: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .expect("VmHWM in kB");
    kb * 1024
}

fn client(p: &ServeProcess) -> BlobClient {
    BlobClient::connect_timeout(&p.addr, common::IO_TIMEOUT).expect("connect")
}

/// Blobs by content and by name, 1 KiB to a few MiB, as `(id, bytes)`.
fn put_mix(c: &mut BlobClient, job: JobId, n: usize, seed: u64) -> Vec<(BlobId, Vec<u8>)> {
    let mut rng = common::Rng::new(seed);
    (0..n)
        .map(|i| {
            let size = match i % 5 {
                4 => (2 << 20) + rng.below(1 << 20) as usize,
                _ => 1024 + rng.below(200 << 10) as usize,
            };
            let data = rng.bytes(size);
            if i % 2 == 0 {
                (BlobId::Content(c.put(&data).expect("content PUT")), data)
            } else {
                let name = format!("blob-{seed}-{i}");
                c.put_named(job, &name, &data).expect("named PUT");
                (BlobId::Named(job, name), data)
            }
        })
        .collect()
}

fn assert_serves_all(p: &ServeProcess, acked: &[(BlobId, Vec<u8>)], what: &str) {
    let mut c = client(p);
    for (id, data) in acked {
        let got = c
            .get_bytes(id)
            .unwrap_or_else(|e| panic!("{what}: GET {id}: {e}"));
        assert!(got == *data, "{what}: {id}: different bytes");
    }
}

/// Three volume servers, two copies of everything: a volume server and the blobvault server
/// that wrote the blobs are killed; a fresh server on an empty directory serves every blob.
#[test]
fn cluster_failover_survives_a_volume_server_and_the_writer() {
    let Some(sw) = Seaweed::cluster("cluster_failover_survives_a_volume_server_and_the_writer")
    else {
        return;
    };
    assert_eq!(sw.data_nodes().unwrap().len(), 3);
    let bucket = sw.new_bucket("failover");
    let uri = sw.uri(&bucket, "ha");
    let tmp = tempfile::tempdir().unwrap();
    let a = serve(&sw, &tmp.path().join("a"), &uri, &[]);
    let job = JobId::random();
    let mut acked = put_mix(&mut client(&a), job, 30, 1);
    // One blob big enough for a multipart upload.
    let big = common::Rng::new(2).bytes(24 << 20);
    acked.push((BlobId::Content(client(&a).put(&big).unwrap()), big));
    // Every object the bucket holds has its two copies on two servers.
    assert!(sw.assert_replicated(&bucket, 2) > 0);

    // The victim holds copies of the bucket's objects.
    let victim = sw.volumes_holding(&bucket)[0];
    a.kill();
    sw.kill_volume(victim);
    assert!(!sw.volumes_holding(&bucket).contains(&victim));
    let b = serve(&sw, &tmp.path().join("b"), &uri, &[]);
    assert_serves_all(&b, &acked, "fresh server after kill -9 of a volume server");
}

/// The store unreachable: a PUT fails with an error naming the endpoint and bucket within the
/// configured timeout, whether the gateway hangs (SIGSTOP: only the timeout ends the request)
/// or is gone (connections refused); local blobs are still served, nothing half-written is
/// visible, and PUTs work again once the gateway is back.
#[test]
fn unreachable_store_fails_puts_in_time_and_recovers() {
    let Some(sw) = Seaweed::single("unreachable_store_fails_puts_in_time_and_recovers") else {
        return;
    };
    let bucket = sw.new_bucket("unreachable");
    let uri = sw.uri(&bucket, "ha");
    let tmp = tempfile::tempdir().unwrap();
    let a = serve(&sw, &tmp.path().join("a"), &uri, TIMEOUT_ARGS);
    let job = JobId::random();
    let before = put_mix(&mut client(&a), job, 6, 3);

    let failed_put = |seed: u64, how: &str| {
        let data = common::Rng::new(seed).bytes(10_000);
        let start = Instant::now();
        let err = client(&a).put(&data).expect_err(how);
        let took = start.elapsed();
        let msg = err
            .server_message()
            .unwrap_or_else(|| panic!("{how}: not an error reply: {err}"));
        eprintln!("{how}: the PUT failed after {took:?}: {msg}");
        assert!(
            msg.contains(&bucket) && msg.contains(&sw.endpoint()),
            "{how}: the error names neither the bucket nor the endpoint: {msg}"
        );
        // Bounded by the configured timeout (3 s; the slack covers a busy machine; the
        // default, 30 s, would exceed it).
        assert!(
            took < TIMEOUT_BOUND,
            "{how}: failed only after {took:?}: {msg}"
        );
        // Nothing visible: the failed blob is not served.
        let key = blobvault::BlobKey::of(&data);
        assert!(
            client(&a).get_bytes(&BlobId::Content(key)).is_err(),
            "{how}"
        );
        data
    };

    sw.pause_gateway();
    let hung = failed_put(4, "gateway frozen");
    assert_serves_all(&a, &before, "GETs of local blobs with the gateway frozen");
    sw.resume_gateway();
    let k1 = client(&a).put(&hung).expect("PUT once the gateway thaws");

    sw.stop_gateway();
    let gone = failed_put(5, "gateway stopped");
    assert_serves_all(&a, &before, "GETs of local blobs with the gateway stopped");
    sw.restart_gateway();
    let k2 = client(&a).put(&gone).expect("PUT once the gateway is back");

    // Both made it to the bucket: a fresh server serves them.
    let b = serve(&sw, &tmp.path().join("b"), &uri, &[]);
    let mut c = client(&b);
    assert_eq!(c.get_bytes(&BlobId::Content(k1)).unwrap(), hung);
    assert_eq!(c.get_bytes(&BlobId::Content(k2)).unwrap(), gone);
}

/// A 300 MiB blob goes up and comes back through the object store with bounded memory.
#[test]
fn large_blob_round_trips_with_bounded_memory() {
    let Some(sw) = Seaweed::shared("large_blob_round_trips_with_bounded_memory") else {
        return;
    };
    let bucket = sw.new_bucket("large");
    let uri = sw.uri(&bucket, "ha");
    let tmp = tempfile::tempdir().unwrap();
    let a = serve(sw, &tmp.path().join("a"), &uri, &[]);
    const SIZE: u64 = 300 << 20;
    let key = client(&a)
        .put_reader(Generated::new(SIZE, 9))
        .expect("300 MiB PUT");
    let rss = peak_rss(a.child.id());
    eprintln!("300 MiB PUT: writer's peak RSS {} MiB", rss >> 20);
    assert!(rss < 128 << 20, "writer's peak RSS {} MiB", rss >> 20);
    drop(a);

    // A fresh server fetches it from the bucket (read-repair) and streams it out; the client
    // checks the SHA-1 at the end.
    let b = serve(sw, &tmp.path().join("b"), &uri, &[]);
    let mut c = client(&b);
    let mut dl = c.get(key).expect("GET through the object store");
    assert_eq!(dl.len(), SIZE);
    let n = std::io::copy(&mut dl, &mut std::io::sink()).expect("download, key checked");
    assert_eq!(n, SIZE);
    let rss = peak_rss(b.child.id());
    eprintln!(
        "300 MiB GET through read-repair: reader's peak RSS {} MiB",
        rss >> 20
    );
    assert!(rss < 128 << 20, "reader's peak RSS {} MiB", rss >> 20);
}

/// `len` pseudo-random bytes, generated as read (the test holds no 300 MiB buffer).
struct Generated {
    left: u64,
    rng: common::Rng,
}

impl Generated {
    fn new(len: u64, seed: u64) -> Generated {
        Generated {
            left: len,
            rng: common::Rng::new(seed),
        }
    }
}

impl Read for Generated {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.left as usize).min(1 << 16) & !7;
        let n = if n == 0 {
            buf.len().min(self.left as usize)
        } else {
            n
        };
        for chunk in buf[..n].chunks_mut(8) {
            let v = self.rng.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// `blobvault recovery gc` with the store's environment.
fn gc(sw: &Seaweed, uri: &str) -> String {
    let mut args = vec!["recovery", "gc", "--recovery-dir", uri];
    args.extend_from_slice(GC_ARGS);
    let (status, out, err) = run_cli(&args, &sw.env());
    assert!(
        status.success(),
        "recovery gc {uri}: {status}\n{out}\n{err}"
    );
    out
}

/// After every blob is deleted, gc leaves no blob object in the bucket.
#[test]
fn gc_after_deleting_everything_leaves_no_blob_objects() {
    let Some(sw) = Seaweed::shared("gc_after_deleting_everything_leaves_no_blob_objects") else {
        return;
    };
    let bucket = sw.new_bucket("gc");
    let uri = sw.uri(&bucket, "ha");
    let tmp = tempfile::tempdir().unwrap();
    let a = serve(sw, &tmp.path().join("a"), &uri, &[]);
    let (job1, job2) = (JobId::random(), JobId::random());
    let mut c = client(&a);
    let mut acked = put_mix(&mut c, job1, 10, 5);
    acked.extend(put_mix(&mut c, job2, 10, 6));
    // The same bytes by content and by name: the DELETE by key must not break the named one.
    let shared_bytes = common::Rng::new(7).bytes(50_000);
    let shared_key = c.put(&shared_bytes).unwrap();
    c.put_named(job1, "shares-bytes", &shared_bytes).unwrap();
    assert!(!blob_objects(sw, &bucket).is_empty());

    c.delete(shared_key).unwrap();
    let b = serve(sw, &tmp.path().join("b"), &uri, &[]);
    assert_eq!(
        client(&b)
            .get_bytes(&BlobId::Named(job1, "shares-bytes".into()))
            .unwrap(),
        shared_bytes,
        "a DELETE by key broke a named blob holding the same bytes"
    );
    drop(b);
    for (id, _) in &acked {
        if let BlobId::Content(k) = id {
            c.delete(*k).unwrap();
        }
    }
    c.delete_job(job1).unwrap();
    c.delete_job(job2).unwrap();
    gc(sw, &uri);
    let left = blob_objects(sw, &bucket);
    assert!(left.is_empty(), "left after gc: {left:?}");
    // And a fresh server finds nothing to serve.
    let b = serve(sw, &tmp.path().join("b2"), &uri, &[]);
    let mut c = client(&b);
    for (id, _) in &acked {
        assert!(c.get_bytes(id).is_err(), "{id} served after delete and gc");
        c = client(&b);
    }
}

/// gc runs while another server PUTs the very bytes gc is collecting: before the pass marks
/// them, while they are marked, and once it has started deleting. A PUT may be refused while
/// its content is marked; every PUT that was acknowledged stays readable.
#[test]
fn gc_never_deletes_what_a_concurrent_put_acknowledged() {
    let Some(sw) = Seaweed::shared("gc_never_deletes_what_a_concurrent_put_acknowledged") else {
        return;
    };
    let bucket = sw.new_bucket("gcrace");
    let uri = sw.uri(&bucket, "ha");
    let tmp = tempfile::tempdir().unwrap();
    let a = serve(sw, &tmp.path().join("a"), &uri, TIMEOUT_ARGS);
    let b = serve(sw, &tmp.path().join("b"), &uri, TIMEOUT_ARGS);
    // A leaves 30 contents unreferenced in the bucket.
    let contents: Vec<Vec<u8>> = (0..30)
        .map(|i| common::Rng::new(100 + i).bytes(16 << 10))
        .collect();
    let mut ca = client(&a);
    for data in &contents {
        let key = ca.put(data).unwrap();
        ca.delete(key).unwrap();
    }
    let count = |under: &str| sw.objects(&bucket, &format!("ha/{under}/")).len();
    assert_eq!(count("content"), contents.len());
    assert_eq!(count("pin"), 0);

    // B puts them again in three groups, each at a stage of the pass seen in the bucket.
    let mut acked = Vec::new();
    let mut refused = Vec::new();
    let put = |data: &Vec<u8>, acked: &mut Vec<_>, refused: &mut Vec<_>| match client(&b).put(data)
    {
        Ok(key) => acked.push((BlobId::Content(key), data.clone())),
        Err(e) => {
            let msg = e.server_message().unwrap_or_default().to_string();
            assert!(msg.contains("garbage-collected"), "PUT during gc: {e}");
            refused.push(data.clone());
        }
    };
    std::thread::scope(|s| {
        let pass = s.spawn(|| gc(sw, &uri));
        // Before the pass marks anything (it lists first: most of these land before).
        for data in &contents[..10] {
            put(data, &mut acked, &mut refused);
        }
        // While content is marked.
        wait_until("gc markers", || count("gc") > 0 || pass.is_finished());
        for data in &contents[10..20] {
            put(data, &mut acked, &mut refused);
        }
        // Once the pass has deleted some content.
        wait_until("gc deleting", || {
            count("content") < 20 || pass.is_finished()
        });
        for data in &contents[20..] {
            put(data, &mut acked, &mut refused);
        }
        pass.join().expect("gc thread");
    });
    eprintln!(
        "during the pass: {} PUTs acknowledged, {} refused (content marked)",
        acked.len(),
        refused.len()
    );
    // Refused while marked: accepted once the pass is over.
    for data in &refused {
        let key = client(&b).put(data).expect("PUT after gc");
        acked.push((BlobId::Content(key), data.clone()));
    }
    assert_eq!(acked.len(), contents.len());
    gc(sw, &uri);
    assert_eq!(count("gc"), 0, "markers left");
    let c = serve(sw, &tmp.path().join("c"), &uri, &[]);
    assert_serves_all(&c, &acked, "fresh server after gc raced the PUTs");
}

/// Polls `cond` (bounded: 60 s, every 50 ms).
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..1200 {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("waited 60 s for {what}");
}

/// A start that must fail: `blobvault serve ARGS` exits non-zero (without serving) and its
/// stderr is returned.
fn start_fails(args: &[&str], env: &[(&str, &str)]) -> String {
    eprintln!("serve {args:?}:");
    let mut all = vec!["serve", "--port", "0"];
    all.extend_from_slice(args);
    let (status, out, err) = run_cli(&all, env);
    assert!(
        !status.success() && !out.contains("listening on"),
        "serve {args:?} started: {status}\n{out}\n{err}"
    );
    eprintln!("  {status}: {err}");
    err
}

/// Bad credentials, a missing bucket and malformed URIs stop the server at start, with a
/// message naming what is wrong.
#[test]
fn bad_object_store_settings_fail_at_start() {
    let Some(sw) = Seaweed::shared("bad_object_store_settings_fail_at_start") else {
        return;
    };
    let bucket = sw.new_bucket("settings");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("local");
    let dir = dir.to_str().unwrap();
    let uri = sw.uri(&bucket, "ha");
    let endpoint = sw.endpoint();

    let err = start_fails(
        &["--dir", dir, "--recovery-dir", &uri],
        &sw.env_with("AWS_SECRET_ACCESS_KEY", "not-the-secret"),
    );
    assert!(
        err.contains(&bucket) && err.contains(&endpoint),
        "bad credentials: {err}"
    );
    assert!(
        !err.contains("not-the-secret"),
        "the secret is in the log: {err}"
    );

    let missing = format!("{bucket}-missing");
    let err = start_fails(
        &["--dir", dir, "--recovery-dir", &sw.uri(&missing, "ha")],
        &sw.env(),
    );
    assert!(
        err.contains(&missing) && err.contains(&endpoint),
        "missing bucket: {err}"
    );

    for bad in [
        "s3://",
        "s3:///prefix",
        "s3://Bad_Bucket!/x",
        "s5://bucket/x",
    ] {
        let err = start_fails(&["--dir", dir, "--recovery-dir", bad], &sw.env());
        assert!(err.contains(bad), "{bad}: {err}");
    }
    // Nothing was created in the working directory for the refused URIs.
    assert!(!Path::new("s3:").exists() && !Path::new("s5:").exists());
}

/// `bench --object-store URI` beside a blobvault server, plain and `--object-store-create`:
/// the store-alone phases run without errors and leave nothing in the bucket; the create-only
/// one writes as the recovery backend does.
#[test]
fn bench_measures_the_store_alone_plain_and_create_only() {
    let Some(sw) = Seaweed::shared("bench_measures_the_store_alone") else {
        return;
    };
    let bucket = sw.new_bucket("bench");
    let tmp = tempfile::tempdir().unwrap();
    let p = ServeProcess::spawn(&["--dir".as_ref(), tmp.path().join("s").as_os_str()]);
    let server = p.addr.to_string();
    let direct = sw.uri(&bucket, "direct");
    for (flag, phase) in [
        (None, "store-put"),
        (Some("--object-store-create"), "store-create"),
    ] {
        let mut args = vec![
            "bench",
            "-q",
            "--server",
            &server,
            "-n",
            "20",
            "-s",
            "4KiB",
            "-c",
            "2",
            "--phases",
            "put",
            "--object-store",
            &direct,
        ];
        args.extend(flag);
        let (status, out, err) = run_cli(&args, &sw.env());
        assert!(status.success(), "bench {args:?}: {status}\n{out}\n{err}");
        let row: Vec<&str> = out
            .lines()
            .find(|l| l.starts_with(phase))
            .unwrap_or_else(|| panic!("no {phase} row in\n{out}"))
            .split_whitespace()
            .collect();
        // phase, ops, ops/s, MB/s, 4 latencies, errors
        assert_eq!((row[1], row[8]), ("20", "0"), "{phase}: {row:?}");
        assert_eq!(
            sw.objects(&bucket, "direct/"),
            vec![],
            "{phase} left objects"
        );
    }
}
