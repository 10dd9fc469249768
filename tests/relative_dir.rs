//! A store opened by a relative name (alone in its test binary: it changes the working
//! directory).

use blobvault::{BlobId, BlobStore};

#[test]
fn a_new_store_at_a_relative_path_opens() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::env::set_current_dir(dir.path()).expect("cd");
    // Creating `s` syncs its parent, the working directory, named "" by `Path::parent`.
    let store = BlobStore::open("s").expect("open a new store at a relative path");
    let key = store.put(b"relative").expect("put");
    assert_eq!(
        store.get_bytes(&BlobId::Content(key)).expect("get"),
        Some(b"relative".to_vec())
    );
    assert!(dir.path().join("s").join("blobs.redb").is_file());
}
