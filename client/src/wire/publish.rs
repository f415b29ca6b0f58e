//! PUBLISH: a batch of messages for one queue or topic, answered by one CONFIRM (or ERROR).
//!
//! ```text
//! +---------------+---------------+-------------------------------+
//! | kind (u8)     | reserved = 0  | name (u16 len + UTF-8) ...    |
//! | 0 queue       |               |                               |
//! | 1 topic       |               |                               |
//! +---------------+---------------+-------------------------------+
//! | record batch (see `record`): exactly the rest of the body     |
//! +---------------------------------------------------------------+
//! ```
//! The batch is validated (length, checksum, every record) before anything is stored; a bad batch
//! is a protocol error that closes the connection.

use super::record::{BatchBuilder, BatchView, RecordMeta};
use super::{begin_frame, end_frame, put_str16, DecodeError, Opcode, Reader};

#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DestKind {
    Queue = 0,
    Topic = 1,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish<'a> {
    pub kind: DestKind,
    pub name: &'a str,
    pub batch: BatchView<'a>,
    /// Offset of the batch within the frame body, so a receiver can keep just those bytes.
    pub batch_offset: usize,
}

/// Bytes of a PUBLISH body before its batch, at most: kind, reserved, and a name (a `str16`
/// of up to 255 bytes). A receiver that copies the batch out separately reads this much first.
pub const PREFIX_MAX: usize = 4 + super::NAME_LEN_MAX;

impl<'a> Publish<'a> {
    pub fn decode(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let (kind, name) = Self::decode_prefix(r)?;
        let batch_offset = r.position();
        let batch = BatchView::decode(r.rest()).map_err(|e| e.shifted(batch_offset))?;
        Ok(Publish { kind, name, batch, batch_offset })
    }

    /// The part before the batch: destination kind and name. The reader is left at the batch.
    pub fn decode_prefix(r: &mut Reader<'a>) -> Result<(DestKind, &'a str), DecodeError> {
        let kind = match r.u8()? {
            0 => DestKind::Queue,
            1 => DestKind::Topic,
            _ => return Err(DecodeError::Invalid { offset: 0, what: "destination kind" }),
        };
        if r.u8()? != 0 {
            return Err(DecodeError::Invalid { offset: 1, what: "reserved" });
        }
        Ok((kind, r.name()?))
    }
}

/// Writes one PUBLISH frame in place: `begin`, `push` records, `finish`.
pub struct PublishWriter {
    frame_at: usize,
    batch: BatchBuilder,
}

impl PublishWriter {
    pub fn begin(out: &mut Vec<u8>, kind: DestKind, name: &str, request_id: u64) -> Self {
        Self::begin_with_flags(out, kind, name, request_id, 0)
    }

    /// As [`PublishWriter::begin`] with header flags (e.g. `FLAG_NO_CONFIRM`).
    pub fn begin_with_flags(
        out: &mut Vec<u8>,
        kind: DestKind,
        name: &str,
        request_id: u64,
        flags: u8,
    ) -> Self {
        let frame_at = begin_frame(out, Opcode::Publish, flags, request_id);
        out.push(kind as u8);
        out.push(0);
        put_str16(out, name);
        PublishWriter { frame_at, batch: BatchBuilder::begin(out) }
    }

    pub fn push(&mut self, out: &mut Vec<u8>, meta: &RecordMeta<'_>, payload: &[u8]) {
        self.batch.push(out, meta, payload);
    }

    pub fn count(&self) -> u32 {
        self.batch.count()
    }

    /// Bytes of the frame so far.
    pub fn len(&self, out: &[u8]) -> usize {
        out.len() - self.frame_at
    }

    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    pub fn finish(self, out: &mut [u8]) {
        self.batch.finish(out);
        end_frame(out, self.frame_at);
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::Command;
    use super::*;

    fn frame() -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = PublishWriter::begin(&mut out, DestKind::Topic, "a.b.c", 77);
        for i in 0..3u8 {
            w.push(&mut out, &RecordMeta { id: i as u64, ..Default::default() }, &[i; 10]);
        }
        w.finish(&mut out);
        out
    }

    #[test]
    fn round_trip() {
        let out = frame();
        let (h, cmd) = decode_one(&out).unwrap();
        assert_eq!(h.request_id, 77);
        let Command::Publish(p) = cmd else { panic!("{cmd:?}") };
        assert_eq!((p.kind, p.name, p.batch.count), (DestKind::Topic, "a.b.c", 3));
        let payloads: Vec<_> = p.batch.records().map(|(_, r)| r.payload().to_vec()).collect();
        assert_eq!(payloads, vec![vec![0; 10], vec![1; 10], vec![2; 10]]);
        assert_truncations_fail(&out);
    }

    #[test]
    fn corrupt_payload_fails_checksum() {
        let mut out = frame();
        let n = out.len();
        out[n - 1] ^= 1;
        assert!(matches!(decode_one(&out), Err(DecodeError::Checksum { .. })));
    }

    /// The worked example in docs/PROTOCOL.md section 13, byte for byte.
    #[test]
    fn protocol_md_example() {
        let headers = vec![("k".to_string(), "v".to_string())];
        let meta = RecordMeta {
            id: 7,
            timestamp_us: 1_700_000_000_000_000,
            headers: &headers,
            ..Default::default()
        };
        let mut out = Vec::new();
        let mut w = PublishWriter::begin(&mut out, DestKind::Queue, "jobs", 1);
        w.push(&mut out, &meta, b"hi");
        w.finish(&mut out);
        let hex = "50000000200000000100000000000000000004006a6f627348000000fe1e6043\
                   0000000000000000010000000000000030000000000001000700000000000000\
                   00401e18240a0600000000000000000006000000020000000100 6b0100766869";
        let hex: String = hex.chars().filter(|c| c.is_ascii_hexdigit()).collect();
        let want: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        assert_eq!(out, want);
    }

    #[test]
    fn bad_kind() {
        let mut out = frame();
        out[16] = 7;
        assert!(decode_one(&out).is_err());
    }
}
