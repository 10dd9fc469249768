//! PROTOCOL.md §6, byte for byte: the worked examples against a real server over raw sockets,
//! and the sans-IO decoders and encoders on the same bytes, under every split of the input.

mod common;

use blobvault::protocol::{
    self, Expect, ProtocolError, Request, encode_chunk, encode_delete, encode_error, encode_get,
    encode_get_header, encode_ok, encode_put_header, encode_put_key, encode_terminator,
};
use blobvault::{BlobId, BlobKey, DeleteTarget, JobId, PutTarget};
use common::*;

const HELLO_KEY: &str = "aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d";
const EMPTY_KEY: &str = "da39a3ee5e6b4b0d3255bfef95601890afd80709";
const JOB: &str = "0102030405060708090a0b0c0d0e0f10";

// §6.1 to §6.3, as written there.
fn put_hello() -> Vec<u8> {
    hex("00 00 05000000 68656c6c6f ffffffff")
}
fn put_hello_reply() -> Vec<u8> {
    hex(&format!("00 {HELLO_KEY}"))
}
fn get_hello() -> Vec<u8> {
    hex(&format!("01 00 {HELLO_KEY}"))
}
fn get_hello_reply() -> Vec<u8> {
    hex("00 05000000 68656c6c6f")
}
fn put_named() -> Vec<u8> {
    hex(&format!(
        "00 01 {JOB} 07000000 746573746b6579 05000000 68656c6c6f ffffffff"
    ))
}
fn get_named() -> Vec<u8> {
    hex(&format!("01 01 {JOB} 07000000 746573746b6579"))
}
fn delete_named() -> Vec<u8> {
    hex(&format!("02 01 {JOB} 07000000 746573746b6579"))
}
fn delete_key() -> Vec<u8> {
    hex(&format!("02 00 {HELLO_KEY}"))
}
fn delete_job() -> Vec<u8> {
    hex(&format!("02 02 {JOB}"))
}
fn put_empty() -> Vec<u8> {
    hex("00 00 ffffffff")
}
fn put_hello_split() -> Vec<u8> {
    hex("00 00 02000000 6865 00000000 03000000 6c6c6f ffffffff")
}
fn job() -> JobId {
    JobId::from_parts(0x0102030405060708, 0x090a0b0c0d0e0f10)
}
fn hello_key() -> BlobKey {
    HELLO_KEY.parse().expect("key")
}

/// One request on its own connection: the exact reply, then an orderly close.
fn assert_reply(s: &TestServer, request: &[u8], reply: &[u8]) {
    let x = s.exchange(request);
    assert!(x.closed_cleanly(), "{:?}", x.end);
    assert_eq!(x.reply, reply, "reply to {request:02x?}");
}

// ---------------------------------------------------------------------------------------------
// Against a real server.

#[test]
fn s6_1_put_content_hello() {
    let s = TestServer::start();
    assert_eq!(put_hello().len(), 15);
    assert_eq!(put_hello_reply().len(), 21);
    assert_reply(&s, &put_hello(), &put_hello_reply());
    assert_eq!(
        s.store().get_bytes(&BlobId::Content(hello_key())).unwrap(),
        Some(b"hello".to_vec())
    );
}

#[test]
fn s6_2_get_content_same_and_new_connection() {
    let s = TestServer::start();
    // Same connection: PUT then GET.
    let mut both = put_hello();
    both.extend_from_slice(&get_hello());
    let mut reply = put_hello_reply();
    reply.extend_from_slice(&get_hello_reply());
    assert_reply(&s, &both, &reply);
    // New connection.
    assert_eq!(get_hello().len(), 22);
    assert_reply(&s, &get_hello(), &get_hello_reply());
}

#[test]
fn s6_2_requests_one_at_a_time_on_one_connection() {
    // As the Java client does it: write a request, read its whole reply, then the next.
    use std::io::{Read, Write};
    let s = TestServer::start();
    let mut c = s.raw();
    for (req, rep) in [
        (put_hello(), put_hello_reply()),
        (get_hello(), get_hello_reply()),
        (put_named(), hex("00")),
        (get_named(), get_hello_reply()),
        (delete_named(), hex("00")),
        (delete_key(), hex("00")),
        (delete_job(), hex("00")),
    ] {
        c.write_all(&req).unwrap();
        let mut got = vec![0u8; rep.len()];
        c.read_exact(&mut got).unwrap();
        assert_eq!(got, rep, "reply to {req:02x?}");
    }
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let (rest, end) = read_until_close(&mut c);
    assert!(rest.is_empty() && end.is_ok(), "{rest:02x?} {end:?}");
}

#[test]
fn s6_3_named_put_get_delete() {
    let s = TestServer::start();
    assert_reply(&s, &put_named(), &hex("00"));
    assert_reply(&s, &get_named(), &get_hello_reply());
    assert_eq!(
        s.store()
            .get_bytes(&BlobId::Named(job(), "testkey".into()))
            .unwrap(),
        Some(b"hello".to_vec())
    );
    assert_reply(&s, &delete_named(), &hex("00"));
    assert!(
        !s.store()
            .contains(&BlobId::Named(job(), "testkey".into()))
            .unwrap()
    );
    // Deleting what is not there is not an error.
    assert_reply(&s, &delete_named(), &hex("00"));
}

#[test]
fn s6_3_delete_by_key() {
    let s = TestServer::start();
    assert_reply(&s, &put_hello(), &put_hello_reply());
    assert_reply(&s, &delete_key(), &hex("00"));
    assert!(!s.store().contains(&BlobId::Content(hello_key())).unwrap());
    assert_reply(&s, &delete_key(), &hex("00"));
}

#[test]
fn s6_3_delete_whole_job() {
    let s = TestServer::start();
    let mut req = put_named();
    req.extend_from_slice(&put_hello());
    assert_reply(&s, &req, &[hex("00"), put_hello_reply()].concat());
    assert_reply(&s, &delete_job(), &hex("00"));
    assert!(
        !s.store()
            .contains(&BlobId::Named(job(), "testkey".into()))
            .unwrap()
    );
    // Content blobs are not touched by a job delete.
    assert!(s.store().contains(&BlobId::Content(hello_key())).unwrap());
    assert_reply(&s, &get_hello(), &get_hello_reply());
}

#[test]
fn s6_3_empty_content_blob() {
    let s = TestServer::start();
    assert_reply(&s, &put_empty(), &hex(&format!("00 {EMPTY_KEY}")));
    assert_reply(&s, &hex(&format!("01 00 {EMPTY_KEY}")), &hex("00 00000000"));
}

#[test]
fn s6_3_chunk_split_does_not_matter() {
    let s = TestServer::start();
    assert_reply(&s, &put_hello_split(), &put_hello_reply());
    assert_reply(&s, &get_hello(), &get_hello_reply());
}

#[test]
fn s6_4_error_example() {
    let s = TestServer::start();
    let req = hex(&format!("01 00 {}", "00".repeat(20)));
    assert_eq!(req.len(), 22);
    let x = s.exchange(&req);
    assert!(x.closed_cleanly(), "connection must close after the error");
    let msg = assert_error_reply(&x.reply);
    assert!(msg.starts_with("Cannot find required BLOB"), "{msg}");
}

#[test]
fn s6_4_connection_closes_after_error_even_with_more_requests_queued() {
    // Error, then a valid request on the same connection: only the error reply comes back.
    let s = TestServer::start();
    let mut req = hex(&format!("01 00 {}", "00".repeat(20)));
    req.extend_from_slice(&put_hello());
    let x = s.exchange(&req);
    assert!(x.closed_cleanly());
    assert_error_reply(&x.reply);
    assert!(!s.store().contains(&BlobId::Content(hello_key())).unwrap());
}

// ---------------------------------------------------------------------------------------------
// Encoders produce exactly the §6 bytes.

#[test]
fn encoders_match_section_6() {
    let mut out = Vec::new();
    encode_put_header(&PutTarget::Content, &mut out);
    encode_chunk(b"hello", &mut out);
    encode_terminator(&mut out);
    assert_eq!(out, put_hello());

    let mut out = Vec::new();
    encode_put_header(&PutTarget::Named(job(), "testkey".into()), &mut out);
    encode_chunk(b"hello", &mut out);
    encode_terminator(&mut out);
    assert_eq!(out, put_named());

    let mut out = Vec::new();
    encode_put_header(&PutTarget::Content, &mut out);
    encode_terminator(&mut out);
    assert_eq!(out, put_empty());

    let mut out = Vec::new();
    encode_put_header(&PutTarget::Content, &mut out);
    encode_chunk(b"he", &mut out);
    encode_chunk(b"", &mut out);
    encode_chunk(b"llo", &mut out);
    encode_terminator(&mut out);
    assert_eq!(out, put_hello_split());

    let mut out = Vec::new();
    encode_get(&BlobId::Content(hello_key()), &mut out);
    assert_eq!(out, get_hello());
    let mut out = Vec::new();
    encode_get(&BlobId::Named(job(), "testkey".into()), &mut out);
    assert_eq!(out, get_named());

    for (target, bytes) in [
        (DeleteTarget::Content(hello_key()), delete_key()),
        (DeleteTarget::Named(job(), "testkey".into()), delete_named()),
        (DeleteTarget::Job(job()), delete_job()),
    ] {
        let mut out = Vec::new();
        encode_delete(&target, &mut out);
        assert_eq!(out, bytes, "{target:?}");
    }

    let mut out = Vec::new();
    encode_put_key(&hello_key(), &mut out);
    assert_eq!(out, put_hello_reply());
    let mut out = Vec::new();
    encode_ok(&mut out);
    assert_eq!(out, hex("00"));
    let mut out = Vec::new();
    encode_get_header(5, &mut out);
    out.extend_from_slice(b"hello");
    assert_eq!(out, get_hello_reply());
}

#[test]
fn s5_3_full_error_example() {
    let mut out = Vec::new();
    encode_error("Cannot find required BLOB", &mut out);
    let prefix = hex("
        ac ed 00 05 73 72 00 13 6a 61 76 61 2e 69 6f 2e
        49 4f 45 78 63 65 70 74 69 6f 6e 6c 80 73 64 65
        25 f0 ab 02 00 00 78 72 00 13 6a 61 76 61 2e 6c
        61 6e 67 2e 45 78 63 65 70 74 69 6f 6e d0 fd 1f
        3e 1a 3b 1c c4 02 00 00 78 72 00 13 6a 61 76 61
        2e 6c 61 6e 67 2e 54 68 72 6f 77 61 62 6c 65 d5
        c6 35 27 39 77 b8 cb 03 00 01 4c 00 0d 64 65 74
        61 69 6c 4d 65 73 73 61 67 65 74 00 12 4c 6a 61
        76 61 2f 6c 61 6e 67 2f 53 74 72 69 6e 67 3b 78
        70 74");
    assert_eq!(prefix.len(), 146);
    let mut expected = hex("01 ae 00 00 00");
    expected.extend_from_slice(&prefix);
    expected.extend_from_slice(&hex(
        "00 19 43 61 6e 6e 6f 74 20 66 69 6e 64 20 72 65 71 75 69 72 65 64 20 42 4c 4f 42 78",
    ));
    assert_eq!(out, expected);
    assert_eq!(
        assert_error_reply(&out),
        "Cannot find required BLOB".to_string()
    );
}

// ---------------------------------------------------------------------------------------------
// Request decoder: the right events, whatever the split.

fn all_section_6_requests() -> Vec<(Vec<u8>, Vec<Req>)> {
    let hello = || Req::Body(b"hello".to_vec());
    vec![
        (
            put_hello(),
            vec![
                Req::Request(Request::Put(PutTarget::Content)),
                hello(),
                Req::End,
            ],
        ),
        (
            get_hello(),
            vec![Req::Request(Request::Get(BlobId::Content(hello_key())))],
        ),
        (
            put_named(),
            vec![
                Req::Request(Request::Put(PutTarget::Named(job(), "testkey".into()))),
                hello(),
                Req::End,
            ],
        ),
        (
            get_named(),
            vec![Req::Request(Request::Get(BlobId::Named(
                job(),
                "testkey".into(),
            )))],
        ),
        (
            delete_named(),
            vec![Req::Request(Request::Delete(DeleteTarget::Named(
                job(),
                "testkey".into(),
            )))],
        ),
        (
            delete_key(),
            vec![Req::Request(Request::Delete(DeleteTarget::Content(
                hello_key(),
            )))],
        ),
        (
            delete_job(),
            vec![Req::Request(Request::Delete(DeleteTarget::Job(job())))],
        ),
        (
            put_empty(),
            vec![Req::Request(Request::Put(PutTarget::Content)), Req::End],
        ),
        (
            hex(&format!("01 00 {EMPTY_KEY}")),
            vec![Req::Request(Request::Get(BlobId::Content(
                EMPTY_KEY.parse().unwrap(),
            )))],
        ),
        (
            put_hello_split(),
            vec![
                Req::Request(Request::Put(PutTarget::Content)),
                hello(),
                Req::End,
            ],
        ),
        (
            hex(&format!("01 00 {}", "00".repeat(20))),
            vec![Req::Request(Request::Get(BlobId::Content(
                BlobKey::default(),
            )))],
        ),
    ]
}

#[test]
fn every_section_6_request_decodes_to_its_events() {
    for (bytes, expected) in all_section_6_requests() {
        let (events, end) = decode_requests([bytes.as_slice()]);
        assert_eq!(events, expected, "{bytes:02x?}");
        assert_eq!(end, Ok(()), "{bytes:02x?}");
    }
}

#[test]
fn request_events_do_not_depend_on_the_split() {
    for (bytes, expected) in all_section_6_requests() {
        for_every_split(&bytes, |parts, how| {
            let (events, end) = decode_requests(parts);
            assert_eq!(events, expected, "{how} of {bytes:02x?}");
            assert_eq!(end, Ok(()), "{how} of {bytes:02x?}");
        });
    }
}

#[test]
fn request_stream_of_all_examples_decodes_under_every_split() {
    // All §6 requests back to back on one connection, plus a multi-chunk body.
    let mut stream = Vec::new();
    let mut expected = Vec::new();
    for (bytes, events) in all_section_6_requests() {
        stream.extend_from_slice(&bytes);
        expected.extend(events);
    }
    let small = stream.len();
    let data: Vec<u8> = (0..150_000u32).map(|i| (i % 251) as u8).collect();
    encode_put_header(&PutTarget::Named(job(), "big".into()), &mut stream);
    chunked_body(&data, &[65536, 39727, 1, 0], &mut stream);
    expected.push(Req::Request(Request::Put(PutTarget::Named(
        job(),
        "big".into(),
    ))));
    expected.push(Req::Body(data));
    expected.push(Req::End);

    let (events, end) = decode_requests([stream.as_slice()]);
    assert_eq!(end, Ok(()));
    assert_eq!(events, expected);
    // Every split point of a 150 kB stream is quadratic; take every split in the small
    // requests' part and a stride through the body.
    for cut in (0..=stream.len()).filter(|&c| c <= small + 64 || c % 997 == 0) {
        let (a, b) = stream.split_at(cut);
        let (ev, end) = decode_requests([a, b]);
        assert_eq!(end, Ok(()), "split at {cut}");
        assert_eq!(ev, expected, "split at {cut}");
    }
    let (ev, end) = decode_requests(stream.chunks(1));
    assert_eq!((ev, end), (expected, Ok(())), "byte by byte");
}

#[test]
fn request_errors_do_not_depend_on_the_split() {
    let cases: Vec<(Vec<u8>, ProtocolError)> = vec![
        (hex("07"), ProtocolError::UnknownOperation(7)),
        (
            hex("00 02"),
            ProtocolError::UnknownAddressing {
                op: protocol::Op::Put,
                byte: 2,
            },
        ),
        (
            hex("01 05"),
            ProtocolError::UnknownAddressing {
                op: protocol::Op::Get,
                byte: 5,
            },
        ),
        (
            hex("02 03"),
            ProtocolError::UnknownAddressing {
                op: protocol::Op::Delete,
                byte: 3,
            },
        ),
        (hex("00 00 01000100"), ProtocolError::ChunkTooLarge(65537)),
        (
            hex("00 00 feffffff"),
            ProtocolError::NegativeChunkLength(-2),
        ),
        (
            hex(&format!("01 01 {JOB} 41000000")),
            ProtocolError::NameTooLong(65),
        ),
        (
            hex(&format!("01 01 {JOB} ffffffff")),
            ProtocolError::NegativeNameLength(-1),
        ),
        (
            hex(&format!("02 01 {JOB} 02000000 c328")),
            ProtocolError::InvalidName,
        ),
    ];
    for (bytes, err) in cases {
        for_every_split(&bytes, |parts, how| {
            let (_, end) = decode_requests(parts);
            assert_eq!(end, Err(err.clone()), "{how} of {bytes:02x?}");
        });
    }
}

#[test]
fn decoder_messages_are_the_java_ones() {
    assert_eq!(
        ProtocolError::UnknownAddressing {
            op: protocol::Op::Put,
            byte: 2
        }
        .to_string(),
        "Unknown type of BLOB addressing."
    );
    assert_eq!(
        ProtocolError::UnknownAddressing {
            op: protocol::Op::Delete,
            byte: 3
        }
        .to_string(),
        "Unrecognized addressing type: 3"
    );
    assert_eq!(
        ProtocolError::NameTooLong(65).to_string(),
        "Unexpected key length 65"
    );
    assert_eq!(
        ProtocolError::ChunkTooLarge(65537).to_string(),
        "Unexpected number of incoming bytes: 65537"
    );
}

// ---------------------------------------------------------------------------------------------
// Response decoder: the right events, whatever the split.

fn error_reply(msg: &str) -> Vec<u8> {
    let mut out = Vec::new();
    encode_error(msg, &mut out);
    out
}

fn all_section_6_responses() -> Vec<(Expect, Vec<u8>, Vec<Resp>)> {
    vec![
        (
            Expect::PutContent,
            put_hello_reply(),
            vec![Resp::Key(hello_key())],
        ),
        (
            Expect::Get,
            get_hello_reply(),
            vec![Resp::Length(5), Resp::Data(b"hello".to_vec()), Resp::End],
        ),
        (Expect::PutNamed, hex("00"), vec![Resp::Ok]),
        (Expect::Delete, hex("00"), vec![Resp::Ok]),
        (
            Expect::PutContent,
            hex(&format!("00 {EMPTY_KEY}")),
            vec![Resp::Key(EMPTY_KEY.parse().unwrap())],
        ),
        (
            Expect::Get,
            hex("00 00000000"),
            vec![Resp::Length(0), Resp::End],
        ),
        (
            Expect::Get,
            error_reply("Cannot find required BLOB"),
            vec![Resp::Error("Cannot find required BLOB".into())],
        ),
        (
            Expect::PutContent,
            error_reply("Unexpected key length 65"),
            vec![Resp::Error("Unexpected key length 65".into())],
        ),
        (
            Expect::Delete,
            error_reply("Unrecognized addressing type: 3"),
            vec![Resp::Error("Unrecognized addressing type: 3".into())],
        ),
    ]
}

#[test]
fn every_section_6_response_decodes_to_its_events() {
    for (expect, bytes, expected) in all_section_6_responses() {
        for_every_split(&bytes, |parts, how| {
            let (events, end) = decode_responses(&[expect], parts);
            assert_eq!(events, expected, "{how} of {bytes:02x?}");
            assert_eq!(end, Ok(()), "{how} of {bytes:02x?}");
        });
    }
}

#[test]
fn response_stream_decodes_under_every_split() {
    // The replies of one connection back to back (errors only as the last one).
    let mut expects = Vec::new();
    let mut stream = Vec::new();
    let mut expected = Vec::new();
    for (e, bytes, events) in all_section_6_responses() {
        if matches!(events.last(), Some(Resp::Error(_))) {
            continue;
        }
        expects.push(e);
        stream.extend_from_slice(&bytes);
        expected.extend(events);
    }
    let (e, bytes, events) = all_section_6_responses().remove(6);
    expects.push(e);
    stream.extend_from_slice(&bytes);
    expected.extend(events);
    for_every_split(&stream, |parts, how| {
        let (events, end) = decode_responses(&expects, parts);
        assert_eq!(events, expected, "{how}");
        assert_eq!(end, Ok(()), "{how}");
    });
}

#[test]
fn truncated_responses_are_reported_not_completed() {
    for (expect, bytes, _) in all_section_6_responses() {
        for cut in 0..bytes.len() {
            let (_, end) = decode_responses(&[expect], [&bytes[..cut]]);
            assert!(
                matches!(end, Err(ProtocolError::Truncated { .. })),
                "{expect:?} cut at {cut}: {end:?}"
            );
        }
    }
}

#[test]
fn bad_responses_are_errors() {
    let (_, end) = decode_responses(&[Expect::Get], [hex("02").as_slice()]);
    assert_eq!(end, Err(ProtocolError::UnknownStatus(2)));
    let (_, end) = decode_responses(&[Expect::Get], [hex("00 ffffffff").as_slice()]);
    assert_eq!(end, Err(ProtocolError::NegativeResponseLength(-1)));
    let (_, end) = decode_responses(&[Expect::Delete], [hex("01 00000080").as_slice()]);
    assert_eq!(end, Err(ProtocolError::NegativeResponseLength(i32::MIN)));
    // A GET announcing 2 GiB - 1 is not allocated: data comes as slices of the input.
    let (ev, end) = decode_responses(&[Expect::Get], [hex("00 ffffff7f 6162").as_slice()]);
    assert_eq!(
        ev,
        vec![Resp::Length(i32::MAX as u32), Resp::Data(b"ab".to_vec())]
    );
    assert!(matches!(end, Err(ProtocolError::Truncated { .. })));
}

// ---------------------------------------------------------------------------------------------
// The split property on arbitrary input (seeded garbage, biased towards plausible fields).

fn plausible_garbage(rng: &mut Rng, max: usize) -> Vec<u8> {
    let mut v = Vec::new();
    let target = rng.below(max as u64) as usize;
    while v.len() < target {
        match rng.below(10) {
            0..=2 => v.push(rng.below(3) as u8),
            3 => v.extend_from_slice(&len32(rng.below(70) as i32)),
            4 => v.extend_from_slice(&len32(-1)),
            5 => v.extend_from_slice(&len32(rng.next_u64() as i32)),
            _ => {
                let n = rng.below(24) as usize + 1;
                v.extend_from_slice(&rng.bytes(n));
            }
        }
    }
    v
}

/// `bytes` cut at a few random points.
fn random_split<'a>(rng: &mut Rng, bytes: &'a [u8]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = (0..rng.below(6))
        .map(|_| rng.below(bytes.len() as u64 + 1) as usize)
        .collect();
    cuts.sort_unstable();
    let mut parts = Vec::new();
    let mut at = 0;
    for c in cuts {
        parts.push(&bytes[at..c]);
        at = c;
    }
    parts.push(&bytes[at..]);
    parts
}

#[test]
fn request_split_property_on_garbage() {
    let mut rng = Rng::new(0xdec0de);
    for case in 0..2000 {
        let bytes = plausible_garbage(&mut rng, 200);
        let whole = decode_requests([bytes.as_slice()]);
        assert_eq!(
            decode_requests(bytes.chunks(1)),
            whole,
            "case {case}, byte by byte: {bytes:02x?}"
        );
        for _ in 0..4 {
            let parts = random_split(&mut rng, &bytes);
            assert_eq!(
                decode_requests(parts.iter().copied()),
                whole,
                "case {case}, split {:?}",
                parts.iter().map(|p| p.len()).collect::<Vec<_>>()
            );
        }
    }
}

#[test]
fn response_split_property_on_garbage() {
    let kinds = [
        Expect::PutContent,
        Expect::PutNamed,
        Expect::Get,
        Expect::Delete,
    ];
    let mut rng = Rng::new(0xfeed);
    for case in 0..2000 {
        let expects: Vec<Expect> = (0..rng.below(4) + 1)
            .map(|_| kinds[rng.below(4) as usize])
            .collect();
        let mut bytes = plausible_garbage(&mut rng, 120);
        if rng.below(2) == 0 {
            // Keep GET lengths small so bodies complete within the input sometimes.
            for b in bytes.iter_mut().skip(1).step_by(5) {
                *b &= 0x0f;
            }
        }
        let whole = decode_responses(&expects, [bytes.as_slice()]);
        assert_eq!(
            decode_responses(&expects, bytes.chunks(1)),
            whole,
            "case {case}, byte by byte: {expects:?} {bytes:02x?}"
        );
        for _ in 0..4 {
            let parts = random_split(&mut rng, &bytes);
            assert_eq!(
                decode_responses(&expects, parts.iter().copied()),
                whole,
                "case {case}: {expects:?} {bytes:02x?}"
            );
        }
    }
}

#[test]
fn pipelined_requests_around_a_multi_chunk_get() {
    // Requests written back to back in one go, one of them a GET of a blob spanning several
    // store chunks: the replies come back in order and byte for byte.
    let s = TestServer::start();
    let big: Vec<u8> = (0..700_000u32).map(|i| (i * 31 % 256) as u8).collect();
    let big_key = BlobKey::of(&big);
    let mut req = Vec::new();
    let mut reply = Vec::new();
    encode_put_header(&PutTarget::Content, &mut req);
    chunked_body(&big, &[65536], &mut req);
    encode_put_key(&big_key, &mut reply);
    req.extend_from_slice(&put_hello());
    reply.extend_from_slice(&put_hello_reply());
    for _ in 0..2 {
        encode_get(&BlobId::Content(big_key), &mut req);
        encode_get_header(big.len() as u32, &mut reply);
        reply.extend_from_slice(&big);
        req.extend_from_slice(&get_hello());
        reply.extend_from_slice(&get_hello_reply());
    }
    req.extend_from_slice(&delete_key());
    reply.push(0);
    let x = s.exchange(&req);
    assert!(x.closed_cleanly(), "{:?}", x.end);
    assert_eq!(x.reply.len(), reply.len());
    assert!(x.reply == reply, "replies differ");
}
