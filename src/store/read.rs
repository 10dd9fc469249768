//! Streaming reads: one chunk at a time from a read transaction, re-hashed on the way.
//!
//! The SHA-1 of a large blob is computed on a helper thread that reads the same chunks alongside
//! the caller (who is busy sending them to a socket), so re-hashing does not halve the speed of a
//! large GET: the two run on two cores, and the caller only waits for the hash before handing
//! out the last chunk.

use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

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
    chunks: Arc<ChunkTable>,
    key: BlobKey,
    len: u64,
    chunk_size: u64,
    next: u32,
    count: u32,
    hasher: Option<KeyHasher>,
    helper: Option<Helper>,
    current: Option<(AccessGuard<'static, &'static [u8]>, usize)>,
}

type ChunkTable = ReadOnlyTable<([u8; 20], u32), &'static [u8]>;

/// Blobs of at least this many chunks are hashed on a helper thread.
const HELPER_MIN_CHUNKS: u32 = 16;

/// A thread hashing the blob's chunks in order; it stops early when `cancel` is set.
struct Helper {
    cancel: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<BlobKey, StoreError>>>,
}

impl Helper {
    fn start(chunks: Arc<ChunkTable>, key: BlobKey, count: u32) -> Option<Helper> {
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
                    let chunk = chunks.get((key.0, i))?.ok_or_else(|| StoreError::Damaged {
                        key,
                        what: format!("chunk {i} is missing"),
                    })?;
                    h.update(chunk.value());
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
    pub(crate) fn new(
        chunks: ChunkTable,
        key: BlobKey,
        len: u64,
        chunk_size: u64,
        verify: bool,
    ) -> Self {
        let chunks = Arc::new(chunks);
        let count = chunk_count(len, chunk_size);
        let helper = (verify && count >= HELPER_MIN_CHUNKS)
            .then(|| Helper::start(Arc::clone(&chunks), key, count))
            .flatten();
        BlobReader {
            chunks,
            key,
            len,
            chunk_size,
            next: 0,
            count,
            // Hashed here when small, or when no helper thread could be started.
            hasher: (verify && helper.is_none()).then(KeyHasher::new),
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
        if self.next == self.count
            && let Some(helper) = self.helper.take()
            && helper.finish()? != self.key
        {
            return Err(self.damaged("content does not match its key"));
        }
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
