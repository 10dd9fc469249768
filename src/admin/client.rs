//! The client side of the admin endpoint, for `blobvault stat --metrics` and `ls --metrics`:
//! one GET, the reply's body as a stream.

use std::io::{self, BufRead, BufReader, Read};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// How long to wait for the endpoint to connect or send anything.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Why a request to the admin endpoint failed. Each message names the address.
#[derive(Debug, thiserror::Error)]
pub enum AdminClientError {
    /// The address does not resolve.
    #[error("cannot resolve the metrics endpoint {addr}: {source}")]
    Resolve {
        /// The address given.
        addr: String,
        /// Why.
        source: io::Error,
    },
    /// Nothing answers there.
    #[error(
        "cannot reach the metrics endpoint at {addr}: {source} (is `blobvault serve --metrics \
         {addr}` running? The address is the one given to serve's --metrics, not the BLOB port)"
    )]
    Connect {
        /// The address given.
        addr: String,
        /// Why.
        source: io::Error,
    },
    /// The connection failed during the exchange.
    #[error("metrics endpoint {addr}: {source}")]
    Io {
        /// The address given.
        addr: String,
        /// Why.
        source: io::Error,
    },
    /// The reply is not the HTTP this endpoint sends.
    #[error(
        "metrics endpoint {addr} sent no valid HTTP reply (is it a blobvault metrics endpoint?)"
    )]
    Malformed {
        /// The address given.
        addr: String,
    },
    /// The endpoint answered with an error status.
    #[error("metrics endpoint {addr}{path}: HTTP {status}: {body}")]
    Status {
        /// The address given.
        addr: String,
        /// The path asked for.
        path: String,
        /// The HTTP status.
        status: u16,
        /// The start of the reply's body.
        body: String,
    },
}

/// GETs `path` from the admin endpoint at `addr` (HOST:PORT); returns the body of a 200 reply
/// as a stream (it ends when the endpoint closes the connection).
pub fn fetch(addr: &str, path: &str) -> Result<BufReader<TcpStream>, AdminClientError> {
    let io_err = |source| AdminClientError::Io {
        addr: addr.to_string(),
        source,
    };
    let targets: Vec<_> = addr
        .to_socket_addrs()
        .map_err(|source| AdminClientError::Resolve {
            addr: addr.to_string(),
            source,
        })?
        .collect();
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    let mut stream = None;
    for t in targets {
        match TcpStream::connect_timeout(&t, TIMEOUT) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = e,
        }
    }
    let mut stream = stream.ok_or_else(|| AdminClientError::Connect {
        addr: addr.to_string(),
        source: last,
    })?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(io_err)?;
    io::Write::write_all(
        &mut stream,
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .map_err(io_err)?;
    let mut r = BufReader::new(stream);
    // The head: read line by line up to the blank line (bounded: 64 lines of 8 KiB).
    let mut head = Vec::new();
    for _ in 0..64 {
        let before = head.len();
        (&mut r)
            .take(8 * 1024)
            .read_until(b'\n', &mut head)
            .map_err(io_err)?;
        let line = &head[before..];
        if line.is_empty() {
            break;
        }
        if line == b"\r\n" || line == b"\n" {
            break;
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let status = match resp.parse(&head) {
        Ok(httparse::Status::Complete(_)) => resp.code.unwrap_or(0),
        _ => {
            return Err(AdminClientError::Malformed {
                addr: addr.to_string(),
            });
        }
    };
    if status != 200 {
        let mut body = String::new();
        let _ = (&mut r).take(1024).read_to_string(&mut body);
        return Err(AdminClientError::Status {
            addr: addr.to_string(),
            path: path.to_string(),
            status,
            body: body.trim().to_string(),
        });
    }
    Ok(r)
}

/// One line of `/blobs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedBlob {
    /// The content key (40 hex digits).
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// Job and name of a named blob.
    pub named: Option<(String, String)>,
}

/// Parses one line of `/blobs` (`{"key":…,"size":…}`, plus `"job"` and `"name"` for a named
/// blob).
pub fn parse_entry(line: &str) -> Option<ListedBlob> {
    let fields = parse_flat_json(line)?;
    let get = |k: &str| {
        fields
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    Some(ListedBlob {
        key: get("key")?,
        size: get("size")?.parse().ok()?,
        named: match (get("job"), get("name")) {
            (Some(j), Some(n)) => Some((j, n)),
            _ => None,
        },
    })
}

/// The fields of a flat JSON object (strings, numbers, `true`, `false`, `null`; no nesting),
/// as the endpoint writes them: each value as text, strings unescaped.
pub fn parse_flat_json(s: &str) -> Option<Vec<(String, String)>> {
    let mut it = s
        .trim()
        .strip_prefix('{')?
        .strip_suffix('}')?
        .chars()
        .peekable();
    let mut out = Vec::new();
    let string = |it: &mut std::iter::Peekable<std::str::Chars<'_>>| -> Option<String> {
        let mut v = String::new();
        loop {
            match it.next()? {
                '"' => return Some(v),
                '\\' => match it.next()? {
                    'n' => v.push('\n'),
                    'r' => v.push('\r'),
                    't' => v.push('\t'),
                    'u' => {
                        let hex: String = (0..4).filter_map(|_| it.next()).collect();
                        v.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                    }
                    c => v.push(c),
                },
                c => v.push(c),
            }
        }
    };
    loop {
        while it.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            it.next();
        }
        match it.next() {
            None => return Some(out),
            Some('"') => {}
            Some(_) => return None,
        }
        let key = string(&mut it)?;
        while it.peek().is_some_and(|c| c.is_whitespace()) {
            it.next();
        }
        if it.next()? != ':' {
            return None;
        }
        while it.peek().is_some_and(|c| c.is_whitespace()) {
            it.next();
        }
        let value = if it.peek() == Some(&'"') {
            it.next();
            string(&mut it)?
        } else {
            let mut v = String::new();
            while let Some(&c) = it.peek() {
                if c == ',' {
                    break;
                }
                if matches!(c, '{' | '[') {
                    return None;
                }
                v.push(c);
                it.next();
            }
            v.trim().to_string()
        };
        out.push((key, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_lines_parse_with_escapes() {
        let e = parse_entry(r#"{"key":"ab","size":12,"job":"cd","name":"a\"b\\c\u0001"}"#);
        assert_eq!(
            e,
            Some(ListedBlob {
                key: "ab".into(),
                size: 12,
                named: Some(("cd".into(), "a\"b\\c\u{1}".into())),
            })
        );
        assert_eq!(parse_entry(r#"{"key":"ab","size":"x"}"#), None);
        assert_eq!(parse_flat_json("not json"), None);
        let f = parse_flat_json(r#"{"a":null, "b":true,"c":"x,y"}"#).unwrap();
        assert_eq!(f[2], ("c".into(), "x,y".into()));
    }
}
