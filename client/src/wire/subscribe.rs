//! SUBSCRIBE (topic pattern), CONSUME (queue with credit) and UNSUBSCRIBE. Answered by OK/ERROR.
//!
//! ```text
//! SUBSCRIBE body                       CONSUME body
//! +-------------------------------+    +-------------------------------+
//! | subscription id (u32)         |    | consumer id (u32)             |
//! +-------------------------------+    +-------------------------------+
//! | pattern (u16 len + UTF-8)     |    | credit (u32): unacked maximum |
//! +-------------------------------+    +-------------------------------+
//!                                      | queue (u16 len + UTF-8)       |
//! UNSUBSCRIBE body                     +-------------------------------+
//! +-------------------------------+
//! | subscription/consumer id (u32)|
//! +-------------------------------+
//! ```
//! Ids are chosen by the client, unique per connection, shared by subscriptions and consumers;
//! DELIVER frames carry them. A pattern is dot-separated words where `*` matches one word and
//! `#` matches zero or more (AMQP topic-exchange rules).

use super::{begin_frame, end_frame, put_str16, DecodeError, Opcode, Reader};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe<'a> {
    pub id: u32,
    pub pattern: &'a str,
}

impl<'a> Subscribe<'a> {
    pub fn encode(&self, out: &mut Vec<u8>, request_id: u64) {
        let at = begin_frame(out, Opcode::Subscribe, 0, request_id);
        out.extend_from_slice(&self.id.to_le_bytes());
        put_str16(out, self.pattern);
        end_frame(out, at);
    }

    pub fn decode(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        Ok(Subscribe { id: r.u32()?, pattern: r.name()? })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consume<'a> {
    pub id: u32,
    pub credit: u32,
    pub queue: &'a str,
}

impl<'a> Consume<'a> {
    pub fn encode(&self, out: &mut Vec<u8>, request_id: u64) {
        let at = begin_frame(out, Opcode::Consume, 0, request_id);
        out.extend_from_slice(&self.id.to_le_bytes());
        out.extend_from_slice(&self.credit.to_le_bytes());
        put_str16(out, self.queue);
        end_frame(out, at);
    }

    pub fn decode(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let id = r.u32()?;
        let credit = r.u32()?;
        if credit == 0 {
            return Err(DecodeError::Invalid { offset: 4, what: "credit of zero" });
        }
        Ok(Consume { id, credit, queue: r.name()? })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsubscribe {
    pub id: u32,
}

impl Unsubscribe {
    pub fn encode(&self, out: &mut Vec<u8>, request_id: u64) {
        let at = begin_frame(out, Opcode::Unsubscribe, 0, request_id);
        out.extend_from_slice(&self.id.to_le_bytes());
        end_frame(out, at);
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Unsubscribe { id: r.u32()? })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::Command;
    use super::*;

    #[test]
    fn round_trips() {
        let mut out = Vec::new();
        let s = Subscribe { id: 4, pattern: "a.*.#" };
        s.encode(&mut out, 1);
        assert_eq!(decode_one(&out).unwrap().1, Command::Subscribe(s));
        assert_truncations_fail(&out);

        let mut out = Vec::new();
        let c = Consume { id: 5, credit: 100, queue: "q" };
        c.encode(&mut out, 2);
        assert_eq!(decode_one(&out).unwrap().1, Command::Consume(c));
        assert_truncations_fail(&out);

        let mut out = Vec::new();
        Unsubscribe { id: 5 }.encode(&mut out, 3);
        assert_eq!(decode_one(&out).unwrap().1, Command::Unsubscribe(Unsubscribe { id: 5 }));
        assert_truncations_fail(&out);
    }

    #[test]
    fn zero_credit_rejected() {
        let mut out = Vec::new();
        Consume { id: 5, credit: 0, queue: "q" }.encode(&mut out, 2);
        assert!(decode_one(&out).is_err());
    }
}
