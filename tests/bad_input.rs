//! Malformed requests: each gets the reply PROTOCOL.md prescribes (an error reply then a close,
//! or a silent close), never a hang; the server keeps serving and nothing half-stored remains.

mod common;

use std::io::{Read, Write};

use blobvault::protocol::{ProtocolError, encode_chunk, encode_put_header, encode_terminator};
use blobvault::{BlobId, BlobKey, JobId, PutTarget};
use common::*;

const JOB: &str = "0102030405060708090a0b0c0d0e0f10";

fn job() -> JobId {
    JobId::from_parts(0x0102030405060708, 0x090a0b0c0d0e0f10)
}

/// A server holding a content blob ("hello") and a named one (JOB/"testkey"), so that a bad
/// request that wrongly went through (a delete, an overwrite) would show in the snapshot.
fn seeded_server() -> TestServer {
    let s = TestServer::start();
    s.store().put(b"hello").unwrap();
    s.store().put_named(job(), "testkey", b"named").unwrap();
    s
}

/// Uploads left in the spool directory (a PUT that failed must not leave one behind).
fn spool_files(s: &TestServer) -> Vec<String> {
    match std::fs::read_dir(s.store().dir().join("spool")) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The store is as it was, nothing is left in the spool, and a fresh client is served.
fn assert_unharmed(s: &TestServer, before: &Snapshot, what: &str) {
    assert_eq!(&s.snapshot(), before, "store changed by {what}");
    assert_eq!(spool_files(s), Vec::<String>::new(), "spool after {what}");
    s.assert_serves();
}

/// Sends `req` on a new connection; expects one error reply and a clean close; returns the
/// message. Then checks the server is unharmed.
fn expect_error(s: &TestServer, req: &[u8], what: &str) -> String {
    let before = s.snapshot();
    let x = s.exchange(req);
    assert!(x.closed_cleanly(), "{what}: {:?}", x.end);
    let msg = assert_error_reply(&x.reply);
    assert_unharmed(s, &before, what);
    msg
}

fn put_hello() -> Vec<u8> {
    hex("00 00 05000000 68656c6c6f ffffffff")
}

fn hello_key() -> BlobKey {
    BlobKey::of(b"hello")
}

#[test]
fn unknown_op_byte_closes_silently() {
    let s = seeded_server();
    for op in [0x03u8, 0x04, 0x7f, 0x80, 0xff] {
        for tail in [&[][..], &[0x00, 0x01, 0x02][..], &[0u8; 100][..]] {
            let before = s.snapshot();
            let mut req = vec![op];
            req.extend_from_slice(tail);
            let x = s.exchange(&req);
            assert!(
                x.reply.is_empty(),
                "op {op:#x}: no reply, got {:02x?}",
                x.reply
            );
            assert!(x.closed_cleanly(), "op {op:#x}: {:?}", x.end);
            assert_unharmed(&s, &before, &format!("op {op:#x}"));
        }
    }
}

#[test]
fn unknown_op_after_good_requests_still_gets_their_replies() {
    // The requests before the bad byte are served and answered; then the silent close.
    let s = seeded_server();
    let mut req = put_hello();
    req.extend_from_slice(&hex(&format!("01 00 {}", hello_key())));
    req.push(0x09);
    let x = s.exchange(&req);
    assert!(x.closed_cleanly(), "{:?}", x.end);
    let mut expected = hex(&format!("00 {}", hello_key()));
    expected.extend_from_slice(&hex("00 05000000 68656c6c6f"));
    assert_eq!(x.reply, expected);
}

#[test]
fn error_after_good_requests_comes_after_their_replies() {
    // A good GET then a bad addressing byte in one write: the GET's reply, then the error.
    let s = seeded_server();
    let mut req = hex(&format!("01 00 {}", hello_key()));
    req.extend_from_slice(&hex("00 05"));
    let x = s.exchange(&req);
    assert!(x.closed_cleanly(), "{:?}", x.end);
    let ok = hex("00 05000000 68656c6c6f");
    assert!(
        x.reply.starts_with(&ok),
        "GET reply lost: {:02x?}",
        &x.reply[..x.reply.len().min(16)]
    );
    assert_eq!(
        assert_error_reply(&x.reply[ok.len()..]),
        "Unknown type of BLOB addressing."
    );
}

#[test]
fn bad_addressing_byte_for_put() {
    let s = seeded_server();
    for b in [0x02u8, 0x03, 0x7f, 0xff] {
        let mut req = vec![0x00, b];
        req.extend_from_slice(&hex("05000000 68656c6c6f ffffffff"));
        let msg = expect_error(&s, &req, &format!("PUT addressing {b:#x}"));
        assert_eq!(msg, "Unknown type of BLOB addressing.");
    }
}

#[test]
fn bad_addressing_byte_for_get() {
    let s = seeded_server();
    for b in [0x02u8, 0x03, 0x7f, 0xff] {
        let mut req = vec![0x01, b];
        req.extend_from_slice(&hello_key().0);
        let msg = expect_error(&s, &req, &format!("GET addressing {b:#x}"));
        assert_eq!(msg, "Unknown type of BLOB addressing.");
    }
}

#[test]
fn bad_addressing_byte_for_delete() {
    let s = seeded_server();
    for b in [0x03u8, 0x04, 0x7f, 0xff] {
        let mut req = vec![0x02, b];
        req.extend_from_slice(&hello_key().0);
        let msg = expect_error(&s, &req, &format!("DELETE addressing {b:#x}"));
        assert_eq!(msg, format!("Unrecognized addressing type: {b}"));
    }
}

#[test]
fn chunk_length_over_65536_is_refused() {
    let s = seeded_server();
    for n in [65537i32, 100_000, i32::MAX] {
        for named in [false, true] {
            let mut req = Vec::new();
            let target = if named {
                PutTarget::Named(job(), "testkey".into())
            } else {
                PutTarget::Content
            };
            encode_put_header(&target, &mut req);
            // A valid chunk first, so a half-received blob exists when the bad length comes.
            encode_chunk(b"first part", &mut req);
            req.extend_from_slice(&len32(n));
            req.extend_from_slice(&[0x55; 1000]);
            let msg = expect_error(&s, &req, &format!("chunk length {n}"));
            assert_eq!(msg, format!("Unexpected number of incoming bytes: {n}"));
        }
    }
    // 65536 itself is fine.
    let mut req = Vec::new();
    encode_put_header(&PutTarget::Content, &mut req);
    let data = vec![7u8; 65536];
    encode_chunk(&data, &mut req);
    encode_terminator(&mut req);
    let x = s.exchange(&req);
    assert_eq!(x.reply, hex(&format!("00 {}", BlobKey::of(&data))));
}

#[test]
fn negative_chunk_lengths_other_than_minus_one_are_refused() {
    let s = seeded_server();
    for n in [-2i32, -3, -65536, -65537, i32::MIN] {
        for first_chunk in [false, true] {
            let mut req = Vec::new();
            encode_put_header(&PutTarget::Named(job(), "testkey".into()), &mut req);
            if first_chunk {
                encode_chunk(b"some bytes", &mut req);
            }
            req.extend_from_slice(&len32(n));
            req.extend_from_slice(&len32(-1));
            let msg = expect_error(&s, &req, &format!("chunk length {n}"));
            assert!(msg.contains(&n.to_string()), "{msg}");
        }
    }
}

#[test]
fn name_length_over_64_or_negative_is_refused() {
    let s = seeded_server();
    for n in [65i32, 66, 1000, i32::MAX, -1, -2, i32::MIN] {
        for op in ["00", "01", "02"] {
            let mut req = hex(&format!("{op} 01 {JOB}"));
            req.extend_from_slice(&len32(n));
            req.extend_from_slice(&[b'k'; 70]);
            req.extend_from_slice(&hex("05000000 68656c6c6f ffffffff"));
            let msg = expect_error(&s, &req, &format!("op {op}, name length {n}"));
            if n > 64 {
                assert_eq!(msg, format!("Unexpected key length {n}"));
            } else {
                assert!(msg.contains(&n.to_string()), "{msg}");
            }
        }
    }
    // 64 bytes is fine.
    let name = "k".repeat(64);
    let mut c = s.client();
    c.put_named(job(), &name, b"x").unwrap();
    assert_eq!(c.get_bytes(&BlobId::Named(job(), name)).unwrap(), b"x");
}

#[test]
fn invalid_utf8_name_is_refused() {
    let s = seeded_server();
    for bad in ["c328", "ff", "80", "c0af", "eda080", "f4908080", "e282"] {
        for op in ["00", "01", "02"] {
            let name = hex(bad);
            let mut req = hex(&format!("{op} 01 {JOB}"));
            req.extend_from_slice(&len32(name.len() as i32));
            req.extend_from_slice(&name);
            req.extend_from_slice(&hex("05000000 68656c6c6f ffffffff"));
            expect_error(&s, &req, &format!("op {op}, name {bad}"));
        }
    }
}

/// Valid requests, each with a target that exists on the seeded server.
fn valid_requests() -> Vec<(&'static str, Vec<u8>)> {
    let mut put_content = Vec::new();
    encode_put_header(&PutTarget::Content, &mut put_content);
    encode_chunk(b"he", &mut put_content);
    encode_chunk(b"llo!", &mut put_content);
    encode_terminator(&mut put_content);
    let mut put_named = Vec::new();
    encode_put_header(&PutTarget::Named(job(), "testkey".into()), &mut put_named);
    encode_chunk(b"new", &mut put_named);
    encode_chunk(b"data", &mut put_named);
    encode_terminator(&mut put_named);
    vec![
        ("PUT content", put_content),
        ("PUT named", put_named),
        ("GET content", hex(&format!("01 00 {}", hello_key()))),
        (
            "GET named",
            hex(&format!("01 01 {JOB} 07000000 746573746b6579")),
        ),
        ("DELETE content", hex(&format!("02 00 {}", hello_key()))),
        (
            "DELETE named",
            hex(&format!("02 01 {JOB} 07000000 746573746b6579")),
        ),
        ("DELETE job", hex(&format!("02 02 {JOB}"))),
    ]
}

#[test]
fn truncated_requests_at_every_field() {
    let s = seeded_server();
    s.assert_serves();
    for (what, req) in valid_requests() {
        for cut in 0..req.len() {
            let before = s.snapshot();
            let x = s.exchange(&req[..cut]);
            let label = format!("{what} cut after {cut} of {} bytes", req.len());
            assert!(x.closed_cleanly(), "{label}: {:?}", x.end);
            if cut == 0 {
                // A clean close between requests: nothing to answer.
                assert!(x.reply.is_empty(), "{label}: {:02x?}", x.reply);
            } else {
                // Any cut inside a request is an EOF mid-request: an error reply, never silence.
                let msg = assert_error_reply(&x.reply);
                assert!(msg.contains(&what[..3]), "{label}: {msg}");
            }
            assert_eq!(s.snapshot(), before, "{label}: store changed");
            assert!(spool_files(&s).is_empty(), "{label}: spool left behind");
            s.assert_serves();
        }
    }
}

#[test]
fn eof_mid_body() {
    let s = seeded_server();
    // Inside a chunk, between chunks, inside a length; small and large (spooled to disk) bodies.
    for total in [10usize, 3_000_000] {
        let data: Vec<u8> = (0..total).map(|i| (i % 253) as u8).collect();
        for named in [false, true] {
            let target = if named {
                PutTarget::Named(job(), "testkey".into())
            } else {
                PutTarget::Content
            };
            let mut full = Vec::new();
            encode_put_header(&target, &mut full);
            chunked_body(&data, &[65536], &mut full);
            let terminator_at = full.len() - 4;
            let last_chunk = full.len() - 4 - (total % 65536).max(1) - 4;
            for cut in [
                terminator_at,
                terminator_at + 2,
                terminator_at - 1,
                last_chunk + 2,
            ] {
                let msg = expect_error(&s, &full[..cut], &format!("{total} B cut at {cut}"));
                assert!(msg.contains("PUT"), "{msg}");
            }
        }
    }
}

#[test]
fn huge_announced_chunk_or_name_is_refused_at_once() {
    // The client keeps its side open and sends nothing more: the reply must come anyway, which
    // shows the server neither waits for nor reserves the announced bytes.
    let s = seeded_server();
    let cases = [
        hex("00 00 ffffff7f 00"),
        hex("00 00 00000100 0000"),
        hex(&format!("00 01 {JOB} ffffff7f")),
        hex(&format!("01 01 {JOB} ffffff7f 41")),
        hex(&format!("02 01 {JOB} 00000080")),
    ];
    for req in cases {
        let before = s.snapshot();
        let mut c = s.raw();
        c.write_all(&req).unwrap();
        let mut head = [0u8; 5];
        if req[2..6] == [0, 0, 1, 0] {
            // 65536 is a legal chunk length: the server waits for the data; EOF makes it fail.
            c.shutdown(std::net::Shutdown::Write).unwrap();
        }
        c.read_exact(&mut head).expect("error reply header");
        let len = i32::from_le_bytes([head[1], head[2], head[3], head[4]]);
        assert!((0..1 << 16).contains(&len), "{len}");
        let mut payload = vec![0u8; len as usize];
        c.read_exact(&mut payload).unwrap();
        let mut reply = head.to_vec();
        reply.extend_from_slice(&payload);
        assert_error_reply(&reply);
        let (rest, end) = read_until_close(&mut c);
        assert!(rest.is_empty() && end.is_ok(), "{rest:02x?} {end:?}");
        assert_unharmed(&s, &before, &format!("{req:02x?}"));
    }
}

#[test]
fn random_garbage() {
    let s = seeded_server();
    s.assert_serves();
    let mut rng = Rng::new(0x5eed_b10b);
    for case in 0..300 {
        let mut req = Vec::new();
        // Mostly plausible op and addressing bytes, so the garbage reaches the deeper fields.
        req.push(match rng.below(10) {
            0..=7 => rng.below(3) as u8,
            _ => rng.next_u64() as u8,
        });
        req.push(match rng.below(10) {
            0..=7 => rng.below(3) as u8,
            _ => rng.next_u64() as u8,
        });
        let tail = rng.below(300) as usize;
        while req.len() < tail {
            match rng.below(8) {
                // A plausible little length, a terminator, or random bytes.
                0 => req.extend_from_slice(&len32(rng.below(80) as i32)),
                1 => req.extend_from_slice(&len32(-1)),
                _ => {
                    let n = rng.below(40) as usize + 1;
                    req.extend_from_slice(&rng.bytes(n))
                }
            }
        }
        if rng.below(5) == 0 {
            let keep = rng.below(req.len() as u64 + 1) as usize;
            req.truncate(keep);
        }
        let (events, decoded) = decode_requests([req.as_slice()]);
        let stores = events.iter().any(|e| matches!(e, Req::End));
        let before = s.snapshot();
        let x = s.exchange(&req);
        let label = format!("case {case}: {req:02x?}");
        assert!(
            x.closed_cleanly() || !x.reply.is_empty(),
            "{label}: {:?}",
            x.end
        );
        if events.is_empty() {
            // Nothing was decodable: the reply follows from the decoder's verdict alone.
            match decoded {
                Ok(()) => assert!(x.reply.is_empty(), "{label}"),
                Err(ProtocolError::UnknownOperation(_)) => {
                    assert!(x.reply.is_empty(), "{label}: {:02x?}", x.reply)
                }
                Err(_) => {
                    assert_error_reply(&x.reply);
                }
            }
        }
        if !stores {
            assert_eq!(s.snapshot(), before, "{label}: store changed");
        }
        assert!(spool_files(&s).is_empty(), "{label}: spool left behind");
        s.assert_serves();
    }
    s.assert_serves();
    let report = s.store().verify().unwrap();
    assert!(report.is_clean(), "{report:?}");
}

/// A backlog of `usize::MAX` once meant a queue allocated up front: an abort at start.
#[test]
fn an_absurd_backlog_is_clamped_and_the_server_serves() {
    let srv = TestServer::start_config(blobvault::config::ServerConfig {
        num_concurrent: 2,
        backlog: usize::MAX,
        ..Default::default()
    });
    let mut c = blobvault::BlobClient::connect(srv.addr()).unwrap();
    let key = c.put(b"still here").unwrap();
    assert_eq!(c.get_bytes(&BlobId::Content(key)).unwrap(), b"still here");
}
