//! TLS and mutual TLS on the BLOB port, with throwaway certificates made here: round trips
//! through the library, the cache and the CLI; every kind of refused peer (no certificate, an
//! untrusted or expired one, plaintext on a TLS port, TLS on a plaintext port, garbage, a
//! stalled handshake) logged as such while the server goes on serving the others; certificates
//! replaced without a restart.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use blobvault::cache::{BlobCache, CacheOptions};
use blobvault::config::ServerConfig;
use blobvault::tls::{ClientTls, ClientTlsFiles, ServerTls, ServerTlsFiles};
use blobvault::{BlobClient, BlobId, BlobKey, ClientError, JobId};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, date_time_ymd,
};

mod common;
use common::logged::Server;
use common::{Rng, TestServer};

const WAIT: Duration = Duration::from_secs(15);

/// A CA and what it signed, as PEM files in a temp dir.
struct Pki {
    dir: tempfile::TempDir,
}

/// A certificate and its key, as files.
#[derive(Clone)]
struct Pair {
    cert: PathBuf,
    key: PathBuf,
}

type Ca = CertifiedIssuer<'static, KeyPair>;

impl Pki {
    fn new() -> Pki {
        Pki {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A CA, its certificate written to `<name>.pem`.
    fn ca(&self, name: &str) -> (Ca, PathBuf) {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("blobvault test CA {name}"));
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key"))
            .expect("CA certificate");
        let path = self.path(&format!("{name}.pem"));
        std::fs::write(&path, ca.pem()).expect("write CA");
        (ca, path)
    }

    /// A leaf certificate for `names`, signed by `ca`; `expired` puts its validity in the past.
    fn leaf(&self, ca: &Ca, file: &str, names: &[&str], expired: bool) -> Pair {
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or(file));
        if expired {
            params.not_before = date_time_ymd(2000, 1, 1);
            params.not_after = date_time_ymd(2001, 1, 1);
        }
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, ca).expect("sign");
        let pair = Pair {
            cert: self.path(&format!("{file}.crt")),
            key: self.path(&format!("{file}.key")),
        };
        std::fs::write(&pair.cert, cert.pem()).expect("write cert");
        std::fs::write(&pair.key, key.serialize_pem()).expect("write key");
        pair
    }
}

/// The usual cast: a cluster CA with a server and a client certificate, and a CA nobody trusts
/// with a client certificate of its own.
struct Cast {
    pki: Pki,
    ca: PathBuf,
    server: Pair,
    client: Pair,
    expired_client: Pair,
    rogue_ca: PathBuf,
    rogue_client: Pair,
}

fn cast() -> Cast {
    let pki = Pki::new();
    let (ca, ca_path) = pki.ca("cluster-ca");
    let (rogue, rogue_path) = pki.ca("rogue-ca");
    Cast {
        server: pki.leaf(&ca, "server", &["localhost", "127.0.0.1"], false),
        client: pki.leaf(&ca, "client", &["worker-1"], false),
        expired_client: pki.leaf(&ca, "expired", &["worker-2"], true),
        rogue_client: pki.leaf(&rogue, "rogue", &["intruder"], false),
        ca: ca_path,
        rogue_ca: rogue_path,
        pki,
    }
}

impl Cast {
    fn server_files(&self, mutual: bool) -> ServerTlsFiles {
        ServerTlsFiles {
            cert: self.server.cert.clone(),
            key: self.server.key.clone(),
            client_ca: mutual.then(|| self.ca.clone()),
        }
    }

    fn client_tls(&self, who: Option<&Pair>) -> ClientTls {
        client_tls(&self.ca, who)
    }

    /// `blobvault serve` over TLS, logging to a file.
    fn serve(&self, mutual: bool, extra: &[&str]) -> Server {
        let mut args = vec![
            "--tls-cert".to_string(),
            self.server.cert.display().to_string(),
            "--tls-key".into(),
            self.server.key.display().to_string(),
        ];
        if mutual {
            args.push("--tls-client-ca".into());
            args.push(self.ca.display().to_string());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Server::spawn(&args)
    }
}

fn client_tls(ca: &Path, who: Option<&Pair>) -> ClientTls {
    ClientTls::load(&ClientTlsFiles {
        ca: ca.to_path_buf(),
        cert: who.map(|p| p.cert.clone()),
        key: who.map(|p| p.key.clone()),
        server_name: None,
    })
    .expect("client TLS configuration")
}

fn connect(addr: SocketAddr, tls: &ClientTls) -> std::io::Result<BlobClient> {
    BlobClient::connect_tls(&addr, tls, Some(Duration::from_secs(30)))
}

/// PUT then GET over `tls`; the error of whichever failed.
fn round_trip(addr: SocketAddr, tls: &ClientTls, data: &[u8]) -> Result<(), String> {
    let mut c = connect(addr, tls).map_err(|e| e.to_string())?;
    let key = c.put(data).map_err(|e| e.to_string())?;
    let back = c
        .get_bytes(&BlobId::Content(key))
        .map_err(|e| e.to_string())?;
    if back != data {
        return Err("bytes differ".into());
    }
    Ok(())
}

#[test]
fn tls_round_trips_content_and_named_blobs_through_client_and_cache() {
    let c = cast();
    let tls = ServerTls::load(c.server_files(false)).expect("server TLS");
    let config = ServerConfig {
        tls: Some(Arc::new(tls)),
        ..ServerConfig::default()
    };
    let srv = TestServer::start_config(config);
    let mut rng = Rng::new(11);
    // Several chunks and many TLS records, in both directions.
    let big = rng.bytes(3 * 1024 * 1024 + 17);
    let small = b"a small jar".to_vec();
    let mut client = connect(srv.addr(), &c.client_tls(None)).expect("TLS connect");
    let big_key = client.put(&big).expect("put big");
    assert_eq!(big_key, BlobKey::of(&big));
    let small_key = client.put(&small).expect("put small");
    let job = JobId::from_parts(7, 9);
    client.put_named(job, "lib/udf.jar", &small).expect("named");
    assert_eq!(
        client.get_bytes(&BlobId::Content(big_key)).expect("get"),
        big
    );
    assert_eq!(
        client
            .get_bytes(&BlobId::Named(job, "lib/udf.jar".into()))
            .expect("get named"),
        small
    );
    client.delete(small_key).expect("delete");
    assert!(
        client.get_bytes(&BlobId::Content(small_key)).is_err(),
        "deleted by key"
    );
    let mut client = connect(srv.addr(), &c.client_tls(None)).expect("TLS connect");
    assert_eq!(
        client
            .get_bytes(&BlobId::Named(job, "lib/udf.jar".into()))
            .expect("the named blob keeps the shared bytes"),
        small
    );

    // A worker's cache downloads over TLS too.
    let cache_dir = tempfile::tempdir().expect("tempdir");
    let mut opts = CacheOptions::new([srv.addr()]);
    opts.dir = cache_dir.path().to_path_buf();
    opts.tls = Some(c.client_tls(None));
    let cache = BlobCache::open(opts).expect("cache");
    let held = cache.get(&big_key).expect("cache download");
    assert_eq!(std::fs::read(held.path()).expect("read cached"), big);

    // A plaintext cache against the TLS server fails with the server's reason.
    let plain_dir = tempfile::tempdir().expect("tempdir");
    let mut opts = CacheOptions::new([srv.addr()]);
    opts.dir = plain_dir.path().to_path_buf();
    opts.retries = 0;
    let err = BlobCache::open(opts)
        .expect("cache")
        .get(&big_key)
        .expect_err("plaintext against TLS");
    assert!(err.to_string().contains("requires TLS"), "{err}");
}

#[test]
fn mutual_tls_admits_cluster_members_only_and_logs_each_refusal() {
    let c = cast();
    let srv = c.serve(true, &[]);
    let idle_sockets = sockets(&srv);
    let member = c.client_tls(Some(&c.client));
    round_trip(srv.addr, &member, b"from a member").expect("member served");

    // Each with the reason the server's log line gives.
    let attempts: [(&str, &str, ClientTls); 3] = [
        (
            "no certificate",
            "peer sent no certificates",
            c.client_tls(None),
        ),
        (
            "expired",
            "certificate expired",
            c.client_tls(Some(&c.expired_client)),
        ),
        (
            "untrusted",
            "UnknownIssuer",
            c.client_tls(Some(&c.rogue_client)),
        ),
    ];
    for (what, reason, tls) in &attempts {
        // TLS 1.3: the client may finish its side before the server has judged its
        // certificate, so the refusal shows at the connect or at the first request.
        let err = round_trip(srv.addr, tls, what.as_bytes()).expect_err(what);
        assert!(
            err.contains("TLS") || err.contains("certificate") || err.contains("alert"),
            "{what}: {err}"
        );
        // This refusal's own line (an earlier refusal's must not stand in for it).
        let line = srv.wait_for_log(&["TLS connection refused", reason], WAIT);
        assert!(line.contains("WARN"), "{what}: {line}");
    }
    // The members go on being served.
    round_trip(srv.addr, &member, b"still served").expect("member served after refusals");
    // Nothing of the refused peers is kept: the server's sockets fall back to those it had
    // before any client came.
    let settled =
        common::logged::wait_until(WAIT, || (sockets(&srv) == idle_sockets).then_some(()));
    assert!(
        settled.is_some(),
        "{} sockets, {idle_sockets} before",
        sockets(&srv)
    );
}

/// The server process's socket descriptors.
fn sockets(srv: &Server) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", srv.pid()))
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter(|l| l.to_string_lossy().starts_with("socket:"))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn plaintext_client_on_a_tls_port_gets_an_error_reply_saying_so() {
    let c = cast();
    let srv = c.serve(false, &[]);
    let mut plain = BlobClient::connect_timeout(&srv.addr, WAIT).expect("tcp connect");
    let err = plain
        .put(b"plaintext")
        .expect_err("plaintext on a TLS port");
    let msg = match &err {
        ClientError::Server { message, .. } => message.clone(),
        e => panic!("expected the server's error reply, got {e}"),
    };
    assert!(msg.contains("requires TLS"), "{msg}");
    let line = srv.wait_for_log(&["requires TLS"], WAIT);
    assert!(line.contains("WARN"), "{line}");
    round_trip(srv.addr, &c.client_tls(None), b"tls still served").expect("served");
}

#[test]
fn tls_client_on_a_plaintext_port_is_told_what_is_wrong() {
    let plain = Server::spawn(&[]);
    let c = cast();
    let err = connect(plain.addr, &c.client_tls(None)).expect_err("TLS against plaintext");
    let text = err.to_string();
    assert!(text.contains("TLS handshake with"), "{text}");
    let line = plain.wait_for_log(&["TLS handshake on the BLOB port"], WAIT);
    assert!(line.contains("WARN"), "{line}");
    // Plaintext clients are still served.
    let mut client = plain.client();
    client.put(b"plain").expect("plaintext served");
}

#[test]
fn garbage_and_stalled_handshakes_are_cut_off_while_others_are_served() {
    let c = cast();
    let srv = c.serve(false, &["--header-timeout", "1"]);
    let tls = c.client_tls(None);

    // A TLS record header followed by garbage: refused by rustls, logged with the peer.
    let mut garbage = TcpStream::connect(srv.addr).expect("connect");
    let g_peer = garbage.local_addr().expect("addr").to_string();
    let mut bytes = vec![0x16, 0x03, 0x01, 0x00, 0x40];
    bytes.extend(Rng::new(5).bytes(0x40));
    garbage.write_all(&bytes).expect("send");
    garbage.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut sink = Vec::new();
    let _ = garbage.read_to_end(&mut sink);
    srv.wait_for_log(&["TLS connection refused", &g_peer], WAIT);

    // A handshake that stops after a few bytes holds nothing: others are served meanwhile,
    // and it is cut off at the header timeout with a line naming it.
    let mut stalled = TcpStream::connect(srv.addr).expect("connect");
    let s_peer = stalled.local_addr().expect("addr").to_string();
    stalled.write_all(&[0x16, 0x03, 0x01]).expect("send");
    round_trip(srv.addr, &tls, b"served during a stalled handshake").expect("served");
    let line = srv.wait_for_log(&["TLS handshake not complete", &s_peer], WAIT);
    assert!(line.contains("WARN"), "{line}");
    stalled.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut rest = Vec::new();
    let _ = stalled.read_to_end(&mut rest);
    round_trip(srv.addr, &tls, b"served after").expect("served");
}

#[test]
fn client_refuses_an_untrusted_or_misnamed_server_certificate() {
    let c = cast();
    let srv = c.serve(false, &[]);
    let untrusted = client_tls(&c.rogue_ca, None);
    let err = connect(srv.addr, &untrusted).expect_err("untrusted server");
    let text = err.to_string();
    assert!(
        text.contains("UnknownIssuer") && text.contains("--tls-ca"),
        "{text}"
    );
    let misnamed = verifying_name(&c.ca, "blob-7.internal");
    let text = connect(srv.addr, &misnamed)
        .expect_err("wrong name")
        .to_string();
    assert!(
        text.contains("not valid for name") && text.contains("--tls-server-name"),
        "{text}"
    );
    // The name the certificate does carry.
    let named = verifying_name(&c.ca, "localhost");
    round_trip(srv.addr, &named, b"by name").expect("served by name");
}

/// Trusting `ca`, verifying the server by `name` (`--tls-server-name`).
fn verifying_name(ca: &Path, name: &str) -> ClientTls {
    ClientTls::load(&ClientTlsFiles {
        ca: ca.to_path_buf(),
        cert: None,
        key: None,
        server_name: Some(name.into()),
    })
    .expect("client TLS configuration")
}

#[test]
fn cli_commands_speak_tls_and_mutual_tls() {
    let c = cast();
    let srv = c.serve(true, &[]);
    let file = c.pki.path("payload.bin");
    std::fs::write(&file, b"through the CLI over mutual TLS").expect("write");
    let bin = env!("CARGO_BIN_EXE_blobvault");
    let server = srv.addr.to_string();
    let tls_args = |who: Option<&Pair>| {
        let mut v = vec!["--tls-ca".to_string(), c.ca.display().to_string()];
        if let Some(p) = who {
            v.extend([
                "--tls-cert".to_string(),
                p.cert.display().to_string(),
                "--tls-key".to_string(),
                p.key.display().to_string(),
            ]);
        }
        v
    };
    let put = Command::new(bin)
        .args(["put", "--server", &server])
        .args(tls_args(Some(&c.client)))
        .arg(&file)
        .output()
        .expect("run put");
    assert!(put.status.success(), "{put:?}");
    let key = String::from_utf8_lossy(&put.stdout).trim().to_string();
    assert_eq!(
        key,
        BlobKey::of(b"through the CLI over mutual TLS").to_string()
    );
    let out = c.pki.path("back.bin");
    let get = Command::new(bin)
        .args(["get", &key, "--server", &server, "-o"])
        .arg(&out)
        .args(tls_args(Some(&c.client)))
        .output()
        .expect("run get");
    assert!(get.status.success(), "{get:?}");
    assert_eq!(
        std::fs::read(&out).expect("read"),
        b"through the CLI over mutual TLS"
    );
    // Without a client certificate: exit 1 and a message saying what to give.
    let refused = Command::new(bin)
        .args(["get", &key, "--server", &server, "-o"])
        .arg(c.pki.path("never.bin"))
        .args(tls_args(None))
        .output()
        .expect("run get");
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--tls-cert"), "{stderr}");
    // A client certificate flag without its key is a usage error.
    let usage = Command::new(bin)
        .args(["get", &key, "--server", &server, "--tls-ca"])
        .arg(&c.ca)
        .arg("--tls-cert")
        .arg(&c.client.cert)
        .output()
        .expect("run get");
    assert_eq!(usage.status.code(), Some(2), "{usage:?}");
}

#[test]
fn certificates_are_replaced_without_a_restart() {
    let c = cast();
    let srv = c.serve(false, &[]);
    let old = c.client_tls(None);
    round_trip(srv.addr, &old, b"before").expect("old certificate served");

    // A broken replacement is refused and the old certificate stays.
    std::fs::write(&c.server.cert, b"not a certificate").expect("break cert");
    srv.wait_for_log(&["cannot be used; keeping the previous ones"], WAIT);
    round_trip(srv.addr, &old, b"old kept").expect("old certificate still served");

    // A certificate from a new CA, written over the files: picked up by itself.
    let (new_ca, new_ca_path) = c.pki.ca("new-ca");
    let fresh = c
        .pki
        .leaf(&new_ca, "fresh", &["localhost", "127.0.0.1"], false);
    std::fs::copy(&fresh.key, &c.server.key).expect("key");
    std::fs::copy(&fresh.cert, &c.server.cert).expect("cert");
    srv.wait_for_log(&["TLS certificate files changed; reloaded"], WAIT);
    let new = client_tls(&new_ca_path, None);
    round_trip(srv.addr, &new, b"after").expect("new certificate served");
    let err = round_trip(srv.addr, &old, b"old trust").expect_err("old CA no longer matches");
    assert!(err.contains("UnknownIssuer"), "{err}");

    // SIGHUP reloads on demand.
    let status = Command::new("kill")
        .args(["-HUP", &srv.pid().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(status.success());
    srv.wait_for_log(&["TLS certificates reloaded"], WAIT);
    round_trip(srv.addr, &new, b"after SIGHUP").expect("served after SIGHUP");
}

#[test]
fn serve_refuses_bad_tls_files_at_start_naming_them() {
    let c = cast();
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = env!("CARGO_BIN_EXE_blobvault");
    let missing = c.pki.path("missing.key");
    let out = Command::new(bin)
        .args(["serve", "--port", "0", "--dir"])
        .arg(dir.path())
        .arg("--tls-cert")
        .arg(&c.server.cert)
        .arg("--tls-key")
        .arg(&missing)
        .output()
        .expect("run serve");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("private key") && stderr.contains(&missing.display().to_string()),
        "{stderr}"
    );
    // A key that does not belong to the certificate.
    let out = Command::new(bin)
        .args(["serve", "--port", "0", "--dir"])
        .arg(dir.path())
        .arg("--tls-cert")
        .arg(&c.server.cert)
        .arg("--tls-key")
        .arg(&c.client.key)
        .output()
        .expect("run serve");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("TLS configuration"), "{stderr}");
    // Flink's switch without files says what to give.
    let out = Command::new(bin)
        .args(["serve", "--port", "0", "--dir"])
        .arg(dir.path())
        .args(["-D", "security.ssl.internal.enabled=true"])
        .output()
        .expect("run serve");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--tls-cert"), "{stderr}");
}

/// A rustls client connection over TCP, handshake done, for tests that must control exactly
/// what goes on the wire.
fn raw_tls(addr: SocketAddr, ca: &Path) -> (rustls::ClientConnection, TcpStream) {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).expect("ca") {
        roots.add(c.expect("cert")).expect("root");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let mut tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(WAIT)).expect("timeout");
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).expect("handshake");
    }
    (conn, tcp)
}

/// The TLS records of what `conn` has queued (plaintext, alerts), to be sent as one write.
fn records(conn: &mut rustls::ClientConnection) -> Vec<u8> {
    let mut wire = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut wire).expect("encode");
    }
    wire
}

/// Plaintext from the server until it closes the connection; the read error if it does not
/// within the socket's timeout.
fn plaintext_until_close(
    conn: &mut rustls::ClientConnection,
    tcp: &mut TcpStream,
) -> std::io::Result<Vec<u8>> {
    let mut reply = Vec::new();
    while conn.read_tls(tcp)? > 0 {
        conn.process_new_packets().expect("records");
        let _ = conn.reader().read_to_end(&mut reply);
    }
    Ok(reply)
}

/// Bytes after a close_notify are ignored and the connection ends; with a single worker, the
/// next client is served at once (a loop on the ignored bytes once held the worker for good).
#[test]
fn bytes_after_close_notify_end_the_connection_and_hold_nothing() {
    let c = cast();
    let srv = c.serve(false, &["-D", "blob.fetch.num-concurrent=1"]);
    let (mut conn, mut tcp) = raw_tls(srv.addr, &c.ca);
    conn.send_close_notify();
    let mut wire = records(&mut conn);
    wire.extend(std::iter::repeat_n(0x17u8, 8192));
    tcp.write_all(&wire).expect("send");
    // The server closes its side: the read ends (rather than timing out).
    let mut rest = Vec::new();
    let _ = tcp.read_to_end(&mut rest);
    round_trip(srv.addr, &c.client_tls(None), b"the single worker is free").expect("served");
}

/// Half a PUT then a FIN in the same segment: the FIN is seen and answered with an error reply
/// at once, as in plaintext, not after the stall timeout.
#[test]
fn a_fin_arriving_with_data_is_seen_through_tls() {
    let c = cast();
    let srv = c.serve(false, &["--stall-timeout", "600", "--idle-timeout", "600"]);
    let (mut conn, mut tcp) = raw_tls(srv.addr, &c.ca);
    // PUT, content-addressed, then a chunk header announcing 100 bytes and only 10 of them.
    let mut put = vec![0u8, 0u8];
    put.extend(100i32.to_le_bytes());
    put.extend([7u8; 10]);
    conn.writer().write_all(&put).expect("plaintext");
    let wire = records(&mut conn);
    tcp.write_all(&wire).expect("send");
    tcp.shutdown(std::net::Shutdown::Write).expect("FIN");
    let reply =
        plaintext_until_close(&mut conn, &mut tcp).expect("no reply before the read timeout");
    assert_eq!(reply.first(), Some(&1u8), "an error reply: {reply:?}");
    srv.wait_for_log(&["Premature end of PUT"], WAIT);
}

/// A close_notify sent with the last request, the TCP connection left open: the request is
/// answered and the connection then closed at once, not at the idle timeout.
#[test]
fn a_close_notify_with_the_last_request_closes_after_the_reply() {
    let c = cast();
    let srv = c.serve(false, &["--idle-timeout", "600"]);
    let (mut conn, mut tcp) = raw_tls(srv.addr, &c.ca);
    let data = b"the last request";
    let mut put = vec![0u8, 0u8];
    put.extend((data.len() as i32).to_le_bytes());
    put.extend(data);
    put.extend((-1i32).to_le_bytes());
    conn.writer().write_all(&put).expect("plaintext");
    conn.send_close_notify();
    let wire = records(&mut conn);
    tcp.write_all(&wire).expect("send");
    let reply =
        plaintext_until_close(&mut conn, &mut tcp).expect("the server kept the connection open");
    // RETURN_OKAY and the content key.
    assert_eq!(reply.first(), Some(&0u8), "{reply:?}");
    assert_eq!(&reply[1..], BlobKey::of(data).as_bytes());
}
