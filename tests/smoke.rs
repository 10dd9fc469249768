use blobvault::config::ServerConfig;
use blobvault::{BlobClient, BlobId, BlobKey, BlobServer, BlobStore, JobId};

#[test]
fn put_get_delete_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path()).unwrap();
    let server = BlobServer::start(store, ServerConfig::default()).unwrap();
    let mut c = BlobClient::connect(server.local_addr()).unwrap();
    let data: Vec<u8> = (0..2_000_000u32).map(|i| (i * 7) as u8).collect();
    let key = c.put(&data).unwrap();
    assert_eq!(key, BlobKey::of(&data));
    assert_eq!(c.get_bytes(&BlobId::Content(key)).unwrap(), data);
    let job = JobId::random();
    c.put_named(job, "x", b"hello").unwrap();
    assert_eq!(
        c.get_bytes(&BlobId::Named(job, "x".into())).unwrap(),
        b"hello"
    );
    c.delete(key).unwrap();
    let err = c.get_bytes(&BlobId::Content(key)).unwrap_err();
    assert!(err.to_string().contains("Server side error"), "{err}");
    assert!(!c.is_connected());
}
