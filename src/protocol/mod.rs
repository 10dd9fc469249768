//! Flink 0.10's BLOB wire protocol, sans-IO: decoders fed byte slices and encoders that append to
//! a `Vec<u8>`. No sockets here; the server and client are loops around these types.
//! `../shared/PROTOCOL.md` is the byte-level reference (section numbers below point into it).

mod error;
pub mod java_error;
mod request;
mod response;

pub use error::{Op, ProtocolError};
pub use request::{
    DeleteTarget, PutTarget, Request, RequestDecoder, RequestEvent, encode_chunk, encode_delete,
    encode_get, encode_put_header, encode_terminator,
};
pub use response::{
    Expect, ResponseDecoder, ResponseEvent, encode_error, encode_get_header, encode_ok,
    encode_put_key,
};

/// Op byte of a PUT: the first byte of a request (§1).
pub const PUT_OPERATION: u8 = 0x00;
/// Op byte of a GET.
pub const GET_OPERATION: u8 = 0x01;
/// Op byte of a DELETE.
pub const DELETE_OPERATION: u8 = 0x02;
/// Status byte of a success: the first byte of a response.
pub const RETURN_OKAY: u8 = 0x00;
/// Status byte of a failure; a len32 and a Java-serialized `Throwable` follow (§5).
pub const RETURN_ERROR: u8 = 0x01;
/// Addressing byte: a blob by its 20-byte key (a PUT sends no key; the reply carries it).
pub const CONTENT_ADDRESSABLE: u8 = 0x00;
/// Addressing byte: a blob by JobID and name.
pub const NAME_ADDRESSABLE: u8 = 0x01;
/// Addressing byte: every named blob of a JobID. Valid only for DELETE.
pub const JOB_ID_SCOPE: u8 = 0x02;
/// Largest PUT chunk the server accepts; the chunk size clients send.
pub const MAX_CHUNK: usize = 65536;
/// A GET reply carries a signed 32-bit length, so no larger blob can travel.
pub const MAX_BLOB_LEN: u64 = i32::MAX as u64;
/// The chunk-stream terminator (len32 −1).
pub const TERMINATOR: i32 = -1;
