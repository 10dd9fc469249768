//! The cache directory: its file names, its lock, and the scan that takes over what an earlier
//! cache left there (see the module docs of [`cache`](super) for the layout).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use super::error::CacheError;
use super::holds::Holds;
use crate::key::{BlobKey, KeyHasher};

/// Prefix of a complete blob file.
pub const BLOB_PREFIX: &str = "blob_";
/// Prefix of a download in progress.
pub const TEMP_PREFIX: &str = "tmp-";
const LOCK_FILE: &str = ".lock";

/// The file of a complete blob.
pub(crate) fn blob_path(dir: &Path, key: &BlobKey) -> PathBuf {
    dir.join(format!("{BLOB_PREFIX}{key}"))
}

/// A fresh temp name for a download of `key`: unique per process (pid) and per download.
pub(super) fn temp_path(dir: &Path, key: &BlobKey) -> PathBuf {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    dir.join(format!(
        "{TEMP_PREFIX}{key}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Creates the directory if needed and takes its lock, held as long as the returned file is open.
pub(super) fn lock_dir(dir: &Path) -> Result<File, CacheError> {
    fs::create_dir_all(dir).map_err(|e| CacheError::dir(dir, e))?;
    let lock_file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(LOCK_FILE))
        .map_err(|e| CacheError::dir(dir, e))?;
    match lock_file.try_lock() {
        Ok(()) => Ok(lock_file),
        Err(fs::TryLockError::WouldBlock) => Err(CacheError::Locked(dir.to_path_buf())),
        Err(fs::TryLockError::Error(e)) => Err(CacheError::dir(dir, e)),
    }
}

/// Removes the `tmp-` files in `dir` (downloads cut short by a crash).
fn clean_temp_files(dir: &Path) -> Result<(), CacheError> {
    for ent in fs::read_dir(dir).map_err(|e| CacheError::dir(dir, e))? {
        let ent = ent.map_err(|e| CacheError::dir(dir, e))?;
        let name = ent.file_name();
        if name.to_str().is_some_and(|n| n.starts_with(TEMP_PREFIX)) {
            let p = ent.path();
            match fs::remove_file(&p) {
                Ok(()) => tracing::info!(path = %p.display(), "removed leftover temp file"),
                Err(e) => {
                    tracing::warn!(path = %p.display(), error = %e, "cannot remove temp file")
                }
            }
        }
    }
    Ok(())
}

/// Removes leftover temp files, then lists the blob files (re-hashed first if `verify`, and
/// removed if they do not match their name), oldest modification first as the use order.
pub(super) fn scan(dir: &Path, verify: bool) -> Result<Holds, CacheError> {
    clean_temp_files(dir)?;
    let mut found: Vec<(SystemTime, BlobKey, u64)> = Vec::new();
    for ent in fs::read_dir(dir).map_err(|e| CacheError::dir(dir, e))? {
        let ent = ent.map_err(|e| CacheError::dir(dir, e))?;
        let name = ent.file_name();
        let Some(hex) = name.to_str().and_then(|n| n.strip_prefix(BLOB_PREFIX)) else {
            continue;
        };
        let path = ent.path();
        let Ok(key) = hex.parse::<BlobKey>() else {
            tracing::warn!(path = %path.display(), "ignoring a file that is not named by a BLOB key");
            continue;
        };
        let meta = match ent.metadata() {
            Ok(m) if m.is_file() => m,
            Ok(_) => continue,
            Err(e) => return Err(CacheError::dir(dir, e)),
        };
        if verify {
            match hash_file(&path) {
                Ok(actual) if actual == key => {}
                Ok(actual) => {
                    tracing::warn!(
                        path = %path.display(),
                        %actual,
                        "cached BLOB does not match its key; removing it"
                    );
                    if let Err(e) = fs::remove_file(&path) {
                        return Err(CacheError::Delete {
                            path,
                            source: Arc::new(e),
                        });
                    }
                    continue;
                }
                Err(e) => return Err(CacheError::dir(&path, e)),
            }
        }
        let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        found.push((mtime, key, meta.len()));
    }
    found.sort();
    let mut holds = Holds::default();
    for (_, key, len) in found {
        holds.insert(key, len);
    }
    Ok(holds)
}

fn hash_file(path: &Path) -> io::Result<BlobKey> {
    let mut f = File::open(path)?;
    let mut h = KeyHasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match f.read(&mut buf) {
            Ok(0) => return Ok(h.finish()),
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}
