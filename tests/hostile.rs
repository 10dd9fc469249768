//! Idle, slow and stalled peers against the built binary: they must not hold workers, starve
//! other clients, or keep descriptors once gone; each stalled peer is cut off by its deadline
//! with a log line naming it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use blobvault::protocol;
use blobvault::{BlobClient, BlobId, BlobKey};

mod common;
use common::logged::{Server, strip_ansi, wait_until};

/// PUT then GET of a fresh blob on a new connection; returns how long it took.
fn put_get(srv: &Server, tag: &str) -> Duration {
    let start = Instant::now();
    let data = format!("served past hostile peers: {tag}").into_bytes();
    let mut c = srv.client();
    let key = c.put(&data).expect("put");
    assert_eq!(key, BlobKey::of(&data));
    assert_eq!(c.get_bytes(&BlobId::Content(key)).expect("get"), data);
    start.elapsed()
}

/// Opens `n` connections and leaves them silent; returns once the server holds them all.
fn idle_connections(srv: &Server, n: usize) -> Vec<TcpStream> {
    let base = srv.fds();
    let conns: Vec<TcpStream> = (0..n)
        .map(|i| {
            TcpStream::connect_timeout(&srv.addr, Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("connection {i}: {e}"))
        })
        .collect();
    wait_until(Duration::from_secs(30), || {
        (srv.fds() >= base + n).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "server holds {} descriptors, expected {}",
            srv.fds(),
            base + n
        )
    });
    conns
}

#[test]
fn idle_connections_hold_no_worker_nor_descriptor_after_they_close() {
    let workers = 4;
    let srv = Server::spawn(&[
        "-D",
        &format!("blob.fetch.num-concurrent={workers}"),
        "--idle-timeout",
        "600",
    ]);
    let base_fds = srv.fds();
    put_get(&srv, "warm-up");
    // The warm-up connection is closed by the server once the client's close arrives.
    wait_until(Duration::from_secs(10), || {
        (srv.fds() == base_fds).then_some(())
    })
    .unwrap_or_else(|| panic!("{} descriptors after warm-up, {base_fds} before", srv.fds()));
    let idle = idle_connections(&srv, 2_000);
    // One descriptor per connection (no copy kept per connection).
    assert_eq!(srv.fds(), base_fds + 2_000, "descriptors per connection");
    let took = put_get(&srv, "beside 2000 idle");
    assert!(took < Duration::from_secs(1), "served after {took:?}");
    // Workers, acceptor, writer, main: no thread per connection.
    let threads = srv.threads();
    assert!(
        threads <= workers + 4,
        "{threads} threads for {workers} workers"
    );
    drop(idle);
    wait_until(Duration::from_secs(30), || {
        (srv.fds() == base_fds).then_some(())
    })
    .unwrap_or_else(|| panic!("{} descriptors, {base_fds} before", srv.fds()));
    put_get(&srv, "after they closed");
}

#[test]
fn ten_thousand_idle_connections_and_still_serving() {
    // The server raises its own soft limit; this process needs one descriptor per connection
    // too (see the README's descriptor needs).
    let limit = blobvault::server::raise_fd_limit(10_200).expect("descriptor limit");
    assert!(
        limit >= 10_200,
        "this test needs a descriptor hard limit of at least 10,200 (ulimit -Hn), got {limit}"
    );
    let srv = Server::spawn(&[
        "-D",
        "blob.fetch.num-concurrent=2",
        "--idle-timeout",
        "600",
        "--max-connections",
        "10100",
    ]);
    let idle = idle_connections(&srv, 10_000);
    put_get(&srv, "beside 10000 idle");
    drop(idle);
    put_get(&srv, "after they closed");
}

#[test]
fn listen_backlog_follows_the_configuration() {
    let srv = Server::spawn(&["-D", "blob.fetch.backlog=777"]);
    let out = Command::new("ss")
        .args(["-ltnH", &format!("sport = :{}", srv.addr.port())])
        .output()
        .expect("run ss (iproute2)");
    let text = String::from_utf8_lossy(&out.stdout);
    // State, Recv-Q, Send-Q (the backlog of a listening socket), …
    let backlog: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(backlog.get(2).copied(), Some("777"), "ss said: {text}");
}

/// With one worker: a GET never read, a PUT trickled at one byte a second and a header stalled
/// half-way, all at once; a fourth client is served at once, and each stalled peer is cut off
/// by its deadline with a log line naming it.
#[test]
fn one_worker_serves_while_three_peers_stall_and_each_is_cut_off() {
    let srv = Server::spawn(&[
        "-D",
        "blob.fetch.num-concurrent=1",
        "--idle-timeout",
        "600",
        "--header-timeout",
        "2",
        "--stall-timeout",
        "2",
        "--min-rate",
        "1000",
    ]);
    // Big enough that its reply fills both sockets' buffers.
    let big: Vec<u8> = (0..64u32 << 20).map(|i| (i ^ (i >> 11)) as u8).collect();
    let big_key = srv.client().put(&big).expect("put big blob");

    // 1. A GET whose reply is never read.
    let mut never_read = TcpStream::connect(srv.addr).expect("connect");
    let mut req = Vec::new();
    protocol::encode_get(&BlobId::Content(big_key), &mut req);
    never_read.write_all(&req).expect("send GET");

    // 2. A PUT trickled at one byte a second (its header and chunk length first).
    let trickler = TcpStream::connect(srv.addr).expect("connect");
    let trickle_addr = trickler.local_addr().expect("addr");
    let trickle = std::thread::spawn(move || {
        let mut s = trickler;
        let mut head = Vec::new();
        protocol::encode_put_header(&blobvault::PutTarget::Content, &mut head);
        head.extend_from_slice(&1000i32.to_le_bytes()); // the chunk length
        s.write_all(&head).expect("send PUT header");
        let start = Instant::now();
        // Bounded: the deadline cuts it off after about 2–3 s.
        for _ in 0..60 {
            std::thread::sleep(Duration::from_secs(1));
            if s.write_all(b"x").is_err() {
                return Some(start.elapsed());
            }
        }
        None
    });

    // 3. A header stalled half-way: GET by key, ten of the key's twenty bytes.
    let mut half = TcpStream::connect(srv.addr).expect("connect");
    half.write_all(&[protocol::GET_OPERATION, protocol::CONTENT_ADDRESSABLE])
        .expect("send");
    half.write_all(&[7u8; 10]).expect("send");

    // The never-read GET's reply has begun (its first bytes are here, unread).
    never_read
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    never_read
        .peek(&mut [0u8; 1])
        .expect("the GET reply begins");
    let took = put_get(&srv, "fourth client");
    assert!(took < Duration::from_secs(1), "served after {took:?}");

    // Each stalled peer is cut off, named in the log.
    let cut = |peer: SocketAddr| {
        srv.wait_for_log(&["cut off", &peer.to_string()], Duration::from_secs(15))
    };
    let line = cut(never_read.local_addr().expect("addr"));
    assert!(line.contains("no byte moved"), "{line}");
    let line = cut(half.local_addr().expect("addr"));
    assert!(line.contains("header not complete"), "{line}");
    let line = cut(trickle_addr);
    assert!(line.contains("minimum rate"), "{line}");
    let trickled_for = trickle.join().expect("trickle thread");
    assert!(
        trickled_for.is_some_and(|t| t < Duration::from_secs(15)),
        "the trickling PUT was not cut off: {trickled_for:?}"
    );

    // The never-read GET's reply stops short of the blob: the server gave up on it.
    let mut got = Vec::new();
    let _ = never_read.read_to_end(&mut got);
    assert!(
        got.len() < big.len(),
        "the whole blob went out to a stalled peer"
    );
    // The half header is closed, with at most an error reply that says why.
    half.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut reply = Vec::new();
    let _ = half.read_to_end(&mut reply);
    if !reply.is_empty() {
        assert_eq!(reply[0], protocol::RETURN_ERROR, "{reply:?}");
    }
    put_get(&srv, "after the cut-offs");
}

/// A request's header deadline runs from its own first byte, also when it follows another
/// request on the connection (pipelined): one finished request gives no credit to the next.
#[test]
fn a_pipelined_request_gets_its_own_header_deadline() {
    let srv = Server::spawn(&[
        "--idle-timeout",
        "600",
        "--header-timeout",
        "1",
        "--stall-timeout",
        "600",
    ]);
    let mut s = TcpStream::connect(srv.addr).expect("connect");
    let mut req = Vec::new();
    protocol::encode_delete(
        &blobvault::DeleteTarget::Job(blobvault::JobId::random()),
        &mut req,
    );
    // The whole DELETE, then the first byte of a GET, then nothing.
    req.push(protocol::GET_OPERATION);
    s.write_all(&req).expect("send");
    let peer = s.local_addr().expect("addr").to_string();
    let line = srv.wait_for_log(&["cut off", &peer], Duration::from_secs(15));
    assert!(line.contains("header not complete"), "{line}");
    // The DELETE's reply came first.
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    assert_eq!(reply.first(), Some(&protocol::RETURN_OKAY), "{reply:?}");
}

/// One client pipelining thousands of requests does not hold its worker until they are all
/// done: another client on the same (only) worker is served in between.
#[test]
fn a_pipelining_client_does_not_hold_the_worker_for_all_its_requests() {
    let srv = Server::spawn(&["-D", "blob.fetch.num-concurrent=1"]);
    const N: usize = 3000;
    let mut a = TcpStream::connect(srv.addr).expect("connect");
    let mut req = Vec::new();
    for _ in 0..N {
        protocol::encode_delete(
            &blobvault::DeleteTarget::Job(blobvault::JobId::random()),
            &mut req,
        );
    }
    a.write_all(&req).expect("send");
    let reader = std::thread::spawn(move || {
        a.set_read_timeout(Some(Duration::from_secs(120)))
            .expect("timeout");
        let mut replies = vec![0u8; N];
        a.read_exact(&mut replies).expect("every DELETE answered");
        assert!(replies.iter().all(|&b| b == protocol::RETURN_OKAY));
        Instant::now()
    });
    put_get(&srv, "beside a pipelining client");
    let b_done = Instant::now();
    let a_done = reader.join().expect("reader");
    assert!(
        b_done < a_done,
        "the other client waited for all {N} pipelined requests"
    );
}

/// Peers that speak the wrong protocol are named in the log as such; a GET of a missing blob
/// is routine (no warning); with debug logging each request gets one line.
#[test]
fn log_lines_say_what_a_peer_did() {
    let srv = Server::spawn_env(&[], &[("RUST_LOG", "debug")]);
    let send = |bytes: &[u8]| {
        let mut s = TcpStream::connect(srv.addr).expect("connect");
        s.write_all(bytes).expect("send");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut reply = Vec::new();
        let _ = s.read_to_end(&mut reply);
        (s.local_addr().expect("addr").to_string(), reply)
    };
    let (http, reply) = send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(reply.is_empty(), "{reply:?}");
    srv.wait_for_log(&["not HTTP", &http], Duration::from_secs(10));
    let (tls, _) = send(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 0, 0, 1, 0]);
    srv.wait_for_log(&["TLS handshake", &tls], Duration::from_secs(10));

    let mut c = srv.client();
    let missing = BlobKey::of(b"never stored");
    assert!(c.get_bytes(&BlobId::Content(missing)).is_err());
    let mut c = srv.client();
    let key = c.put(b"logged").expect("put");
    drop(c);
    srv.wait_for_log(
        &["request ok", "PUT", &key.to_string(), "size=6"],
        Duration::from_secs(10),
    );
    let missing_line = srv.wait_for_log(&["Cannot find required BLOB"], Duration::from_secs(10));
    assert!(missing_line.contains("DEBUG"), "{missing_line}");
}

/// Out of descriptors, new peers are refused at once instead of hanging in the listen queue;
/// once descriptors free up the next peer is served; and SIGINT still stops the server.
#[test]
fn out_of_descriptors_refuses_then_recovers_and_still_stops() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("server.log");
    // A hard limit of 128 descriptors for the server alone (set by the shell it runs in).
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -Sn 128 && ulimit -Hn 128 && exec "$0" "$@""#)
        .arg(env!("CARGO_BIN_EXE_blobvault"))
        .args([
            "serve",
            "--port",
            "0",
            "-D",
            "blob.fetch.num-concurrent=2",
            "--dir",
        ])
        .arg(dir.path().join("store"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("listening line");
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("listening on ")
        .expect("listening line")
        .parse()
        .expect("address");
    // More connections than the server has descriptors: the last ones are closed at once.
    let mut held: Vec<TcpStream> = (0..160)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    let refused = wait_until(Duration::from_secs(20), || {
        let mut s = held.last_mut()?.try_clone().ok()?;
        s.set_read_timeout(Some(Duration::from_millis(200))).ok()?;
        match s.read(&mut [0u8; 1]) {
            Ok(0) => Some(true),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Some(true),
            _ => None,
        }
    });
    assert_eq!(
        refused,
        Some(true),
        "the connection past the limit was not refused"
    );
    // Descriptors free up (the server has closed what the peers closed): the very next peer
    // is served.
    held.clear();
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", child.id()))
            .map(|d| d.count())
            .unwrap_or(usize::MAX)
    };
    wait_until(Duration::from_secs(20), || (fds() < 64).then_some(()))
        .unwrap_or_else(|| panic!("the server still holds {} descriptors", fds()));
    let mut c = BlobClient::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    c.put(b"after the flood")
        .expect("the first peer after the flood is served");
    drop(c);
    let text = strip_ansi(&std::fs::read_to_string(&log).unwrap_or_default());
    assert!(text.contains("descriptor"), "{text}");
    // SIGINT stops it.
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let exited = wait_until(Duration::from_secs(20), || child.try_wait().ok().flatten());
    if exited.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the server did not stop on SIGINT after running out of descriptors");
    }
}

/// A client opening bad connections in a loop does not get a log line written for each: the
/// server logs the first 20 warnings about peers of each second and counts the rest in one line
/// once their second is over. Every bad connection is accounted for, in one or the other.
#[test]
fn a_flood_of_bad_connections_is_logged_at_a_bounded_rate() {
    const FLOOD: u64 = 400;
    const PER_SECOND: u64 = 20;
    let srv = Server::spawn(&[]);
    let started = Instant::now();
    for _ in 0..FLOOD {
        let mut s = TcpStream::connect(srv.addr).expect("connect");
        s.write_all(&[0xEE]).expect("send an unknown operation");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        // The server closes it without a reply: one connection at a time.
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(rest.is_empty(), "{rest:?}");
    }
    let took = started.elapsed();
    let held_back = |line: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("held_back="))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no count in {line}"))
    };
    let (logged, held) = wait_until(Duration::from_secs(30), || {
        let text = srv.log_text();
        let logged = text
            .lines()
            .filter(|l| l.contains("unknown operation"))
            .count() as u64;
        let held: u64 = text
            .lines()
            .filter(|l| l.contains("were not logged"))
            .map(held_back)
            .sum();
        (logged + held == FLOOD).then_some((logged, held))
    })
    .unwrap_or_else(|| {
        panic!(
            "not every bad connection accounted for:\n{}",
            srv.log_text()
        )
    });
    // At most a second's budget per second begun (the first window may end early).
    let windows = took.as_secs() + 2;
    assert!(
        logged <= PER_SECOND * windows,
        "{logged} lines logged in {took:?} ({held} held back)"
    );
    // The flood is far faster than 20 a second here; held back is where most of it went.
    if took < Duration::from_secs(FLOOD / PER_SECOND / 2) {
        assert!(held > 0, "nothing held back in {took:?}");
    }
    // Still serving.
    let mut c = srv.client();
    let key = c.put(b"after the flood").expect("put");
    assert_eq!(
        c.get_bytes(&BlobId::Content(key)).expect("get"),
        b"after the flood"
    );
}
