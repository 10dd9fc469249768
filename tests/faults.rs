//! Failing storage and damaged data: errors, never lost or wrong bytes.

use std::io::{Read, Write};
use std::net::TcpStream;

use blobvault::config::ServerConfig;
use blobvault::store::StoreOptions;
use blobvault::{BlobClient, BlobId, BlobKey, BlobServer, BlobStore};

mod common;
use common::TestServer;

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn full_disk_fails_puts_keeps_reads_and_recovers() {
    let ts = TestServer::start_durable();
    let (server, faults) = (&ts.server, &ts.faults);
    let mut acked = Vec::new();
    let mut c = BlobClient::connect(server.local_addr()).unwrap();
    for i in 0..20u8 {
        let data = pattern(10_000 + i as usize * 3000, i);
        acked.push((c.put(&data).unwrap(), data));
    }

    faults.disk_full();
    // Big enough that the file must grow.
    let big = pattern(8 << 20, 99);
    let err = c.put(&big).unwrap_err();
    assert!(err.to_string().contains("Server side error"), "{err}");

    // Reads keep working while the disk is full.
    let mut c = BlobClient::connect(server.local_addr()).unwrap();
    for (k, data) in &acked {
        assert_eq!(&c.get_bytes(&BlobId::Content(*k)).unwrap(), data);
    }
    assert!(
        !server
            .store()
            .contains(&BlobId::Content(BlobKey::of(&big)))
            .unwrap()
    );

    // Space returns: PUTs work again and nothing acknowledged was lost.
    faults.heal();
    let mut c = BlobClient::connect(server.local_addr()).unwrap();
    assert_eq!(c.put(&big).unwrap(), BlobKey::of(&big));
    for (k, data) in &acked {
        assert_eq!(&c.get_bytes(&BlobId::Content(*k)).unwrap(), data);
    }
    let report = server.store().verify().unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.blobs_checked, 21);
}

#[test]
fn failing_writes_fail_the_put_with_an_error_reply() {
    let ts = TestServer::start_durable();
    let (server, faults) = (&ts.server, &ts.faults);
    let kept = server.store().put(b"kept").unwrap();
    faults.fail_writes();
    let mut c = BlobClient::connect(server.local_addr()).unwrap();
    let err = c.put(b"lost").unwrap_err();
    assert!(err.server_message().is_some(), "{err}");
    faults.heal();
    let mut c = BlobClient::connect(server.local_addr()).unwrap();
    assert_eq!(c.get_bytes(&BlobId::Content(kept)).unwrap(), b"kept");
    assert!(
        !server
            .store()
            .contains(&BlobId::Content(BlobKey::of(b"lost")))
            .unwrap()
    );
}

/// Flips one byte of `needle`'s first occurrence in the store file.
fn flip_in_file(path: &std::path::Path, needle: &[u8]) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("blob bytes not found in the store file");
    bytes[at + needle.len() / 2] ^= 0x40;
    std::fs::write(path, bytes).unwrap();
}

/// Distinct bytes (no repeats), so a slice of them is found once in the store file.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    common::Rng::new(seed).bytes(n)
}

#[test]
fn verify_and_get_detect_a_corrupted_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let small = noise(5_000, 0x11);
    let bad_first = noise(1_000_000, 0x23); // damaged in its first chunk
    let bad_later = noise(1_000_000, 0x35); // damaged in a later chunk
    let keys = {
        let store = BlobStore::open(dir.path()).unwrap();
        [&small, &bad_first, &bad_later].map(|b| store.put(b).unwrap())
    };
    let db = dir.path().join(blobvault::store::DB_FILE);
    flip_in_file(&db, &small[100..200]);
    flip_in_file(&db, &bad_first[1_000..1_100]);
    flip_in_file(&db, &bad_later[600_000..600_100]);

    let store = BlobStore::open(dir.path()).unwrap();
    let report = store.verify().unwrap();
    let mut bad: Vec<BlobKey> = report.damaged.iter().map(|d| d.key).collect();
    bad.sort();
    let mut want = keys.to_vec();
    want.sort();
    assert_eq!(bad, want, "{report:?}");

    let server = BlobServer::start(store, ServerConfig::default()).unwrap();
    // Damage in the first chunk is found before anything is sent: an error reply.
    for key in &keys[..2] {
        let mut c = BlobClient::connect(server.local_addr()).unwrap();
        let err = c.get_bytes(&BlobId::Content(*key)).unwrap_err();
        assert!(
            err.server_message().unwrap_or("").contains("damaged"),
            "{err}"
        );
    }
    // Damage further in: the reply is cut at the bad chunk; never the wrong bytes whole.
    let mut raw = TcpStream::connect(server.local_addr()).unwrap();
    let mut req = vec![1u8, 0];
    req.extend_from_slice(&keys[2].0);
    raw.write_all(&req).unwrap();
    let mut got = Vec::new();
    raw.read_to_end(&mut got).unwrap();
    assert_eq!(got[0], 0);
    assert!(got.len() > 5, "nothing of the good chunks was sent");
    assert!(
        got.len() <= 5 + 600_000,
        "bytes past the damaged chunk were sent"
    );
    assert_eq!(&got[5..], &bad_later[..got.len() - 5]);
    let mut c = BlobClient::connect(server.local_addr()).unwrap();
    assert!(c.get_bytes(&BlobId::Content(keys[2])).is_err());
}

#[test]
fn a_store_refuses_a_zero_chunk_size() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = StoreOptions::new(dir.path());
    opts.chunk_size = 0;
    let err = opts.open().unwrap_err();
    assert!(err.to_string().contains("chunk size"), "{err}");
    // Nothing was recorded: a valid size works afterwards.
    assert!(StoreOptions::new(dir.path()).open().is_ok());
}

#[test]
fn a_full_disk_releases_the_reserve_keeps_deletes_and_fails_puts_fast_until_healed() {
    use blobvault::DeleteTarget;
    use blobvault::store::{DEFAULT_RESERVE_BYTES, RESERVE_FILE};
    let ts = TestServer::start_durable();
    let store = ts.store();
    let reserve = store.dir().join(RESERVE_FILE);
    let len = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).ok();
    assert_eq!(len(&reserve), Some(DEFAULT_RESERVE_BYTES));
    let blobs: Vec<Vec<u8>> = (0..20u8)
        .map(|i| pattern(10_000 + i as usize * 3000, i))
        .collect();
    let keys: Vec<BlobKey> = blobs.iter().map(|b| store.put(b).unwrap()).collect();

    ts.faults.disk_full();
    let no_space = |e: blobvault::StoreError| {
        assert!(e.is_no_space(), "{e}");
        let msg = e.to_string();
        assert!(msg.contains("no space left on device"), "{msg}");
        assert!(msg.contains(&store.dir().display().to_string()), "{msg}");
    };
    no_space(store.put(&pattern(8 << 20, 99)).unwrap_err());
    assert!(store.is_out_of_space());
    assert_eq!(len(&reserve), None, "the reserve is given back at once");
    // From now on PUTs fail fast, small ones and uploads too large for memory alike.
    no_space(store.put(b"small").unwrap_err());
    let mut up = store.upload();
    up.write(b"head").unwrap();
    let spooled = pattern(2 << 20, 7);
    no_space(up.write(&spooled).unwrap_err());
    // DELETEs still work, by key and by name.
    assert_eq!(store.delete(DeleteTarget::Content(keys[0])).unwrap(), 1);
    let job = blobvault::JobId::from_parts(5, 5);
    assert_eq!(
        store
            .delete(DeleteTarget::Named(job, "absent".into()))
            .unwrap(),
        0
    );

    ts.faults.heal();
    // The refused write left the upload as it was: it goes on once space returned.
    up.write(&spooled).unwrap();
    let whole = [&b"head"[..], &spooled].concat();
    let key = store.commit(up.finish().unwrap(), blobvault::PutTarget::Content);
    assert_eq!(key.unwrap(), BlobKey::of(&whole));
    let big = pattern(3 << 20, 42);
    assert_eq!(store.put(&big).unwrap(), BlobKey::of(&big));
    assert!(!store.is_out_of_space());
    assert_eq!(len(&reserve), Some(DEFAULT_RESERVE_BYTES));
    assert!(!store.contains(&BlobId::Content(keys[0])).unwrap());
    for (k, b) in keys.iter().zip(&blobs).skip(1) {
        assert_eq!(
            store.get_bytes(&BlobId::Content(*k)).unwrap().as_ref(),
            Some(b)
        );
    }
    assert!(store.verify().unwrap().is_clean());
}
