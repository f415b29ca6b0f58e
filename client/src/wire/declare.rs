//! DECLARE_QUEUE, DELETE_QUEUE, DECLARE_TOPIC, DELETE_TOPIC. Each is answered by OK or ERROR.
//!
//! ```text
//! DECLARE_QUEUE body
//! +---------------+---------------+-------------------------------+
//! | durability u8 | reserved = 0  |  reserved (u16) = 0           |
//! +---------------+---------------+-------------------------------+
//! | max_deliveries (u32): 0 = the server's default                |
//! +---------------------------------------------------------------+
//! | max_length (u32): messages held at most, 0 = server default   |
//! +---------------------------------------------------------------+
//! | max_bytes (u64): record bytes held at most, 0 = no bound      |
//! +---------------------------------------------------------------+
//! | max_age_ms (u64): kept at most this long, 0 = no bound        |
//! +---------------------------------------------------------------+
//! | name (u16 len + UTF-8)                                        |
//! +---------------------------------------------------------------+
//! | dead-letter queue (u16 len + UTF-8): empty = "<name>.dlq"     |
//! +---------------------------------------------------------------+
//!
//! DELETE_QUEUE, DECLARE_TOPIC, DELETE_TOPIC body: name (u16 len + UTF-8)
//! ```
//! Declaring an existing queue with the same options succeeds; with different options it fails
//! with `PRECONDITION_FAILED`, as in AMQP.

use super::{begin_frame, end_frame, put_str16, DecodeError, Opcode, Reader, NAME_LEN_MAX};

/// How far a message is carried before its publish is confirmed.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// In memory only; lost on restart.
    Memory = 0,
    /// Written to the operating system before the confirm.
    Flush = 1,
    /// Written and synced (group commit) before the confirm. The default for queues.
    #[default]
    Fsync = 2,
}

impl Durability {
    pub fn from_u8(v: u8) -> Option<Durability> {
        match v {
            0 => Some(Durability::Memory),
            1 => Some(Durability::Flush),
            2 => Some(Durability::Fsync),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Memory => "memory",
            Durability::Flush => "flush",
            Durability::Fsync => "fsync",
        }
    }
}

impl std::str::FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "memory" => Ok(Durability::Memory),
            "flush" => Ok(Durability::Flush),
            "fsync" => Ok(Durability::Fsync),
            _ => Err(format!("unknown durability {s:?} (memory, flush or fsync)")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclareQueue<'a> {
    pub name: &'a str,
    pub durability: Durability,
    pub max_deliveries: u32,
    pub max_length: u32,
    /// With `max_age_ms`, a retention bound: a queue with either keeps acknowledged messages
    /// (within the bounds) so a SEEK can go back to them.
    pub max_bytes: u64,
    pub max_age_ms: u64,
    pub dead_letter: &'a str,
}

impl<'a> DeclareQueue<'a> {
    pub fn encode(&self, out: &mut Vec<u8>, request_id: u64) {
        let at = begin_frame(out, Opcode::DeclareQueue, 0, request_id);
        out.extend_from_slice(&[self.durability as u8, 0, 0, 0]);
        out.extend_from_slice(&self.max_deliveries.to_le_bytes());
        out.extend_from_slice(&self.max_length.to_le_bytes());
        out.extend_from_slice(&self.max_bytes.to_le_bytes());
        out.extend_from_slice(&self.max_age_ms.to_le_bytes());
        put_str16(out, self.name);
        put_str16(out, self.dead_letter);
        end_frame(out, at);
    }

    pub fn decode(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let durability = Durability::from_u8(r.u8()?)
            .ok_or(DecodeError::Invalid { offset: 0, what: "durability" })?;
        if r.u8()? != 0 || r.u16()? != 0 {
            return Err(DecodeError::Invalid { offset: 1, what: "reserved" });
        }
        let max_deliveries = r.u32()?;
        let max_length = r.u32()?;
        let max_bytes = r.u64()?;
        let max_age_ms = r.u64()?;
        let name = r.name()?;
        let at = r.position();
        let dead_letter = r.str16()?;
        if dead_letter.len() > NAME_LEN_MAX {
            return Err(DecodeError::Invalid { offset: at, what: "dead-letter name length" });
        }
        Ok(DeclareQueue {
            name,
            durability,
            max_deliveries,
            max_length,
            max_bytes,
            max_age_ms,
            dead_letter,
        })
    }
}

/// The body of commands that carry only a destination name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named<'a> {
    pub name: &'a str,
}

impl<'a> Named<'a> {
    /// `op` is one of DELETE_QUEUE, DECLARE_TOPIC, DELETE_TOPIC.
    pub fn encode(&self, out: &mut Vec<u8>, op: Opcode, request_id: u64) {
        let at = begin_frame(out, op, 0, request_id);
        put_str16(out, self.name);
        end_frame(out, at);
    }

    pub fn decode(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        Ok(Named { name: r.name()? })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::Command;
    use super::*;

    #[test]
    fn declare_queue_round_trip() {
        let d = DeclareQueue {
            name: "orders",
            durability: Durability::Fsync,
            max_deliveries: 5,
            max_length: 1000,
            max_bytes: 1 << 30,
            max_age_ms: 60_000,
            dead_letter: "orders.dead",
        };
        let mut out = Vec::new();
        d.encode(&mut out, 3);
        assert_eq!(decode_one(&out).unwrap().1, Command::DeclareQueue(d));
        assert_truncations_fail(&out);
    }

    #[test]
    fn declare_queue_rejects_bad_durability_and_empty_name() {
        let d = DeclareQueue {
            name: "q",
            durability: Durability::Memory,
            max_deliveries: 0,
            max_length: 0,
            max_bytes: 0,
            max_age_ms: 0,
            dead_letter: "",
        };
        let mut out = Vec::new();
        d.encode(&mut out, 3);
        out[16] = 9;
        assert!(decode_one(&out).is_err());
        let mut out = Vec::new();
        Named { name: "" }.encode(&mut out, Opcode::DeleteQueue, 1);
        assert!(decode_one(&out).is_err());
    }

    #[test]
    fn named_round_trips() {
        for op in [Opcode::DeleteQueue, Opcode::DeclareTopic, Opcode::DeleteTopic] {
            let mut out = Vec::new();
            Named { name: "a.b" }.encode(&mut out, op, 1);
            let (h, cmd) = decode_one(&out).unwrap();
            assert_eq!(h.opcode, op as u8);
            match cmd {
                Command::DeleteQueue(n) | Command::DeclareTopic(n) | Command::DeleteTopic(n) => {
                    assert_eq!(n.name, "a.b")
                }
                other => panic!("{other:?}"),
            }
            assert_truncations_fail(&out);
        }
    }
}
