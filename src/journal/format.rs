//! The journal's on-disk format: directory and file names, the segment scan used by recovery,
//! the acknowledgement log and the queue's metadata. Pure: bytes in, decisions out.
//!
//! ```text
//! <data_dir>/queues/<hex of the name, or h<fnv64> for names over 100 bytes>/
//!     meta.json                    name, options and bindings (rewritten on BIND/UNBIND)
//!     checkpoint                   floor: every sequence below it is settled (16 bytes)
//!     00000000000000000000.seg     segments, named by their first sequence, each a run of
//!     00000000000000052318.seg     record batches in the wire layout (base_seq stamped)
//!     acks.log                     16-byte entries, one per settled sequence
//! ```

use rdmq_client::wire::record::{BatchView, BATCH_HEADER_LEN};
use serde::{Deserialize, Serialize};

/// Acknowledgement log entry: sequence, CRC32C of the sequence bytes, magic.
pub const ACK_ENTRY_LEN: usize = 16;
const ACK_MAGIC: u32 = u32::from_le_bytes(*b"ACK1");
/// An entry that undoes an earlier ack (a seek moved the cursor back over it).
const UNACK_MAGIC: u32 = u32::from_le_bytes(*b"NAK1");
/// Checkpoint file: floor, CRC32C of the floor bytes, magic.
pub const CHECKPOINT_LEN: usize = 16;
const CHECKPOINT_MAGIC: u32 = u32::from_le_bytes(*b"CKP1");

/// Directory name of a queue: its name in hex when that fits a file name, else a hash of it
/// (the real name is in `meta.json`, which recovery reads).
pub fn queue_dir_name(queue: &str) -> String {
    if queue.len() <= 100 {
        return queue.bytes().map(|b| format!("{b:02x}")).collect();
    }
    format!("h{:016x}", crate::broker::fnv1a(queue.as_bytes()))
}

pub fn queue_name_from_dir(dir: &str) -> Option<String> {
    if !dir.len().is_multiple_of(2) || dir.is_empty() {
        return None;
    }
    let bytes: Option<Vec<u8>> =
        (0..dir.len()).step_by(2).map(|i| u8::from_str_radix(&dir[i..i + 2], 16).ok()).collect();
    String::from_utf8(bytes?).ok()
}

pub fn segment_name(base_seq: u64) -> String {
    format!("{base_seq:020}.seg")
}

pub fn segment_base(file: &str) -> Option<u64> {
    file.strip_suffix(".seg").filter(|s| s.len() == 20)?.parse().ok()
}

/// What a queue was declared with; written once, read at recovery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueMeta {
    pub name: String,
    pub durability: String,
    pub max_deliveries: u32,
    pub max_length: u32,
    pub dead_letter: Option<String>,
    #[serde(default)]
    pub max_bytes: u64,
    #[serde(default)]
    pub max_age_ms: u64,
    /// Topic patterns bound to the queue (durable subscriptions).
    #[serde(default)]
    pub bindings: Vec<String>,
}

pub fn encode_ack(seq: u64, out: &mut Vec<u8>) {
    encode_entry(seq, ACK_MAGIC, out)
}

pub fn encode_unack(seq: u64, out: &mut Vec<u8>) {
    encode_entry(seq, UNACK_MAGIC, out)
}

fn encode_entry(seq: u64, magic: u32, out: &mut Vec<u8>) {
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&seq.to_le_bytes()).to_le_bytes());
    out.extend_from_slice(&magic.to_le_bytes());
}

/// The set of acknowledged sequences an acknowledgement log describes (entries applied in
/// order, an unack removing an earlier ack), and where a torn or corrupt entry stopped it.
pub fn acked_set(bytes: &[u8]) -> (std::collections::HashSet<u64>, Option<usize>) {
    let (entries, bad) = decode_acks(bytes);
    let mut set = std::collections::HashSet::with_capacity(entries.len());
    for (seq, acked) in entries {
        if acked {
            set.insert(seq);
        } else {
            set.remove(&seq);
        }
    }
    (set, bad)
}

/// Decodes an acknowledgement log into (sequence, acked?) entries; stops at the first torn or
/// corrupt entry and says where.
pub fn decode_acks(bytes: &[u8]) -> (Vec<(u64, bool)>, Option<usize>) {
    let mut seqs = Vec::with_capacity(bytes.len() / ACK_ENTRY_LEN);
    for (i, e) in bytes.chunks(ACK_ENTRY_LEN).enumerate() {
        if e.len() < ACK_ENTRY_LEN {
            return (seqs, Some(i * ACK_ENTRY_LEN));
        }
        let seq = u64::from_le_bytes(e[0..8].try_into().expect("8 bytes"));
        let crc = u32::from_le_bytes(e[8..12].try_into().expect("4 bytes"));
        let magic = u32::from_le_bytes(e[12..16].try_into().expect("4 bytes"));
        if (magic != ACK_MAGIC && magic != UNACK_MAGIC) || crc != crc32c::crc32c(&e[0..8]) {
            return (seqs, Some(i * ACK_ENTRY_LEN));
        }
        seqs.push((seq, magic == ACK_MAGIC));
    }
    (seqs, None)
}

pub fn encode_checkpoint(floor: u64) -> [u8; CHECKPOINT_LEN] {
    let mut out = [0u8; CHECKPOINT_LEN];
    out[0..8].copy_from_slice(&floor.to_le_bytes());
    out[8..12].copy_from_slice(&crc32c::crc32c(&floor.to_le_bytes()).to_le_bytes());
    out[12..16].copy_from_slice(&CHECKPOINT_MAGIC.to_le_bytes());
    out
}

pub fn decode_checkpoint(bytes: &[u8]) -> Option<u64> {
    if bytes.len() != CHECKPOINT_LEN {
        return None;
    }
    let floor = u64::from_le_bytes(bytes[0..8].try_into().expect("8 bytes"));
    let crc = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    let magic = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
    (magic == CHECKPOINT_MAGIC && crc == crc32c::crc32c(&bytes[0..8])).then_some(floor)
}

/// How a segment scan ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanEnd {
    /// Every byte belongs to a valid batch.
    Clean,
    /// The last batch is incomplete or fails its checksum and nothing follows it: a write that
    /// a crash cut short. Recovery truncates the file to `at`.
    TornTail { at: usize },
    /// A bad batch with more data after it, or a sequence gap: not a torn write. Recovery serves
    /// what comes before `at` and refuses to go past it.
    Corrupt { at: usize, why: String },
}

/// One valid batch of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScannedBatch {
    pub offset: usize,
    pub len: usize,
    pub base_seq: u64,
    pub count: u32,
}

/// Walks a segment's batches from the start, checking each checksum and that sequences run on
/// from `expected_seq` without a gap.
pub fn scan_segment(bytes: &[u8], expected_seq: u64) -> (Vec<ScannedBatch>, ScanEnd) {
    let mut batches = Vec::new();
    let (mut at, mut seq) = (0usize, expected_seq);
    while at < bytes.len() {
        let rest = &bytes[at..];
        if rest.len() < BATCH_HEADER_LEN {
            return (batches, ScanEnd::TornTail { at });
        }
        let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
        if len == 0 {
            // Zeros where a batch should start: a write that never happened while a later one
            // did (writes run several at a time). Nothing after it was ever confirmed.
            return (batches, ScanEnd::TornTail { at });
        }
        if len < BATCH_HEADER_LEN {
            return (batches, torn_or_corrupt(bytes, at, len, "batch length too small"));
        }
        if len > rest.len() {
            return (batches, ScanEnd::TornTail { at });
        }
        let view = match BatchView::decode(&rest[..len]) {
            Ok(v) => v,
            Err(e) => return (batches, torn_or_corrupt(bytes, at, len, &e.to_string())),
        };
        if view.base_seq != seq {
            let why = format!("batch holds sequence {}, expected {seq}", view.base_seq);
            return (batches, ScanEnd::Corrupt { at, why });
        }
        batches.push(ScannedBatch { offset: at, len, base_seq: seq, count: view.count });
        seq += view.count as u64;
        at += len;
    }
    (batches, ScanEnd::Clean)
}

/// A bad batch is a torn write only if it is the last thing in the file.
fn torn_or_corrupt(bytes: &[u8], at: usize, len: usize, why: &str) -> ScanEnd {
    if at + len >= bytes.len() {
        ScanEnd::TornTail { at }
    } else {
        ScanEnd::Corrupt { at, why: why.to_string() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdmq_client::wire::record::{set_base_seq, BatchBuilder, RecordMeta};

    fn batch(base: u64, n: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let mut b = BatchBuilder::begin(&mut out);
        for i in 0..n {
            b.push(&mut out, &RecordMeta::default(), &[i as u8; 100]);
        }
        b.finish(&mut out);
        set_base_seq(&mut out, base);
        out
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(queue_name_from_dir(&queue_dir_name("a.b/ü")).unwrap(), "a.b/ü");
        assert_eq!(segment_base(&segment_name(42)), Some(42));
        assert_eq!(segment_base("42.seg"), None);
    }

    #[test]
    fn scan_clean_torn_and_corrupt() {
        let mut seg = batch(10, 3);
        seg.extend(batch(13, 2));
        let (b, end) = scan_segment(&seg, 10);
        assert_eq!((b.len(), end), (2, ScanEnd::Clean));
        // Cut anywhere inside the second batch: torn tail at its start.
        let first = b[1].offset;
        for cut in first + 1..seg.len() {
            let (b, end) = scan_segment(&seg[..cut], 10);
            assert_eq!((b.len(), end), (1, ScanEnd::TornTail { at: first }), "cut {cut}");
        }
        // A flipped byte in the first batch with a valid batch after it: corruption.
        let mut bad = seg.clone();
        bad[40] ^= 1;
        assert!(matches!(scan_segment(&bad, 10).1, ScanEnd::Corrupt { at: 0, .. }));
        // The same flip in the last batch: indistinguishable from a torn write.
        let mut bad = seg.clone();
        bad[first + 40] ^= 1;
        assert_eq!(scan_segment(&bad, 10).1, ScanEnd::TornTail { at: first });
        // A sequence gap.
        assert!(matches!(scan_segment(&seg, 9).1, ScanEnd::Corrupt { at: 0, .. }));
        // A hole of zeros (a write that never happened) before later data: torn, not corrupt.
        let mut holed = seg.clone();
        holed[first..first + 60].fill(0);
        assert_eq!(scan_segment(&holed, 10).1, ScanEnd::TornTail { at: first });
    }

    #[test]
    fn acks_and_checkpoint() {
        let mut log = Vec::new();
        for s in [5u64, 9, 7] {
            encode_ack(s, &mut log);
        }
        encode_unack(9, &mut log);
        assert_eq!(decode_acks(&log).0, vec![(5, true), (9, true), (7, true), (9, false)]);
        assert_eq!(acked_set(&log).0, [5u64, 7].into_iter().collect());
        assert_eq!(decode_acks(&log[..40]), (vec![(5, true), (9, true)], Some(32)));
        log[20] ^= 1;
        assert_eq!(decode_acks(&log), (vec![(5, true)], Some(16)));
        let c = encode_checkpoint(77);
        assert_eq!(decode_checkpoint(&c), Some(77));
        let mut bad = c;
        bad[0] ^= 1;
        assert_eq!(decode_checkpoint(&bad), None);
    }
}
