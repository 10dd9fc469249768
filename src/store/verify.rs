//! `verify`: re-hash every stored blob and look for chunks nothing points at.
//!
//! Chunks of content deleted while a GET read it (listed in `PENDING_FREE` until that GET ends,
//! or until the next open after a crash) are counted apart, not as orphans, and not re-hashed.

use redb::{Database, ReadableDatabase, ReadableTable};

use super::read::{BlobReader, Snapshot};
use super::schema::*;
use super::{LogReplay, StoreError};
use crate::key::BlobKey;

/// One damaged blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The blob's content key.
    pub key: BlobKey,
    /// What is wrong: a missing or short chunk, or a hash that does not match the key.
    pub what: String,
}

/// What [`BlobStore::verify`](super::BlobStore::verify) found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Distinct contents re-hashed (a content stored by key and by name counts once).
    pub blobs_checked: u64,
    /// Bytes read while re-hashing (of a damaged blob, those before the damage).
    pub bytes_checked: u64,
    /// Blobs whose chunks are missing or short, or whose bytes do not hash to their key.
    pub damaged: Vec<Damage>,
    /// Chunks (and tails of split last chunks) of no stored blob (a bug or a torn write if ever
    /// non-zero).
    pub orphan_chunks: u64,
    /// Chunks (and tails) of deleted blobs kept for GETs still reading them; freed when the last
    /// such GET ends, or at the next open. Not a fault.
    pub pending_chunks: u64,
    /// Named blobs pointing at content that is not there.
    pub dangling_names: u64,
    /// What the replay of the write-ahead log found when the store was opened (`None` for a
    /// store without a log): see [`LogReplay::lost_writes`].
    pub log: Option<LogReplay>,
}

impl VerifyReport {
    /// Whether the database is consistent (no damaged blob, orphan chunk or dangling name).
    /// Says nothing of the log: see [`log`](Self::log).
    pub fn is_clean(&self) -> bool {
        self.damaged.is_empty() && self.orphan_chunks == 0 && self.dangling_names == 0
    }
}

pub(crate) fn verify(db: &Database, layout: Layout) -> Result<VerifyReport, StoreError> {
    let txn = db.begin_read()?;
    let content = txn.open_table(CONTENT)?;
    let named = txn.open_table(NAMED)?;
    let pending = txn.open_table(PENDING_FREE)?;
    let mut report = VerifyReport::default();
    for row in content.iter()? {
        let (k, m) = row?;
        let key = BlobKey(k.value());
        let meta = ContentMeta::decode(&m.value());
        let mut r = BlobReader::new_full(
            Snapshot::open(&txn, layout, meta.len)?,
            key,
            meta.len,
            layout,
        );
        report.blobs_checked += 1;
        loop {
            match r.next_chunk() {
                Ok(Some(c)) => report.bytes_checked += c.value().len() as u64,
                Ok(None) => break,
                Err(StoreError::Damaged { key, what }) => {
                    report.damaged.push(Damage { key, what });
                    break;
                }
                Err(e) => return Err(e),
            }
        }
    }
    let chunks = txn.open_table(CHUNKS)?;
    for row in chunks.iter()? {
        let (k, _) = row?;
        let (key, i) = k.value();
        let owned = content
            .get(key)?
            .map(|m| i < layout.chunk_count(ContentMeta::decode(&m.value()).len))
            .unwrap_or(false);
        if owned {
            continue;
        }
        let kept = pending
            .get(key)?
            .is_some_and(|len| i < layout.chunk_count(len.value()));
        if kept {
            report.pending_chunks += 1;
        } else {
            report.orphan_chunks += 1;
        }
    }
    if layout.tails {
        for row in txn.open_table(TAILS)?.iter()? {
            let Ok(key) = <[u8; 20]>::try_from(row?.0.value()) else {
                report.orphan_chunks += 1;
                continue;
            };
            let owned = content
                .get(key)?
                .is_some_and(|m| layout.has_tail(ContentMeta::decode(&m.value()).len));
            if owned {
                continue;
            }
            if pending
                .get(key)?
                .is_some_and(|len| layout.has_tail(len.value()))
            {
                report.pending_chunks += 1;
            } else {
                report.orphan_chunks += 1;
            }
        }
    }
    for row in named.iter()? {
        let (_, v) = row?;
        if content.get(v.value())?.is_none() {
            report.dangling_names += 1;
        }
    }
    Ok(report)
}
