//! [`CacheError`], the cache's one error type.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::key::BlobKey;

/// Errors of the [`BlobCache`](super::BlobCache). Cloneable, so that every caller waiting on one
/// shared download gets its outcome.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CacheError {
    /// [`CacheOptions::servers`](super::CacheOptions::servers) is empty.
    #[error("no BLOB server address configured")]
    NoServers,
    /// The cache directory cannot be created, locked or read.
    #[error("cannot use cache directory {path}: {source}")]
    Dir {
        /// The directory (or the file in it that failed).
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: Arc<io::Error>,
    },
    /// Another cache, in this or another process, has the directory open.
    #[error("cache directory {0} is in use by another BlobCache")]
    Locked(PathBuf),
    /// Every attempt to download the blob failed.
    #[error("Failed to fetch BLOB {key} from {servers} after {attempts} attempt(s): {last}")]
    Fetch {
        /// The blob.
        key: BlobKey,
        /// The servers tried, comma-separated.
        servers: String,
        /// Attempts made, over all servers.
        attempts: u32,
        /// The last attempt's failure.
        last: String,
    },
    /// A download could not be written into the cache directory (retrying would not help).
    #[error("cannot store BLOB {key} under {path}: {source}")]
    Local {
        /// The blob.
        key: BlobKey,
        /// The file that failed (the temp file, or the final name for the rename).
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: Arc<io::Error>,
    },
    /// A cached file could not be removed.
    #[error("cannot delete BLOB file {path}: {source}")]
    Delete {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: Arc<io::Error>,
    },
    /// A cached file could not be opened or memory-mapped.
    #[error("cannot map BLOB file {path}: {source}")]
    Map {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: Arc<io::Error>,
    },
    /// The thread downloading the blob for this request panicked.
    #[error("the download of BLOB {0} was abandoned (the downloading thread panicked)")]
    Abandoned(BlobKey),
}

impl CacheError {
    pub(super) fn dir(path: &Path, e: io::Error) -> Self {
        CacheError::Dir {
            path: path.to_path_buf(),
            source: Arc::new(e),
        }
    }
}
