//! The BLOB server: an acceptor thread hands each connection to one of a fixed pool of workers,
//! each a readiness loop over its connections (`reactor.rs`) around a sans-IO session per
//! connection (`session.rs`) that wraps the protocol's [`RequestDecoder`](crate::protocol::RequestDecoder).
//!
//! A worker is held by work, never by a peer: idle connections, half-arrived requests and
//! replies a client is slow to take wait in the worker's readiness loop, and every request has a
//! deadline and a minimum rate ([`Deadlines`](crate::config::Deadlines)).

mod probe;
mod reactor;
mod session;
mod tls;
mod warnings;

pub use probe::ServerProbe;

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::{MAX_BACKLOG, MAX_NUM_CONCURRENT, ServerConfig};
use crate::store::BlobStore;
use reactor::{Command, Handle, Shared, Worker};

/// Errors starting a server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// No port of the range could be bound.
    #[error("cannot bind {addr} (ports {first}-{last}): {source}")]
    Bind {
        /// The address asked for.
        addr: std::net::IpAddr,
        /// First port of the range tried.
        first: u16,
        /// Last port of the range tried.
        last: u16,
        /// Why the last port failed.
        source: io::Error,
    },
    /// Starting a thread or a readiness loop failed.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

/// Pause after a failed accept (out of descriptors, say) before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How often a TLS server looks at its certificate files for changes.
const TLS_FILE_CHECK: Duration = Duration::from_secs(1);
/// Least time between two warnings about refused connections.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// A running server. Dropping it shuts it down.
pub struct BlobServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    handles: Arc<Vec<Handle>>,
    acceptor: Option<JoinHandle<()>>,
    acceptor_waker: mio::Waker,
    workers: Vec<JoinHandle<()>>,
    drop_next: Arc<AtomicUsize>,
    probe: ServerProbe,
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
        let listener = bind(&config)?;
        let addr = listener.local_addr()?;
        let metrics = crate::metrics::ServerMetrics::for_store(store.counters());
        let shared = Arc::new(Shared {
            store,
            deadlines: config.deadlines,
            shutdown: AtomicBool::new(false),
            open: AtomicUsize::new(0),
            tls: config.tls.clone(),
            metrics: Arc::new(metrics),
            warnings: Arc::new(warnings::PeerWarnings::new()),
        });
        let probe = ServerProbe::new(
            Arc::clone(&shared),
            socket2::SockRef::from(&listener).try_clone().ok(),
            workers,
        );
        let mut handles = Vec::with_capacity(workers);
        let mut threads = Vec::with_capacity(workers);
        for i in 0..workers {
            let (worker, handle) = Worker::new(Arc::clone(&shared))?;
            handles.push(handle);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("blobvault-worker-{i}"))
                    .spawn(move || worker.run())?,
            );
        }
        let handles = Arc::new(handles);
        let drop_next = Arc::new(AtomicUsize::new(0));
        let (acceptor, acceptor_waker) = Acceptor::new(listener, config.max_connections)?;
        let acceptor = {
            let (shared, handles, drop_next) = (
                Arc::clone(&shared),
                Arc::clone(&handles),
                Arc::clone(&drop_next),
            );
            std::thread::Builder::new()
                .name("blobvault-acceptor".into())
                .spawn(move || acceptor.run(&shared, &handles, &drop_next))?
        };
        check_fd_limit(descriptors_needed(config.max_connections, workers));
        let tls = match &config.tls {
            None => "off",
            Some(t) if t.mutual() => "mutual (client certificates required)",
            Some(_) => "on",
        };
        tracing::info!(%addr, workers, backlog, max_connections = config.max_connections, tls,
            "BLOB server listening");
        Ok(BlobServer {
            shared,
            addr,
            handles,
            acceptor: Some(acceptor),
            acceptor_waker,
            workers: threads,
            drop_next,
            probe,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The store served.
    pub fn store(&self) -> &BlobStore {
        &self.shared.store
    }

    /// Connections accepted and not yet closed.
    pub fn active_connections(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }

    /// Closes every open connection (as Flink's tests do to cut a GET mid-stream); returns once
    /// every worker has closed its own (or after a few seconds if one is busy with the store).
    pub fn close_connections(&self) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let asked = self
            .handles
            .iter()
            .filter(|h| h.send(Command::CloseAll(tx.clone())))
            .count();
        let deadline = Instant::now() + Duration::from_secs(10);
        for _ in 0..asked {
            if rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .is_err()
            {
                break;
            }
        }
    }

    /// Whether connections are served inside TLS.
    pub fn tls_on(&self) -> bool {
        self.shared.tls.is_some()
    }

    /// Re-reads the TLS certificate, key and client CA (the server also does so by itself when
    /// the files change). New connections use them; on failure the previous ones stay, and the
    /// error says which file is at fault. `Ok(false)` when TLS is off.
    pub fn reload_tls(&self) -> Result<bool, crate::tls::TlsError> {
        match &self.shared.tls {
            Some(t) => t.reload().map(|()| {
                tracing::info!("TLS certificates reloaded");
                true
            }),
            None => Ok(false),
        }
    }

    /// Fault injection: the next `n` connections are accepted and closed at once.
    pub fn drop_next_connections(&self, n: usize) {
        self.drop_next.store(n, Ordering::SeqCst);
    }

    /// Stops accepting, closes every connection, and joins all threads. Idempotent.
    pub fn shutdown(&mut self) {
        if self.shared.shutdown.swap(true, Ordering::SeqCst) {
            return;
        }
        self.probe.close_listener();
        let _ = self.acceptor_waker.wake();
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        for h in self.handles.iter() {
            let _ = h.waker.wake();
        }
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

/// The acceptor's own readiness loop: the listener, and a waker for shutdown.
struct Acceptor {
    poll: mio::Poll,
    listener: mio::net::TcpListener,
    max_connections: usize,
    refused: Throttled,
    failed: Throttled,
    /// A descriptor kept spare: out of descriptors, it is given up for a moment to accept a
    /// waiting connection, so that the peer is served if room was made meanwhile, or hears "no"
    /// at once instead of hanging in the listen queue.
    spare: Option<std::fs::File>,
}

const LISTENER: mio::Token = mio::Token(0);
const ACCEPTOR_WAKE: mio::Token = mio::Token(1);

/// A warning logged at most every [`REFUSAL_LOG_EVERY`], with a count.
#[derive(Default)]
struct Throttled {
    count: u64,
    last: Option<Instant>,
}

impl Throttled {
    /// Counts one; true when it is time to log.
    fn tick(&mut self) -> bool {
        self.count += 1;
        if self.last.is_none_or(|t| t.elapsed() >= REFUSAL_LOG_EVERY) {
            self.last = Some(Instant::now());
            return true;
        }
        false
    }
}

impl Acceptor {
    fn new(listener: TcpListener, max_connections: usize) -> io::Result<(Acceptor, mio::Waker)> {
        listener.set_nonblocking(true)?;
        let mut listener = mio::net::TcpListener::from_std(listener);
        let poll = mio::Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, mio::Interest::READABLE)?;
        let waker = mio::Waker::new(poll.registry(), ACCEPTOR_WAKE)?;
        Ok((
            Acceptor {
                poll,
                listener,
                max_connections: max_connections.max(1),
                refused: Throttled::default(),
                failed: Throttled::default(),
                spare: std::fs::File::open("/dev/null").ok(),
            },
            waker,
        ))
    }

    fn run(mut self, shared: &Shared, handles: &[Handle], drop_next: &AtomicUsize) {
        let mut events = mio::Events::with_capacity(16);
        // With TLS, the loop wakes now and then to see whether the certificates changed.
        let timeout = shared.tls.as_ref().map(|_| TLS_FILE_CHECK);
        let mut next_check = Instant::now() + TLS_FILE_CHECK;
        while !shared.shutdown.load(Ordering::SeqCst) {
            if let Some(tls) = &shared.tls
                && Instant::now() >= next_check
            {
                next_check = Instant::now() + TLS_FILE_CHECK;
                match tls.reload_if_changed() {
                    Ok(true) => tracing::info!("TLS certificate files changed; reloaded"),
                    Ok(false) => {}
                    Err(e) => tracing::error!(error = %e,
                        "TLS certificate files changed but cannot be used; keeping the previous \
                         ones until they are fixed"),
                }
            }
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(error = %e, "acceptor's readiness wait failed; no new connections");
                return;
            }
            // Edge-triggered: accept until the queue is empty.
            while !shared.shutdown.load(Ordering::SeqCst) {
                match self.listener.accept() {
                    Ok((stream, peer)) => self.place(stream, peer, shared, handles, drop_next),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        if self.failed.tick() {
                            tracing::warn!(error = %e, failed = self.failed.count,
                                "accept failed; raise the descriptor limit (ulimit -n) or lower \
                                 --max-connections");
                        }
                        // EMFILE, ENFILE (the same numbers on Linux, macOS and the BSDs).
                        let out_of_fds = matches!(e.raw_os_error(), Some(23 | 24));
                        if !(out_of_fds && self.use_spare(shared, handles, drop_next)) {
                            // Wait for descriptors to free up rather than spin; connections
                            // stay queued, and the loop comes back to them (no new edge would).
                            std::thread::sleep(ACCEPT_BACKOFF);
                        }
                    }
                }
            }
        }
    }

    /// Out of descriptors: gives up the spare to accept one waiting connection; serves it if
    /// the spare can be had back (room was made), else closes it. False if nothing was waiting
    /// or there is no spare.
    fn use_spare(&mut self, shared: &Shared, handles: &[Handle], drop_next: &AtomicUsize) -> bool {
        if self.spare.take().is_none() {
            self.spare = std::fs::File::open("/dev/null").ok();
            return false;
        }
        let accepted = self.listener.accept();
        self.spare = std::fs::File::open("/dev/null").ok();
        match accepted {
            Ok((stream, peer)) if self.spare.is_some() => {
                self.place(stream, peer, shared, handles, drop_next);
                true
            }
            Ok((stream, peer)) => {
                if self.refused.tick() {
                    tracing::warn!(%peer, refused = self.refused.count,
                        "out of descriptors; connection refused");
                }
                drop(stream);
                shared.metrics.refused.inc();
                self.spare = std::fs::File::open("/dev/null").ok();
                true
            }
            Err(_) => false,
        }
    }

    /// Hands a new connection to the least-loaded worker (or refuses it).
    fn place(
        &mut self,
        stream: mio::net::TcpStream,
        peer: SocketAddr,
        shared: &Shared,
        handles: &[Handle],
        drop_next: &AtomicUsize,
    ) {
        if drop_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
        if shared.open.load(Ordering::SeqCst) >= self.max_connections {
            if self.refused.tick() {
                tracing::warn!(%peer, max_connections = self.max_connections,
                    refused = self.refused.count,
                    "too many connections; refusing (raise --max-connections if the host allows)");
            }
            shared.metrics.refused.inc();
            return;
        }
        let _ = stream.set_nodelay(true);
        let Some(h) = handles
            .iter()
            .min_by_key(|h| h.load.load(Ordering::Relaxed))
        else {
            return;
        };
        h.load.fetch_add(1, Ordering::Relaxed);
        shared.open.fetch_add(1, Ordering::SeqCst);
        shared.metrics.accepted.inc();
        if !h.send(Command::Conn(stream, peer)) {
            // The worker is gone (shutting down).
            h.load.fetch_sub(1, Ordering::Relaxed);
            shared.open.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Binds the first free port of the range, with the configured listen backlog (std's
/// `TcpListener::bind` always asks for 128).
fn bind(config: &ServerConfig) -> Result<TcpListener, ServerError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let backlog = i32::try_from(config.backlog).unwrap_or(i32::MAX);
    let mut last_err = None;
    for port in config.ports.first..=config.ports.last {
        let addr = SocketAddr::new(config.bind, port);
        let attempt = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
            .and_then(|s| {
                // As std does on Unix: a restarted server can bind while old connections linger.
                s.set_reuse_address(true)?;
                s.bind(&addr.into())?;
                s.listen(backlog)?;
                Ok(s)
            });
        match attempt {
            Ok(s) => {
                warn_if_backlog_capped(config.backlog);
                return Ok(s.into());
            }
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

/// Linux silently caps a listen backlog at `net.core.somaxconn`.
fn warn_if_backlog_capped(backlog: usize) {
    let cap = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok());
    if let Some(cap) = cap
        && backlog > cap
    {
        tracing::warn!(
            backlog,
            somaxconn = cap,
            "listen backlog capped by the kernel; raise net.core.somaxconn for more"
        );
    }
}

/// Descriptors a server needs: one per connection, one more while a connection uploads a blob
/// spooled to a file, two per worker (its epoll set and waker), and [`FD_RESERVE`]. Counted for
/// the common case of a quarter of the connections spooling at once.
pub fn descriptors_needed(max_connections: usize, workers: usize) -> u64 {
    let c = max_connections as u64;
    c + c / 4 + 2 * workers as u64 + FD_RESERVE
}

/// Warns when the descriptor limit is below `need`.
#[allow(clippy::unnecessary_cast)] // rlim_t is u32 on some 32-bit targets
fn check_fd_limit(need: u64) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct we pass and nothing else.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0
            && (lim.rlim_cur as u64) < need
        {
            tracing::warn!(
                soft_limit = lim.rlim_cur as u64,
                needed = need,
                "descriptor limit below max connections; raise it (ulimit -n) or lower \
                     --max-connections, else accepts fail once it is reached"
            );
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = need;
}

/// Descriptors a server needs besides its connections and workers: the store's files, the
/// listener, the acceptor's spare, logs.
pub const FD_RESERVE: u64 = 64;

/// Raises this process's soft descriptor limit towards its hard limit so that `need`
/// descriptors fit (what the `serve` command does at start, with [`descriptors_needed`]);
/// returns the soft limit in force.
#[allow(clippy::unnecessary_cast)] // rlim_t is u32 on some 32-bit targets
pub fn raise_fd_limit(need: u64) -> Option<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit read and write only the struct we pass.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                return None;
            }
            let want = need.min(lim.rlim_max as u64);
            if (lim.rlim_cur as u64) < want {
                lim.rlim_cur = want as libc::rlim_t;
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return None;
                }
            }
        }
        Some(lim.rlim_cur as u64)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = need;
        None
    }
}
