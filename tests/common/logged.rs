//! `blobvault serve` as a child process with its log in a file, and waiting on that log: the
//! tests that check what the server says about a peer.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use blobvault::BlobClient;

use super::ServeProcess;

/// `blobvault serve` with its log in a file, over a store in a temp dir. Field order: the
/// server stops before the dir goes.
pub struct Server {
    pub proc: ServeProcess,
    pub addr: SocketAddr,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    pub fn spawn(args: &[&str]) -> Server {
        Self::spawn_env(args, &[])
    }

    /// Like [`spawn`](Self::spawn), with `env` set for the server process.
    pub fn spawn_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("server.log");
        let store = dir.path().join("store");
        let mut all = vec!["--dir", store.to_str().expect("utf-8 temp path")];
        all.extend_from_slice(args);
        let proc = ServeProcess::spawn_logging_env(&all, &log, env);
        Server {
            addr: proc.addr,
            proc,
            log,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    pub fn count(&self, what: &str) -> usize {
        std::fs::read_dir(format!("/proc/{}/{what}", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    pub fn threads(&self) -> usize {
        self.count("task")
    }

    pub fn fds(&self) -> usize {
        self.count("fd")
    }

    pub fn log_text(&self) -> String {
        // The log may hold bytes of peers' input in error messages, and colour codes.
        let text =
            String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned();
        strip_ansi(&text)
    }

    /// Waits (bounded) until the log has a line containing every one of `parts`.
    pub fn wait_for_log(&self, parts: &[&str], within: Duration) -> String {
        wait_until(within, || {
            self.log_text()
                .lines()
                .find(|l| parts.iter().all(|p| l.contains(p)))
                .map(str::to_owned)
        })
        .unwrap_or_else(|| panic!("no log line with {parts:?}:\n{}", self.log_text()))
    }

    pub fn client(&self) -> BlobClient {
        BlobClient::connect_timeout(&self.addr, Duration::from_secs(30)).expect("connect")
    }
}

/// `text` without ANSI colour sequences (ESC [ … m).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Polls `f` every 20 ms until it yields something or `within` passes.
pub fn wait_until<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
