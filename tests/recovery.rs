//! Recovery: every write replicated to a shared recovery store; failover serves everything.
//!
//! The suite runs against both backends (`redb_file::*` and `object_store::*`, from
//! `both_backends!`): the redb file and an S3 bucket on a real SeaweedFS. Object-store tests fail
//! in CI when `weed` is missing and skip loudly elsewhere.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use blobvault::config::{Configuration, ServerConfig};
use blobvault::recovery::{
    RecoveryStore, RecoveryTarget, RedbRecoveryStore, recovery_dir_from_config,
};
use blobvault::store::{FaultSwitch, StoreOptions};
use blobvault::{BlobClient, BlobId, BlobKey, BlobServer, JobId};

mod common;
use common::ServeProcess;
use common::backends::Backend;

both_backends!(
    blob_recovery_itcase,
    graceful_shutdown_keeps_recovery_data_and_purge_removes_it,
    two_processes_share_a_recovery_dir_and_survive_kill_9,
    read_repair_never_overrides_newer_writes,
    deletes_propagate_and_keep_shared_bytes,
    a_large_blob_round_trips_in_pieces,
    a_cache_reads_the_recovery_store_when_every_server_is_down,
);

fn server_with_recovery(local: &Path, rec: Arc<dyn RecoveryStore>) -> BlobServer {
    let store = StoreOptions::new(local).recovery(rec).open().unwrap();
    BlobServer::start(store, ServerConfig::default()).unwrap()
}

fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    common::Rng::new(seed).bytes(n)
}

/// Port of Flink's BlobRecoveryITCase.
fn blob_recovery_itcase(b: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let Some(r) = b.open(tmp.path(), "blob_recovery_itcase") else {
        return;
    };
    let rec = r.store.clone();
    if b == Backend::RedbFile {
        // Servers in one process share one handle per path.
        let a = RedbRecoveryStore::open(Path::new(&r.uri)).unwrap();
        assert!(Arc::ptr_eq(
            &a,
            &RedbRecoveryStore::open(Path::new(&r.uri)).unwrap()
        ));
    }
    let s0 = server_with_recovery(&tmp.path().join("s0"), rec.clone());
    // Another server with its own handle on the same store.
    let s1 = server_with_recovery(&tmp.path().join("s1"), r.reopen());

    let expected = pseudo_random(1024, 7);
    let (job0, job1) = (JobId::random(), JobId::random());
    let mut c = BlobClient::connect(s0.local_addr()).unwrap();
    let k0 = c.put(&expected).unwrap();
    let k1 = c.put_range(&expected, 32, 256).unwrap();
    c.put_named(job0, "test-key-1", &expected).unwrap();
    c.put_named_range(job1, "test-key-2", &expected, 32, 256)
        .unwrap();
    drop(c);

    let mut c = BlobClient::connect(s1.local_addr()).unwrap();
    assert_eq!(c.get_bytes(&BlobId::Content(k0)).unwrap(), expected);
    assert_eq!(
        c.get_bytes(&BlobId::Content(k1)).unwrap(),
        &expected[32..288]
    );
    assert_eq!(
        c.get_bytes(&BlobId::Named(job0, "test-key-1".into()))
            .unwrap(),
        expected
    );
    assert_eq!(
        c.get_bytes(&BlobId::Named(job1, "test-key-2".into()))
            .unwrap(),
        &expected[32..288]
    );
    // Server 1 now holds local copies (read-repair).
    assert_eq!(s1.store().list().unwrap().len(), 4);

    c.delete(k0).unwrap();
    c.delete(k1).unwrap();
    c.delete_job(job0).unwrap();
    c.delete_job(job1).unwrap();
    assert!(rec.list().unwrap().is_empty(), "{:?}", rec.list().unwrap());
    // Deleted blobs cannot come back through failover: a new server on a fresh directory
    // finds none of them.
    let s2 = server_with_recovery(&tmp.path().join("s2"), r.reopen());
    let mut c2 = BlobClient::connect(s2.local_addr()).unwrap();
    assert!(c2.get_bytes(&BlobId::Content(k0)).is_err());
    let mut c2 = BlobClient::connect(s2.local_addr()).unwrap();
    assert!(
        c2.get_bytes(&BlobId::Named(job1, "test-key-2".into()))
            .is_err()
    );
}

fn graceful_shutdown_keeps_recovery_data_and_purge_removes_it(b: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let Some(r) = b.open(tmp.path(), "graceful_shutdown") else {
        return;
    };
    let rec = r.store.clone();
    let mut s0 = server_with_recovery(&tmp.path().join("s0"), rec.clone());
    let key = BlobClient::connect(s0.local_addr())
        .unwrap()
        .put(b"survives shutdown")
        .unwrap();
    s0.shutdown();
    drop(s0);
    assert_eq!(rec.list().unwrap(), vec![BlobId::Content(key)]);

    // A new server on a fresh local directory serves it.
    let s1 = server_with_recovery(&tmp.path().join("s1"), rec.clone());
    let mut c = BlobClient::connect(s1.local_addr()).unwrap();
    assert_eq!(
        c.get_bytes(&BlobId::Content(key)).unwrap(),
        b"survives shutdown"
    );
    drop(s1);

    // Not blobvault's: purge leaves it.
    if let Some(sw) = r.seaweed {
        sw.filer_put(&r.bucket, "ha/NOTES.txt", b"someone else's");
    }
    // Purge through the CLI, as an operator would.
    let out = Command::new(env!("CARGO_BIN_EXE_blobvault"))
        .args(["recovery", "purge", "--recovery-dir", &r.uri])
        .envs(r.env())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("purged 1 blobs from {}", r.uri)
    );
    assert!(rec.list().unwrap().is_empty());
    if b == Backend::ObjectStore {
        assert_eq!(
            r.objects("ha/"),
            vec![("ha/NOTES.txt".to_owned(), 14)],
            "purge leaves nothing of its own, and nothing else goes"
        );
    }
}

#[test]
fn failing_recovery_store_fails_the_put_and_leaves_no_trace() {
    let tmp = tempfile::tempdir().unwrap();
    let faults = FaultSwitch::new();
    let rec =
        RedbRecoveryStore::open_with_faults(&tmp.path().join("recovery"), faults.clone()).unwrap();
    let server = server_with_recovery(&tmp.path().join("s0"), rec.clone());
    let mut c = BlobClient::connect(server.local_addr()).unwrap();
    let kept = c.put(b"before the failure").unwrap();

    faults.fail_writes();
    let job = JobId::random();
    let err = c.put(b"content during the failure").unwrap_err();
    assert!(err.to_string().contains("Server side error"), "{err}");
    let mut c = BlobClient::connect(server.local_addr()).unwrap();
    let err = c
        .put_named(job, "n", b"named during the failure")
        .unwrap_err();
    assert!(err.to_string().contains("recovery"), "{err}");

    // Nothing of the failed PUTs is visible anywhere; the server still serves reads.
    let mut c = BlobClient::connect(server.local_addr()).unwrap();
    assert_eq!(
        c.get_bytes(&BlobId::Content(kept)).unwrap(),
        b"before the failure"
    );
    let bad = BlobKey::of(b"content during the failure");
    assert!(!server.store().contains(&BlobId::Content(bad)).unwrap());
    assert!(
        !server
            .store()
            .contains(&BlobId::Named(job, "n".into()))
            .unwrap()
    );

    faults.heal();
    assert_eq!(rec.list().unwrap(), vec![BlobId::Content(kept)]);
    let key = c.put(b"content during the failure").unwrap();
    assert_eq!(key, bad);
    assert_eq!(rec.list().unwrap().len(), 2);
}

#[test]
fn flink_recovery_keys() {
    let mut conf = Configuration::new();
    assert_eq!(recovery_dir_from_config(&conf).unwrap(), None);
    conf.set("recovery.mode", "ZOOKEEPER");
    // zookeeper without a filesystem state backend: standalone, as in the original.
    assert_eq!(recovery_dir_from_config(&conf).unwrap(), None);
    conf.set("state.backend", "FILESYSTEM");
    conf.set("state.backend.fs.dir.recovery", "file:///shared/flink");
    assert_eq!(
        recovery_dir_from_config(&conf).unwrap(),
        Some(RecoveryTarget::File("/shared/flink".into()))
    );
    conf.set("state.backend.fs.dir.recovery", "s3://flink-ha/blob");
    assert_eq!(
        recovery_dir_from_config(&conf).unwrap(),
        Some(RecoveryTarget::ObjectStore("s3://flink-ha/blob".into()))
    );
    conf.set("state.backend", "jobmanager");
    assert!(recovery_dir_from_config(&conf).is_err());
    conf.set("state.backend", "filesystem");
    conf.set("state.backend.fs.dir.recovery", " ");
    assert!(recovery_dir_from_config(&conf).is_err());
    conf.set("recovery.mode", "paxos");
    assert!(recovery_dir_from_config(&conf).is_err());
}

#[test]
fn recovery_uris_name_a_file_or_an_object_store_and_any_other_scheme_is_refused() {
    let parse = |s: &str| RecoveryTarget::parse(s).map_err(|e| e.to_string());
    assert_eq!(parse("/mnt/ha"), Ok(RecoveryTarget::File("/mnt/ha".into())));
    assert_eq!(parse("ha/dir"), Ok(RecoveryTarget::File("ha/dir".into())));
    assert_eq!(
        parse("file:///mnt/ha"),
        Ok(RecoveryTarget::File("/mnt/ha".into()))
    );
    assert_eq!(
        parse("s3://blobs/ha"),
        Ok(RecoveryTarget::ObjectStore("s3://blobs/ha".into()))
    );
    // Before: taken as the relative path ./s3:/bucket/x.
    let e = parse("hdfs://namenode/ha").unwrap_err();
    assert!(e.contains("unknown scheme hdfs://"), "{e}");
    assert!(e.contains("s3://bucket/prefix"), "{e}");
    let e = parse("s3:///no-bucket").unwrap_err();
    assert!(e.contains("no bucket"), "{e}");
    let e = parse("file://relative/x").unwrap_err();
    assert!(e.contains("file:///path"), "{e}");
    assert!(parse(" ").unwrap_err().contains("empty"));
}

/// A server process with a local store and a recovery store.
fn spawn(local: &Path, r: &common::backends::Recovery) -> ServeProcess {
    let args = [
        "--dir".as_ref(),
        local.as_os_str(),
        "--recovery-dir".as_ref(),
        r.uri.as_ref(),
    ];
    let log = local.with_extension("log");
    ServeProcess::spawn_logging_env(&args, &log, &r.env())
}

fn two_processes_share_a_recovery_dir_and_survive_kill_9(backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let Some(rec) = backend.open(tmp.path(), "two_processes") else {
        return;
    };
    let a = spawn(&tmp.path().join("a"), &rec);
    let b = spawn(&tmp.path().join("b"), &rec);

    // Puts through both processes at once.
    let job = JobId::random();
    let acked: Vec<(BlobId, Vec<u8>)> = std::thread::scope(|s| {
        let hs: Vec<_> = [a.addr, b.addr]
            .into_iter()
            .enumerate()
            .flat_map(|(p, addr)| {
                (0..3).map(move |t| {
                    s.spawn(move || {
                        let mut c = BlobClient::connect(addr).unwrap();
                        let mut out = Vec::new();
                        for i in 0..10 {
                            let seed = (p * 1000 + t * 100 + i) as u64;
                            let data = pseudo_random(1000 + 5000 * i, seed);
                            if i % 2 == 0 {
                                let k = c.put(&data).unwrap();
                                out.push((BlobId::Content(k), data));
                            } else {
                                let name = format!("p{p}-t{t}-{i}");
                                c.put_named(job, &name, &data).unwrap();
                                out.push((BlobId::Named(job, name), data));
                            }
                        }
                        out
                    })
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(acked.len(), 60);
    for addr in [a.addr, b.addr] {
        let mut c = BlobClient::connect(addr).unwrap();
        for (id, data) in &acked {
            assert_eq!(&c.get_bytes(id).unwrap(), data, "{id} via {addr}");
        }
    }

    // kill -9 one; a third on a fresh local directory serves every acknowledged blob.
    drop(a);
    let c3 = spawn(&tmp.path().join("c"), &rec);
    let mut c = BlobClient::connect(c3.addr).unwrap();
    for (id, data) in &acked {
        assert_eq!(&c.get_bytes(id).unwrap(), data, "{id} after failover");
    }
    drop(b);
}

/// A read-repair that lost a race with a PUT or DELETE must not bring back old data.
fn read_repair_never_overrides_newer_writes(b: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let Some(r) = b.open(tmp.path(), "read_repair") else {
        return;
    };
    let rec = r.store.clone();
    let store = StoreOptions::new(tmp.path().join("local"))
        .recovery(rec.clone())
        .open()
        .unwrap();
    let spooled = |data: &[u8]| {
        let mut up = store.upload();
        up.write(data).unwrap();
        up.finish().unwrap()
    };
    // Deleted (from the recovery store too) after the repair read it: the repair is dropped.
    let gone = BlobKey::of(b"deleted meanwhile");
    store
        .commit_local(spooled(b"deleted meanwhile"), blobvault::PutTarget::Content)
        .unwrap();
    assert!(!store.contains(&BlobId::Content(gone)).unwrap());
    // Still in the recovery store: the repair applies.
    rec.put(&[blobvault::recovery::RecoveryItem {
        id: BlobId::Content(gone),
        key: gone,
        data: b"deleted meanwhile",
    }])
    .unwrap();
    store
        .commit_local(spooled(b"deleted meanwhile"), blobvault::PutTarget::Content)
        .unwrap();
    assert!(store.contains(&BlobId::Content(gone)).unwrap());
    // Overwritten meanwhile: the newer bytes stay.
    let job = JobId::random();
    store.put_named(job, "n", b"new").unwrap();
    store
        .commit_local(
            spooled(b"old"),
            blobvault::PutTarget::Named(job, "n".into()),
        )
        .unwrap();
    assert_eq!(
        store
            .get_bytes(&BlobId::Named(job, "n".into()))
            .unwrap()
            .unwrap(),
        b"new"
    );
}

/// DELETE by key keeps a named blob with the same bytes; a job delete removes that job's names
/// only; both reach the recovery store, so a fresh server finds exactly what is left.
fn deletes_propagate_and_keep_shared_bytes(b: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let Some(r) = b.open(tmp.path(), "deletes_propagate") else {
        return;
    };
    let s0 = server_with_recovery(&tmp.path().join("s0"), r.store.clone());
    let mut c = BlobClient::connect(s0.local_addr()).unwrap();
    let (j1, j2) = (JobId::random(), JobId::random());
    let key = c.put(b"shared bytes").unwrap();
    c.put_named(j1, "a", b"shared bytes").unwrap();
    c.put_named(j2, "b", b"other bytes").unwrap();
    c.put_named(j2, "", b"the empty name").unwrap();
    c.delete(key).unwrap();
    c.delete_job(j2).unwrap();
    drop(c);
    assert_eq!(r.store.list().unwrap(), vec![BlobId::Named(j1, "a".into())]);

    let s1 = server_with_recovery(&tmp.path().join("s1"), r.reopen());
    let mut c = BlobClient::connect(s1.local_addr()).unwrap();
    assert_eq!(
        c.get_bytes(&BlobId::Named(j1, "a".into())).unwrap(),
        b"shared bytes"
    );
    for gone in [
        BlobId::Content(key),
        BlobId::Named(j2, "b".into()),
        BlobId::Named(j2, String::new()),
    ] {
        let mut c = BlobClient::connect(s1.local_addr()).unwrap();
        assert!(c.get_bytes(&gone).is_err(), "{gone} came back");
    }
}

/// Bigger than a multipart part (8 MiB): up in parts, down as a stream, checked on arrival.
fn a_large_blob_round_trips_in_pieces(b: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let Some(r) = b.open(tmp.path(), "large_blob") else {
        return;
    };
    let data = pseudo_random(20 * 1024 * 1024 + 3, 99);
    let s0 = server_with_recovery(&tmp.path().join("s0"), r.store.clone());
    let job = JobId::random();
    BlobClient::connect(s0.local_addr())
        .unwrap()
        .put_named(job, "big.jar", &data)
        .unwrap();
    let key = BlobKey::of(&data);
    drop(s0);
    let s1 = server_with_recovery(&tmp.path().join("s1"), r.reopen());
    let got = BlobClient::connect(s1.local_addr())
        .unwrap()
        .get_bytes(&BlobId::Named(job, "big.jar".into()))
        .unwrap();
    assert!(got == data, "the copy read back differs");
    if b == Backend::ObjectStore {
        let content = r.objects(&format!("ha/content/{key}"));
        assert_eq!(content.len(), 1, "{content:?}");
        assert_eq!(content[0].1, data.len() as u64);
    }
}

/// Workers keep starting jobs with every blob server down: the cache reads the recovery store,
/// checking the bytes against the key (a damaged copy is refused).
fn a_cache_reads_the_recovery_store_when_every_server_is_down(b: Backend) {
    use blobvault::{BlobCache, CacheOptions};
    use std::time::Duration;

    let tmp = tempfile::tempdir().unwrap();
    let Some(r) = b.open(tmp.path(), "cache_reads_recovery") else {
        return;
    };
    let data = pseudo_random(300 * 1024, 17);
    let mut s0 = server_with_recovery(&tmp.path().join("s0"), r.store.clone());
    let addr = s0.local_addr();
    let key = BlobClient::connect(addr).unwrap().put(&data).unwrap();
    let damaged = BlobClient::connect(addr)
        .unwrap()
        .put(b"to be damaged")
        .unwrap();
    s0.shutdown();
    drop(s0);
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "the server still answers"
    );

    let cache = BlobCache::open(
        CacheOptions::new([addr])
            .dir(tmp.path().join("cache"))
            .retries(1)
            .backoff(Duration::from_millis(1), Duration::from_millis(5))
            .timeout(Duration::from_secs(2))
            .recovery(r.reopen()),
    )
    .unwrap();
    assert_eq!(cache.get(&key).unwrap().read().unwrap(), data);

    if let Some(sw) = r.seaweed {
        // Replace the stored bytes behind the store's back. The filer drops the object's
        // metadata (origin=key): a pin keeps the blob reachable by key, as the earlier layout
        // wrote for every PUT by key.
        sw.filer_put(
            &r.bucket,
            &format!("ha/content/{damaged}"),
            b"not those bytes",
        );
        sw.filer_put(&r.bucket, &format!("ha/pin/{damaged}"), b"");
        let e = cache.get(&damaged).unwrap_err().to_string();
        assert!(e.contains("recovery store's copy is damaged"), "{e}");
        assert!(!cache.contains(&damaged));
    }
    // Neither a server nor the store has it: the error says both were tried.
    let e = cache
        .get(&BlobKey::of(b"never stored"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&addr.to_string()) && e.contains("recovery store"),
        "{e}"
    );
}

// ---- object store only: garbage collection, errors at open ----

mod object_gc {
    use std::time::{Duration, Instant};

    use blobvault::recovery::{MARKED, ObjectRecoveryStore, RecoveryStore};
    use blobvault::store::StoreOptions;
    use blobvault::{BlobId, BlobKey, JobId};

    use super::common::backends::{Backend, Recovery, fast_settings, object_config};
    use super::common::seaweed::Seaweed;

    fn object_store(test: &str) -> Option<(tempfile::TempDir, Recovery)> {
        let tmp = tempfile::tempdir().unwrap();
        let r = Backend::ObjectStore.open(tmp.path(), test)?;
        Some((tmp, r))
    }

    #[test]
    fn gc_after_deleting_everything_leaves_no_blob_objects() {
        let Some((tmp, r)) = object_store("gc_after_deleting_everything") else {
            return;
        };
        let store = StoreOptions::new(tmp.path().join("s0"))
            .recovery(r.store.clone())
            .open()
            .unwrap();
        let job = JobId::random();
        let k1 = store.put(b"content one").unwrap();
        store.put_named(job, "same bytes", b"content one").unwrap();
        store.put_named(job, "other", b"content two").unwrap();
        let big = super::pseudo_random(9 * 1024 * 1024, 5);
        let k3 = store.put(&big).unwrap();
        assert_eq!(r.objects("ha/content/").len(), 3);

        // Still referenced: nothing goes.
        let report = r.store.gc().unwrap();
        assert_eq!(
            (report.content_objects, report.deleted),
            (3, 0),
            "{report:?}"
        );

        store.delete(blobvault::DeleteTarget::Content(k1)).unwrap();
        // content one is still named: kept.
        assert_eq!(r.store.gc().unwrap().deleted, 0);
        store.delete(blobvault::DeleteTarget::Content(k3)).unwrap();
        store.delete(blobvault::DeleteTarget::Job(job)).unwrap();
        let report = r.store.gc().unwrap();
        assert_eq!(
            (report.content_objects, report.deleted),
            (3, 3),
            "{report:?}"
        );
        assert_eq!(
            r.objects("ha/"),
            vec![],
            "the bucket still holds blob objects"
        );
    }

    #[test]
    fn gc_via_the_cli_reports_what_it_collected() {
        let Some((_tmp, r)) = object_store("gc_via_the_cli") else {
            return;
        };
        let key = BlobKey::of(b"orphan");
        r.store
            .put(&[blobvault::recovery::RecoveryItem {
                id: BlobId::Content(key),
                key,
                data: b"orphan",
            }])
            .unwrap();
        r.store.delete(&BlobId::Content(key)).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_blobvault"))
            .args(["recovery", "gc", "--recovery-dir", &r.uri])
            .args([
                "-D",
                "blob.recovery.gc.grace=0",
                "-D",
                "blob.recovery.timeout=2",
            ])
            .envs(r.env())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.starts_with(&format!("collected 1 of 1 content objects in {}", r.uri)),
            "{stdout}"
        );
        assert_eq!(r.objects("ha/"), vec![]);
    }

    /// PUTs of the very content a collection is deleting, from another server, all through the
    /// pass: each acknowledged one must still be readable afterwards.
    #[test]
    fn gc_racing_puts_of_the_same_content_never_deletes_acknowledged_bytes() {
        let Some((tmp, r)) = object_store("gc_racing_puts") else {
            return;
        };
        let data = b"content collected while it is put again".to_vec();
        let key = BlobKey::of(&data);
        // Unreferenced content: a candidate.
        r.store
            .put(&[blobvault::recovery::RecoveryItem {
                id: BlobId::Content(key),
                key,
                data: &data,
            }])
            .unwrap();
        r.store.delete(&BlobId::Content(key)).unwrap();

        let other = StoreOptions::new(tmp.path().join("other"))
            .recovery(r.reopen())
            .open()
            .unwrap();
        let job = JobId::random();
        let (acked, refused, report) = std::thread::scope(|s| {
            let gc = s.spawn(|| r.store.gc());
            // Start putting once the pass has marked the content (an event, not a sleep).
            let deadline = Instant::now() + Duration::from_secs(30);
            while r.objects("ha/gc/").is_empty() {
                assert!(!gc.is_finished(), "the pass ended without marking anything");
                assert!(Instant::now() < deadline, "no marker within 30 s");
                std::thread::sleep(Duration::from_millis(20));
            }
            let (mut acked, mut refused) = (Vec::new(), Vec::new());
            for i in 0..5000 {
                let name = format!("n{i}");
                match other.put_named(job, &name, &data) {
                    Ok(_) => acked.push(name),
                    Err(e) => refused.push(e.to_string()),
                }
                if gc.is_finished() {
                    // A few more after the pass, as the marker is gone.
                    for j in 0..3 {
                        let name = format!("after{j}");
                        other.put_named(job, &name, &data).unwrap();
                        acked.push(name);
                    }
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (acked, refused, gc.join().unwrap().unwrap())
        });
        assert_eq!(report.deleted, 1, "{report:?}");
        assert!(
            !refused.is_empty(),
            "no PUT ran while the content was marked"
        );
        assert!(refused.iter().all(|e| e.contains(MARKED)), "{refused:?}");
        // Every acknowledged PUT's bytes are there, byte for byte, for a fresh reader.
        let fresh = r.reopen();
        for name in &acked {
            let mut got = Vec::new();
            fresh
                .get(&BlobId::Named(job, name.clone()))
                .unwrap()
                .unwrap_or_else(|| panic!("{name} lost"))
                .read_to_end(&mut got)
                .unwrap();
            assert_eq!(got, data, "{name}");
        }
        use std::io::Read as _;
    }

    /// The item of a PUT of `data` as `id`.
    fn item<T: blobvault::recovery::BlobBytes + AsRef<[u8]>>(
        id: BlobId,
        data: &T,
    ) -> blobvault::recovery::RecoveryItem<'_> {
        blobvault::recovery::RecoveryItem {
            id,
            key: BlobKey::of(data.as_ref()),
            data,
        }
    }

    /// The item of a PUT by key of `data`.
    fn by_key<T: blobvault::recovery::BlobBytes + AsRef<[u8]>>(
        data: &T,
    ) -> blobvault::recovery::RecoveryItem<'_> {
        item(BlobId::Content(BlobKey::of(data.as_ref())), data)
    }

    /// The bytes `store` serves for `id`, or `None`.
    fn read(store: &dyn RecoveryStore, id: &BlobId) -> Option<Vec<u8>> {
        use std::io::Read as _;
        let mut got = Vec::new();
        store.get(id).unwrap()?.read_to_end(&mut got).unwrap();
        Some(got)
    }

    /// Whether `id` is there for `store`, asked every way: get, key_of and list agree.
    fn there(store: &dyn RecoveryStore, id: &BlobId) -> bool {
        let got = store.get(id).unwrap().is_some();
        let key = store.key_of(id).unwrap().is_some();
        let listed = store.list().unwrap().contains(id);
        assert_eq!(key, got, "get and key_of disagree on {id}");
        assert_eq!(listed, got, "get and list disagree on {id}");
        got
    }

    /// A content PUT costs one object: N PUTs by key (through the store's group commits) leave
    /// exactly N content objects and no pin, and another server serves each by key.
    #[test]
    fn one_object_per_content_put() {
        let Some((tmp, r)) = object_store("one_object_per_content_put") else {
            return;
        };
        let store = StoreOptions::new(tmp.path().join("s0"))
            .recovery(r.store.clone())
            .open()
            .unwrap();
        let blobs: Vec<Vec<u8>> = (0..12)
            .map(|i| super::pseudo_random(4096, 40 + i))
            .collect();
        std::thread::scope(|s| {
            for chunk in blobs.chunks(3) {
                let store = &store;
                s.spawn(move || {
                    for b in chunk {
                        store.put(b).unwrap();
                    }
                });
            }
        });
        let all = r.objects("ha/");
        assert_eq!(all.len(), blobs.len(), "{all:?}");
        assert_eq!(r.objects("ha/content/").len(), blobs.len());
        let other = r.reopen();
        let mut want: Vec<BlobId> = blobs
            .iter()
            .map(|b| BlobId::Content(BlobKey::of(b)))
            .collect();
        want.sort();
        assert_eq!(other.list().unwrap(), want);
        for b in &blobs {
            let id = BlobId::Content(BlobKey::of(b));
            assert_eq!(read(&*other, &id).as_deref(), Some(&b[..]), "{id}");
            assert!(there(&*other, &id));
        }
    }

    /// Deduplicated content and a re-PUT after a DELETE: a PUT that finds its content there
    /// writes a pin; DELETE by key hides it (pin gone, unpin of its creation); a PUT again makes
    /// it reachable again.
    #[test]
    fn dedup_and_put_again_after_delete() {
        let Some((_tmp, r)) = object_store("dedup_and_put_again") else {
            return;
        };
        let data = b"put twice, deleted, put again".to_vec();
        let id = BlobId::Content(BlobKey::of(&data));
        r.store.put(&[by_key(&data)]).unwrap();
        assert_eq!(r.objects("ha/pin/").len(), 0);
        // Another server puts the same content: it finds it there.
        let other = r.reopen();
        other.put(&[by_key(&data)]).unwrap();
        assert_eq!(r.objects("ha/content/").len(), 1);
        assert_eq!(r.objects("ha/pin/").len(), 1);
        assert!(there(&*r.store, &id));

        other.delete(&id).unwrap();
        assert_eq!(r.objects("ha/pin/").len(), 0);
        assert_eq!(r.objects("ha/unpin/").len(), 1);
        assert!(!there(&*r.store, &id), "served after DELETE by key");
        assert_eq!(read(&*r.store, &id), None);

        r.store.put(&[by_key(&data)]).unwrap();
        assert_eq!(r.objects("ha/pin/").len(), 1);
        assert!(there(&*other, &id), "not served after a PUT again");
        assert_eq!(read(&*other, &id), Some(data));
        // Held by its pin: gc keeps it.
        assert_eq!(r.store.gc().unwrap().deleted, 0);
        assert!(there(&*other, &id));
    }

    /// DELETE by key of content a named blob shares keeps the named blob; content first put by
    /// name is not reachable by key; gc collects both once the names are gone.
    #[test]
    fn names_and_keys_sharing_content() {
        let Some((_tmp, r)) = object_store("names_and_keys_sharing_content") else {
            return;
        };
        let job = JobId::random();
        let shared = b"by key first, then by name".to_vec();
        let named_only = b"by name only".to_vec();
        let shared_id = BlobId::Content(BlobKey::of(&shared));
        let named_only_key = BlobId::Content(BlobKey::of(&named_only));
        let (n1, n2) = (
            BlobId::Named(job, "shares".into()),
            BlobId::Named(job, "alone".into()),
        );
        r.store.put(&[by_key(&shared)]).unwrap();
        r.store
            .put(&[item(n1.clone(), &shared), item(n2.clone(), &named_only)])
            .unwrap();
        assert!(there(&*r.store, &n2));
        assert!(
            !there(&*r.store, &named_only_key),
            "content put by name is reachable by key"
        );
        r.store.delete(&shared_id).unwrap();
        assert!(!there(&*r.store, &shared_id));
        assert_eq!(read(&*r.store, &n1), Some(shared.clone()));
        assert_eq!(r.store.gc().unwrap().deleted, 0, "gc took named content");
        assert_eq!(read(&*r.reopen(), &n1), Some(shared));

        r.store.delete_job(&job).unwrap();
        let report = r.store.gc().unwrap();
        assert_eq!(
            (report.content_objects, report.deleted),
            (2, 2),
            "{report:?}"
        );
        // The unpin went with its content.
        assert_eq!(r.objects("ha/"), vec![]);
    }

    /// An unpin names one creation: content collected and created again is not hidden by the
    /// unpin a pass that died left behind.
    #[test]
    fn a_stale_unpin_does_not_hide_content_created_again() {
        let Some((_tmp, r)) = object_store("a_stale_unpin") else {
            return;
        };
        let data = b"collected, then put again".to_vec();
        let id = BlobId::Content(BlobKey::of(&data));
        r.store.put(&[by_key(&data)]).unwrap();
        r.store.delete(&id).unwrap();
        let unpins = r.objects("ha/unpin/");
        assert_eq!(unpins.len(), 1);
        assert_eq!(r.store.gc().unwrap().deleted, 1);
        assert_eq!(r.objects("ha/"), vec![]);
        // As if the pass had died before removing the unpin.
        let sw = r.seaweed.unwrap();
        sw.filer_put(&r.bucket, &unpins[0].0, b"");

        r.store.put(&[by_key(&data)]).unwrap();
        assert_eq!(
            r.objects("ha/pin/").len(),
            0,
            "created again: no pin needed"
        );
        let other = r.reopen();
        assert!(there(&*other, &id), "hidden by the stale unpin");
        assert_eq!(read(&*other, &id), Some(data));
        assert_eq!(
            r.store.gc().unwrap().deleted,
            0,
            "gc took content created again"
        );
        assert!(there(&*other, &id));
    }

    /// A PUT that created its content and then failed (here: its batch also held a named blob
    /// whose content a collection has marked) takes the content back: nothing visible by key, and
    /// gc collects it. A PUT by key that creates its content needs no look at the markers.
    #[test]
    fn a_failed_put_takes_back_the_content_it_created() {
        let Some((_tmp, r)) = object_store("a_failed_put_takes_back") else {
            return;
        };
        let created = b"created by a PUT that fails".to_vec();
        let marked = b"marked by a collection".to_vec();
        let id = BlobId::Content(BlobKey::of(&created));
        let sw = r.seaweed.unwrap();
        let marker = format!("ha/gc/{}", BlobKey::of(&marked));
        sw.filer_put(&r.bucket, &marker, b"");
        let named = BlobId::Named(JobId::random(), "lib.jar".into());
        let e = r
            .store
            .put(&[by_key(&created), item(named.clone(), &marked)])
            .unwrap_err()
            .to_string();
        assert!(e.contains(MARKED), "{e}");
        assert_eq!(r.objects("ha/content/").len(), 2, "the creates did not run");
        assert_eq!(r.objects("ha/unpin/").len(), 1, "not taken back");
        let other = r.reopen();
        assert!(!there(&*other, &id), "a failed PUT left its blob visible");
        assert!(!there(&*other, &named), "a failed PUT left its name");

        // Created by key, marked or not: no check, no refusal.
        let fresh = b"created while marked".to_vec();
        let fresh_id = BlobId::Content(BlobKey::of(&fresh));
        sw.filer_put(&r.bucket, &format!("ha/gc/{}", BlobKey::of(&fresh)), b"");
        r.store.put(&[by_key(&fresh)]).unwrap();
        assert!(there(&*other, &fresh_id));
        // Found there (412), the content of a marked key is refused: its pin would come late.
        let e = other.put(&[by_key(&fresh)]).unwrap_err().to_string();
        assert!(e.contains(MARKED), "{e}");

        // The taken-back content goes, with its unpin; the marked content is another pass's
        // (fresh marker): skipped; the fresh content is held.
        let report = r.store.gc().unwrap();
        assert_eq!(
            (report.deleted, report.skipped_marked),
            (1, 1),
            "{report:?}"
        );
        assert_eq!(r.objects("ha/unpin/"), vec![]);
        sw.filer_delete(&r.bucket, &marker);
        let report = r.store.gc().unwrap();
        assert_eq!(
            (report.content_objects, report.deleted),
            (2, 1),
            "{report:?}"
        );
        assert!(there(&*other, &fresh_id));
    }

    /// A bucket written by the earlier layout (a pin for every PUT by key, content without
    /// metadata) is served as before; its unpinned content is collected.
    #[test]
    fn a_bucket_of_the_earlier_layout_is_served() {
        let Some((_tmp, r)) = object_store("earlier_layout") else {
            return;
        };
        let sw = r.seaweed.unwrap();
        let job = JobId::random();
        let (x, y, z) = (&b"pinned by key"[..], &b"named"[..], &b"orphan"[..]);
        let (kx, ky, kz) = (BlobKey::of(x), BlobKey::of(y), BlobKey::of(z));
        for (k, d) in [(kx, x), (ky, y), (kz, z)] {
            sw.filer_put(&r.bucket, &format!("ha/content/{k}"), d);
        }
        sw.filer_put(&r.bucket, &format!("ha/pin/{kx}"), b"");
        let name = BlobId::Named(job, "lib.jar".into());
        sw.filer_put(
            &r.bucket,
            &format!(
                "ha/named/{job}/{}",
                blobvault::recovery::encode_name("lib.jar")
            ),
            ky.to_string().as_bytes(),
        );
        let store = r.reopen();
        let mut want = vec![BlobId::Content(kx), name.clone()];
        want.sort();
        assert_eq!(store.list().unwrap(), want);
        assert_eq!(read(&*store, &BlobId::Content(kx)).as_deref(), Some(x));
        assert_eq!(read(&*store, &name).as_deref(), Some(y));
        for k in [ky, kz] {
            assert!(!there(&*store, &BlobId::Content(k)), "{k} reachable by key");
        }
        store.delete(&BlobId::Content(kx)).unwrap();
        assert!(!there(&*store, &BlobId::Content(kx)));
        assert_eq!(
            r.objects("ha/unpin/").len(),
            0,
            "unpin for content without metadata"
        );
        let report = store.gc().unwrap();
        assert_eq!(
            (report.content_objects, report.deleted),
            (3, 2),
            "{report:?}"
        );
        assert_eq!(read(&*store, &name).as_deref(), Some(y));
    }

    /// Bytes changed in the bucket behind the store's back are refused on read-repair, by key or
    /// by name, and nothing is kept locally.
    #[test]
    fn read_repair_refuses_a_damaged_copy() {
        let Some((tmp, r)) = object_store("read_repair_damaged") else {
            return;
        };
        let s0 = StoreOptions::new(tmp.path().join("s0"))
            .recovery(r.store.clone())
            .open()
            .unwrap();
        let job = JobId::random();
        // Named first, so that the PUT by key finds the content there and writes a pin: the
        // tampered object below (written without metadata) stays reachable by key through it.
        s0.put_named(job, "lib.jar", b"original bytes").unwrap();
        let key = s0.put(b"original bytes").unwrap();
        assert_eq!(r.objects("ha/pin/").len(), 1);
        let sw = r.seaweed.unwrap();
        sw.filer_put(&r.bucket, &format!("ha/content/{key}"), b"tampered bytes");

        let s1 = StoreOptions::new(tmp.path().join("s1"))
            .recovery(r.reopen())
            .open()
            .unwrap();
        for id in [BlobId::Content(key), BlobId::Named(job, "lib.jar".into())] {
            let e = s1.fetch(&id).unwrap_err().to_string();
            assert!(
                e.contains("damaged") && e.contains("recovery copy"),
                "{id}: {e}"
            );
            assert!(!s1.contains(&id).unwrap());
        }
    }

    /// A server given `blob.recovery.gc.interval` collects by itself.
    #[test]
    fn a_server_collects_periodically() {
        let Some((tmp, r)) = object_store("a_server_collects_periodically") else {
            return;
        };
        let dir = tmp.path().join("s0");
        let args = [
            "--dir",
            dir.to_str().unwrap(),
            "--recovery-dir",
            &r.uri,
            "-D",
            "blob.recovery.gc.interval=1",
            "-D",
            "blob.recovery.gc.grace=0",
            "-D",
            "blob.recovery.timeout=1",
        ];
        let p = super::ServeProcess::spawn_logging_env(&args, &tmp.path().join("s0.log"), &r.env());
        let mut c = blobvault::BlobClient::connect(p.addr).unwrap();
        let key = c.put(b"collected by the server itself").unwrap();
        assert_eq!(r.objects("ha/content/").len(), 1);
        c.delete(key).unwrap();
        // Bounded wait for the event: the content object and the pass's marker gone (a pass
        // takes ~5 s here).
        let deadline = Instant::now() + Duration::from_secs(60);
        while !r.objects("ha/").is_empty() {
            assert!(
                Instant::now() < deadline,
                "not collected within 60 s: {:?}",
                r.objects("ha/")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// An embedder calling from inside its own tokio runtime: no "runtime within a runtime"
    /// panic, on a call or on the drop of the last handle.
    #[test]
    fn works_when_called_from_inside_another_tokio_runtime() {
        let Some((_tmp, r)) = object_store("inside_tokio") else {
            return;
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let store = r.reopen();
        rt.block_on(async move {
            let key = BlobKey::of(b"from inside tokio");
            store
                .put(&[blobvault::recovery::RecoveryItem {
                    id: BlobId::Content(key),
                    key,
                    data: b"from inside tokio",
                }])
                .unwrap();
            assert_eq!(store.list().unwrap(), vec![BlobId::Content(key)]);
            drop(store);
        });
    }

    fn open_err(
        sw: &Seaweed,
        uri: &str,
        tweak: impl FnOnce(&mut blobvault::recovery::ObjectStoreConfig),
    ) -> String {
        let mut c = object_config(sw, uri, fast_settings());
        tweak(&mut c);
        let started = Instant::now();
        let e = ObjectRecoveryStore::open(&c).unwrap_err().to_string();
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "took {:?}",
            started.elapsed()
        );
        e
    }

    /// The layout record: a bucket of a layout this build does not know, or one whose objects
    /// lost their user metadata (a copy that drops it: here a write through the filer), is
    /// refused at open, naming the record and what to do.
    #[test]
    fn a_bucket_of_an_unknown_layout_or_without_metadata_is_refused_at_open() {
        let Some(sw) = Seaweed::shared("layout") else {
            return;
        };
        let bucket = sw.new_bucket("layout");
        let uri = sw.uri(&bucket, "ha");
        sw.filer_put(&bucket, "ha/layout", b"3");
        let e = open_err(sw, &uri, |_| {});
        assert!(e.contains("ha/layout") && e.contains("\"3\""), "{e}");
        assert!(e.contains("does not know"), "{e}");
        // Layout 2 without its metadata: the bucket was copied by something that drops it.
        sw.filer_put(&bucket, "ha/layout", b"2");
        let e = open_err(sw, &uri, |_| {});
        assert!(e.contains("lost its user metadata"), "{e}");
        // A bucket with no record gets one, with its metadata, and opens; the next open reads
        // it back, metadata included.
        let fresh = sw.uri(&bucket, "fresh");
        let open = || ObjectRecoveryStore::open(&object_config(sw, &fresh, fast_settings()));
        open().expect("first open writes the record");
        open().expect("the next open reads it back");
    }

    #[test]
    fn bad_credentials_a_missing_bucket_or_no_endpoint_fail_at_open_naming_endpoint_and_bucket() {
        let Some(sw) = Seaweed::shared("open_errors") else {
            return;
        };
        let bucket = sw.new_bucket("open");
        let uri = sw.uri(&bucket, "ha");
        let e = open_err(sw, &uri, |c| c.secret_key = Some("wrong-secret".into()));
        assert!(e.contains(&uri) && e.contains(&sw.endpoint()), "{e}");
        assert!(e.contains("refused the credentials"), "{e}");
        assert!(!e.contains("wrong-secret"), "the secret leaked: {e}");

        let missing = sw.uri("no-such-bucket-here", "ha");
        let e = open_err(sw, &missing, |_| {});
        assert!(
            e.contains("no-such-bucket-here") && e.contains(&sw.endpoint()),
            "{e}"
        );
        assert!(e.contains("bucket does not exist"), "{e}");

        // A port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dead = format!("http://127.0.0.1:{port}");
        let e = open_err(sw, &uri, |c| c.endpoint = Some(dead.clone()));
        assert!(e.contains(&dead) && e.contains(&bucket), "{e}");
        assert!(e.contains("unreachable"), "{e}");

        let e = open_err(sw, &uri, |c| c.allow_http = false);
        assert!(e.contains("AWS_ALLOW_HTTP=true"), "{e}");
    }
}
