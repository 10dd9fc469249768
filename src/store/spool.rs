//! Uploads are received and hashed here, before they reach the writer: small ones in memory,
//! large ones in a temp file. The writer reads a spooled file back chunk by chunk straight into
//! the database's pages ([`Spooled::read_at`]); it is not memory-mapped, because mapped pages
//! count towards the server's resident memory (a 256 MiB upload would add 256 MiB).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::StoreError;
use super::space::Space;
use crate::key::{BlobKey, KeyHasher};
use crate::protocol::MAX_BLOB_LEN;

static SPOOL_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A temp file removed when dropped.
#[derive(Debug)]
struct TempFile {
    path: PathBuf,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Bytes of uploads held in memory by every upload of a store together. Past its total an upload
/// spools to a file, however small: many connections each sending an upload must not add up to
/// unbounded memory.
#[derive(Debug, Clone)]
pub(crate) struct MemoryBudget {
    used: Arc<AtomicU64>,
    total: u64,
}

impl MemoryBudget {
    pub(crate) fn new(total: usize) -> Self {
        MemoryBudget {
            used: Arc::new(AtomicU64::new(0)),
            total: total as u64,
        }
    }

    /// Bytes held in memory by uploads now.
    #[cfg(test)]
    pub(crate) fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes `n` bytes of the budget, or nothing if they do not fit.
    fn take(&self, n: u64) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                u.checked_add(n).filter(|&t| t <= self.total)
            })
            .is_ok()
    }
}

/// The share of a [`MemoryBudget`] one upload holds; given back when dropped.
#[derive(Debug)]
struct Charge {
    budget: MemoryBudget,
    bytes: u64,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// A blob being received. Feed it with [`Upload::write`], then hand it to
/// [`BlobStore::commit`](super::BlobStore::commit) or one of the `finish_*` helpers.
#[derive(Debug)]
pub struct Upload {
    hasher: KeyHasher,
    len: u64,
    mem: Vec<u8>,
    file: Option<(File, TempFile)>,
    spool_dir: PathBuf,
    mem_limit: usize,
    charge: Charge,
    /// The store's reserve: no spool file while the disk is full.
    space: Option<Arc<Space>>,
    /// A write failed and its spool file is gone: the upload cannot be finished.
    broken: bool,
}

/// A received blob: its key, length and bytes, ready for the writer.
#[derive(Debug)]
pub struct Spooled {
    pub(crate) key: BlobKey,
    pub(crate) len: u64,
    data: SpooledData,
}

#[derive(Debug)]
enum SpooledData {
    /// The bytes, and the memory budget they hold until the blob is dropped.
    #[allow(dead_code)] // the charge is held for its Drop
    Mem(Vec<u8>, Charge),
    File {
        file: File,
        temp: TempFile,
    },
    Empty,
}

impl Upload {
    pub(crate) fn new(
        spool_dir: &Path,
        mem_limit: usize,
        budget: &MemoryBudget,
        space: Option<Arc<Space>>,
    ) -> Upload {
        Upload {
            hasher: KeyHasher::new(),
            len: 0,
            mem: Vec::new(),
            file: None,
            spool_dir: spool_dir.to_path_buf(),
            mem_limit,
            charge: Charge {
                budget: budget.clone(),
                bytes: 0,
            },
            space,
            broken: false,
        }
    }

    fn broken_error(&self) -> StoreError {
        StoreError::Spool(
            self.spool_dir.clone(),
            std::io::Error::other("an earlier write of this upload failed"),
        )
    }

    /// A spool failure; a full disk gets the store's no-space error.
    fn spool_error(&self, path: &Path, e: std::io::Error) -> StoreError {
        match &self.space {
            Some(space) if super::space::is_full(&e) => {
                space.spool_failed(path, &e);
                space.no_space(format!(
                    "cannot spool the upload to {}: {e}",
                    path.display()
                ))
            }
            _ => StoreError::Spool(path.to_path_buf(), e),
        }
    }

    /// Bytes received so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True while no byte has been received.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `data`. Fails once the blob would exceed 2 GiB − 1 (it could never be served).
    pub fn write(&mut self, data: &[u8]) -> Result<(), StoreError> {
        if self.broken {
            return Err(self.broken_error());
        }
        let new_len = self.len + data.len() as u64;
        if new_len > MAX_BLOB_LEN {
            return Err(StoreError::TooLarge(new_len));
        }
        // The hash and length count `data` only once it is stored: a refused write leaves the
        // upload as it was.
        if self.file.is_none()
            && self.mem.len() + data.len() <= self.mem_limit
            && self.charge.budget.take(data.len() as u64)
        {
            self.charge.bytes += data.len() as u64;
            self.hasher.update(data);
            self.len = new_len;
            self.mem.extend_from_slice(data);
            return Ok(());
        }
        if self.file.is_none() {
            // A spool file would take the room kept for DELETEs, unless space has returned.
            if let Some(space) = self.space.as_ref().filter(|s| !s.try_restore()) {
                return Err(space.no_space(format!(
                    "uploads over {} bytes are refused while the disk is full",
                    self.mem_limit
                )));
            }
            let n = SPOOL_COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = self
                .spool_dir
                .join(format!("upload-{}-{n}", std::process::id()));
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| self.spool_error(&path, e))?;
            let mut file = (f, TempFile { path });
            if let Err(e) = file.0.write_all(&self.mem) {
                return Err(self.spool_error(&file.1.path, e));
            }
            self.mem = Vec::new();
            self.charge
                .budget
                .used
                .fetch_sub(self.charge.bytes, Ordering::Relaxed);
            self.charge.bytes = 0;
            self.file = Some(file);
        }
        if let Some((f, t)) = self.file.as_mut()
            && let Err(e) = f.write_all(data)
        {
            let path = t.path.clone();
            // The partial spool file goes at once: a full disk needs its space back.
            self.file = None;
            self.broken = true;
            return Err(self.spool_error(&path, e));
        }
        self.hasher.update(data);
        self.len = new_len;
        Ok(())
    }

    /// Ends the upload: computes the key.
    pub fn finish(self) -> Result<Spooled, StoreError> {
        if self.broken {
            return Err(self.broken_error());
        }
        let key = self.hasher.finish();
        let data = match self.file {
            None if self.mem.is_empty() => SpooledData::Empty,
            None => SpooledData::Mem(self.mem, self.charge),
            Some((file, temp)) => SpooledData::File { file, temp },
        };
        Ok(Spooled {
            key,
            len: self.len,
            data,
        })
    }
}

impl Spooled {
    /// The blob's content key (SHA-1 of its bytes).
    pub fn key(&self) -> BlobKey {
        self.key
    }

    /// The blob's length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for an empty blob.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Fills `buf` with the bytes at `offset` (the caller stays within the blob's length).
    pub(crate) fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        match &self.data {
            SpooledData::Mem(v, _) => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX);
                let src = start
                    .checked_add(buf.len())
                    .and_then(|end| v.get(start..end))
                    .ok_or_else(|| StoreError::Storage("read past the end of an upload".into()))?;
                buf.copy_from_slice(src);
                Ok(())
            }
            SpooledData::File { file, temp } => read_exact_at(file, buf, offset)
                .map_err(|e| StoreError::Spool(temp.path.clone(), e)),
            SpooledData::Empty if buf.is_empty() => Ok(()),
            SpooledData::Empty => Err(StoreError::Storage("read past the end of an upload".into())),
        }
    }
}

/// What the recovery store reads a blob to replicate through: piece by piece, never all of it in
/// memory (a spool file is read back, not mapped: mapped pages would count as resident memory).
impl super::replica::BlobBytes for Spooled {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        Spooled::read_at(self, offset, buf).map_err(|e| match e {
            StoreError::Spool(path, io) => {
                std::io::Error::new(io.kind(), format!("spool file {}: {io}", path.display()))
            }
            other => std::io::Error::other(other.to_string()),
        })
    }
}

#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(windows)]
fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_read(buf, offset) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Removes spool files left by an earlier process (after a crash) from `dir`.
pub(crate) fn clean_spool_dir(dir: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with("upload-") {
            let _ = fs::remove_file(entry.path());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_past_the_memory_budget_spool_to_files_and_give_it_back_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let budget = MemoryBudget::new(10);
        let mut a = Upload::new(dir.path(), 1024, &budget, None);
        a.write(b"12345678").unwrap();
        assert_eq!(budget.used(), 8);
        assert!(a.file.is_none());
        // Within its own limit, but past the budget all uploads share: to a file.
        let mut b = Upload::new(dir.path(), 1024, &budget, None);
        b.write(b"abcdefgh").unwrap();
        assert!(b.file.is_some());
        assert_eq!(budget.used(), 8);
        // An upload that moves to a file gives its memory back at once.
        a.write(&[0u8; 2000]).unwrap();
        assert!(a.file.is_some());
        assert_eq!(budget.used(), 0);
        let mut c = Upload::new(dir.path(), 1024, &budget, None);
        c.write(b"xyz").unwrap();
        let spooled = c.finish().unwrap();
        assert_eq!(budget.used(), 3, "held while the blob waits for the writer");
        let mut back = [0u8; 3];
        spooled.read_at(0, &mut back).unwrap();
        assert_eq!(&back, b"xyz");
        drop(spooled);
        drop(b);
        assert_eq!(budget.used(), 0);
    }
}
