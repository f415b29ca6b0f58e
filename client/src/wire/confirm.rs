//! CONFIRM (server → client): the publish with this frame's request id is accepted at the
//! queue's durability level.
//!
//! ```text
//! +---------------------------------------------------------------+
//! | position (u64): sequence of the batch's first message         |
//! +---------------------------------------------------------------+
//! | count (u32): messages confirmed                               |
//! +---------------------------------------------------------------+
//! ```
//! Positions only grow within a queue. For topics the position counts messages published on that
//! topic through the shard that received them.

use super::{begin_frame, end_frame, DecodeError, Opcode, Reader};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confirm {
    pub position: u64,
    pub count: u32,
}

impl Confirm {
    pub fn encode(&self, out: &mut Vec<u8>, request_id: u64) {
        let at = begin_frame(out, Opcode::Confirm, 0, request_id);
        out.extend_from_slice(&self.position.to_le_bytes());
        out.extend_from_slice(&self.count.to_le_bytes());
        end_frame(out, at);
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Confirm { position: r.u64()?, count: r.u32()? })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::Command;
    use super::*;

    #[test]
    fn round_trip() {
        let c = Confirm { position: 1 << 40, count: 9 };
        let mut out = Vec::new();
        c.encode(&mut out, 12);
        let (h, cmd) = decode_one(&out).unwrap();
        assert_eq!((h.request_id, cmd), (12, Command::Confirm(c)));
        assert_truncations_fail(&out);
    }
}
