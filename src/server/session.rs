//! One connection's protocol state, without its socket: the decoder, the PUT being received, the
//! replies waiting to go out, the GET being streamed, and the request's clock. The readiness loop
//! (`reactor.rs`) moves bytes between the socket and a session and asks it about deadlines; the
//! session never blocks on the peer.
//!
//! States, named for what the session waits for:
//! - **await request**: between requests (`Timing::started` is `None`); the idle timeout runs.
//! - **header**: a request's first bytes arrived, not yet its whole header.
//! - **body**: a PUT header arrived; body chunks are spooled until the terminator, then the
//!   blob is committed and its reply queued.
//! - **sending**: a GET of more than one chunk: chunks are pulled from the store only as the
//!   socket takes them; no further input is read until the last one is out.
//! - **closing** (the reactor's): whole replies, then an error reply if any, go out; then a
//!   write shutdown and a brief drain.
//!
//! header → body (PUT) or → await request (DELETE, one-chunk GET: reply queued) or → sending (a
//! longer GET); body → await request at the terminator; sending → await request after the last
//! chunk; any → closing on a protocol error, a failed request, or a stream that ends mid-request.
//! Replies leave in request order: input after a request whose reply is still going out waits in
//! `stash`.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Deadlines;
use crate::key::{BlobId, BlobKey};
use crate::metrics::{Op, Outcome, ServerMetrics};
use crate::protocol::{
    self, DeleteTarget, ProtocolError, PutTarget, Request, RequestDecoder, RequestEvent,
};
use crate::store::{BlobReader, BlobStore, Chunk, StoreError, Upload};

use super::warnings::PeerWarnings;

/// Replies gathered before they must be written out (also the most input handled between two
/// writes).
pub(super) const OUT_HIGH_WATER: usize = 128 * 1024;

/// Requests one turn of a connection may handle before the worker's other connections get
/// theirs: a client pipelining thousands of DELETEs must not hold the worker for their commits.
const REQUESTS_PER_TURN: u32 = 16;

/// Chunks pulled from the store per refill (4 × 64 KiB): fewer `writev` calls, bounded memory.
const CHUNKS_PER_WRITE: usize = 4;

/// Why a session ends.
#[derive(Debug)]
pub(super) enum Close {
    /// Clean end between requests, or an I/O failure: nothing more can or need be sent.
    Quiet,
    /// An unknown op byte: no reply to it, but the replies to the requests before it still go
    /// out before the close.
    Silent,
    /// Send the replies gathered so far, then this error reply, then close.
    Error(String),
    /// Like `Error`, for a failure the store logs once for many requests (a full disk).
    Expected(String),
}

/// What writing to the socket achieved.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Flushed {
    /// Everything pending is out.
    Drained,
    /// The socket takes no more for now: wait until it is writable.
    Blocked,
    /// The byte budget of this turn is spent: other connections go first.
    Budget,
}

/// A deadline a session has passed.
#[derive(Debug)]
pub(super) enum Overdue {
    /// Silent between requests for the idle timeout: routine.
    Idle(Duration),
    /// A request too slow or stalled: the peer is cut off.
    Slow(String),
}

/// A GET reply being streamed: the reader and the checked chunks not yet written.
struct Outgoing {
    reader: BlobReader,
    ready: VecDeque<Chunk>,
    /// Bytes of `ready[0]` already written.
    offset: usize,
    done: bool,
    /// The reader failed: once the chunks checked before the failure are out, the reply is cut.
    failed: bool,
}

/// The clock of the request under way.
#[derive(Debug, Clone, Copy)]
struct Timing {
    /// When the current request's first byte arrived; `None` between requests.
    started: Option<Instant>,
    header_done: bool,
    /// Bytes moved either way since `started`.
    bytes: u64,
    /// Last time a byte moved either way (or the connection opened).
    last_progress: Instant,
}

/// One connection's protocol state.
pub(super) struct Session {
    dec: RequestDecoder,
    upload: Option<(Upload, PutTarget)>,
    out: Vec<u8>,
    out_pos: usize,
    blob: Option<Outgoing>,
    /// Input not handled yet because replies before it are still going out (or this turn's
    /// requests are done); `stash[stash_at..]` is what is left.
    stash: Vec<u8>,
    stash_at: usize,
    timing: Timing,
    /// Requests handled in this turn (see [`REQUESTS_PER_TURN`]).
    handled: u32,
    /// The request under way, for its log line.
    request: Option<RequestLog>,
    /// The kernel's send queue at the last sweep (see [`peer_took`](Self::peer_took)).
    queued: Option<u64>,
    metrics: Arc<ServerMetrics>,
    warnings: Arc<PeerWarnings>,
}

impl Session {
    pub(super) fn new(
        now: Instant,
        metrics: Arc<ServerMetrics>,
        warnings: Arc<PeerWarnings>,
    ) -> Session {
        Session {
            dec: RequestDecoder::new(),
            upload: None,
            out: Vec::new(),
            out_pos: 0,
            blob: None,
            stash: Vec::new(),
            stash_at: 0,
            handled: 0,
            queued: None,
            request: None,
            metrics,
            warnings,
            timing: Timing {
                started: None,
                header_done: false,
                bytes: 0,
                last_progress: now,
            },
        }
    }

    /// The server's budget of warnings about peers.
    pub(super) fn warnings(&self) -> &PeerWarnings {
        &self.warnings
    }

    /// Whether the loop should read from the socket: nothing is waiting to go out first, and no
    /// earlier input is waiting to be handled.
    pub(super) fn wants_read(&self) -> bool {
        self.blob.is_none() && self.stash.is_empty() && self.pending_out() < OUT_HIGH_WATER
    }

    /// Whether input is stashed behind replies that have gone out now.
    pub(super) fn has_stash(&self) -> bool {
        !self.stash.is_empty()
    }

    /// True while a request is half-read (the peer may wait for our ACK before sending more).
    pub(super) fn mid_request(&self) -> bool {
        !self.dec.is_idle()
    }

    fn pending_out(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// Counts `n` bytes read from the peer.
    pub(super) fn received(&self, n: usize) {
        self.metrics.bytes_received.add(n as u64);
    }

    /// Handles `input` that arrived at `now`. Stops early, stashing the rest, once replies to
    /// send pile up or a GET starts streaming.
    pub(super) fn receive(
        &mut self,
        store: &BlobStore,
        peer: &str,
        input: &[u8],
        now: Instant,
    ) -> Result<(), Close> {
        if input.is_empty() {
            return Ok(());
        }
        self.timing.last_progress = now;
        let used = self.decode(store, peer, input, now)?;
        // (The loop reads only while nothing is stashed: this is the whole stash.)
        self.stash.extend_from_slice(&input[used..]);
        Ok(())
    }

    /// Handles stashed input once the replies before it are out. What it does not get to stays
    /// where it is (an offset moves): a client pipelining thousands of small requests has its
    /// 128 KiB read handled 16 requests a turn, and must not have the rest copied each time.
    pub(super) fn resume(
        &mut self,
        store: &BlobStore,
        peer: &str,
        now: Instant,
    ) -> Result<(), Close> {
        let stash = std::mem::take(&mut self.stash);
        let start = self.stash_at;
        let used = self.decode(store, peer, &stash[start..], now)?;
        if start + used < stash.len() {
            self.stash = stash;
            self.stash_at = start + used;
        } else {
            self.stash_at = 0;
        }
        Ok(())
    }

    /// Starts a turn of the connection: a fresh budget of requests.
    pub(super) fn begin_turn(&mut self) {
        self.handled = 0;
    }

    /// Whether this turn handled as many requests as one turn may.
    pub(super) fn turn_spent(&self) -> bool {
        self.handled >= REQUESTS_PER_TURN
    }

    /// Decodes and handles `input` until it is used up, or until replies must go out first or
    /// this turn's share of store work is done; returns how many bytes it used.
    fn decode(
        &mut self,
        store: &BlobStore,
        peer: &str,
        input: &[u8],
        now: Instant,
    ) -> Result<usize, Close> {
        let mut pos = 0;
        while pos < input.len() {
            if !self.wants_read() || (self.dec.is_idle() && self.turn_spent()) {
                return Ok(pos);
            }
            if self.dec.is_idle() {
                // A request's first byte: its own clock, whatever came before it.
                self.timing.started = Some(now);
                self.timing.header_done = false;
                self.timing.bytes = 0;
            }
            let (used, event) = match self.dec.decode(&input[pos..]) {
                Ok(r) => r,
                Err(ProtocolError::UnknownOperation(op)) => {
                    let rest = &input[pos..];
                    if !self.warnings.admit() {
                        // Counted as held back.
                    } else if looks_like_http(rest) {
                        tracing::warn!(
                            peer,
                            "an HTTP request on the BLOB port: this port speaks Flink's BLOB \
                             protocol, not HTTP; closing the connection"
                        );
                    } else if rest.starts_with(&[0x16, 0x03]) {
                        tracing::warn!(
                            peer,
                            "a TLS handshake on the BLOB port, which speaks plaintext; closing \
                             the connection"
                        );
                    } else {
                        tracing::warn!(
                            peer,
                            op,
                            "unknown operation; closing connection without reply"
                        );
                    }
                    return Err(Close::Silent);
                }
                Err(e) => return Err(Close::Error(e.to_string())),
            };
            pos += used;
            self.timing.bytes += used as u64;
            if let Some(ev) = event {
                if matches!(ev, RequestEvent::Request(_)) {
                    self.handled += 1;
                }
                self.handle(store, peer, ev)?;
            }
        }
        Ok(pos)
    }

    /// The peer closed its side. `Ok` only between requests.
    pub(super) fn eof(&self) -> Close {
        match self.dec.finish() {
            Ok(()) => Close::Quiet,
            Err(e) => Close::Error(e.to_string()),
        }
    }

    /// Ends the session with `close`: a PUT cut short drops its spooled bytes, a GET under way
    /// stops, and an error reply is queued behind the whole replies gathered so far (which go
    /// first, as the original answered each request before reading the next).
    pub(super) fn fail(&mut self, peer: &str, close: &Close) {
        self.upload = None;
        self.blob = None;
        self.stash = Vec::new();
        self.stash_at = 0;
        let req = self.request.take();
        let op = req.as_ref().map_or("-", |r| r.op);
        let target = tracing::field::display(Target(req.as_ref()));
        if let Some(r) = &req {
            let outcome = if r.missing {
                Outcome::Missing
            } else {
                Outcome::Error
            };
            self.metrics.request(r.metric, outcome, r.started.elapsed());
        }
        match close {
            Close::Error(msg) => {
                if self.warnings.admit() {
                    tracing::warn!(peer, op, target, error = %msg, "request failed; sending error reply");
                }
                protocol::encode_error(msg, &mut self.out);
            }
            Close::Expected(msg) => {
                tracing::debug!(peer, op, target, error = %msg, "request failed; sending error reply");
                protocol::encode_error(msg, &mut self.out);
            }
            Close::Quiet | Close::Silent if req.is_some() => {
                tracing::debug!(peer, op, target, "request cut short");
            }
            Close::Quiet | Close::Silent => {}
        }
    }

    /// The debug line of a request that succeeded: op, what, size, duration.
    fn done(&mut self, peer: &str, size: u64) {
        if let Some(r) = self.request.take() {
            self.metrics
                .request(r.metric, Outcome::Ok, r.started.elapsed());
            tracing::debug!(
                peer,
                op = r.op,
                target = %r,
                size,
                micros = r.started.elapsed().as_micros() as u64,
                "request ok"
            );
        }
    }

    /// Queues an error reply for a peer cut off by a deadline, if nothing else is half-sent.
    pub(super) fn cut_off_reply(&mut self, msg: &str) -> Option<&[u8]> {
        if self.blob.is_some() || self.pending_out() > 0 {
            return None;
        }
        self.out.clear();
        self.out_pos = 0;
        protocol::encode_error(msg, &mut self.out);
        Some(&self.out)
    }

    fn handle(&mut self, store: &BlobStore, peer: &str, ev: RequestEvent<'_>) -> Result<(), Close> {
        match ev {
            RequestEvent::Request(req) => {
                self.timing.header_done = true;
                let started = self.timing.started.unwrap_or_else(Instant::now);
                self.request = Some(RequestLog::of(&req, started));
                match req {
                    Request::Put(target) => self.upload = Some((store.upload(), target)),
                    Request::Get(id) => self.get(store, peer, &id)?,
                    Request::Delete(target) => {
                        let n = store.delete(target).map_err(|e| {
                            tracing::error!(peer, error = %e, "DELETE failed");
                            Close::Error(format!("DELETE failed: {e}"))
                        })?;
                        protocol::encode_ok(&mut self.out);
                        self.done(peer, n);
                    }
                }
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
                let size = spooled.len();
                let named = matches!(target, PutTarget::Named(..));
                let key = store.commit(spooled, target).map_err(|e| {
                    // A full disk is logged once per episode by the store, not per request.
                    if e.is_no_space() {
                        return Close::Expected(format!("PUT failed: {e}"));
                    }
                    tracing::error!(peer, error = %e, "PUT failed");
                    Close::Error(format!("PUT failed: {e}"))
                })?;
                if named {
                    protocol::encode_ok(&mut self.out);
                } else {
                    protocol::encode_put_key(&key, &mut self.out);
                }
                if let Some(r) = self.request.as_mut() {
                    r.key = Some(key);
                }
                self.done(peer, size);
            }
        }
        Ok(())
    }

    fn get(&mut self, store: &BlobStore, peer: &str, id: &BlobId) -> Result<(), Close> {
        let mut r = match store.get(id) {
            Ok(Some(r)) => r,
            // A local miss: read-repair from the recovery store, if there is one.
            Ok(None) => match store.read_repair(id) {
                Ok(Some(r)) => r,
                // Routine for a cache probing servers: the reply says it, the log only at debug.
                Ok(None) => {
                    if let Some(r) = self.request.as_mut() {
                        r.missing = true;
                    }
                    return Err(Close::Expected(format!("Cannot find required BLOB {id}")));
                }
                Err(e) => {
                    tracing::error!(peer, blob = %id, error = %e, "recovery read failed");
                    return Err(Close::Error(format!("Cannot find required BLOB {id}: {e}")));
                }
            },
            Err(e) => {
                tracing::error!(peer, error = %e, "GET failed");
                return Err(Close::Error(format!("GET failed: {e}")));
            }
        };
        if r.len() > protocol::MAX_BLOB_LEN {
            return Err(Close::Error(
                "BLOB size exceeds the maximum size (2 GB).".into(),
            ));
        }
        // Zero-copy chunks: this loop never blocks while it holds one, and a GET it parks
        // detaches what it holds (`park`).
        r.borrow_chunks();
        // The first chunk is checked before anything is sent: damage there gets an error reply.
        let first = r
            .next_chunk()
            .map_err(|e| Close::Error(damaged(e, peer, &self.metrics).to_string()))?;
        protocol::encode_get_header(r.len() as u32, &mut self.out);
        if r.is_single_chunk() {
            if let Some(c) = first {
                self.out.extend_from_slice(c.value());
            }
            self.done(peer, r.len());
            return Ok(());
        }
        self.blob = Some(Outgoing {
            reader: r,
            ready: first.into_iter().collect(),
            offset: 0,
            done: false,
            failed: false,
        });
        Ok(())
    }

    /// Writes what is pending (replies, then a GET's chunks, pulled from the store as the socket
    /// takes them) until done, the socket would block, or `budget` bytes went out.
    pub(super) fn flush(
        &mut self,
        sock: &mut impl Write,
        peer: &str,
        budget: &mut usize,
        now: Instant,
    ) -> Result<Flushed, Close> {
        loop {
            if let Some(b) = self.blob.as_mut()
                && b.ready.is_empty()
                && !b.done
            {
                b.refill(peer, &self.metrics);
            }
            let empty: &[u8] = &[];
            let mut slices = [IoSlice::new(empty); CHUNKS_PER_WRITE + 1];
            let mut n_slices = 0;
            if self.pending_out() > 0 {
                slices[0] = IoSlice::new(&self.out[self.out_pos..]);
                n_slices = 1;
            }
            if let Some(b) = &self.blob {
                for (i, c) in b.ready.iter().enumerate() {
                    let skip = if i == 0 { b.offset } else { 0 };
                    slices[n_slices] = IoSlice::new(&c.value()[skip..]);
                    n_slices += 1;
                }
            }
            if n_slices == 0 {
                match &self.blob {
                    Some(b) if b.failed => return Err(Close::Quiet),
                    Some(b) if !b.done => continue,
                    Some(b) => {
                        let len = b.reader.len();
                        self.done(peer, len);
                    }
                    None => {}
                }
                self.blob = None;
                self.out.clear();
                self.out_pos = 0;
                if self.out.capacity() > 4 * OUT_HIGH_WATER {
                    self.out = Vec::new();
                }
                return Ok(Flushed::Drained);
            }
            if *budget == 0 {
                return Ok(Flushed::Budget);
            }
            match sock.write_vectored(&slices[..n_slices]) {
                Ok(0) => return Err(Close::Quiet),
                Ok(n) => {
                    self.metrics.bytes_sent.add(n as u64);
                    *budget = budget.saturating_sub(n);
                    self.timing.bytes += n as u64;
                    self.timing.last_progress = now;
                    self.advance(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Flushed::Blocked),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!(peer, error = %e, "write failed");
                    return Err(Close::Quiet);
                }
            }
        }
    }

    fn advance(&mut self, mut n: usize) {
        let o = self.pending_out().min(n);
        self.out_pos += o;
        n -= o;
        if let Some(b) = self.blob.as_mut() {
            while n > 0 {
                let Some(c) = b.ready.front() else { break };
                let rest = c.value().len() - b.offset;
                if n >= rest {
                    n -= rest;
                    b.ready.pop_front();
                    b.offset = 0;
                } else {
                    b.offset += n;
                    n = 0;
                }
            }
        }
    }

    /// Called once everything is out and nothing is stashed: a request finished this way ends
    /// its clock, and the idle timeout starts.
    pub(super) fn settle(&mut self, now: Instant) {
        if self.dec.is_idle() && self.blob.is_none() && self.stash.is_empty() {
            if self.timing.started.take().is_some() {
                self.timing.last_progress = now;
            }
            if self.out.capacity() > 4 * OUT_HIGH_WATER {
                self.out = Vec::new();
            }
        }
    }

    /// Whether a GET reply holds a database snapshot (its reader, or chunks waiting to go out).
    pub(super) fn holds_snapshot(&self) -> bool {
        self.blob
            .as_ref()
            .is_some_and(|b| b.reader.holds_snapshot() || b.ready.iter().any(Chunk::holds_snapshot))
    }

    /// Lets a GET reply whose peer is not taking it go of its database snapshot: its waiting
    /// chunks become copies. redb reuses no page freed while any snapshot is open, so a reader
    /// that holds one while its client dawdles would make the file grow.
    pub(super) fn park(&mut self) {
        if let Some(b) = self.blob.as_mut() {
            b.reader.release_snapshot();
            b.ready.iter_mut().for_each(Chunk::detach);
        }
    }

    /// Whether output is waiting for the peer to take it.
    pub(super) fn sending(&self) -> bool {
        self.blob.is_some() || self.pending_out() > 0
    }

    /// The peer's progress seen from the kernel: `queued` bytes sent but not yet acknowledged.
    /// With a large send buffer, writability comes back only after the peer has taken a good
    /// part of it, seconds later for a slow but steady reader; a queue that shrank since the
    /// last look is progress all the same.
    pub(super) fn peer_took(&mut self, queued: Option<u64>, now: Instant) {
        if let (Some(before), Some(q)) = (self.queued, queued)
            && q < before
        {
            self.timing.last_progress = now;
        }
        self.queued = queued;
    }

    /// The deadline this session has passed at `now`, if any.
    pub(super) fn overdue(&self, now: Instant, d: &Deadlines) -> Option<Overdue> {
        let t = &self.timing;
        let silent = now.saturating_duration_since(t.last_progress);
        let Some(started) = t.started else {
            return (silent >= d.idle).then_some(Overdue::Idle(d.idle));
        };
        let took = now.saturating_duration_since(started);
        let slow = |why: String| Some(Overdue::Slow(why));
        if !t.header_done && took >= d.header {
            return slow(format!("request header not complete within {:?}", d.header));
        }
        if silent >= d.stall {
            return slow(format!(
                "no byte moved for {silent:.1?} (stall timeout {:?})",
                d.stall
            ));
        }
        if took >= d.request {
            return slow(format!("request not done within {:?}", d.request));
        }
        if d.min_rate > 0 && took > d.stall {
            let need = d.min_rate as f64 * (took - d.stall).as_secs_f64();
            if (t.bytes as f64) < need {
                return slow(format!(
                    "{} bytes in {took:.1?}: below the minimum rate of {} bytes/s",
                    t.bytes, d.min_rate
                ));
            }
        }
        None
    }
}

/// A request still under way when its connection goes (reset by the peer, cut off by a deadline,
/// closed by the server): counted as failed, since no path that ends a request counted it.
impl Drop for Session {
    fn drop(&mut self) {
        if let Some(r) = self.request.take() {
            self.metrics
                .request(r.metric, Outcome::Error, r.started.elapsed());
        }
    }
}

impl Outgoing {
    /// Pulls the next few checked chunks from the store.
    fn refill(&mut self, peer: &str, metrics: &ServerMetrics) {
        while self.ready.len() < CHUNKS_PER_WRITE {
            match self.reader.next_chunk() {
                Ok(Some(c)) => self.ready.push_back(c),
                Ok(None) => {
                    self.done = true;
                    return;
                }
                Err(e) => {
                    damaged(e, peer, metrics);
                    // The reply has begun: the chunks checked before the bad one go out, then
                    // the reply is cut there, so the client never gets the blob whole.
                    self.done = true;
                    self.failed = true;
                    return;
                }
            }
        }
    }
}

/// What a request's log lines say of it. Kept as the request, and formatted only when a line is
/// written: building the text for every request (40 hex digits into a new `String` per content
/// GET or PUT), with debug lines off, was 15 % of the workers' instructions for 4 KiB PUTs and
/// GETs (callgrind; BENCHMARKS.md, issue #13).
struct RequestLog {
    op: &'static str,
    metric: Op,
    /// A GET of a blob that is not there (counted apart from failures).
    missing: bool,
    request: Request,
    /// A content PUT's key, once stored.
    key: Option<BlobKey>,
    started: Instant,
}

impl RequestLog {
    fn of(req: &Request, started: Instant) -> RequestLog {
        let op = match req {
            Request::Put(_) => "PUT",
            Request::Get(_) => "GET",
            Request::Delete(_) => "DELETE",
        };
        let metric = match req {
            Request::Put(_) => Op::Put,
            Request::Get(_) => Op::Get,
            Request::Delete(_) => Op::Delete,
        };
        RequestLog {
            op,
            metric,
            missing: false,
            // A content key is copied, a name cloned (named requests formatted one before).
            request: req.clone(),
            key: None,
            started,
        }
    }
}

/// The target of a request as its log lines show it.
impl std::fmt::Display for RequestLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.request {
            Request::Put(PutTarget::Content) => f.write_str("content")?,
            Request::Put(PutTarget::Named(job, name)) => write!(f, "{job}/{name}")?,
            Request::Get(id) => write!(f, "{id}")?,
            Request::Delete(DeleteTarget::Content(key)) => write!(f, "{key}")?,
            Request::Delete(DeleteTarget::Named(job, name)) => write!(f, "{job}/{name}")?,
            Request::Delete(DeleteTarget::Job(job)) => write!(f, "job {job}")?,
        }
        match &self.key {
            Some(key) => write!(f, " -> {key}"),
            None => Ok(()),
        }
    }
}

/// A request's target in a failure line, or nothing before a request header arrived.
struct Target<'a>(Option<&'a RequestLog>);

impl std::fmt::Display for Target<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(r) => r.fmt(f),
            None => Ok(()),
        }
    }
}

/// An HTTP request line's start: a method and a space.
fn looks_like_http(input: &[u8]) -> bool {
    const METHODS: [&[u8]; 8] = [
        b"GET ",
        b"POST ",
        b"PUT ",
        b"HEAD ",
        b"DELETE ",
        b"OPTIONS ",
        b"PATCH ",
        b"CONNECT ",
    ];
    METHODS.iter().any(|m| input.starts_with(m))
}

fn damaged(e: StoreError, peer: &str, metrics: &ServerMetrics) -> StoreError {
    tracing::error!(peer, error = %e, "GET of a damaged or unreadable blob");
    if let StoreError::Damaged { .. } = e {
        metrics.damaged(&e);
    }
    e
}
