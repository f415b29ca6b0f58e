//! BROWSE (client → server): read a queue's messages without consuming them. The server answers
//! with DELIVER frames for `id` whose tags are the messages' positions (0 is a valid position:
//! these deliveries are not settled), then OK.
//!
//! ```text
//! +-------------------------------+-------------------------------+
//! | id (u32): for the DELIVER     | max (u32): messages at most,  |
//! | frames of the answer          | 1..=65536                     |
//! +-------------------------------+-------------------------------+
//! | from (u64): first position to return                          |
//! +---------------------------------------------------------------+
//! | queue (u16 len + UTF-8)                                       |
//! +---------------------------------------------------------------+
//! ```
//! Messages are returned in position order, both those waiting and those delivered but not yet
//! acknowledged; to page through a queue, ask again from the last position plus one.

use super::{begin_frame, end_frame, put_str16, DecodeError, Opcode, Reader};

/// Bound on one answer, so a browse cannot make the server copy a whole queue at once.
pub const BROWSE_MAX: u32 = 65_536;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Browse<'a> {
    pub id: u32,
    pub max: u32,
    pub from: u64,
    pub queue: &'a str,
}

impl<'a> Browse<'a> {
    pub fn encode(&self, out: &mut Vec<u8>, request_id: u64) {
        let at = begin_frame(out, Opcode::Browse, 0, request_id);
        out.extend_from_slice(&self.id.to_le_bytes());
        out.extend_from_slice(&self.max.to_le_bytes());
        out.extend_from_slice(&self.from.to_le_bytes());
        put_str16(out, self.queue);
        end_frame(out, at);
    }

    pub fn decode(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let id = r.u32()?;
        let max = r.u32()?;
        if max == 0 || max > BROWSE_MAX {
            return Err(DecodeError::Invalid { offset: 4, what: "browse max" });
        }
        Ok(Browse { id, max, from: r.u64()?, queue: r.name()? })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::Command;
    use super::*;

    #[test]
    fn round_trip_and_bounds() {
        let b = Browse { id: 3, max: 10, from: 99, queue: "q" };
        let mut out = Vec::new();
        b.encode(&mut out, 7);
        assert_eq!(decode_one(&out).unwrap().1, Command::Browse(b));
        assert_truncations_fail(&out);
        for max in [0, BROWSE_MAX + 1] {
            let mut out = Vec::new();
            Browse { id: 3, max, from: 0, queue: "q" }.encode(&mut out, 7);
            assert!(decode_one(&out).is_err());
        }
    }
}
