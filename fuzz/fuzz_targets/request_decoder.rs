//! The server's request decoder on arbitrary bytes: never panics, and any split of the same
//! bytes decodes to the same events (body chunks compared as one concatenated body).
#![no_main]

use blobvault::protocol::{ProtocolError, Request, RequestDecoder, RequestEvent};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq)]
enum Ev {
    Request(Request),
    Body(Vec<u8>),
    End,
}

/// Decodes `input` fed in pieces whose sizes come from `sizes` (cycled; 0 means "all").
fn decode(input: &[u8], sizes: &[u8]) -> (Vec<Ev>, Option<ProtocolError>, bool) {
    let mut dec = RequestDecoder::new();
    let mut evs = Vec::new();
    let mut pos = 0;
    let mut i = 0;
    while pos < input.len() {
        let step = match sizes.get(i % sizes.len().max(1)) {
            Some(&s) if s > 0 => s as usize,
            _ => input.len(),
        };
        i += 1;
        let mut piece = &input[pos..(pos + step).min(input.len())];
        pos += piece.len();
        while !piece.is_empty() {
            match dec.decode(piece) {
                Ok((used, ev)) => {
                    assert!(used <= piece.len());
                    assert!(used > 0 || ev.is_some(), "no progress");
                    piece = &piece[used..];
                    match ev {
                        Some(RequestEvent::Chunk(d)) => {
                            assert!(!d.is_empty());
                            match evs.last_mut() {
                                Some(Ev::Body(b)) => b.extend_from_slice(d),
                                _ => evs.push(Ev::Body(d.to_vec())),
                            }
                        }
                        Some(RequestEvent::Request(r)) => evs.push(Ev::Request(r)),
                        Some(RequestEvent::End) => evs.push(Ev::End),
                        None => {}
                    }
                }
                Err(e) => return (evs, Some(e), false),
            }
        }
    }
    let clean = dec.finish().is_ok();
    (evs, None, clean)
}

fuzz_target!(|data: &[u8]| {
    // The first byte sets how many split-size bytes follow; the rest is the stream.
    let (sizes, input) = match data.split_first() {
        Some((&n, rest)) => rest.split_at((n as usize % 16).min(rest.len())),
        None => (&[][..], data),
    };
    let whole = decode(input, &[]);
    let split = decode(input, sizes);
    let bytewise = decode(input, &[1]);
    assert_eq!(whole, split);
    assert_eq!(whole, bytewise);
});
