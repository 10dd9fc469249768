//! Replays the captured exchanges of the Java client and server (`../shared/vectors`, see its
//! README) against one fresh blobvault server, and feeds every request stream to the decoder.

mod common;

use std::path::{Path, PathBuf};

use blobvault::protocol::{self, Expect, ResponseDecoder};
use common::*;

#[derive(Debug)]
struct Vector {
    id: u32,
    c2s: Vec<u8>,
    s2c: Vec<u8>,
}

fn vector_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/vectors")
}

/// Every `NNNN.c2s` with its `.s2c`, in numeric order. Fails plainly when the folder is absent.
fn load_vectors() -> Vec<Vector> {
    load_vectors_from(&vector_dir())
}

fn load_vectors_from(dir: &Path) -> Vec<Vector> {
    assert!(
        dir.is_dir(),
        "the captured vectors folder {} is absent: these tests need ../shared/vectors beside \
         the project (see its README); they do not pass without it",
        dir.display()
    );
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read vectors dir") {
        let path = entry.expect("dir entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("c2s") {
            continue;
        }
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        let Ok(id) = stem.parse::<u32>() else {
            continue;
        };
        let s2c_path = path.with_extension("s2c");
        let c2s = std::fs::read(&path).expect("read .c2s");
        let s2c = std::fs::read(&s2c_path)
            .unwrap_or_else(|e| panic!("{} has no readable .s2c: {e}", path.display()));
        out.push(Vector { id, c2s, s2c });
    }
    out.sort_by_key(|v| v.id);
    assert!(
        !out.is_empty(),
        "no NNNN.c2s files in {}: the vectors folder is empty",
        dir.display()
    );
    out
}

/// How the expected reply stream splits: the successful replies (byte ranges), then maybe an
/// error reply starting at `error_at` and running to the end.
struct ReplyShape {
    ok: Vec<std::ops::Range<usize>>,
    error_at: Option<usize>,
}

/// Splits a captured `.s2c` into replies, using the requests' kinds to know each reply's size.
fn reply_shape(id: u32, s2c: &[u8], expects: &[Expect]) -> ReplyShape {
    let mut ok = Vec::new();
    let mut pos = 0;
    for (i, expect) in expects.iter().enumerate() {
        if pos == s2c.len() {
            break;
        }
        if s2c[pos] == protocol::RETURN_ERROR {
            assert_error_reply(&s2c[pos..]);
            return ReplyShape {
                ok,
                error_at: Some(pos),
            };
        }
        let mut dec = ResponseDecoder::new(*expect);
        let start = pos;
        loop {
            let (used, ev) = dec
                .decode(&s2c[pos..])
                .unwrap_or_else(|e| panic!("vector {id:04}: reply {i} does not decode: {e}"));
            pos += used;
            if dec.is_done() {
                break;
            }
            assert!(ev.is_some(), "vector {id:04}: reply {i} is truncated");
        }
        ok.push(start..pos);
    }
    if pos < s2c.len() {
        // An error for a request the decoder could not even read to its end.
        assert_error_reply(&s2c[pos..]);
        return ReplyShape {
            ok,
            error_at: Some(pos),
        };
    }
    ReplyShape { ok, error_at: None }
}

/// Requests decoded to their end (a PUT once its terminator is read).
fn complete_requests(events: &[Req]) -> usize {
    let mut n = 0;
    for e in events {
        match e {
            Req::Request(protocol::Request::Put(_)) | Req::Body(_) => {}
            Req::Request(_) | Req::End => n += 1,
        }
    }
    n
}

#[test]
fn replay_every_vector_against_one_fresh_server() {
    let vectors = load_vectors();
    let s = TestServer::start();
    for v in &vectors {
        let id = v.id;
        let (events, _) = decode_requests([v.c2s.as_slice()]);
        let shape = reply_shape(id, &v.s2c, &expects_of(&events));

        let x = s.exchange(&v.c2s);
        assert!(
            x.closed_cleanly(),
            "vector {id:04}: the server must close the connection cleanly: {:?}",
            x.end
        );
        if shape.error_at.is_none() {
            assert!(x.written.is_ok(), "vector {id:04}: {:?}", x.written);
        }
        for (i, r) in shape.ok.iter().enumerate() {
            assert!(
                x.reply.len() >= r.end,
                "vector {id:04}: reply {i} is missing ({} of {} bytes received)",
                x.reply.len(),
                v.s2c.len()
            );
            assert!(
                x.reply[r.clone()] == v.s2c[r.clone()],
                "vector {id:04}: reply {i} differs: got {:02x?}…, expected {:02x?}…",
                &x.reply[r.start..r.end.min(r.start + 48)],
                &v.s2c[r.start..r.end.min(r.start + 48)]
            );
        }
        match shape.error_at {
            None => assert_eq!(
                x.reply.len(),
                v.s2c.len(),
                "vector {id:04}: extra bytes after the last reply"
            ),
            Some(at) => {
                assert!(
                    x.reply.len() > at,
                    "vector {id:04}: expected an error reply at byte {at}, got nothing"
                );
                let msg = assert_error_reply(&x.reply[at..]);
                // Same kind of error as the Java server's: the messages open alike ("Cannot
                // find required BLOB …", "Unexpected key length 66"); paths differ.
                let java = protocol::java_error::message(&v.s2c[at + 5..]);
                let head = |m: &str| m.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
                assert_eq!(
                    head(&msg),
                    head(&java),
                    "vector {id:04}: ours {msg:?}, Java's {java:?}"
                );
            }
        }
    }
}

/// MANIFEST.tsv: id → whether the connection ends with an error reply.
fn manifest() -> std::collections::HashMap<u32, bool> {
    let path = vector_dir().join("MANIFEST.tsv");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .filter_map(|line| {
            let cols: Vec<&str> = line.split('\t').collect();
            let id = cols.first()?.parse::<u32>().ok()?;
            Some((id, cols.last()?.contains("error")))
        })
        .collect()
}

#[test]
fn reply_shapes_agree_with_the_manifest() {
    let manifest = manifest();
    let vectors = load_vectors();
    assert_eq!(manifest.len(), vectors.len(), "MANIFEST.tsv vs files");
    for v in vectors {
        let (events, _) = decode_requests([v.c2s.as_slice()]);
        let shape = reply_shape(v.id, &v.s2c, &expects_of(&events));
        assert_eq!(
            shape.error_at.is_some(),
            manifest[&v.id],
            "vector {:04}: error reply per MANIFEST.tsv",
            v.id
        );
        let requests = events
            .iter()
            .filter(|e| matches!(e, Req::Request(_)))
            .count();
        assert!(
            shape.ok.len() == requests || shape.error_at.is_some(),
            "vector {:04}: {} replies for {requests} requests",
            v.id,
            shape.ok.len()
        );
    }
}

#[test]
fn every_vector_decodes_up_to_its_expected_error() {
    for v in load_vectors() {
        let id = v.id;
        let (events, end) = decode_requests([v.c2s.as_slice()]);
        let shape = reply_shape(id, &v.s2c, &expects_of(&events));
        let ok = shape.ok.len();
        let done = complete_requests(&events);
        match (shape.error_at, &end) {
            // Every request read, every one answered with success.
            (None, Ok(())) => assert_eq!(done, ok, "vector {id:04}"),
            (None, Err(e)) => panic!("vector {id:04}: decode failed where none should: {e}"),
            // The failing request was read whole (a semantic error such as "not found")...
            (Some(_), Ok(())) => assert_eq!(done, ok + 1, "vector {id:04}"),
            // ...or the decoder itself refused it, but only after the successful ones.
            (Some(_), Err(_)) => assert_eq!(done, ok, "vector {id:04}: decode error too early"),
        }
        // The same events byte by byte.
        let (by_byte, end2) = decode_requests(v.c2s.chunks(1));
        assert_eq!(
            by_byte, events,
            "vector {id:04}: byte-by-byte events differ"
        );
        assert_eq!(end2, end, "vector {id:04}: byte-by-byte outcome differs");
    }
}

#[test]
fn an_absent_vectors_folder_fails_plainly() {
    let missing = vector_dir().join("no-such-folder");
    let err = std::panic::catch_unwind(|| load_vectors_from(&missing))
        .expect_err("loading from an absent folder must fail");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("is absent"), "{msg}");
}
