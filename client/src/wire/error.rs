//! ERROR (server → client) and OK (server → client, empty body).
//!
//! ```text
//! +-------------------------------+-------------------------------+
//! | code (u16)                    | reserved (u16) = 0            |
//! +-------------------------------+-------------------------------+
//! | message (u16 len + UTF-8): a sentence for a human             |
//! +---------------------------------------------------------------+
//! ```
//! An ERROR with request id 0, or with a code at or above 500, is about the connection: the server
//! closes it after sending. Other errors answer one request and the connection stays open.

use super::{begin_frame, end_frame, put_str16, DecodeError, Opcode, Reader};

/// Numeric error codes, stable on the wire. 4xx: the request was wrong; 5xx: the connection is.
pub mod code {
    pub const NOT_FOUND: u16 = 404;
    pub const PRECONDITION_FAILED: u16 = 406;
    pub const INVALID_ARGUMENT: u16 = 400;
    pub const RESOURCE_LIMIT: u16 = 429;
    /// The journal could not store the messages: sticky until restart when the journal failed
    /// (disk full, I/O error, corruption found at recovery), transient when its write ring was
    /// momentarily full.
    pub const STORAGE_FAILED: u16 = 460;
    pub const PROTOCOL_ERROR: u16 = 500;
    pub const UNSUPPORTED_VERSION: u16 = 505;
    pub const FRAME_TOO_LARGE: u16 = 501;
    pub const SLOW_CONSUMER: u16 = 503;
    pub const INTERNAL: u16 = 520;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFrame<'a> {
    pub code: u16,
    pub message: &'a str,
}

impl<'a> ErrorFrame<'a> {
    pub fn encode(&self, out: &mut Vec<u8>, request_id: u64) {
        let at = begin_frame(out, Opcode::Error, 0, request_id);
        out.extend_from_slice(&self.code.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        let msg = truncate_utf8(self.message, u16::MAX as usize);
        put_str16(out, msg);
        end_frame(out, at);
    }

    pub fn decode(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let code = r.u16()?;
        r.u16()?;
        Ok(ErrorFrame { code, message: r.str16()? })
    }

    /// Whether the server closes the connection after this error.
    pub fn is_fatal(&self, request_id: u64) -> bool {
        request_id == 0 || self.code >= 500
    }
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Writes an OK frame answering `request_id`.
pub fn encode_ok(out: &mut Vec<u8>, request_id: u64) {
    let at = begin_frame(out, Opcode::Ok, 0, request_id);
    end_frame(out, at);
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::Command;
    use super::*;

    #[test]
    fn round_trip() {
        let e = ErrorFrame { code: code::NOT_FOUND, message: "no queue \"x\"" };
        let mut out = Vec::new();
        e.encode(&mut out, 4);
        assert_eq!(decode_one(&out).unwrap().1, Command::Error(e));
        assert_truncations_fail(&out);
        let mut out = Vec::new();
        encode_ok(&mut out, 4);
        assert_eq!(decode_one(&out).unwrap().1, Command::Ok);
    }

    #[test]
    fn ok_with_body_rejected() {
        let mut out = Vec::new();
        encode_ok(&mut out, 4);
        out.push(0);
        out[0] = 1;
        assert!(decode_one(&out).is_err());
    }
}
