//! BIND and UNBIND (client → server): route topic messages into a queue. Answered by OK/ERROR.
//!
//! ```text
//! +---------------------------------------------------------------+
//! | queue (u16 len + UTF-8)                                       |
//! +---------------------------------------------------------------+
//! | topic pattern (u16 len + UTF-8): `*` one word, `#` zero or more|
//! +---------------------------------------------------------------+
//! ```
//! While bound, every message published on a matching topic is also appended to the queue, so
//! a **durable subscription** is a queue bound to a pattern: messages published while its
//! consumer is away wait in the queue, and its acknowledgements are the subscription's cursor.
//! A binding lives as long as its queue (across restarts for `flush` and `fsync` queues).

use super::{begin_frame, end_frame, put_str16, DecodeError, Opcode, Reader};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind<'a> {
    pub queue: &'a str,
    pub pattern: &'a str,
}

impl<'a> Bind<'a> {
    /// `op` is BIND or UNBIND.
    pub fn encode(&self, out: &mut Vec<u8>, op: Opcode, request_id: u64) {
        let at = begin_frame(out, op, 0, request_id);
        put_str16(out, self.queue);
        put_str16(out, self.pattern);
        end_frame(out, at);
    }

    pub fn decode(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        Ok(Bind { queue: r.name()?, pattern: r.name()? })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::Command;
    use super::*;

    #[test]
    fn round_trips() {
        for op in [Opcode::Bind, Opcode::Unbind] {
            let b = Bind { queue: "audit", pattern: "orders.#" };
            let mut out = Vec::new();
            b.encode(&mut out, op, 3);
            match decode_one(&out).unwrap().1 {
                Command::Bind(got) | Command::Unbind(got) => assert_eq!(got, b),
                other => panic!("{other:?}"),
            }
            assert_truncations_fail(&out);
        }
    }
}
