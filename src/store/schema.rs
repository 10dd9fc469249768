//! The redb tables and the record kept per content blob.

use redb::TableDefinition;

/// `BlobKey` → [`ContentMeta`] (encoded).
pub(crate) const CONTENT: TableDefinition<[u8; 20], [u8; ContentMeta::SIZE]> =
    TableDefinition::new("content");
/// `(JobId, name)` → `BlobKey` of the content the name points at.
pub(crate) const NAMED: TableDefinition<([u8; 16], &str), [u8; 20]> = TableDefinition::new("named");
/// `(BlobKey, chunk index)` → up to one chunk of bytes.
pub(crate) const CHUNKS: TableDefinition<([u8; 20], u32), &[u8]> = TableDefinition::new("chunks");
/// `BlobKey` (its 20 bytes) → the tail of a blob whose last chunk is split ([`Layout::split`]):
/// the bytes after the head kept in `CHUNKS`, then their CRC-32C. Stores of
/// [`CHUNK_FORMAT_TAILS`] only. A slice, not `[u8; 20]`: redb checks a table's type names at every
/// open, and builds `[u8; N]`'s with `format!` (a constant for a slice); a GET of a split blob
/// opens this table.
pub(crate) const TAILS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("tails");
/// `BlobKey` → length of content deleted while a GET was reading it: its content row is gone,
/// its chunks stay until the last such GET ends (`lease.rs`). Every open frees what it lists.
pub(crate) const PENDING_FREE: TableDefinition<[u8; 20], u64> =
    TableDefinition::new("pending_free");
/// Store-wide settings fixed at creation (the chunk size).
pub(crate) const SETTINGS: TableDefinition<&str, u64> = TableDefinition::new("settings");

/// The chunk size of a store of chunk format 0 or 1. A store of format 2 keeps 0 here, which
/// builds before format 2 refuse at open ("invalid chunk size 0") before writing anything: they
/// would take format 2 for "no checksums" and write chunks it cannot read. Its chunk size is
/// under [`CHUNK_SIZE_2_SETTING`].
pub(crate) const CHUNK_SIZE_SETTING: &str = "chunk_size";
/// The chunk size of a store of chunk format 2 (see [`CHUNK_SIZE_SETTING`]).
pub(crate) const CHUNK_SIZE_2_SETTING: &str = "chunk_size.format2";
/// How chunks are stored: absent or 0, the bytes alone; 1, the bytes then their CRC-32C
/// ([`super::crc::chunk_crc`], 4 bytes little-endian); 2, as 1, and a last chunk that would
/// overflow its page run is split into a head and a tail (`TAILS`, [`Layout::split`]). New stores
/// use 2.
pub(crate) const CHUNK_FORMAT_SETTING: &str = "chunk_format";
pub(crate) const CHUNK_FORMAT_CRC: u64 = 1;
pub(crate) const CHUNK_FORMAT_TAILS: u64 = 2;

// PAGE, CHUNK_LEAF_OVERHEAD and TAIL_MAX decide where every split blob of a format-2 store has
// its bytes: they are part of format 2. Should redb's leaf format change (the test of
// CHUNK_LEAF_OVERHEAD fails), new values need a new format number, never an edit of these.

/// redb's page: a leaf takes a run of 2^k of them.
const PAGE: u64 = 4096;
/// The bytes of a redb 4.6 leaf holding one `CHUNKS` entry besides its value: page header (4),
/// the value's end offset (4), the key (fixed width, 20 + 4). Checked by a test against redb.
pub(crate) const CHUNK_LEAF_OVERHEAD: u64 = 4 + 4 + 24;
/// The longest tail split off a last chunk. A tail packs with other blobs' tails in `TAILS`
/// (about 60 of 4 KiB blobs' 36-byte tails per page); a longer remainder stays in `CHUNKS`, so
/// that a blob is split only where it saves at least a page per ~TAIL_MAX bytes moved. 1/8 of a
/// page: the split saves 4 KiB or more per blob for at most 512 bytes (+36 of row overhead) in
/// `TAILS` (BENCHMARKS.md, "Small blobs on disk").
pub(crate) const TAIL_MAX: u64 = 512;
/// A random number that ties the write-ahead log to this database (`wal.rs`).
pub(crate) const STORE_ID_SETTING: &str = "store_id";
/// The last write-ahead log record applied (`wal.rs`).
pub(crate) const WAL_LSN_SETTING: &str = "wal_lsn";

/// How a store cuts blobs into chunks and stores them (fixed when the store is created).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    /// Blob bytes per chunk (the last chunk holds the rest).
    pub chunk_size: u64,
    /// Each chunk value ends with a CRC-32C of the chunk.
    pub checksums: bool,
    /// A last chunk a little longer than a leaf's page run is split ([`split`](Self::split)).
    pub tails: bool,
}

impl Layout {
    /// Bytes after the blob bytes in each chunk value.
    pub(crate) fn trailer(&self) -> usize {
        if self.checksums { 4 } else { 0 }
    }

    pub(crate) fn chunk_count(&self, len: u64) -> u32 {
        chunk_count(len, self.chunk_size)
    }

    /// Blob bytes in chunk `i` of a blob of `len` bytes.
    pub(crate) fn data_len(&self, len: u64, i: u32) -> u64 {
        (len - self.chunk_size * i as u64).min(self.chunk_size)
    }

    /// The bytes of chunk `i` of a blob of `len` bytes that `CHUNKS` holds when the chunk is
    /// split, the rest (the tail) being in `TAILS`; `None` when it is stored whole.
    ///
    /// redb gives a leaf a run of 2^k pages, and a 4 KiB blob (4,096 bytes + CRC + key) is just
    /// over one page: whole, it takes two. So the last chunk, when it is at most [`TAIL_MAX`]
    /// bytes longer than what fills a leaf of 2^k pages alone, keeps exactly that much (the head)
    /// and the few bytes left over go to `TAILS`, where they pack with other blobs' tails.
    pub(crate) fn split(&self, len: u64, i: u32) -> Option<u64> {
        if !self.tails || i + 1 != self.chunk_count(len) {
            return None;
        }
        split_point(self.data_len(len, i), self.trailer() as u64)
    }

    /// Whether a blob of `len` bytes has a tail in `TAILS`.
    pub(crate) fn has_tail(&self, len: u64) -> bool {
        self.split(len, self.chunk_count(len).saturating_sub(1))
            .is_some()
    }
}

/// Where a last chunk of `r` bytes, stored with `trailer` bytes after them, is split (see
/// [`Layout::split`]).
fn split_point(r: u64, trailer: u64) -> Option<u64> {
    let capacity = |run: u64| (PAGE * run).checked_sub(CHUNK_LEAF_OVERHEAD + trailer);
    let mut run = 1u64;
    // The largest single-entry leaf capacity below `r`.
    let mut head = capacity(run).filter(|&c| c < r)?;
    while let Some(next) = run.checked_mul(2).and_then(capacity).filter(|&c| c < r) {
        run *= 2;
        head = next;
    }
    (r - head <= TAIL_MAX).then_some(head)
}

/// What the store knows of one content blob.
///
/// A content blob lives while it is `pinned` (stored by a content PUT and not deleted by key) or
/// while named blobs point at it (`named_refs`). Its chunks go when both are gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentMeta {
    /// Length of the blob in bytes.
    pub len: u64,
    /// Stored by a content PUT and not deleted by key since: reachable by its key.
    pub pinned: bool,
    /// Named blobs pointing at this content.
    pub named_refs: u64,
    /// Milliseconds since the Unix epoch of the first store.
    pub created_ms: u64,
}

impl ContentMeta {
    pub(crate) const SIZE: usize = 25;

    pub(crate) fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[..8].copy_from_slice(&self.len.to_le_bytes());
        b[8] = self.pinned as u8;
        b[9..17].copy_from_slice(&self.named_refs.to_le_bytes());
        b[17..].copy_from_slice(&self.created_ms.to_le_bytes());
        b
    }

    pub(crate) fn decode(b: &[u8; Self::SIZE]) -> ContentMeta {
        let u64_at = |i: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(x)
        };
        ContentMeta {
            len: u64_at(0),
            pinned: b[8] != 0,
            named_refs: u64_at(9),
            created_ms: u64_at(17),
        }
    }

    pub(crate) fn is_live(&self) -> bool {
        self.pinned || self.named_refs > 0
    }
}

/// Number of chunks a blob of `len` bytes takes.
pub(crate) fn chunk_count(len: u64, chunk_size: u64) -> u32 {
    len.div_ceil(chunk_size) as u32
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trip() {
        let m = ContentMeta {
            len: 1 << 40,
            pinned: true,
            named_refs: 7,
            created_ms: 123,
        };
        assert_eq!(ContentMeta::decode(&m.encode()), m);
        assert_eq!(chunk_count(0, 10), 0);
        assert_eq!(chunk_count(10, 10), 1);
        assert_eq!(chunk_count(11, 10), 2);
    }

    #[test]
    fn the_last_chunk_splits_just_past_a_page_run() {
        let layout = Layout {
            chunk_size: 65_408,
            checksums: true,
            tails: true,
        };
        let one = 4096 - 36;
        assert_eq!(layout.split(one, 0), None);
        assert_eq!(layout.split(one + 1, 0), Some(one));
        assert_eq!(layout.split(4096, 0), Some(one));
        assert_eq!(layout.split(one + TAIL_MAX, 0), Some(one));
        assert_eq!(layout.split(one + TAIL_MAX + 1, 0), None);
        assert_eq!(layout.split(8192 - 36 + 5, 0), Some(8192 - 36));
        assert_eq!(layout.split(32768 - 36 + 5, 0), Some(32768 - 36));
        // Only the last chunk: a full 64 KiB - 128 chunk fits its 16 pages.
        let len = 65_408 + 4096;
        assert_eq!(layout.split(len, 0), None);
        assert_eq!(layout.split(len, 1), Some(one));
        assert_eq!(layout.split(0, 0), None);
        let old = Layout {
            tails: false,
            ..layout
        };
        assert_eq!(old.split(4096, 0), None);
    }
}
