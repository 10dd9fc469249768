//! A full disk degrades the store, it does not wedge it: on a real (tmpfs) file system, the
//! built server fails PUTs with a clear error, still takes DELETEs, takes PUTs again once space
//! returns (no restart), and loses nothing it acknowledged, even to a SIGKILL.
//!
//! Needs `mount -t tmpfs` (root; CI runs as root). A test that cannot mount fails: it must not
//! pass by skipping.

use std::path::{Path, PathBuf};
use std::process::Command;

use blobvault::{BlobClient, BlobId, ClientError, JobId};

mod common;
use common::{IO_TIMEOUT, Rng, ServeProcess};

/// A tmpfs mounted for one test, unmounted when dropped (also when the test fails).
struct Tmpfs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(bytes: u64) -> Tmpfs {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}")])
            .arg("tmpfs")
            .arg(&path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "cannot mount a {bytes}-byte tmpfs at {}: {} — this test needs a real small file \
             system (run it as root, as CI does)",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Tmpfs { path, _dir: dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Still busy (a server that outlived a panic): detach it now, it goes when freed.
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

fn client(server: &ServeProcess) -> BlobClient {
    BlobClient::connect_timeout(&server.addr, IO_TIMEOUT).expect("connect")
}

fn verify_cli(dir: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_blobvault"))
        .args(["verify", "--dir"])
        .arg(dir)
        .output()
        .expect("run blobvault verify");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "verify found damage: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// Free bytes of the file system at `path` (`stat -f`: available blocks × block size).
fn free_bytes(path: &Path) -> u64 {
    let out = Command::new("stat")
        .args(["-f", "-c", "%a %S"])
        .arg(path)
        .output()
        .expect("run stat -f");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text
        .split_whitespace()
        .map(|v| v.parse::<u64>().expect("a number"));
    it.next().expect("blocks") * it.next().expect("block size")
}

/// The error of a PUT refused for lack of space: says so, and names the store.
fn assert_no_space(e: &ClientError, store: &Path) {
    let msg = e
        .server_message()
        .unwrap_or_else(|| panic!("not an error reply: {e}"));
    assert!(msg.contains("no space left on device"), "{msg}");
    assert!(msg.contains(&store.display().to_string()), "{msg}");
}

#[test]
fn a_full_disk_fails_puts_keeps_deletes_and_recovers_without_a_restart() {
    const FS: u64 = 48 << 20;
    // More than twice the reserve (8 MiB) on its own: removing it must bring the store back.
    const FILLER: usize = 16 << 20;
    let fs = Tmpfs::mount(FS);
    let store = fs.path.join("store");
    let filler = fs.path.join("filler");
    let logs = tempfile::tempdir().expect("tempdir");
    let log = logs.path().join("serve.log");
    let args = [std::ffi::OsStr::new("--dir"), store.as_os_str()];
    let server = ServeProcess::spawn_logging(&args, &log);
    assert!(store.join(blobvault::store::RESERVE_FILE).is_file());
    // Someone else's file on the same file system: removing it is one way space returns.
    std::fs::write(&filler, vec![7u8; FILLER]).expect("filler");

    // An upload larger than the free space fails while it is spooled, and leaves nothing: its
    // temp file goes at once, the reserve stays, the next PUT works.
    let spool = store.join("spool");
    let err = client(&server).put(&vec![3u8; 40 << 20]).unwrap_err();
    eprintln!("40 MiB upload on a 48 MiB file system: {err}");
    if let Some(msg) = err.server_message() {
        assert!(msg.contains("no space left on device"), "{msg}");
    }
    assert_eq!(std::fs::read_dir(&spool).expect("spool dir").count(), 0);
    assert!(store.join(blobvault::store::RESERVE_FILE).is_file());
    client(&server)
        .put(b"after a failed spool")
        .expect("PUT after a failed spool");

    // Fill the disk: small blobs (through the write-ahead log), larger ones (direct commits),
    // named ones of one job (to delete as a job later).
    let mut rng = Rng::new(0xd15c);
    let job = JobId::from_parts(0xfeed, 1);
    let mut acked: Vec<(BlobId, Vec<u8>)> = Vec::new();
    let mut c = client(&server);
    let full = loop {
        let i = acked.len();
        let size = match i % 4 {
            0 => 30_000,
            1 => 200_000,
            _ => 600_000,
        };
        let data = rng.bytes(size);
        let result = if i.is_multiple_of(5) {
            let name = format!("lib-{i}.jar");
            c.put_named(job, &name, &data)
                .map(|()| BlobId::Named(job, name))
        } else {
            c.put(&data).map(BlobId::Content)
        };
        match result {
            Ok(id) => acked.push((id, data)),
            Err(e) => break e,
        }
        assert!(acked.len() < 1000, "the disk never filled");
    };
    assert_no_space(&full, &store);
    eprintln!("disk full after {} acknowledged PUTs", acked.len());
    assert!(acked.len() > 10);

    // Full: PUTs keep failing cleanly, small or spooled to a temp file.
    for size in [10_000, 3 << 20] {
        let err = client(&server).put(&rng.bytes(size)).unwrap_err();
        assert_no_space(&err, &store);
    }
    assert!(!store.join(blobvault::store::RESERVE_FILE).exists());

    // DELETEs go through: by key, by name, and a whole job.
    let mut c = client(&server);
    let mut deleted = Vec::new();
    let by_key = acked
        .iter()
        .position(|(id, _)| matches!(id, BlobId::Content(_)))
        .expect("a content blob");
    let (id, _) = acked.remove(by_key);
    let BlobId::Content(key) = id else {
        unreachable!()
    };
    c.delete(key).expect("DELETE by key on a full disk");
    deleted.push(id);
    let by_name = acked
        .iter()
        .position(|(id, _)| matches!(id, BlobId::Named(..)))
        .expect("a named blob");
    let (id, _) = acked.remove(by_name);
    if let BlobId::Named(j, n) = &id {
        c.delete_named(*j, n)
            .expect("DELETE by name on a full disk");
    }
    deleted.push(id);
    c.delete_job(job).expect("DELETE of a job on a full disk");
    let (gone, kept): (Vec<_>, Vec<_>) = acked
        .into_iter()
        .partition(|(id, _)| matches!(id, BlobId::Named(j, _) if *j == job));
    deleted.extend(gone.into_iter().map(|(id, _)| id));
    let mut acked = kept;
    let c_get = &mut client(&server);
    for id in &deleted {
        assert!(
            c_get.get_bytes(id).is_err(),
            "{id} still served after DELETE"
        );
    }

    // The pages those DELETEs freed take a small PUT, though the file system is still full.
    let data = rng.bytes(20_000);
    let key = client(&server)
        .put(&data)
        .expect("PUT into pages DELETEs freed");
    acked.push((BlobId::Content(key), data));

    // PUTs that no longer fit fail again, without eating the room DELETEs need: fill up with
    // uploads just under the in-memory limit, then a DELETE still goes through.
    let mut fitted = 0;
    let err = loop {
        let data = rng.bytes(900_000);
        match client(&server).put(&data) {
            Ok(key) => acked.push((BlobId::Content(key), data)),
            Err(e) => break e,
        }
        fitted += 1;
        assert!(fitted < 100, "the freed space never ran out");
    };
    assert_no_space(&err, &store);
    let free = free_bytes(&fs.path);
    eprintln!("{fitted} more PUTs of 900 kB fitted in the space DELETEs freed; {free} bytes free");
    assert!(
        free >= 3 << 20,
        "PUTs ate the room kept for DELETEs: {free} bytes free"
    );
    let (id, _) = acked.remove(0);
    match &id {
        BlobId::Content(k) => client(&server).delete(*k),
        BlobId::Named(j, n) => client(&server).delete_named(*j, n),
    }
    .expect("DELETE after PUTs ran out of space again");
    deleted.push(id);

    // A SIGKILL while out of space: the server restarts on the full disk (its open has the room
    // the guard kept), still takes DELETEs and still refuses PUTs.
    server.kill();
    let log2 = logs.path().join("serve-2.log");
    let server = ServeProcess::spawn_logging(&args, &log2);
    let (id, _) = acked.remove(0);
    match &id {
        BlobId::Content(k) => client(&server).delete(*k),
        BlobId::Named(j, n) => client(&server).delete_named(*j, n),
    }
    .expect("DELETE after a restart on a full disk");
    deleted.push(id);
    let err = client(&server).put(&rng.bytes(2 << 20)).unwrap_err();
    assert_no_space(&err, &store);

    // Space returns on the file system: PUTs work again, large ones too, without a restart,
    // and the reserve is made again.
    std::fs::remove_file(&filler).expect("remove filler");
    let mut c = client(&server);
    for size in [10_000, 3 << 20] {
        let data = rng.bytes(size);
        let key = c.put(&data).expect("PUT once space returned");
        acked.push((BlobId::Content(key), data));
    }
    assert!(store.join(blobvault::store::RESERVE_FILE).is_file());

    // The episode was logged once per process, not per failed request.
    let episodes = |log: &Path| {
        let text = std::fs::read_to_string(log).expect("server log");
        let starts = text.matches("PUTs fail until space is freed").count();
        let ends = text.matches("space returned").count();
        (starts, ends, text.matches("spool file").count(), text)
    };
    let (starts, ends, spool_full, text) = episodes(&log);
    assert_eq!(
        (starts, ends, spool_full),
        (1, 0, 1),
        "first server:\n{text}"
    );
    let (starts, ends, spool_full, text) = episodes(&log2);
    assert_eq!(
        (starts, ends, spool_full),
        (1, 1, 0),
        "second server:\n{text}"
    );

    // A SIGKILL loses nothing acknowledged; nothing half-written is visible.
    server.kill();
    let server = ServeProcess::spawn(&args);
    let mut c = client(&server);
    for (id, data) in &acked {
        assert_eq!(&c.get_bytes(id).expect("acknowledged blob"), data, "{id}");
    }
    for id in &deleted {
        assert!(c.get_bytes(id).is_err(), "{id} back after restart");
    }
    server.kill();
    let report = verify_cli(&store);
    eprintln!("{}", report.trim());
}

/// Creates `path` with whatever space its file system has left.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("create filler");
    let block = vec![9u8; 1 << 20];
    while f.write_all(&block).is_ok() {}
    // The last, partial block: whatever still fits.
    for _ in 0..256 {
        if f.write_all(&block[..4096]).is_err() {
            break;
        }
    }
}

#[test]
fn a_server_killed_before_the_disk_filled_restarts_on_it_with_the_reserve() {
    let fs = Tmpfs::mount(32 << 20);
    let store = fs.path.join("store");
    let args = [std::ffi::OsStr::new("--dir"), store.as_os_str()];
    let server = ServeProcess::spawn(&args);
    let mut rng = Rng::new(0xf111);
    let mut c = client(&server);
    let mut acked: Vec<(BlobId, Vec<u8>)> = (0..20)
        .map(|i| {
            let data = rng.bytes(if i % 2 == 0 { 300_000 } else { 3_000 });
            (BlobId::Content(c.put(&data).expect("PUT")), data)
        })
        .collect();
    // Killed with the small blobs only in the log: the next open must replay it and repair the
    // database, both of which write.
    server.kill();
    let filler = fs.path.join("filler");
    fill(&filler);

    let server = ServeProcess::spawn(&args);
    // The open itself needed the reserve.
    assert!(!store.join(blobvault::store::RESERVE_FILE).exists());
    let mut c = client(&server);
    for (id, data) in &acked {
        assert_eq!(&c.get_bytes(id).expect("acknowledged blob"), data, "{id}");
    }
    let (deleted, _) = acked.remove(0);
    let BlobId::Content(key) = deleted else {
        unreachable!()
    };
    c.delete(key)
        .expect("DELETE after a restart on a full disk");
    let err = client(&server).put(&rng.bytes(2 << 20)).unwrap_err();
    assert_no_space(&err, &store);

    std::fs::remove_file(&filler).expect("remove filler");
    let data = rng.bytes(2 << 20);
    let key = client(&server).put(&data).expect("PUT once space returned");
    acked.push((BlobId::Content(key), data));
    server.kill();
    let server = ServeProcess::spawn(&args);
    let mut c = client(&server);
    for (id, data) in &acked {
        assert_eq!(&c.get_bytes(id).expect("acknowledged blob"), data, "{id}");
    }
    assert!(
        client(&server).get_bytes(&deleted).is_err(),
        "deleted blob back"
    );
    server.kill();
    verify_cli(&store);
}

/// On a full disk, a DELETE of a blob that GETs are still streaming frees its chunks only when
/// those GETs end; that free must give the space back to PUTs as a plain DELETE does.
#[test]
fn a_delete_deferred_by_open_gets_frees_its_space_on_a_full_disk() {
    use std::io::{Read, Write};
    let fs = Tmpfs::mount(64 << 20);
    let store = fs.path.join("store");
    let server = ServeProcess::spawn(&[
        "--dir".as_ref(),
        store.as_os_str(),
        "--min-rate".as_ref(),
        "0".as_ref(),
    ]);
    let mut rng = Rng::new(0xdefe);
    let mut c = client(&server);
    let big = rng.bytes(10 << 20);
    let big_key = c.put(&big).expect("PUT the 10 MiB blob");
    // Fill the disk (bounded: 64 MiB cannot take more than 64 of these).
    let mut filled = 0;
    for _ in 0..64 {
        match c.put(&rng.bytes(1 << 20)) {
            Ok(_) => filled += 1,
            Err(e) => {
                assert_no_space(&e, &store);
                break;
            }
        }
    }
    assert!(filled < 64, "the disk never filled");
    // Two GETs of the big blob, their replies begun and then left unread.
    let mut gets: Vec<std::net::TcpStream> = (0..2)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(server.addr).expect("connect");
            let mut req = Vec::new();
            blobvault::protocol::encode_get(&BlobId::Content(big_key), &mut req);
            s.write_all(&req).expect("GET");
            s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
            let mut first = [0u8; 5];
            s.read_exact(&mut first).expect("reply header");
            assert_eq!(first[0], 0, "GET refused");
            s
        })
        .collect();
    let mut c = client(&server);
    c.delete(big_key).expect("DELETE on a full disk");
    // The GETs finish whole; then their lease ends and the chunks are freed.
    for s in &mut gets {
        let mut rest = vec![0u8; big.len()];
        s.read_exact(&mut rest)
            .expect("a GET of the deleted blob whole");
        assert!(rest == big, "a GET of the deleted blob got other bytes");
    }
    drop(gets);
    // 8 MiB of the 10 freed must take PUTs again (bounded; the free follows the GETs' end).
    let mut c = client(&server);
    let mut stored = 0u64;
    for _ in 0..200 {
        if stored >= 8 << 20 {
            break;
        }
        match c.put(&rng.bytes(256 << 10)) {
            Ok(_) => stored += 256 << 10,
            Err(e) => {
                assert_no_space(&e, &store);
                c = client(&server);
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }
    assert!(
        stored >= 8 << 20,
        "only {stored} bytes fitted in the 10 MiB a deferred DELETE freed"
    );
    server.kill();
    verify_cli(&store);
}
