//! Responses (server → client): the server's encoders and the client's incremental decoder.

use super::error::{Field, Op, ProtocolError};
use super::java_error;
use super::*;
use crate::key::BlobKey;

/// The longest error payload the client keeps; the rest is read and dropped (Java stack traces
/// are about 1 KiB).
pub(crate) const MAX_ERROR_PAYLOAD_KEPT: usize = 64 * 1024;

/// Which reply the client waits for: the protocol's replies are not self-describing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// `00` + 20-byte key.
    PutContent,
    /// `00`.
    PutNamed,
    /// `00` + len32 + bytes.
    Get,
    /// `00`.
    Delete,
}

impl Expect {
    fn op(self) -> Op {
        match self {
            Expect::PutContent | Expect::PutNamed => Op::Put,
            Expect::Get => Op::Get,
            Expect::Delete => Op::Delete,
        }
    }
}

/// What the decoder recognised in a response. A GET yields `Length`, `Data` events (none for an
/// empty blob) and `End`; every other reply is one event.
#[derive(Debug, PartialEq, Eq)]
pub enum ResponseEvent<'a> {
    /// A content PUT succeeded with this key.
    Key(BlobKey),
    /// A named PUT or a DELETE succeeded.
    Ok,
    /// A GET succeeded; this many bytes follow.
    Length(u32),
    /// GET body bytes (a slice of the input).
    Data(&'a [u8]),
    /// The GET body is complete.
    End,
    /// The server answered `RETURN_ERROR`; the message is extracted from the Java payload.
    Error(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Status,
    Key,
    Length,
    Data(u32),
    ErrorLength,
    ErrorPayload(usize),
    Done,
    Failed,
}

/// Incremental decoder of one response.
#[derive(Debug, Clone)]
pub struct ResponseDecoder {
    expect: Expect,
    state: State,
    field: Field<20>,
    error_payload: Vec<u8>,
    error: Option<ProtocolError>,
}

impl ResponseDecoder {
    /// A decoder of the reply `expect` names. It decodes one response; make a new one per
    /// request.
    pub fn new(expect: Expect) -> Self {
        ResponseDecoder {
            expect,
            state: State::Status,
            field: Field::default(),
            error_payload: Vec::new(),
            error: None,
        }
    }

    /// True once the whole response has been decoded.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The stream ended before the response was complete.
    pub fn finish(&self) -> Result<(), ProtocolError> {
        let field = match self.state {
            State::Done => return Ok(()),
            State::Failed => {
                return Err(self
                    .error
                    .clone()
                    .unwrap_or(ProtocolError::UnknownStatus(0)));
            }
            State::Status => "status",
            State::Key => "BLOB key",
            State::Length | State::ErrorLength => "length",
            State::Data(_) => "BLOB data",
            State::ErrorPayload(_) => "error payload",
        };
        Err(ProtocolError::Truncated {
            op: self.expect.op(),
            side: "response",
            field,
        })
    }

    fn fail(&mut self, e: ProtocolError) -> ProtocolError {
        self.state = State::Failed;
        self.error = Some(e.clone());
        e
    }

    /// Decodes from `input`: `(consumed, Some(event))`, or `(input.len(), None)` for more.
    pub fn decode<'a>(
        &mut self,
        input: &'a [u8],
    ) -> Result<(usize, Option<ResponseEvent<'a>>), ProtocolError> {
        let mut pos = 0;
        loop {
            let rest = &input[pos..];
            match self.state {
                State::Done => return Ok((pos, None)),
                State::Failed => {
                    return Err(self
                        .finish()
                        .err()
                        .unwrap_or(ProtocolError::UnknownStatus(0)));
                }
                State::Data(0) => {
                    self.state = State::Done;
                    return Ok((pos, Some(ResponseEvent::End)));
                }
                State::Data(remaining) => {
                    if rest.is_empty() {
                        return Ok((pos, None));
                    }
                    let take = (remaining as usize).min(rest.len());
                    self.state = State::Data(remaining - take as u32);
                    return Ok((pos + take, Some(ResponseEvent::Data(&rest[..take]))));
                }
                State::ErrorPayload(remaining) => {
                    let take = remaining.min(rest.len());
                    let keep = take.min(MAX_ERROR_PAYLOAD_KEPT - self.error_payload.len());
                    self.error_payload.extend_from_slice(&rest[..keep]);
                    pos += take;
                    if take < remaining {
                        self.state = State::ErrorPayload(remaining - take);
                        return Ok((pos, None));
                    }
                    self.state = State::Done;
                    let msg = java_error::message(&self.error_payload);
                    self.error_payload = Vec::new();
                    return Ok((pos, Some(ResponseEvent::Error(msg))));
                }
                _ => {}
            }
            let want = match self.state {
                State::Status => 1,
                State::Key => 20,
                _ => 4,
            };
            let (used, done) = self.field.fill(rest, want);
            pos += used;
            if !done {
                return Ok((pos, None));
            }
            let event = self.field_complete()?;
            self.field.clear();
            if event.is_some() {
                return Ok((pos, event));
            }
        }
    }

    fn field_complete(&mut self) -> Result<Option<ResponseEvent<'static>>, ProtocolError> {
        match self.state {
            State::Status => match (self.field.bytes()[0], self.expect) {
                (RETURN_OKAY, Expect::PutContent) => self.state = State::Key,
                (RETURN_OKAY, Expect::Get) => self.state = State::Length,
                (RETURN_OKAY, _) => {
                    self.state = State::Done;
                    return Ok(Some(ResponseEvent::Ok));
                }
                (RETURN_ERROR, _) => self.state = State::ErrorLength,
                (other, _) => return Err(self.fail(ProtocolError::UnknownStatus(other))),
            },
            State::Key => {
                let mut k = [0u8; 20];
                k.copy_from_slice(self.field.bytes());
                self.state = State::Done;
                return Ok(Some(ResponseEvent::Key(BlobKey(k))));
            }
            State::Length => {
                let n = self.field.i32_le();
                if n < 0 {
                    return Err(self.fail(ProtocolError::NegativeResponseLength(n)));
                }
                self.state = State::Data(n as u32);
                return Ok(Some(ResponseEvent::Length(n as u32)));
            }
            State::ErrorLength => {
                let n = self.field.i32_le();
                if n < 0 {
                    return Err(self.fail(ProtocolError::NegativeResponseLength(n)));
                }
                self.error_payload = Vec::with_capacity((n as usize).min(MAX_ERROR_PAYLOAD_KEPT));
                self.state = State::ErrorPayload(n as usize);
            }
            _ => unreachable!("not a field state"),
        }
        Ok(None)
    }
}

/// Appends `RETURN_OKAY` (the reply to a named PUT and to every DELETE).
pub fn encode_ok(out: &mut Vec<u8>) {
    out.push(RETURN_OKAY);
}

/// Appends the reply to a content PUT.
pub fn encode_put_key(key: &BlobKey, out: &mut Vec<u8>) {
    out.push(RETURN_OKAY);
    out.extend_from_slice(&key.0);
}

/// Appends a GET reply header; `len` bytes of content must follow.
pub fn encode_get_header(len: u32, out: &mut Vec<u8>) {
    debug_assert!(len as u64 <= MAX_BLOB_LEN);
    out.push(RETURN_OKAY);
    out.extend_from_slice(&(len as i32).to_le_bytes());
}

/// Appends an error reply: `RETURN_ERROR`, len32, a serialized `java.io.IOException(message)`.
pub fn encode_error(message: &str, out: &mut Vec<u8>) {
    out.push(RETURN_ERROR);
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    java_error::encode(message, out);
    let n = (out.len() - at - 4) as i32;
    out[at..at + 4].copy_from_slice(&n.to_le_bytes());
}
