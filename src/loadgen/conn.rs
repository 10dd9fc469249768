//! The generator's client: the wire protocol over a socket, lean by default (no hashing unless
//! `--verify`), or written the way Flink's Java `BlobClient` writes (`--java-client`).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::Rng;
use crate::key::{BlobId, BlobKey, JobId, KeyHasher};
use crate::protocol::{
    self, CONTENT_ADDRESSABLE, DeleteTarget, Expect, MAX_CHUNK, NAME_ADDRESSABLE, PUT_OPERATION,
    PutTarget, ResponseDecoder, ResponseEvent,
};
use crate::tls::{ClientTls, Stream};

pub(super) const CLIENT_BUF: usize = 256 * 1024;

/// The generator's client: the sans-IO codec over a socket, without hashing by default.
pub(super) struct Conn {
    stream: Stream,
    java: bool,
    out: Vec<u8>,
    piece: Vec<u8>,
    rbuf: Box<[u8]>,
    rpos: usize,
    rlen: usize,
}

/// What a reply carried.
enum Reply {
    Key(BlobKey),
    Ok,
    Body(u64),
}

impl Conn {
    pub(super) fn connect(
        addr: SocketAddr,
        java: bool,
        tls: Option<&ClientTls>,
    ) -> io::Result<Conn> {
        let tcp = TcpStream::connect(addr)?;
        if !java {
            tcp.set_nodelay(true)?;
        }
        tcp.set_read_timeout(Some(Duration::from_secs(120)))?;
        tcp.set_write_timeout(Some(Duration::from_secs(120)))?;
        let stream = match tls {
            Some(t) => t.connect(tcp, &addr)?,
            None => Stream::Plain(tcp),
        };
        Ok(Conn {
            stream,
            java,
            out: Vec::with_capacity(CLIENT_BUF + MAX_CHUNK + 64),
            piece: vec![0u8; MAX_CHUNK],
            rbuf: vec![0u8; CLIENT_BUF].into_boxed_slice(),
            rpos: 0,
            rlen: 0,
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out)?;
            self.out.clear();
        }
        Ok(())
    }

    /// In Java-client mode: one `write` per field, as `BlobClient` does with an unbuffered
    /// socket stream.
    fn java_write(&mut self, field: &[u8]) -> io::Result<()> {
        self.stream.write_all(field)
    }

    fn java_name(&mut self, job: &JobId, name: &str) -> io::Result<()> {
        self.java_write(&job.0)?;
        self.java_write(&(name.len() as i32).to_le_bytes())?;
        self.java_write(name.as_bytes())
    }

    /// PUTs `size` bytes from `rng`; returns the key (the server's, or with `hash` our own
    /// SHA-1 of what was sent, checked against the server's).
    pub(super) fn put(
        &mut self,
        target: &PutTarget,
        size: u64,
        mut rng: Rng,
        hash: bool,
    ) -> io::Result<Option<BlobKey>> {
        let mut hasher = hash.then(KeyHasher::new);
        self.out.clear();
        if self.java {
            self.java_write(&[PUT_OPERATION])?;
            match target {
                PutTarget::Content => self.java_write(&[CONTENT_ADDRESSABLE])?,
                PutTarget::Named(job, name) => {
                    self.java_write(&[NAME_ADDRESSABLE])?;
                    self.java_name(job, name)?;
                }
            }
        } else {
            protocol::encode_put_header(target, &mut self.out);
        }
        let mut left = size;
        while left > 0 {
            let n = left.min(MAX_CHUNK as u64) as usize;
            let mut piece = std::mem::take(&mut self.piece);
            rng.fill(&mut piece[..n]);
            if let Some(h) = hasher.as_mut() {
                h.update(&piece[..n]);
            }
            let r = if self.java {
                self.java_write(&(n as i32).to_le_bytes())
                    .and_then(|_| self.java_write(&piece[..n]))
            } else {
                protocol::encode_chunk(&piece[..n], &mut self.out);
                if self.out.len() >= CLIENT_BUF {
                    self.flush()
                } else {
                    Ok(())
                }
            };
            self.piece = piece;
            r?;
            left -= n as u64;
        }
        if self.java {
            self.java_write(&protocol::TERMINATOR.to_le_bytes())?;
        } else {
            protocol::encode_terminator(&mut self.out);
            self.flush()?;
        }
        let expect = match target {
            PutTarget::Content => Expect::PutContent,
            PutTarget::Named(..) => Expect::PutNamed,
        };
        let ours = hasher.map(KeyHasher::finish);
        match self.reply(expect, |_| {})? {
            Reply::Key(k) => match ours {
                Some(o) if o != k => Err(io::Error::other(format!(
                    "server answered key {k}, we sent {o}"
                ))),
                _ => Ok(Some(k)),
            },
            _ => Ok(ours),
        }
    }

    /// GETs `id`; returns the body length. With `check`, the body's SHA-1 must equal it.
    pub(super) fn get(&mut self, id: &BlobId, check: Option<BlobKey>) -> io::Result<u64> {
        self.out.clear();
        if self.java {
            self.java_write(&[protocol::GET_OPERATION])?;
            match id {
                BlobId::Content(k) => {
                    self.java_write(&[CONTENT_ADDRESSABLE])?;
                    self.java_write(&k.0)?;
                }
                BlobId::Named(job, name) => {
                    self.java_write(&[NAME_ADDRESSABLE])?;
                    self.java_name(job, name)?;
                }
            }
        } else {
            protocol::encode_get(id, &mut self.out);
            self.flush()?;
        }
        let mut hasher = check.map(|_| KeyHasher::new());
        let r = self.reply(Expect::Get, |d| {
            if let Some(h) = hasher.as_mut() {
                h.update(d);
            }
        })?;
        if let (Some(h), Some(k)) = (hasher, check) {
            let got = h.finish();
            if got != k {
                return Err(io::Error::other(format!(
                    "GET body hashes to {got}, not {k}"
                )));
            }
        }
        match r {
            Reply::Body(n) => Ok(n),
            _ => Err(io::Error::other("unexpected reply to GET")),
        }
    }

    pub(super) fn delete(&mut self, target: &DeleteTarget) -> io::Result<()> {
        self.out.clear();
        protocol::encode_delete(target, &mut self.out);
        if self.java {
            // op byte, addressing byte, then the rest (key, or job / length / name) field by field
            let out = std::mem::take(&mut self.out);
            let r = (|| {
                self.java_write(&out[..1])?;
                self.java_write(&out[1..2])?;
                match target {
                    DeleteTarget::Named(job, name) => self.java_name(job, name),
                    _ => self.java_write(&out[2..]),
                }
            })();
            self.out = out;
            self.out.clear();
            r?;
        } else {
            self.flush()?;
        }
        match self.reply(Expect::Delete, |_| {})? {
            Reply::Ok => Ok(()),
            _ => Err(io::Error::other("unexpected reply to DELETE")),
        }
    }

    /// Reads one reply, handing GET body bytes to `on_data` straight from the read buffer.
    fn reply(&mut self, expect: Expect, mut on_data: impl FnMut(&[u8])) -> io::Result<Reply> {
        let mut dec = ResponseDecoder::new(expect);
        let mut len = 0u64;
        loop {
            let input = &self.rbuf[self.rpos..self.rlen];
            let (used, ev) = dec.decode(input).map_err(io::Error::other)?;
            let more = ev.is_none();
            match ev {
                None => {}
                Some(ResponseEvent::Key(k)) => {
                    self.rpos += used;
                    return Ok(Reply::Key(k));
                }
                Some(ResponseEvent::Ok) => {
                    self.rpos += used;
                    return Ok(Reply::Ok);
                }
                Some(ResponseEvent::Length(n)) => len = n as u64,
                Some(ResponseEvent::Data(d)) => on_data(d),
                Some(ResponseEvent::End) => {
                    self.rpos += used;
                    return Ok(Reply::Body(len));
                }
                Some(ResponseEvent::Error(m)) => {
                    return Err(io::Error::other(format!("server error: {m}")));
                }
            }
            self.rpos += used;
            if more {
                if self.rpos < self.rlen {
                    return Err(io::Error::other("reply decoder made no progress"));
                }
                let n = loop {
                    match self.stream.read(&mut self.rbuf) {
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        r => break r?,
                    }
                };
                if n == 0 {
                    return Err(dec.finish().err().map(io::Error::other).unwrap_or_else(|| {
                        io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed")
                    }));
                }
                self.rpos = 0;
                self.rlen = n;
            }
        }
    }
}
