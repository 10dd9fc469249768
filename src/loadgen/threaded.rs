//! The load generator's reference servers (raw TCP, the raw-TCP floor, the file-per-blob
//! baseline): a thread per connection on 127.0.0.1, as simple as a server gets. Threads are
//! named `{prefix}-accept` and `{prefix}-conn`, so that the bench counts their CPU as the
//! server's (`cpu.rs`).

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

/// A thread-per-connection server on an OS-chosen loopback port; stops accepting when dropped
/// (connections already open end with their clients).
pub(super) struct ThreadedServer {
    pub(super) addr: SocketAddr,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl ThreadedServer {
    /// Serves each connection with `serve` on a thread of its own; `what` names the server in
    /// its warnings.
    pub(super) fn start(
        prefix: &'static str,
        what: &'static str,
        serve: impl Fn(TcpStream) + Send + Sync + 'static,
    ) -> io::Result<ThreadedServer> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let serve = Arc::new(serve);
        let acceptor = std::thread::Builder::new()
            .name(format!("{prefix}-accept"))
            .spawn(move || {
                for s in listener.incoming() {
                    if stop2.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(s) = s {
                        let serve = Arc::clone(&serve);
                        let spawned = std::thread::Builder::new()
                            .name(format!("{prefix}-conn"))
                            .spawn(move || serve(s));
                        if let Err(e) = spawned {
                            tracing::warn!("{what}: cannot start a connection thread: {e}");
                        }
                    }
                }
            })?;
        Ok(ThreadedServer {
            addr,
            stop,
            acceptor: Some(acceptor),
        })
    }
}

impl Drop for ThreadedServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the acceptor, which then sees `stop`.
        let _ = TcpStream::connect(self.addr);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}
