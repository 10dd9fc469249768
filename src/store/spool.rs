//! Uploads are received and hashed here, before they reach the writer: small ones in memory,
//! large ones in a temp file that is memory-mapped for the insert.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::Mmap;

use super::StoreError;
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
    Mem(Vec<u8>),
    File { map: Mmap, _temp: TempFile },
    Empty,
}

impl Upload {
    pub(crate) fn new(spool_dir: &Path, mem_limit: usize) -> Upload {
        Upload {
            hasher: KeyHasher::new(),
            len: 0,
            mem: Vec::new(),
            file: None,
            spool_dir: spool_dir.to_path_buf(),
            mem_limit,
        }
    }

    /// Bytes received so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `data`. Fails once the blob would exceed 2 GiB − 1 (it could never be served).
    pub fn write(&mut self, data: &[u8]) -> Result<(), StoreError> {
        let new_len = self.len + data.len() as u64;
        if new_len > MAX_BLOB_LEN {
            return Err(StoreError::TooLarge(new_len));
        }
        self.hasher.update(data);
        self.len = new_len;
        if self.file.is_none() && self.mem.len() + data.len() <= self.mem_limit {
            self.mem.extend_from_slice(data);
            return Ok(());
        }
        if self.file.is_none() {
            let n = SPOOL_COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = self
                .spool_dir
                .join(format!("upload-{}-{n}", std::process::id()));
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| StoreError::Spool(path.clone(), e))?;
            let mut file = (f, TempFile { path });
            file.0
                .write_all(&self.mem)
                .map_err(|e| StoreError::Spool(file.1.path.clone(), e))?;
            self.mem = Vec::new();
            self.file = Some(file);
        }
        if let Some((f, t)) = self.file.as_mut() {
            f.write_all(data)
                .map_err(|e| StoreError::Spool(t.path.clone(), e))?;
        }
        Ok(())
    }

    /// Ends the upload: computes the key and maps the spool file, if any.
    pub fn finish(self) -> Result<Spooled, StoreError> {
        let key = self.hasher.finish();
        let data = match self.file {
            None if self.mem.is_empty() => SpooledData::Empty,
            None => SpooledData::Mem(self.mem),
            Some((f, t)) => {
                // SAFETY: the spool file is private to this upload (created with create_new,
                // never shared) and nothing writes it after this point.
                let map =
                    unsafe { Mmap::map(&f) }.map_err(|e| StoreError::Spool(t.path.clone(), e))?;
                SpooledData::File { map, _temp: t }
            }
        };
        Ok(Spooled {
            key,
            len: self.len,
            data,
        })
    }
}

impl Spooled {
    pub fn key(&self) -> BlobKey {
        self.key
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        match &self.data {
            SpooledData::Mem(v) => v,
            SpooledData::File { map, .. } => map,
            SpooledData::Empty => &[],
        }
    }
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
