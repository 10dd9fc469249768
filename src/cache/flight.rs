//! Single flight: the first request for a missing blob downloads it, later requests for the same
//! key wait for that download's outcome instead of starting their own.

use std::sync::{Condvar, Mutex, MutexGuard};

use super::error::CacheError;

/// One shared download's outcome: the first requester [`complete`](Self::complete)s it, the
/// others [`wait`](Self::wait).
#[derive(Default)]
pub(super) struct Flight {
    done: Mutex<Option<Result<(), CacheError>>>,
    cv: Condvar,
}

impl Flight {
    /// Records the outcome and wakes every waiter.
    pub(super) fn complete(&self, r: Result<(), CacheError>) {
        let mut d = lock(&self.done);
        *d = Some(r);
        self.cv.notify_all();
    }

    /// Blocks until the outcome is known.
    pub(super) fn wait(&self) -> Result<(), CacheError> {
        let mut d = lock(&self.done);
        loop {
            if let Some(r) = d.as_ref() {
                return r.clone();
            }
            d = self.cv.wait(d).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Locks `m` even if a thread panicked holding it, so that one panicking caller does not
/// disable the cache for every other.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::BlobKey;
    use std::sync::Arc;

    #[test]
    fn every_waiter_gets_the_outcome() {
        let f = Arc::new(Flight::default());
        let waiters: Vec<_> = (0..4)
            .map(|_| {
                let f = Arc::clone(&f);
                std::thread::spawn(move || f.wait())
            })
            .collect();
        let key = BlobKey::of(b"x");
        f.complete(Err(CacheError::Abandoned(key)));
        for w in waiters {
            assert!(matches!(w.join().unwrap(), Err(CacheError::Abandoned(k)) if k == key));
        }
        // A late waiter does not block.
        assert!(f.wait().is_err());
    }
}
