//! Storage fault injection: a redb backend over the store file that fails on demand. Used by the
//! tests (and available to embedders' chaos tests) to show that a failing disk loses nothing.

use std::io;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use redb::{BackendError, StorageBackend};

use super::space::Guard;

/// Switches injected storage failures on and off. Clones share one switch.
#[derive(Debug, Clone, Default)]
pub struct FaultSwitch(Arc<AtomicU8>);

const OFF: u8 = 0;
const FULL: u8 = 1;
const ALL: u8 = 2;

impl FaultSwitch {
    /// A switch that is off: storage works.
    pub fn new() -> Self {
        Self::default()
    }

    /// Like a full disk: growing the file and writing past its end fail; reads and rewrites of
    /// existing pages still work.
    pub fn disk_full(&self) {
        self.0.store(FULL, Ordering::SeqCst);
    }

    /// Every write, resize and sync fails.
    pub fn fail_writes(&self) {
        self.0.store(ALL, Ordering::SeqCst);
    }

    /// Storage works again.
    pub fn heal(&self) {
        self.0.store(OFF, Ordering::SeqCst);
    }

    /// Whether a write to another file of the store (the write-ahead log) may go ahead: like
    /// the database file, it cannot grow while the disk is full, nor be written while writes
    /// fail.
    pub(crate) fn check_write(&self, grows: bool) -> io::Result<()> {
        match self.mode() {
            ALL => Err(FaultyBackend::injected("log write")),
            FULL if grows => Err(FaultyBackend::injected_full("log grow")),
            _ => Ok(()),
        }
    }

    /// Whether the switch says the file system has no space (see `space.rs`): free space then
    /// reads as zero, so the store's reserve logic sees the disk the backends simulate.
    pub(crate) fn simulates_full(&self) -> bool {
        self.mode() != OFF
    }

    fn mode(&self) -> u8 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A backend (the store file, or a memory image) that consults a [`FaultSwitch`] before each
/// mutation.
#[derive(Debug)]
pub(crate) struct FaultyBackend {
    inner: Box<dyn StorageBackend>,
    switch: FaultSwitch,
    /// The store's own guard for a full disk (see `space.rs`); not a fault injection.
    guard: Option<Arc<Guard>>,
}

impl FaultyBackend {
    pub(crate) fn new(inner: impl StorageBackend, switch: FaultSwitch) -> Self {
        FaultyBackend {
            inner: Box::new(inner),
            switch,
            guard: None,
        }
    }

    /// Also refuses writes when `guard` says the disk is too full for them.
    pub(crate) fn with_guard(mut self, guard: Arc<Guard>) -> Self {
        self.guard = Some(guard);
        self
    }

    fn injected(what: &str) -> io::Error {
        io::Error::new(
            io::ErrorKind::StorageFull,
            format!("injected storage fault ({what})"),
        )
    }

    /// Like a real full disk's error, which the store recognises by its text.
    fn injected_full(what: &str) -> io::Error {
        io::Error::new(
            io::ErrorKind::StorageFull,
            format!("no space left on device (injected storage fault: {what})"),
        )
    }
}

impl StorageBackend for FaultyBackend {
    fn len(&self) -> Result<u64, io::Error> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        match self.switch.mode() {
            ALL => return Err(Self::injected("set_len")),
            FULL if len > self.inner.len()? => return Err(Self::injected_full("grow")),
            _ => {}
        }
        if let Some(g) = &self.guard
            && len > self.inner.len()?
        {
            g.check()?;
        }
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        if self.switch.mode() == ALL {
            return Err(Self::injected("sync"));
        }
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        match self.switch.mode() {
            ALL => return Err(Self::injected("write")),
            FULL if offset + data.len() as u64 > self.inner.len()? => {
                return Err(Self::injected_full("write past end"));
            }
            _ => {}
        }
        if let Some(g) = &self.guard {
            g.check()?;
        }
        self.inner.write(offset, data)
    }

    fn close(&self) -> Result<(), io::Error> {
        self.inner.close()
    }

    fn try_lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(s, e)
    }

    fn try_lock_shared_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(s, e)
    }

    fn lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(s, e)
    }

    fn lock_shared_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(s, e)
    }

    fn unlock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(s, e)
    }

    fn query_lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(s, e)
    }
}
