//! Requests (client → server): the server's incremental decoder and the client's encoders.

use super::error::{Field, Op, ProtocolError};
use super::*;
use crate::key::{BlobId, BlobKey, JobId, MAX_NAME_LEN};

/// Where a PUT body goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutTarget {
    /// Content-addressed: the reply carries the body's [`BlobKey`].
    Content,
    /// Stored under a job and a name (at most [`MAX_NAME_LEN`] bytes of UTF-8); the reply is a
    /// bare [`RETURN_OKAY`].
    Named(JobId, String),
}

/// What a DELETE removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteTarget {
    /// The content-addressed blob with this key.
    Content(BlobKey),
    /// One named blob of a job.
    Named(JobId, String),
    /// Every named blob of a job; content-addressed blobs are not touched (§4.7).
    Job(JobId),
}

/// A request header. A `Put` is followed by its body: `Chunk` events, then `End`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// A PUT header; its body follows.
    Put(PutTarget),
    /// A GET: the whole request.
    Get(BlobId),
    /// A DELETE: the whole request.
    Delete(DeleteTarget),
}

/// What the decoder recognised in the bytes it was given.
#[derive(Debug, PartialEq, Eq)]
pub enum RequestEvent<'a> {
    /// A complete request header.
    Request(Request),
    /// Body bytes of the current PUT: a slice of the input, not a copy. A wire chunk may arrive
    /// as several of these.
    Chunk(&'a [u8]),
    /// The PUT body's terminator.
    End,
}

/// Which field the decoder is collecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Op,
    Addressing(Op),
    Key(Op),
    Job(Op, u8),
    NameLen(Op),
    Name(Op, usize),
    ChunkLen,
    ChunkData(usize),
    Failed,
}

/// Incremental, allocation-bounded request decoder (server side). Feed it whatever arrived; it
/// returns how many bytes it consumed and at most one event. Any split of the same bytes yields
/// the same events.
#[derive(Debug, Clone)]
pub struct RequestDecoder {
    state: State,
    field: Field<MAX_NAME_LEN>,
    job: JobId,
    body_len: u64,
    error: Option<ProtocolError>,
}

impl Default for RequestDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestDecoder {
    /// A decoder waiting for the first request's op byte.
    pub fn new() -> Self {
        RequestDecoder {
            state: State::Op,
            field: Field::default(),
            job: JobId::default(),
            body_len: 0,
            error: None,
        }
    }

    /// True between requests with nothing half-read: an EOF here is a clean close.
    pub fn is_idle(&self) -> bool {
        self.state == State::Op
    }

    /// True while a PUT body is being decoded.
    pub fn in_body(&self) -> bool {
        matches!(self.state, State::ChunkLen | State::ChunkData(_))
    }

    /// The stream ended. `Ok` for a clean close between requests, else the truncation error.
    pub fn finish(&self) -> Result<(), ProtocolError> {
        let (op, field) = match self.state {
            State::Op => return Ok(()),
            State::Failed => return Err(self.failed()),
            State::Addressing(op) => (op, "request"),
            State::Key(op) => (op, "BLOB key"),
            State::Job(op, _) => (op, "JobID"),
            State::NameLen(op) => (op, "key length"),
            State::Name(op, _) => (op, "key"),
            State::ChunkLen => (Op::Put, "length"),
            State::ChunkData(_) => (Op::Put, "buffer"),
        };
        Err(ProtocolError::Truncated {
            op,
            side: "request",
            field,
        })
    }

    fn failed(&self) -> ProtocolError {
        self.error
            .clone()
            .unwrap_or(ProtocolError::UnknownOperation(0))
    }

    fn fail(&mut self, e: ProtocolError) -> ProtocolError {
        self.state = State::Failed;
        self.error = Some(e.clone());
        e
    }

    /// Decodes from `input`: `(consumed, Some(event))`, or `(input.len(), None)` when more bytes
    /// are needed. After an error the decoder stays failed.
    pub fn decode<'a>(
        &mut self,
        input: &'a [u8],
    ) -> Result<(usize, Option<RequestEvent<'a>>), ProtocolError> {
        let mut pos = 0;
        loop {
            let rest = &input[pos..];
            if let State::ChunkData(remaining) = self.state {
                if rest.is_empty() {
                    return Ok((pos, None));
                }
                let take = remaining.min(rest.len());
                self.state = if take == remaining {
                    State::ChunkLen
                } else {
                    State::ChunkData(remaining - take)
                };
                return Ok((pos + take, Some(RequestEvent::Chunk(&rest[..take]))));
            }
            let want = match self.state {
                State::Failed => return Err(self.failed()),
                State::Op | State::Addressing(_) => 1,
                State::Key(_) => BlobKey::LEN,
                State::Job(..) => JobId::LEN,
                State::NameLen(_) | State::ChunkLen => 4,
                State::Name(_, n) => n,
                State::ChunkData(_) => unreachable!("handled above"),
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

    /// A field is complete in `self.field`: move on, maybe yielding an event.
    fn field_complete(&mut self) -> Result<Option<RequestEvent<'static>>, ProtocolError> {
        let b = self.field.bytes();
        match self.state {
            State::Op => {
                let op = match b[0] {
                    PUT_OPERATION => Op::Put,
                    GET_OPERATION => Op::Get,
                    DELETE_OPERATION => Op::Delete,
                    other => return Err(self.fail(ProtocolError::UnknownOperation(other))),
                };
                self.state = State::Addressing(op);
                Ok(None)
            }
            State::Addressing(op) => {
                let byte = b[0];
                match (op, byte) {
                    (Op::Put, CONTENT_ADDRESSABLE) => {
                        self.body_len = 0;
                        self.state = State::ChunkLen;
                        return Ok(Some(RequestEvent::Request(Request::Put(
                            PutTarget::Content,
                        ))));
                    }
                    (_, CONTENT_ADDRESSABLE) => self.state = State::Key(op),
                    (_, NAME_ADDRESSABLE) | (Op::Delete, JOB_ID_SCOPE) => {
                        self.state = State::Job(op, byte)
                    }
                    _ => {
                        return Err(self.fail(ProtocolError::UnknownAddressing { op, byte }));
                    }
                }
                Ok(None)
            }
            State::Key(op) => {
                let mut k = [0u8; 20];
                k.copy_from_slice(b);
                let key = BlobKey(k);
                self.state = State::Op;
                Ok(Some(RequestEvent::Request(match op {
                    Op::Get => Request::Get(BlobId::Content(key)),
                    _ => Request::Delete(DeleteTarget::Content(key)),
                })))
            }
            State::Job(op, addressing) => {
                let mut j = [0u8; 16];
                j.copy_from_slice(b);
                self.job = JobId(j);
                if addressing == JOB_ID_SCOPE {
                    self.state = State::Op;
                    return Ok(Some(RequestEvent::Request(Request::Delete(
                        DeleteTarget::Job(self.job),
                    ))));
                }
                self.state = State::NameLen(op);
                Ok(None)
            }
            State::NameLen(op) => {
                let n = self.field.i32_le();
                if n < 0 {
                    return Err(self.fail(ProtocolError::NegativeNameLength(n)));
                }
                if n as usize > MAX_NAME_LEN {
                    return Err(self.fail(ProtocolError::NameTooLong(n)));
                }
                if n == 0 {
                    return Ok(Some(self.named(op, String::new())));
                }
                self.state = State::Name(op, n as usize);
                Ok(None)
            }
            State::Name(op, _) => match std::str::from_utf8(b) {
                Ok(name) => {
                    let name = name.to_owned();
                    Ok(Some(self.named(op, name)))
                }
                Err(_) => Err(self.fail(ProtocolError::InvalidName)),
            },
            State::ChunkLen => {
                let n = self.field.i32_le();
                if n == TERMINATOR {
                    self.state = State::Op;
                    return Ok(Some(RequestEvent::End));
                }
                if n < 0 {
                    return Err(self.fail(ProtocolError::NegativeChunkLength(n)));
                }
                if n as usize > MAX_CHUNK {
                    return Err(self.fail(ProtocolError::ChunkTooLarge(n)));
                }
                self.body_len += n as u64;
                if self.body_len > MAX_BLOB_LEN {
                    return Err(self.fail(ProtocolError::BlobTooLarge));
                }
                if n > 0 {
                    self.state = State::ChunkData(n as usize);
                }
                Ok(None)
            }
            State::ChunkData(_) | State::Failed => unreachable!("not a field state"),
        }
    }

    fn named(&mut self, op: Op, name: String) -> RequestEvent<'static> {
        let job = self.job;
        let req = match op {
            Op::Put => {
                self.body_len = 0;
                self.state = State::ChunkLen;
                Request::Put(PutTarget::Named(job, name))
            }
            Op::Get => {
                self.state = State::Op;
                Request::Get(BlobId::Named(job, name))
            }
            Op::Delete => {
                self.state = State::Op;
                Request::Delete(DeleteTarget::Named(job, name))
            }
        };
        RequestEvent::Request(req)
    }
}

fn put_len(out: &mut Vec<u8>, n: i32) {
    out.extend_from_slice(&n.to_le_bytes());
}

fn put_name(out: &mut Vec<u8>, job: &JobId, name: &str) {
    out.extend_from_slice(&job.0);
    put_len(out, name.len() as i32);
    out.extend_from_slice(name.as_bytes());
}

/// Appends a PUT header (op and addressing, plus job and name for a named PUT).
pub fn encode_put_header(target: &PutTarget, out: &mut Vec<u8>) {
    out.push(PUT_OPERATION);
    match target {
        PutTarget::Content => out.push(CONTENT_ADDRESSABLE),
        PutTarget::Named(job, name) => {
            out.push(NAME_ADDRESSABLE);
            put_name(out, job, name);
        }
    }
}

/// Appends one body chunk (`data.len()` must be ≤ [`MAX_CHUNK`]; empty chunks are legal).
pub fn encode_chunk(data: &[u8], out: &mut Vec<u8>) {
    debug_assert!(data.len() <= MAX_CHUNK);
    put_len(out, data.len() as i32);
    out.extend_from_slice(data);
}

/// Appends the body terminator.
pub fn encode_terminator(out: &mut Vec<u8>) {
    put_len(out, TERMINATOR);
}

/// Appends a GET request.
pub fn encode_get(id: &BlobId, out: &mut Vec<u8>) {
    out.push(GET_OPERATION);
    match id {
        BlobId::Content(key) => {
            out.push(CONTENT_ADDRESSABLE);
            out.extend_from_slice(&key.0);
        }
        BlobId::Named(job, name) => {
            out.push(NAME_ADDRESSABLE);
            put_name(out, job, name);
        }
    }
}

/// Appends a DELETE request.
pub fn encode_delete(target: &DeleteTarget, out: &mut Vec<u8>) {
    out.push(DELETE_OPERATION);
    match target {
        DeleteTarget::Content(key) => {
            out.push(CONTENT_ADDRESSABLE);
            out.extend_from_slice(&key.0);
        }
        DeleteTarget::Named(job, name) => {
            out.push(NAME_ADDRESSABLE);
            put_name(out, job, name);
        }
        DeleteTarget::Job(job) => {
            out.push(JOB_ID_SCOPE);
            out.extend_from_slice(&job.0);
        }
    }
}
