//! Recovery: every write replicated to a shared recovery store; failover serves everything.

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

fn server_with_recovery(local: &Path, rec: Arc<dyn RecoveryStore>) -> BlobServer {
    let store = StoreOptions::new(local).recovery(rec).open().unwrap();
    BlobServer::start(store, ServerConfig::default()).unwrap()
}

fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    common::Rng::new(seed).bytes(n)
}

/// Port of Flink's BlobRecoveryITCase.
#[test]
fn blob_recovery_itcase() {
    let tmp = tempfile::tempdir().unwrap();
    let rec_dir = tmp.path().join("recovery");
    let rec = RedbRecoveryStore::open(&rec_dir).unwrap();
    // Servers in one process share one handle per path.
    assert!(Arc::ptr_eq(
        &rec,
        &RedbRecoveryStore::open(&rec_dir).unwrap()
    ));
    let s0 = server_with_recovery(&tmp.path().join("s0"), rec.clone());
    let s1 = server_with_recovery(&tmp.path().join("s1"), rec.clone());

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
    let s2 = server_with_recovery(&tmp.path().join("s2"), rec.clone());
    let mut c2 = BlobClient::connect(s2.local_addr()).unwrap();
    assert!(c2.get_bytes(&BlobId::Content(k0)).is_err());
    let mut c2 = BlobClient::connect(s2.local_addr()).unwrap();
    assert!(
        c2.get_bytes(&BlobId::Named(job1, "test-key-2".into()))
            .is_err()
    );
}

#[test]
fn graceful_shutdown_keeps_recovery_data_and_purge_removes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let rec_dir = tmp.path().join("recovery");
    let rec = RedbRecoveryStore::open(&rec_dir).unwrap();
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

    // Purge through the CLI, as an operator would.
    let out = Command::new(env!("CARGO_BIN_EXE_blobvault"))
        .args(["recovery", "purge", "--recovery-dir"])
        .arg(&rec_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(rec.list().unwrap().is_empty());
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

/// A server process with a local store and a recovery directory.
fn spawn(local: &Path, rec: &Path) -> ServeProcess {
    let args = [
        "--dir".as_ref(),
        local.as_os_str(),
        "--recovery-dir".as_ref(),
        rec.as_os_str(),
    ];
    ServeProcess::spawn(&args)
}

#[test]
fn two_processes_share_a_recovery_dir_and_survive_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = tmp.path().join("recovery");
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
#[test]
fn read_repair_never_overrides_newer_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let rec = RedbRecoveryStore::open(&tmp.path().join("recovery")).unwrap();
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
