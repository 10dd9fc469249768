//! The BLOB server: one acceptor thread and a fixed pool of workers fed through a bounded
//! channel. Each connection is a loop around the sans-IO [`RequestDecoder`].

use std::collections::HashMap;
use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, SendTimeoutError, bounded};

use crate::config::{MAX_BACKLOG, MAX_NUM_CONCURRENT, ServerConfig};
use crate::key::BlobId;
use crate::protocol::{self, ProtocolError, PutTarget, Request, RequestDecoder, RequestEvent};
use crate::store::{BlobReader, BlobStore, StoreError, Upload};

/// Errors starting a server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot bind {addr} (ports {first}-{last}): {source}")]
    Bind {
        addr: std::net::IpAddr,
        first: u16,
        last: u16,
        source: io::Error,
    },
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

/// Pause after a failed accept, and how often a full queue re-checks for shutdown.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);

/// Input buffer per connection; also the most a GET reply is coalesced into one write.
const IO_BUF: usize = 128 * 1024;

struct Ctx {
    store: BlobStore,
    config: ServerConfig,
    shutdown: AtomicBool,
    conns: Mutex<HashMap<u64, TcpStream>>,
    next_conn: AtomicU64,
    drop_next: AtomicUsize,
}

/// A running server. Dropping it shuts it down.
pub struct BlobServer {
    ctx: Arc<Ctx>,
    addr: SocketAddr,
    acceptor: Option<JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for BlobServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl BlobServer {
    /// Binds and starts serving `store`.
    pub fn start(store: BlobStore, config: ServerConfig) -> Result<BlobServer, ServerError> {
        let listener = bind(&config)?;
        let addr = listener.local_addr()?;
        let mut config = config;
        let (workers, backlog) = (
            config.num_concurrent.clamp(1, MAX_NUM_CONCURRENT),
            config.backlog.clamp(1, MAX_BACKLOG),
        );
        if (workers, backlog) != (config.num_concurrent, config.backlog) {
            tracing::warn!(
                workers,
                backlog,
                "worker count or backlog out of range; clamped"
            );
            (config.num_concurrent, config.backlog) = (workers, backlog);
        }
        let (tx, rx) = bounded::<(u64, TcpStream)>(config.backlog);
        let ctx = Arc::new(Ctx {
            store,
            config,
            shutdown: AtomicBool::new(false),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
            drop_next: AtomicUsize::new(0),
        });
        let mut workers = Vec::with_capacity(ctx.config.num_concurrent);
        for i in 0..ctx.config.num_concurrent {
            let (ctx, rx) = (Arc::clone(&ctx), rx.clone());
            workers.push(
                std::thread::Builder::new()
                    .name(format!("blobvault-worker-{i}"))
                    .spawn(move || worker(ctx, rx))?,
            );
        }
        let actx = Arc::clone(&ctx);
        let acceptor = std::thread::Builder::new()
            .name("blobvault-acceptor".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if actx.shutdown.load(Ordering::SeqCst) {
                        break;
                    }
                    let stream = match conn {
                        Ok(s) => s,
                        Err(e) => {
                            // Out of descriptors (or similar): wait for connections to end
                            // rather than spin on a failing accept.
                            tracing::warn!(error = %e, "accept failed");
                            std::thread::sleep(ACCEPT_BACKOFF);
                            continue;
                        }
                    };
                    if actx
                        .drop_next
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok()
                    {
                        let _ = stream.shutdown(Shutdown::Both);
                        continue;
                    }
                    let id = actx.next_conn.fetch_add(1, Ordering::Relaxed);
                    if let (Ok(clone), Ok(mut conns)) = (stream.try_clone(), actx.conns.lock()) {
                        conns.insert(id, clone);
                    }
                    // Waits while the backlog is full (the kernel queue then holds the rest),
                    // but notices a shutdown.
                    let mut item = (id, stream);
                    loop {
                        match tx.send_timeout(item, ACCEPT_BACKOFF) {
                            Ok(()) => break,
                            Err(SendTimeoutError::Timeout(back))
                                if !actx.shutdown.load(Ordering::SeqCst) =>
                            {
                                item = back
                            }
                            Err(_) => return,
                        }
                    }
                }
            })?;
        tracing::info!(%addr, workers = ctx.config.num_concurrent, "BLOB server listening");
        Ok(BlobServer {
            ctx,
            addr,
            acceptor: Some(acceptor),
            workers,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn store(&self) -> &BlobStore {
        &self.ctx.store
    }

    /// Connections accepted and not yet closed (served or waiting for a worker).
    pub fn active_connections(&self) -> usize {
        self.ctx.conns.lock().map(|c| c.len()).unwrap_or(0)
    }

    /// Closes every open connection (as Flink's tests do to cut a GET mid-stream).
    pub fn close_connections(&self) {
        if let Ok(conns) = self.ctx.conns.lock() {
            for s in conns.values() {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }

    /// Fault injection: the next `n` connections are accepted and closed at once.
    pub fn drop_next_connections(&self, n: usize) {
        self.ctx.drop_next.store(n, Ordering::SeqCst);
    }

    /// Stops accepting, closes every connection, and joins all threads. Idempotent.
    pub fn shutdown(&mut self) {
        if self.ctx.shutdown.swap(true, Ordering::SeqCst) {
            return;
        }
        // Wake the acceptor out of accept().
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let _ = TcpStream::connect(wake);
        // Close connections first: workers blocked on them free up, and so does an acceptor
        // waiting for a queue slot.
        self.close_connections();
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        self.close_connections();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        tracing::info!(addr = %self.addr, "BLOB server stopped");
    }
}

impl Drop for BlobServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn bind(config: &ServerConfig) -> Result<TcpListener, ServerError> {
    let mut last_err = None;
    for port in config.ports.first..=config.ports.last {
        match TcpListener::bind((config.bind, port)) {
            Ok(l) => return Ok(l),
            Err(e) => last_err = Some(e),
        }
    }
    Err(ServerError::Bind {
        addr: config.bind,
        first: config.ports.first,
        last: config.ports.last,
        source: last_err.unwrap_or_else(|| io::Error::other("empty port range")),
    })
}

fn worker(ctx: Arc<Ctx>, rx: Receiver<(u64, TcpStream)>) {
    for (id, stream) in rx.iter() {
        if !ctx.shutdown.load(Ordering::SeqCst) {
            let peer = stream
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "?".into());
            // A bug in one connection must not cost the pool a worker.
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                Connection::new(&ctx, stream, &peer).serve()
            }));
            if r.is_err() {
                tracing::error!(peer, "connection handler panicked; connection closed");
            }
        }
        if let Ok(mut conns) = ctx.conns.lock() {
            conns.remove(&id);
        }
    }
}

/// Why a connection ends.
enum Close {
    /// Clean end between requests, or an I/O failure: nothing more can or need be sent.
    Quiet,
    /// An unknown op byte: no reply to it, but the replies to the requests before it still go
    /// out before the close.
    Silent,
    /// Send the replies gathered so far, then this error reply, then close.
    Error(String),
    /// Like `Error`, for a failure already logged once for many requests (a full disk).
    Expected(String),
}

struct Connection<'a> {
    ctx: &'a Ctx,
    stream: TcpStream,
    peer: &'a str,
    out: Vec<u8>,
    upload: Option<(Upload, PutTarget)>,
}

impl<'a> Connection<'a> {
    fn new(ctx: &'a Ctx, stream: TcpStream, peer: &'a str) -> Self {
        Connection {
            ctx,
            stream,
            peer,
            out: Vec::with_capacity(IO_BUF),
            upload: None,
        }
    }

    fn serve(mut self) {
        let _ = self.stream.set_nodelay(true);
        let _ = self
            .stream
            .set_read_timeout(Some(self.ctx.config.read_timeout));
        let _ = self
            .stream
            .set_write_timeout(Some(self.ctx.config.write_timeout));
        tracing::debug!(peer = self.peer, "connection opened");
        let close = self.run();
        // A PUT cut short: its spooled bytes go before the client hears of the failure.
        self.upload = None;
        match close {
            Close::Quiet => {}
            Close::Silent => self.close_gracefully(),
            Close::Expected(msg) => {
                tracing::debug!(peer = self.peer, error = %msg, "request failed; sending error reply");
                protocol::encode_error(&msg, &mut self.out);
                self.close_gracefully();
            }
            Close::Error(msg) => {
                tracing::warn!(peer = self.peer, error = %msg, "request failed; sending error reply");
                // `out` holds only whole replies to the requests before the failing one: they
                // go first, as the original answered each request before reading the next.
                protocol::encode_error(&msg, &mut self.out);
                self.close_gracefully();
            }
        }
        tracing::debug!(peer = self.peer, "connection closed");
    }

    /// Sends what is pending, then closes so that it arrives: unread input would otherwise
    /// turn the close into a reset that destroys the replies.
    fn close_gracefully(&mut self) {
        let _ = self.stream.write_all(&self.out);
        self.out.clear();
        let _ = self.stream.shutdown(Shutdown::Write);
        self.drain_briefly();
    }

    /// Reads (and drops) what the client still sends for a moment, so that the error reply is
    /// not destroyed by a reset.
    fn drain_briefly(&mut self) {
        let _ = self
            .stream
            .set_read_timeout(Some(std::time::Duration::from_millis(200)));
        let mut sink = [0u8; 8192];
        let mut total = 0usize;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        while total < 16 * 1024 * 1024 && std::time::Instant::now() < deadline {
            match self.stream.read(&mut sink) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    }

    fn run(&mut self) -> Close {
        let mut dec = RequestDecoder::new();
        let mut buf = vec![0u8; IO_BUF];
        loop {
            let n = match self.stream.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let timeout = matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    );
                    if timeout {
                        tracing::warn!(
                            peer = self.peer,
                            idle = dec.is_idle(),
                            "read timeout; closing connection"
                        );
                    } else if !self.ctx.shutdown.load(Ordering::SeqCst) {
                        tracing::debug!(peer = self.peer, error = %e, "read failed");
                    }
                    return Close::Quiet;
                }
            };
            if n == 0 {
                return match dec.finish() {
                    Ok(()) => Close::Quiet,
                    Err(e) => Close::Error(e.to_string()),
                };
            }
            let mut pos = 0;
            while pos < n {
                let (used, event) = match dec.decode(&buf[pos..n]) {
                    Ok(r) => r,
                    Err(ProtocolError::UnknownOperation(op)) => {
                        tracing::warn!(
                            peer = self.peer,
                            op,
                            "unknown operation; closing connection without reply"
                        );
                        return Close::Silent;
                    }
                    Err(e) => return Close::Error(e.to_string()),
                };
                pos += used;
                if let Some(ev) = event
                    && let Err(close) = self.handle(ev)
                {
                    return close;
                }
                if self.out.len() >= IO_BUF
                    && let Err(e) = self.flush()
                {
                    tracing::debug!(peer = self.peer, error = %e, "write failed");
                    return Close::Quiet;
                }
            }
            // Half a request: its sender may be waiting for our ACK before it sends the rest.
            if !dec.is_idle() {
                quick_ack(&self.stream);
            }
            // Everything received is handled: send the replies gathered meanwhile in one write.
            if let Err(e) = self.flush() {
                tracing::debug!(peer = self.peer, error = %e, "write failed");
                return Close::Quiet;
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out)?;
            self.out.clear();
        }
        Ok(())
    }

    fn handle(&mut self, ev: RequestEvent<'_>) -> Result<(), Close> {
        match ev {
            RequestEvent::Request(Request::Put(target)) => {
                self.upload = Some((self.ctx.store.upload(), target));
            }
            RequestEvent::Chunk(data) => {
                if let Some((up, _)) = self.upload.as_mut() {
                    up.write(data).map_err(|e| match e.is_no_space() {
                        true => Close::Expected(format!("PUT failed: {e}")),
                        false => Close::Error(e.to_string()),
                    })?;
                }
            }
            RequestEvent::End => {
                let Some((up, target)) = self.upload.take() else {
                    return Err(Close::Error("body end without a PUT".into()));
                };
                let spooled = up.finish().map_err(|e| Close::Error(e.to_string()))?;
                let named = matches!(target, PutTarget::Named(..));
                let key = self.ctx.store.commit(spooled, target).map_err(|e| {
                    // A full disk is logged once per episode by the store, not per request.
                    if e.is_no_space() {
                        return Close::Expected(format!("PUT failed: {e}"));
                    }
                    tracing::error!(peer = self.peer, error = %e, "PUT failed");
                    Close::Error(format!("PUT failed: {e}"))
                })?;
                if named {
                    protocol::encode_ok(&mut self.out);
                } else {
                    protocol::encode_put_key(&key, &mut self.out);
                }
            }
            RequestEvent::Request(Request::Get(id)) => self.get(&id)?,
            RequestEvent::Request(Request::Delete(target)) => {
                self.ctx.store.delete(target.clone()).map_err(|e| {
                    tracing::error!(peer = self.peer, error = %e, "DELETE failed");
                    Close::Error(format!("DELETE failed: {e}"))
                })?;
                protocol::encode_ok(&mut self.out);
            }
        }
        Ok(())
    }

    fn get(&mut self, id: &BlobId) -> Result<(), Close> {
        let reader = match self.ctx.store.get(id) {
            Ok(Some(r)) => r,
            Ok(None) => match self.recover(id)? {
                Some(r) => r,
                None => return Err(Close::Error(format!("Cannot find required BLOB {id}"))),
            },
            Err(e) => {
                tracing::error!(peer = self.peer, error = %e, "GET failed");
                return Err(Close::Error(format!("GET failed: {e}")));
            }
        };
        self.send_blob(reader)
    }

    /// A local miss: read-repair from the recovery store, if there is one.
    fn recover(&mut self, id: &BlobId) -> Result<Option<BlobReader>, Close> {
        match crate::recovery::read_repair(&self.ctx.store, id) {
            Ok(r) => Ok(r),
            Err(e) => {
                tracing::error!(peer = self.peer, blob = %id, error = %e, "recovery read failed");
                Err(Close::Error(format!("Cannot find required BLOB {id}: {e}")))
            }
        }
    }

    /// Streams a blob. A small one (one chunk) is checked before anything is sent, so damage gets
    /// an error reply; a larger one is cut off before its last chunk.
    fn send_blob(&mut self, mut r: BlobReader) -> Result<(), Close> {
        let damaged = |e: StoreError, peer: &str| {
            tracing::error!(peer, error = %e, "GET of a damaged or unreadable blob");
            e
        };
        if r.len() > protocol::MAX_BLOB_LEN {
            return Err(Close::Error(
                "BLOB size exceeds the maximum size (2 GB).".into(),
            ));
        }
        // The first chunk is checked before anything is sent: damage there gets an error reply.
        let first = r
            .next_chunk()
            .map_err(|e| Close::Error(damaged(e, self.peer).to_string()))?;
        protocol::encode_get_header(r.len() as u32, &mut self.out);
        if r.is_single_chunk() {
            if let Some(c) = first {
                self.out.extend_from_slice(c.value());
            }
            return Ok(());
        }
        // A few checked chunks go out per write (fewer syscalls); memory stays bounded by them.
        let mut ready = Vec::with_capacity(CHUNKS_PER_WRITE);
        ready.extend(first);
        loop {
            match r.next_chunk() {
                Ok(Some(c)) => {
                    ready.push(c);
                    if ready.len() == CHUNKS_PER_WRITE {
                        self.write_chunks(&mut ready).map_err(|_| Close::Quiet)?;
                    }
                }
                Ok(None) => {
                    self.write_chunks(&mut ready).map_err(|_| Close::Quiet)?;
                    return Ok(());
                }
                Err(e) => {
                    damaged(e, self.peer);
                    // The reply has begun: the chunks checked before the bad one go out, then
                    // the reply is cut there, so the client never gets the blob whole.
                    let _ = self.write_chunks(&mut ready);
                    return Err(Close::Quiet);
                }
            }
        }
    }

    /// Writes what `out` holds (a GET header) and `chunks`, then empties both.
    fn write_chunks(&mut self, chunks: &mut Vec<crate::store::Chunk>) -> io::Result<()> {
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(chunks.len() + 1);
        slices.push(IoSlice::new(&self.out));
        slices.extend(chunks.iter().map(|c| IoSlice::new(c.value())));
        let mut left: usize = slices.iter().map(|s| s.len()).sum();
        let mut rest = &mut slices[..];
        while left > 0 {
            let n = self.stream.write_vectored(rest)?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            IoSlice::advance_slices(&mut rest, n);
            left -= n;
        }
        self.out.clear();
        chunks.clear();
        Ok(())
    }
}

/// Chunks of a GET written with one `writev` (4 × 64 KiB).
const CHUNKS_PER_WRITE: usize = 4;

/// Acknowledges what was just read at once instead of after Linux's delayed-ACK timer (40 ms).
/// A client that writes a request in small pieces with Nagle on (Flink's Java client) sends each
/// piece only once the previous one is acknowledged; the kernel clears the flag after each ACK,
/// so it is set again after every read that leaves a request unfinished. (After a whole request
/// the ACK rides on the reply; acknowledging at once there would cost an extra packet per
/// request.)
fn quick_ack(stream: &TcpStream) {
    #[cfg(target_os = "linux")]
    {
        use std::os::linux::net::TcpStreamExt;
        let _ = stream.set_quickack(true);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = stream;
}
