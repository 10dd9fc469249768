//! Warnings a peer can cause (a malformed request, a refused TLS handshake, a stall), limited
//! in rate: a client opening bad connections in a loop must not fill the disk with log lines.
//! The first [`PER_SECOND`] of each second are logged; the rest are counted, and one line says
//! how many were held back once their second is over (the metrics count every one of them).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Warnings about peers logged per second, across the server's workers.
pub(super) const PER_SECOND: u32 = 20;

const WINDOW: Duration = Duration::from_secs(1);

/// The server's budget of warnings about peers (shared by its workers).
#[derive(Debug)]
pub(super) struct PeerWarnings {
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    logged: u32,
    held_back: u64,
}

impl Window {
    /// Ends the window if its second is over, saying what it held back.
    fn roll(&mut self, now: Instant) {
        if now.saturating_duration_since(self.start) < WINDOW {
            return;
        }
        if self.held_back > 0 {
            tracing::warn!(
                held_back = self.held_back,
                "{} more warnings about peers in the last {:.1} s were not logged (more than \
                 {PER_SECOND} a second): a client may be misbehaving; the failed requests and \
                 refused connections are counted in the metrics",
                self.held_back,
                now.saturating_duration_since(self.start).as_secs_f64()
            );
        }
        *self = Window {
            start: now,
            logged: 0,
            held_back: 0,
        };
    }
}

impl PeerWarnings {
    pub(super) fn new() -> PeerWarnings {
        PeerWarnings {
            window: Mutex::new(Window {
                start: Instant::now(),
                logged: 0,
                held_back: 0,
            }),
        }
    }

    /// Whether one more warning about a peer may be logged now (else it is counted).
    pub(super) fn admit(&self) -> bool {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> bool {
        let Ok(mut w) = self.window.lock() else {
            return true;
        };
        w.roll(now);
        if w.logged < PER_SECOND {
            w.logged += 1;
            true
        } else {
            w.held_back += 1;
            false
        }
    }

    /// Says how many were held back once their second is over (called by the workers' sweeps,
    /// so the count is logged even when the flood has stopped).
    pub(super) fn flush(&self) {
        if let Ok(mut w) = self.window.lock() {
            w.roll(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_a_second_s_budget_then_counts_until_the_second_is_over() {
        let w = PeerWarnings::new();
        let t0 = w.window.lock().unwrap().start;
        let admitted = (0..PER_SECOND * 3).filter(|_| w.admit_at(t0)).count();
        assert_eq!(admitted, PER_SECOND as usize);
        assert_eq!(
            w.window.lock().unwrap().held_back,
            u64::from(PER_SECOND * 2)
        );
        // Still the same second: held back.
        assert!(!w.admit_at(t0 + WINDOW / 2));
        // The next second: a new budget, the count reset.
        assert!(w.admit_at(t0 + WINDOW));
        let after = w.window.lock().unwrap();
        assert_eq!((after.logged, after.held_back), (1, 0));
    }
}
