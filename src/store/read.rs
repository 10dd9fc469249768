//! Streaming reads: one chunk at a time from a read transaction, checked on the way.
//!
//! A GET does not keep one read transaction for its whole transfer: redb cannot reuse a page freed
//! by a commit after the oldest live snapshot began (even a page that snapshot never saw), so a
//! slow or stalled client would make the database file grow with every commit of other clients'
//! writes. What a snapshot costs grows with how long it lives, and under churn it is a lot:
//! measured with 4 KiB PUT/DELETE churn (non-durable commits under the write-ahead log), a snapshot
//! renewed every ~15 ms grew the file by 1 MiB over 30,000 pairs, one renewed every ~450 ms by
//! 100 MiB over its first 10,000; and in `tests/reader_growth.rs` a 1 MiB/s GET whose server held
//! borrowed chunks in a blocked `writev` only until the client proved slow grew it by 106 MiB in
//! 60 s. So a reader hands out *copies* and holds no snapshot between chunks, until its consumer
//! has taken [`BORROW_AFTER`] bytes without pausing: more than a connection's socket buffers hold,
//! so a client that stops reading is caught before the server blocks holding borrowed chunks. A
//! proven-fast consumer gets chunks borrowed from the database's pages (no copy) and the reader
//! renews its snapshot every [`SNAPSHOT_MAX_AGE`]; a pause of that long, or
//! [`release_snapshot`](BlobReader::release_snapshot) (a server parking a GET whose client does not
//! read), puts it back to copies. A consumer that never blocks holding a chunk (a readiness-loop
//! server, which detaches what it keeps when it parks a GET) asks for borrowed chunks from the
//! start with [`borrow_chunks`](BlobReader::borrow_chunks). Meanwhile a lease on the content key
//! (`lease.rs`) keeps the chunks: a blob deleted during a GET is still sent whole to that GET,
//! while new GETs no longer find it.
//!
//! Each chunk carries a CRC-32C of its key, index and bytes (stores created since checksums;
//! see `schema::Layout`), checked before the chunk is handed out: damage is caught at the chunk
//! it is in, at about 8 GB/s. A full check re-computes the SHA-1 too (`verify`, and stores
//! without checksums); for a large blob that runs on a helper thread reading the same chunks
//! alongside the caller, who only waits for it before handing out the last chunk.

use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redb::{AccessGuard, ReadOnlyTable, ReadTransaction, ReadableDatabase};

use super::StoreError;
use super::crc;
use super::handle::DbHandle;
use super::lease::Lease;
use super::schema::{CHUNKS, Layout, TAILS};
use crate::key::{BlobKey, KeyHasher};

/// Longest a reader keeps one snapshot, and the pause between two chunks after which its consumer
/// counts as slow (see the module docs). Re-opening costs a `begin_read` and an `open_table`
/// (microseconds), at most 100 times a second for a fast consumer.
pub const SNAPSHOT_MAX_AGE: Duration = Duration::from_millis(10);

/// Bytes a consumer takes without pausing before it gets borrowed chunks instead of copies: more
/// than Linux lets one connection buffer by default (4 MiB sent + 6 MiB received), so a GET
/// whose client stops reading blocks, or is parked, while its chunks are still copies. A large
/// fast GET copies only this much.
pub const BORROW_AFTER: u64 = 16 * 1024 * 1024;

/// Reads one blob chunk by chunk; memory use is a chunk whatever the blob's size. The blob
/// stays readable to the end even if it is deleted meanwhile.
///
/// A reader from [`BlobStore::get`](super::BlobStore::get) re-opens its snapshot as it goes
/// (see the module docs); one from `verify` or the recovery store, or one whose content was
/// being deleted as it opened, keeps one snapshot to the end.
///
/// With verification on, the last chunk is only handed out after the SHA-1 of the whole blob
/// matched its key: a damaged blob fails before its final byte instead of passing as whole.
pub struct BlobReader {
    /// The current snapshot's tables; `None` after `release_snapshot`.
    chunks: Option<Arc<Snapshot>>,
    /// Where a fresh snapshot comes from; `None`: the first snapshot is kept to the end.
    live: Option<Live>,
    key: BlobKey,
    len: u64,
    layout: Layout,
    next: u32,
    count: u32,
    /// Check each chunk's CRC-32C.
    crc: bool,
    hasher: Option<KeyHasher>,
    helper: Option<Helper>,
    current: Option<(Chunk, usize)>,
}

/// A reader's way to fresh snapshots.
struct Live {
    db: Arc<DbHandle>,
    /// Keeps the blob's chunks while snapshots move on.
    _lease: Lease,
    opened: Instant,
    /// When the last chunk was handed out.
    last: Option<Instant>,
    /// Bytes handed out since the consumer last paused (or released the snapshot): below
    /// [`BORROW_AFTER`], chunks are copies and no snapshot is kept between them.
    streak: u64,
    /// The consumer never blocks holding a chunk ([`BlobReader::borrow_chunks`]).
    borrow: bool,
}

/// One chunk of a blob. Handed to a consumer proven fast (or by a reader of one snapshot) it is
/// borrowed from the database's page (no copy) and keeps that page's snapshot until it is
/// dropped or [detached](Self::detach); otherwise it is a copy that holds nothing. Either way it
/// stays valid whatever the reader does.
pub struct Chunk {
    data: ChunkData,
    len: usize,
}

enum ChunkData {
    Page {
        guard: AccessGuard<'static, &'static [u8]>,
        /// Dropped after `guard`: the page is not reused while the guard reads it.
        _snapshot: Arc<Snapshot>,
    },
    Owned(Box<[u8]>),
}

impl Chunk {
    /// The blob bytes of this chunk.
    pub fn value(&self) -> &[u8] {
        match &self.data {
            ChunkData::Page { guard, .. } => &guard.value()[..self.len],
            ChunkData::Owned(b) => b,
        }
    }

    /// Copies the bytes out if the chunk is borrowed, so that it no longer holds a database
    /// snapshot: call it on a chunk kept while its GET is parked (with
    /// [`BlobReader::release_snapshot`]), or the snapshot outlives the park.
    pub fn detach(&mut self) {
        if matches!(self.data, ChunkData::Page { .. }) {
            self.data = ChunkData::Owned(self.value().into());
        }
    }

    /// Whether the chunk holds a database snapshot (it is borrowed from a page).
    pub fn holds_snapshot(&self) -> bool {
        matches!(self.data, ChunkData::Page { .. })
    }
}

impl std::fmt::Debug for Chunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunk")
            .field("len", &self.len)
            .field("borrowed", &self.holds_snapshot())
            .finish()
    }
}

type ChunkTable = ReadOnlyTable<([u8; 20], u32), &'static [u8]>;

/// The tables one snapshot of the database offers a reader of one blob.
pub(crate) struct Snapshot {
    chunks: ChunkTable,
    /// `TAILS`, opened only for a blob whose last chunk is split ([`Layout::split`]).
    tails: Option<ReadOnlyTable<&'static [u8], &'static [u8]>>,
}

impl Snapshot {
    /// The tables of `txn` a reader of any blob of the store may need (shared by GETs:
    /// `snapshots.rs`).
    pub(crate) fn open_all(txn: &ReadTransaction, layout: Layout) -> Result<Snapshot, StoreError> {
        Ok(Snapshot {
            chunks: txn.open_table(CHUNKS)?,
            tails: match layout.tails {
                true => Some(txn.open_table(TAILS)?),
                false => None,
            },
        })
    }

    /// The tables of `txn` a reader of a blob of `len` bytes needs.
    pub(crate) fn open(
        txn: &ReadTransaction,
        layout: Layout,
        len: u64,
    ) -> Result<Snapshot, StoreError> {
        Ok(Snapshot {
            chunks: txn.open_table(CHUNKS)?,
            tails: match layout.has_tail(len) {
                true => Some(txn.open_table(TAILS)?),
                false => None,
            },
        })
    }

    /// The tail of `key`'s chunk `i` (split, its head of `head` bytes in `CHUNKS`): its
    /// `tail` bytes, checked against their CRC-32C when `crc` is set.
    fn tail(
        &self,
        key: BlobKey,
        i: u32,
        tail: u64,
        layout: Layout,
        crc: bool,
    ) -> Result<AccessGuard<'static, &'static [u8]>, StoreError> {
        let damaged = |what: String| StoreError::Damaged { key, what };
        let guard = match &self.tails {
            Some(t) => t.get(key.0.as_slice())?,
            None => None,
        }
        .ok_or_else(|| damaged(format!("the tail of chunk {i} is missing")))?;
        let value = guard.value();
        let got = (value.len() as u64).saturating_sub(layout.trailer() as u64);
        if got != tail || value.len() < layout.trailer() {
            return Err(damaged(format!(
                "the tail of chunk {i} holds {got} bytes, expected {tail}"
            )));
        }
        let (data, trailer) = value.split_at(tail as usize);
        if crc && !crc_matches(&key, i, data, trailer) {
            return Err(damaged(format!("the tail of chunk {i} fails its checksum")));
        }
        Ok(guard)
    }

    /// Feeds the bytes of chunk `i` (head and tail) to `h`, unchecked but for their length.
    fn hash_chunk(
        &self,
        h: &mut KeyHasher,
        key: BlobKey,
        len: u64,
        layout: Layout,
        i: u32,
    ) -> Result<(), StoreError> {
        let damaged = |what: String| StoreError::Damaged { key, what };
        let chunk = self
            .chunks
            .get((key.0, i))?
            .ok_or_else(|| damaged(format!("chunk {i} is missing")))?;
        let n = layout.data_len(len, i);
        let head = layout.split(len, i).unwrap_or(n);
        let data = chunk
            .value()
            .get(..head as usize)
            .ok_or_else(|| damaged(format!("chunk {i} is short")))?;
        h.update(data);
        if head < n {
            let tail = self.tail(key, i, n - head, layout, false)?;
            h.update(&tail.value()[..(n - head) as usize]);
        }
        Ok(())
    }
}

/// Whether `trailer` holds the CRC-32C of `data` as chunk `i` of `key`.
fn crc_matches(key: &BlobKey, i: u32, data: &[u8], trailer: &[u8]) -> bool {
    let mut stored = [0u8; 4];
    stored.copy_from_slice(trailer);
    crc::chunk_crc(&key.0, i, data) == u32::from_le_bytes(stored)
}

/// Blobs of at least this many chunks are hashed on a helper thread.
const HELPER_MIN_CHUNKS: u32 = 16;

/// A thread hashing the blob's chunks in order; it stops early when `cancel` is set.
struct Helper {
    cancel: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<BlobKey, StoreError>>>,
}

impl Helper {
    fn start(chunks: Arc<Snapshot>, key: BlobKey, len: u64, layout: Layout) -> Option<Helper> {
        let count = layout.chunk_count(len);
        let cancel = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&cancel);
        let handle = std::thread::Builder::new()
            .name("blobvault-verify".into())
            .spawn(move || {
                let mut h = KeyHasher::new();
                for i in 0..count {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    chunks.hash_chunk(&mut h, key, len, layout, i)?;
                }
                Ok(h.finish())
            })
            .ok()?;
        Some(Helper {
            cancel,
            handle: Some(handle),
        })
    }

    /// The hash of the whole blob.
    fn finish(mut self) -> Result<BlobKey, StoreError> {
        match self.handle.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            _ => Err(StoreError::Storage("the verifying thread failed".into())),
        }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        // Joined, not detached: the thread holds the read transaction, which must end before the
        // store can close. It notices the flag after at most one chunk.
        self.cancel.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl std::fmt::Debug for BlobReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobReader")
            .field("key", &self.key)
            .field("len", &self.len)
            .field("next", &self.next)
            .finish()
    }
}

impl BlobReader {
    /// A reader of one snapshot (`chunks`) to the end, that checks what it reads when
    /// `verify` is set: each chunk's CRC-32C, or the SHA-1 of the whole blob in a store without
    /// checksums.
    pub(crate) fn new(
        chunks: impl Into<Arc<Snapshot>>,
        key: BlobKey,
        len: u64,
        layout: Layout,
        verify: bool,
    ) -> Self {
        let sha = verify && !layout.checksums;
        Self::with_checks(chunks, None, key, len, layout, verify, sha)
    }

    /// Like [`new`](Self::new), but the snapshot is re-opened from `db` as it ages or is
    /// released; `lease` keeps the blob's chunks meanwhile. `chunks` is the snapshot the blob
    /// was found in.
    pub(crate) fn leased(
        db: Arc<DbHandle>,
        lease: Lease,
        chunks: impl Into<Arc<Snapshot>>,
        key: BlobKey,
        len: u64,
        layout: Layout,
        verify: bool,
    ) -> Self {
        let sha = verify && !layout.checksums;
        let live = Live {
            db,
            _lease: lease,
            opened: Instant::now(),
            last: None,
            streak: 0,
            borrow: false,
        };
        Self::with_checks(chunks, Some(live), key, len, layout, verify, sha)
    }

    /// A reader that checks everything: the chunks' CRC-32C (if the store keeps them) and the
    /// SHA-1 of the whole blob against its key.
    pub(crate) fn new_full(chunks: Snapshot, key: BlobKey, len: u64, layout: Layout) -> Self {
        Self::with_checks(chunks, None, key, len, layout, true, true)
    }

    fn with_checks(
        chunks: impl Into<Arc<Snapshot>>,
        live: Option<Live>,
        key: BlobKey,
        len: u64,
        layout: Layout,
        verify: bool,
        sha: bool,
    ) -> Self {
        let chunks = chunks.into();
        let count = layout.chunk_count(len);
        // The helper keeps the first snapshot: it reads at disk speed and ends.
        let helper = (sha && count >= HELPER_MIN_CHUNKS)
            .then(|| Helper::start(Arc::clone(&chunks), key, len, layout))
            .flatten();
        BlobReader {
            chunks: Some(chunks),
            live,
            key,
            len,
            layout,
            next: 0,
            count,
            crc: verify && layout.checksums,
            // Hashed here when small, or when no helper thread could be started.
            hasher: (sha && helper.is_none()).then(KeyHasher::new),
            helper,
            current: None,
        }
    }

    /// The content key of the blob (also for a named blob).
    pub fn key(&self) -> BlobKey {
        self.key
    }

    /// Total length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for an empty blob.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True when the blob fits in one chunk (and so is verified before its first byte is out).
    pub fn is_single_chunk(&self) -> bool {
        self.count <= 1
    }

    /// Drops the reader's snapshot now, so that it holds back no page the writer frees
    /// meanwhile: call it when the reader will be idle for a while (a GET whose client is not
    /// reading). The next [`next_chunk`](Self::next_chunk) opens a fresh one, and chunks are
    /// copies that hold no snapshot until the consumer proves fast again ([`BORROW_AFTER`]).
    /// Chunks already handed out stay valid; a borrowed one keeps its snapshot until dropped or
    /// [detached](Chunk::detach). A no-op for a reader that keeps one snapshot to the end (see
    /// the type's docs).
    pub fn release_snapshot(&mut self) {
        if let Some(live) = self.live.as_mut() {
            self.chunks = None;
            live.streak = 0;
        }
    }

    /// Hands out borrowed chunks (no copy) from the first one on, whatever the consumer's pace:
    /// for a consumer that never blocks while it holds a chunk, and that
    /// [detaches](Chunk::detach) the chunks it keeps when it parks the GET (calling
    /// [`release_snapshot`](Self::release_snapshot) too). A readiness-loop server is one; a
    /// blocking `write` of a borrowed chunk to a client that stopped reading would keep a snapshot
    /// for as long as it blocks, which is why chunks are copies by default until the consumer
    /// proves fast.
    pub fn borrow_chunks(&mut self) {
        if let Some(live) = self.live.as_mut() {
            live.borrow = true;
        }
    }

    /// Whether the reader holds a snapshot now: not after
    /// [`release_snapshot`](Self::release_snapshot), nor between chunks while it hands out
    /// copies.
    pub fn holds_snapshot(&self) -> bool {
        self.chunks.is_some()
    }

    /// The snapshot to read from: a fresh one if the current one is released or too old.
    fn snapshot(&mut self) -> Result<Arc<Snapshot>, StoreError> {
        if let Some(live) = self.live.as_mut()
            && live.last.is_some_and(|t| t.elapsed() >= SNAPSHOT_MAX_AGE)
        {
            live.streak = 0;
        }
        if let Some(live) = self.live.as_mut()
            && (self.chunks.is_none() || live.opened.elapsed() >= SNAPSHOT_MAX_AGE)
        {
            // The old snapshot goes first: nothing gains from holding two.
            self.chunks = None;
            let txn = live.db.get()?.begin_read()?;
            self.chunks = Some(Arc::new(Snapshot::open(&txn, self.layout, self.len)?));
            live.opened = Instant::now();
        }
        self.chunks.clone().ok_or(StoreError::Closed)
    }

    fn damaged(&self, what: impl Into<String>) -> StoreError {
        StoreError::Damaged {
            key: self.key,
            what: what.into(),
        }
    }

    /// The next chunk, or `None` after the last.
    pub fn next_chunk(&mut self) -> Result<Option<Chunk>, StoreError> {
        if self.next >= self.count {
            if self.count == 0
                && let Some(h) = self.hasher.take()
                && h.finish() != self.key
            {
                return Err(self.damaged("content does not match its key"));
            }
            return Ok(None);
        }
        let i = self.next;
        let snapshot = self.snapshot()?;
        let guard = snapshot
            .chunks
            .get((self.key.0, i))?
            .ok_or_else(|| self.damaged(format!("chunk {i} is missing")))?;
        let expected = self.layout.data_len(self.len, i);
        // A split last chunk: its head here, its tail in `TAILS`.
        let head = self.layout.split(self.len, i).unwrap_or(expected);
        let value = guard.value();
        let got = value.len() as u64;
        if got != head + self.layout.trailer() as u64 {
            let got = got.saturating_sub(self.layout.trailer() as u64);
            return Err(self.damaged(format!("chunk {i} holds {got} bytes, expected {head}")));
        }
        let (data, trailer) = value.split_at(head as usize);
        if self.crc && !crc_matches(&self.key, i, data, trailer) {
            return Err(self.damaged(format!("chunk {i} fails its checksum")));
        }
        let tail = (head < expected)
            .then(|| snapshot.tail(self.key, i, expected - head, self.layout, self.crc))
            .transpose()?;
        let tail_data = tail
            .as_ref()
            .map_or(&[][..], |t| &t.value()[..(expected - head) as usize]);
        self.next += 1;
        if self.next == self.count
            && let Some(helper) = self.helper.take()
            && helper.finish()? != self.key
        {
            return Err(self.damaged("content does not match its key"));
        }
        if let Some(h) = self.hasher.as_mut() {
            h.update(data);
            h.update(tail_data);
            if self.next == self.count
                && let Some(h) = self.hasher.take()
                && h.finish() != self.key
            {
                return Err(self.damaged("content does not match its key"));
            }
        }
        let data = match self.live.as_mut() {
            Some(live) => {
                let borrow = live.borrow || live.streak >= BORROW_AFTER;
                live.streak += expected;
                live.last = Some(Instant::now());
                if tail.is_some() {
                    // Head and tail joined: a copy, which holds no snapshot.
                    if !borrow {
                        self.chunks = None;
                    }
                    ChunkData::Owned([data, tail_data].concat().into())
                } else if borrow {
                    ChunkData::Page {
                        guard,
                        _snapshot: snapshot,
                    }
                } else {
                    // Nothing pins a snapshot while the consumer may dawdle.
                    self.chunks = None;
                    ChunkData::Owned(data.into())
                }
            }
            None if tail.is_some() => ChunkData::Owned([data, tail_data].concat().into()),
            None => ChunkData::Page {
                guard,
                _snapshot: snapshot,
            },
        };
        Ok(Some(Chunk {
            len: expected as usize,
            data,
        }))
    }
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some((chunk, pos)) = self.current.as_mut() {
                let data = chunk.value();
                if *pos < data.len() {
                    let n = (data.len() - *pos).min(buf.len());
                    buf[..n].copy_from_slice(&data[*pos..*pos + n]);
                    *pos += n;
                    return Ok(n);
                }
            }
            match self.next_chunk().map_err(io::Error::other)? {
                Some(c) => self.current = Some((c, 0)),
                None => return Ok(0),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use redb::{Database, ReadableTable};

    use super::super::schema::{CHUNK_SIZE_SETTING, CHUNKS, SETTINGS};
    use super::super::{BlobStore, DB_FILE, StoreError, StoreOptions};
    use crate::key::BlobId;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// Flips one byte of chunk `i` of `id`'s content in the store's database.
    fn damage(store: &BlobStore, id: &BlobId, i: u32, at: usize) {
        let key = store.get(id).unwrap().unwrap().key();
        let db = store.db().unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut chunks = txn.open_table(CHUNKS).unwrap();
            let mut v = chunks.get((key.0, i)).unwrap().unwrap().value().to_vec();
            v[at] ^= 0x40;
            chunks.insert((key.0, i), v.as_slice()).unwrap();
        }
        txn.commit().unwrap();
        // As the writer does after its commits: GETs see the damage.
        store.inner.shared.committed();
    }

    fn read_all(store: &BlobStore, id: &BlobId) -> Result<Vec<u8>, StoreError> {
        let mut r = store.get(id)?.expect("stored");
        let mut out = Vec::new();
        while let Some(c) = r.next_chunk()? {
            out.extend_from_slice(c.value());
        }
        Ok(out)
    }

    fn small_chunks(dir: &std::path::Path) -> BlobStore {
        let mut o = StoreOptions::new(dir);
        o.chunk_size = 1000;
        o.open().unwrap()
    }

    #[test]
    fn a_damaged_chunk_fails_at_that_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let store = small_chunks(dir.path());
        let blob = data(2_500);
        let id = BlobId::Content(store.put(&blob).unwrap());
        assert_eq!(read_all(&store, &id).unwrap(), blob);
        damage(&store, &id, 1, 10);
        let mut r = store.get(&id).unwrap().unwrap();
        assert_eq!(r.next_chunk().unwrap().unwrap().value(), &blob[..1000]);
        let e = r.next_chunk().unwrap_err();
        assert!(e.to_string().contains("chunk 1 fails its checksum"), "{e}");
        let report = store.verify().unwrap();
        assert_eq!(report.damaged.len(), 1, "{report:?}");
    }

    #[test]
    fn a_damaged_checksum_is_caught_too_and_large_blobs_verify_in_full() {
        let dir = tempfile::tempdir().unwrap();
        let store = small_chunks(dir.path());
        let blob = data(40_000); // 40 chunks: verify hashes it on the helper thread
        let id = BlobId::Content(store.put(&blob).unwrap());
        assert!(store.verify().unwrap().is_clean());
        damage(&store, &id, 39, 1_000); // the last chunk's CRC itself
        assert!(read_all(&store, &id).is_err());
        assert_eq!(store.verify().unwrap().damaged.len(), 1);
    }

    #[test]
    fn a_store_without_checksums_is_read_and_checked_by_sha1() {
        let dir = tempfile::tempdir().unwrap();
        {
            // A store as created before chunk checksums: the chunk size alone in its settings.
            let db = Database::create(dir.path().join(DB_FILE)).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(SETTINGS)
                .unwrap()
                .insert(CHUNK_SIZE_SETTING, 1000u64)
                .unwrap();
            txn.commit().unwrap();
        }
        let store = BlobStore::open(dir.path()).unwrap();
        for len in [0, 999, 1000, 20_500] {
            let blob = data(len);
            let id = BlobId::Content(store.put(&blob).unwrap());
            assert_eq!(read_all(&store, &id).unwrap(), blob, "len {len}");
        }
        let blob = data(20_500);
        let id = BlobId::Content(crate::key::BlobKey::of(&blob));
        assert!(store.verify().unwrap().is_clean());
        damage(&store, &id, 3, 5);
        let e = read_all(&store, &id).unwrap_err();
        assert!(e.to_string().contains("does not match its key"), "{e}");
        let one = data(999);
        let one_id = BlobId::Content(crate::key::BlobKey::of(&one));
        damage(&store, &one_id, 0, 5);
        assert!(read_all(&store, &one_id).is_err());
        assert_eq!(store.verify().unwrap().damaged.len(), 2);
    }
}
