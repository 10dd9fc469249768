//! `BlobClient`: the client side of the protocol over one TCP connection, like Flink's.
//!
//! As in the original, any failure closes the client; later calls fail with
//! [`ClientError::NotConnected`]. A name that breaks the length rule, or a range outside the
//! data given, is refused before anything is sent and leaves the connection open.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use crate::key::{BlobId, BlobKey, JobId, KeyHasher, check_name};
use crate::protocol::{
    self, DeleteTarget, Expect, MAX_CHUNK, ProtocolError, PutTarget, ResponseDecoder, ResponseEvent,
};
use crate::tls::{ClientTls, Stream};

/// Errors of [`BlobClient`].
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The client is closed, by [`BlobClient::close`] or after an earlier failure. Nothing was
    /// sent; connect again.
    #[error("BLOB client is not connected (closed after an earlier failure)")]
    NotConnected,
    /// The server answered with an error reply. The server closes the connection after one, so
    /// the client is closed too.
    #[error("{op} operation failed: Server side error: {message}")]
    Server {
        /// `"PUT"`, `"GET"` or `"DELETE"`.
        op: &'static str,
        /// The server's message, read from its Java-serialized exception.
        message: String,
    },
    /// A socket read or write failed (a timeout included), a PUT's reader failed mid-body, or
    /// the reply did not fit the request (`InvalidData`). The client is closed.
    #[error("{op} operation failed: {source}")]
    Io {
        /// `"PUT"`, `"GET"` or `"DELETE"`.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The reply broke the protocol, or the server closed the connection before it was complete
    /// ([`ProtocolError::Truncated`]). The client is closed.
    #[error("{op} operation failed: {source}")]
    Protocol {
        /// `"PUT"`, `"GET"` or `"DELETE"`.
        op: &'static str,
        /// The broken rule.
        #[source]
        source: ProtocolError,
    },
    /// The bytes do not match their key: after a PUT, the server returned another key than the
    /// client computed; after a GET by key, the bytes received hash to another key. The client is
    /// closed.
    #[error(
        "{op} operation failed: Detected data corruption during transfer (expected {expected}, got {actual})"
    )]
    Corrupted {
        /// `"PUT"` or `"GET"`.
        op: &'static str,
        /// The key the client computed (PUT) or asked for (GET).
        expected: BlobKey,
        /// The key the server returned (PUT) or the key of the bytes received (GET).
        actual: BlobKey,
    },
    /// A name longer than [`MAX_NAME_LEN`](crate::key::MAX_NAME_LEN) bytes: refused before
    /// anything is sent; the connection stays open.
    #[error("invalid name: {0}")]
    Name(#[from] crate::key::KeyError),
    /// `offset + len` reaches past the data given to a `*_range` call: refused before anything is
    /// sent; the connection stays open.
    #[error("range {offset}+{len} is outside the {size} bytes given")]
    Range {
        /// The offset asked for.
        offset: usize,
        /// The length asked for.
        len: usize,
        /// Length of the data given.
        size: usize,
    },
    /// [`BlobClient::put_file`] could not open the file: nothing was sent; the connection stays
    /// open. A read failure after the upload started is [`ClientError::Io`].
    #[error("cannot read {path}: {source}")]
    File {
        /// The path, as given.
        path: String,
        /// The error opening it.
        source: io::Error,
    },
}

impl ClientError {
    /// The server's message when the server answered with an error.
    pub fn server_message(&self) -> Option<&str> {
        match self {
            ClientError::Server { message, .. } => Some(message),
            _ => None,
        }
    }
}

const READ_BUF: usize = 64 * 1024;
/// Most a download reserves up front on the strength of the announced length.
const PREALLOC_LIMIT: u64 = 16 * 1024 * 1024;
const WRITE_BUF: usize = 256 * 1024;

/// One connection to a BLOB server, carrying any number of requests in sequence.
#[derive(Debug)]
pub struct BlobClient {
    stream: Option<Stream>,
    addr: SocketAddr,
    out: Vec<u8>,
    rbuf: Box<[u8]>,
    rpos: usize,
    rlen: usize,
}

impl BlobClient {
    /// Connects (with TCP_NODELAY on: a request is written whole, so Nagle only adds delay).
    pub fn connect(addr: impl ToSocketAddrs) -> io::Result<BlobClient> {
        Self::connect_stream(Stream::Plain(TcpStream::connect(addr)?))
    }

    /// Connects with a timeout on the connect and on every read and write.
    pub fn connect_timeout(addr: &SocketAddr, timeout: Duration) -> io::Result<BlobClient> {
        Self::connect_with(addr, None, Some(timeout))
    }

    /// Connects over TLS (the server's certificate checked against `tls`'s CA, by the name it
    /// was given or else `addr`'s IP address), with an optional timeout on the connect, the
    /// handshake and every read and write. The handshake runs here: a server that cannot be
    /// trusted fails the connect, with the reason and what to do.
    pub fn connect_tls(
        addr: &SocketAddr,
        tls: &ClientTls,
        timeout: Option<Duration>,
    ) -> io::Result<BlobClient> {
        Self::connect_with(addr, Some(tls), timeout)
    }

    /// Connects in plaintext or, given `tls`, over TLS (see [`connect_tls`](Self::connect_tls)).
    pub fn connect_with(
        addr: &SocketAddr,
        tls: Option<&ClientTls>,
        timeout: Option<Duration>,
    ) -> io::Result<BlobClient> {
        let tcp = match timeout {
            Some(t) => TcpStream::connect_timeout(addr, t)?,
            None => TcpStream::connect(addr)?,
        };
        tcp.set_read_timeout(timeout)?;
        tcp.set_write_timeout(timeout)?;
        let _ = tcp.set_nodelay(true);
        let stream = match tls {
            Some(t) => t.connect(tcp, addr)?,
            None => Stream::Plain(tcp),
        };
        let mut c = Self::connect_stream(stream)?;
        c.addr = *addr;
        Ok(c)
    }

    fn connect_stream(stream: Stream) -> io::Result<BlobClient> {
        let _ = stream.tcp().set_nodelay(true);
        let addr = stream.tcp().peer_addr()?;
        Ok(BlobClient {
            stream: Some(stream),
            addr,
            out: Vec::with_capacity(WRITE_BUF + MAX_CHUNK + 64),
            rbuf: vec![0u8; READ_BUF].into_boxed_slice(),
            rpos: 0,
            rlen: 0,
        })
    }

    /// The server's address (the connection's peer); kept after the client is closed.
    pub fn server_addr(&self) -> SocketAddr {
        self.addr
    }

    /// False once the client is closed, by [`close`](Self::close) or a failure; every request then
    /// fails with [`ClientError::NotConnected`].
    pub fn is_connected(&self) -> bool {
        self.stream.is_some()
    }

    /// Closes the connection.
    pub fn close(&mut self) {
        self.stream = None;
    }

    /// Stores `data` by content; returns its key (checked against our own SHA-1).
    pub fn put(&mut self, data: &[u8]) -> Result<BlobKey, ClientError> {
        self.put_reader(data)
    }

    /// Stores `data[offset..offset + len]` by content.
    pub fn put_range(
        &mut self,
        data: &[u8],
        offset: usize,
        len: usize,
    ) -> Result<BlobKey, ClientError> {
        self.put(range(data, offset, len)?)
    }

    /// Stores what `reader` yields by content, streaming it.
    pub fn put_reader(&mut self, reader: impl Read) -> Result<BlobKey, ClientError> {
        let key = self.send_put(PutTarget::Content, reader)?;
        match self.finish("PUT", Expect::PutContent)? {
            Some(got) if got == key => Ok(key),
            Some(got) => {
                self.close();
                Err(ClientError::Corrupted {
                    op: "PUT",
                    expected: key,
                    actual: got,
                })
            }
            None => Err(self.unexpected("PUT")),
        }
    }

    /// Stores a file by content.
    pub fn put_file(&mut self, path: &Path) -> Result<BlobKey, ClientError> {
        let f = File::open(path).map_err(|e| ClientError::File {
            path: path.display().to_string(),
            source: e,
        })?;
        self.put_reader(io::BufReader::with_capacity(MAX_CHUNK, f))
    }

    /// Stores `data` under `(job, name)`, replacing what was there.
    pub fn put_named(&mut self, job: JobId, name: &str, data: &[u8]) -> Result<(), ClientError> {
        self.put_named_reader(job, name, data)
    }

    /// Stores `data[offset..offset + len]` under `(job, name)`.
    pub fn put_named_range(
        &mut self,
        job: JobId,
        name: &str,
        data: &[u8],
        offset: usize,
        len: usize,
    ) -> Result<(), ClientError> {
        self.put_named(job, name, range(data, offset, len)?)
    }

    /// Stores what `reader` yields under `(job, name)`.
    pub fn put_named_reader(
        &mut self,
        job: JobId,
        name: &str,
        reader: impl Read,
    ) -> Result<(), ClientError> {
        check_name(name)?;
        self.send_put(PutTarget::Named(job, name.to_owned()), reader)?;
        self.finish("PUT", Expect::PutNamed).map(|_| ())
    }

    /// Opens a download of content blob `key`; its bytes are checked against the key at the end.
    pub fn get(&mut self, key: BlobKey) -> Result<Download<'_>, ClientError> {
        self.start_get(BlobId::Content(key))
    }

    /// Opens a download of a named blob.
    pub fn get_named(&mut self, job: JobId, name: &str) -> Result<Download<'_>, ClientError> {
        check_name(name)?;
        self.start_get(BlobId::Named(job, name.to_owned()))
    }

    /// Downloads a whole blob into memory.
    pub fn get_bytes(&mut self, id: &BlobId) -> Result<Vec<u8>, ClientError> {
        let mut d = self.start_get(id.clone())?;
        // The length is the server's word: reserve a bounded amount, let the rest grow as it comes.
        let mut out = Vec::with_capacity(d.len().min(PREALLOC_LIMIT) as usize);
        d.read_to_end(&mut out).map_err(|e| d.error_of(e))?;
        Ok(out)
    }

    /// Deletes content blob `key`; named blobs with the same bytes keep them. Deleting a blob that
    /// is not stored succeeds.
    pub fn delete(&mut self, key: BlobKey) -> Result<(), ClientError> {
        self.send_delete(DeleteTarget::Content(key))
    }

    /// Deletes the blob `name` of `job`. Deleting a blob that is not stored succeeds.
    pub fn delete_named(&mut self, job: JobId, name: &str) -> Result<(), ClientError> {
        check_name(name)?;
        self.send_delete(DeleteTarget::Named(job, name.to_owned()))
    }

    /// Deletes every named blob of `job` (content blobs are not touched).
    pub fn delete_job(&mut self, job: JobId) -> Result<(), ClientError> {
        self.send_delete(DeleteTarget::Job(job))
    }

    fn stream(&mut self) -> Result<&mut Stream, ClientError> {
        self.stream.as_mut().ok_or(ClientError::NotConnected)
    }

    fn io_err(&mut self, op: &'static str, e: io::Error) -> ClientError {
        self.close();
        ClientError::Io { op, source: e }
    }

    fn flush_out(&mut self, op: &'static str) -> Result<(), ClientError> {
        let r = match self.stream.as_mut() {
            Some(s) => s.write_all(&self.out),
            None => return Err(ClientError::NotConnected),
        };
        self.out.clear();
        r.map_err(|e| self.io_err(op, e))
    }

    /// Sends a PUT; returns the SHA-1 of what was sent.
    fn send_put(
        &mut self,
        target: PutTarget,
        mut reader: impl Read,
    ) -> Result<BlobKey, ClientError> {
        self.stream()?;
        self.out.clear();
        protocol::encode_put_header(&target, &mut self.out);
        let mut hasher = KeyHasher::new();
        let mut chunk = vec![0u8; MAX_CHUNK];
        loop {
            let n = match fill(&mut reader, &mut chunk) {
                Ok(n) => n,
                Err(e) => {
                    // The server holds half a body: the connection is unusable.
                    return Err(self.io_err("PUT", e));
                }
            };
            if n == 0 {
                break;
            }
            hasher.update(&chunk[..n]);
            protocol::encode_chunk(&chunk[..n], &mut self.out);
            if self.out.len() >= WRITE_BUF {
                self.flush_out("PUT")?;
            }
        }
        protocol::encode_terminator(&mut self.out);
        self.flush_out("PUT")?;
        Ok(hasher.finish())
    }

    fn send_delete(&mut self, target: DeleteTarget) -> Result<(), ClientError> {
        self.stream()?;
        self.out.clear();
        protocol::encode_delete(&target, &mut self.out);
        self.flush_out("DELETE")?;
        self.finish("DELETE", Expect::Delete).map(|_| ())
    }

    fn start_get(&mut self, id: BlobId) -> Result<Download<'_>, ClientError> {
        // Refused before anything is sent, so the connection stays usable (also via `get_bytes`).
        if let BlobId::Named(_, name) = &id {
            check_name(name)?;
        }
        self.stream()?;
        self.out.clear();
        protocol::encode_get(&id, &mut self.out);
        self.flush_out("GET")?;
        let mut dec = ResponseDecoder::new(Expect::Get);
        let len = match self.next_event(&mut dec, "GET", usize::MAX)? {
            Event::Length(n) => n,
            Event::Error(message) => {
                self.close();
                return Err(ClientError::Server { op: "GET", message });
            }
            _ => return Err(self.unexpected("GET")),
        };
        let expected = match id {
            BlobId::Content(k) => Some(k),
            BlobId::Named(..) => None,
        };
        Ok(Download {
            client: self,
            dec,
            len: len as u64,
            remaining: len as u64,
            expected,
            hasher: KeyHasher::new(),
            done: false,
        })
    }

    /// Reads the reply of a PUT or DELETE.
    fn finish(&mut self, op: &'static str, expect: Expect) -> Result<Option<BlobKey>, ClientError> {
        let mut dec = ResponseDecoder::new(expect);
        match self.next_event(&mut dec, op, usize::MAX)? {
            Event::Key(k) => Ok(Some(k)),
            Event::Ok => Ok(None),
            Event::Error(message) => {
                self.close();
                Err(ClientError::Server { op, message })
            }
            Event::Length(_) | Event::Data(..) | Event::End => Err(self.unexpected(op)),
        }
    }

    /// A reply the decoder should never have produced for this request: the connection's state
    /// is unknown, so it is closed.
    fn unexpected(&mut self, op: &'static str) -> ClientError {
        self.close();
        ClientError::Io {
            op,
            source: io::Error::new(io::ErrorKind::InvalidData, "unexpected reply"),
        }
    }

    /// Decodes the next event, reading from the socket as needed. `Data` is returned as a range
    /// of `rbuf` of at most `limit` bytes.
    fn next_event(
        &mut self,
        dec: &mut ResponseDecoder,
        op: &'static str,
        limit: usize,
    ) -> Result<Event, ClientError> {
        loop {
            let end = self.rlen.min(self.rpos.saturating_add(limit));
            let input = &self.rbuf[self.rpos..end];
            let (used, ev) = match dec.decode(input) {
                Ok(r) => r,
                Err(e) => {
                    self.close();
                    return Err(ClientError::Protocol { op, source: e });
                }
            };
            let start = self.rpos;
            self.rpos += used;
            if let Some(ev) = ev {
                return Ok(match ev {
                    ResponseEvent::Key(k) => Event::Key(k),
                    ResponseEvent::Ok => Event::Ok,
                    ResponseEvent::Length(n) => Event::Length(n),
                    ResponseEvent::Data(d) => Event::Data(start, start + d.len()),
                    ResponseEvent::End => Event::End,
                    ResponseEvent::Error(m) => Event::Error(m),
                });
            }
            if self.rpos < self.rlen {
                if limit == 0 {
                    return Err(ClientError::NotConnected);
                }
                continue;
            }
            let n = match self.stream.as_mut() {
                Some(s) => loop {
                    match s.read(&mut self.rbuf) {
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        r => break r,
                    }
                },
                None => return Err(ClientError::NotConnected),
            };
            match n {
                Ok(0) => {
                    let e = dec
                        .finish()
                        .err()
                        .unwrap_or(ProtocolError::UnknownStatus(0));
                    self.close();
                    return Err(ClientError::Protocol { op, source: e });
                }
                Ok(n) => {
                    self.rpos = 0;
                    self.rlen = n;
                }
                Err(e) => return Err(self.io_err(op, e)),
            }
        }
    }
}

/// Decoder events with data as a range of the client's read buffer.
enum Event {
    Key(BlobKey),
    Ok,
    Length(u32),
    Data(usize, usize),
    End,
    Error(String),
}

/// `data[offset..offset + len]`, or an error (sending nothing) when that is out of bounds.
fn range(data: &[u8], offset: usize, len: usize) -> Result<&[u8], ClientError> {
    offset
        .checked_add(len)
        .and_then(|end| data.get(offset..end))
        .ok_or(ClientError::Range {
            offset,
            len,
            size: data.len(),
        })
}

/// Reads until `buf` is full or the reader ends: full chunks make fewer, larger frames.
fn fill(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A GET in progress: `Read` it to the end. A content blob is checked against its key when the
/// last byte arrives; dropping a download early closes the client (the reply cannot be skipped).
#[derive(Debug)]
pub struct Download<'c> {
    client: &'c mut BlobClient,
    dec: ResponseDecoder,
    len: u64,
    remaining: u64,
    expected: Option<BlobKey>,
    hasher: KeyHasher,
    done: bool,
}

impl Download<'_> {
    /// Length of the blob.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for an empty blob (`len() == 0`).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Turns an error from `read` back into the client error it carries.
    pub fn error_of(&self, e: io::Error) -> ClientError {
        match e.downcast::<ClientError>() {
            Ok(ce) => ce,
            Err(e) => ClientError::Io {
                op: "GET",
                source: e,
            },
        }
    }

    fn verify(&mut self) -> Result<(), ClientError> {
        let actual = std::mem::take(&mut self.hasher).finish();
        if let Some(expected) = self.expected
            && expected != actual
        {
            self.client.close();
            return Err(ClientError::Corrupted {
                op: "GET",
                expected,
                actual,
            });
        }
        Ok(())
    }
}

impl Read for Download<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        match self
            .client
            .next_event(&mut self.dec, "GET", buf.len())
            .map_err(io::Error::other)?
        {
            Event::Data(a, b) => {
                let n = b - a;
                buf[..n].copy_from_slice(&self.client.rbuf[a..b]);
                self.hasher.update(&buf[..n]);
                self.remaining -= n as u64;
                Ok(n)
            }
            Event::End => {
                self.done = true;
                self.verify().map_err(io::Error::other)?;
                Ok(0)
            }
            _ => Err(io::Error::other(self.client.unexpected("GET"))),
        }
    }
}

impl Drop for Download<'_> {
    fn drop(&mut self) {
        if !self.done && self.remaining > 0 {
            // The rest of the body is still in flight: the connection cannot carry another request.
            self.client.close();
        } else if !self.done {
            // Zero bytes left: consume the end marker so the connection stays usable.
            let _ = self.client.next_event(&mut self.dec, "GET", 0);
        }
    }
}
