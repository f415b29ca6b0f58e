//! SEEK (client → server): move a queue's cursor, as a durable subscriber rewinds or skips.
//! Answered by OK or ERROR.
//!
//! ```text
//! +---------------+---------------+-------------------------------+
//! | mode (u8)     | reserved = 0  | reserved (u16) = 0            |
//! | 0 position    |               |                               |
//! | 1 timestamp   |               |                               |
//! +---------------+---------------+-------------------------------+
//! | value (u64): a position, or microseconds since the epoch      |
//! +---------------------------------------------------------------+
//! | queue (u16 len + UTF-8)                                       |
//! +---------------------------------------------------------------+
//! ```
//! Waiting messages before the target count as consumed; acknowledged messages at or after it
//! wait again (redelivered), if the queue still keeps them: only queues declared with
//! `max_bytes` or `max_age_ms` keep acknowledged messages, within those bounds. Messages held by
//! consumers are not touched. By timestamp, the target is the first message stamped at or after it.

use super::{begin_frame, end_frame, put_str16, DecodeError, Opcode, Reader};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeekTarget {
    Position(u64),
    TimestampUs(u64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seek<'a> {
    pub queue: &'a str,
    pub target: SeekTarget,
}

impl<'a> Seek<'a> {
    pub fn encode(&self, out: &mut Vec<u8>, request_id: u64) {
        let at = begin_frame(out, Opcode::Seek, 0, request_id);
        let (mode, value) = match self.target {
            SeekTarget::Position(p) => (0u8, p),
            SeekTarget::TimestampUs(t) => (1u8, t),
        };
        out.extend_from_slice(&[mode, 0, 0, 0]);
        out.extend_from_slice(&value.to_le_bytes());
        put_str16(out, self.queue);
        end_frame(out, at);
    }

    pub fn decode(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let mode = r.u8()?;
        if r.u8()? != 0 || r.u16()? != 0 {
            return Err(DecodeError::Invalid { offset: 1, what: "reserved" });
        }
        let value = r.u64()?;
        let target = match mode {
            0 => SeekTarget::Position(value),
            1 => SeekTarget::TimestampUs(value),
            _ => return Err(DecodeError::Invalid { offset: 0, what: "seek mode" }),
        };
        Ok(Seek { queue: r.name()?, target })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::Command;
    use super::*;

    #[test]
    fn round_trip() {
        for target in [SeekTarget::Position(5), SeekTarget::TimestampUs(1 << 50)] {
            let s = Seek { queue: "sub", target };
            let mut out = Vec::new();
            s.encode(&mut out, 2);
            assert_eq!(decode_one(&out).unwrap().1, Command::Seek(s));
            assert_truncations_fail(&out);
        }
        let mut out = Vec::new();
        Seek { queue: "sub", target: SeekTarget::Position(1) }.encode(&mut out, 2);
        out[16] = 2;
        assert!(decode_one(&out).is_err());
    }
}
