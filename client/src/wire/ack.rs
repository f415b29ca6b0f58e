//! ACK, NACK and REJECT (client → server): settle deliveries of one consumer.
//!
//! ```text
//! +-------------------------------+-------------------------------+
//! | consumer id (u32)             | count (u32), at least 1       |
//! +-------------------------------+-------------------------------+
//! | delivery tag (u64) ... `count` times                          |
//! +---------------------------------------------------------------+
//! ```
//! ACK removes the messages; NACK requeues them (redelivered, delivery count kept); REJECT moves
//! them to the queue's dead-letter queue. With header flag `MULTIPLE` (0x01) the list holds one
//! tag and settles every unacked delivery of the consumer up to and including it. Unknown tags are
//! ignored (they may have been settled already by a disconnect), as in AMQP's `multiple` acks.
//! No reply is sent.

use super::{begin_frame, end_frame, DecodeError, Opcode, Reader};

/// Bound on tags per frame so one frame cannot ask for unbounded work: 64 Ki settles ~ 512 KiB.
pub const ACK_TAGS_MAX: u32 = 65_536;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acks<'a> {
    pub consumer: u32,
    tags: &'a [u8],
}

impl<'a> Acks<'a> {
    /// `op` is ACK, NACK or REJECT.
    pub fn encode(out: &mut Vec<u8>, op: Opcode, flags: u8, consumer: u32, tags: &[u64]) {
        let at = begin_frame(out, op, flags, 0);
        out.extend_from_slice(&consumer.to_le_bytes());
        out.extend_from_slice(&(tags.len() as u32).to_le_bytes());
        for t in tags {
            out.extend_from_slice(&t.to_le_bytes());
        }
        end_frame(out, at);
    }

    pub fn decode(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let consumer = r.u32()?;
        let count = r.u32()?;
        if count == 0 || count > ACK_TAGS_MAX {
            return Err(DecodeError::Invalid { offset: 4, what: "tag count" });
        }
        let tags = r.bytes(count as usize * 8)?;
        Ok(Acks { consumer, tags })
    }

    pub fn tags(&self) -> impl Iterator<Item = u64> + 'a {
        self.tags.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
    }

    pub fn len(&self) -> usize {
        self.tags.len() / 8
    }

    pub fn is_empty(&self) -> bool {
        self.tags.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::Command;
    use super::*;

    #[test]
    fn round_trip() {
        for op in [Opcode::Ack, Opcode::Nack, Opcode::Reject] {
            let mut out = Vec::new();
            Acks::encode(&mut out, op, 1, 9, &[1, 5, u64::MAX]);
            let (h, cmd) = decode_one(&out).unwrap();
            assert_eq!(h.flags, 1);
            let (Command::Ack(a) | Command::Nack(a) | Command::Reject(a)) = cmd else { panic!() };
            assert_eq!(a.consumer, 9);
            assert_eq!(a.tags().collect::<Vec<_>>(), vec![1, 5, u64::MAX]);
            assert_truncations_fail(&out);
        }
    }

    #[test]
    fn empty_and_huge_counts_rejected() {
        let mut out = Vec::new();
        Acks::encode(&mut out, Opcode::Ack, 0, 9, &[]);
        assert!(decode_one(&out).is_err());
        let mut out = Vec::new();
        Acks::encode(&mut out, Opcode::Ack, 0, 9, &[1]);
        out[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_one(&out).is_err());
    }
}
