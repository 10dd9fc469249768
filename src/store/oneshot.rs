//! A one-value channel for the writer's replies: the waiting thread sleeps on a condition
//! variable at once. (A crossbeam channel spins and calls `sched_yield` before it sleeps; with a
//! connection thread per PUT waiting about a millisecond for its group commit, those yields were
//! ~5 context switches per PUT on two cores.)

use std::sync::{Arc, Condvar, Mutex};

struct Slot<T> {
    value: Option<T>,
    /// The sender is gone (it sent, or was dropped without sending).
    done: bool,
}

struct Shared<T> {
    slot: Mutex<Slot<T>>,
    ready: Condvar,
}

pub(crate) struct Sender<T>(Option<Arc<Shared<T>>>);
pub(crate) struct Receiver<T>(Arc<Shared<T>>);

/// The receiver's sender went away without sending.
#[derive(Debug)]
pub(crate) struct Closed;

pub(crate) fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        slot: Mutex::new(Slot {
            value: None,
            done: false,
        }),
        ready: Condvar::new(),
    });
    (Sender(Some(Arc::clone(&shared))), Receiver(shared))
}

impl<T> Sender<T> {
    pub(crate) fn send(mut self, value: T) -> Result<(), T> {
        match self.0.take() {
            Some(shared) => {
                finish(&shared, Some(value));
                Ok(())
            }
            None => Err(value),
        }
    }
}

fn finish<T>(shared: &Shared<T>, value: Option<T>) {
    let mut slot = match shared.slot.lock() {
        Ok(s) => s,
        Err(poisoned) => poisoned.into_inner(),
    };
    if value.is_some() {
        slot.value = value;
    }
    slot.done = true;
    drop(slot);
    shared.ready.notify_one();
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if let Some(shared) = self.0.take() {
            finish(&shared, None);
        }
    }
}

impl<T> Receiver<T> {
    /// Waits for the value; `Closed` if the sender was dropped without sending.
    pub(crate) fn recv(self) -> Result<T, Closed> {
        let mut slot = self.0.slot.lock().map_err(|_| Closed)?;
        while !slot.done {
            slot = self.0.ready.wait(slot).map_err(|_| Closed)?;
        }
        slot.value.take().ok_or(Closed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivers_across_threads_and_reports_a_dropped_sender() {
        let (tx, rx) = channel();
        let h = std::thread::spawn(move || tx.send(7u32));
        assert_eq!(rx.recv().ok(), Some(7));
        assert!(h.join().unwrap().is_ok());
        let (tx, rx) = channel::<u32>();
        drop(tx);
        assert!(rx.recv().is_err());
        let (tx, rx) = channel::<u32>();
        drop(rx);
        assert_eq!(tx.send(1), Ok(()));
    }
}
