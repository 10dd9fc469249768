//! `--raw-tcp`: the same bytes over plain loopback TCP, with no protocol and no store — the
//! ceiling of this machine's network stack, measured in the same run as the phases.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Instant;

use super::conn::CLIENT_BUF;
use super::{PhaseReport, Progress, Rng, timed};

/// Plain TCP over loopback, the same bytes and connections: upload (client writes, server
/// reads) and download (server writes, client reads), each as a phase.
pub(super) fn raw_tcp(
    total: u64,
    conns: usize,
    progress: &Progress,
) -> io::Result<Vec<PhaseReport>> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let done = Arc::new(AtomicBool::new(false));
    let d2 = Arc::clone(&done);
    let acceptor = std::thread::spawn(move || {
        for s in listener.incoming() {
            if d2.load(Ordering::SeqCst) {
                break;
            }
            if let Ok(s) = s {
                std::thread::spawn(move || {
                    let _ = raw_serve(s);
                });
            }
        }
    });
    let per_conn = total.div_ceil(conns as u64).max(1);
    let mut out = Vec::new();
    for (name, up) in [("raw-up", true), ("raw-down", false)] {
        let jobs: Vec<_> = (0..conns)
            .map(|_| {
                move |start: &Barrier| {
                    let stream = TcpStream::connect(addr).and_then(|st| {
                        st.set_nodelay(true)?;
                        Ok(st)
                    });
                    start.wait();
                    let t = Instant::now();
                    stream
                        .and_then(|st| raw_client(st, per_conn, up, progress))
                        .map(|_| t.elapsed().as_nanos() as u64)
                }
            })
            .collect();
        let (results, seconds) = timed(name, conns as u64, progress, jobs);
        let mut lat: Vec<u64> = results
            .iter()
            .filter_map(|r| r.as_ref().ok().copied())
            .collect();
        lat.sort_unstable();
        let errors = results.iter().filter(|r| r.is_err()).count() as u64;
        let first_error = results
            .iter()
            .find_map(|r| r.as_ref().err().map(|e| format!("{name}: {e}")));
        let max = lat.last().copied().unwrap_or(0) as f64 / 1e3;
        let mid = lat.get(lat.len() / 2).copied().unwrap_or(0) as f64 / 1e3;
        out.push(PhaseReport {
            name: name.into(),
            ops: lat.len() as u64,
            errors,
            bytes: per_conn * lat.len() as u64,
            seconds,
            latency_us: [mid, max, max, max],
            first_error,
        });
    }
    done.store(true, Ordering::SeqCst);
    let _ = TcpStream::connect(addr);
    let _ = acceptor.join();
    Ok(out)
}

fn raw_client(mut s: TcpStream, len: u64, up: bool, progress: &Progress) -> io::Result<()> {
    let mut cmd = [0u8; 9];
    cmd[0] = if up { b'U' } else { b'D' };
    cmd[1..].copy_from_slice(&len.to_le_bytes());
    s.write_all(&cmd)?;
    let mut buf = vec![0u8; CLIENT_BUF];
    let mut left = len;
    if up {
        Rng::new(len).fill(&mut buf);
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            s.write_all(&buf[..n])?;
            left -= n as u64;
        }
        let mut ack = [0u8; 1];
        s.read_exact(&mut ack)?;
    } else {
        while left > 0 {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            left = left.saturating_sub(n as u64);
        }
    }
    progress.add(len);
    Ok(())
}

fn raw_serve(mut s: TcpStream) -> io::Result<()> {
    s.set_nodelay(true)?;
    let mut cmd = [0u8; 9];
    s.read_exact(&mut cmd)?;
    let mut len = [0u8; 8];
    len.copy_from_slice(&cmd[1..]);
    let mut left = u64::from_le_bytes(len);
    let mut buf = vec![0u8; CLIENT_BUF];
    if cmd[0] == b'U' {
        while left > 0 {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            left = left.saturating_sub(n as u64);
        }
        s.write_all(&[0])?;
    } else {
        Rng::new(left).fill(&mut buf);
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            s.write_all(&buf[..n])?;
            left -= n as u64;
        }
    }
    let _ = s.shutdown(Shutdown::Write);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_tcp_moves_the_bytes() {
        let p = Progress::new(false);
        let r = raw_tcp(3_000_000, 2, &p).expect("raw tcp");
        assert_eq!(r.len(), 2);
        assert!(r.iter().all(|p| p.errors == 0 && p.bytes == 3_000_000));
    }
}
