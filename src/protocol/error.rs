use std::fmt;

/// The three operations, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A PUT ([`PUT_OPERATION`](super::PUT_OPERATION)).
    Put,
    /// A GET ([`GET_OPERATION`](super::GET_OPERATION)).
    Get,
    /// A DELETE ([`DELETE_OPERATION`](super::DELETE_OPERATION)).
    Delete,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Put => "PUT",
            Op::Get => "GET",
            Op::Delete => "DELETE",
        })
    }
}

/// A broken protocol rule. `Display` gives the message the original server sent, where it had one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The server closes the connection without a reply (§3).
    #[error("Unknown operation {0}")]
    UnknownOperation(u8),
    /// An addressing byte the operation does not take: PUT and GET take content or name, DELETE
    /// also job scope (§4.8). The message differs for DELETE, as the original server's did.
    #[error("{}", unknown_addressing(*.op, *.byte))]
    UnknownAddressing {
        /// The request's operation.
        op: Op,
        /// The addressing byte received.
        byte: u8,
    },
    /// A name length above [`MAX_NAME_LEN`](crate::key::MAX_NAME_LEN) bytes; holds the length
    /// received.
    #[error("Unexpected key length {0}")]
    NameTooLong(i32),
    /// A negative name length; holds it.
    #[error("Negative key length {0}")]
    NegativeNameLength(i32),
    /// Name bytes that are not valid UTF-8 (the original server replaced them with U+FFFD).
    #[error("Key name is not valid UTF-8")]
    InvalidName,
    /// A PUT chunk length above [`MAX_CHUNK`](super::MAX_CHUNK); holds the length received.
    #[error("Unexpected number of incoming bytes: {0}")]
    ChunkTooLarge(i32),
    /// A negative PUT chunk length other than the terminator (−1); holds it.
    #[error("Negative chunk length {0}: only -1 ends a body")]
    NegativeChunkLength(i32),
    /// A PUT body longer than [`MAX_BLOB_LEN`](super::MAX_BLOB_LEN), which no GET reply could
    /// carry. Raised at the chunk length that crosses it, before its bytes are read.
    #[error("BLOB size exceeds the maximum size (2 GB).")]
    BlobTooLarge,
    /// The stream ended inside a request or response.
    #[error("Premature end of {op} {side} ({field} incomplete)")]
    Truncated {
        /// The operation that was cut short.
        op: Op,
        /// `"request"` or `"response"`.
        side: &'static str,
        /// The field being read when the stream ended, e.g. `"BLOB key"` or `"length"`.
        field: &'static str,
    },
    /// A response status byte other than [`RETURN_OKAY`](super::RETURN_OKAY) and
    /// [`RETURN_ERROR`](super::RETURN_ERROR); holds it.
    #[error("Unexpected response status byte {0}")]
    UnknownStatus(u8),
    /// A negative GET length or error-payload length in a response; holds it.
    #[error("Negative length {0} in response")]
    NegativeResponseLength(i32),
}

fn unknown_addressing(op: Op, byte: u8) -> String {
    match op {
        Op::Delete => format!("Unrecognized addressing type: {byte}"),
        _ => "Unknown type of BLOB addressing.".to_string(),
    }
}

/// Accumulates a fixed-size field that may arrive split across several inputs.
#[derive(Debug, Clone)]
pub(crate) struct Field<const N: usize> {
    buf: [u8; N],
    have: usize,
}

impl<const N: usize> Default for Field<N> {
    fn default() -> Self {
        Field {
            buf: [0; N],
            have: 0,
        }
    }
}

impl<const N: usize> Field<N> {
    /// Takes up to `want` bytes (≤ N) from `input`; returns bytes consumed and whether complete.
    pub(crate) fn fill(&mut self, input: &[u8], want: usize) -> (usize, bool) {
        let take = (want - self.have).min(input.len());
        self.buf[self.have..self.have + take].copy_from_slice(&input[..take]);
        self.have += take;
        (take, self.have == want)
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buf[..self.have]
    }

    pub(crate) fn clear(&mut self) {
        self.have = 0;
    }

    pub(crate) fn i32_le(&self) -> i32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.buf[..4]);
        i32::from_le_bytes(b)
    }
}
