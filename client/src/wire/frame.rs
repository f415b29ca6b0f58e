//! The fixed 16-byte frame header that starts every frame in both directions.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +---------------------------------------------------------------+
//! |                 length: body bytes after the header (u32)     |
//! +---------------+---------------+-------------------------------+
//! |  opcode (u8)  |  flags (u8)   |        reserved (u16) = 0     |
//! +---------------+---------------+-------------------------------+
//! |                 request id (u64): echoed in the reply         |
//! |                                                               |
//! +---------------------------------------------------------------+
//! ```
//! All integers little-endian. The reply to a request (OK, CONFIRM, ERROR, WELCOME, PONG) carries
//! the request's id; server-initiated frames (DELIVER, connection-level ERROR) carry 0.

use super::{DecodeError, Reader};

pub const FRAME_HEADER_LEN: usize = 16;
/// Largest frame body a peer may send unless the handshake lowers it: 16 MiB bounds the memory
/// one connection can pin before its frame is validated.
pub const FRAME_BODY_MAX: usize = 16 << 20;

/// In-memory mirror of the wire header, `repr(C)` so its layout is the wire layout.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub length: u32,
    pub opcode: u8,
    pub flags: u8,
    pub reserved: u16,
    pub request_id: u64,
}

const _: () = assert!(std::mem::size_of::<FrameHeader>() == FRAME_HEADER_LEN);
const _: () = assert!(std::mem::offset_of!(FrameHeader, opcode) == 4);
const _: () = assert!(std::mem::offset_of!(FrameHeader, request_id) == 8);

/// Flag on ACK/NACK/REJECT: the tag list has one entry and covers every earlier unacked tag too.
pub const FLAG_MULTIPLE: u8 = 0x01;
/// Flag on PUBLISH: the server sends no CONFIRM (errors are still reported), for publishers that
/// learn of delivery another way, such as a request/response exchange.
pub const FLAG_NO_CONFIRM: u8 = 0x02;

/// Every command of protocol v1. Values are stable on the wire.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Hello = 0x01,
    Welcome = 0x02,
    Ping = 0x03,
    Pong = 0x04,
    DeclareQueue = 0x10,
    DeleteQueue = 0x11,
    DeclareTopic = 0x12,
    DeleteTopic = 0x13,
    Bind = 0x14,
    Unbind = 0x15,
    Publish = 0x20,
    Confirm = 0x21,
    Subscribe = 0x30,
    Consume = 0x31,
    Unsubscribe = 0x32,
    Deliver = 0x33,
    Ack = 0x34,
    Nack = 0x35,
    Reject = 0x36,
    Browse = 0x37,
    Seek = 0x38,
    Ok = 0x7E,
    Error = 0x7F,
}

impl Opcode {
    pub fn from_u8(v: u8) -> Option<Opcode> {
        use Opcode::*;
        Some(match v {
            0x01 => Hello,
            0x02 => Welcome,
            0x03 => Ping,
            0x04 => Pong,
            0x10 => DeclareQueue,
            0x11 => DeleteQueue,
            0x12 => DeclareTopic,
            0x13 => DeleteTopic,
            0x14 => Bind,
            0x15 => Unbind,
            0x20 => Publish,
            0x21 => Confirm,
            0x30 => Subscribe,
            0x31 => Consume,
            0x32 => Unsubscribe,
            0x33 => Deliver,
            0x34 => Ack,
            0x35 => Nack,
            0x36 => Reject,
            0x37 => Browse,
            0x38 => Seek,
            0x7E => Ok,
            0x7F => Error,
            _ => return None,
        })
    }
}

impl FrameHeader {
    pub fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_bytes());
    }

    /// The header's 16 bytes, for writers that encode in place.
    pub fn to_bytes(&self) -> [u8; FRAME_HEADER_LEN] {
        let mut b = [0u8; FRAME_HEADER_LEN];
        b[0..4].copy_from_slice(&self.length.to_le_bytes());
        b[4] = self.opcode;
        b[5] = self.flags;
        b[6..8].copy_from_slice(&self.reserved.to_le_bytes());
        b[8..16].copy_from_slice(&self.request_id.to_le_bytes());
        b
    }

    /// Reads a header from the first 16 bytes of `buf`, checking the length bound and the
    /// reserved field; the opcode is checked by [`super::decode`].
    pub fn decode(buf: &[u8], body_max: usize) -> Result<FrameHeader, DecodeError> {
        let mut r = Reader::new(buf);
        let h = FrameHeader {
            length: r.u32()?,
            opcode: r.u8()?,
            flags: r.u8()?,
            reserved: r.u16()?,
            request_id: r.u64()?,
        };
        if h.length as usize > body_max {
            return Err(DecodeError::Invalid { offset: 0, what: "frame length above maximum" });
        }
        if h.reserved != 0 {
            return Err(DecodeError::Invalid { offset: 6, what: "reserved header field" });
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let h = FrameHeader { length: 7, opcode: 0x20, flags: 1, reserved: 0, request_id: 9 };
        let mut out = Vec::new();
        h.put(&mut out);
        assert_eq!(out.len(), FRAME_HEADER_LEN);
        assert_eq!(FrameHeader::decode(&out, FRAME_BODY_MAX).unwrap(), h);
    }

    #[test]
    fn rejects_oversized_and_short() {
        let h = FrameHeader { length: 100, opcode: 1, flags: 0, reserved: 0, request_id: 0 };
        let mut out = Vec::new();
        h.put(&mut out);
        assert!(matches!(FrameHeader::decode(&out, 99), Err(DecodeError::Invalid { .. })));
        assert!(matches!(
            FrameHeader::decode(&out[..10], 1000),
            Err(DecodeError::Truncated { offset: 8, needed: 8, available: 2 })
        ));
        out[6] = 1;
        assert!(FrameHeader::decode(&out, 1000).is_err());
    }

    #[test]
    fn every_opcode_maps_back() {
        for v in 0..=255u8 {
            if let Some(op) = Opcode::from_u8(v) {
                assert_eq!(op as u8, v);
            }
        }
    }
}
