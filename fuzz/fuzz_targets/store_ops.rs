//! Store operation sequences against an in-memory model, with reopens.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use blobvault::store::{BlobStore, StoreOptions};
use blobvault::{BlobId, BlobKey, DeleteTarget, JobId, PutTarget};
use libfuzzer_sys::fuzz_target;

#[derive(Default)]
struct Model {
    content: BTreeSet<BlobKey>,
    named: BTreeMap<(JobId, String), Vec<u8>>,
    bytes: BTreeMap<BlobKey, Vec<u8>>,
}

fn dir() -> &'static tempdir::Dir {
    static D: OnceLock<tempdir::Dir> = OnceLock::new();
    D.get_or_init(tempdir::Dir::new)
}

mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new() -> Dir {
            let p = std::env::temp_dir().join(format!("blobvault-fuzz-{}", std::process::id()));
            Dir(p)
        }
    }
}

fn open() -> BlobStore {
    StoreOptions::new(&dir().0).durable(false).open().expect("open store")
}

fuzz_target!(|data: &[u8]| {
    let _ = std::fs::remove_dir_all(&dir().0);
    let mut store = open();
    let mut model = Model::default();
    let jobs = [JobId::from_parts(1, 2), JobId::from_parts(3, 4)];
    let names = ["a", "b", ""];
    let mut it = data.chunks(4);
    while let Some(op) = it.next() {
        let (code, a, b, len) = (
            op[0] % 8,
            *op.get(1).unwrap_or(&0),
            *op.get(2).unwrap_or(&0),
            *op.get(3).unwrap_or(&0),
        );
        // Blob bytes: a few distinct contents, some of them shared between targets.
        let bytes: Vec<u8> = vec![a % 4; (len as usize % 5) * 130_001];
        let key = BlobKey::of(&bytes);
        let job = jobs[b as usize % 2];
        let name = names[a as usize % 3].to_string();
        match code {
            0 => {
                assert_eq!(store.put(&bytes).expect("put"), key);
                model.content.insert(key);
                model.bytes.insert(key, bytes);
            }
            1 => {
                store.commit(
                    { let mut u = store.upload(); u.write(&bytes).expect("w"); u.finish().expect("f") },
                    PutTarget::Named(job, name.clone()),
                ).expect("put named");
                model.named.insert((job, name), bytes);
            }
            2 => {
                store.delete(DeleteTarget::Content(key)).expect("delete");
                model.content.remove(&key);
            }
            3 => {
                store.delete(DeleteTarget::Named(job, name.clone())).expect("delete named");
                model.named.remove(&(job, name));
            }
            4 => {
                store.delete(DeleteTarget::Job(job)).expect("delete job");
                model.named.retain(|(j, _), _| *j != job);
            }
            5 => {
                drop(store);
                store = open();
            }
            _ => {
                let got = store.get_bytes(&BlobId::Content(key)).expect("get");
                assert_eq!(got.is_some(), model.content.contains(&key));
                if let Some(g) = got {
                    assert_eq!(BlobKey::of(&g), key);
                }
            }
        }
    }
    // The store holds exactly the model.
    for (k, v) in &model.bytes {
        let got = store.get_bytes(&BlobId::Content(*k)).expect("get");
        assert_eq!(got.as_ref(), model.content.contains(k).then_some(v));
    }
    for ((j, n), v) in &model.named {
        assert_eq!(store.get_bytes(&BlobId::Named(*j, n.clone())).expect("get").as_ref(), Some(v));
    }
    let listed = store.list().expect("list");
    assert_eq!(listed.len(), model.content.len() + model.named.len());
    let report = store.verify().expect("verify");
    assert!(report.is_clean(), "{report:?}");
});
