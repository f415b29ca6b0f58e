//! HELLO (client → server) and WELCOME (server → client): the version handshake.
//!
//! The first frame on a connection must be HELLO; anything else is a protocol error.
//!
//! ```text
//! HELLO body                                 WELCOME body
//! +-------------------------------+          +---------------+---------------+
//! | magic "RDMQ" (u32)            |          | version (u16) | shard (u16)   |
//! +---------------+---------------+          +---------------+---------------+
//! | version_min   | version_max   |          | shard_count   | reserved = 0  |
//! +---------------+---------------+          +---------------+---------------+
//! | client name (u16 len + UTF-8) |          | frame_body_max (u32)          |
//! +-------------------------------+          +-------------------------------+
//!                                            | server name (u16 len + UTF-8) |
//!                                            +-------------------------------+
//! ```
//! The server picks the highest version inside both ranges, or answers ERROR
//! `UNSUPPORTED_VERSION` and closes.

use super::{begin_frame, end_frame, put_str16, DecodeError, Opcode, Reader, MAGIC};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello<'a> {
    pub version_min: u16,
    pub version_max: u16,
    pub client_name: &'a str,
}

impl<'a> Hello<'a> {
    pub fn encode(&self, out: &mut Vec<u8>, request_id: u64) {
        let at = begin_frame(out, Opcode::Hello, 0, request_id);
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&self.version_min.to_le_bytes());
        out.extend_from_slice(&self.version_max.to_le_bytes());
        put_str16(out, self.client_name);
        end_frame(out, at);
    }

    pub fn decode(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        if r.u32()? != MAGIC {
            return Err(DecodeError::Invalid { offset: 0, what: "magic" });
        }
        let hello = Hello { version_min: r.u16()?, version_max: r.u16()?, client_name: r.str16()? };
        if hello.version_min > hello.version_max {
            return Err(DecodeError::Invalid { offset: 4, what: "version range" });
        }
        Ok(hello)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome<'a> {
    pub version: u16,
    pub shard: u16,
    pub shard_count: u16,
    pub frame_body_max: u32,
    pub server_name: &'a str,
}

impl<'a> Welcome<'a> {
    pub fn encode(&self, out: &mut Vec<u8>, request_id: u64) {
        let at = begin_frame(out, Opcode::Welcome, 0, request_id);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.shard.to_le_bytes());
        out.extend_from_slice(&self.shard_count.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&self.frame_body_max.to_le_bytes());
        put_str16(out, self.server_name);
        end_frame(out, at);
    }

    pub fn decode(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let version = r.u16()?;
        let shard = r.u16()?;
        let shard_count = r.u16()?;
        if r.u16()? != 0 {
            return Err(DecodeError::Invalid { offset: 6, what: "reserved" });
        }
        Ok(Welcome {
            version,
            shard,
            shard_count,
            frame_body_max: r.u32()?,
            server_name: r.str16()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::Command;
    use super::*;

    #[test]
    fn hello_round_trip() {
        let h = Hello { version_min: 1, version_max: 3, client_name: "tëst" };
        let mut out = Vec::new();
        h.encode(&mut out, 5);
        let (hdr, cmd) = decode_one(&out).unwrap();
        assert_eq!(hdr.request_id, 5);
        assert_eq!(cmd, Command::Hello(h));
        assert_truncations_fail(&out);
    }

    #[test]
    fn hello_bad_magic_and_range() {
        let mut out = Vec::new();
        Hello { version_min: 2, version_max: 1, client_name: "" }.encode(&mut out, 0);
        assert!(decode_one(&out).is_err());
        let mut out = Vec::new();
        Hello { version_min: 1, version_max: 1, client_name: "" }.encode(&mut out, 0);
        out[16] = b'X';
        assert!(decode_one(&out).is_err());
    }

    #[test]
    fn welcome_round_trip() {
        let w =
            Welcome { version: 1, shard: 1, shard_count: 2, frame_body_max: 99, server_name: "s" };
        let mut out = Vec::new();
        w.encode(&mut out, 5);
        assert_eq!(decode_one(&out).unwrap().1, Command::Welcome(w));
        assert_truncations_fail(&out);
    }
}
