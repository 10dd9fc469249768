//! The client's response decoder on arbitrary bytes, including Java error payloads: never
//! panics, bounded memory, and the same events for any split.
#![no_main]

use blobvault::protocol::{Expect, ResponseDecoder, ResponseEvent, java_error};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq)]
enum Ev {
    Key([u8; 20]),
    Ok,
    Length(u32),
    Data(Vec<u8>),
    End,
    Error(String),
}

const EXPECTS: [Expect; 4] = [
    Expect::PutContent,
    Expect::PutNamed,
    Expect::Get,
    Expect::Delete,
];

/// Decodes a stream of responses, the n-th expected as `EXPECTS[selectors[n] % 4]`.
fn decode(input: &[u8], selectors: &[u8], step: usize) -> (Vec<Ev>, bool) {
    let mut evs = Vec::new();
    let mut n = 0;
    let mut dec = ResponseDecoder::new(EXPECTS[*selectors.first().unwrap_or(&2) as usize % 4]);
    let mut pos = 0;
    while pos < input.len() {
        let mut piece = &input[pos..(pos + step).min(input.len())];
        pos += piece.len();
        loop {
            if dec.is_done() {
                n += 1;
                let sel = selectors
                    .get(n % selectors.len().max(1))
                    .copied()
                    .unwrap_or(2);
                dec = ResponseDecoder::new(EXPECTS[sel as usize % 4]);
            }
            let (used, ev) = match dec.decode(piece) {
                Ok(r) => r,
                Err(_) => return (evs, false),
            };
            piece = &piece[used..];
            match ev {
                Some(ResponseEvent::Data(d)) => match evs.last_mut() {
                    Some(Ev::Data(b)) => b.extend_from_slice(d),
                    _ => evs.push(Ev::Data(d.to_vec())),
                },
                Some(ResponseEvent::Key(k)) => evs.push(Ev::Key(k.0)),
                Some(ResponseEvent::Ok) => evs.push(Ev::Ok),
                Some(ResponseEvent::Length(l)) => evs.push(Ev::Length(l)),
                Some(ResponseEvent::End) => evs.push(Ev::End),
                Some(ResponseEvent::Error(m)) => evs.push(Ev::Error(m)),
                None if piece.is_empty() => break,
                None => {}
            }
        }
    }
    (evs, dec.finish().is_ok())
}

fuzz_target!(|data: &[u8]| {
    let (selectors, input) = match data.split_first() {
        Some((&n, rest)) => rest.split_at((n as usize % 32).min(rest.len())),
        None => (&[][..], data),
    };
    let whole = decode(input, selectors, usize::MAX);
    assert_eq!(whole, decode(input, selectors, 1));
    assert_eq!(whole, decode(input, selectors, 7));
    // Any bytes as an error payload: a message or a description, never a panic.
    let _ = java_error::message(input);
});
