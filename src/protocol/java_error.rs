//! The error payload of `RETURN_ERROR` replies: a Java-serialized `Throwable` (PROTOCOL.md §5).
//!
//! We send the minimal `java.io.IOException` of §5.3, which a Java client deserializes and reports
//! as `Server side error: <message>`. We read back the `detailMessage` of any Throwable the Java
//! server sends (with its stack trace and cause), and tolerate any other payload.

/// §5.3: stream header and class descriptors of IOException → Exception → Throwable declaring
/// only `detailMessage`, ending with the TC_STRING tag of its value.
const PREFIX: [u8; 146] = [
    0xac, 0xed, 0x00, 0x05, 0x73, 0x72, 0x00, 0x13, 0x6a, 0x61, 0x76, 0x61, 0x2e, 0x69, 0x6f, 0x2e,
    0x49, 0x4f, 0x45, 0x78, 0x63, 0x65, 0x70, 0x74, 0x69, 0x6f, 0x6e, 0x6c, 0x80, 0x73, 0x64, 0x65,
    0x25, 0xf0, 0xab, 0x02, 0x00, 0x00, 0x78, 0x72, 0x00, 0x13, 0x6a, 0x61, 0x76, 0x61, 0x2e, 0x6c,
    0x61, 0x6e, 0x67, 0x2e, 0x45, 0x78, 0x63, 0x65, 0x70, 0x74, 0x69, 0x6f, 0x6e, 0xd0, 0xfd, 0x1f,
    0x3e, 0x1a, 0x3b, 0x1c, 0xc4, 0x02, 0x00, 0x00, 0x78, 0x72, 0x00, 0x13, 0x6a, 0x61, 0x76, 0x61,
    0x2e, 0x6c, 0x61, 0x6e, 0x67, 0x2e, 0x54, 0x68, 0x72, 0x6f, 0x77, 0x61, 0x62, 0x6c, 0x65, 0xd5,
    0xc6, 0x35, 0x27, 0x39, 0x77, 0xb8, 0xcb, 0x03, 0x00, 0x01, 0x4c, 0x00, 0x0d, 0x64, 0x65, 0x74,
    0x61, 0x69, 0x6c, 0x4d, 0x65, 0x73, 0x73, 0x61, 0x67, 0x65, 0x74, 0x00, 0x12, 0x4c, 0x6a, 0x61,
    0x76, 0x61, 0x2f, 0x6c, 0x61, 0x6e, 0x67, 0x2f, 0x53, 0x74, 0x72, 0x69, 0x6e, 0x67, 0x3b, 0x78,
    0x70, 0x74,
];

const TC_NULL: u8 = 0x70;
const TC_REFERENCE: u8 = 0x71;
const TC_CLASSDESC: u8 = 0x72;
const TC_OBJECT: u8 = 0x73;
const TC_STRING: u8 = 0x74;
const TC_ENDBLOCKDATA: u8 = 0x78;

/// Appends the serialized `IOException(message)`. Messages over 65535 bytes of modified UTF-8
/// are truncated at a character boundary.
pub fn encode(message: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&PREFIX);
    let at = out.len();
    out.extend_from_slice(&[0, 0]);
    for c in message.chars() {
        let before = out.len();
        push_modified_utf8(c, out);
        if out.len() - at - 2 > u16::MAX as usize {
            out.truncate(before);
            break;
        }
    }
    let n = (out.len() - at - 2) as u16;
    out[at..at + 2].copy_from_slice(&n.to_be_bytes());
    out.push(TC_ENDBLOCKDATA);
}

fn push_modified_utf8(c: char, out: &mut Vec<u8>) {
    let mut units = [0u16; 2];
    for &u in c.encode_utf16(&mut units).iter() {
        match u {
            0x0001..=0x007f => out.push(u as u8),
            0x0000 | 0x0080..=0x07ff => {
                out.push(0xc0 | (u >> 6) as u8);
                out.push(0x80 | (u & 0x3f) as u8);
            }
            _ => {
                out.push(0xe0 | (u >> 12) as u8);
                out.push(0x80 | ((u >> 6) & 0x3f) as u8);
                out.push(0x80 | (u & 0x3f) as u8);
            }
        }
    }
}

/// Decodes Java's modified UTF-8, replacing what is malformed with U+FFFD.
pub fn decode_modified_utf8(bytes: &[u8]) -> String {
    let mut units = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let cont = |j: usize| {
            bytes
                .get(j)
                .filter(|&&x| x & 0xc0 == 0x80)
                .map(|&x| (x & 0x3f) as u16)
        };
        let (unit, len) = if b < 0x80 {
            (b as u16, 1)
        } else if b & 0xe0 == 0xc0 {
            match cont(i + 1) {
                Some(c1) => (((b & 0x1f) as u16) << 6 | c1, 2),
                None => (0xfffd, 1),
            }
        } else if b & 0xf0 == 0xe0 {
            match (cont(i + 1), cont(i + 2)) {
                (Some(c1), Some(c2)) => (((b & 0x0f) as u16) << 12 | c1 << 6 | c2, 3),
                _ => (0xfffd, 1),
            }
        } else {
            (0xfffd, 1)
        };
        units.push(unit);
        i += len;
    }
    char::decode_utf16(units)
        .map(|r| r.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect()
}

/// The message of the Throwable in `payload`, or a description of the payload when it holds none.
pub fn message(payload: &[u8]) -> String {
    match detail_message(payload) {
        Some(Some(m)) => m,
        Some(None) => "(no message)".to_string(),
        None => match scan_for_message(payload) {
            Some(m) => m,
            None => format!("unreadable error payload ({} bytes)", payload.len()),
        },
    }
}

/// Walks the stream: object, class descriptor chain, then the Throwable's fields in order until
/// `detailMessage`. `Some(None)` is a null message; `None` means the walk could not be finished.
fn detail_message(p: &[u8]) -> Option<Option<String>> {
    let mut r = Reader { p, pos: 0 };
    if r.take(4)? != [0xac, 0xed, 0x00, 0x05] || r.u8()? != TC_OBJECT {
        return None;
    }
    // Descriptors come subclass first; data comes superclass first.
    let mut classes = Vec::new();
    loop {
        match r.u8()? {
            TC_CLASSDESC => classes.push(r.class_desc()?),
            TC_NULL => break,
            _ => return None,
        }
    }
    for fields in classes.iter().rev() {
        for (kind, name) in fields {
            match kind {
                b'L' | b'[' => match r.u8()? {
                    TC_NULL if name == "detailMessage" => return Some(None),
                    TC_STRING if name == "detailMessage" => {
                        let n = r.u16()? as usize;
                        return Some(Some(decode_modified_utf8(r.take(n)?)));
                    }
                    TC_NULL => {}
                    TC_REFERENCE => {
                        r.take(4)?;
                    }
                    // A nested object (a distinct cause) before the message: give up the walk.
                    _ => return None,
                },
                b'B' | b'Z' => r.pos += 1,
                b'C' | b'S' => r.pos += 2,
                b'I' | b'F' => r.pos += 4,
                b'J' | b'D' => r.pos += 8,
                _ => return None,
            }
        }
    }
    None
}

/// Fallback: the first TC_STRING that is not a field type signature.
fn scan_for_message(p: &[u8]) -> Option<String> {
    let mut i = 0;
    while i + 3 <= p.len() {
        if p[i] == TC_STRING {
            let n = u16::from_be_bytes([p[i + 1], p[i + 2]]) as usize;
            if let Some(s) = p.get(i + 3..i + 3 + n) {
                let is_signature = (s.first() == Some(&b'L') && s.last() == Some(&b';'))
                    || s.first() == Some(&b'[');
                if !is_signature && !s.is_empty() {
                    return Some(decode_modified_utf8(s));
                }
                i += 3 + n;
                continue;
            }
        }
        i += 1;
    }
    None
}

struct Reader<'a> {
    p: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.p.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }
    fn utf(&mut self) -> Option<String> {
        let n = self.u16()? as usize;
        Some(decode_modified_utf8(self.take(n)?))
    }

    /// After TC_CLASSDESC: name, SUID, flags, fields, annotations. Returns (type code, name) pairs.
    fn class_desc(&mut self) -> Option<Vec<(u8, String)>> {
        self.utf()?;
        self.take(8)?;
        self.u8()?;
        let count = self.u16()?;
        let mut fields = Vec::new();
        for _ in 0..count {
            let kind = self.u8()?;
            let name = self.utf()?;
            if kind == b'L' || kind == b'[' {
                match self.u8()? {
                    TC_STRING => {
                        self.utf()?;
                    }
                    TC_REFERENCE => {
                        self.take(4)?;
                    }
                    _ => return None,
                }
            }
            fields.push((kind, name));
        }
        (self.u8()? == TC_ENDBLOCKDATA).then_some(fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worked_example_of_section_5_3() {
        let mut out = Vec::new();
        encode("Cannot find required BLOB", &mut out);
        assert_eq!(out.len(), 174);
        assert_eq!(&out[..146], &PREFIX);
        assert_eq!(&out[146..148], &[0x00, 0x19]);
        assert_eq!(&out[148..173], b"Cannot find required BLOB");
        assert_eq!(out[173], 0x78);
        assert_eq!(message(&out), "Cannot find required BLOB");
    }

    #[test]
    fn modified_utf8_round_trip() {
        let mut out = Vec::new();
        for c in "a\0bé😀".chars() {
            push_modified_utf8(c, &mut out);
        }
        assert_eq!(
            out,
            [
                0x61, 0xc0, 0x80, 0x62, 0xc3, 0xa9, 0xed, 0xa0, 0xbd, 0xed, 0xb8, 0x80
            ]
        );
        assert_eq!(decode_modified_utf8(&out), "a\0bé😀");
    }

    #[test]
    fn long_messages_are_truncated_to_u16() {
        let mut out = Vec::new();
        encode(&"é".repeat(40_000), &mut out);
        let n = u16::from_be_bytes([out[146], out[147]]) as usize;
        assert_eq!(n, 65534);
        assert_eq!(message(&out), "é".repeat(32_767));
    }

    #[test]
    fn garbage_payloads_are_described() {
        assert_eq!(
            message(b"not a payload"),
            "unreadable error payload (13 bytes)"
        );
        assert_eq!(message(&[]), "unreadable error payload (0 bytes)");
        let mut out = Vec::new();
        encode("x", &mut out);
        for cut in 0..out.len() {
            let _ = message(&out[..cut]);
        }
    }
}
