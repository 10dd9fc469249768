//! A full disk degrades the store instead of wedging it.
//!
//! redb is copy-on-write: even a DELETE needs a few new pages, and after an I/O error redb fails
//! every later call until the database is reopened, which may write too (a repair, the log's
//! replay). So the store keeps a reserve for itself: a ballast file (`blobs.reserve`,
//! [`StoreOptions::reserve_bytes`](super::StoreOptions::reserve_bytes), 8 MiB by default) made at
//! open when space allows. The states:
//!
//! - **Normal**: the ballast exists; everything works as usual.
//! - **Out of space**: entered when a write fails with "no space left on device" (the log, the
//!   database, a checkpoint). The ballast is deleted at once, which gives its space back to the
//!   file system, and the batch's DELETEs are retried on it. While out of space every commit is
//!   durable and bypasses the write-ahead log (the log cannot grow, and only a durable commit
//!   lets redb reuse the pages a DELETE frees). PUTs fail fast with [`StoreError::NoSpace`]
//!   without touching the disk, except after a DELETE freed something: then PUTs are tried,
//!   with the database file's writes refused while the file system has less than half the
//!   reserve free (`Guard`), so that a PUT that does not fit in the pages DELETEs freed fails
//!   without eating the room the next DELETE needs. Uploads too large for memory are refused
//!   rather than spooled to a file.
//! - Back to **normal** as soon as the file system has twice the reserve free: checked (one
//!   `statvfs`) before each batch while out of space; the ballast is made again.
//!
//! The episode is logged once when it starts and once when it ends, not per request.

use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{FaultSwitch, StoreError};

/// The ballast file inside a store directory.
pub const RESERVE_FILE: &str = "blobs.reserve";

/// Default size of the ballast: a DELETE's durable commit needs a few pages, a reopen after the
/// failure a repair of the allocator state (a few hundred KiB for a file of tens of GiB).
pub const DEFAULT_RESERVE_BYTES: u64 = 8 * 1024 * 1024;

/// Most one warning about full spool writes per this long.
const SPOOL_WARNING_EVERY: Duration = Duration::from_secs(60);
/// Without `statvfs`, how often making the ballast again is tried while out of space.
const RETRY_WITHOUT_STATVFS: Duration = Duration::from_secs(1);

/// Whether `e` says the disk is full. Storage errors reach the writer flattened to text (redb's
/// and the log's I/O errors), so this reads the text: the OS error (ENOSPC is os error 28 on
/// Linux, macOS and the BSDs) or [`FaultSwitch::disk_full`](super::FaultSwitch::disk_full).
pub(crate) fn is_out_of_space(e: &StoreError) -> bool {
    match e {
        StoreError::NoSpace { .. } => true,
        StoreError::Spool(_, io) | StoreError::Io(io) => is_full(io),
        StoreError::Storage(s) | StoreError::Open(_, s) => {
            let s = s.to_ascii_lowercase();
            [
                "no space left on device",
                "(os error 28)",
                "disk quota exceeded",
            ]
            .iter()
            .any(|m| s.contains(m))
        }
        _ => false,
    }
}

/// ENOSPC, or EDQUOT (a user's quota is full: the reserve counts against it too).
pub(crate) fn is_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

/// Refuses the database file's writes while armed and the file system is low (see the module
/// doc). Shared by the store's writer (which arms it) and its redb backend (which asks it).
#[derive(Debug)]
pub(crate) struct Guard {
    dir: PathBuf,
    faults: FaultSwitch,
    armed: AtomicBool,
    floor: AtomicU64,
}

impl Guard {
    /// The error a guarded write fails with, if it must.
    pub(crate) fn check(&self) -> io::Result<()> {
        if !self.armed.load(Ordering::SeqCst) {
            return Ok(());
        }
        let floor = self.floor.load(Ordering::SeqCst);
        match free_space(&self.dir, &self.faults) {
            Some(free) if free < floor => Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "no space left on device: {free} bytes free, the last {floor} are kept for \
                     DELETEs"
                ),
            )),
            _ => Ok(()),
        }
    }
}

/// The reserve of a store on disk and whether the store is out of space.
#[derive(Debug)]
pub(crate) struct Space {
    dir: PathBuf,
    path: PathBuf,
    bytes: u64,
    out_of_space: AtomicBool,
    /// Writer only: PUTs may be tried while out of space (a DELETE freed pages since a PUT last
    /// failed).
    puts_may_fit: AtomicBool,
    last_try: std::sync::Mutex<Option<Instant>>,
    /// When an upload last failed to spool for lack of space (logged once a minute at most).
    spool_full: std::sync::Mutex<Option<Instant>>,
    guard: Arc<Guard>,
}

impl Space {
    /// Makes the ballast unless it is there; on a file system too full for it, the store starts
    /// out of space.
    pub(crate) fn open(dir: &Path, bytes: u64, faults: FaultSwitch) -> Space {
        let space = Space {
            dir: dir.to_path_buf(),
            path: dir.join(RESERVE_FILE),
            bytes,
            out_of_space: AtomicBool::new(false),
            puts_may_fit: AtomicBool::new(false),
            last_try: std::sync::Mutex::new(None),
            spool_full: std::sync::Mutex::new(None),
            guard: Arc::new(Guard {
                dir: dir.to_path_buf(),
                faults,
                armed: AtomicBool::new(false),
                floor: AtomicU64::new(bytes / 2),
            }),
        };
        match space.make_ballast() {
            Ok(()) => {}
            Err(e) if is_full(&e) => space.enter(&format!(
                "cannot make the reserve {}: {e}",
                space.path.display()
            )),
            // Not a full disk (permissions, a file system without the calls): no reserve, and
            // a full disk may then fail DELETEs too.
            Err(e) => tracing::warn!(path = %space.path.display(), error = %e,
                "cannot make the reserve that keeps DELETEs working on a full disk"),
        }
        space
    }

    pub(crate) fn guard(&self) -> Arc<Guard> {
        Arc::clone(&self.guard)
    }

    /// Whether the store is out of space (PUTs fail fast, large uploads are refused).
    pub(crate) fn is_out(&self) -> bool {
        self.out_of_space.load(Ordering::SeqCst)
    }

    /// The error a PUT gets while out of space.
    pub(crate) fn no_space(&self, detail: impl Into<String>) -> StoreError {
        StoreError::NoSpace {
            dir: self.dir.clone(),
            detail: detail.into(),
        }
    }

    /// An upload could not be spooled for lack of space. Its file goes at once, so the space
    /// comes back and the reserve stays; logged once a minute at most, not per upload.
    pub(crate) fn spool_failed(&self, path: &Path, e: &io::Error) {
        let Ok(mut last) = self.spool_full.lock() else {
            return;
        };
        if last.is_none_or(|t| t.elapsed() >= SPOOL_WARNING_EVERY) {
            *last = Some(Instant::now());
            tracing::warn!(dir = %self.dir.display(), path = %path.display(), error = %e,
                "no space left on device for an upload's spool file: uploads over the in-memory \
                 limit fail until space is freed");
        }
    }

    /// A write failed for lack of space: gives the ballast back to the file system. Returns
    /// whether there was one to give.
    pub(crate) fn release(&self, why: &str) -> bool {
        let had = fs::metadata(&self.path).is_ok();
        if had && let Err(e) = fs::remove_file(&self.path) {
            tracing::error!(path = %self.path.display(), error = %e, "cannot remove the reserve");
        }
        self.enter(why);
        had
    }

    fn enter(&self, why: &str) {
        self.puts_may_fit.store(false, Ordering::SeqCst);
        if !self.out_of_space.swap(true, Ordering::SeqCst) {
            tracing::warn!(dir = %self.dir.display(), reserve = self.bytes, cause = why,
                "no space left on device: PUTs fail until space is freed (DELETE blobs, or free \
                 space on the file system); the reserve is released so that DELETEs go through");
        }
    }

    /// While out of space: makes the ballast again if the file system has room for it (twice
    /// its size, so that the next PUTs do not take it straight back), and reports whether the
    /// store is back to normal.
    /// Called by the writer and by uploads about to spool to a file, so one at a time.
    pub(crate) fn try_restore(&self) -> bool {
        if !self.is_out() {
            return true;
        }
        let Ok(mut last) = self.last_try.lock() else {
            return false;
        };
        if !self.is_out() {
            return true;
        }
        let room = match free_space(&self.dir, &self.guard.faults) {
            Some(free) => free >= self.bytes.saturating_mul(2).max(1024 * 1024),
            None => {
                let due = last.is_none_or(|t| t.elapsed() >= RETRY_WITHOUT_STATVFS);
                if due {
                    *last = Some(Instant::now());
                }
                due
            }
        };
        if !room {
            return false;
        }
        match self.make_ballast() {
            Ok(()) => {
                self.out_of_space.store(false, Ordering::SeqCst);
                tracing::info!(dir = %self.dir.display(), "space returned: PUTs accepted again");
                true
            }
            Err(e) => {
                tracing::debug!(path = %self.path.display(), error = %e, "reserve not made yet");
                false
            }
        }
    }

    /// Whether a PUT is worth trying while out of space.
    pub(crate) fn puts_may_fit(&self) -> bool {
        self.puts_may_fit.load(Ordering::SeqCst)
    }

    /// A DELETE freed pages (or a PUT did not fit): whether PUTs are tried.
    pub(crate) fn set_puts_may_fit(&self, on: bool) {
        self.puts_may_fit.store(on, Ordering::SeqCst);
    }

    /// Arms the guard for the duration of a PUT commit while out of space.
    pub(crate) fn arm(&self, on: bool) {
        self.guard.armed.store(on, Ordering::SeqCst);
    }

    /// Creates the ballast with its blocks allocated (a sparse file would reserve nothing).
    fn make_ballast(&self) -> io::Result<()> {
        if self.bytes == 0 {
            let _ = fs::remove_file(&self.path);
            return Ok(());
        }
        if let Ok(m) = fs::metadata(&self.path)
            && m.len() == self.bytes
            && allocated(&m) >= self.bytes
        {
            return Ok(());
        }
        let result = (|| {
            if self.guard.faults.simulates_full() {
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    "no space left on device (injected storage fault: reserve)",
                ));
            }
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&self.path)?;
            allocate(&file, self.bytes)?;
            file.sync_all()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&self.path);
        }
        result
    }
}

#[cfg(unix)]
fn allocated(m: &fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::blocks(m) * 512
}

#[cfg(not(unix))]
fn allocated(m: &fs::Metadata) -> u64 {
    m.len()
}

/// Gives `file` `len` bytes of real blocks: `posix_fallocate` where it works, else zeros.
fn allocate(file: &fs::File, len: u64) -> io::Result<()> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a plain syscall on an open descriptor; it reads no memory of ours.
        let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len as libc::off_t) };
        match rc {
            0 => return Ok(()),
            libc::EOPNOTSUPP | libc::EINVAL => {}
            rc => return Err(io::Error::from_raw_os_error(rc)),
        }
    }
    use std::os::unix::fs::FileExt;
    let zeros = vec![0u8; 1024 * 1024];
    let mut at = 0;
    while at < len {
        let n = (len - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// Free bytes as the store sees them: none while a [`FaultSwitch`] simulates a full disk.
fn free_space(dir: &Path, faults: &FaultSwitch) -> Option<u64> {
    match faults.simulates_full() {
        true => Some(0),
        false => free_bytes(dir),
    }
}

/// Bytes an unprivileged writer may still use on the file system holding `dir`, where the
/// platform says (Linux with glibc: `statvfs`).
fn free_bytes(dir: &Path) -> Option<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
        let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: `c` is a NUL-terminated path and `st` a buffer of the right type, which the
        // call fills when it returns 0.
        let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
        if rc != 0 {
            return None;
        }
        // SAFETY: statvfs returned 0, so it filled `st`.
        let st = unsafe { st.assume_init() };
        // The field types differ between targets (u32 or u64): widen whatever they are.
        #[allow(clippy::useless_conversion)]
        let (avail, frsize) = (u64::from(st.f_bavail), u64::from(st.f_frsize));
        Some(avail.saturating_mul(frsize))
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = dir;
        None
    }
}
