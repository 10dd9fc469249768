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

/// Runs the `blobvault` binary to completion.
fn cli(args: &[&std::ffi::OsStr]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_blobvault"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn cli_get_to_a_file_writes_it_whole_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let input = dir.path().join("in");
    std::fs::write(&input, b"cli bytes").unwrap();
    let out = cli(&[
        "put".as_ref(),
        input.as_ref(),
        "--dir".as_ref(),
        store.as_ref(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(key, BlobKey::of(b"cli bytes").to_string());

    let target = dir.path().join("out");
    let get = |key: &str| {
        cli(&[
            "get".as_ref(),
            key.as_ref(),
            "--dir".as_ref(),
            store.as_ref(),
            "-o".as_ref(),
            target.as_ref(),
        ])
    };
    assert!(get(&key).status.success());
    assert_eq!(std::fs::read(&target).unwrap(), b"cli bytes");
    // A missing blob: an error, the earlier file untouched, and no temp file left.
    let out = get(&BlobKey::default().to_string());
    assert!(!out.status.success());
    assert_eq!(std::fs::read(&target).unwrap(), b"cli bytes");
    std::fs::remove_file(&target).unwrap();
    let out = get(&BlobKey::default().to_string());
    assert!(!out.status.success());
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != "store" && n != "in")
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn cli_serve_takes_the_port_from_the_flink_key() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    // A port that was free a moment ago.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_blobvault"))
        .arg("serve")
        .arg("--dir")
        .arg(dir.path())
        .arg("-D")
        .arg(format!("blob.server.port={port}"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(line.trim(), format!("listening on 127.0.0.1:{port}"));
}

#[test]
fn compact_gives_back_the_file_tail_and_keeps_every_blob() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let file_len = || std::fs::metadata(path.join("blobs.redb")).unwrap().len();
    let blob = |i: u32| -> Vec<u8> { (0..(i * 37_000) % 900_000).map(|b| (b ^ i) as u8).collect() };
    let kept: Vec<(BlobKey, Vec<u8>)> = {
        let store = BlobStore::open(&path).unwrap();
        let keys: Vec<BlobKey> = (0..120).map(|i| store.put(&blob(i)).unwrap()).collect();
        // Delete the later two thirds: their pages are free, much of them at the file's end.
        for k in &keys[40..] {
            store.delete(blobvault::DeleteTarget::Content(*k)).unwrap();
        }
        (0..40).map(|i| (keys[i as usize], blob(i))).collect()
    };
    let before = file_len();
    {
        // Refused while the store is open: redb locks the file.
        let _open = BlobStore::open(&path).unwrap();
        assert!(BlobStore::compact(&path).is_err());
    }
    let out = cli(&["compact".as_ref(), "-d".as_ref(), path.as_os_str()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = file_len();
    assert!(after < before / 2, "{before} -> {after}");
    let store = BlobStore::open(&path).unwrap();
    for (k, data) in &kept {
        assert_eq!(
            store.get_bytes(&BlobId::Content(*k)).unwrap().as_ref(),
            Some(data)
        );
    }
    assert!(store.verify().unwrap().is_clean());
}
