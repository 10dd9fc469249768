//! One connection's TLS, driven by the readiness loop without ever blocking: rustls's
//! `ServerConnection` sits between the socket and the session, which sees plaintext only. The
//! handshake runs inside the reads; the reactor bounds it by the header deadline.

use std::fmt;
use std::io::{self, IoSlice, Read, Write};
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::{ServerConfig, ServerConnection};

/// Encrypted bytes held for the socket before a write is refused with `WouldBlock`: a GET moves
/// through TLS in pieces of this size (the reactor's turn budget still applies on top).
const TLS_BUFFER: usize = 256 * 1024;

/// Socket reads one `read` may make without finding plaintext before it returns `Interrupted`.
const EMPTY_READS: usize = 4;

/// Plaintext rustls may hold before it refuses more ciphertext (its own limit is 16 KiB).
const PLAINTEXT_HELD: usize = 16 * 1024;

/// The first byte of a TLS record carrying a handshake message (a ClientHello).
const HANDSHAKE_RECORD: u8 = 0x16;

/// Why a TLS connection failed, carried inside an `io::Error` so that the reactor can log it as
/// what it is.
#[derive(Debug)]
pub(super) enum TlsFailure {
    /// The peer's first byte is not a TLS record: a plaintext client on a TLS port.
    NotTls(u8),
    /// rustls refused the peer: a bad or missing certificate, a protocol error.
    Refused {
        /// During the handshake (else mid-connection).
        handshake: bool,
        /// rustls's reason.
        error: rustls::Error,
    },
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsFailure::NotTls(b) => write!(
                f,
                "this port requires TLS, but the peer sent plaintext (first byte {b:#04x}): \
                 connect with TLS (blobvault's client commands: --tls-ca CA.pem)"
            ),
            TlsFailure::Refused {
                handshake: true,
                error,
            } => write!(f, "TLS handshake refused: {error}"),
            TlsFailure::Refused { error, .. } => write!(f, "TLS error: {error}"),
        }
    }
}

impl std::error::Error for TlsFailure {}

/// The TLS failure an I/O error carries, if it is one.
pub(super) fn failure(e: &io::Error) -> Option<&TlsFailure> {
    e.get_ref()?.downcast_ref::<TlsFailure>()
}

/// A connection's TLS state.
pub(super) struct Tls {
    conn: ServerConnection,
    /// Whether the peer's first byte has been looked at.
    checked: bool,
    /// Plaintext bytes rustls holds for us.
    plaintext: usize,
    /// Ciphertext read from the socket that rustls could not take yet (only when the caller's
    /// buffer filled up first), from `pending_at` on.
    pending: Vec<u8>,
    pending_at: usize,
    /// The stream ended: the socket reached its end (rustls was told), or the peer sent
    /// close_notify.
    ended: bool,
    /// Bytes read from the socket, for the turn's budget.
    wire: usize,
}

impl Tls {
    pub(super) fn new(config: Arc<ServerConfig>) -> Result<Tls, rustls::Error> {
        let mut conn = ServerConnection::new(config)?;
        conn.set_buffer_limit(Some(TLS_BUFFER));
        Ok(Tls {
            conn,
            checked: false,
            plaintext: 0,
            pending: Vec::new(),
            pending_at: 0,
            ended: false,
            wire: 0,
        })
    }

    pub(super) fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Encrypted bytes wait for the socket.
    pub(super) fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// Whether a read would return something without the socket: plaintext or ciphertext held,
    /// or the end of the stream (a close_notify that came with the last request).
    pub(super) fn has_input(&self) -> bool {
        self.pending_at < self.pending.len() || self.plaintext > 0 || self.ended
    }

    /// Plaintext from the peer into `buf`, as `Read::read` on a nonblocking socket would give it:
    /// `Ok(0)` at the end of the stream (with or without the peer's close_notify: the protocol
    /// frames its own messages, so a cut is seen there), `WouldBlock` when nothing is held and
    /// the socket is empty. The socket is read into `raw` (one large read, where rustls alone
    /// would read 4 KiB at a time); `socket_empty` is set when a read came back short, so the
    /// caller need not read again before the next readiness event (unless `read_closed`: the
    /// peer's FIN came, and only a read returning 0 sees it). Runs the handshake on the way,
    /// sending its replies. `Interrupted` after a few socket reads that gave no plaintext (empty
    /// records, alerts), so that the caller can charge them to the turn's budget
    /// ([`take_wire_bytes`](Self::take_wire_bytes)).
    pub(super) fn read(
        &mut self,
        sock: &mut TcpStream,
        buf: &mut [u8],
        raw: &mut [u8],
        socket_empty: &mut bool,
        read_closed: bool,
    ) -> io::Result<usize> {
        if !self.checked {
            let mut first = [0u8; 1];
            match sock.peek(&mut first) {
                Ok(0) => return Ok(0),
                Ok(_) if first[0] != HANDSHAKE_RECORD => {
                    return Err(io::Error::other(TlsFailure::NotTls(first[0])));
                }
                Ok(_) => self.checked = true,
                Err(e) => return Err(e),
            }
        }
        let mut filled = 0;
        let mut reads = 0;
        loop {
            filled += self.plaintext_into(&mut buf[filled..])?;
            if filled == buf.len() {
                return Ok(filled);
            }
            if self.pending_at < self.pending.len() {
                let pending = std::mem::take(&mut self.pending);
                let used = self.feed(sock, &pending[self.pending_at..], buf, &mut filled);
                self.pending = pending;
                self.pending_at += used?;
                if self.pending_at == self.pending.len() {
                    self.pending = Vec::new();
                    self.pending_at = 0;
                }
                continue;
            }
            if filled > 0 || self.ended {
                return Ok(filled);
            }
            if *socket_empty && !read_closed {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            if reads == EMPTY_READS {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let n = match sock.read(raw) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            reads += 1;
            self.wire += n;
            if n == 0 {
                // The end of the stream: rustls learns it from an empty read.
                self.conn.read_tls(&mut io::empty())?;
                self.process(sock)?;
                self.ended = true;
                continue;
            }
            *socket_empty = n < raw.len();
            let used = self.feed(sock, &raw[..n], buf, &mut filled)?;
            if used < n {
                self.pending = raw[used..n].to_vec();
                self.pending_at = 0;
            }
        }
    }

    /// Bytes read from the socket since the last call: what a turn's budget is charged (a peer
    /// sending 1-byte records moves 20 times more ciphertext than plaintext).
    pub(super) fn take_wire_bytes(&mut self) -> usize {
        std::mem::take(&mut self.wire)
    }

    /// Moves plaintext rustls holds into `buf`; 0 when it holds none (or `buf` is empty).
    fn plaintext_into(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() || self.plaintext == 0 {
            return Ok(0);
        }
        match self.conn.reader().read(buf) {
            Ok(n) => {
                self.plaintext = self.plaintext.saturating_sub(n);
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.plaintext = 0;
                Ok(0)
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                self.plaintext = 0;
                Ok(0)
            }
            Err(e) => Err(e),
        }
    }

    /// Gives rustls ciphertext from `input`, taking the plaintext out into `buf` as it comes;
    /// stops early only when `buf` is full and rustls can hold no more. Returns how much of
    /// `input` was used.
    fn feed(
        &mut self,
        sock: &mut TcpStream,
        input: &[u8],
        buf: &mut [u8],
        filled: &mut usize,
    ) -> io::Result<usize> {
        let mut rest = input;
        while !rest.is_empty() {
            if self.plaintext >= PLAINTEXT_HELD {
                *filled += self.plaintext_into(&mut buf[*filled..])?;
                if self.plaintext >= PLAINTEXT_HELD {
                    break;
                }
            }
            // Reads from the slice, advancing it (at most a record's worth at a time). Nothing
            // taken means the peer sent close_notify: what follows it is ignored (RFC 8446 6.1).
            if self.conn.read_tls(&mut rest)? == 0 {
                self.ended = true;
                rest = &[];
                break;
            }
            self.process(sock)?;
        }
        *filled += self.plaintext_into(&mut buf[*filled..])?;
        Ok(input.len() - rest.len())
    }

    /// Decrypts what rustls was given and sends what the handshake has to say.
    fn process(&mut self, sock: &mut TcpStream) -> io::Result<()> {
        match self.conn.process_new_packets() {
            Ok(state) => {
                self.plaintext = state.plaintext_bytes_to_read();
                // close_notify: the stream ends once the plaintext before it is read.
                self.ended |= state.peer_has_closed();
            }
            Err(error) => {
                let handshake = self.conn.is_handshaking();
                // rustls queued an alert telling the peer why: one try to send it.
                let _ = self.conn.write_tls(sock);
                return Err(io::Error::other(TlsFailure::Refused { handshake, error }));
            }
        }
        self.send(sock)?;
        Ok(())
    }

    /// Writes held encrypted bytes to the socket. `Ok(true)` when none are left, `Ok(false)`
    /// when the socket would block first.
    pub(super) fn send(&mut self, sock: &mut TcpStream) -> io::Result<bool> {
        while self.conn.wants_write() {
            match self.conn.write_tls(sock) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// A `Write` of plaintext for the session: encrypted and sent as far as the socket takes
    /// it; `WouldBlock` while earlier bytes still wait.
    pub(super) fn writer<'a>(&'a mut self, sock: &'a mut TcpStream) -> Writer<'a> {
        Writer { tls: self, sock }
    }

    /// Tells the peer that nothing more comes (best effort: one try to send it).
    pub(super) fn close_notify(&mut self, sock: &mut TcpStream) {
        self.conn.send_close_notify();
        let _ = self.send(sock);
    }

    /// Encrypts `msg` and tries once to send it (a cut-off's error reply).
    pub(super) fn write_once(&mut self, sock: &mut TcpStream, msg: &[u8]) {
        if !self.conn.is_handshaking() {
            let _ = self.conn.writer().write(msg);
            let _ = self.send(sock);
        }
    }
}

/// See [`Tls::writer`].
pub(super) struct Writer<'a> {
    tls: &'a mut Tls,
    sock: &'a mut TcpStream,
}

impl Write for Writer<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if !self.tls.send(self.sock)? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.tls.conn.writer().write_vectored(bufs)?;
        if n == 0 && bufs.iter().any(|b| !b.is_empty()) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        // Accepted: a full socket now only delays these bytes to the next writable event.
        match self.tls.send(self.sock) {
            Ok(_) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(n),
            Err(e) => Err(e),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
