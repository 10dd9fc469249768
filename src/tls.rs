//! TLS for the BLOB port (rustls, with the `ring` provider): the server's certificate and the
//! optional client CA (mutual TLS), re-read without a restart; the client side's trust anchors,
//! client certificate and the name it verifies. Only configuration and blocking client streams
//! live here: the protocol core never sees TLS, and the server's readiness loop drives its
//! connections itself (`server/reactor.rs`).
//!
//! Files are PEM: a certificate chain (leaf first), a private key (PKCS#8, PKCS#1 or SEC1), and
//! CA certificates.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, StreamOwned};

/// Errors of loading TLS configuration. Each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no PEM item of the kind wanted.
    #[error("TLS {what} {path}: {message}")]
    File {
        /// What the file was for: "certificate chain", "private key", "CA certificates".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// rustls refused the combination (a key that does not match the certificate, say).
    #[error("TLS configuration ({context}): {source}")]
    Config {
        /// Which files were combined.
        context: String,
        /// rustls's reason.
        #[source]
        source: rustls::Error,
    },
    /// The name to verify the server by is not a DNS name or IP address.
    #[error("TLS server name {0:?} is neither a DNS name nor an IP address")]
    ServerName(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |message: String| TlsError::File {
        what,
        path: path.to_path_buf(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(pem_message(&e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(pem_message(&e)))?;
    if certs.is_empty() {
        return Err(err(
            "no PEM certificate in the file (expected -----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::File {
        what: "private key",
        path: path.to_path_buf(),
        message: match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no PEM private key in the file (expected -----BEGIN PRIVATE KEY-----, \
                 RSA PRIVATE KEY or EC PRIVATE KEY)"
                    .into()
            }
            e => pem_message(&e),
        },
    })
}

fn pem_message(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error as E;
    match e {
        E::Io(io) => io.to_string(),
        E::MissingSectionEnd { .. } => {
            "a PEM section has no END line (a truncated or half-written file?)".into()
        }
        E::IllegalSectionStart { .. } => "a malformed PEM BEGIN line".into(),
        E::Base64Decode(_) => "bad base64 inside a PEM section".into(),
        E::NoItemsFound => "no PEM item in the file".into(),
        _ => "not valid PEM".into(),
    }
}

fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs("CA certificates", path)? {
        roots.add(cert).map_err(|e| TlsError::File {
            what: "CA certificates",
            path: path.to_path_buf(),
            message: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

/// The files of a TLS server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsFiles {
    /// The server's certificate chain, leaf first (`--tls-cert`).
    pub cert: PathBuf,
    /// Its private key (`--tls-key`).
    pub key: PathBuf,
    /// With it, clients must present a certificate signed by one of these CAs (mutual TLS,
    /// `--tls-client-ca`); without it, any client may connect.
    pub client_ca: Option<PathBuf>,
}

impl ServerTlsFiles {
    fn paths(&self) -> impl Iterator<Item = &Path> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .map(PathBuf::as_path)
    }

    fn build(&self) -> Result<ServerConfig, TlsError> {
        let certs = read_certs("certificate chain", &self.cert)?;
        let key = read_key(&self.key)?;
        let context = || {
            format!(
                "certificate {} with key {}",
                self.cert.display(),
                self.key.display()
            )
        };
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Config {
                context: context(),
                source,
            })?;
        let builder = match &self.client_ca {
            Some(ca) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(read_roots(ca)?),
                    provider(),
                )
                .build()
                .map_err(|e| TlsError::File {
                    what: "CA certificates",
                    path: ca.clone(),
                    message: e.to_string(),
                })?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        builder
            .with_single_cert(certs, key)
            .map_err(|source| TlsError::Config {
                context: context(),
                source,
            })
    }
}

/// What identifies a version of a file: a replaced or rewritten file changes it.
type Stamp = Vec<Option<(SystemTime, u64)>>;

fn stamp(files: &ServerTlsFiles) -> Stamp {
    files
        .paths()
        .map(|p| {
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len()))
        })
        .collect()
}

/// A server's TLS configuration, replaceable while it runs: connections accepted after a
/// [`reload`](Self::reload) use the new certificates; open ones keep theirs.
pub struct ServerTls {
    files: ServerTlsFiles,
    current: RwLock<Arc<ServerConfig>>,
    stamps: Mutex<Stamps>,
}

/// The files' versions: the one loaded, and a changed one seen at the last look.
struct Stamps {
    loaded: Stamp,
    seen: Option<Stamp>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads the files; every problem is reported now, naming its file.
    pub fn load(files: ServerTlsFiles) -> Result<ServerTls, TlsError> {
        let before = stamp(&files);
        let config = files.build()?;
        Ok(ServerTls {
            current: RwLock::new(Arc::new(config)),
            stamps: Mutex::new(Stamps {
                loaded: before,
                seen: None,
            }),
            files,
        })
    }

    /// The files this configuration is read from.
    pub fn files(&self) -> &ServerTlsFiles {
        &self.files
    }

    /// Whether clients must present a certificate.
    pub fn mutual(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// The configuration new connections get.
    pub fn config(&self) -> Arc<ServerConfig> {
        match self.current.read() {
            Ok(c) => Arc::clone(&c),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Reads the files again and, if they make a valid configuration, uses it for new
    /// connections; otherwise keeps the current one and returns why.
    pub fn reload(&self) -> Result<(), TlsError> {
        let before = stamp(&self.files);
        let config = self.files.build();
        let mut stamps = self.stamps.lock().unwrap_or_else(|p| p.into_inner());
        // Stamped even on failure: a broken file is not retried until it changes again.
        stamps.loaded = before.clone();
        stamps.seen = None;
        let config = config?;
        if stamp(&self.files) != before {
            // Rewritten while being read: what was read may mix two versions.
            stamps.loaded = Stamp::new();
            return Err(TlsError::File {
                what: "certificate chain",
                path: self.files.cert.clone(),
                message: "the files changed while being read; they are read again once they \
                          stay unchanged (replace them by renaming new files into place)"
                    .into(),
            });
        }
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
        Ok(())
    }

    /// Reloads if the files changed (modification time or length) since the last load and
    /// have stayed unchanged since the previous call, so that a file being written in several
    /// steps (a chain, then its intermediate) is not read half-way; returns whether it
    /// reloaded (successfully). The server calls it every second.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamp(&self.files);
        {
            let mut stamps = self.stamps.lock().unwrap_or_else(|p| p.into_inner());
            if stamps.loaded == now {
                stamps.seen = None;
                return Ok(false);
            }
            if stamps.seen.as_ref() != Some(&now) {
                stamps.seen = Some(now);
                return Ok(false);
            }
        }
        self.reload().map(|()| true)
    }
}

/// The files of a TLS client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTlsFiles {
    /// CA certificates the server's certificate must chain to (`--tls-ca`).
    pub ca: PathBuf,
    /// The client's certificate chain, for servers that require one (`--tls-cert`).
    pub cert: Option<PathBuf>,
    /// Its private key (`--tls-key`).
    pub key: Option<PathBuf>,
    /// The name the server's certificate must carry (`--tls-server-name`); by default the host
    /// name the client was given, or the server's IP address.
    pub server_name: Option<String>,
}

/// A client's TLS configuration.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    server_name: Option<ServerName<'static>>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Reads the files; every problem is reported now, naming its file.
    pub fn load(files: &ClientTlsFiles) -> Result<ClientTls, TlsError> {
        let roots = read_roots(&files.ca)?;
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Config {
                context: format!("CA {}", files.ca.display()),
                source,
            })?
            .with_root_certificates(roots);
        let config = match (&files.cert, &files.key) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(read_certs("certificate chain", cert)?, read_key(key)?)
                .map_err(|source| TlsError::Config {
                    context: format!(
                        "client certificate {} with key {}",
                        cert.display(),
                        key.display()
                    ),
                    source,
                })?,
            (None, None) => builder.with_no_client_auth(),
            (Some(p), None) | (None, Some(p)) => {
                return Err(TlsError::File {
                    what: "client certificate",
                    path: p.clone(),
                    message: "a client certificate needs both --tls-cert and --tls-key".into(),
                });
            }
        };
        let server_name = match &files.server_name {
            Some(n) => {
                Some(ServerName::try_from(n.clone()).map_err(|_| TlsError::ServerName(n.clone()))?)
            }
            None => None,
        };
        Ok(ClientTls {
            config: Arc::new(config),
            server_name,
        })
    }

    /// The same configuration verifying servers by `host` unless a server name was set
    /// explicitly (a host name typed by the user; IP addresses are verified as such anyway).
    pub fn for_host(&self, host: &str) -> ClientTls {
        let mut t = self.clone();
        if t.server_name.is_none() && host.parse::<IpAddr>().is_err() {
            t.server_name = ServerName::try_from(host.to_string()).ok();
        }
        t
    }

    /// Runs the handshake over `tcp` (blocking, within the socket's timeouts).
    pub(crate) fn connect(&self, mut tcp: TcpStream, addr: &SocketAddr) -> io::Result<Stream> {
        let name = self
            .server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        let shown = match &self.server_name {
            Some(ServerName::DnsName(n)) => n.as_ref().to_string(),
            _ => addr.ip().to_string(),
        };
        let mut conn = ClientConnection::new(Arc::clone(&self.config), name)
            .map_err(|e| io::Error::other(format!("TLS with {addr}: {e}")))?;
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "TLS handshake with {addr} (verifying {shown}) failed: {e}{}",
                        if e.kind() == io::ErrorKind::UnexpectedEof {
                            " (the server closed the connection: does it speak TLS? start it \
                             with --tls-cert/--tls-key, or connect without --tls-ca)"
                        } else {
                            hint(&e)
                        }
                    ),
                )
            })?;
        }
        Ok(Stream::Tls(Box::new(StreamOwned::new(conn, tcp))))
    }
}

/// What a user can do about a TLS failure, when its cause says.
pub(crate) fn hint(e: &io::Error) -> &'static str {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    let Some(err) = e.get_ref().and_then(|i| i.downcast_ref::<E>()) else {
        return "";
    };
    match err {
        E::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => {
            " (is --tls-ca the CA that signed the server's certificate?)"
        }
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            " (the certificate does not carry this host's name: connect by a name it carries, \
             or set --tls-server-name)"
        }
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            " (the server's certificate has expired: renew it)"
        }
        E::AlertReceived(A::CertificateRequired) => {
            " (the server requires a client certificate: give --tls-cert and --tls-key)"
        }
        E::AlertReceived(A::BadCertificate | A::UnknownCA | A::CertificateExpired) => {
            " (the server refused this client certificate: is it signed by the CA the server \
             trusts (its --tls-client-ca), and still valid?)"
        }
        E::InvalidMessage(_) | E::InappropriateMessage { .. } => {
            " (does the server speak TLS? start it with --tls-cert/--tls-key, or connect \
             without --tls-ca)"
        }
        _ => "",
    }
}

/// A client's connection: plain TCP or TLS over it.
#[derive(Debug)]
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Stream {
    /// The TCP socket underneath.
    pub(crate) fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &s.sock,
        }
    }
}

/// A TLS failure seen mid-connection, with the hint of [`hint`] added.
fn explained(e: io::Error) -> io::Error {
    let h = hint(&e);
    if h.is_empty() {
        e
    } else {
        io::Error::new(e.kind(), format!("{e}{h}"))
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf).map_err(explained),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf).map_err(explained),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush().map_err(explained),
        }
    }
}

/// The client commands' TLS flags (the same names on every command and `bench`).
#[doc(hidden)]
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientTlsArgs {
    /// Connect over TLS, trusting servers whose certificate this CA (PEM) signed.
    #[arg(long, value_name = "CA.pem")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate chain (PEM), for a server that requires one (mutual TLS).
    #[arg(long, value_name = "CERT.pem", requires_all = ["tls_ca", "tls_key"])]
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "KEY.pem", requires_all = ["tls_ca", "tls_cert"])]
    pub tls_key: Option<PathBuf>,
    /// Name the server's certificate must carry (default: the host of --server).
    #[arg(long, value_name = "NAME", requires = "tls_ca")]
    pub tls_server_name: Option<String>,
}

impl ClientTlsArgs {
    /// The TLS configuration these flags ask for, verifying the server as `host` (the host part
    /// of `--server`) unless `--tls-server-name` says otherwise; `None` without `--tls-ca`.
    pub fn load(&self, host: Option<&str>) -> Result<Option<ClientTls>, TlsError> {
        let Some(ca) = &self.tls_ca else {
            return Ok(None);
        };
        let t = ClientTls::load(&ClientTlsFiles {
            ca: ca.clone(),
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            server_name: self.tls_server_name.clone(),
        })?;
        Ok(Some(match host {
            Some(h) => t.for_host(h),
            None => t,
        }))
    }
}

/// The host part of `HOST:PORT` (`[v6]:port` too).
pub fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}
