//! A store database kept in memory instead of a file: for tests, fuzzing and embedders that want
//! a scratch store. The image outlives the stores opened on it, so closing a store and opening
//! another on the same image is a reopen, as with a file.

use std::io;
use std::sync::Arc;

use redb::StorageBackend;
use redb::backends::InMemoryBackend;

/// The bytes of an in-memory store database. Clones share them.
#[derive(Debug, Clone, Default)]
pub struct MemoryImage(Arc<InMemoryBackend>);

impl MemoryImage {
    /// An empty image: the first store opened on it creates a database.
    pub fn new() -> Self {
        Self::default()
    }

    /// Size of the database image in bytes.
    pub fn len(&self) -> u64 {
        self.0.len().unwrap_or(0)
    }

    /// True while no store has been opened on the image.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn backend(&self) -> SharedMemory {
        SharedMemory(Arc::clone(&self.0))
    }
}

/// A redb backend over a shared [`MemoryImage`].
#[derive(Debug)]
pub(crate) struct SharedMemory(Arc<InMemoryBackend>);

impl StorageBackend for SharedMemory {
    fn len(&self) -> Result<u64, io::Error> {
        self.0.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.0.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.0.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.0.write(offset, data)
    }

    fn close(&self) -> Result<(), io::Error> {
        self.0.close()
    }
    // No range locks (the trait's default, Unsupported): redb then runs in ExclusiveWriter
    // mode, and one store at a time uses an image (its writer thread serialises commits).
}

#[cfg(test)]
mod tests {
    use super::MemoryImage;
    use crate::store::{DB_FILE, StoreOptions};
    use crate::{BlobId, BlobKey};

    #[test]
    fn a_store_reopened_on_the_same_image_keeps_its_blobs_and_writes_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let image = MemoryImage::new();
        let opts = || StoreOptions::new(dir.path()).in_memory(image.clone());
        let bytes = vec![7u8; 200_000];
        let key = opts().open().unwrap().put(&bytes).unwrap();
        assert_eq!(key, BlobKey::of(&bytes));
        assert!(image.len() > 200_000);

        let store = opts().open().unwrap();
        assert_eq!(store.get_bytes(&BlobId::Content(key)).unwrap(), Some(bytes));
        assert!(store.verify().unwrap().is_clean());
        assert_eq!(store.stats().unwrap().file_bytes, image.len());
        assert!(!dir.path().join(DB_FILE).exists());

        let other = StoreOptions::new(dir.path()).in_memory(MemoryImage::new());
        assert_eq!(
            other
                .open()
                .unwrap()
                .get_bytes(&BlobId::Content(key))
                .unwrap(),
            None
        );
    }
}
