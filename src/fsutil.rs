//! File-system helpers shared by the cache and the library-cache manager: a file written under a
//! temp name and renamed into place, and a directory fsync.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// An I/O failure and the path it happened on.
#[derive(Debug)]
pub(crate) struct PathError {
    pub(crate) path: PathBuf,
    pub(crate) source: io::Error,
}

/// A file written under a temp name beside its final one: [`commit`](Self::commit) fsyncs it,
/// renames it into place and fsyncs the directory; dropped before that, it is removed. So the
/// final name only ever names a complete file.
pub(crate) struct AtomicFile {
    tmp: PathBuf,
    dest: PathBuf,
    out: Option<BufWriter<File>>,
    written: u64,
}

impl AtomicFile {
    /// Creates `tmp`, which must not exist yet; `dest` must be in the same directory (a rename
    /// across file systems would fail).
    pub(crate) fn create(tmp: PathBuf, dest: PathBuf) -> Result<AtomicFile, PathError> {
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(f) => Ok(AtomicFile {
                tmp,
                dest,
                out: Some(BufWriter::with_capacity(256 * 1024, f)),
                written: 0,
            }),
            Err(source) => Err(PathError { path: tmp, source }),
        }
    }

    fn at_tmp(&self, source: io::Error) -> PathError {
        PathError {
            path: self.tmp.clone(),
            source,
        }
    }

    /// Appends `data`.
    pub(crate) fn write(&mut self, data: &[u8]) -> Result<(), PathError> {
        let r = match self.out.as_mut() {
            Some(w) => w.write_all(data),
            None => Err(io::Error::other("file already committed")),
        };
        r.map_err(|e| self.at_tmp(e))?;
        self.written += data.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub(crate) fn written(&self) -> u64 {
        self.written
    }

    /// Flushes, fsyncs, renames into place and fsyncs the directory; returns the length.
    pub(crate) fn commit(mut self) -> Result<u64, PathError> {
        let Some(w) = self.out.take() else {
            return Err(self.at_tmp(io::Error::other("file already committed")));
        };
        let f = w.into_inner().map_err(|e| self.at_tmp(e.into_error()))?;
        f.sync_all().map_err(|e| self.at_tmp(e))?;
        drop(f);
        fs::rename(&self.tmp, &self.dest).map_err(|source| PathError {
            path: self.dest.clone(),
            source,
        })?;
        // Renamed: nothing left for Drop to clean.
        self.tmp = PathBuf::new();
        if let Some(dir) = self.dest.parent() {
            sync_dir_or_warn(dir);
        }
        Ok(self.written)
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        self.out.take();
        if !self.tmp.as_os_str().is_empty()
            && let Err(e) = fs::remove_file(&self.tmp)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.tmp.display(), error = %e, "cannot remove temp file");
        }
    }
}

/// fsyncs a directory, so that a rename or unlink in it is durable (a no-op where unsupported).
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// [`sync_dir`] for callers that carry on either way: a failure is logged, not returned.
pub(crate) fn sync_dir_or_warn(dir: &Path) {
    if let Err(e) = sync_dir(dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot fsync directory");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_file_appears_only_on_commit() {
        let dir = tempfile::tempdir().unwrap();
        let (tmp, dest) = (dir.path().join("t"), dir.path().join("d"));
        let mut f = AtomicFile::create(tmp.clone(), dest.clone()).unwrap();
        f.write(b"ab").unwrap();
        drop(f);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        let mut f = AtomicFile::create(tmp.clone(), dest.clone()).unwrap();
        f.write(b"ab").unwrap();
        f.write(b"c").unwrap();
        assert_eq!(f.written(), 3);
        assert!(!dest.exists());
        assert_eq!(f.commit().unwrap(), 3);
        assert_eq!(fs::read(&dest).unwrap(), b"abc");
        assert!(!tmp.exists());
    }

    #[test]
    fn atomic_file_refuses_an_existing_temp_name() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("t");
        fs::write(&tmp, b"theirs").unwrap();
        let e = AtomicFile::create(tmp.clone(), dir.path().join("d"))
            .err()
            .unwrap();
        assert_eq!(e.path, tmp);
        assert_eq!(e.source.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&tmp).unwrap(), b"theirs");
    }
}
