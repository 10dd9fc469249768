//! A worker: one thread running a readiness loop (epoll through `mio`) over its share of the
//! server's connections. It owns their sockets, reads and writes only what they are ready for,
//! and does a request's store work when the request is there. So an idle, slow or stalled peer
//! costs a registration and a few hundred bytes, never a thread; a worker is held only by store
//! work (a commit, a read). Deadlines are checked by a sweep a few times a second.

use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};

use super::session::{Close, Flushed, Overdue, Session};
use super::tls::{self, Tls, TlsFailure};
use super::warnings::PeerWarnings;
use crate::config::Deadlines;
use crate::store::BlobStore;
use crate::tls::ServerTls;

/// The waker's token; connections use their slot index.
const WAKE: Token = Token(usize::MAX);
/// Read buffer, shared by a worker's connections (an idle one owns none).
const READ_BUF: usize = 128 * 1024;
/// Bytes one connection may move per turn before the others get theirs.
const TURN_BUDGET: usize = 4 * 1024 * 1024;
/// After a failed request: how long, and how much, the client's remaining input is read and
/// dropped, so that the error reply is not destroyed by a reset.
const DRAIN_TIME: Duration = Duration::from_secs(1);
const DRAIN_BYTES: usize = 16 * 1024 * 1024;
/// Rounds of events handled without waiting before a deadline sweep (see `run`).
const CATCH_UP_ROUNDS: usize = 4;
/// A GET whose socket would block for this long lets go of its database snapshot: as briefly
/// as the store's readers keep one (`store::SNAPSHOT_MAX_AGE`), so that a fast client, whose
/// socket is writable again within a millisecond or two, pays no copy.
const PARK_AFTER: Duration = crate::store::SNAPSHOT_MAX_AGE;

/// What the server shares with its workers.
pub(super) struct Shared {
    pub store: BlobStore,
    pub deadlines: Deadlines,
    pub shutdown: AtomicBool,
    /// Connections open, in all workers.
    pub open: AtomicUsize,
    /// With TLS on: the configuration each new connection takes.
    pub tls: Option<Arc<ServerTls>>,
    pub metrics: Arc<crate::metrics::ServerMetrics>,
    /// The budget of warnings about peers, shared by the workers.
    pub warnings: Arc<PeerWarnings>,
}

/// Messages to a worker (each followed by a wake).
pub(super) enum Command {
    Conn(TcpStream, SocketAddr),
    /// Close every connection, then answer.
    CloseAll(Sender<()>),
}

/// The acceptor's and the server's handle to a worker.
pub(super) struct Handle {
    pub tx: Sender<Command>,
    pub waker: Waker,
    /// Connections this worker holds (for choosing the least loaded).
    pub load: Arc<AtomicUsize>,
}

impl Handle {
    pub(super) fn send(&self, cmd: Command) -> bool {
        self.tx.send(cmd).is_ok() && self.waker.wake().is_ok()
    }
}

/// How a connection is doing.
enum Phase {
    Open,
    /// Replies (and an error reply) still going out; then the write side is shut.
    Flushing,
    /// Reading and dropping what the peer still sends, until it closes or `until`.
    Draining {
        until: Instant,
        drained: usize,
    },
}

struct Conn {
    stream: TcpStream,
    /// TLS between the socket and the session, when the server has it on.
    tls: Option<Box<Tls>>,
    accepted: Instant,
    peer: String,
    session: Session,
    phase: Phase,
    /// Registered for writability too: only while a write would block, since an edge-triggered
    /// writable interest would wake the worker at every ACK.
    watch_writes: bool,
    /// The peer's FIN was seen by epoll: read to the end even after a short read.
    read_closed: bool,
    /// Since when a GET holding a snapshot has waited for the socket (see [`PARK_AFTER`]).
    waiting_since: Option<Instant>,
}

/// What a turn left a connection waiting for.
enum Turn {
    /// A read would block: the next readable event brings it back.
    Wait,
    /// A write would block: the next writable event brings it back.
    WaitWritable,
    /// Its budget is spent with work left: another turn soon.
    Again,
    /// Done with: close it.
    Close,
}

pub(super) struct Worker {
    poll: Poll,
    rx: Receiver<Command>,
    shared: Arc<Shared>,
    load: Arc<AtomicUsize>,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    /// Connections whose GET waits for the socket while holding a snapshot.
    waiting: Vec<usize>,
    buf: Vec<u8>,
    /// Ciphertext as read from a TLS connection's socket (empty without TLS).
    raw: Vec<u8>,
    sweep_every: Duration,
}

impl Worker {
    /// A worker and the handle to reach it.
    pub(super) fn new(shared: Arc<Shared>) -> io::Result<(Worker, Handle)> {
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKE)?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let load = Arc::new(AtomicUsize::new(0));
        let d = shared.deadlines;
        // A few sweeps per shortest deadline, at most four a second.
        let sweep_every = (d.idle.min(d.header).min(d.stall) / 4)
            .clamp(Duration::from_millis(10), Duration::from_millis(250));
        let raw = if shared.tls.is_some() {
            vec![0u8; READ_BUF]
        } else {
            Vec::new()
        };
        let worker = Worker {
            poll,
            rx,
            shared,
            load: Arc::clone(&load),
            conns: Vec::new(),
            free: Vec::new(),
            waiting: Vec::new(),
            buf: vec![0u8; READ_BUF],
            raw,
            sweep_every,
        };
        Ok((worker, Handle { tx, waker, load }))
    }

    /// Serves until the server shuts down.
    pub(super) fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut again: Vec<usize> = Vec::new();
        let mut next_sweep = Instant::now() + self.sweep_every;
        while !self.shared.shutdown.load(Ordering::SeqCst) {
            let timeout = if again.is_empty() {
                let park = self.next_park().unwrap_or(next_sweep);
                park.min(next_sweep)
                    .saturating_duration_since(Instant::now())
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.round(&mut events, timeout, &mut again) {
                tracing::error!(error = %e, "readiness wait failed; worker stops");
                break;
            }
            self.park_waiting(Instant::now());
            if Instant::now() >= next_sweep {
                // Whatever arrived while this worker was busy with the store counts before
                // anyone is judged slow: a long commit must not make its neighbours look idle.
                for _ in 0..CATCH_UP_ROUNDS {
                    match self.round(&mut events, Duration::ZERO, &mut again) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(e) => {
                            tracing::error!(error = %e, "readiness wait failed; worker stops");
                            return self.close_all();
                        }
                    }
                }
                let now = Instant::now();
                self.sweep(now);
                next_sweep = now + self.sweep_every;
            }
        }
        self.close_all();
    }

    /// Waits up to `timeout` for readiness, then gives each ready connection (and those left
    /// with work from the last round) a turn. Returns how many events came.
    fn round(
        &mut self,
        events: &mut Events,
        timeout: Duration,
        again: &mut Vec<usize>,
    ) -> io::Result<usize> {
        match self.poll.poll(events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(0),
            Err(e) => return Err(e),
        }
        let mut ready = std::mem::take(again);
        let mut n = 0;
        self.shared.metrics.workers_busy.add(1);
        for ev in events.iter() {
            n += 1;
            if ev.token() == WAKE {
                self.commands();
            } else {
                let slot = ev.token().0;
                if ev.is_read_closed()
                    && let Some(Some(c)) = self.conns.get_mut(slot)
                {
                    c.read_closed = true;
                }
                ready.push(slot);
            }
        }
        ready.sort_unstable();
        ready.dedup();
        for slot in ready {
            if let Turn::Again = self.turn(slot) {
                again.push(slot);
            }
        }
        self.shared.metrics.workers_busy.add(-1);
        Ok(n)
    }

    /// When the first GET waiting for its socket must let go of its snapshot.
    fn next_park(&self) -> Option<Instant> {
        self.waiting
            .iter()
            .filter_map(|&slot| self.conns.get(slot)?.as_ref()?.waiting_since)
            .min()
            .map(|t| t + PARK_AFTER)
    }

    /// GETs that have waited [`PARK_AFTER`] for their socket let go of their snapshots.
    fn park_waiting(&mut self, now: Instant) {
        let conns = &mut self.conns;
        self.waiting.retain(|&slot| {
            let Some(c) = conns.get_mut(slot).and_then(Option::as_mut) else {
                return false;
            };
            match c.waiting_since {
                Some(t) if now.duration_since(t) >= PARK_AFTER => {
                    c.session.park();
                    c.waiting_since = None;
                    false
                }
                Some(_) => true,
                None => false,
            }
        });
    }

    fn close_all(&mut self) {
        for slot in 0..self.conns.len() {
            self.close(slot);
        }
    }

    fn commands(&mut self) {
        while let Ok(cmd) = self.rx.try_recv() {
            match cmd {
                Command::Conn(stream, peer) => self.add(stream, peer),
                Command::CloseAll(done) => {
                    for slot in 0..self.conns.len() {
                        if let Some(c) = &self.conns[slot] {
                            let _ = c.stream.shutdown(Shutdown::Both);
                        }
                        self.close(slot);
                    }
                    let _ = done.send(());
                }
            }
        }
    }

    fn add(&mut self, mut stream: TcpStream, peer: SocketAddr) {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        // Edge-triggered: a turn always goes on until the socket would block, so no readiness
        // is missed.
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut stream, Token(slot), Interest::READABLE)
        {
            tracing::warn!(%peer, error = %e, "cannot watch connection; closing it");
            self.free.push(slot);
            self.forget();
            return;
        }
        let tls = match &self.shared.tls {
            None => None,
            Some(t) => match Tls::new(t.config()) {
                Ok(tls) => Some(Box::new(tls)),
                Err(e) => {
                    tracing::error!(%peer, error = %e, "cannot start TLS; closing connection");
                    let _ = self.poll.registry().deregister(&mut stream);
                    self.free.push(slot);
                    self.forget();
                    return;
                }
            },
        };
        tracing::debug!(%peer, "connection opened");
        let now = Instant::now();
        self.conns[slot] = Some(Conn {
            stream,
            tls,
            accepted: now,
            peer: peer.to_string(),
            session: Session::new(
                now,
                Arc::clone(&self.shared.metrics),
                Arc::clone(&self.shared.warnings),
            ),
            phase: Phase::Open,
            watch_writes: false,
            read_closed: false,
            waiting_since: None,
        });
    }

    /// Counts a connection out.
    fn forget(&self) {
        self.load.fetch_sub(1, Ordering::Relaxed);
        self.shared.open.fetch_sub(1, Ordering::Relaxed);
    }

    fn close(&mut self, slot: usize) {
        if let Some(mut c) = self.conns.get_mut(slot).and_then(Option::take) {
            let _ = self.poll.registry().deregister(&mut c.stream);
            tracing::debug!(peer = c.peer, "connection closed");
            self.free.push(slot);
            self.forget();
        }
    }

    /// Moves a connection along as far as its socket allows.
    fn turn(&mut self, slot: usize) -> Turn {
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return Turn::Wait;
        };
        let (store, buf, raw) = (&self.shared.store, &mut self.buf, &mut self.raw);
        // A bug in one connection must not cost the worker.
        let mut turn =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| conn.turn(store, buf, raw)))
                .unwrap_or_else(|_| {
                    tracing::error!(
                        peer = conn.peer,
                        "connection handler panicked; connection closed"
                    );
                    Turn::Close
                });
        let watch = matches!(turn, Turn::WaitWritable);
        // In `waiting` while `waiting_since` is set (stale entries are dropped as found).
        let listed = conn.waiting_since.take().is_some();
        if watch && conn.session.holds_snapshot() {
            conn.waiting_since = Some(Instant::now());
            if !listed {
                self.waiting.push(slot);
            }
        }
        if !matches!(turn, Turn::Close) && watch != conn.watch_writes {
            let interest = if watch {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            match self
                .poll
                .registry()
                .reregister(&mut conn.stream, Token(slot), interest)
            {
                Ok(()) => conn.watch_writes = watch,
                Err(e) => {
                    tracing::warn!(peer = conn.peer, error = %e, "cannot watch connection; closing it");
                    turn = Turn::Close;
                }
            }
        }
        if let Turn::Close = turn {
            self.close(slot);
        }
        turn
    }

    /// Closes connections past a deadline; lets stalled GETs drop their snapshots.
    fn sweep(&mut self, now: Instant) {
        self.shared.warnings.flush();
        let d = self.shared.deadlines;
        for slot in 0..self.conns.len() {
            let Some(c) = self.conns[slot].as_mut() else {
                continue;
            };
            if let Phase::Draining { until, .. } = c.phase {
                if now >= until {
                    self.close(slot);
                }
                continue;
            }
            if c.tls.as_ref().is_some_and(|t| t.is_handshaking())
                && now.saturating_duration_since(c.accepted) >= d.header
            {
                if self.shared.warnings.admit() {
                    tracing::warn!(
                        peer = c.peer,
                        "TLS handshake not complete within {:?} (the header timeout); \
                         connection cut off",
                        d.header
                    );
                }
                self.close(slot);
                continue;
            }
            // Encrypted bytes rustls still holds are a reply under way, as much as the session's.
            let tls_queued = c.tls.as_ref().is_some_and(|t| t.wants_write());
            if c.session.sending() || tls_queued {
                c.session.peer_took(send_queue(&c.stream), now);
            }
            match c.session.overdue(now, &d) {
                None => {}
                Some(Overdue::Idle(after)) => {
                    tracing::debug!(peer = c.peer, ?after, "idle connection closed");
                    self.close(slot);
                }
                Some(Overdue::Slow(why)) => {
                    if self.shared.warnings.admit() {
                        tracing::warn!(peer = c.peer, reason = %why, "peer too slow; connection cut off");
                    }
                    let msg = format!("connection closed by the server: {why}");
                    let reply = if tls_queued {
                        None
                    } else {
                        c.session.cut_off_reply(&msg)
                    };
                    if let Some(reply) = reply {
                        // One try: a peer this slow may not take it.
                        match &mut c.tls {
                            Some(t) => t.write_once(&mut c.stream, reply),
                            None => {
                                let _ = io::Write::write(&mut c.stream, reply);
                            }
                        }
                        let _ = c.stream.shutdown(Shutdown::Both);
                    } else {
                        // A reply half-sent: reset, so the kernel drops the queue at once
                        // instead of trickling it to the peer after the cut.
                        let _ = socket2::SockRef::from(&c.stream).set_linger(Some(Duration::ZERO));
                    }
                    self.close(slot);
                }
            }
        }
    }
}

impl Conn {
    fn turn(&mut self, store: &BlobStore, buf: &mut [u8], raw: &mut [u8]) -> Turn {
        let mut budget = TURN_BUDGET;
        // A read shorter than the buffer emptied the socket: anything arriving later brings a
        // new edge, so a further read would only say "would block" (one syscall per request).
        let mut socket_empty = false;
        self.session.begin_turn();
        loop {
            let now = Instant::now();
            if let Phase::Draining { until, drained } = &mut self.phase {
                return drain(&mut self.stream, buf, until, drained);
            }
            let flushed = match &mut self.tls {
                Some(t) => self.session.flush(
                    &mut t.writer(&mut self.stream),
                    &self.peer,
                    &mut budget,
                    now,
                ),
                None => self
                    .session
                    .flush(&mut self.stream, &self.peer, &mut budget, now),
            };
            let flushed = match (flushed, &mut self.tls) {
                // The session's bytes are out of it; TLS may still hold some for the socket.
                (Ok(Flushed::Drained), Some(t)) => match t.send(&mut self.stream) {
                    Ok(true) => Ok(Flushed::Drained),
                    Ok(false) => Ok(Flushed::Blocked),
                    Err(e) => {
                        tracing::debug!(peer = self.peer, error = %e, "write failed");
                        Err(Close::Quiet)
                    }
                },
                (r, _) => r,
            };
            match flushed {
                Ok(Flushed::Drained) => {}
                Ok(Flushed::Blocked) => return Turn::WaitWritable,
                Ok(Flushed::Budget) => return Turn::Again,
                Err(close) if matches!(self.phase, Phase::Flushing) => {
                    let _ = close;
                    return Turn::Close;
                }
                Err(close) => return self.end(close),
            }
            if let Phase::Flushing = self.phase {
                if let Some(t) = &mut self.tls {
                    t.close_notify(&mut self.stream);
                }
                let _ = self.stream.shutdown(Shutdown::Write);
                self.phase = Phase::Draining {
                    until: now + DRAIN_TIME,
                    drained: 0,
                };
                continue;
            }
            if self.session.has_stash() {
                if self.session.turn_spent() {
                    return Turn::Again;
                }
                if let Err(close) = self.session.resume(store, &self.peer, now) {
                    return self.end(close);
                }
                continue;
            }
            self.session.settle(now);
            if budget == 0 {
                return Turn::Again;
            }
            if socket_empty
                && !self.read_closed
                && !self.tls.as_ref().is_some_and(|t| t.has_input())
            {
                return Turn::Wait;
            }
            let read = match &mut self.tls {
                Some(t) => t.read(
                    &mut self.stream,
                    buf,
                    raw,
                    &mut socket_empty,
                    self.read_closed,
                ),
                None => self.stream.read(buf),
            };
            // Through TLS the turn is charged what crossed the socket, not the plaintext.
            if let Some(t) = &mut self.tls {
                budget = budget.saturating_sub(t.take_wire_bytes());
            }
            let n = match read {
                Ok(0) => {
                    let close = self.session.eof();
                    return self.end(close);
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // A handshake reply the socket did not take yet.
                    if self.tls.as_ref().is_some_and(|t| t.wants_write()) {
                        return Turn::WaitWritable;
                    }
                    return Turn::Wait;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.read_failed(&e),
            };
            if self.tls.is_none() {
                budget = budget.saturating_sub(n);
                socket_empty = n < buf.len();
            }
            self.session.received(n);
            if let Err(close) = self.session.receive(store, &self.peer, &buf[..n], now) {
                return self.end(close);
            }
            // Half a request: its sender may be waiting for our ACK before it sends the rest.
            if self.session.mid_request() {
                quick_ack(&self.stream);
            }
        }
    }

    fn read_failed(&mut self, e: &io::Error) -> Turn {
        match tls::failure(e) {
            Some(f @ TlsFailure::NotTls(_)) => {
                // Most likely a plaintext BLOB client: it gets the reason as an error reply,
                // in plaintext.
                let msg = f.to_string();
                self.tls = None;
                self.end(Close::Error(msg))
            }
            Some(f) => {
                if self.session.warnings().admit() {
                    tracing::warn!(peer = self.peer, error = %f, "TLS connection refused; closed");
                }
                Turn::Close
            }
            None => {
                tracing::debug!(peer = self.peer, error = %e, "read failed");
                Turn::Close
            }
        }
    }

    /// Ends the session: quietly at once, or after its replies (and error reply) are out.
    fn end(&mut self, close: Close) -> Turn {
        if let Close::Quiet = close {
            return Turn::Close;
        }
        self.session.fail(&self.peer, &close);
        self.phase = Phase::Flushing;
        Turn::Again
    }
}

/// Reads and drops input until the peer closes, `until`, or [`DRAIN_BYTES`].
fn drain(stream: &mut TcpStream, buf: &mut [u8], until: &Instant, drained: &mut usize) -> Turn {
    loop {
        if Instant::now() >= *until || *drained >= DRAIN_BYTES {
            return Turn::Close;
        }
        match stream.read(buf) {
            Ok(0) => return Turn::Close,
            Ok(n) => *drained += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Turn::Wait,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Turn::Close,
        }
    }
}

/// Bytes in the socket's send queue not yet acknowledged by the peer (Linux with glibc, where
/// `libc` is a dependency; elsewhere unknown).
fn send_queue(stream: &TcpStream) -> Option<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::fd::AsRawFd;
        let mut n: libc::c_int = 0;
        // SAFETY: SIOCOUTQ (= TIOCOUTQ) writes one int through the pointer we pass.
        let r = unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
        (r == 0).then_some(n.max(0) as u64)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = stream;
        None
    }
}

/// Acknowledges what was just read at once instead of after Linux's delayed-ACK timer (40 ms).
/// A client that writes a request in small pieces with Nagle on (Flink's Java client) sends each
/// piece only once the previous one is acknowledged; the kernel clears the flag after each ACK,
/// so it is set again after every read that leaves a request unfinished. (After a whole request
/// the ACK rides on the reply; acknowledging at once there would cost an extra packet per
/// request.)
fn quick_ack(stream: &TcpStream) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let _ = socket2::SockRef::from(stream).set_tcp_quickack(true);
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = stream;
}
