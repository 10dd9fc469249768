//! The write-ahead log's file I/O, behind a small trait so that a test can substitute storage
//! that keeps only what each sync made durable (`sim.rs`); a store on disk uses a plain `File`.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Positional I/O on the log file: all the log needs of it.
pub(crate) trait LogFile: Send + Sync + std::fmt::Debug {
    /// The file's length.
    fn len(&self) -> io::Result<u64>;
    /// Reads up to `buf.len()` bytes at `offset`; fewer only at the end of the file.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes the data and the length durable.
    fn sync_all(&self) -> io::Result<()>;
    /// Makes the data durable (and the length, where reading the data back needs it).
    fn sync_data(&self) -> io::Result<()>;
    /// A hint to start writing `len` bytes at `offset` back to the disk; durability still
    /// waits for a sync.
    fn start_writeback(&self, _offset: u64, _len: usize) {}
}

impl LogFile for File {
    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        // A full buffer unless the file ends: `read_at` may return less at any time.
        let mut done = 0;
        while done < buf.len() {
            match FileExt::read_at(self, &mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(self, buf, offset)
    }

    fn sync_all(&self) -> io::Result<()> {
        File::sync_all(self)
    }

    fn sync_data(&self) -> io::Result<()> {
        File::sync_data(self)
    }

    /// `sync_file_range` on Linux with glibc (where the `libc` crate is a dependency); elsewhere
    /// the fsync does it all.
    fn start_writeback(&self, offset: u64, len: usize) {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: a plain syscall on an open descriptor; it reads no memory of ours.
            unsafe {
                libc::sync_file_range(
                    self.as_raw_fd(),
                    offset as libc::off64_t,
                    len as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
        }
        #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
        let _ = (offset, len);
    }
}
