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

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, Durability, ReadableDatabase};

use super::faults::FaultSwitch;
use super::lease::Leases;
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

pub(crate) struct Wal {
    file: File,
    path: PathBuf,
    /// Bytes of valid records; the next one is written here.
    len: u64,
    /// Bytes of the file already written once. Records overwrite them in place: appending past
    /// the end would make every fsync journal a new file size too (~2× slower here).
    initialized: u64,
    next_lsn: u64,
    store_id: u64,
    /// Whether this process replayed the log before (then `len` is its valid end).
    replayed_once: bool,
    faults: FaultSwitch,
    buf: Vec<u8>,
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
    /// Opens (or creates) the log. Nothing is read until [`replay`](Self::replay).
    pub(crate) fn open(path: &Path, faults: FaultSwitch) -> Result<Wal, StoreError> {
        let file = super::open_rw(path)?;
        let initialized = file
            .metadata()
            .map_err(|e| StoreError::Open(path.to_path_buf(), e.to_string()))?
            .len();
        Ok(Wal {
            file,
            path: path.to_path_buf(),
            len: 0,
            initialized,
            next_lsn: 1,
            store_id: 0,
            replayed_once: false,
            faults,
            buf: Vec::new(),
        })
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// The LSN the next appended batch gets (to record in its transaction before appending).
    pub(crate) fn next_lsn(&self) -> u64 {
        self.next_lsn
    }

    /// Applies the records the database has not made durable yet, makes them durable in the
    /// database, and empties the log. Runs at every open of the database, before anything else
    /// uses it (GETs opened before a reopen keep what they lease: `lease.rs`). Returns the
    /// number of records applied.
    pub(crate) fn replay(
        &mut self,
        db: &Database,
        layout: Layout,
        leases: &Arc<Leases>,
    ) -> Result<u64, StoreError> {
        let (store_id, mut applied) = {
            let txn = db.begin_read()?;
            let settings = txn.open_table(SETTINGS)?;
            let get = |k| -> Result<u64, StoreError> {
                Ok(settings.get(k)?.map(|v| v.value()).unwrap_or(0))
            };
            (get(STORE_ID_SETTING)?, get(WAL_LSN_SETTING)?)
        };
        self.store_id = store_id;
        // Within one process the log's valid end is known: a record after it failed and was not
        // acknowledged, even if taking it back failed. A fresh process reads to the first gap.
        let limit = if self.replayed_once {
            self.len
        } else {
            u64::MAX
        };
        let mut file = &self.file;
        file.seek(SeekFrom::Start(0))?;
        let mut reader = io::BufReader::new(file).take(limit);
        let mut replayed = 0;
        let txn = db.begin_write()?;
        // Kept until the commit has ended (see lease.rs).
        let frees = leases.batch();
        let stop = {
            let mut t = Tables::open_leased(&txn, layout, Arc::clone(&frees))?;
            let stop = loop {
                let (lsn, ops) = match read_record(&mut reader, store_id)? {
                    Next::Record(lsn, ops) => (lsn, ops),
                    other => break other,
                };
                // Records at most the database's LSN are durable in it already: skipped before
                // the first one applied; after it they are what a checkpoint left behind the
                // newer records, and the log ends there.
                if lsn <= applied {
                    if replayed == 0 {
                        continue;
                    }
                    break Next::End;
                }
                if lsn != applied + 1 {
                    break Next::Damaged;
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
            };
            if replayed > 0 {
                txn.open_table(SETTINGS)?.insert(WAL_LSN_SETTING, applied)?;
            }
            stop
        };
        if replayed > 0 {
            txn.commit()?;
        } else {
            txn.abort()?;
        }
        let offset = reader.get_mut().stream_position().unwrap_or(0);
        drop(reader);
        if matches!(stop, Next::Damaged) {
            // A batch torn by a crash (never acknowledged), the remains of records a checkpoint
            // made obsolete, or damage.
            tracing::info!(path = %self.path.display(), offset, lsn = applied,
                "write-ahead log replay stopped at a record that is torn, obsolete or damaged");
        }
        if replayed > 0 {
            tracing::info!(path = %self.path.display(), records = replayed, lsn = applied,
                "replayed the write-ahead log");
        }
        // Everything replayed is durable in the database now. Whatever the log still holds
        // after it (a damaged record and the records it hid) must never be replayed after newer
        // ones reuse its sequence numbers: empty the file, durably.
        self.file
            .set_len(0)
            .and_then(|()| self.file.sync_all())
            .map_err(|e| StoreError::Storage(format!("cannot empty the write-ahead log: {e}")))?;
        self.initialized = 0;
        self.len = 0;
        self.replayed_once = true;
        self.next_lsn = applied + 1;
        Ok(replayed)
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
            let zeros = vec![0u8; (to - self.initialized) as usize];
            self.file.write_all_at(&zeros, self.initialized)?;
            self.file.sync_all()?;
            self.initialized = to;
        }
        self.file.write_all_at(&self.buf, self.len)?;
        start_writeback(&self.file, self.len, self.buf.len());
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
    /// log up to its known end, then empties it) before anything else is logged.
    pub(crate) fn abandon(&mut self) -> bool {
        self.cut_back()
    }

    fn failed(&self, e: io::Error) -> StoreError {
        self.cut_back();
        StoreError::Storage(format!(
            "cannot write the write-ahead log {}: {e}",
            self.path.display()
        ))
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

/// Starts writing back `len` bytes at `offset` so that the fsync after them has less to wait
/// for (Linux with glibc, where the `libc` crate is a dependency; elsewhere the fsync does it
/// all).
fn start_writeback(file: &File, offset: u64, len: usize) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a plain syscall on an open descriptor; it reads no memory of ours.
        unsafe {
            libc::sync_file_range(
                file.as_raw_fd(),
                offset as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = (file, offset, len);
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
                buf.extend_from_slice(&blob.bytes()?);
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

    use super::WAL_FILE;
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
