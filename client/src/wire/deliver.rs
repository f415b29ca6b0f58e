//! DELIVER (server → client): messages for one subscription or consumer.
//!
//! ```text
//! +-------------------------------+-------------------------------+
//! | subscription/consumer id (u32)| count (u32)                   |
//! +-------------------------------+-------------------------------+
//! then `count` entries:
//! +---------------------------------------------------------------+
//! | delivery tag (u64): ack with this; 0 for topic subscriptions  |
//! +-------------------------------+---------------+---------------+
//! | delivery_count (u32)          | flags (u16)   | reserved (u16)|
//! |                               | bit 0 redeliv.|               |
//! +-------------------------------+---------------+---------------+
//! | record, exactly as published (starts with its record_len)     |
//! +---------------------------------------------------------------+
//! ```

use super::record::RecordView;
use super::{begin_frame, end_frame, DecodeError, Opcode, Reader};

pub const ENTRY_HEADER_LEN: usize = 16;
/// Bytes of the body before the first entry: id and count.
pub const BODY_HEADER_LEN: usize = 8;

/// An entry's header: tag, delivery count, flags, reserved.
pub fn entry_header(tag: u64, delivery_count: u32, flags: u16) -> [u8; ENTRY_HEADER_LEN] {
    let mut b = [0u8; ENTRY_HEADER_LEN];
    b[0..8].copy_from_slice(&tag.to_le_bytes());
    b[8..12].copy_from_slice(&delivery_count.to_le_bytes());
    b[12..14].copy_from_slice(&flags.to_le_bytes());
    b
}

/// The body's first bytes: subscription or consumer id, entry count.
pub fn body_header(id: u32, count: u32) -> [u8; BODY_HEADER_LEN] {
    let mut b = [0u8; BODY_HEADER_LEN];
    b[0..4].copy_from_slice(&id.to_le_bytes());
    b[4..8].copy_from_slice(&count.to_le_bytes());
    b
}
pub const FLAG_REDELIVERED: u16 = 0x1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deliver<'a> {
    pub id: u32,
    pub count: u32,
    /// The validated entries, to walk with [`Deliver::entries`].
    pub entries: &'a [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    pub tag: u64,
    pub delivery_count: u32,
    pub flags: u16,
    pub record: RecordView<'a>,
    /// Offset of the entry within `Deliver::entries`.
    pub offset: usize,
}

impl<'a> Deliver<'a> {
    pub fn decode(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let id = r.u32()?;
        let count = r.u32()?;
        let entries = r.rest();
        let mut at = 0;
        for _ in 0..count {
            let mut er = Reader::new(&entries[at..]);
            er.bytes(ENTRY_HEADER_LEN).map_err(|e| e.shifted(at + 8))?;
            let rec = RecordView::decode(er.rest()).map_err(|e| e.shifted(at + 24))?;
            at += ENTRY_HEADER_LEN + rec.bytes.len();
        }
        if at != entries.len() {
            return Err(DecodeError::Invalid { offset: at + 8, what: "bytes after last entry" });
        }
        Ok(Deliver { id, count, entries })
    }

    pub fn entries(&self) -> EntryIter<'a> {
        EntryIter { buf: self.entries, at: 0 }
    }
}

pub struct EntryIter<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Iterator for EntryIter<'a> {
    type Item = Entry<'a>;
    fn next(&mut self) -> Option<Entry<'a>> {
        if self.at >= self.buf.len() {
            return None;
        }
        let b = &self.buf[self.at..];
        let tag = u64::from_le_bytes(b[0..8].try_into().ok()?);
        let delivery_count = u32::from_le_bytes(b[8..12].try_into().ok()?);
        let flags = u16::from_le_bytes(b[12..14].try_into().ok()?);
        // Entries were validated by `Deliver::decode`.
        let record = RecordView::trusted(&b[ENTRY_HEADER_LEN..]);
        let offset = self.at;
        self.at += ENTRY_HEADER_LEN + record.bytes.len();
        Some(Entry { tag, delivery_count, flags, record, offset })
    }
}

/// Writes one DELIVER frame in place; the server appends entries as it dispatches.
pub struct DeliverWriter {
    frame_at: usize,
    count: u32,
}

impl DeliverWriter {
    pub fn begin(out: &mut Vec<u8>, id: u32) -> Self {
        let frame_at = begin_frame(out, Opcode::Deliver, 0, 0);
        out.extend_from_slice(&body_header(id, 0));
        DeliverWriter { frame_at, count: 0 }
    }

    /// Appends one entry; `record` must be a whole record as published.
    pub fn push(
        &mut self,
        out: &mut Vec<u8>,
        tag: u64,
        delivery_count: u32,
        flags: u16,
        record: &[u8],
    ) {
        out.extend_from_slice(&entry_header(tag, delivery_count, flags));
        out.extend_from_slice(record);
        self.count += 1;
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    pub fn finish(self, out: &mut [u8]) {
        let at = self.frame_at + super::FRAME_HEADER_LEN + 4;
        out[at..at + 4].copy_from_slice(&self.count.to_le_bytes());
        end_frame(out, self.frame_at);
    }
}

#[cfg(test)]
mod tests {
    use super::super::record::{BatchBuilder, BatchView, RecordMeta};
    use super::super::test_util::*;
    use super::super::Command;
    use super::*;

    #[test]
    fn round_trip() {
        let mut batch = Vec::new();
        let mut b = BatchBuilder::begin(&mut batch);
        b.push(&mut batch, &RecordMeta { id: 1, ..Default::default() }, b"one");
        b.push(&mut batch, &RecordMeta { id: 2, ttl_ms: 9, ..Default::default() }, b"two");
        b.finish(&mut batch);
        let view = BatchView::decode(&batch).unwrap();

        let mut out = Vec::new();
        let mut w = DeliverWriter::begin(&mut out, 3);
        for (i, (_, rec)) in view.records().enumerate() {
            w.push(&mut out, 100 + i as u64, 1 + i as u32, i as u16, rec.bytes);
        }
        w.finish(&mut out);
        let (_, cmd) = decode_one(&out).unwrap();
        let Command::Deliver(d) = cmd else { panic!() };
        assert_eq!((d.id, d.count), (3, 2));
        let got: Vec<_> = d
            .entries()
            .map(|e| (e.tag, e.delivery_count, e.flags, e.record.payload().to_vec()))
            .collect();
        assert_eq!(got, vec![(100, 1, 0, b"one".to_vec()), (101, 2, 1, b"two".to_vec())]);
        assert_truncations_fail(&out);
    }

    #[test]
    fn count_larger_than_entries_fails() {
        let mut out = Vec::new();
        let w = DeliverWriter::begin(&mut out, 3);
        w.finish(&mut out);
        out[20] = 1;
        assert!(decode_one(&out).is_err());
    }
}
