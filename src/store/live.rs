//! What an open store tells about itself while it serves, without a scan: its counters and
//! figures ([`BlobStore::metrics`]), whether it can take work ([`BlobStore::readiness`]), and
//! its listing a page at a time ([`BlobStore::list_page`]), so that a million blobs are listed
//! in bounded memory.

use std::fs;

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};

use super::schema::{CONTENT, ContentMeta, NAMED};
use super::{BlobEntry, BlobStore, Shared, StoreError};
use crate::key::{BlobId, BlobKey, JobId};
use crate::metrics::{StoreDelta, StoreSnapshot};

/// Where a [`BlobStore::list_page`] goes on from: content blobs in key order, then named blobs
/// in (job, name) order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ListCursor {
    /// From the first blob.
    #[default]
    Start,
    /// After this content key.
    AfterContent(BlobKey),
    /// After this named blob.
    AfterNamed(JobId, String),
}

/// The figures the writer keeps up to date, counted once from the database (one scan of the
/// content table; the named table's length is kept by redb).
pub(crate) fn count(shared: &Shared) -> Result<StoreDelta, StoreError> {
    let txn = shared.db()?.begin_read()?;
    let content = txn.open_table(CONTENT)?;
    let mut d = StoreDelta {
        named_blobs: txn.open_table(NAMED)?.len()? as i64,
        ..StoreDelta::default()
    };
    for row in content.iter()? {
        let meta = ContentMeta::decode(&row?.1.value());
        d.content(None, Some((meta.len, meta.pinned)));
    }
    Ok(d)
}

impl BlobStore {
    /// The counters themselves, for the callers that count into them (read-repair, the server).
    pub(crate) fn counters(&self) -> &std::sync::Arc<crate::metrics::StoreMetrics> {
        &self.inner.shared.metrics
    }

    /// The store's counters and figures now (cheap: no scan, no transaction).
    pub fn metrics(&self) -> StoreSnapshot {
        let shared = &self.inner.shared;
        let mut s = shared.metrics.snapshot();
        s.chunk_size = shared.layout.chunk_size;
        s.out_of_space = self.is_out_of_space();
        s.file_bytes = match (&shared.opts.memory, &shared.opts.sim_disk) {
            (Some(image), _) => image.len(),
            (None, Some(disk)) => disk.db_len(),
            (None, None) => fs::metadata(shared.db.path()).map_or(0, |m| m.len()),
        };
        s
    }

    /// Whether the store can take work: its writer thread runs, its database opens and is still
    /// the file at its path (not deleted or replaced while open), it is not out of space, the last put to its recovery store (if any) did not fail, and that
    /// recovery store answers. `Err` says which failed.
    pub fn readiness(&self) -> Result<(), String> {
        self.readiness_local()?;
        self.recovery_answers()
    }

    /// The checks of [`BlobStore::readiness`] that ask nothing over the network.
    pub(crate) fn readiness_local(&self) -> Result<(), String> {
        let writer_alive = self
            .inner
            .writer
            .lock()
            .map(|w| w.as_ref().is_some_and(|h| !h.is_finished()))
            .unwrap_or(false);
        if !writer_alive {
            return Err("the store's writer thread has stopped".into());
        }
        let db = self
            .inner
            .shared
            .db()
            .map_err(|e| format!("the store's database is not open: {e}"))?;
        db.begin_read()
            .map_err(|e| format!("the store's database cannot be read: {e}"))?;
        self.inner.shared.db.file_check()?;
        if self.is_out_of_space() {
            return Err(format!(
                "the store {} is out of space: PUTs are refused until space is freed (delete \
                 blobs, or free space on its file system)",
                self.dir().display()
            ));
        }
        if let Some(e) = self.inner.shared.metrics.recovery_put_failure() {
            return Err(format!(
                "the last put to the recovery store failed ({e}); PUTs fail until one succeeds"
            ));
        }
        Ok(())
    }

    /// Whether the recovery store (if any) answers a lookup; may go over the network.
    pub(crate) fn recovery_answers(&self) -> Result<(), String> {
        if let Some(rec) = self.recovery() {
            // Any lookup proves the recovery store answers; this key names nothing.
            rec.key_of(&BlobId::Content(BlobKey::default()))
                .map_err(|e| format!("the recovery store does not answer: {e}"))?;
        }
        Ok(())
    }

    /// Up to `limit` blobs from `from` on, each page from a snapshot of its own (a blob stored or
    /// deleted between two pages may be missed or listed), and where the next page starts
    /// (`None` after the last).
    pub fn list_page(
        &self,
        from: &ListCursor,
        limit: usize,
    ) -> Result<(Vec<BlobEntry>, Option<ListCursor>), StoreError> {
        let limit = limit.max(1);
        let txn = self.db()?.begin_read()?;
        let content = txn.open_table(CONTENT)?;
        let named = txn.open_table(NAMED)?;
        let mut out = Vec::with_capacity(limit.min(1024));
        if !matches!(from, ListCursor::AfterNamed(..)) {
            let rows = match from {
                ListCursor::AfterContent(k) => content.range::<[u8; 20]>((
                    std::ops::Bound::Excluded(k.0),
                    std::ops::Bound::Unbounded,
                ))?,
                _ => content.iter()?,
            };
            for row in rows {
                let (k, m) = row?;
                let meta = ContentMeta::decode(&m.value());
                if !meta.pinned {
                    continue;
                }
                let key = BlobKey(k.value());
                out.push(BlobEntry {
                    id: BlobId::Content(key),
                    key,
                    len: meta.len,
                });
                if out.len() == limit {
                    return Ok((out, Some(ListCursor::AfterContent(key))));
                }
            }
        }
        let rows = match from {
            ListCursor::AfterNamed(job, name) => named.range::<([u8; 16], &str)>((
                std::ops::Bound::Excluded((job.0, name.as_str())),
                std::ops::Bound::Unbounded,
            ))?,
            _ => named.iter()?,
        };
        for row in rows {
            let (k, v) = row?;
            let (job, name) = k.value();
            let key = BlobKey(v.value());
            let len = content
                .get(key.0)?
                .map_or(0, |m| ContentMeta::decode(&m.value()).len);
            out.push(BlobEntry {
                id: BlobId::Named(JobId(job), name.to_owned()),
                key,
                len,
            });
            if out.len() == limit {
                return Ok((
                    out,
                    Some(ListCursor::AfterNamed(JobId(job), name.to_owned())),
                ));
            }
        }
        Ok((out, None))
    }
}
