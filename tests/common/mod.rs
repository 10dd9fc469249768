//! Helpers shared by the integration tests: a server on 127.0.0.1:0 over a tempdir store, raw
//! request/response helpers, decoders driven over arbitrary splits, and a seeded PRNG.
#![allow(dead_code)]

pub mod backends;
pub mod logged;
pub mod seaweed;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use blobvault::config::ServerConfig;
use blobvault::protocol::{
    self, Expect, ProtocolError, Request, RequestDecoder, RequestEvent, ResponseDecoder,
    ResponseEvent,
};
use blobvault::store::{BlobEntry, FaultSwitch, StoreStats};
use blobvault::{BlobClient, BlobId, BlobKey, BlobServer, BlobStore, StoreOptions};

/// Safety net only: a test that would hang fails after this long instead. No test waits for it.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// A server over a store in its own temp dir. Field order: the server stops before the dir goes.
pub struct TestServer {
    pub server: BlobServer,
    pub faults: FaultSwitch,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    /// A server whose store does not fsync (fast; durability is not what these tests check).
    pub fn start() -> TestServer {
        Self::start_with(|o| o.durable(false))
    }

    /// A durable store with a fault switch (failures injected with `faults.fail_writes()`).
    pub fn start_durable() -> TestServer {
        Self::start_with(|o| o)
    }

    pub fn start_with(opts: impl FnOnce(StoreOptions) -> StoreOptions) -> TestServer {
        Self::start_configured(opts, ServerConfig::default())
    }

    /// A durable store served with `config` (pool size, timeouts).
    pub fn start_config(config: ServerConfig) -> TestServer {
        Self::start_configured(|o| o, config)
    }

    pub fn start_configured(
        opts: impl FnOnce(StoreOptions) -> StoreOptions,
        config: ServerConfig,
    ) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let faults = FaultSwitch::new();
        let store = opts(StoreOptions::new(dir.path().join("store")).faults(faults.clone()))
            .open()
            .expect("open store");
        let server = BlobServer::start(store, config).expect("start server");
        TestServer {
            server,
            faults,
            dir,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    pub fn store(&self) -> &BlobStore {
        self.server.store()
    }

    pub fn client(&self) -> BlobClient {
        BlobClient::connect_timeout(&self.addr(), IO_TIMEOUT).expect("connect client")
    }

    /// A raw connection with the safety-net timeouts.
    pub fn raw(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr()).expect("connect");
        s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        s.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
        s
    }

    /// One connection: sends `request`, half-closes, reads until the server closes.
    pub fn exchange(&self, request: &[u8]) -> Exchange {
        exchange(self.raw(), request)
    }

    /// What the store holds, for "unchanged by a failed request" checks.
    pub fn snapshot(&self) -> Snapshot {
        snapshot(self.store())
    }

    /// A fresh client can still put and get (content and named) on this server.
    pub fn assert_serves(&self) {
        let mut c = self.client();
        let data = b"still serving after a bad request".to_vec();
        let key = c.put(&data).expect("put after bad input");
        assert_eq!(key, BlobKey::of(&data));
        assert_eq!(c.get_bytes(&BlobId::Content(key)).expect("get"), data);
        let job = blobvault::JobId::from_parts(7, 7);
        c.put_named(job, "alive", &data).expect("named put");
        assert_eq!(
            c.get_bytes(&BlobId::Named(job, "alive".into()))
                .expect("named get"),
            data
        );
    }
}

/// Stores each blob by content over one connection; returns their keys.
pub fn put_all(addr: SocketAddr, blobs: &[&[u8]]) -> Vec<BlobKey> {
    let mut c = BlobClient::connect_timeout(&addr, IO_TIMEOUT).expect("connect client");
    blobs.iter().map(|b| c.put(b).expect("put")).collect()
}

/// The reply to one raw connection.
#[derive(Debug)]
pub struct Exchange {
    /// Every byte the server sent.
    pub reply: Vec<u8>,
    /// How the reply ended: `Ok` on a clean close (EOF), else the read error (e.g. a reset).
    pub end: io::Result<()>,
    /// Whether the whole request could be written (the server may close early).
    pub written: io::Result<()>,
}

impl Exchange {
    /// The reply ended with an orderly close.
    pub fn closed_cleanly(&self) -> bool {
        self.end.is_ok()
    }
}

/// Writes `request` (from a second thread, so that big requests and replies cannot deadlock),
/// half-closes, and reads until the server closes the connection.
pub fn exchange(stream: TcpStream, request: &[u8]) -> Exchange {
    let mut w = stream.try_clone().expect("clone stream");
    let req = request.to_vec();
    let writer = std::thread::spawn(move || {
        let r = w.write_all(&req);
        let _ = w.shutdown(Shutdown::Write);
        r
    });
    let mut s = stream;
    let (reply, end) = read_until_close(&mut s);
    let written = writer.join().expect("writer thread");
    Exchange {
        reply,
        end,
        written,
    }
}

/// Reads until EOF; returns the bytes and how the stream ended.
pub fn read_until_close(s: &mut impl Read) -> (Vec<u8>, io::Result<()>) {
    let mut out = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (out, Ok(())),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                assert!(
                    !matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ),
                    "the server neither answered nor closed within {IO_TIMEOUT:?}"
                );
                return (out, Err(e));
            }
        }
    }
}

/// Checks the shape of one error reply filling all of `reply` (`01`, a sane LE length equal to
/// the rest, a Java serialization stream) and returns the message in it.
pub fn assert_error_reply(reply: &[u8]) -> String {
    assert!(
        reply.len() >= 5,
        "expected an error reply, got {} bytes: {:02x?}",
        reply.len(),
        &reply[..reply.len().min(64)]
    );
    assert_eq!(
        reply[0],
        protocol::RETURN_ERROR,
        "status byte of {reply:02x?}"
    );
    let len = i32::from_le_bytes([reply[1], reply[2], reply[3], reply[4]]);
    assert!(
        (4..=1 << 20).contains(&len),
        "insane error payload length {len}"
    );
    assert_eq!(
        reply.len() - 5,
        len as usize,
        "error payload length field vs bytes received"
    );
    let payload = &reply[5..];
    assert_eq!(&payload[..4], &[0xac, 0xed, 0x00, 0x05], "stream magic");
    protocol::java_error::message(payload)
}

/// Store contents and figures (without the file size, which may grow for other reasons).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub stats: StoreStats,
    pub list: Vec<BlobEntry>,
}

pub fn snapshot(store: &BlobStore) -> Snapshot {
    let mut stats = store.stats().expect("stats");
    stats.file_bytes = 0;
    Snapshot {
        stats,
        list: store.list().expect("list"),
    }
}

/// Hex to bytes, ignoring whitespace.
pub fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert!(digits.len().is_multiple_of(2), "odd hex {s:?}");
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).expect("ascii"), 16).expect("hex digit"))
        .collect()
}

pub fn len32(n: i32) -> [u8; 4] {
    n.to_le_bytes()
}

/// A PUT body the way a Java stream upload may chunk it: one chunk per `sizes` entry (cycled).
pub fn chunked_body(data: &[u8], sizes: &[usize], out: &mut Vec<u8>) {
    let mut rest = data;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes[i % sizes.len()].min(rest.len());
        protocol::encode_chunk(&rest[..n], out);
        rest = &rest[n..];
        i += 1;
    }
    protocol::encode_terminator(out);
}

/// Owned request events, with a body's chunks merged (chunk boundaries depend on the split).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Req {
    Request(Request),
    Body(Vec<u8>),
    End,
}

/// Decodes `parts` (one stream, split as given) into merged events; `Err` carries the events
/// before the protocol error.
pub fn decode_requests<'a>(
    parts: impl IntoIterator<Item = &'a [u8]>,
) -> (Vec<Req>, Result<(), ProtocolError>) {
    let mut dec = RequestDecoder::new();
    let mut events = Vec::new();
    for part in parts {
        let mut pos = 0;
        while pos < part.len() {
            let (used, ev) = match dec.decode(&part[pos..]) {
                Ok(r) => r,
                Err(e) => return (events, Err(e)),
            };
            assert!(used <= part.len() - pos, "consumed more than given");
            pos += used;
            match ev {
                Some(RequestEvent::Request(r)) => events.push(Req::Request(r)),
                Some(RequestEvent::Chunk(d)) => {
                    assert!(!d.is_empty(), "empty chunk event");
                    match events.last_mut() {
                        Some(Req::Body(b)) => b.extend_from_slice(d),
                        _ => events.push(Req::Body(d.to_vec())),
                    }
                }
                Some(RequestEvent::End) => events.push(Req::End),
                None => assert_eq!(pos, part.len(), "no event but input left over"),
            }
        }
    }
    let end = dec.finish();
    (events, end)
}

/// Owned response events, with GET data merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    Key(BlobKey),
    Ok,
    Length(u32),
    Data(Vec<u8>),
    End,
    Error(String),
    /// Bytes after the last expected response (reported once, at the end).
    Trailing(usize),
}

/// Decodes a stream of responses, one per `expects` entry, fed as `parts`.
pub fn decode_responses<'a>(
    expects: &[Expect],
    parts: impl IntoIterator<Item = &'a [u8]>,
) -> (Vec<Resp>, Result<(), ProtocolError>) {
    let mut expects = expects.iter();
    let mut dec = expects.next().map(|e| ResponseDecoder::new(*e));
    let mut events = Vec::new();
    let mut trailing = 0;
    for part in parts {
        let mut pos = 0;
        loop {
            let Some(d) = dec.as_mut() else {
                trailing += part.len() - pos;
                break;
            };
            if d.is_done() {
                dec = expects.next().map(|e| ResponseDecoder::new(*e));
                continue;
            }
            let (used, ev) = match d.decode(&part[pos..]) {
                Ok(r) => r,
                Err(e) => return (events, Err(e)),
            };
            pos += used;
            match ev {
                Some(ResponseEvent::Key(k)) => events.push(Resp::Key(k)),
                Some(ResponseEvent::Ok) => events.push(Resp::Ok),
                Some(ResponseEvent::Length(n)) => events.push(Resp::Length(n)),
                Some(ResponseEvent::Data(x)) => {
                    assert!(!x.is_empty(), "empty data event");
                    match events.last_mut() {
                        Some(Resp::Data(b)) => b.extend_from_slice(x),
                        _ => events.push(Resp::Data(x.to_vec())),
                    }
                }
                Some(ResponseEvent::End) => events.push(Resp::End),
                Some(ResponseEvent::Error(m)) => events.push(Resp::Error(m)),
                None => {
                    assert_eq!(pos, part.len(), "no event but input left over");
                    break;
                }
            }
        }
    }
    // A body of zero bytes left ends without more input.
    while let Some(d) = dec.as_mut() {
        if d.is_done() {
            dec = expects.next().map(|e| ResponseDecoder::new(*e));
            continue;
        }
        match d.decode(&[]) {
            Ok((_, Some(ResponseEvent::End))) => events.push(Resp::End),
            Ok(_) => break,
            Err(e) => return (events, Err(e)),
        }
    }
    if trailing > 0 {
        events.push(Resp::Trailing(trailing));
    }
    let end = match dec {
        None => Ok(()),
        Some(d) => d.finish(),
    };
    (events, end)
}

/// Every way of cutting `bytes` in two, and byte by byte: all must give `expected`.
pub fn for_every_split(bytes: &[u8], mut check: impl FnMut(Vec<&[u8]>, &str)) {
    check(vec![bytes], "whole");
    for cut in 0..=bytes.len() {
        let (a, b) = bytes.split_at(cut);
        check(vec![a, b], &format!("split at {cut}"));
    }
    check(bytes.chunks(1).collect(), "byte by byte");
}

/// A small seeded PRNG (xorshift64*): deterministic test data without new dependencies.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-ish in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

/// Which response each request of a decoded request stream gets.
pub fn expects_of(events: &[Req]) -> Vec<Expect> {
    events
        .iter()
        .filter_map(|e| match e {
            Req::Request(Request::Put(blobvault::PutTarget::Content)) => Some(Expect::PutContent),
            Req::Request(Request::Put(_)) => Some(Expect::PutNamed),
            Req::Request(Request::Get(_)) => Some(Expect::Get),
            Req::Request(Request::Delete(_)) => Some(Expect::Delete),
            _ => None,
        })
        .collect()
}

/// A `blobvault serve` child process (the built binary); SIGKILLed when dropped.
pub struct ServeProcess {
    pub child: std::process::Child,
    pub addr: SocketAddr,
}

impl ServeProcess {
    /// Starts `blobvault serve ARGS…` (with `--port 0` unless ARGS give a port) and waits for
    /// its `listening on` line.
    pub fn spawn<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> ServeProcess {
        Self::spawn_with(args, std::process::Stdio::null(), &[])
    }

    /// Like [`spawn`](Self::spawn), with the server's log (stderr) appended to `log`.
    pub fn spawn_logging<S: AsRef<std::ffi::OsStr>>(
        args: &[S],
        log: &std::path::Path,
    ) -> ServeProcess {
        Self::spawn_logging_env(args, log, &[])
    }

    /// Like [`spawn_logging`](Self::spawn_logging), with `env` set for the server (`RUST_LOG`).
    pub fn spawn_logging_env<S: AsRef<std::ffi::OsStr>>(
        args: &[S],
        log: &std::path::Path,
        env: &[(&str, &str)],
    ) -> ServeProcess {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open the server's log file");
        Self::spawn_with(args, file.into(), env)
    }

    fn spawn_with<S: AsRef<std::ffi::OsStr>>(
        args: &[S],
        stderr: std::process::Stdio,
        env: &[(&str, &str)],
    ) -> ServeProcess {
        use std::io::BufRead;
        // `serve` binds 6124 by default; tests never rely on that port being free.
        let given = |flag: &str| {
            args.iter()
                .any(|a| a.as_ref().to_string_lossy().starts_with(flag))
        };
        let any_port: &[&str] = if given("--port") || given("-p") || given("blob.server.port") {
            &[]
        } else {
            &["--port", "0"]
        };
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_blobvault"))
            .arg("serve")
            .args(any_port)
            .args(args)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn blobvault serve");
        let mut line = String::new();
        io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read the listening line");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .expect("address");
        ServeProcess { child, addr }
    }

    /// SIGKILL, and wait until the process is gone.
    pub fn kill(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        self.stop();
    }
}
