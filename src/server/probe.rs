//! A running server's figures, read from outside its threads: [`BlobServer::metrics`] for
//! embedders, [`ServerProbe`] for whoever outlives a borrow of the server (the admin endpoint).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::BlobServer;
use super::reactor::Shared;
use crate::metrics::ServerSnapshot;
use crate::store::BlobStore;

/// A cheap, clonable view of a running server's figures. It keeps the store open while it
/// lives, not the server: after the server stops, its connection figures are frozen.
#[derive(Clone)]
pub struct ServerProbe {
    shared: Arc<Shared>,
    /// A duplicate of the listening socket, for its backlog (`TCP_INFO`). Closed when the
    /// server stops: while any descriptor is open the kernel keeps queueing connections.
    listener: Arc<Mutex<Option<socket2::Socket>>>,
    workers: usize,
}

impl std::fmt::Debug for ServerProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerProbe")
            .field("workers", &self.workers)
            .finish()
    }
}

impl ServerProbe {
    pub(super) fn new(
        shared: Arc<Shared>,
        listener: Option<socket2::Socket>,
        workers: usize,
    ) -> ServerProbe {
        ServerProbe {
            shared,
            listener: Arc::new(Mutex::new(listener)),
            workers,
        }
    }

    /// The server's figures now, with its store's.
    pub fn metrics(&self) -> ServerSnapshot {
        let mut s = self.shared.metrics.snapshot();
        s.connections_open = self.shared.open.load(Ordering::Relaxed) as u64;
        s.workers = self.workers as u64;
        let queue = match self.listener.lock() {
            Ok(l) => l.as_ref().and_then(crate::metrics::listen_queue),
            Err(_) => None,
        };
        if let Some((queued, max)) = queue {
            (s.listen_queue, s.listen_queue_max) = (Some(queued), Some(max));
        }
        s.store = self.shared.store.metrics();
        s
    }

    /// The store served.
    pub fn store(&self) -> &BlobStore {
        &self.shared.store
    }

    /// Closes the duplicate of the listening socket (the server is stopping).
    pub(super) fn close_listener(&self) {
        if let Ok(mut l) = self.listener.lock() {
            l.take();
        }
    }

    /// Whether the server stopped.
    pub fn is_stopped(&self) -> bool {
        self.shared.shutdown.load(Ordering::Relaxed)
    }
}

impl BlobServer {
    /// The server's counters and figures now (cheap: atomics, no scan), with its store's.
    pub fn metrics(&self) -> ServerSnapshot {
        self.probe.metrics()
    }

    /// A view of the server's figures that can be kept and read from other threads.
    pub fn probe(&self) -> ServerProbe {
        self.probe.clone()
    }
}
