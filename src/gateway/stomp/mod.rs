//! STOMP frames: the generic codec (command line, headers, body) and one module per frame kind.
//!
//! ```text
//! COMMAND EOL
//! header1:value1 EOL        (escaped as below, except in CONNECT, STOMP and CONNECTED)
//! header2:value2 EOL
//! EOL
//! body NUL                  (exactly content-length bytes when that header is present,
//!                            otherwise up to the first NUL)
//! ```
//! EOL is LF or CR LF. Escapes (1.1/1.2): `\r` CR, `\n` LF, `\c` colon, `\\` backslash; any
//! other escape is a protocol error. A repeated header: the first occurrence wins. Empty lines
//! between frames are heart-beats and are skipped. Pure code: no I/O; every limit is checked
//! before the bytes it guards are kept, so a hostile peer can make the decoder hold at most
//! [`Limits`] worth of data.

pub mod ack;
pub mod connect;
pub mod disconnect;
pub mod error;
pub mod message;
pub mod receipt;
pub mod send;
pub mod serve;
pub mod session;
pub mod subscribe;
pub mod transaction;

use std::fmt;

/// Bounds a server enforces on every incoming frame (each answered by an ERROR frame).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Headers per frame: more is almost certainly an attack, not a message.
    pub headers_max: usize,
    /// Bytes of the command line plus all header lines.
    pub header_bytes_max: usize,
    /// Bytes of body, the same bound as a native PUBLISH frame.
    pub body_bytes_max: usize,
    /// Undo 1.1/1.2 header escapes (STOMP 1.0 has none: a backslash is just a backslash).
    pub unescape: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            headers_max: 64,
            header_bytes_max: 16 << 10,
            body_bytes_max: 16 << 20,
            unescape: true,
        }
    }
}

/// Why bytes are not a valid STOMP frame. Each becomes an ERROR frame and a close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StompError {
    UnknownCommand(String),
    /// A header line without a colon, or a bad escape.
    BadHeader(String),
    TooManyHeaders(usize),
    HeadersTooLarge(usize),
    BodyTooLarge(usize),
    /// `content-length` present but not a number.
    BadContentLength(String),
    /// The body did not end with NUL where `content-length` said it would.
    MissingNul,
    /// A header a frame needs is absent or invalid.
    Invalid(String),
    NotUtf8,
}

impl fmt::Display for StompError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StompError::UnknownCommand(c) => write!(f, "unknown command {c:?}"),
            StompError::BadHeader(h) => write!(f, "malformed header {h:?}"),
            StompError::TooManyHeaders(n) => write!(f, "too many headers (more than {n})"),
            StompError::HeadersTooLarge(n) => write!(f, "headers larger than {n} bytes"),
            StompError::BodyTooLarge(n) => write!(f, "body larger than {n} bytes"),
            StompError::BadContentLength(v) => write!(f, "bad content-length {v:?}"),
            StompError::MissingNul => write!(f, "frame body not terminated by NUL"),
            StompError::Invalid(m) => write!(f, "{m}"),
            StompError::NotUtf8 => write!(f, "command or header is not UTF-8"),
        }
    }
}

impl std::error::Error for StompError {}

/// Every STOMP 1.2 command, client and server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Connect,
    Stomp,
    Send,
    Subscribe,
    Unsubscribe,
    Ack,
    Nack,
    Begin,
    Commit,
    Abort,
    Disconnect,
    Connected,
    Message,
    Receipt,
    Error,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        use Command::*;
        match self {
            Connect => "CONNECT",
            Stomp => "STOMP",
            Send => "SEND",
            Subscribe => "SUBSCRIBE",
            Unsubscribe => "UNSUBSCRIBE",
            Ack => "ACK",
            Nack => "NACK",
            Begin => "BEGIN",
            Commit => "COMMIT",
            Abort => "ABORT",
            Disconnect => "DISCONNECT",
            Connected => "CONNECTED",
            Message => "MESSAGE",
            Receipt => "RECEIPT",
            Error => "ERROR",
        }
    }

    pub fn parse(s: &str) -> Option<Command> {
        use Command::*;
        Some(match s {
            "CONNECT" => Connect,
            "STOMP" => Stomp,
            "SEND" => Send,
            "SUBSCRIBE" => Subscribe,
            "UNSUBSCRIBE" => Unsubscribe,
            "ACK" => Ack,
            "NACK" => Nack,
            "BEGIN" => Begin,
            "COMMIT" => Commit,
            "ABORT" => Abort,
            "DISCONNECT" => Disconnect,
            "CONNECTED" => Connected,
            "MESSAGE" => Message,
            "RECEIPT" => Receipt,
            "ERROR" => Error,
            _ => return None,
        })
    }

    /// CONNECT, STOMP and CONNECTED headers are never escaped (STOMP 1.2, "Value Encoding").
    fn escapes(self) -> bool {
        !matches!(self, Command::Connect | Command::Stomp | Command::Connected)
    }
}

/// A decoded frame. Headers keep their order; lookups return the first occurrence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub command: Command,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Frame {
    pub fn new(command: Command) -> Frame {
        Frame { command, headers: Vec::new(), body: Vec::new() }
    }

    pub fn header(mut self, k: &str, v: impl Into<String>) -> Frame {
        self.headers.push((k.to_string(), v.into()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Frame {
        self.body = body.into();
        self
    }

    /// The first value of header `k` (repeated headers: the first wins).
    pub fn get(&self, k: &str) -> Option<&str> {
        self.headers.iter().find(|(hk, _)| hk == k).map(|(_, v)| v.as_str())
    }

    /// Header `k`, or an error naming the frame and the header.
    pub fn require(&self, k: &str) -> Result<&str, StompError> {
        self.get(k).ok_or_else(|| {
            StompError::Invalid(format!("{} frame needs a {k:?} header", self.command.as_str()))
        })
    }

    /// Appends the frame: escaped headers (unless CONNECT/STOMP/CONNECTED), a `content-length`
    /// when the body has one (always written for bodies, so NULs inside are safe), NUL.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.command.as_str().as_bytes());
        out.push(b'\n');
        let esc = self.command.escapes();
        for (k, v) in &self.headers {
            if k == "content-length" {
                continue;
            }
            put_escaped(out, k, esc);
            out.push(b':');
            put_escaped(out, v, esc);
            out.push(b'\n');
        }
        if !self.body.is_empty() || matches!(self.command, Command::Send | Command::Message) {
            out.extend_from_slice(format!("content-length:{}\n", self.body.len()).as_bytes());
        }
        out.push(b'\n');
        out.extend_from_slice(&self.body);
        out.push(0);
    }
}

pub(crate) fn put_escaped(out: &mut Vec<u8>, s: &str, escape: bool) {
    if !escape {
        out.extend_from_slice(s.as_bytes());
        return;
    }
    for b in s.bytes() {
        match b {
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b':' => out.extend_from_slice(b"\\c"),
            b'\\' => out.extend_from_slice(b"\\\\"),
            _ => out.push(b),
        }
    }
}

fn unescape(s: &str, escape: bool) -> Result<String, StompError> {
    if !escape || !s.contains('\\') {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('r') => out.push('\r'),
            Some('n') => out.push('\n'),
            Some('c') => out.push(':'),
            Some('\\') => out.push('\\'),
            _ => return Err(StompError::BadHeader(s.to_string())),
        }
    }
    Ok(out)
}

/// One line ending at `at`: (line without EOL, index after the EOL), or `None` if no EOL yet.
fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let nl = buf[at..].iter().position(|&b| b == b'\n')? + at;
    let end = if nl > at && buf[nl - 1] == b'\r' { nl - 1 } else { nl };
    Some((&buf[at..end], nl + 1))
}

/// Decodes one frame from the front of `buf`: `Ok(None)` when more bytes are needed, else the
/// frame and how many bytes it used (heart-beat EOLs before it included). `Ok(Some((None, n)))`
/// means `n` bytes were only heart-beats.
#[allow(clippy::type_complexity)]
pub fn decode(buf: &[u8], limits: &Limits) -> Result<Option<(Option<Frame>, usize)>, StompError> {
    let mut at = 0;
    while at < buf.len()
        && (buf[at] == b'\n' || (buf[at] == b'\r' && buf.get(at + 1) == Some(&b'\n')))
    {
        at += if buf[at] == b'\r' { 2 } else { 1 };
    }
    if at == buf.len() || (buf.len() - at == 1 && buf[at] == b'\r') {
        return Ok(if at > 0 { Some((None, at)) } else { None });
    }
    let start = at;
    let Some((cmd_line, mut at)) = line(buf, start) else {
        return check_partial_headers(buf.len() - start, limits).map(|()| None);
    };
    let cmd_str = std::str::from_utf8(cmd_line).map_err(|_| StompError::NotUtf8)?;
    let command =
        Command::parse(cmd_str).ok_or_else(|| StompError::UnknownCommand(cmd_str.to_string()))?;
    let mut headers = Vec::new();
    loop {
        if at - start > limits.header_bytes_max {
            return Err(StompError::HeadersTooLarge(limits.header_bytes_max));
        }
        let Some((l, next)) = line(buf, at) else {
            return check_partial_headers(buf.len() - start, limits).map(|()| None);
        };
        at = next;
        if l.is_empty() {
            break;
        }
        if headers.len() == limits.headers_max {
            return Err(StompError::TooManyHeaders(limits.headers_max));
        }
        let l = std::str::from_utf8(l).map_err(|_| StompError::NotUtf8)?;
        let (k, v) = l.split_once(':').ok_or_else(|| StompError::BadHeader(l.to_string()))?;
        let esc = command.escapes() && limits.unescape;
        headers.push((unescape(k, esc)?, unescape(v, esc)?));
    }
    let content_length = match headers.iter().find(|(k, _)| k == "content-length") {
        None => None,
        Some((_, v)) => {
            Some(v.trim().parse::<usize>().map_err(|_| StompError::BadContentLength(v.clone()))?)
        }
    };
    let body_end = match content_length {
        Some(n) => {
            if n > limits.body_bytes_max {
                return Err(StompError::BodyTooLarge(limits.body_bytes_max));
            }
            if buf.len() < at + n + 1 {
                return Ok(None);
            }
            if buf[at + n] != 0 {
                return Err(StompError::MissingNul);
            }
            at + n
        }
        None => match buf[at..].iter().position(|&b| b == 0) {
            Some(p) => {
                if p > limits.body_bytes_max {
                    return Err(StompError::BodyTooLarge(limits.body_bytes_max));
                }
                at + p
            }
            None if buf.len() - at > limits.body_bytes_max => {
                return Err(StompError::BodyTooLarge(limits.body_bytes_max))
            }
            None => return Ok(None),
        },
    };
    let frame = Frame { command, headers, body: buf[at..body_end].to_vec() };
    Ok(Some((Some(frame), body_end + 1)))
}

fn check_partial_headers(have: usize, limits: &Limits) -> Result<(), StompError> {
    if have > limits.header_bytes_max {
        return Err(StompError::HeadersTooLarge(limits.header_bytes_max));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) fn round_trip(f: &Frame) -> Frame {
    let mut out = Vec::new();
    f.encode(&mut out);
    let (got, used) = decode(&out, &Limits::default()).unwrap().unwrap();
    assert_eq!(used, out.len());
    // Every strict prefix is incomplete, never an error or a different frame.
    for n in 0..out.len() {
        match decode(&out[..n], &Limits::default()) {
            Ok(None) | Ok(Some((None, _))) => {}
            other => panic!("prefix of {n} bytes decoded to {other:?}"),
        }
    }
    got.expect("a frame")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(bytes: &[u8]) -> Result<Frame, StompError> {
        match decode(bytes, &Limits::default())? {
            Some((Some(f), n)) => {
                assert_eq!(n, bytes.len());
                Ok(f)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn crlf_heartbeats_repeated_headers_and_nul_bodies() {
        let f =
            one(b"\n\r\nSEND\r\ndestination:/queue/a\r\ndestination:/queue/b\r\n\r\nhi\0").unwrap();
        assert_eq!(f.command, Command::Send);
        assert_eq!(f.get("destination"), Some("/queue/a"), "first occurrence wins");
        assert_eq!(f.body, b"hi");
        let f = one(b"SEND\ndestination:/q\ncontent-length:5\n\na\0b\0c\0").unwrap();
        assert_eq!(f.body, b"a\0b\0c");
        assert_eq!(decode(b"\n\n", &Limits::default()).unwrap(), Some((None, 2)));
    }

    #[test]
    fn escaping_applies_except_on_connect_frames() {
        let f = one(b"SEND\nk\\c1:a\\nb\\\\c\\r\n\n\0").unwrap();
        assert_eq!(f.get("k:1"), Some("a\nb\\c\r"));
        let f = one(b"CONNECT\nlogin:a\\nb\n\n\0").unwrap();
        assert_eq!(f.get("login"), Some("a\\nb"), "CONNECT headers are literal");
        assert!(matches!(one(b"SEND\nk:bad\\t\n\n\0"), Err(StompError::BadHeader(_))));
        let sent = Frame::new(Command::Message).header("a:b", "x\ny\\z:").body("ü");
        assert_eq!(round_trip(&sent).get("a:b"), Some("x\ny\\z:"));
    }

    #[test]
    fn malformed_frames_are_refused() {
        assert!(matches!(one(b"FLY\n\n\0"), Err(StompError::UnknownCommand(_))));
        assert!(matches!(one(b"SEND\nnocolon\n\n\0"), Err(StompError::BadHeader(_))));
        assert!(matches!(
            one(b"SEND\ncontent-length:x\n\n\0"),
            Err(StompError::BadContentLength(_))
        ));
        assert!(matches!(one(b"SEND\ncontent-length:1\n\nab\0"), Err(StompError::MissingNul)));
        assert!(matches!(one(b"SEND\n\xff:1\n\n\0"), Err(StompError::NotUtf8)));
    }

    #[test]
    fn stomp_1_0_headers_are_not_unescaped() {
        let raw = b"SEND\npath:C:\\dir\\t\n\n\0";
        assert!(one(raw).is_err(), "1.1/1.2: \\t is a bad escape");
        let limits = Limits { unescape: false, ..Limits::default() };
        let f = decode(raw, &limits).unwrap().unwrap().0.unwrap();
        assert_eq!(f.get("path"), Some("C:\\dir\\t"));
    }

    #[test]
    fn limits_are_enforced_before_data_is_kept() {
        let limits =
            Limits { headers_max: 2, header_bytes_max: 64, body_bytes_max: 8, unescape: true };
        let many = b"SEND\na:1\nb:2\nc:3\n\n\0";
        assert_eq!(decode(many, &limits), Err(StompError::TooManyHeaders(2)));
        let long = [b"SEND\nk:".as_slice(), &[b'v'; 100]].concat();
        assert_eq!(decode(&long, &limits), Err(StompError::HeadersTooLarge(64)), "even unfinished");
        assert_eq!(
            decode(b"SEND\ncontent-length:9\n\n", &limits),
            Err(StompError::BodyTooLarge(8))
        );
        let unterminated = [b"SEND\n\n".as_slice(), &[b'x'; 9]].concat();
        assert_eq!(decode(&unterminated, &limits), Err(StompError::BodyTooLarge(8)));
    }

    /// Seeded random and mutated input: the decoder never panics and never claims more bytes
    /// than it was given.
    #[test]
    fn seeded_fuzz_never_panics() {
        let seeds: Vec<Vec<u8>> = vec![
            b"SEND\ndestination:/queue/a\ncontent-length:3\n\nabc\0".to_vec(),
            b"CONNECT\naccept-version:1.2\nhost:h\nheart-beat:0,0\n\n\0".to_vec(),
            b"SUBSCRIBE\nid:1\ndestination:/topic/x\nack:client\n\n\0".to_vec(),
        ];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..20_000 {
            let mut b = seeds[i % seeds.len()].clone();
            for _ in 0..(next() % 4) {
                let at = (next() as usize) % b.len();
                match next() % 3 {
                    0 => b[at] = next() as u8,
                    1 => {
                        b.remove(at);
                    }
                    _ => b.insert(at, [b'\n', b'\\', b':', 0][(next() % 4) as usize]),
                }
            }
            if let Ok(Some((_, used))) = decode(&b, &Limits::default()) {
                assert!(used <= b.len(), "iteration {i}: used {used} of {}", b.len());
            }
        }
    }
}
