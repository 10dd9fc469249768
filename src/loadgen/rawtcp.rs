//! Plain loopback TCP with no protocol and no store, measured in the same run as the phases:
//! - `--raw-tcp`: the same bytes in bulk (upload and download), the ceiling of this machine's
//!   network stack for large blobs;
//! - `--floor`: request/response of the phases' shapes (a 4 KiB PUT is a 4 KiB request and a
//!   small reply), served by a minimal blocking server, whose CPU per request is the floor that
//!   the real server's CPU per request is compared with.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Barrier;
use std::time::Instant;

use super::conn::CLIENT_BUF;
use super::cpu::CpuMeter;
use super::threaded::ThreadedServer;
use super::{Phase, PhaseReport, Plan, Progress, Rng, Tally, phase_report, timed};
use crate::key::{BlobId, BlobKey, JobId};
use crate::protocol::{self, DeleteTarget, MAX_CHUNK, PutTarget};

/// Name prefix of the bulk server's threads (their CPU is the raw phases' server CPU).
const RAW_THREADS: &str = "bench-raw";

/// Name prefix of the floor server's threads (their CPU is the floor's server CPU).
const FLOOR_THREADS: &str = "bench-floor";

/// Plain TCP over loopback, the same bytes and connections: upload (client writes, server
/// reads) and download (server writes, client reads), each as a phase.
pub(super) fn raw_tcp(
    total: u64,
    conns: usize,
    progress: &Progress,
) -> io::Result<Vec<PhaseReport>> {
    let server = ThreadedServer::start(RAW_THREADS, "raw TCP", |s| {
        let _ = raw_serve(s);
    })?;
    let addr = server.addr;
    let meter = CpuMeter::Threads(RAW_THREADS);
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
                    // The stream comes back open: the server's thread lives until measured.
                    stream
                        .and_then(|st| raw_client(st, per_conn, up, progress))
                        .map(|st| (t.elapsed().as_nanos() as u64, st))
                }
            })
            .collect();
        let (results, seconds, cpu) = timed(name, conns as u64, progress, Some(&meter), jobs);
        let results: Vec<io::Result<u64>> = results
            .into_iter()
            .map(|r| r.map(|(ns, _stream)| ns))
            .collect();
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
            server_cpu_ns: cpu,
        });
    }
    drop(server);
    Ok(out)
}

fn raw_client(mut s: TcpStream, len: u64, up: bool, progress: &Progress) -> io::Result<TcpStream> {
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
    Ok(s)
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
    // Live until the client closes (after the phase's CPU is measured).
    while s.read(&mut buf)? > 0 {}
    Ok(())
}

/// Bytes of the request and of the reply of operation `i` of `phase` in blobvault's protocol
/// (content-addressed, or named `bench-i` with `named`), for a blob of `size` bytes.
fn shape(phase: Phase, i: u64, size: u64, named: bool) -> (u64, u64) {
    let job = JobId::from_parts(0, 0);
    let key = BlobKey([0; 20]);
    let mut head = Vec::new();
    match phase {
        Phase::Put => {
            let target = if named {
                PutTarget::Named(job, Plan::name(i))
            } else {
                PutTarget::Content
            };
            protocol::encode_put_header(&target, &mut head);
            // Each chunk has a length before it; a terminator ends the body.
            let chunks = size.div_ceil(MAX_CHUNK as u64);
            let reply = if named { 1 } else { 1 + 20 };
            (head.len() as u64 + 4 * chunks + size + 4, reply)
        }
        Phase::Get => {
            let id = if named {
                BlobId::Named(job, Plan::name(i))
            } else {
                BlobId::Content(key)
            };
            protocol::encode_get(&id, &mut head);
            // Status byte and length, then the content.
            (head.len() as u64, 1 + 4 + size)
        }
        Phase::Delete => {
            let target = if named {
                DeleteTarget::Named(job, Plan::name(i))
            } else {
                DeleteTarget::Content(key)
            };
            protocol::encode_delete(&target, &mut head);
            (head.len() as u64, 1)
        }
    }
}

/// The floor's framing: the first 8 bytes of a request give its length and the reply's
/// (little-endian u32 each), so a request is never shorter than this.
const FLOOR_HEAD: usize = 8;

/// `--floor`: each of `phases` as plain request/response over `conns` connections to a
/// minimal blocking server (a thread per connection, no protocol, no storage), the requests and
/// replies of the same sizes as blobvault's (`sizes[i]` per operation, split over connections
/// as the real phases split them). Phases are named `floor-put`, `floor-get`, `floor-delete`;
/// each reports the floor server's CPU time.
pub(super) fn floor(
    phases: &[Phase],
    sizes: &[u64],
    named: bool,
    get_rounds: u32,
    conns: usize,
    progress: &Progress,
) -> io::Result<Vec<PhaseReport>> {
    let server = ThreadedServer::start(FLOOR_THREADS, "raw-TCP floor", |s| {
        if let Err(e) = floor_serve(s) {
            tracing::warn!("raw-TCP floor server: {e}");
        }
    })?;
    let addr = server.addr;
    let meter = CpuMeter::Threads(FLOOR_THREADS);
    let mut out = Vec::new();
    // Connections stay open from phase to phase, as the real phases' do.
    let mut streams: Vec<Option<TcpStream>> = (0..conns).map(|_| None).collect();
    for &phase in phases {
        let rounds = if phase == Phase::Get { get_rounds } else { 1 };
        let name = format!("floor-{}", phase.name());
        let jobs: Vec<_> = streams
            .iter_mut()
            .enumerate()
            .map(|(c, slot)| {
                let ops: Vec<(u64, u64, u64)> = (c as u64..sizes.len() as u64)
                    .step_by(conns)
                    .map(|i| {
                        let size = sizes[i as usize];
                        let (req, reply) = shape(phase, i, size, named);
                        let moved = if phase == Phase::Delete { 0 } else { size };
                        (req, reply, moved)
                    })
                    .collect();
                let name = &name;
                move |start: &Barrier| {
                    let stream = match slot.take() {
                        Some(s) => Ok(s),
                        None => floor_connect(addr),
                    };
                    start.wait();
                    let mut t = Tally::default();
                    let mut stream = match stream {
                        Ok(s) => s,
                        Err(e) => {
                            t.errors = ops.len() as u64 * rounds as u64;
                            t.first_error = Some(format!("connect {addr}: {e}"));
                            return t;
                        }
                    };
                    let mut wbuf = vec![0u8; CLIENT_BUF];
                    Rng::new(c as u64).fill(&mut wbuf);
                    let mut rbuf = vec![0u8; CLIENT_BUF];
                    for _ in 0..rounds {
                        for &(req, reply, moved) in &ops {
                            let at = Instant::now();
                            match floor_call(&mut stream, req, reply, &mut wbuf, &mut rbuf) {
                                Ok(()) => {
                                    t.lat_ns.push(at.elapsed().as_nanos() as u64);
                                    t.bytes += moved;
                                    progress.add(moved);
                                }
                                Err(e) => {
                                    t.errors += 1;
                                    t.first_error.get_or_insert_with(|| format!("{name}: {e}"));
                                    return t;
                                }
                            }
                        }
                    }
                    // Kept, not dropped: the server's thread must live until measured.
                    *slot = Some(stream);
                    t
                }
            })
            .collect();
        let total = sizes.len() as u64 * rounds as u64;
        let (results, seconds, cpu) = timed(&name, total, progress, Some(&meter), jobs);
        out.push(phase_report(&name, &results, seconds, cpu));
    }
    drop(streams);
    drop(server);
    Ok(out)
}

fn floor_connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// One request of `req` bytes (framing included) and its reply of `reply` bytes.
fn floor_call(
    s: &mut TcpStream,
    req: u64,
    reply: u64,
    wbuf: &mut [u8],
    rbuf: &mut [u8],
) -> io::Result<()> {
    let req = req.max(FLOOR_HEAD as u64);
    let (Ok(req32), Ok(reply32)) = (u32::try_from(req), u32::try_from(reply)) else {
        return Err(io::Error::other(
            "a floor request or reply must be under 4 GiB",
        ));
    };
    wbuf[..4].copy_from_slice(&req32.to_le_bytes());
    wbuf[4..8].copy_from_slice(&reply32.to_le_bytes());
    let mut left = req;
    while left > 0 {
        let n = left.min(wbuf.len() as u64) as usize;
        s.write_all(&wbuf[..n])?;
        left -= n as u64;
    }
    let mut got = 0u64;
    while got < reply {
        let n = s.read(rbuf)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        got += n as u64;
    }
    if got > reply {
        return Err(io::Error::other("floor server replied more than asked"));
    }
    Ok(())
}

/// The floor server's connection loop: read a request (one `read` when it fits the buffer),
/// write its reply, until the client closes.
fn floor_serve(mut s: TcpStream) -> io::Result<()> {
    s.set_nodelay(true)?;
    let mut buf = vec![0u8; CLIENT_BUF];
    let reply_buf = vec![0u8; CLIENT_BUF];
    loop {
        let mut have = 0usize;
        while have < FLOOR_HEAD {
            let n = s.read(&mut buf[have..])?;
            if n == 0 {
                return if have == 0 {
                    Ok(())
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                };
            }
            have += n;
        }
        let field =
            |at: usize| u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
        let (req, reply) = (field(0) as u64, field(4) as u64);
        let mut got = have as u64;
        while got < req {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            got += n as u64;
        }
        if got > req {
            // The client waits for each reply: bytes past a request are a bug.
            return Err(io::Error::other("floor client sent past its request"));
        }
        let mut left = reply;
        while left > 0 {
            let n = left.min(reply_buf.len() as u64) as usize;
            s.write_all(&reply_buf[..n])?;
            left -= n as u64;
        }
    }
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
        assert!(r.iter().all(|p| p.server_cpu_ns.is_some_and(|ns| ns > 0)));
    }

    #[test]
    fn shapes_are_the_protocol_sizes() {
        // PUT 4 KiB by content: op, addressing, one chunk length, 4096, terminator; key back.
        assert_eq!(shape(Phase::Put, 0, 4096, false), (2 + 4 + 4096 + 4, 21));
        // Two chunks for 64 KiB + 1.
        assert_eq!(shape(Phase::Put, 0, 65537, false), (2 + 8 + 65537 + 4, 21));
        assert_eq!(shape(Phase::Get, 0, 4096, false), (22, 5 + 4096));
        assert_eq!(shape(Phase::Delete, 0, 4096, false), (22, 1));
        // Named: job (16), name length (4), "bench-7".
        assert_eq!(shape(Phase::Delete, 7, 4096, true), (2 + 16 + 4 + 7, 1));
    }

    #[test]
    fn floor_serves_every_shape_and_measures_its_cpu() {
        let p = Progress::new(false);
        let sizes = vec![4096u64, 0, 70_000, 1];
        let phases = [Phase::Put, Phase::Get, Phase::Delete];
        let r = floor(&phases, &sizes, false, 2, 2, &p).expect("floor");
        let names: Vec<_> = r
            .iter()
            .map(|p| (p.name.as_str(), p.ops, p.errors))
            .collect();
        assert_eq!(
            names,
            [
                ("floor-put", 4, 0),
                ("floor-get", 8, 0),
                ("floor-delete", 4, 0)
            ]
        );
        assert_eq!(r[0].bytes, sizes.iter().sum::<u64>());
        assert_eq!(r[1].bytes, 2 * sizes.iter().sum::<u64>());
        // The server's threads did work that the meter saw (at least the reads and writes).
        assert!(r.iter().all(|p| p.server_cpu_ns.is_some_and(|ns| ns > 0)));
    }
}
