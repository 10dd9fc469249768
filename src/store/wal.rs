//! The write-ahead log: how small writes become durable with one sequential fsync.
//!
//! A durable redb commit writes every page it touched where the allocator put it; on this
//! project's disk an fsync costs ~30 µs per scattered page, and a group commit of four 4 KiB
//! PUTs touches ~24 of them (BENCHMARKS.md). So a batch of small operations is applied in a
//! non-durable redb commit and made durable by appending it, whole, to this log and syncing
//! that: one contiguous write. A later durable redb commit (a checkpoint, or any large PUT) makes
//! everything before it durable in the database, and the log starts over.
//!
//! Record: `len: u32, crc32c(body): u32, body`, body = `store id: u64, lsn: u64, ops: u32`,
//! then the operations. The database records the last LSN it applied (`wal_lsn` in settings) in
//! the same transaction as the operations, so replay after a crash applies exactly the records
//! after the last durable commit, in order: it stops at the first record that is torn, fails its
//! CRC, belongs to another store, or does not continue the sequence.
//!
//! Where it stopped, it tells a torn tail from damage: if records of this store that would have
//! continued the sequence lie after the stop, acknowledged writes are being dropped (damage,
//! logged at ERROR with counts); if not (zeros, the end, remains of records the database holds
//! already, or bytes that form no record, which cannot be told from the remains of older
//! records the log overwrote), it is what a crash leaves (a torn tail, INFO). Either way the
//! stop record and everything after it that would continue the sequence are zeroed, durably,
//! so that they never follow newer records that reuse their sequence numbers.
//!
//! The file keeps its length across opens (at least one `GROW_STEP`), so a full disk cannot
//! keep the next record, even a DELETE's, from being written; the database records that
//! length (`wal_reserved`) once it is synced, and a shorter or missing log at open was cut
//! (ERROR: acknowledged writes since the database's LSN may be lost).

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, Durability, ReadableDatabase, WriteTransaction};

use super::faults::FaultSwitch;
use super::lease::Leases;
use super::logfile::LogFile;
use super::schema::{Layout, SETTINGS, STORE_ID_SETTING, WAL_LSN_SETTING};
use super::writer::{Tables, WriteOp};
use super::{StoreError, crc};
use crate::key::{BlobKey, JobId};
use crate::protocol::{DeleteTarget, PutTarget};

/// The log inside a store directory.
pub const WAL_FILE: &str = "blobs.wal";

/// Largest blob that goes through the log; larger ones are committed to the database directly
/// (their pages are contiguous anyway, and logging them would write them twice).
const MAX_LOGGED_BLOB: u64 = 64 * 1024;
/// Largest batch (payload bytes) that goes through the log.
const MAX_LOGGED_BATCH: u64 = 1024 * 1024;
/// Log size after which the writer checkpoints: bounds replay time and the space that
/// non-durable commits keep from being reused.
pub(crate) const CHECKPOINT_BYTES: u64 = 32 * 1024 * 1024;

/// Longest record body replay accepts (and `loggable` lets through).
const MAX_RECORD: u64 = MAX_LOGGED_BATCH + 64 * 1024;
/// Store id, LSN, operation count.
const BODY_HEADER: u64 = 20;
/// Most bytes an operation takes besides its blob: kind, job, name length, name, key, length.
const OP_OVERHEAD: u64 = 1 + 16 + 1 + MAX_NAME as u64 + 20 + 8;
/// Longest name a record holds (`key::check_name`).
const MAX_NAME: usize = 64;
const HEADER: usize = 8;
/// The log file grows (zero-filled) in steps of this.
const GROW_STEP: u64 = 1024 * 1024;
const PUT_CONTENT: u8 = 1;
const PUT_NAMED: u8 = 2;
const DELETE_CONTENT: u8 = 3;
const DELETE_NAMED: u8 = 4;
const DELETE_JOB: u8 = 5;
/// The log's length the database knows of: the log never shrinks below it, so a shorter log
/// was cut. Kept here rather than in `schema.rs` because only the log reads it.
const WAL_RESERVED_SETTING: &str = "wal_reserved";

pub(crate) struct Wal {
    file: Box<dyn LogFile>,
    path: PathBuf,
    /// Bytes of valid records; the next one is written here.
    len: u64,
    /// Bytes of the file already written once (its length): the log's reserve. Records
    /// overwrite them in place: appending past the end would make every fsync journal a new
    /// file size too (~2× slower here), and a full disk could not take even a DELETE's record.
    initialized: u64,
    /// The reserve the database was last told of (see [`stamp`](Self::stamp)).
    noted_reserve: u64,
    next_lsn: u64,
    store_id: u64,
    /// Whether this process replayed the log before (then `len` is its valid end).
    replayed_once: bool,
    faults: FaultSwitch,
    buf: Vec<u8>,
    /// What the replay at the store's open found (or a later one, if it found damage).
    last_replay: Option<LogReplay>,
}

/// How a replay of the write-ahead log ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogEnd {
    /// At zeros, the end of the file, or records the database holds already.
    #[default]
    Clean,
    /// At a record that is incomplete or fails its check, with no record of this store after
    /// it that would have continued the sequence: what a crash leaves (that last record was
    /// never acknowledged).
    TornTail,
    /// At a record that is damaged or out of sequence, with newer records of this store after
    /// it: acknowledged writes were discarded.
    Damaged,
}

/// What a replay of the write-ahead log found ([`BlobStore::stats`](super::BlobStore::stats),
/// [`BlobStore::verify`](super::BlobStore::verify)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogReplay {
    /// How the records ended.
    pub end: LogEnd,
    /// The log was shorter than the space the store had reserved for it, or missing: it was
    /// cut, and acknowledged writes from `next_lsn` on may be lost.
    pub cut: bool,
    /// Records applied to the database.
    pub records_replayed: u64,
    /// Records of this store after the stop that would have continued the sequence.
    pub records_discarded: u64,
    /// Bytes made harmless after the stop (the torn or damaged record, and what it hid).
    pub bytes_discarded: u64,
    /// The first sequence number the database does not hold.
    pub next_lsn: u64,
    /// Where the replay stopped.
    pub stop_offset: u64,
    /// The log's length as found.
    pub log_bytes: u64,
    /// The length the store had reserved for the log (0 if it had not recorded one).
    pub reserved_bytes: u64,
}

impl LogReplay {
    /// Whether acknowledged writes may have been lost: records discarded after damage, or a
    /// cut log.
    pub fn lost_writes(&self) -> bool {
        self.cut || (self.end == LogEnd::Damaged && self.records_discarded > 0)
    }
}

impl std::fmt::Display for LogReplay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let end = match self.end {
            LogEnd::Clean => "clean",
            LogEnd::TornTail => "torn tail",
            LogEnd::Damaged => "DAMAGED",
        };
        write!(
            f,
            "{} records replayed, {end}, {} records and {} bytes discarded",
            self.records_replayed, self.records_discarded, self.bytes_discarded
        )?;
        if self.cut {
            write!(
                f,
                ", CUT ({} of {} reserved bytes; writes since LSN {} may be lost)",
                self.log_bytes, self.reserved_bytes, self.next_lsn
            )?;
        }
        Ok(())
    }
}

/// One logged operation, read back.
enum Logged {
    Put {
        key: BlobKey,
        target: PutTarget,
        data: Vec<u8>,
    },
    Delete(DeleteTarget),
}

/// Whether `batch` goes through the log: only ordinary puts of small blobs and deletes (a
/// read-repair depends on the recovery store at the time it is applied, so it is not replayed).
pub(crate) fn loggable(batch: &[WriteOp]) -> bool {
    // An upper bound of the encoded record: replay refuses anything longer.
    let mut bytes = BODY_HEADER;
    for op in batch {
        bytes += OP_OVERHEAD;
        match op {
            WriteOp::Put {
                local_only: true, ..
            } => return false,
            WriteOp::Put { blob, .. } if blob.len() > MAX_LOGGED_BLOB => return false,
            // The store checks names before they get here; the record's format relies on it.
            WriteOp::Put {
                target: PutTarget::Named(_, name),
                ..
            }
            | WriteOp::Delete {
                target: DeleteTarget::Named(_, name),
                ..
            }
            | WriteOp::DeleteLocal {
                target: DeleteTarget::Named(_, name),
                ..
            } if name.len() > MAX_NAME => return false,
            WriteOp::Put { blob, .. } => bytes += blob.len(),
            _ => {}
        }
    }
    bytes <= MAX_RECORD
}

impl Wal {
    /// Opens (or creates) the log file at `path`, which must be a regular file. Nothing is
    /// read until [`replay`](Self::replay).
    pub(crate) fn open(path: &Path, faults: FaultSwitch) -> Result<Wal, StoreError> {
        let file = super::open_rw(path)?;
        Ok(Wal::with_file(Box::new(file), path, faults))
    }

    /// A log over `file` (a `File`, or a test's simulated storage).
    pub(crate) fn with_file(file: Box<dyn LogFile>, path: &Path, faults: FaultSwitch) -> Wal {
        Wal {
            file,
            path: path.to_path_buf(),
            len: 0,
            initialized: 0,
            noted_reserve: 0,
            next_lsn: 1,
            store_id: 0,
            replayed_once: false,
            faults,
            buf: Vec::new(),
            last_replay: None,
        }
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// The LSN the next appended batch gets (to record in its transaction before appending).
    pub(crate) fn next_lsn(&self) -> u64 {
        self.next_lsn
    }

    /// What the replay at the store's open found (or a later one that found damage).
    pub(crate) fn last_replay(&self) -> Option<LogReplay> {
        self.last_replay.clone()
    }

    /// Records in `txn` that it applies the batch `lsn` (and the log's reserve, if it grew).
    pub(crate) fn stamp(&mut self, txn: &WriteTransaction, lsn: u64) -> Result<(), StoreError> {
        let mut settings = txn.open_table(SETTINGS)?;
        settings.insert(WAL_LSN_SETTING, lsn)?;
        // The growth was synced before the record was written: the database never claims more
        // reserve than the disk holds.
        if self.initialized > self.noted_reserve {
            settings.insert(WAL_RESERVED_SETTING, self.initialized)?;
            self.noted_reserve = self.initialized;
        }
        Ok(())
    }

    fn io_error(&self, what: &str, e: io::Error) -> StoreError {
        StoreError::Storage(format!(
            "cannot {what} the write-ahead log {}: {e}",
            self.path.display()
        ))
    }

    /// Applies the records the database has not made durable yet and makes them durable in the
    /// database; then makes what follows the last one applied harmless in place (zeros,
    /// durably), so that it never follows newer records that reuse its sequence numbers, and
    /// keeps the file's length (its reserve). Runs at every open of the database, before
    /// anything else uses it (GETs opened before a reopen keep what they lease: `lease.rs`).
    /// Returns the number of records applied.
    pub(crate) fn replay(
        &mut self,
        db: &Database,
        layout: Layout,
        leases: &Arc<Leases>,
    ) -> Result<u64, StoreError> {
        let (store_id, mut applied, reserved) = {
            let txn = db.begin_read()?;
            let settings = txn.open_table(SETTINGS)?;
            let get = |k| -> Result<u64, StoreError> {
                Ok(settings.get(k)?.map(|v| v.value()).unwrap_or(0))
            };
            (
                get(STORE_ID_SETTING)?,
                get(WAL_LSN_SETTING)?,
                get(WAL_RESERVED_SETTING)?,
            )
        };
        self.store_id = store_id;
        let file_len = self.file.len().map_err(|e| self.io_error("read", e))?;
        // Within one process the log's valid end is known: a record after it failed and was not
        // acknowledged, even if taking it back failed. A fresh process reads to the first gap.
        let limit = match self.replayed_once {
            true => self.len.min(file_len),
            false => file_len,
        };
        let mut at = At {
            file: &*self.file,
            pos: 0,
            end: limit,
        };
        let mut replayed = 0;
        let txn = db.begin_write()?;
        // Kept until the commit has ended (see lease.rs).
        let frees = leases.batch();
        let (stop, bad) = {
            let mut t = Tables::open_leased(&txn, layout, Arc::clone(&frees))?;
            loop {
                let start = at.pos;
                let (lsn, ops) = match read_record(&mut at, store_id)? {
                    Next::Record(lsn, ops) => (lsn, ops),
                    Next::End => break (start, false),
                    Next::Damaged => break (start, true),
                };
                // Records at most the database's LSN are durable in it already: skipped before
                // the first one applied; after it they are what a checkpoint left behind the
                // newer records, and the log ends there.
                if lsn <= applied {
                    if replayed == 0 {
                        continue;
                    }
                    break (start, false);
                }
                // (A crafted database may hold any LSN: no overflow.)
                if Some(lsn) != applied.checked_add(1) {
                    break (start, true);
                }
                for op in ops {
                    match op {
                        Logged::Put { key, target, data } => {
                            t.put(key, &data, &target)?;
                        }
                        Logged::Delete(target) => {
                            t.delete(&target)?;
                        }
                    }
                }
                applied = lsn;
                replayed += 1;
            }
        };
        // The log keeps its length across opens: a full disk must not keep the next record
        // (even a DELETE's, which frees space) from being written. A cut log gets its reserve
        // back; a new one gets one step. Synced before the database records it.
        let wanted = file_len.max(reserved).max(GROW_STEP);
        // What the database records: never more than the disk holds durably.
        let mut reserve = wanted;
        self.initialized = wanted;
        if wanted > file_len {
            let grown = self
                .faults
                .check_write(true)
                .and_then(|()| write_zeros(&*self.file, file_len, wanted))
                .and_then(|()| self.file.sync_all());
            if let Err(e) = grown {
                // A full disk must not keep the store from opening (a store from before the
                // reserve has an empty log): the log grows when it is written, as it did.
                tracing::warn!(path = %self.path.display(), error = %e,
                    "cannot reserve space for the write-ahead log");
                self.initialized = self.file.len().unwrap_or(file_len);
                reserve = reserved;
            }
        }
        if replayed > 0 || reserve != reserved {
            let mut settings = txn.open_table(SETTINGS)?;
            if replayed > 0 {
                settings.insert(WAL_LSN_SETTING, applied)?;
            }
            settings.insert(WAL_RESERVED_SETTING, reserve)?;
            drop(settings);
            txn.commit()?;
        } else {
            txn.abort()?;
        }
        self.noted_reserve = reserve;

        // Everything replayed is durable in the database now. What the log holds after it and
        // would continue the sequence (a torn record, or a damaged one and the records it hid)
        // must never be replayed after newer records reuse its sequence numbers.
        let torn_end = match bad {
            true => self.record_extent(stop, file_len)?,
            false => stop,
        };
        let hidden = self.scan_newer(stop, file_len, applied)?;
        let zero_end = torn_end.max(hidden.end);
        if zero_end > stop {
            self.faults
                .check_write(false)
                .and_then(|()| write_zeros(&*self.file, stop, zero_end))
                .and_then(|()| self.file.sync_data())
                .map_err(|e| self.io_error("clear the discarded tail of", e))?;
        }
        // Records past this process's known end were never acknowledged (their batch failed).
        let damaged = hidden.before(limit) > 0;
        let report = LogReplay {
            end: match (damaged, zero_end > stop) {
                (true, _) => LogEnd::Damaged,
                (false, true) => LogEnd::TornTail,
                (false, false) => LogEnd::Clean,
            },
            cut: file_len < reserved,
            records_replayed: replayed,
            records_discarded: if damaged { hidden.before(limit) } else { 0 },
            bytes_discarded: zero_end - stop,
            next_lsn: applied.saturating_add(1),
            stop_offset: stop,
            log_bytes: file_len,
            reserved_bytes: reserved,
        };
        self.log_replay(&report);
        // An in-process reopen's clean replay does not hide what the store's open found.
        if self.last_replay.is_none() || report.end != LogEnd::Clean || report.cut {
            self.last_replay = Some(report);
        }
        self.len = 0;
        self.replayed_once = true;
        self.next_lsn = applied.saturating_add(1);
        Ok(replayed)
    }

    fn log_replay(&self, r: &LogReplay) {
        let path = self.path.display();
        if r.cut {
            tracing::error!(%path, log_bytes = r.log_bytes, reserved_bytes = r.reserved_bytes,
                since_lsn = r.next_lsn,
                "the write-ahead log is shorter than the space reserved for it (cut or removed): \
                 acknowledged writes since LSN {} may be lost", r.next_lsn);
        }
        match r.end {
            LogEnd::Damaged => tracing::error!(%path, offset = r.stop_offset,
                records = r.records_discarded, bytes = r.bytes_discarded, since_lsn = r.next_lsn,
                "the write-ahead log is damaged: discarded {} records ({} bytes) of acknowledged \
                 writes since LSN {}", r.records_discarded, r.bytes_discarded, r.next_lsn),
            // A batch torn by a crash: never acknowledged.
            LogEnd::TornTail => tracing::info!(%path, offset = r.stop_offset,
                bytes = r.bytes_discarded, lsn = r.next_lsn,
                "write-ahead log replay dropped a torn last record"),
            LogEnd::Clean => {}
        }
        if r.records_replayed > 0 {
            tracing::info!(%path, records = r.records_replayed, lsn = r.next_lsn.saturating_sub(1),
                "replayed the write-ahead log");
        }
    }

    /// Where the (torn or damaged) record at `offset` ends, as far as its header can tell.
    fn record_extent(&self, offset: u64, file_len: u64) -> Result<u64, StoreError> {
        let mut header = [0u8; HEADER];
        let n = self
            .file
            .read_at(&mut header, offset)
            .map_err(|e| self.io_error("read", e))?;
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as u64;
        let end = match (BODY_HEADER..=MAX_RECORD).contains(&len) {
            true => offset + HEADER as u64 + len,
            false => offset + n as u64,
        };
        Ok(end.min(file_len))
    }

    /// Finds the records of this store in `[from, to)` that would continue the sequence after
    /// `applied`: every byte offset is tried (what hid them may have any length), but a valid
    /// record is skipped whole (its bytes are a blob's, not records).
    fn scan_newer(&self, from: u64, to: u64, applied: u64) -> Result<Hidden, StoreError> {
        const WINDOW: usize = 256 * 1024;
        let id = self.store_id.to_le_bytes();
        let mut hidden = Hidden::default();
        let mut buf = vec![0u8; WINDOW];
        let (mut buf_at, mut buf_len) = (from, 0usize);
        let mut pos = from;
        while pos + (HEADER as u64 + BODY_HEADER) <= to {
            // The window holds the candidate's header and store id.
            if pos + 16 > buf_at + buf_len as u64 {
                buf_at = pos;
                let want = WINDOW.min((to - pos) as usize);
                buf_len = self
                    .file
                    .read_at(&mut buf[..want], pos)
                    .map_err(|e| self.io_error("read", e))?;
                if buf_len < 16 {
                    break;
                }
            }
            let w: [u8; 16] = buf[(pos - buf_at) as usize..][..16]
                .try_into()
                .unwrap_or([0; 16]);
            // No record starts in the next 13 bytes if these 16 are zero (a record's length is
            // not): most of a log is zeros ahead of the records, skipped a word at a time.
            if u128::from_ne_bytes(w) == 0 {
                pos += 13;
                continue;
            }
            let len = u32::from_le_bytes([w[0], w[1], w[2], w[3]]) as u64;
            if w[8..16] == id && (BODY_HEADER..=MAX_RECORD).contains(&len) {
                let mut at = At {
                    file: &*self.file,
                    pos,
                    end: to,
                };
                if let Next::Record(lsn, _) =
                    read_record(&mut at, self.store_id).map_err(|e| self.io_error("read", e))?
                {
                    if lsn > applied {
                        hidden.starts.push(pos);
                        hidden.end = at.pos;
                    }
                    pos = at.pos;
                    continue;
                }
            }
            pos += 1;
        }
        Ok(hidden)
    }

    /// Writes `batch` as the record `lsn` and starts writing it back to the disk, without
    /// waiting: the caller applies the batch meanwhile, then calls [`sync`](Self::sync) (or
    /// [`abandon`](Self::abandon) if applying failed).
    pub(crate) fn begin(&mut self, batch: &[WriteOp], lsn: u64) -> Result<(), StoreError> {
        debug_assert_eq!(lsn, self.next_lsn);
        encode(&mut self.buf, self.store_id, lsn, batch)?;
        let written = self.write();
        written.map_err(|e| self.failed(e))
    }

    fn write(&mut self) -> io::Result<()> {
        let end = self.len + self.buf.len() as u64;
        self.faults.check_write(end > self.initialized)?;
        if end > self.initialized {
            // Zeros ahead of the records, in steps, synced with the new size once.
            let to = end.next_multiple_of(GROW_STEP);
            write_zeros(&*self.file, self.initialized, to)?;
            self.file.sync_all()?;
            self.initialized = to;
        }
        self.file.write_all_at(&self.buf, self.len)?;
        self.file.start_writeback(self.len, self.buf.len());
        Ok(())
    }

    /// Waits until the record of [`begin`](Self::begin) is durable.
    pub(crate) fn sync(&mut self) -> Result<(), StoreError> {
        self.faults.check_write(false).map_err(|e| self.failed(e))?;
        self.file.sync_data().map_err(|e| self.failed(e))?;
        self.len += self.buf.len() as u64;
        self.next_lsn += 1;
        Ok(())
    }

    /// Drops the record of [`begin`](Self::begin): its batch was not applied. `false` if the
    /// record could not be taken back: then the database must be reopened (which replays the
    /// log up to its known end, then clears what follows) before anything else is logged.
    pub(crate) fn abandon(&mut self) -> bool {
        self.cut_back()
    }

    fn failed(&self, e: io::Error) -> StoreError {
        self.cut_back();
        self.io_error("write", e)
    }

    /// Overwrites the header of a record that must not be replayed (at `self.len`) with zeros,
    /// which end the valid log.
    fn cut_back(&self) -> bool {
        let result = self
            .file
            .write_all_at(&[0; HEADER], self.len)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = &result {
            tracing::error!(path = %self.path.display(), error = %e,
                "cannot take back a failed batch from the write-ahead log");
        }
        result.is_ok()
    }

    /// Starts the log over: a durable database commit now holds everything in it. The first
    /// header is zeroed so that the next replay stops at once; unsynced, because the old records
    /// are harmless anyway: replay skips them by LSN (they are all at most the database's
    /// `wal_lsn`).
    pub(crate) fn reset(&mut self) {
        // Empty already (nothing logged since the last reset or replay): nothing to write, as
        // after every large PUT's durable commit.
        if self.len > 0 {
            let _ = self.file.write_all_at(&[0; HEADER], 0);
        }
        self.len = 0;
    }
}

/// Records found after a replay's stop.
#[derive(Default)]
struct Hidden {
    /// Where each starts.
    starts: Vec<u64>,
    /// Where the last one ends (0: none).
    end: u64,
}

impl Hidden {
    /// How many start before `limit`.
    fn before(&self, limit: u64) -> u64 {
        self.starts.iter().filter(|s| **s < limit).count() as u64
    }
}

/// Sequential reads of the log from `pos`, up to `end`.
struct At<'f> {
    file: &'f dyn LogFile,
    pos: u64,
    end: u64,
}

impl Read for At<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.end.saturating_sub(self.pos) as usize);
        let n = self.file.read_at(&mut buf[..n], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Writes zeros over `[from, to)`, a step at a time.
fn write_zeros(file: &dyn LogFile, from: u64, to: u64) -> io::Result<()> {
    let zeros = vec![0u8; GROW_STEP.min(to.saturating_sub(from)) as usize];
    let mut at = from;
    while at < to {
        let n = (to - at).min(zeros.len() as u64);
        file.write_all_at(&zeros[..n as usize], at)?;
        at += n;
    }
    Ok(())
}

/// Makes every non-durable commit durable, then empties the log.
pub(crate) fn checkpoint(db: &Database, wal: &mut Wal) -> Result<(), StoreError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    txn.commit()?;
    wal.reset();
    Ok(())
}

fn encode(buf: &mut Vec<u8>, store_id: u64, lsn: u64, batch: &[WriteOp]) -> Result<(), StoreError> {
    buf.clear();
    buf.extend_from_slice(&[0; HEADER]);
    buf.extend_from_slice(&store_id.to_le_bytes());
    buf.extend_from_slice(&lsn.to_le_bytes());
    buf.extend_from_slice(&0u32.to_le_bytes());
    let mut ops = 0u32;
    for op in batch {
        match op {
            WriteOp::Put { blob, target, .. } => {
                match target {
                    PutTarget::Content => buf.push(PUT_CONTENT),
                    PutTarget::Named(job, name) => {
                        buf.push(PUT_NAMED);
                        put_name(buf, job, name);
                    }
                }
                buf.extend_from_slice(&blob.key().0);
                buf.extend_from_slice(&blob.len().to_le_bytes());
                let start = buf.len();
                buf.resize(start + blob.len() as usize, 0);
                blob.read_at(0, &mut buf[start..])?;
            }
            WriteOp::Delete { target, .. } | WriteOp::DeleteLocal { target, .. } => match target {
                DeleteTarget::Content(key) => {
                    buf.push(DELETE_CONTENT);
                    buf.extend_from_slice(&key.0);
                }
                DeleteTarget::Named(job, name) => {
                    buf.push(DELETE_NAMED);
                    put_name(buf, job, name);
                }
                DeleteTarget::Job(job) => {
                    buf.push(DELETE_JOB);
                    buf.extend_from_slice(&job.0);
                }
            },
            WriteOp::Barrier { .. } | WriteOp::FreePending => continue,
        }
        ops += 1;
    }
    buf[HEADER + 16..HEADER + 20].copy_from_slice(&ops.to_le_bytes());
    let body_len = (buf.len() - HEADER) as u32;
    let crc = crc::update(0, &buf[HEADER..]);
    buf[..4].copy_from_slice(&body_len.to_le_bytes());
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

fn put_name(buf: &mut Vec<u8>, job: &JobId, name: &str) {
    buf.extend_from_slice(&job.0);
    // Names are at most 64 bytes (key::check_name).
    buf.push(name.len() as u8);
    buf.extend_from_slice(name.as_bytes());
}

/// What the log holds at the reading position.
enum Next {
    Record(u64, Vec<Logged>),
    /// Zeros or the end of the file: where appends stopped.
    End,
    /// A torn, damaged or foreign record.
    Damaged,
}

/// Reads the next record of this store. I/O errors are errors, not the end of the log: an
/// acknowledged record must not be skipped because a read failed.
fn read_record(r: &mut impl Read, store_id: u64) -> io::Result<Next> {
    let mut header = [0u8; HEADER];
    match r.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Next::End),
        Err(e) => return Err(e),
    }
    if header == [0; HEADER] {
        return Ok(Next::End);
    }
    let [l0, l1, l2, l3, c0, c1, c2, c3] = header;
    let len = u32::from_le_bytes([l0, l1, l2, l3]) as u64;
    let crc = u32::from_le_bytes([c0, c1, c2, c3]);
    if !(BODY_HEADER..=MAX_RECORD).contains(&len) {
        return Ok(Next::Damaged);
    }
    let mut body = Vec::new();
    r.take(len).read_to_end(&mut body)?;
    if body.len() as u64 != len || crc::update(0, &body) != crc {
        return Ok(Next::Damaged);
    }
    Ok(decode(&body, store_id).map_or(Next::Damaged, |(lsn, ops)| Next::Record(lsn, ops)))
}

fn decode(body: &[u8], store_id: u64) -> Option<(u64, Vec<Logged>)> {
    let mut d = Decoder(body);
    if d.u64()? != store_id {
        return None;
    }
    let lsn = d.u64()?;
    let count = d.u32()?;
    let mut ops = Vec::new();
    for _ in 0..count {
        ops.push(match d.u8()? {
            PUT_CONTENT => d.put(PutTarget::Content)?,
            PUT_NAMED => {
                let (job, name) = d.name()?;
                d.put(PutTarget::Named(job, name))?
            }
            DELETE_CONTENT => Logged::Delete(DeleteTarget::Content(BlobKey(d.array()?))),
            DELETE_NAMED => {
                let (job, name) = d.name()?;
                Logged::Delete(DeleteTarget::Named(job, name))
            }
            DELETE_JOB => Logged::Delete(DeleteTarget::Job(JobId(d.array()?))),
            _ => return None,
        });
    }
    Some((lsn, ops))
}

struct Decoder<'a>(&'a [u8]);

impl Decoder<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.array()?))
    }

    fn name(&mut self) -> Option<(JobId, String)> {
        let job = JobId(self.array()?);
        let n = self.u8()? as usize;
        let name = std::str::from_utf8(self.take(n)?).ok()?.to_owned();
        Some((job, name))
    }

    fn put(&mut self, target: PutTarget) -> Option<Logged> {
        let key = BlobKey(self.array()?);
        let len = usize::try_from(self.u64()?).ok()?;
        let data = self.take(len)?.to_vec();
        Some(Logged::Put { key, target, data })
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::Path;

    use super::{LogEnd, WAL_FILE};
    use crate::store::{BlobStore, DB_FILE};
    use crate::{BlobId, BlobKey, DeleteTarget, JobId, PutTarget};

    /// The files a crash would leave now (the OS keeps what was written; redb's header still
    /// names its last durable commit), copied to `to`, with or without the log.
    fn crash_copy(from: &Path, to: &Path, with_log: bool) {
        fs::create_dir_all(to).unwrap();
        fs::copy(from.join(DB_FILE), to.join(DB_FILE)).unwrap();
        if with_log {
            fs::copy(from.join(WAL_FILE), to.join(WAL_FILE)).unwrap();
        }
    }

    fn blob(i: u32) -> Vec<u8> {
        (0..3000 + i).map(|b| (b * 7 + i) as u8).collect()
    }

    fn put_named(store: &BlobStore, job: JobId, name: &str, data: &[u8]) {
        let mut u = store.upload();
        u.write(data).unwrap();
        let target = PutTarget::Named(job, name.into());
        store.commit(u.finish().unwrap(), target).unwrap();
    }

    #[test]
    fn acknowledged_small_writes_survive_a_crash_through_the_log_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (live, copy, bare) = (
            dir.path().join("live"),
            dir.path().join("copy"),
            dir.path().join("bare"),
        );
        let store = BlobStore::open(&live).unwrap();
        let job = JobId::from_parts(1, 2);
        let keys: Vec<BlobKey> = (0..20).map(|i| store.put(&blob(i)).unwrap()).collect();
        put_named(&store, job, "lib.jar", &blob(100));
        store.delete(DeleteTarget::Content(keys[3])).unwrap();
        crash_copy(&live, &copy, true);
        crash_copy(&live, &bare, false);

        let recovered = BlobStore::open(&copy).unwrap();
        for (i, k) in keys.iter().enumerate() {
            let got = recovered.get_bytes(&BlobId::Content(*k)).unwrap();
            assert_eq!(got, (i != 3).then(|| blob(i as u32)), "blob {i}");
        }
        let named = BlobId::Named(job, "lib.jar".into());
        assert_eq!(recovered.get_bytes(&named).unwrap(), Some(blob(100)));
        assert!(recovered.verify().unwrap().is_clean());

        // Without the log the same database lacks them: the replay above did the work.
        let without = BlobStore::open(&bare).unwrap();
        assert_eq!(without.get_bytes(&BlobId::Content(keys[0])).unwrap(), None);
    }

    #[test]
    fn a_checkpoint_asked_for_puts_the_logged_writes_in_the_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let (live, bare) = (dir.path().join("live"), dir.path().join("bare"));
        let store = BlobStore::open(&live).unwrap();
        let keys: Vec<BlobKey> = (0..20).map(|i| store.put(&blob(i)).unwrap()).collect();
        assert!(
            store.metrics().wal_bytes > 0,
            "the small PUTs went to the log"
        );
        let before = store.metrics().wal_checkpoints;
        store.checkpoint().unwrap();
        assert_eq!(store.metrics().wal_bytes, 0);
        assert_eq!(store.metrics().wal_checkpoints, before + 1);
        // The database file alone now holds every blob.
        crash_copy(&live, &bare, false);
        let without = BlobStore::open(&bare).unwrap();
        for (i, k) in keys.iter().enumerate() {
            let got = without.get_bytes(&BlobId::Content(*k)).unwrap();
            assert_eq!(got, Some(blob(i as u32)), "blob {i}");
        }
        // Nothing logged: nothing to do, and still no error.
        store.checkpoint().unwrap();
        assert_eq!(store.metrics().wal_checkpoints, before + 1);
    }

    #[test]
    fn a_torn_last_record_is_dropped_and_the_ones_before_it_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let (live, copy) = (dir.path().join("live"), dir.path().join("copy"));
        let store = BlobStore::open(&live).unwrap();
        let first = store.put(&blob(1)).unwrap();
        let logged = fs::read(live.join(WAL_FILE)).unwrap();
        let end_of_first = u32::from_le_bytes(logged[..4].try_into().unwrap()) as usize + 8;
        let second = store.put(&blob(2)).unwrap();
        crash_copy(&live, &copy, true);
        // Tear the second record: its last bytes never reached the disk.
        let mut log = fs::read(copy.join(WAL_FILE)).unwrap();
        let second_len = u32::from_le_bytes(log[end_of_first..][..4].try_into().unwrap());
        let tear = end_of_first + 8 + second_len as usize - 10;
        log[tear..].fill(0);
        fs::write(copy.join(WAL_FILE), &log).unwrap();

        let recovered = BlobStore::open(&copy).unwrap();
        assert_eq!(
            recovered.get_bytes(&BlobId::Content(first)).unwrap(),
            Some(blob(1))
        );
        assert_eq!(recovered.get_bytes(&BlobId::Content(second)).unwrap(), None);
        assert!(recovered.verify().unwrap().is_clean());
    }

    #[test]
    fn another_stores_log_is_not_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let key_b = {
            let store_b = BlobStore::open(&b).unwrap();
            store_b.put(&blob(9)).unwrap()
        };
        let store_a = BlobStore::open(&a).unwrap();
        let key_a = store_a.put(&blob(1)).unwrap();
        fs::copy(a.join(WAL_FILE), b.join(WAL_FILE)).unwrap();

        let store_b = BlobStore::open(&b).unwrap();
        assert_eq!(store_b.get_bytes(&BlobId::Content(key_a)).unwrap(), None);
        assert_eq!(
            store_b.get_bytes(&BlobId::Content(key_b)).unwrap(),
            Some(blob(9))
        );
    }

    #[test]
    fn a_clean_stop_leaves_nothing_to_replay_and_large_blobs_bypass_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let (live, copy) = (dir.path().join("live"), dir.path().join("copy"));
        let small = {
            let store = BlobStore::open(&live).unwrap();
            store.put(&blob(1)).unwrap()
        };
        // Closed: everything is in the database; the log's first header is zeroed.
        let log = fs::read(live.join(WAL_FILE)).unwrap();
        assert_eq!(&log[..8], &[0; 8]);
        let store = BlobStore::open(&live).unwrap();
        assert_eq!(
            store.get_bytes(&BlobId::Content(small)).unwrap(),
            Some(blob(1))
        );

        // A large blob's durable commit also makes the logged small one durable in the database.
        let other = store.put(&blob(2)).unwrap();
        let large = vec![5u8; 2 * 1024 * 1024];
        let large_key = store.put(&large).unwrap();
        crash_copy(&live, &copy, false);
        let recovered = BlobStore::open(&copy).unwrap();
        assert_eq!(
            recovered.get_bytes(&BlobId::Content(other)).unwrap(),
            Some(blob(2))
        );
        assert_eq!(
            recovered.get_bytes(&BlobId::Content(large_key)).unwrap(),
            Some(large)
        );
    }

    #[test]
    fn a_damaged_log_replays_a_prefix_of_its_records_and_never_panics() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("live");
        let store = BlobStore::open(&live).unwrap();
        let keys: Vec<BlobKey> = (0..12).map(|i| store.put(&blob(i)).unwrap()).collect();
        let log = fs::read(live.join(WAL_FILE)).unwrap();
        let mut seed = 0x5eed_u64;
        for round in 0..40 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let copy = dir.path().join(format!("copy{round}"));
            crash_copy(&live, &copy, false);
            let mut damaged = log.clone();
            let at = (seed % 40_000) as usize;
            match round % 3 {
                0 => damaged[at] ^= 1 << (seed % 8),
                1 => damaged.truncate(at),
                _ => damaged[at..at + 64].fill(0xff),
            }
            fs::write(copy.join(WAL_FILE), &damaged).unwrap();
            let recovered = BlobStore::open(&copy).unwrap();
            let present: Vec<bool> = keys
                .iter()
                .enumerate()
                .map(|(i, k)| {
                    let got = recovered.get_bytes(&BlobId::Content(*k)).unwrap();
                    assert!(
                        got.is_none() || got == Some(blob(i as u32)),
                        "round {round}"
                    );
                    got.is_some()
                })
                .collect();
            // Records are replayed in order up to the first damaged one.
            let n = present.iter().take_while(|p| **p).count();
            assert!(
                present[n..].iter().all(|p| !p),
                "round {round}: {present:?}"
            );
            assert!(recovered.verify().unwrap().is_clean(), "round {round}");
        }
    }

    #[test]
    fn records_hidden_behind_a_damaged_one_never_come_back_after_newer_writes() {
        let dir = tempfile::tempdir().unwrap();
        let (live, first, second) = (
            dir.path().join("live"),
            dir.path().join("first"),
            dir.path().join("second"),
        );
        let job = JobId::from_parts(3, 4);
        let named = BlobId::Named(job, "xx".into());
        let value = |v: u8| vec![v; 3000];
        let store = BlobStore::open(&live).unwrap();
        for v in 1..=5 {
            put_named(&store, job, "xx", &value(v));
        }
        crash_copy(&live, &first, true);
        // Damage record 2: replay applies record 1 and stops.
        let mut log = fs::read(first.join(WAL_FILE)).unwrap();
        let len1 = u32::from_le_bytes(log[..4].try_into().unwrap()) as usize + 8;
        log[len1 + 20] ^= 0xff;
        fs::write(first.join(WAL_FILE), &log).unwrap();
        let store = BlobStore::open(&first).unwrap();
        assert_eq!(store.get_bytes(&named).unwrap(), Some(value(1)));
        // A newer acknowledged write takes sequence number 2 again, and is exactly as long as
        // the old records 1 and 2: if the old ones were still in the file, record 3 would follow
        // it in sequence and be replayed over it.
        let newer = vec![9u8; 3000 + len1];
        put_named(&store, job, "xx", &newer);
        crash_copy(&first, &second, true);
        let recovered = BlobStore::open(&second).unwrap();
        assert_eq!(recovered.get_bytes(&named).unwrap(), Some(newer));
        assert!(recovered.verify().unwrap().is_clean());
    }

    thread_local! {
        static CAPTURE: std::cell::RefCell<Option<Vec<u8>>> = const { std::cell::RefCell::new(None) };
    }

    /// Runs `f` with this thread's log events captured; returns its result and the text.
    ///
    /// One global subscriber for the whole test binary, writing into the capturing thread's
    /// buffer: a scoped one (`with_default`) misses events whose callsites another thread's
    /// test registered while no subscriber was set (tracing caches that interest).
    fn capture_logs<T>(f: impl FnOnce() -> T) -> (T, String) {
        static INIT: std::sync::Once = std::sync::Once::new();
        INIT.call_once(|| {
            let subscriber = tracing_subscriber::fmt()
                .with_writer(|| Sink)
                .with_ansi(false)
                .with_max_level(tracing::Level::INFO)
                .finish();
            let _ = tracing::subscriber::set_global_default(subscriber);
        });
        CAPTURE.with(|c| *c.borrow_mut() = Some(Vec::new()));
        let out = f();
        let buf = CAPTURE.with(|c| c.borrow_mut().take()).unwrap_or_default();
        (out, String::from_utf8_lossy(&buf).into_owned())
    }

    struct Sink;
    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            CAPTURE.with(|c| {
                if let Some(buf) = c.borrow_mut().as_mut() {
                    buf.extend_from_slice(b);
                }
            });
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A store in `live` with 35 acknowledged small PUTs (only in the log), and where each of
    /// their records starts.
    fn thirty_five_records(live: &Path) -> (Vec<BlobKey>, Vec<usize>) {
        let store = BlobStore::open(live).unwrap();
        let keys = (0..35).map(|i| store.put(&blob(i)).unwrap()).collect();
        let log = fs::read(live.join(WAL_FILE)).unwrap();
        let mut starts = vec![0];
        for _ in 0..35 {
            let at = *starts.last().unwrap();
            let len = u32::from_le_bytes(log[at..at + 4].try_into().unwrap()) as usize;
            starts.push(at + 8 + len);
        }
        std::mem::forget(store); // a crash: no final checkpoint
        (keys, starts)
    }

    fn present(store: &BlobStore, keys: &[BlobKey]) -> usize {
        keys.iter()
            .filter(|k| store.get_bytes(&BlobId::Content(**k)).unwrap().is_some())
            .count()
    }

    #[test]
    fn a_log_that_is_not_a_regular_file_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("s");
        fs::create_dir_all(&store).unwrap();
        std::os::unix::fs::symlink("/dev/zero", store.join(WAL_FILE)).unwrap();
        let err = BlobStore::open(&store).unwrap_err().to_string();
        assert!(err.contains("blobs.wal"), "{err}");
        assert!(
            err.contains("a character device, not a regular file"),
            "{err}"
        );
        assert!(err.contains("remove this entry"), "{err}");
        fs::remove_file(store.join(WAL_FILE)).unwrap();
        fs::create_dir(store.join(WAL_FILE)).unwrap();
        let err = BlobStore::open(&store).unwrap_err().to_string();
        assert!(err.contains("a directory, not a regular file"), "{err}");
        // A FIFO is refused before it is opened (opening one could block).
        fs::remove_dir(store.join(WAL_FILE)).unwrap();
        let made = std::process::Command::new("mkfifo")
            .arg(store.join(WAL_FILE))
            .status();
        if made.is_ok_and(|s| s.success()) {
            let err = BlobStore::open(&store).unwrap_err().to_string();
            assert!(err.contains("a FIFO, not a regular file"), "{err}");
        }
    }

    #[test]
    fn a_flipped_byte_mid_log_is_reported_as_damage_with_what_it_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let (live, copy) = (dir.path().join("live"), dir.path().join("copy"));
        let (keys, starts) = thirty_five_records(&live);
        crash_copy(&live, &copy, true);
        let mut log = fs::read(copy.join(WAL_FILE)).unwrap();
        log[starts[10] + 100] ^= 0x40;
        fs::write(copy.join(WAL_FILE), &log).unwrap();

        let (store, logs) = capture_logs(|| BlobStore::open(&copy).unwrap());
        assert_eq!(present(&store, &keys), 10);
        let r = store.stats().unwrap().log.unwrap();
        assert_eq!(r.end, LogEnd::Damaged, "{r:?}");
        assert_eq!((r.records_replayed, r.records_discarded), (10, 24), "{r:?}");
        assert_eq!(r.bytes_discarded as usize, starts[35] - starts[10], "{r:?}");
        assert_eq!(r.next_lsn, 11);
        assert!(r.lost_writes() && !r.cut);
        let v = store.verify().unwrap();
        assert!(v.is_clean());
        assert_eq!(v.log, Some(r));
        assert!(logs.contains("ERROR"), "{logs}");
        assert!(logs.contains("discarded 24 records"), "{logs}");
        assert!(logs.contains("since LSN 11"), "{logs}");

        // The damage was cleared in place: the next open finds a clean log, the same length.
        drop(store);
        assert_eq!(
            fs::metadata(copy.join(WAL_FILE)).unwrap().len(),
            log.len() as u64
        );
        let again = BlobStore::open(&copy).unwrap();
        assert_eq!(again.stats().unwrap().log.unwrap().end, LogEnd::Clean);
    }

    #[test]
    fn garbage_over_records_is_reported_as_damage() {
        let dir = tempfile::tempdir().unwrap();
        let (live, copy) = (dir.path().join("live"), dir.path().join("copy"));
        let (keys, starts) = thirty_five_records(&live);
        crash_copy(&live, &copy, true);
        let mut log = fs::read(copy.join(WAL_FILE)).unwrap();
        // Garbage from inside record 20 to inside record 23: records 24.. survive it.
        let mut x = 0x1234_5678u32;
        for b in &mut log[starts[20] + 50..starts[23] + 50] {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
        fs::write(copy.join(WAL_FILE), &log).unwrap();

        let (store, logs) = capture_logs(|| BlobStore::open(&copy).unwrap());
        assert_eq!(present(&store, &keys), 20);
        let r = store.verify().unwrap().log.unwrap();
        assert_eq!(r.end, LogEnd::Damaged, "{r:?}");
        assert_eq!(r.records_discarded, 11, "{r:?}");
        assert!(r.lost_writes());
        assert!(
            logs.contains("ERROR") && logs.contains("discarded 11 records"),
            "{logs}"
        );
    }

    #[test]
    fn a_log_cut_to_zero_length_is_reported_as_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (live, copy, gone) = (
            dir.path().join("live"),
            dir.path().join("copy"),
            dir.path().join("gone"),
        );
        let (keys, _) = thirty_five_records(&live);
        crash_copy(&live, &copy, true);
        crash_copy(&live, &gone, false);
        fs::write(copy.join(WAL_FILE), b"").unwrap();

        for dir in [&copy, &gone] {
            let (store, logs) = capture_logs(|| BlobStore::open(dir).unwrap());
            assert_eq!(present(&store, &keys), 0);
            let r = store.stats().unwrap().log.unwrap();
            assert!(r.cut && r.lost_writes(), "{r:?}");
            assert_eq!((r.log_bytes, r.next_lsn), (0, 1), "{r:?}");
            assert!(r.reserved_bytes >= super::GROW_STEP, "{r:?}");
            assert_eq!(store.verify().unwrap().log, Some(r));
            assert!(logs.contains("ERROR"), "{logs}");
            assert!(
                logs.contains("acknowledged writes since LSN 1 may be lost"),
                "{logs}"
            );
            // The reserve is back.
            drop(store);
            let len = fs::metadata(dir.join(WAL_FILE)).unwrap().len();
            assert!(len >= super::GROW_STEP);
        }
    }

    #[test]
    fn a_torn_tail_is_not_reported_as_damage() {
        let dir = tempfile::tempdir().unwrap();
        let (live, copy) = (dir.path().join("live"), dir.path().join("copy"));
        let (keys, starts) = thirty_five_records(&live);
        crash_copy(&live, &copy, true);
        // The last record's end never reached the disk (zeros there, as after a crash).
        let mut log = fs::read(copy.join(WAL_FILE)).unwrap();
        log[starts[35] - 40..starts[35]].fill(0);
        fs::write(copy.join(WAL_FILE), &log).unwrap();

        let (store, logs) = capture_logs(|| BlobStore::open(&copy).unwrap());
        assert_eq!(present(&store, &keys), 34);
        let r = store.verify().unwrap().log.unwrap();
        assert_eq!(r.end, LogEnd::TornTail, "{r:?}");
        assert_eq!(r.records_discarded, 0);
        assert!(!r.lost_writes() && !r.cut, "{r:?}");
        assert!(!logs.contains("ERROR"), "{logs}");
        assert!(logs.contains("torn"), "{logs}");
    }

    #[test]
    fn the_log_keeps_its_space_so_a_delete_goes_through_on_a_full_disk_after_a_reopen() {
        use crate::store::{FaultSwitch, StoreOptions};
        let dir = tempfile::tempdir().unwrap();
        let faults = FaultSwitch::new();
        let open = || {
            StoreOptions::new(dir.path())
                .faults(faults.clone())
                .open()
                .unwrap()
        };
        let store = open();
        let keys: Vec<BlobKey> = (0..40).map(|i| store.put(&blob(i)).unwrap()).collect();
        // Space the database can reuse (as a full store has): freed pages inside its file.
        for k in &keys[20..] {
            store.delete(DeleteTarget::Content(*k)).unwrap();
        }
        drop(store);
        let len = fs::metadata(dir.path().join(WAL_FILE)).unwrap().len();
        assert!(len >= super::GROW_STEP);

        // A clean close and a reopen keep the log's length: its space stays reserved.
        faults.disk_full();
        let store = open();
        assert_eq!(fs::metadata(dir.path().join(WAL_FILE)).unwrap().len(), len);
        assert_eq!(store.delete(DeleteTarget::Content(keys[0])).unwrap(), 1);
        assert!(store.put(&vec![3u8; 2 << 20]).is_err(), "the disk is full");
        assert_eq!(store.delete(DeleteTarget::Content(keys[1])).unwrap(), 1);
        faults.heal();
        drop(store);
        let store = open();
        assert_eq!(present(&store, &keys), 18);
        assert!(store.verify().unwrap().is_clean());
        drop(store);

        // A full disk does not keep a store whose log lost its reserve from opening.
        fs::remove_file(dir.path().join(WAL_FILE)).unwrap();
        faults.disk_full();
        let store = open();
        assert!(store.stats().unwrap().log.unwrap().cut);
        assert_eq!(present(&store, &keys), 18);
        faults.heal();
    }

    #[test]
    fn what_is_logged_fits_what_replay_accepts() {
        use crate::store::oneshot;
        use crate::store::writer::WriteOp;
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let put = |n: usize| {
            let mut u = store.upload();
            u.write(&vec![1u8; n]).unwrap();
            WriteOp::Put {
                blob: u.finish().unwrap(),
                target: PutTarget::Named(JobId::from_parts(1, 1), "n".repeat(64)),
                local_only: false,
                reply: oneshot::channel().0,
            }
        };
        let delete = || WriteOp::Delete {
            target: DeleteTarget::Named(JobId::from_parts(1, 1), "n".repeat(64)),
            reply: oneshot::channel().0,
        };
        // The largest batch of puts the log takes, and the same with many deletes besides.
        let mut batch: Vec<WriteOp> = (0..16).map(|_| put(64 * 1024)).collect();
        assert!(super::loggable(&batch));
        let mut buf = Vec::new();
        super::encode(&mut buf, 7, 1, &batch).unwrap();
        assert!(buf.len() as u64 - super::HEADER as u64 <= super::MAX_RECORD);
        assert!(matches!(
            super::read_record(&mut buf.as_slice(), 7).unwrap(),
            super::Next::Record(1, ops) if ops.len() == 16
        ));
        batch.extend((0..1000).map(|_| delete()));
        assert!(!super::loggable(&batch));
        assert!(!super::loggable(
            &(0..20_000).map(|_| delete()).collect::<Vec<_>>()
        ));
        assert!(!super::loggable(&[put(64 * 1024 + 1)]));
        // Names longer than the protocol's 64 bytes never reach a record.
        let long = DeleteTarget::Named(JobId::from_parts(1, 1), "n".repeat(65));
        assert!(store.delete(long.clone()).is_err());
        assert!(store.delete_local(long.clone()).is_err());
        let (reply, _) = oneshot::channel();
        assert!(!super::loggable(&[WriteOp::Delete {
            target: long,
            reply
        }]));
    }
}
