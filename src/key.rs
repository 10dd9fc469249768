//! Blob identities: `BlobKey` (content), `JobId` (Flink's `JobID`), blob names, `BlobId`.

use std::fmt;
use std::str::FromStr;

use sha1::{Digest, Sha1};

/// Longest name, in UTF-8 bytes, that the server accepts (Flink's `MAX_KEY_LENGTH`).
pub const MAX_NAME_LEN: usize = 64;

/// Why a key, job id or name could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// A hex id of the wrong length.
    #[error("expected {expected} hex characters, got {got}")]
    HexLength {
        /// Hex digits the id takes: 40 for a [`BlobKey`], 32 for a [`JobId`].
        expected: usize,
        /// Length of the input, in bytes.
        got: usize,
    },
    /// The first character that is not a hex digit (`0-9`, `a-f`, `A-F`). A non-ASCII byte shows
    /// as the `char` of the same value (U+0080 to U+00FF), not the character it belongs to.
    #[error("invalid hex character {0:?}")]
    HexDigit(char),
    /// A name longer than [`MAX_NAME_LEN`]; holds its length in UTF-8 bytes.
    #[error("blob name is {0} bytes of UTF-8; at most 64 are allowed")]
    NameTooLong(usize),
}

/// SHA-1 of a blob's content: its content address. Ordered by unsigned bytes, as Flink's.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct BlobKey(pub [u8; 20]);

impl BlobKey {
    /// Length of a key in bytes (40 hex digits).
    pub const LEN: usize = 20;

    /// The key of `data`.
    pub fn of(data: &[u8]) -> BlobKey {
        BlobKey(Sha1::digest(data).into())
    }

    /// The 20 digest bytes, as sent on the wire.
    pub fn as_bytes(&self) -> &[u8; 20] {
        &self.0
    }
}

/// Incremental SHA-1 producing a [`BlobKey`].
#[derive(Clone, Default)]
pub struct KeyHasher(Sha1);

impl fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyHasher")
    }
}

impl KeyHasher {
    /// A hasher that has seen no bytes yet.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds `data` to the bytes hashed so far.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }
    /// The key of all bytes given to [`update`](Self::update), in order.
    pub fn finish(self) -> BlobKey {
        BlobKey(self.0.finalize().into())
    }
}

/// A reader that hashes what passes through it.
#[derive(Debug)]
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: KeyHasher,
}

impl<R: std::io::Read> HashingReader<R> {
    /// Wraps `inner`; the hash starts empty.
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: KeyHasher::new(),
        }
    }

    /// The key of everything read so far.
    pub fn key(&self) -> BlobKey {
        self.hasher.clone().finish()
    }
}

impl<R: std::io::Read> std::io::Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Flink's `JobID`: `lowerPart` then `upperPart`, each a big-endian i64, on the wire and in hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct JobId(pub [u8; 16]);

impl JobId {
    /// Length of an id in bytes (32 hex digits).
    pub const LEN: usize = 16;

    /// The id with Flink's `lowerPart` and `upperPart`.
    pub fn from_parts(lower: i64, upper: i64) -> JobId {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&lower.to_be_bytes());
        b[8..].copy_from_slice(&upper.to_be_bytes());
        JobId(b)
    }

    /// Flink's `lowerPart`: the first 8 bytes, big-endian.
    pub fn lower_part(&self) -> i64 {
        i64::from_be_bytes(self.0[..8].try_into().unwrap_or_default())
    }

    /// Flink's `upperPart`: the last 8 bytes, big-endian.
    pub fn upper_part(&self) -> i64 {
        i64::from_be_bytes(self.0[8..].try_into().unwrap_or_default())
    }

    /// A random id (from the OS-seeded hasher keys std uses for `HashMap`).
    pub fn random() -> JobId {
        JobId::from_parts(random_u64() as i64, random_u64() as i64)
    }

    /// The 16 bytes as sent on the wire: `lowerPart` then `upperPart`.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

pub(crate) fn random_u64() -> u64 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

/// Checks a blob name against the server's rule: at most 64 bytes of UTF-8.
pub fn check_name(name: &str) -> Result<(), KeyError> {
    if name.len() > MAX_NAME_LEN {
        return Err(KeyError::NameTooLong(name.len()));
    }
    Ok(())
}

/// What a GET addresses: content by key, or a named blob of a job.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BlobId {
    /// Content-addressed: the blob a content PUT stored, whose SHA-1 is the key. Bytes stored
    /// only under names are not found this way.
    Content(BlobKey),
    /// The blob a job stored under a name (at most [`MAX_NAME_LEN`] bytes of UTF-8).
    Named(JobId, String),
}

impl fmt::Display for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlobId::Content(k) => write!(f, "{k}"),
            BlobId::Named(j, n) => write!(f, "{j}/{n:?}"),
        }
    }
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

fn parse_hex<const N: usize>(s: &str) -> Result<[u8; N], KeyError> {
    let s = s.as_bytes();
    if s.len() != 2 * N {
        return Err(KeyError::HexLength {
            expected: 2 * N,
            got: s.len(),
        });
    }
    let digit = |c: u8| -> Result<u8, KeyError> {
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err(KeyError::HexDigit(c as char)),
        }
    };
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = digit(s[2 * i])? << 4 | digit(s[2 * i + 1])?;
    }
    Ok(out)
}

macro_rules! hex_id {
    ($t:ty, $n:expr) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_hex(f, &self.0)
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}(", stringify!($t))?;
                write_hex(f, &self.0)?;
                write!(f, ")")
            }
        }
        impl FromStr for $t {
            type Err = KeyError;
            fn from_str(s: &str) -> Result<Self, KeyError> {
                parse_hex::<$n>(s).map(Self)
            }
        }
    };
}
hex_id!(BlobKey, 20);
hex_id!(JobId, 16);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha1_of_hello() {
        assert_eq!(
            BlobKey::of(b"hello").to_string(),
            "aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d"
        );
        let mut h = KeyHasher::new();
        h.update(b"he");
        h.update(b"llo");
        assert_eq!(h.finish(), BlobKey::of(b"hello"));
    }

    #[test]
    fn job_id_layout_matches_flink() {
        let j = JobId::from_parts(0x0102030405060708, 0x090a0b0c0d0e0f10);
        assert_eq!(j.to_string(), "0102030405060708090a0b0c0d0e0f10");
        assert_eq!(j.0[0], 1);
        assert_eq!(j.lower_part(), 0x0102030405060708);
        assert_eq!(j.upper_part(), 0x090a0b0c0d0e0f10);
        assert_eq!("0102030405060708090A0B0C0D0E0F10".parse::<JobId>(), Ok(j));
    }

    #[test]
    fn hex_errors() {
        assert_eq!(
            "abc".parse::<BlobKey>(),
            Err(KeyError::HexLength {
                expected: 40,
                got: 3
            })
        );
        assert_eq!(
            "zz".repeat(20).parse::<BlobKey>(),
            Err(KeyError::HexDigit('z'))
        );
    }

    #[test]
    fn random_job_ids_differ() {
        assert_ne!(JobId::random(), JobId::random());
    }

    #[test]
    fn name_limit_counts_utf8_bytes() {
        assert!(check_name(&"k".repeat(64)).is_ok());
        assert_eq!(check_name(&"é".repeat(33)), Err(KeyError::NameTooLong(66)));
    }
}
