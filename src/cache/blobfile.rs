//! [`BlobFile`]: a blob written into a cache-layout directory, checked against its key before it
//! takes its `blob_<hex>` name (used by the cache's downloads and by the library cache's copies
//! out of a store).

use std::path::Path;
use std::sync::Arc;

use super::dir::{blob_path, temp_path};
use super::error::CacheError;
use crate::fsutil::{AtomicFile, PathError};
use crate::key::{BlobKey, KeyHasher};

/// Why [`BlobFile::commit`] failed.
pub(crate) enum CommitError {
    /// The bytes written do not hash to the key (carries the actual key).
    Mismatch(BlobKey),
    /// Writing locally failed.
    Local(CacheError),
}

/// A blob being written: a `tmp-` file in the target directory, hashed as it is written, that
/// becomes `blob_<hex>` on [`commit`](Self::commit) and is removed if dropped before.
pub(crate) struct BlobFile {
    key: BlobKey,
    file: AtomicFile,
    hasher: KeyHasher,
}

impl BlobFile {
    /// Starts writing `key` into `dir`.
    pub(crate) fn create(dir: &Path, key: &BlobKey) -> Result<BlobFile, CacheError> {
        let file = AtomicFile::create(temp_path(dir, key), blob_path(dir, key))
            .map_err(|e| local(key, e))?;
        Ok(BlobFile {
            key: *key,
            file,
            hasher: KeyHasher::new(),
        })
    }

    /// Appends `data`.
    pub(crate) fn write(&mut self, data: &[u8]) -> Result<(), CacheError> {
        self.file.write(data).map_err(|e| local(&self.key, e))?;
        self.hasher.update(data);
        Ok(())
    }

    /// Bytes written so far.
    pub(crate) fn written(&self) -> u64 {
        self.file.written()
    }

    /// Checks the hash, then makes the file durable under its final name; returns the length.
    pub(crate) fn commit(self) -> Result<u64, CommitError> {
        let actual = self.hasher.finish();
        if actual != self.key {
            return Err(CommitError::Mismatch(actual));
        }
        let key = self.key;
        self.file
            .commit()
            .map_err(|e| CommitError::Local(local(&key, e)))
    }
}

fn local(key: &BlobKey, e: PathError) -> CacheError {
    CacheError::Local {
        key: *key,
        path: e.path,
        source: Arc::new(e.source),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn leaves_nothing_when_dropped_or_mismatched() {
        let dir = tempfile::tempdir().unwrap();
        let key = BlobKey::of(b"abc");
        let mut f = BlobFile::create(dir.path(), &key).unwrap();
        f.write(b"ab").unwrap();
        drop(f);
        let mut f = BlobFile::create(dir.path(), &key).unwrap();
        f.write(b"abd").unwrap();
        assert!(matches!(f.commit(), Err(CommitError::Mismatch(_))));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        let mut f = BlobFile::create(dir.path(), &key).unwrap();
        f.write(b"abc").unwrap();
        assert!(matches!(f.commit(), Ok(3)));
        assert_eq!(fs::read(blob_path(dir.path(), &key)).unwrap(), b"abc");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
