//! Streaming reads: one chunk at a time from a read transaction, re-hashed on the way.

use std::io::{self, Read};

use redb::{AccessGuard, ReadOnlyTable};

use super::StoreError;
use super::schema::chunk_count;
use crate::key::{BlobKey, KeyHasher};

/// Reads one blob chunk by chunk; memory use is a chunk whatever the blob's size. The read
/// transaction it holds keeps the blob readable even if it is deleted meanwhile.
///
/// With verification on, the last chunk is only handed out after the SHA-1 of the whole blob
/// matched its key: a damaged blob fails before its final byte instead of passing as whole.
pub struct BlobReader {
    chunks: ReadOnlyTable<([u8; 20], u32), &'static [u8]>,
    key: BlobKey,
    len: u64,
    chunk_size: u64,
    next: u32,
    count: u32,
    hasher: Option<KeyHasher>,
    current: Option<(AccessGuard<'static, &'static [u8]>, usize)>,
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
    pub(crate) fn new(
        chunks: ReadOnlyTable<([u8; 20], u32), &'static [u8]>,
        key: BlobKey,
        len: u64,
        chunk_size: u64,
        verify: bool,
    ) -> Self {
        BlobReader {
            chunks,
            key,
            len,
            chunk_size,
            next: 0,
            count: chunk_count(len, chunk_size),
            hasher: verify.then(KeyHasher::new),
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

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True when the blob fits in one chunk (and so is verified before its first byte is out).
    pub fn is_single_chunk(&self) -> bool {
        self.count <= 1
    }

    fn damaged(&self, what: impl Into<String>) -> StoreError {
        StoreError::Damaged {
            key: self.key,
            what: what.into(),
        }
    }

    /// The next chunk, or `None` after the last.
    pub fn next_chunk(
        &mut self,
    ) -> Result<Option<AccessGuard<'static, &'static [u8]>>, StoreError> {
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
        let chunk = self
            .chunks
            .get((self.key.0, i))?
            .ok_or_else(|| self.damaged(format!("chunk {i} is missing")))?;
        let expected = if i + 1 == self.count {
            self.len - self.chunk_size * i as u64
        } else {
            self.chunk_size
        };
        let got = chunk.value().len() as u64;
        if got != expected {
            return Err(self.damaged(format!("chunk {i} holds {got} bytes, expected {expected}")));
        }
        self.next += 1;
        if let Some(h) = self.hasher.as_mut() {
            h.update(chunk.value());
            if self.next == self.count
                && let Some(h) = self.hasher.take()
                && h.finish() != self.key
            {
                return Err(self.damaged("content does not match its key"));
            }
        }
        Ok(Some(chunk))
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
