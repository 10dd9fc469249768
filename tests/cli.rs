//! The command line as a user meets it: each error a user makes, run as a process, with what it
//! must say; the default server address and port; configuration files; `--json`; exit codes.
//! Servers bind 127.0.0.1 port 0: no test needs 6124 free.

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use blobvault::BlobKey;
use common::ServeProcess;

/// A `blobvault` command with `BLOBVAULT_SERVER` and `NO_COLOR` cleared (a developer's shell
/// may set them).
fn cmd<S: AsRef<OsStr>>(args: &[S]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_blobvault"));
    c.args(args)
        .env_remove("BLOBVAULT_SERVER")
        .env_remove("NO_COLOR");
    c
}

fn run<S: AsRef<OsStr>>(args: &[S]) -> Output {
    cmd(args).output().expect("run blobvault")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts the exit status and that stderr holds every one of `says`.
fn expect(o: &Output, code: i32, says: &[&str]) {
    let err = stderr(o);
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout {}\nstderr {err}",
        stdout(o)
    );
    for s in says {
        assert!(err.contains(s), "stderr lacks {s:?}: {err}");
    }
}

/// A port nothing listens on: bound a moment ago by the kernel's choice, then let go.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

/// A temp dir with a small input file `in`.
fn scratch() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in");
    std::fs::write(&input, b"cli bytes").expect("write input");
    (dir, input)
}

/// A server on port 0 over `dir`, its log in `dir/../serve.log`.
fn serve(dir: &Path) -> ServeProcess {
    let log = dir.with_extension("log");
    ServeProcess::spawn_logging(&[OsStr::new("--dir"), dir.as_os_str()], &log)
}

#[test]
fn help_documents_the_default_port_and_server_and_exit_codes() {
    let top = stdout(&run(&["--help"]));
    assert!(
        top.contains("6124") && top.contains("3 no such blob"),
        "{top}"
    );
    let serve = stdout(&run(&["serve", "--help"]));
    assert!(
        serve.contains("6124") && serve.contains("--config"),
        "{serve}"
    );
    for sub in ["put", "get", "delete"] {
        let h = stdout(&run(&[sub, "--help"]));
        for s in [
            "BLOBVAULT_SERVER",
            "127.0.0.1:6124",
            "--dir",
            "Example",
            "JOB",
        ] {
            assert!(h.contains(s), "{sub} --help lacks {s}: {h}");
        }
    }
    let get = stdout(&run(&["get", "--help"]));
    assert!(
        get.contains("-o, --output") && get.contains("[KEY]"),
        "{get}"
    );
}

#[test]
fn usage_errors_exit_2_and_refused_values_say_why() {
    expect(&run(&["put"]), 2, &["<FILE>"]);
    let (dir, _) = scratch();
    let d = p(dir.path());
    expect(
        &run(&["serve", "--dir", &d, "--port", "0", "--idle-timeout", "0"]),
        2,
        &["expected more than 0 seconds"],
    );
    expect(
        &run(&[
            "serve",
            "--dir",
            &d,
            "--port",
            "0",
            "--max-connections",
            "0",
        ]),
        2,
        &["at least 1"],
    );
    expect(&run(&["get", "--job", "", "--name", "x"]), 2, &["empty"]);
}

#[test]
fn a_refused_connection_names_the_address_and_asks_for_a_server() {
    let (_dir, input) = scratch();
    let addr = format!("127.0.0.1:{}", closed_port());
    let hint = format!("is `blobvault serve` running on {addr}?");
    let o = run(&[
        "put".as_ref(),
        input.as_os_str(),
        "--server".as_ref(),
        addr.as_ref(),
    ]);
    expect(&o, 1, &[&format!("cannot connect to {addr}"), &hint]);
    // The same through the environment, for get and delete.
    let key = BlobKey::of(b"x").to_string();
    for sub in ["get", "delete"] {
        let o = cmd(&[sub, &key])
            .env("BLOBVAULT_SERVER", &addr)
            .output()
            .unwrap();
        expect(&o, 1, &[&hint]);
    }
}

#[test]
fn the_server_comes_from_the_flag_then_the_environment_and_host_names_resolve() {
    let (dir, input) = scratch();
    let server = serve(&dir.path().join("store"));
    let addr = server.addr.to_string();
    let out = cmd(&["put".as_ref(), input.as_os_str()])
        .env("BLOBVAULT_SERVER", &addr)
        .output()
        .unwrap();
    expect(&out, 0, &[]);
    let key = stdout(&out).trim().to_string();
    assert_eq!(key, BlobKey::of(b"cli bytes").to_string());
    // A host name: localhost resolves to this server's address (tried in turn if several).
    let by_name = format!("localhost:{}", server.addr.port());
    let got = run(&["get", &key, "--server", &by_name]);
    expect(&got, 0, &[]);
    assert_eq!(got.stdout, b"cli bytes");
    // The flag wins over the environment.
    let refused = format!("127.0.0.1:{}", closed_port());
    let got = cmd(&["get", &key, "--server", &addr])
        .env("BLOBVAULT_SERVER", &refused)
        .output()
        .unwrap();
    expect(&got, 0, &[]);
}

#[test]
fn a_host_name_that_does_not_resolve_is_named() {
    let (dir, input) = scratch();
    let o = run(&[
        "put".as_ref(),
        input.as_os_str(),
        "--server".as_ref(),
        "no-such-host.invalid:6124".as_ref(),
    ]);
    expect(&o, 1, &["\"no-such-host.invalid\" does not resolve"]);
    let o = run(&[
        "serve",
        "--dir",
        &p(&dir.path().join("s")),
        "--port",
        "0",
        "--bind",
        "no-such-host.invalid",
    ]);
    expect(&o, 1, &["\"no-such-host.invalid\" does not resolve"]);
    assert!(!dir.path().join("s").exists(), "nothing opened");
}

#[test]
fn a_store_a_server_has_open_is_reported_with_what_to_do() {
    let (dir, input) = scratch();
    let store = dir.path().join("store");
    let _server = serve(&store);
    let s = p(&store);
    let locked = format!("the store at {s} is open in another process");
    let key = BlobKey::of(b"x").to_string();
    let i = p(&input);
    for (args, todo) in [
        (vec!["ls", "--dir", &s], "stop that server first"),
        (vec!["stat", "--dir", &s], "stop that server first"),
        (vec!["verify", "--dir", &s], "stop that server first"),
        (vec!["compact", "--dir", &s], "stop that server first"),
        (
            vec!["put", &i, "--dir", &s],
            "--server HOST:PORT instead of --dir",
        ),
        (
            vec!["get", &key, "--dir", &s],
            "--server HOST:PORT instead of --dir",
        ),
        (
            vec!["serve", "--dir", &s, "--port", "0"],
            "serve a different --dir",
        ),
    ] {
        let o = run(&args);
        expect(&o, 1, &[&locked, todo]);
        assert!(!stderr(&o).contains("Cannot acquire lock"), "{args:?}");
    }
}

#[test]
fn read_only_commands_on_no_store_say_so_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    for path in [&missing, &empty] {
        for sub in ["ls", "stat", "verify", "compact"] {
            let o = run(&[sub, "--dir", &p(path)]);
            expect(&o, 1, &[&format!("no store at {}", p(path))]);
        }
        let key = BlobKey::of(b"x").to_string();
        expect(&run(&["get", &key, "--dir", &p(path)]), 1, &["no store at"]);
        let o = run(&["recovery", "ls", "--recovery-dir", &p(path)]);
        expect(&o, 1, &[&format!("no recovery store at {}", p(path))]);
    }
    assert!(!missing.exists());
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
}

#[test]
fn io_errors_name_their_path() {
    let (dir, input) = scratch();
    let file = p(&input);
    let o = run(&["serve", "--dir", &file, "--port", "0"]);
    expect(&o, 1, &[&format!("--dir {file} is not a directory")]);
    let store = p(&dir.path().join("store"));
    let o = run(&[
        "serve",
        "--dir",
        &store,
        "--port",
        "0",
        "--recovery-dir",
        &file,
    ]);
    expect(
        &o,
        1,
        &[&format!("--recovery-dir {file} is not a directory")],
    );
    // put of a directory; get -o into a folder that does not exist.
    let o = run(&["put", &p(dir.path()), "--dir", &store]);
    expect(
        &o,
        1,
        &[&format!("cannot read {}", p(dir.path())), "directory"],
    );
    let key = stdout(&run(&["put", &file, "--dir", &store]))
        .trim()
        .to_string();
    let target = dir.path().join("nowhere").join("out");
    let o = run(&["get", &key, "--dir", &store, "-o", &p(&target)]);
    expect(&o, 1, &[&format!("cannot write {}", p(&target))]);
    let o = run(&["put", &p(&dir.path().join("nothing")), "--dir", &store]);
    expect(
        &o,
        1,
        &[&format!("cannot read {}", p(&dir.path().join("nothing")))],
    );
}

#[test]
fn a_named_put_prints_what_get_takes_and_any_text_makes_a_job() {
    let (dir, input) = scratch();
    let server = serve(&dir.path().join("store"));
    let addr = server.addr.to_string();
    let i = p(&input);
    let o = run(&[
        "put",
        &i,
        "--server",
        &addr,
        "--job",
        "nightly etl",
        "--name",
        "lib/a.jar",
    ]);
    expect(&o, 0, &[]);
    let line = stdout(&o);
    let words: Vec<&str> = line.split_whitespace().collect();
    let ["--job", job, "--name", "lib/a.jar"] = words[..] else {
        panic!("{line}")
    };
    assert_eq!(job.len(), 32);
    // The printed id and the text it came from find the same blob.
    for j in [job, "nightly etl"] {
        let o = run(&["get", "--server", &addr, "--job", j, "--name", "lib/a.jar"]);
        expect(&o, 0, &[]);
        assert_eq!(o.stdout, b"cli bytes");
    }
    let o = run(&[
        "put", &i, "--server", &addr, "--job", job, "--name", "b c", "--json",
    ]);
    let json = stdout(&o);
    let key = BlobKey::of(b"cli bytes");
    assert_eq!(
        json.trim(),
        format!(r#"{{"key":"{key}","size":9,"job":"{job}","name":"b c"}}"#)
    );
}

#[test]
fn a_missing_blob_exits_3_from_a_server_and_from_a_store() {
    let (dir, input) = scratch();
    let store = dir.path().join("store");
    let s = p(&store);
    expect(&run(&["put", &p(&input), "--dir", &s]), 0, &[]);
    let key = BlobKey::of(b"absent").to_string();
    expect(
        &run(&["get", &key, "--dir", &s]),
        3,
        &["no such blob", &key],
    );
    let named = ["--job", "j", "--name", "n"];
    let o = run(&[&["get", "--dir", &s][..], &named].concat());
    expect(&o, 3, &["no such blob"]);
    let server = serve(&store);
    let addr = server.addr.to_string();
    expect(
        &run(&["get", &key, "--server", &addr]),
        3,
        &["no such blob", &key],
    );
    let o = run(&[&["get", "--server", &addr][..], &named].concat());
    expect(&o, 3, &["no such blob"]);
}

#[test]
fn json_outputs_are_one_document_each() {
    let (dir, input) = scratch();
    let s = p(&dir.path().join("store"));
    let o = run(&["put", &p(&input), "--dir", &s, "--json"]);
    let key = BlobKey::of(b"cli bytes");
    assert_eq!(stdout(&o).trim(), format!(r#"{{"key":"{key}","size":9}}"#));
    let o = run(&[
        "put",
        &p(&input),
        "--dir",
        &s,
        "--job",
        "j",
        "--name",
        "q\"uote",
    ]);
    expect(&o, 0, &[]);
    let ls = stdout(&run(&["ls", "--dir", &s, "--json"]));
    assert!(
        ls.starts_with(r#"{"dir":""#) && ls.trim_end().ends_with("]}"),
        "{ls}"
    );
    assert!(
        ls.contains(&format!(r#"{{"key":"{key}","size":9}}"#)),
        "{ls}"
    );
    assert!(ls.contains(r#""name":"q\"uote"}"#), "{ls}");
    assert_eq!(ls.lines().count(), 1);
    let stat = stdout(&run(&["stat", "--dir", &s, "--json"]));
    assert!(
        stat.contains(r#""content_blobs":1,"named_blobs":1,"contents":1"#),
        "{stat}"
    );
    let o = run(&["verify", "--dir", &s, "--json"]);
    expect(&o, 0, &[]);
    let v = stdout(&o);
    assert!(v.starts_with(r#"{"clean":true,"blobs_checked":1,"#), "{v}");
    assert!(v.contains(r#""damaged":[]"#), "{v}");
}

/// Starts `serve ARGS` with its stderr in a file; returns the server and a reader of the log.
fn serve_logged(dir: &Path, args: &[&str]) -> (ServeProcess, impl Fn() -> String + use<>) {
    let log = dir.join("serve.log");
    let server = ServeProcess::spawn_logging(args, &log);
    (server, move || {
        std::fs::read_to_string(&log).unwrap_or_default()
    })
}

#[test]
fn a_config_file_is_read_minus_d_wins_and_ignored_keys_are_listed_once() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let conf = dir.path().join("flink-conf.yaml");
    std::fs::write(
        &conf,
        format!(
            "# blob server\nblob.server.port: {}\nblob.fetch.num-concurent: 8\n\
             jobmanager.rpc.address: \"localhost\"\n",
            taken.local_addr().unwrap().port()
        ),
    )
    .unwrap();
    let store = p(&dir.path().join("store"));
    let c = p(&conf);
    // The file's port is taken: -D must win for the server to start at all.
    let (server, log) = serve_logged(
        dir.path(),
        &[
            "--dir",
            &store,
            "--config",
            &c,
            "-D",
            "blob.server.port=0",
            "-D",
            "blob.fetch.num-concurrent=0",
        ],
    );
    assert_ne!(server.addr, taken.local_addr().unwrap());
    server.kill();
    let log = log();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("ignoring")).collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(
        warnings[0].contains("blob.fetch.num-concurent, jobmanager.rpc.address"),
        "{log}"
    );
    assert!(
        log.contains("blob.fetch.num-concurrent=0 is below the minimum 1; using the default 50"),
        "{log}"
    );
    assert!(!log.contains('\x1b'), "no colours into a file: {log:?}");
    // Without -D the file's port is used: taken, so the bind fails naming it.
    let o = run(&["serve", "--dir", &store, "--config", &c]);
    let port = taken.local_addr().unwrap().port();
    expect(&o, 1, &[&format!("{port}"), "--port"]);
    // A line that is not `key: value`, and a missing file.
    std::fs::write(&conf, "blob.server.port 6124\n").unwrap();
    let o = run(&["serve", "--dir", &store, "--config", &c]);
    expect(&o, 1, &[&format!("{c}:1: expected `key: value`")]);
    let gone = p(&dir.path().join("gone.yaml"));
    let o = run(&["serve", "--dir", &store, "--config", &gone]);
    expect(&o, 1, &[&format!("cannot read configuration file {gone}")]);
}

#[test]
fn bench_takes_a_host_name_and_names_a_server_it_cannot_reach() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(&dir.path().join("store"));
    let by_name = format!("localhost:{}", server.addr.port());
    let args = ["-q", "-n", "5", "-c", "1", "--phases", "put,get"];
    let o = run(&[&["bench", "--server", &by_name][..], &args].concat());
    expect(&o, 0, &[]);
    let refused = format!("127.0.0.1:{}", closed_port());
    let o = run(&[&["bench", "--server", &refused][..], &args].concat());
    expect(
        &o,
        1,
        &[&format!("is `blobvault serve` running on {refused}?")],
    );
}
