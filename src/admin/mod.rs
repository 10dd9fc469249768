//! The admin endpoint (`serve --metrics ADDR`): a small HTTP/1.1 server, apart from the BLOB
//! port, answering
//! - `GET /metrics`: every metric in Prometheus' text format (`expose.rs`);
//! - `GET /healthz` (also `/healthz/ready`): 200 `ready` when the store is open, its writer
//!   thread alive, it is not out of space, its last recovery put did not fail and its recovery
//!   store (if any) answers, else 503 with the reason;
//!   `GET /healthz/live`: 200 `live` as long as the endpoint answers;
//! - `GET /stat`: the store's figures as one JSON object (what `blobvault stat --metrics`
//!   prints);
//! - `GET /blobs`: every blob, one JSON object per line, then `{"end":true,"blobs":N}`, streamed
//!   a page at a time as the client takes it (what `blobvault ls --metrics` prints).
//!
//! Hostile or broken clients cannot reach the BLOB port through it, nor make it grow: it is one
//! thread of its own, a readiness loop (mio) over at most [`MAX_CONNECTIONS`] connections (when
//! all are taken, a newcomer evicts the oldest one still without a complete request head, so
//! idle sockets cannot lock probes out; if every slot is sending a reply the newcomer is closed),
//! a request head of at most [`MAX_HEAD`] bytes (parsed by `httparse`, hyper's parser; larger
//! gets 431), deadlines for the first byte ([`FIRST_BYTE_TIMEOUT`]), the whole head
//! ([`HEAD_TIMEOUT`]) and any pause in taking the reply ([`STALL_TIMEOUT`]), one request per
//! connection; after the reply, input the client sent beyond its head is drained (bounded in
//! time and bytes) before closing, so the close does not reset the connection under the reply. Memory is bounded by those numbers: a connection holds its head buffer and one
//! page of reply.
//!
//! Why not an HTTP server crate: `tiny_http` (0.12) starts a thread per connection with no
//! limit, reads header lines of any length, and has no read timeout; hyper brings an async
//! runtime for four read-only pages. The parser is the part worth borrowing, and it is.

mod client;
mod expose;

pub use client::{AdminClientError, ListedBlob, fetch, parse_entry, parse_flat_json};

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use prometheus_client::registry::Registry;

use crate::cache::BlobCache;
use crate::json::json_str;
use crate::key::BlobId;
use crate::library::LibraryCacheManager;
use crate::server::ServerProbe;
use crate::store::{BlobEntry, BlobStore, ListCursor};

/// Connections served at once; a newcomer beyond them evicts the oldest connection whose request
/// head is incomplete, or is closed if every slot is replying.
pub const MAX_CONNECTIONS: usize = 32;
/// Largest request head (request line and headers).
pub const MAX_HEAD: usize = 8 * 1024;
/// Headers per request at most.
const MAX_HEADERS: usize = 32;
/// Time from accept to the first byte of the request (a probe sends its head at once).
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(2);
/// Time from accept to a complete request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest pause of a client taking its reply.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// After a reply, input the client sent beyond its request head is read and dropped for this
/// long at most (or [`DRAIN_MAX`] bytes) before closing: closing with unread input makes the
/// kernel reset the connection, discarding reply bytes not yet delivered.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// Bytes drained at most after a reply.
const DRAIN_MAX: usize = 256 * 1024;
/// Blobs per page of `/blobs` (one read transaction each).
const LIST_PAGE: usize = 256;
/// A readiness check (which may ask the recovery store) is reused for this long.
const HEALTH_TTL: Duration = Duration::from_secs(1);

const LISTENER: Token = Token(usize::MAX - 1);
const WAKE: Token = Token(usize::MAX);

/// Errors starting the admin endpoint.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The address could not be bound.
    #[error("cannot bind the metrics endpoint to {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// Starting its thread or readiness loop failed.
    #[error("cannot start the metrics endpoint: {0}")]
    Io(#[from] io::Error),
}

/// What the endpoint reports on: a server (with its store), or a store alone, plus an embedded
/// cache and library manager.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    server: Option<ServerProbe>,
    store: Option<BlobStore>,
    cache: Option<BlobCache>,
    library: Option<Arc<LibraryCacheManager>>,
}

impl Sources {
    /// Nothing yet.
    pub fn new() -> Sources {
        Sources::default()
    }

    /// A BLOB server and its store.
    pub fn server(mut self, probe: ServerProbe) -> Sources {
        self.store = Some(probe.store().clone());
        self.server = Some(probe);
        self
    }

    /// A store without a server (an embedder's).
    pub fn store(mut self, store: BlobStore) -> Sources {
        self.store = Some(store);
        self
    }

    /// A worker-side cache.
    pub fn cache(mut self, cache: BlobCache) -> Sources {
        self.cache = Some(cache);
        self
    }

    /// A library-cache manager.
    pub fn library(mut self, library: Arc<LibraryCacheManager>) -> Sources {
        self.library = Some(library);
        self
    }
}

/// The running endpoint. Dropping it stops it.
pub struct AdminServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for AdminServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl AdminServer {
    /// Binds `addr` and serves `sources` from a thread of its own.
    pub fn start(addr: SocketAddr, sources: Sources) -> Result<AdminServer, AdminError> {
        let mut listener =
            TcpListener::bind(addr).map_err(|source| AdminError::Bind { addr, source })?;
        let local = listener.local_addr()?;
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
        let stop = Arc::new(AtomicBool::new(false));
        let mut lp = Loop {
            poll,
            listener,
            conns: (0..MAX_CONNECTIONS).map(|_| None).collect(),
            registry: expose::registry(sources.clone()),
            sources,
            health: None,
            stop: Arc::clone(&stop),
        };
        let thread = std::thread::Builder::new()
            .name("blobvault-admin".into())
            .spawn(move || lp.run())?;
        tracing::info!(addr = %local, "metrics endpoint listening (/metrics, /healthz, /stat, /blobs)");
        Ok(AdminServer {
            addr: local,
            stop,
            waker,
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving and joins the thread. Idempotent.
    pub fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// What a connection is doing.
enum State {
    /// Reading the request head, accepted `since`.
    Head { buf: Vec<u8>, since: Instant },
    /// Sending the reply; `more` produces the rest of a streamed one.
    Reply {
        out: Vec<u8>,
        pos: usize,
        more: Option<Listing>,
        last_progress: Instant,
    },
    /// Reply sent and the write side shut: reading what the client still sends until it
    /// closes, for at most DRAIN_TIMEOUT and DRAIN_MAX bytes.
    Drain { since: Instant, read: usize },
}

struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    state: State,
}

/// A `/blobs` reply under way.
struct Listing {
    cursor: ListCursor,
    sent: u64,
}

struct Loop {
    poll: Poll,
    listener: TcpListener,
    conns: Vec<Option<Conn>>,
    registry: Registry,
    sources: Sources,
    health: Option<(Instant, Result<(), String>)>,
    stop: Arc<AtomicBool>,
}

impl Loop {
    fn run(&mut self) {
        let mut events = Events::with_capacity(64);
        while !self.stop.load(Ordering::SeqCst) {
            if let Err(e) = self
                .poll
                .poll(&mut events, Some(Duration::from_millis(250)))
            {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(error = %e, "metrics endpoint's readiness wait failed; it stops");
                return;
            }
            for ev in events.iter() {
                match ev.token() {
                    WAKE => {}
                    LISTENER => self.accept(),
                    Token(slot) => self.turn(slot),
                }
            }
            self.sweep(Instant::now());
        }
    }

    fn accept(&mut self) {
        loop {
            let (mut stream, peer) = match self.listener.accept() {
                Ok(c) => c,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!(error = %e, "metrics endpoint: accept failed");
                    return;
                }
            };
            let Some(slot) = self.free_slot() else {
                // Every slot is sending a reply: closed at once, so the backlog drains.
                tracing::debug!(%peer, "metrics endpoint busy; connection closed");
                continue;
            };
            if self
                .poll
                .registry()
                .register(&mut stream, Token(slot), Interest::READABLE)
                .is_err()
            {
                continue;
            }
            self.conns[slot] = Some(Conn {
                stream,
                peer,
                state: State::Head {
                    buf: Vec::new(),
                    since: Instant::now(),
                },
            });
            // Bytes may have arrived with the connection.
            self.turn(slot);
        }
    }

    /// A free slot; when none, the slot of the oldest connection still without a complete
    /// request head, evicted (idle sockets must not keep probes out).
    fn free_slot(&mut self) -> Option<usize> {
        if let Some(slot) = self.conns.iter().position(Option::is_none) {
            return Some(slot);
        }
        let (slot, peer) = self
            .conns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| match c.as_ref().map(|c| (&c.state, c.peer)) {
                Some((State::Head { since, .. } | State::Drain { since, .. }, peer)) => {
                    Some((i, *since, peer))
                }
                _ => None,
            })
            .min_by_key(|&(_, since, _)| since)
            .map(|(i, _, peer)| (i, peer))?;
        tracing::debug!(%peer, "metrics endpoint full; the oldest connection without a request evicted");
        self.close(slot);
        Some(slot)
    }

    fn close(&mut self, slot: usize) {
        if let Some(mut c) = self.conns.get_mut(slot).and_then(Option::take) {
            let _ = self.poll.registry().deregister(&mut c.stream);
        }
    }

    fn sweep(&mut self, now: Instant) {
        for slot in 0..self.conns.len() {
            let late = match self.conns[slot].as_ref().map(|c| &c.state) {
                Some(State::Head { buf, since }) => {
                    let waited = now.duration_since(*since);
                    waited >= HEAD_TIMEOUT || (buf.is_empty() && waited >= FIRST_BYTE_TIMEOUT)
                }
                Some(State::Reply { last_progress, .. }) => {
                    now.duration_since(*last_progress) >= STALL_TIMEOUT
                }
                Some(State::Drain { since, .. }) => now.duration_since(*since) >= DRAIN_TIMEOUT,
                None => false,
            };
            if late {
                if let Some(c) = &self.conns[slot] {
                    tracing::debug!(peer = %c.peer, "metrics endpoint: client too slow; closed");
                }
                self.close(slot);
            }
        }
    }

    /// Moves a connection along as far as its socket allows.
    fn turn(&mut self, slot: usize) {
        let Some(mut conn) = self.conns.get_mut(slot).and_then(Option::take) else {
            return;
        };
        let keep = match &mut conn.state {
            State::Head { buf, .. } => match read_head(&mut conn.stream, buf) {
                Head::Wait => true,
                Head::Gone => false,
                Head::Done(reply) => {
                    let reply = match reply {
                        Ok((method, path)) => self.respond(&method, &path, &conn.peer),
                        Err(r) => r,
                    };
                    conn.state = State::Reply {
                        out: reply.0,
                        pos: 0,
                        more: reply.1,
                        last_progress: Instant::now(),
                    };
                    let _ = self.poll.registry().reregister(
                        &mut conn.stream,
                        Token(slot),
                        Interest::READABLE | Interest::WRITABLE,
                    );
                    self.write(&mut conn)
                }
            },
            State::Reply { .. } => self.write(&mut conn),
            State::Drain { read, .. } => drain(&mut conn.stream, read),
        };
        if keep {
            self.conns[slot] = Some(conn);
        } else {
            let _ = self.poll.registry().deregister(&mut conn.stream);
        }
    }

    /// Writes until done (false: close) or the socket would block (true).
    fn write(&mut self, conn: &mut Conn) -> bool {
        let State::Reply {
            out,
            pos,
            more,
            last_progress,
        } = &mut conn.state
        else {
            return false;
        };
        loop {
            if *pos == out.len() {
                out.clear();
                *pos = 0;
                match more {
                    Some(listing) => {
                        if !self.next_page(listing, out) {
                            *more = None;
                        }
                        if out.is_empty() {
                            continue;
                        }
                    }
                    None => {
                        let _ = conn.stream.shutdown(std::net::Shutdown::Write);
                        let mut read = 0;
                        let keep = drain(&mut conn.stream, &mut read);
                        conn.state = State::Drain {
                            since: Instant::now(),
                            read,
                        };
                        return keep;
                    }
                }
            }
            match conn.stream.write(&out[*pos..]) {
                Ok(0) => return false,
                Ok(n) => {
                    *pos += n;
                    *last_progress = Instant::now();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }

    /// Appends the next page of a listing to `out`; false once the listing is complete (its end
    /// line written) or failed (then the end line is missing, which the client reports).
    fn next_page(&self, listing: &mut Listing, out: &mut Vec<u8>) -> bool {
        let Some(store) = &self.sources.store else {
            return false;
        };
        match store.list_page(&listing.cursor, LIST_PAGE) {
            Ok((entries, next)) => {
                for e in &entries {
                    entry_json(e, out);
                }
                listing.sent += entries.len() as u64;
                match next {
                    Some(c) => {
                        listing.cursor = c;
                        true
                    }
                    None => {
                        out.extend_from_slice(
                            format!("{{\"end\":true,\"blobs\":{}}}\n", listing.sent).as_bytes(),
                        );
                        false
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint: listing the store failed");
                false
            }
        }
    }

    fn readiness(&mut self) -> Result<(), String> {
        if self
            .sources
            .server
            .as_ref()
            .is_some_and(ServerProbe::is_stopped)
        {
            return Err("the BLOB server has stopped".into());
        }
        let Some(store) = &self.sources.store else {
            return Ok(());
        };
        // Local checks each time; the recovery store's answer (maybe over the network) is
        // reused for a second.
        store.readiness_local()?;
        if let Some((at, r)) = &self.health
            && at.elapsed() < HEALTH_TTL
        {
            return r.clone();
        }
        let r = store.recovery_answers();
        self.health = Some((Instant::now(), r.clone()));
        r
    }

    fn respond(&mut self, method: &str, path: &str, peer: &SocketAddr) -> Reply {
        if method != "GET" && method != "HEAD" {
            return reply(
                405,
                "text/plain",
                b"only GET and HEAD\n".to_vec(),
                "Allow: GET, HEAD\r\n",
            );
        }
        let head_only = method == "HEAD";
        let path = path.split('?').next().unwrap_or("");
        let (status, ctype, body): (u16, &str, Vec<u8>) = match path {
            "/metrics" => match expose::render(&self.registry) {
                Ok(text) => (200, expose::CONTENT_TYPE, text.into_bytes()),
                Err(_) => (500, "text/plain", b"cannot encode the metrics\n".to_vec()),
            },
            "/healthz" | "/healthz/ready" => match self.readiness() {
                Ok(()) => (200, "text/plain", b"ready\n".to_vec()),
                Err(why) => {
                    tracing::warn!(%peer, reason = %why, "readiness check failed");
                    (
                        503,
                        "text/plain",
                        format!("not ready: {why}\n").into_bytes(),
                    )
                }
            },
            "/healthz/live" => (200, "text/plain", b"live\n".to_vec()),
            "/stat" => match self.stat_json() {
                Some(j) => (200, "application/json", j.into_bytes()),
                None => (
                    404,
                    "text/plain",
                    b"no store behind this endpoint\n".to_vec(),
                ),
            },
            "/blobs" if self.sources.store.is_some() => {
                let mut r = reply_head(200, "application/x-ndjson", None, "");
                if !head_only {
                    r.1 = Some(Listing {
                        cursor: ListCursor::Start,
                        sent: 0,
                    });
                }
                return r;
            }
            "/" => (
                200,
                "text/plain",
                b"blobvault: /metrics /healthz /healthz/live /stat /blobs\n".to_vec(),
            ),
            _ => (
                404,
                "text/plain",
                format!("no page {path}; try /metrics\n").into_bytes(),
            ),
        };
        let mut r = reply_head(status, ctype, Some(body.len()), "");
        if !head_only {
            r.0.extend_from_slice(&body);
        }
        r
    }

    fn stat_json(&self) -> Option<String> {
        let store = self.sources.store.as_ref()?;
        let s = store.metrics();
        let count = |v: u64| {
            if s.counted {
                v.to_string()
            } else {
                "null".into()
            }
        };
        let mut j = format!(
            "{{\"dir\":{},\"content_blobs\":{},\"named_blobs\":{},\"contents\":{},\
             \"payload_bytes\":{},\"chunk_size\":{},\"file_bytes\":{},\"wal_bytes\":{},\
             \"out_of_space\":{}",
            json_str(&store.dir().display().to_string()),
            count(s.content_blobs),
            count(s.named_blobs),
            count(s.contents),
            count(s.payload_bytes),
            s.chunk_size,
            s.file_bytes,
            s.wal_bytes,
            s.out_of_space,
        );
        if let Some(p) = &self.sources.server {
            let m = p.metrics();
            let total: u64 = m.requests.iter().flatten().sum();
            j.push_str(&format!(
                ",\"connections_open\":{},\"requests\":{total}",
                m.connections_open
            ));
        }
        j.push_str("}\n");
        Some(j)
    }
}

/// A reply: its bytes so far, and the listing that streams the rest.
type Reply = (Vec<u8>, Option<Listing>);

fn reply(status: u16, ctype: &str, body: Vec<u8>, extra: &str) -> Reply {
    let mut r = reply_head(status, ctype, Some(body.len()), extra);
    r.0.extend_from_slice(&body);
    r
}

/// A status line and headers; without a length, the body ends when the connection closes.
fn reply_head(status: u16, ctype: &str, len: Option<usize>, extra: &str) -> Reply {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    };
    let len = len.map_or(String::new(), |n| format!("Content-Length: {n}\r\n"));
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n{len}{extra}Connection: close\r\n\r\n"
    );
    (head.into_bytes(), None)
}

/// Reads and drops what the client sends after its request; false (close) once it has closed
/// its side, failed, or sent more than DRAIN_MAX.
fn drain(stream: &mut TcpStream, read: &mut usize) -> bool {
    let mut chunk = [0u8; 4096];
    loop {
        if *read >= DRAIN_MAX {
            return false;
        }
        match stream.read(&mut chunk) {
            Ok(0) => return false,
            Ok(n) => *read += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

/// How reading a request head went.
enum Head {
    /// More to come.
    Wait,
    /// The peer left, or the socket failed: close without a reply.
    Gone,
    /// The head is complete (method and path), or the reply that refuses it.
    Done(Result<(String, String), Reply>),
}

fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Head {
    let mut chunk = [0u8; 2048];
    loop {
        let room = MAX_HEAD - buf.len();
        if room == 0 {
            return Head::Done(Err(reply(
                431,
                "text/plain",
                format!("request head over {MAX_HEAD} bytes\n").into_bytes(),
                "",
            )));
        }
        let want = room.min(chunk.len());
        match stream.read(&mut chunk[..want]) {
            Ok(0) => return Head::Gone,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Head::Wait,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Head::Gone,
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(_)) => {
                let method = req.method.unwrap_or("").to_string();
                let path = req.path.unwrap_or("").to_string();
                return Head::Done(Ok((method, path)));
            }
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => {
                return Head::Done(Err(reply(
                    431,
                    "text/plain",
                    format!("more than {MAX_HEADERS} headers\n").into_bytes(),
                    "",
                )));
            }
            Err(e) => {
                return Head::Done(Err(reply(
                    400,
                    "text/plain",
                    format!("bad HTTP request: {e}\n").into_bytes(),
                    "",
                )));
            }
        }
    }
}

/// One blob as a line of JSON, as `blobvault ls --json` prints it.
fn entry_json(e: &BlobEntry, out: &mut Vec<u8>) {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(128);
    let _ = write!(s, "{{\"key\":\"{}\",\"size\":{}", e.key, e.len);
    if let BlobId::Named(j, n) = &e.id {
        let _ = write!(s, ",\"job\":\"{j}\",\"name\":{}", json_str(n));
    }
    s.push_str("}\n");
    out.extend_from_slice(s.as_bytes());
}
