//! The rdmq native protocol, version 1: frame header, record batches and one module per command.
//!
//! Pure code: no syscalls, no clocks, no allocation on decode. Every decoder borrows the received
//! bytes and every read is bounds-checked; errors carry the offset, the bytes needed and the bytes
//! available. Encoders append to a caller's `Vec<u8>`. The server and the client share this module,
//! so a frame is decoded by exactly one piece of code wherever it lands. Layouts with bit diagrams
//! are in `docs/PROTOCOL.md` and in each command's module doc.

pub mod ack;
pub mod bind;
pub mod browse;
pub mod confirm;
pub mod declare;
pub mod deliver;
pub mod error;
pub mod frame;
pub mod hello;
pub mod ping;
pub mod publish;
pub mod record;
pub mod seek;
pub mod subscribe;

use std::fmt;

pub use frame::{FrameHeader, Opcode, FRAME_HEADER_LEN};

/// Protocol version spoken by this crate.
pub const PROTOCOL_VERSION: u16 = 1;
/// `"RDMQ"` little-endian: the first four body bytes of HELLO.
pub const MAGIC: u32 = u32::from_le_bytes(*b"RDMQ");
/// Longest destination name in bytes: long enough for dotted hierarchies, short enough to index.
pub const NAME_LEN_MAX: usize = 255;

/// Why a byte sequence is not a valid frame, with where it went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// A read ran past the end: `needed` bytes at `offset`, only `available` there.
    Truncated { offset: usize, needed: usize, available: usize },
    /// A field holds a value the protocol does not allow.
    Invalid { offset: usize, what: &'static str },
    /// The opcode byte names no command.
    UnknownOpcode(u8),
    /// The batch checksum does not match its bytes.
    Checksum { expected: u32, actual: u32 },
}

impl DecodeError {
    /// The same error with its offset moved by `by`: for a part decoded from inside a larger
    /// buffer, so the offset reported is within the whole frame.
    pub fn shifted(self, by: usize) -> DecodeError {
        match self {
            DecodeError::Truncated { offset, needed, available } => {
                DecodeError::Truncated { offset: offset + by, needed, available }
            }
            DecodeError::Invalid { offset, what } => {
                DecodeError::Invalid { offset: offset + by, what }
            }
            other => other,
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated { offset, needed, available } => write!(
                f,
                "truncated: needed {needed} bytes at offset {offset}, {available} available"
            ),
            DecodeError::Invalid { offset, what } => write!(f, "invalid {what} at offset {offset}"),
            DecodeError::UnknownOpcode(op) => write!(f, "unknown opcode 0x{op:02x}"),
            DecodeError::Checksum { expected, actual } => {
                write!(f, "batch checksum mismatch: header 0x{expected:08x}, data 0x{actual:08x}")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// A bounds-checked little-endian cursor over borrowed bytes.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::Truncated {
                offset: self.pos,
                needed: n,
                available: self.remaining(),
            });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// Everything not yet read.
    pub fn rest(&mut self) -> &'a [u8] {
        let out = &self.buf[self.pos..];
        self.pos = self.buf.len();
        out
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.bytes(1)?[0])
    }

    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.bytes(2)?.try_into().expect("2 bytes")))
    }

    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.bytes(4)?.try_into().expect("4 bytes")))
    }

    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.bytes(8)?.try_into().expect("8 bytes")))
    }

    /// A `u16`-length-prefixed UTF-8 string.
    pub fn str16(&mut self) -> Result<&'a str, DecodeError> {
        let len = self.u16()? as usize;
        let at = self.pos;
        let raw = self.bytes(len)?;
        std::str::from_utf8(raw).map_err(|_| DecodeError::Invalid { offset: at, what: "utf-8" })
    }

    /// A destination name: a non-empty string of at most [`NAME_LEN_MAX`] bytes.
    pub fn name(&mut self) -> Result<&'a str, DecodeError> {
        let at = self.pos;
        let name = self.str16()?;
        if name.is_empty() || name.len() > NAME_LEN_MAX {
            return Err(DecodeError::Invalid { offset: at, what: "destination name length" });
        }
        Ok(name)
    }

    /// Fails unless every byte was consumed: trailing garbage is a malformed frame.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if self.remaining() != 0 {
            return Err(DecodeError::Invalid { offset: self.pos, what: "trailing bytes" });
        }
        Ok(())
    }
}

/// Appends a `u16`-length-prefixed string. Panics if longer than `u16::MAX` (caller's bug).
pub fn put_str16(out: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).expect("string longer than u16::MAX");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Starts a frame: writes a header with a zero length and returns its offset for [`end_frame`].
pub fn begin_frame(out: &mut Vec<u8>, opcode: Opcode, flags: u8, request_id: u64) -> usize {
    let at = out.len();
    FrameHeader { length: 0, opcode: opcode as u8, flags, reserved: 0, request_id }.put(out);
    at
}

/// Patches the length of the frame begun at `at` to cover everything appended since.
pub fn end_frame(out: &mut [u8], at: usize) {
    let body = out.len() - at - FRAME_HEADER_LEN;
    let body = u32::try_from(body).expect("frame body longer than u32::MAX");
    out[at..at + 4].copy_from_slice(&body.to_le_bytes());
}

/// One decoded frame: the header and a view of its command borrowing the body.
#[derive(Debug, Clone, PartialEq)]
pub enum Command<'a> {
    Hello(hello::Hello<'a>),
    Welcome(hello::Welcome<'a>),
    Ping(ping::Ping),
    Pong(ping::Ping),
    DeclareQueue(declare::DeclareQueue<'a>),
    DeleteQueue(declare::Named<'a>),
    DeclareTopic(declare::Named<'a>),
    DeleteTopic(declare::Named<'a>),
    Publish(publish::Publish<'a>),
    Confirm(confirm::Confirm),
    Subscribe(subscribe::Subscribe<'a>),
    Consume(subscribe::Consume<'a>),
    Unsubscribe(subscribe::Unsubscribe),
    Deliver(deliver::Deliver<'a>),
    Ack(ack::Acks<'a>),
    Nack(ack::Acks<'a>),
    Reject(ack::Acks<'a>),
    Browse(browse::Browse<'a>),
    Bind(bind::Bind<'a>),
    Seek(seek::Seek<'a>),
    Unbind(bind::Bind<'a>),
    Ok,
    Error(error::ErrorFrame<'a>),
}

/// Decodes the body of a frame whose header was already read.
pub fn decode<'a>(header: &FrameHeader, body: &'a [u8]) -> Result<Command<'a>, DecodeError> {
    let op = Opcode::from_u8(header.opcode).ok_or(DecodeError::UnknownOpcode(header.opcode))?;
    let mut r = Reader::new(body);
    let cmd = match op {
        Opcode::Hello => Command::Hello(hello::Hello::decode(&mut r)?),
        Opcode::Welcome => Command::Welcome(hello::Welcome::decode(&mut r)?),
        Opcode::Ping => Command::Ping(ping::Ping::decode(&mut r)?),
        Opcode::Pong => Command::Pong(ping::Ping::decode(&mut r)?),
        Opcode::DeclareQueue => Command::DeclareQueue(declare::DeclareQueue::decode(&mut r)?),
        Opcode::DeleteQueue => Command::DeleteQueue(declare::Named::decode(&mut r)?),
        Opcode::DeclareTopic => Command::DeclareTopic(declare::Named::decode(&mut r)?),
        Opcode::DeleteTopic => Command::DeleteTopic(declare::Named::decode(&mut r)?),
        Opcode::Publish => Command::Publish(publish::Publish::decode(&mut r)?),
        Opcode::Confirm => Command::Confirm(confirm::Confirm::decode(&mut r)?),
        Opcode::Subscribe => Command::Subscribe(subscribe::Subscribe::decode(&mut r)?),
        Opcode::Consume => Command::Consume(subscribe::Consume::decode(&mut r)?),
        Opcode::Unsubscribe => Command::Unsubscribe(subscribe::Unsubscribe::decode(&mut r)?),
        Opcode::Deliver => Command::Deliver(deliver::Deliver::decode(&mut r)?),
        Opcode::Ack => Command::Ack(ack::Acks::decode(&mut r)?),
        Opcode::Nack => Command::Nack(ack::Acks::decode(&mut r)?),
        Opcode::Reject => Command::Reject(ack::Acks::decode(&mut r)?),
        Opcode::Browse => Command::Browse(browse::Browse::decode(&mut r)?),
        Opcode::Bind => Command::Bind(bind::Bind::decode(&mut r)?),
        Opcode::Seek => Command::Seek(seek::Seek::decode(&mut r)?),
        Opcode::Unbind => Command::Unbind(bind::Bind::decode(&mut r)?),
        Opcode::Ok => Command::Ok,
        Opcode::Error => Command::Error(error::ErrorFrame::decode(&mut r)?),
    };
    r.finish()?;
    Ok(cmd)
}

/// Splits one complete frame off the front of `buf`: `Ok(None)` when more bytes are needed.
pub fn split_frame(
    buf: &[u8],
    body_max: usize,
) -> Result<Option<(FrameHeader, &[u8])>, DecodeError> {
    if buf.len() < FRAME_HEADER_LEN {
        return Ok(None);
    }
    let h = FrameHeader::decode(&buf[..FRAME_HEADER_LEN], body_max)?;
    let end = FRAME_HEADER_LEN + h.length as usize;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some((h, &buf[FRAME_HEADER_LEN..end])))
}

#[cfg(test)]
pub(crate) mod test_util {
    use super::*;

    /// Decodes a whole encoded frame, asserting it is exactly one frame.
    pub fn decode_one(frame: &[u8]) -> Result<(FrameHeader, Command<'_>), DecodeError> {
        let (h, body) = split_frame(frame, frame::FRAME_BODY_MAX)?.expect("complete frame");
        assert_eq!(FRAME_HEADER_LEN + body.len(), frame.len());
        Ok((h, decode(&h, body)?))
    }

    /// Every strict prefix of the body must fail to decode (never panic, never succeed).
    pub fn assert_truncations_fail(frame: &[u8]) {
        let h = FrameHeader::decode(&frame[..FRAME_HEADER_LEN], usize::MAX).unwrap();
        let body = &frame[FRAME_HEADER_LEN..];
        for n in 0..body.len() {
            assert!(decode(&h, &body[..n]).is_err(), "prefix of {n} bytes decoded");
        }
    }
}
