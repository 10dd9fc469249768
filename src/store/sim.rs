//! A simulated disk for power-loss tests, in the way redb tests itself
//! (`tests/crash_consistency.rs` there): the database file, the write-ahead log and the store
//! directory's entries live in memory, and only what a finished sync made durable survives a
//! simulated power cut, plus, as a real disk may reorder, a random subset of the writes issued
//! since (in 4 KiB pieces).
//!
//! Test support, not a stable interface: public (and hidden from the docs) only because the
//! integration tests and the fuzz target are other crates.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use redb::StorageBackend;

use super::logfile::LogFile;

const DB: usize = 0;
const LOG: usize = 1;
/// The unit in which unsynced writes survive a power cut or not.
const PIECE: u64 = 4096;

/// A simulated store directory (database, log, directory entries). Clones share it.
#[doc(hidden)]
#[derive(Debug, Clone, Default)]
pub struct SimDisk(Arc<Mutex<Disk>>);

#[derive(Debug, Default)]
struct Disk {
    files: [SimFile; 2],
    /// Syncs finished so far (files and directory).
    syncs: u64,
    /// The sync after which the power goes.
    cut_after: Option<u64>,
    cut: bool,
    /// Seed of the choice of unsynced writes that survive; 0: none does.
    seed: u64,
}

#[derive(Debug, Clone, Default)]
struct SimFile {
    /// What the running process sees.
    live: Vec<u8>,
    /// What the last sync of the file left on the disk.
    durable: Vec<u8>,
    /// Writes since that sync, in order.
    pending: Vec<(u64, Vec<u8>)>,
    /// The file exists (for the process), and its name is durable (the directory was synced
    /// since it was created).
    exists: bool,
    named: bool,
}

impl SimDisk {
    /// An empty disk; `seed` chooses which unsynced writes survive a power cut (0: none).
    pub fn new(seed: u64) -> SimDisk {
        let disk = SimDisk::default();
        disk.lock().seed = seed;
        disk
    }

    fn lock(&self) -> MutexGuard<'_, Disk> {
        // A panic elsewhere poisons nothing that matters here: the data is plain bytes.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Cuts the power right after the `k`-th sync finishes (counting from the disk's creation):
    /// what that sync made durable stays; every later write, resize and sync fails.
    pub fn cut_power_after_sync(&self, k: u64) {
        self.lock().cut_after = Some(k);
    }

    /// Syncs finished so far.
    pub fn syncs(&self) -> u64 {
        self.lock().syncs
    }

    /// Whether the power was cut.
    pub fn power_cut(&self) -> bool {
        self.lock().cut
    }

    /// The disk as the machine finds it after the power comes back: the durable bytes of every
    /// file whose name was durable, with a random subset of the pieces written since its last
    /// sync.
    pub fn after_power_cut(&self) -> SimDisk {
        let d = self.lock();
        let mut rng = d.seed;
        let mut next = || {
            // xorshift64
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let files = d.files.clone().map(|f| {
            if !f.named {
                return SimFile::default();
            }
            let mut image = f.durable;
            for (offset, data) in &f.pending {
                let mut at = *offset;
                let end = offset + data.len() as u64;
                while at < end {
                    let piece_end = ((at / PIECE + 1) * PIECE).min(end);
                    if d.seed != 0 && next() % 2 == 0 {
                        let from = (at - offset) as usize..(piece_end - offset) as usize;
                        write_into(&mut image, at, &data[from]);
                    }
                    at = piece_end;
                }
            }
            SimFile {
                live: image.clone(),
                durable: image,
                pending: Vec::new(),
                exists: true,
                named: true,
            }
        });
        SimDisk(Arc::new(Mutex::new(Disk {
            files,
            syncs: 0,
            cut_after: None,
            cut: false,
            // Another power cut on this disk keeps unsynced writes if this one did.
            seed: match d.seed {
                0 => 0,
                s => s.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
            },
        })))
    }

    /// Length of the database file.
    pub fn db_len(&self) -> u64 {
        self.lock().files[DB].live.len() as u64
    }

    /// The database file, created if missing.
    pub(crate) fn db_backend(&self) -> SimHandle {
        self.handle(DB)
    }

    /// The log file, created if missing.
    pub(crate) fn log_file(&self) -> SimHandle {
        self.handle(LOG)
    }

    fn handle(&self, file: usize) -> SimHandle {
        self.lock().files[file].exists = true;
        SimHandle {
            disk: self.clone(),
            file,
        }
    }

    /// fsync of the store directory: the names of the files created so far become durable.
    pub(crate) fn sync_dir(&self) -> io::Result<()> {
        self.sync_with(|d| {
            for f in &mut d.files {
                f.named |= f.exists;
            }
        })
    }

    fn sync_with(&self, make_durable: impl FnOnce(&mut Disk)) -> io::Result<()> {
        let mut d = self.lock();
        d.check()?;
        make_durable(&mut d);
        d.syncs += 1;
        if d.cut_after == Some(d.syncs) {
            d.cut = true;
        }
        Ok(())
    }
}

impl Disk {
    fn check(&self) -> io::Result<()> {
        match self.cut {
            true => Err(io::Error::other("simulated power loss")),
            false => Ok(()),
        }
    }
}

fn write_into(image: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let end = offset as usize + data.len();
    if image.len() < end {
        image.resize(end, 0);
    }
    image[offset as usize..end].copy_from_slice(data);
}

/// One file of a [`SimDisk`]: a redb backend for the database, a [`LogFile`] for the log.
#[derive(Debug)]
pub(crate) struct SimHandle {
    disk: SimDisk,
    file: usize,
}

impl SimHandle {
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut d = self.disk.lock();
        d.check()?;
        let f = &mut d.files[self.file];
        write_into(&mut f.live, offset, data);
        f.pending.push((offset, data.to_vec()));
        Ok(())
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> usize {
        let d = self.disk.lock();
        let live = &d.files[self.file].live;
        let start = (offset as usize).min(live.len());
        let n = out.len().min(live.len() - start);
        out[..n].copy_from_slice(&live[start..start + n]);
        n
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut d = self.disk.lock();
        d.check()?;
        let f = &mut d.files[self.file];
        let old = f.live.len() as u64;
        f.live.resize(len as usize, 0);
        // A longer file reads zeros; a shorter one loses its end. Either is a write of the
        // range that changed, as far as what survives is concerned.
        if len > old {
            f.pending.push((old, vec![0; (len - old) as usize]));
        } else {
            // Truncation is not reordered here: only growth is uncertain until synced.
            f.durable.truncate(len as usize);
            for (offset, data) in &mut f.pending {
                data.truncate(len.saturating_sub(*offset) as usize);
            }
        }
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        let file = self.file;
        self.disk.sync_with(|d| {
            // The writes since the last sync, not a copy of the whole file: syncs are many.
            let f = &mut d.files[file];
            for (offset, data) in f.pending.drain(..) {
                write_into(&mut f.durable, offset, &data);
            }
            f.durable.resize(f.live.len(), 0);
        })
    }
}

impl StorageBackend for SimHandle {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(self.disk.lock().files[self.file].live.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        match SimHandle::read(self, offset, out) == out.len() {
            true => Ok(()),
            false => Err(io::ErrorKind::UnexpectedEof.into()),
        }
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        SimHandle::set_len(self, len)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.sync()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        SimHandle::write(self, offset, data)
    }

    fn close(&self) -> Result<(), io::Error> {
        Ok(())
    }
}

impl LogFile for SimHandle {
    fn len(&self) -> io::Result<u64> {
        Ok(self.disk.lock().files[self.file].live.len() as u64)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        Ok(self.read(offset, buf))
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.write(offset, buf)
    }

    fn sync_all(&self) -> io::Result<()> {
        self.sync()
    }

    fn sync_data(&self) -> io::Result<()> {
        self.sync()
    }
}
