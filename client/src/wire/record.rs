//! Record batches: the unit a producer publishes, the server stores and a consumer receives.
//!
//! A batch is laid out on the wire exactly as the journal will store it, so the server checks one
//! checksum and keeps the bytes it received.
//!
//! ```text
//! batch header (24 bytes)
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +---------------------------------------------------------------+
//! |            batch_len: header + records, bytes (u32)           |
//! +---------------------------------------------------------------+
//! |            crc32c of bytes [16, batch_len) (u32)              |
//! +---------------------------------------------------------------+
//! |    base_seq (u64): written by the server, not checksummed     |
//! |                                                               |
//! +---------------------------------------------------------------+
//! |            count: records in the batch (u32)                  |
//! +---------------------------------------------------------------+
//! |            attributes (u32) = 0 in v1                         |
//! +---------------------------------------------------------------+
//! |  records ...                                                  |
//!
//! record (40-byte fixed part, then variable fields in this order)
//! +---------------------------------------------------------------+
//! |            record_len: whole record, bytes (u32)              |
//! +-------------------------------+-------------------------------+
//! |  flags (u16) = 0 in v1        |  header_count (u16)           |
//! +-------------------------------+-------------------------------+
//! |            id (u64): producer-assigned message id             |
//! +---------------------------------------------------------------+
//! |            timestamp_us (u64): microseconds since the epoch   |
//! +---------------------------------------------------------------+
//! |            ttl_ms (u32): 0 = never expires                    |
//! +-------------------------------+-------------------------------+
//! |  correlation_len (u16)        |  reply_to_len (u16)           |
//! +-------------------------------+-------------------------------+
//! |            headers_len (u32)                                  |
//! +---------------------------------------------------------------+
//! |            payload_len (u32)                                  |
//! +---------------------------------------------------------------+
//! | correlation id | reply-to | headers: (u16 klen, key, u16 vlen, value)* | payload |
//! ```

use super::{DecodeError, Reader};

pub const BATCH_HEADER_LEN: usize = 24;
pub const RECORD_HEADER_LEN: usize = 40;
/// Offset of the first checksummed byte: `batch_len`, `crc` and `base_seq` are excluded so the
/// server can stamp `base_seq` without recomputing the checksum.
pub const CRC_START: usize = 16;
const BASE_SEQ_AT: usize = 8;

/// Fixed part of a record, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RecordHeader {
    pub len: u32,
    pub flags: u16,
    pub header_count: u16,
    pub id: u64,
    pub timestamp_us: u64,
    pub ttl_ms: u32,
    pub correlation_len: u16,
    pub reply_to_len: u16,
    pub headers_len: u32,
    pub payload_len: u32,
}

/// A validated view of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordView<'a> {
    pub header: RecordHeader,
    /// The whole record, fixed part included: what the server copies into a delivery.
    pub bytes: &'a [u8],
}

impl<'a> RecordView<'a> {
    /// Decodes and validates the record at the start of `buf`: every length must add up.
    pub fn decode(buf: &'a [u8]) -> Result<RecordView<'a>, DecodeError> {
        let mut r = Reader::new(buf);
        let header = RecordHeader {
            len: r.u32()?,
            flags: r.u16()?,
            header_count: r.u16()?,
            id: r.u64()?,
            timestamp_us: r.u64()?,
            ttl_ms: r.u32()?,
            correlation_len: r.u16()?,
            reply_to_len: r.u16()?,
            headers_len: r.u32()?,
            payload_len: r.u32()?,
        };
        let parts = RECORD_HEADER_LEN as u64
            + header.correlation_len as u64
            + header.reply_to_len as u64
            + header.headers_len as u64
            + header.payload_len as u64;
        if parts != header.len as u64 {
            return Err(DecodeError::Invalid { offset: 0, what: "record length" });
        }
        if buf.len() < header.len as usize {
            return Err(DecodeError::Truncated {
                offset: 0,
                needed: header.len as usize,
                available: buf.len(),
            });
        }
        let view = RecordView { header, bytes: &buf[..header.len as usize] };
        view.check_headers()?;
        Ok(view)
    }

    /// A view of a record inside bytes validated earlier (a decoded batch or DELIVER frame):
    /// reads the fixed part, repeats no check. Panics if `buf` is shorter than the record says.
    pub fn trusted(buf: &'a [u8]) -> RecordView<'a> {
        let u16_at = |i: usize| u16::from_le_bytes([buf[i], buf[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes(buf[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(buf[i..i + 8].try_into().expect("8 bytes"));
        let header = RecordHeader {
            len: u32_at(0),
            flags: u16_at(4),
            header_count: u16_at(6),
            id: u64_at(8),
            timestamp_us: u64_at(16),
            ttl_ms: u32_at(24),
            correlation_len: u16_at(28),
            reply_to_len: u16_at(30),
            headers_len: u32_at(32),
            payload_len: u32_at(36),
        };
        RecordView { header, bytes: &buf[..header.len as usize] }
    }

    fn var(&self) -> &'a [u8] {
        &self.bytes[RECORD_HEADER_LEN..]
    }

    pub fn correlation_id(&self) -> &'a [u8] {
        &self.var()[..self.header.correlation_len as usize]
    }

    pub fn reply_to(&self) -> &'a [u8] {
        let at = self.header.correlation_len as usize;
        &self.var()[at..at + self.header.reply_to_len as usize]
    }

    fn headers_raw(&self) -> &'a [u8] {
        let at = self.header.correlation_len as usize + self.header.reply_to_len as usize;
        &self.var()[at..at + self.header.headers_len as usize]
    }

    pub fn payload(&self) -> &'a [u8] {
        let at = self.bytes.len() - self.header.payload_len as usize;
        &self.bytes[at..]
    }

    /// Key/value headers in the order the producer wrote them.
    pub fn headers(&self) -> HeaderIter<'a> {
        HeaderIter { r: Reader::new(self.headers_raw()), left: self.header.header_count }
    }

    fn check_headers(&self) -> Result<(), DecodeError> {
        let mut it = self.headers();
        for _ in 0..self.header.header_count {
            it.next_checked()?;
        }
        it.r.finish()
    }
}

pub struct HeaderIter<'a> {
    r: Reader<'a>,
    left: u16,
}

impl<'a> HeaderIter<'a> {
    fn next_checked(&mut self) -> Result<(&'a str, &'a str), DecodeError> {
        self.left -= 1;
        Ok((self.r.str16()?, self.r.str16()?))
    }
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = (&'a str, &'a str);
    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        // Records are validated on decode, so this cannot fail for a decoded view.
        self.next_checked().ok()
    }
}

/// A validated batch: header fields and the record bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchView<'a> {
    pub base_seq: u64,
    pub count: u32,
    /// The whole batch, header included.
    pub bytes: &'a [u8],
}

impl<'a> BatchView<'a> {
    /// Validates length, checksum and every record. Costs one pass over the bytes.
    pub fn decode(buf: &'a [u8]) -> Result<BatchView<'a>, DecodeError> {
        let mut r = Reader::new(buf);
        let batch_len = r.u32()? as usize;
        let crc = r.u32()?;
        let base_seq = r.u64()?;
        let count = r.u32()?;
        let attributes = r.u32()?;
        if batch_len != buf.len() {
            return Err(DecodeError::Invalid { offset: 0, what: "batch length" });
        }
        if attributes != 0 {
            return Err(DecodeError::Invalid { offset: 20, what: "batch attributes" });
        }
        let actual = crc32c::crc32c(&buf[CRC_START..]);
        if actual != crc {
            return Err(DecodeError::Checksum { expected: crc, actual });
        }
        let view = BatchView { base_seq, count, bytes: buf };
        let mut at = BATCH_HEADER_LEN;
        for _ in 0..count {
            let rec = RecordView::decode(&buf[at..]).map_err(|e| e.shifted(at))?;
            at += rec.bytes.len();
        }
        if at != buf.len() {
            return Err(DecodeError::Invalid { offset: at, what: "bytes after last record" });
        }
        Ok(view)
    }

    /// A view of bytes that were validated when they were received (for example by the shard
    /// that decoded the frame); no check is repeated.
    pub fn trusted(buf: &'a [u8]) -> BatchView<'a> {
        let count = u32::from_le_bytes(buf[16..20].try_into().expect("4 bytes"));
        let base_seq = u64::from_le_bytes(buf[8..16].try_into().expect("8 bytes"));
        BatchView { base_seq, count, bytes: buf }
    }

    /// Records of an already validated batch, with each record's offset in the batch.
    pub fn records(&self) -> RecordIter<'a> {
        RecordIter { buf: self.bytes, at: BATCH_HEADER_LEN }
    }
}

pub struct RecordIter<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Iterator for RecordIter<'a> {
    /// (offset within the batch, record)
    type Item = (usize, RecordView<'a>);
    fn next(&mut self) -> Option<Self::Item> {
        if self.at >= self.buf.len() {
            return None;
        }
        let at = self.at;
        // The batch was validated when it was decoded (or came from bytes that were).
        let rec = RecordView::trusted(&self.buf[at..]);
        self.at += rec.bytes.len();
        Some((at, rec))
    }
}

/// Stamps the server-assigned base sequence into a batch in place (not checksummed).
pub fn set_base_seq(batch: &mut [u8], seq: u64) {
    batch[BASE_SEQ_AT..BASE_SEQ_AT + 8].copy_from_slice(&seq.to_le_bytes());
}

/// Bytes of a record after its fixed header: correlation id, reply-to, headers, payload.
pub fn record_body_len(meta: &RecordMeta<'_>, payload: &[u8]) -> usize {
    meta.correlation_id.len() + meta.reply_to.len() + headers_len(meta) + payload.len()
}

/// Bytes of a record's encoded headers (each a 2-byte key length, 2-byte value length, key,
/// value).
fn headers_len(meta: &RecordMeta<'_>) -> usize {
    meta.headers.iter().map(|(k, v)| 4 + k.len() + v.len()).sum()
}

/// The optional parts of a message; the payload is passed separately.
#[derive(Debug, Clone, Copy, Default)]
pub struct RecordMeta<'a> {
    pub id: u64,
    pub timestamp_us: u64,
    pub ttl_ms: u32,
    pub correlation_id: &'a [u8],
    pub reply_to: &'a [u8],
    pub headers: &'a [(String, String)],
}

/// Builds a batch in place at the end of a caller's buffer: begin, append records, finish.
pub struct BatchBuilder {
    start: usize,
    count: u32,
}

impl BatchBuilder {
    pub fn begin(out: &mut Vec<u8>) -> BatchBuilder {
        let start = out.len();
        out.resize(start + BATCH_HEADER_LEN, 0);
        BatchBuilder { start, count: 0 }
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    /// Bytes written so far, header included.
    pub fn len(&self, out: &[u8]) -> usize {
        out.len() - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Appends one record. Panics if a field exceeds its length type (caller's bug).
    pub fn push(&mut self, out: &mut Vec<u8>, meta: &RecordMeta<'_>, payload: &[u8]) {
        let len = RECORD_HEADER_LEN + record_body_len(meta, payload);
        let len = u32::try_from(len).expect("record larger than 4 GiB");
        out.reserve(len as usize);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        let hc = u16::try_from(meta.headers.len()).expect("more than 65535 headers");
        out.extend_from_slice(&hc.to_le_bytes());
        out.extend_from_slice(&meta.id.to_le_bytes());
        out.extend_from_slice(&meta.timestamp_us.to_le_bytes());
        out.extend_from_slice(&meta.ttl_ms.to_le_bytes());
        let cl = u16::try_from(meta.correlation_id.len()).expect("correlation id too long");
        let rl = u16::try_from(meta.reply_to.len()).expect("reply-to too long");
        out.extend_from_slice(&cl.to_le_bytes());
        out.extend_from_slice(&rl.to_le_bytes());
        out.extend_from_slice(&(headers_len(meta) as u32).to_le_bytes());
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(meta.correlation_id);
        out.extend_from_slice(meta.reply_to);
        for (k, v) in meta.headers {
            super::put_str16(out, k);
            super::put_str16(out, v);
        }
        out.extend_from_slice(payload);
        self.count += 1;
    }

    /// Writes the header and checksum last, as a journal commit does.
    pub fn finish(self, out: &mut [u8]) {
        let batch = &mut out[self.start..];
        let len = u32::try_from(batch.len()).expect("batch larger than 4 GiB");
        batch[0..4].copy_from_slice(&len.to_le_bytes());
        batch[16..20].copy_from_slice(&self.count.to_le_bytes());
        batch[20..24].copy_from_slice(&0u32.to_le_bytes());
        let crc = crc32c::crc32c(&batch[CRC_START..]);
        batch[4..8].copy_from_slice(&crc.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let headers = vec![("k".to_string(), "välue".to_string())];
        let mut out = Vec::new();
        let mut b = BatchBuilder::begin(&mut out);
        let meta = RecordMeta {
            id: 7,
            timestamp_us: 11,
            ttl_ms: 500,
            correlation_id: b"corr",
            reply_to: b"replies",
            headers: &headers,
        };
        b.push(&mut out, &meta, b"hello\0world");
        b.push(&mut out, &RecordMeta::default(), b"");
        b.finish(&mut out);
        out
    }

    #[test]
    fn round_trip() {
        let buf = sample();
        let batch = BatchView::decode(&buf).unwrap();
        assert_eq!(batch.count, 2);
        let recs: Vec<_> = batch.records().map(|(_, r)| r).collect();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].payload(), b"hello\0world");
        assert_eq!(recs[0].correlation_id(), b"corr");
        assert_eq!(recs[0].reply_to(), b"replies");
        assert_eq!(recs[0].header.ttl_ms, 500);
        assert_eq!(recs[0].header.id, 7);
        assert_eq!(recs[0].headers().collect::<Vec<_>>(), vec![("k", "välue")]);
        assert_eq!(recs[1].payload(), b"");
    }

    #[test]
    fn base_seq_is_outside_the_checksum() {
        let mut buf = sample();
        set_base_seq(&mut buf, 12345);
        assert_eq!(BatchView::decode(&buf).unwrap().base_seq, 12345);
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        let buf = sample();
        for i in 0..buf.len() {
            if (BASE_SEQ_AT..BASE_SEQ_AT + 8).contains(&i) {
                continue;
            }
            let mut bad = buf.clone();
            bad[i] ^= 0x40;
            assert!(BatchView::decode(&bad).is_err(), "flip at {i} accepted");
        }
    }

    #[test]
    fn every_truncation_is_caught() {
        let buf = sample();
        for n in 0..buf.len() {
            assert!(BatchView::decode(&buf[..n]).is_err(), "truncation to {n} accepted");
        }
    }

    #[test]
    fn inconsistent_record_lengths_rejected_even_with_good_crc() {
        let mut buf = sample();
        // Grow the payload length of the first record and re-checksum: structure must still fail.
        let at = BATCH_HEADER_LEN + 36;
        let pl = u32::from_le_bytes(buf[at..at + 4].try_into().unwrap());
        buf[at..at + 4].copy_from_slice(&(pl + 1).to_le_bytes());
        let crc = crc32c::crc32c(&buf[CRC_START..]);
        buf[4..8].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(BatchView::decode(&buf), Err(DecodeError::Invalid { .. })));
    }
}
