//! `--compare files` / `files-fsync`: an in-process file-per-blob server (Flink 0.10's layout)
//! to run the same phases against, so that blobvault's figures have a like-for-like reference.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::threaded::ThreadedServer;
use crate::key::{BlobId, BlobKey, JobId, KeyHasher};
use crate::protocol::{self, DeleteTarget, PutTarget};

/// Name prefix of the baseline server's threads (their CPU is the phase's server CPU).
pub(super) const SERVER_THREADS: &str = "bench-files";

/// A file-per-blob server to compare with (`--compare`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Baseline {
    /// Flink 0.10's layout as the original wrote it: temp file, write, rename, no fsync.
    Files,
    /// The same with fsync of the file and of its directory before the reply (durable).
    FilesFsync,
}

impl Baseline {
    pub(super) fn name(self) -> &'static str {
        match self {
            Baseline::Files => "files",
            Baseline::FilesFsync => "files-fsync",
        }
    }
}

/// The file-per-blob baseline over the same protocol: Flink 0.10's storage scheme. A thread per
/// connection (as the original); a PUT goes to `incoming/temp-N` (hashed on the way), is renamed
/// to `cache/blob_<hex>` (named: `job_<hex>/blob_<hex of name>`), with fsync of the file and the
/// directory when `fsync` is set; a GET sends the file.
pub(super) struct FileServer {
    server: ThreadedServer,
}

struct FileLayout {
    incoming: PathBuf,
    root: PathBuf,
    fsync: bool,
    temp: AtomicU64,
}

impl FileServer {
    pub(super) fn start(dir: &Path, fsync: bool) -> io::Result<FileServer> {
        let layout = Arc::new(FileLayout {
            incoming: dir.join("incoming"),
            root: dir.to_path_buf(),
            fsync,
            temp: AtomicU64::new(0),
        });
        std::fs::create_dir_all(&layout.incoming)?;
        std::fs::create_dir_all(dir.join("cache"))?;
        // Named, so that the bench counts this server's CPU and not the client's.
        let server = ThreadedServer::start(SERVER_THREADS, "file baseline", move |s| {
            let _ = s.set_nodelay(true);
            let _ = file_serve(&layout, s);
        })?;
        Ok(FileServer { server })
    }

    pub(super) fn addr(&self) -> SocketAddr {
        self.server.addr
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

impl FileLayout {
    fn content_path(&self, key: &BlobKey) -> PathBuf {
        self.root
            .join("cache")
            .join(format!("blob_{}", hex(&key.0)))
    }

    fn named_path(&self, job: &JobId, name: &str) -> PathBuf {
        self.root
            .join(format!("job_{}", hex(&job.0)))
            .join(format!("blob_{}", hex(name.as_bytes())))
    }

    fn path_of(&self, id: &BlobId) -> PathBuf {
        match id {
            BlobId::Content(k) => self.content_path(k),
            BlobId::Named(j, n) => self.named_path(j, n),
        }
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        if self.fsync {
            crate::fsutil::sync_dir(dir)?;
        }
        Ok(())
    }
}

/// One connection of the baseline server; any failure closes it.
fn file_serve(layout: &FileLayout, mut s: TcpStream) -> io::Result<()> {
    use crate::protocol::{Request, RequestDecoder, RequestEvent};
    let mut dec = RequestDecoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::with_capacity(64 * 1024);
    let mut upload: Option<(std::fs::File, PathBuf, KeyHasher, PutTarget)> = None;
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        let mut pos = 0;
        while pos < n {
            let (used, ev) = dec.decode(&buf[pos..n]).map_err(io::Error::other)?;
            pos += used;
            let Some(ev) = ev else { continue };
            let r: io::Result<()> = (|| {
                match ev {
                    RequestEvent::Request(Request::Put(target)) => {
                        let i = layout.temp.fetch_add(1, Ordering::Relaxed);
                        let tmp = layout.incoming.join(format!("temp-{i:08}"));
                        let f = std::fs::File::create(&tmp)?;
                        upload = Some((f, tmp, KeyHasher::new(), target));
                    }
                    RequestEvent::Chunk(d) => {
                        if let Some((f, _, h, _)) = upload.as_mut() {
                            h.update(d);
                            f.write_all(d)?;
                        }
                    }
                    RequestEvent::End => {
                        let (f, tmp, h, target) =
                            upload.take().ok_or_else(|| io::Error::other("no PUT"))?;
                        if layout.fsync {
                            f.sync_all()?;
                        }
                        drop(f);
                        let key = h.finish();
                        let dest = match &target {
                            PutTarget::Content => layout.content_path(&key),
                            PutTarget::Named(j, n) => layout.named_path(j, n),
                        };
                        let parent = dest.parent().map(Path::to_path_buf).unwrap_or_default();
                        std::fs::create_dir_all(&parent)?;
                        std::fs::rename(&tmp, &dest)?;
                        layout.sync_dir(&parent)?;
                        match target {
                            PutTarget::Content => protocol::encode_put_key(&key, &mut out),
                            PutTarget::Named(..) => protocol::encode_ok(&mut out),
                        }
                    }
                    RequestEvent::Request(Request::Get(id)) => {
                        let mut f = std::fs::File::open(layout.path_of(&id))?;
                        let len = f.metadata()?.len();
                        protocol::encode_get_header(len as u32, &mut out);
                        let start = out.len();
                        out.resize(start + len as usize, 0);
                        f.read_exact(&mut out[start..])?;
                    }
                    RequestEvent::Request(Request::Delete(target)) => {
                        let path = match &target {
                            DeleteTarget::Content(k) => layout.content_path(k),
                            DeleteTarget::Named(j, n) => layout.named_path(j, n),
                            DeleteTarget::Job(j) => layout.root.join(format!("job_{}", hex(&j.0))),
                        };
                        if matches!(target, DeleteTarget::Job(_)) {
                            let _ = std::fs::remove_dir_all(&path);
                        } else {
                            let _ = std::fs::remove_file(&path);
                        }
                        if let Some(parent) = path.parent() {
                            layout.sync_dir(parent)?;
                        }
                        protocol::encode_ok(&mut out);
                    }
                }
                Ok(())
            })();
            if let Err(e) = r {
                out.clear();
                protocol::encode_error(&e.to_string(), &mut out);
                s.write_all(&out)?;
                return Err(e);
            }
            if out.len() >= 256 * 1024 {
                s.write_all(&out)?;
                out.clear();
            }
        }
        if !out.is_empty() {
            s.write_all(&out)?;
            out.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadgen::run_with;
    use crate::loadgen::tests::args;

    #[test]
    fn the_file_baseline_serves_the_same_phases() {
        for b in [Baseline::Files, Baseline::FilesFsync] {
            for extra in [
                &["-n", "24", "-s", "5000"][..],
                &["-n", "24", "-s", "70000", "--named"][..],
            ] {
                let r = run_with(&args(extra), Some(b), false).expect("baseline run");
                assert_eq!(r.target, b.name());
                assert!(
                    r.phases.iter().all(|p| p.errors == 0 && p.ops == 24),
                    "{:?}",
                    r.phases
                );
            }
        }
    }
}
