//! Downloading one blob: attempts over the servers in turn, with backoff between rounds, each
//! attempt streaming into a [`BlobFile`].

use std::io::{self, Read};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::blobfile::{BlobFile, CommitError};
use super::error::CacheError;
use super::options::CacheOptions;
use super::stats::Counters;
use crate::client::BlobClient;
use crate::key::{BlobId, BlobKey};
use crate::store::RecoveryStore;

/// How an attempt failed.
enum AttemptError {
    /// The server or the transfer failed: try again, perhaps elsewhere.
    Remote(String),
    /// Storing locally failed: retrying a server would not help.
    Local(CacheError),
}

/// Downloads `key` into place, with retries across servers; returns its length. `preferred` is
/// the index of the server to try first, updated to the one that served.
pub(super) fn fetch(
    opts: &CacheOptions,
    preferred: &AtomicUsize,
    counters: &Counters,
    key: &BlobKey,
) -> Result<u64, CacheError> {
    let servers = &opts.servers;
    let n = servers.len();
    let first = preferred.load(Ordering::Relaxed) % n;
    let total = opts.retries.saturating_add(1);
    let mut last = String::new();
    for attempt in 0..total {
        let round = attempt as usize / n;
        if attempt > 0 && (attempt as usize).is_multiple_of(n) {
            let pause = backoff(opts.backoff, opts.max_backoff, round);
            tracing::debug!(key = %key, ?pause, "every server failed; backing off");
            std::thread::sleep(pause);
        }
        let idx = (first + attempt as usize) % n;
        let addr = servers[idx];
        Counters::bump(&counters.attempts);
        match attempt_once(opts, key, addr) {
            Ok(len) => {
                preferred.store(idx, Ordering::Relaxed);
                Counters::bump(&counters.downloads);
                counters.downloaded_bytes.fetch_add(len, Ordering::Relaxed);
                tracing::debug!(key = %key, %addr, len, attempt, "BLOB downloaded");
                return Ok(len);
            }
            Err(AttemptError::Remote(msg)) => {
                Counters::bump(&counters.failed_attempts);
                tracing::warn!(
                    key = %key,
                    %addr,
                    attempt = attempt + 1,
                    of = total,
                    error = %msg,
                    "BLOB download attempt failed"
                );
                last = format!("{addr}: {msg}");
            }
            Err(AttemptError::Local(e)) => {
                Counters::bump(&counters.failed_attempts);
                tracing::error!(key = %key, error = %e, "cannot store downloaded BLOB");
                return Err(e);
            }
        }
    }
    if let Some(rec) = &opts.recovery {
        match from_recovery(opts, rec.as_ref(), key) {
            Ok(len) => {
                Counters::bump(&counters.downloads);
                counters.downloaded_bytes.fetch_add(len, Ordering::Relaxed);
                tracing::warn!(key = %key, len, "no server answered; BLOB read from the recovery store");
                return Ok(len);
            }
            Err(AttemptError::Local(e)) => return Err(e),
            Err(AttemptError::Remote(msg)) => {
                tracing::warn!(key = %key, error = %msg, "recovery store fallback failed");
                last = format!("{last}; then the recovery store: {msg}");
            }
        }
    }
    Err(CacheError::Fetch {
        key: *key,
        servers: servers
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        attempts: total,
        last,
    })
}

/// One attempt: a new connection, a GET, the body into a temp file, then the rename.
fn attempt_once(opts: &CacheOptions, key: &BlobKey, addr: SocketAddr) -> Result<u64, AttemptError> {
    let remote = |e: &dyn std::fmt::Display| AttemptError::Remote(e.to_string());
    let mut client = BlobClient::connect_timeout(&addr, opts.timeout).map_err(|e| remote(&e))?;
    let mut dl = client.get(*key).map_err(|e| remote(&e))?;
    let len = dl.len();
    let mut file = BlobFile::create(&opts.dir, key).map_err(AttemptError::Local)?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match dl.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(remote(&dl.error_of(e))),
        };
        file.write(&buf[..n]).map_err(AttemptError::Local)?;
    }
    drop(dl);
    if file.written() != len {
        return Err(AttemptError::Remote(format!(
            "received {} of {len} bytes",
            file.written()
        )));
    }
    file.commit().map_err(|e| match e {
        CommitError::Mismatch(actual) => AttemptError::Remote(format!(
            "Detected data corruption during transfer (got {actual})"
        )),
        CommitError::Local(e) => AttemptError::Local(e),
    })
}

/// The fallback when no server answers: the blob from the recovery store, streamed into place
/// and checked against its key as a download is.
fn from_recovery(
    opts: &CacheOptions,
    rec: &dyn RecoveryStore,
    key: &BlobKey,
) -> Result<u64, AttemptError> {
    let remote = |e: &dyn std::fmt::Display| AttemptError::Remote(e.to_string());
    let mut reader = rec
        .get(&BlobId::Content(*key))
        .map_err(|e| remote(&e))?
        .ok_or_else(|| AttemptError::Remote("not there either".into()))?;
    let mut file = BlobFile::create(&opts.dir, key).map_err(AttemptError::Local)?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(remote(&e)),
        };
        file.write(&buf[..n]).map_err(AttemptError::Local)?;
    }
    let len = file.written();
    file.commit().map_err(|e| match e {
        CommitError::Mismatch(actual) => AttemptError::Remote(format!(
            "the recovery store's copy is damaged (it hashes to {actual})"
        )),
        CommitError::Local(e) => AttemptError::Local(e),
    })?;
    Ok(len)
}

/// `base * 2^(round-1)`, capped, with half of it randomised.
fn backoff(base: Duration, max: Duration, round: usize) -> Duration {
    let shift = round.saturating_sub(1).min(20) as u32;
    let d = base.saturating_mul(1u32 << shift).min(max);
    let half = d / 2;
    let jitter_ns = half.as_nanos() as u64;
    let jitter = if jitter_ns == 0 {
        0
    } else {
        crate::key::random_u64() % (jitter_ns + 1)
    };
    half + Duration::from_nanos(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let b = Duration::from_millis(100);
        let m = Duration::from_millis(300);
        for _ in 0..50 {
            let d1 = backoff(b, m, 1);
            assert!(d1 >= Duration::from_millis(50) && d1 <= b, "{d1:?}");
            let d2 = backoff(b, m, 2);
            assert!(d2 >= Duration::from_millis(100) && d2 <= 2 * b, "{d2:?}");
            let d9 = backoff(b, m, 9);
            assert!(d9 >= Duration::from_millis(150) && d9 <= m, "{d9:?}");
        }
        assert_eq!(backoff(Duration::ZERO, m, 3), Duration::ZERO);
    }
}
