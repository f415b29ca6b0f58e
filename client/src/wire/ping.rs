//! PING and PONG: liveness and round-trip measurement. PONG echoes the PING's token.
//!
//! ```text
//! +---------------------------------------------------------------+
//! |                      token (u64)                              |
//! +---------------------------------------------------------------+
//! ```

use super::{begin_frame, end_frame, DecodeError, Opcode, Reader};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ping {
    pub token: u64,
}

impl Ping {
    /// `pong = false` writes PING, `true` writes PONG.
    pub fn encode(&self, out: &mut Vec<u8>, request_id: u64, pong: bool) {
        let op = if pong { Opcode::Pong } else { Opcode::Ping };
        let at = begin_frame(out, op, 0, request_id);
        out.extend_from_slice(&self.token.to_le_bytes());
        end_frame(out, at);
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Ping { token: r.u64()? })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::Command;
    use super::*;

    #[test]
    fn round_trip() {
        let mut out = Vec::new();
        Ping { token: 42 }.encode(&mut out, 1, false);
        assert_eq!(decode_one(&out).unwrap().1, Command::Ping(Ping { token: 42 }));
        assert_truncations_fail(&out);
        let mut out = Vec::new();
        Ping { token: 43 }.encode(&mut out, 1, true);
        assert_eq!(decode_one(&out).unwrap().1, Command::Pong(Ping { token: 43 }));
    }
}
