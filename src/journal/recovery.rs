//! Recovery at start: rebuild a durable queue from its directory. Every batch's checksum is
//! verified; a torn tail (the last write of a crash) is truncated and logged; a bad batch with
//! data after it, a sequence gap or a missing segment is reported with queue, segment and offset,
//! and the queue then serves what came before it and refuses to go past it. It never guesses.

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use rdmq_client::wire::record::RecordView;

use super::format::{self, QueueMeta, ScanEnd};
use crate::arena::Bytes;
use crate::broker::MsgRef;

/// One unsettled message found on disk.
/// One message found on disk, settled or not.
pub struct RecoveredMsg {
    pub seq: u64,
    /// Acknowledged before the restart (kept only by queues that retain for seeking).
    pub settled: bool,
    pub rec: MsgRef,
    pub ttl_ms: u32,
    pub timestamp_us: u64,
}

pub struct Recovered {
    pub meta: QueueMeta,
    pub messages: Vec<RecoveredMsg>,
    /// The sequence the next append gets.
    pub next_seq: u64,
    pub segments: Vec<(u64, PathBuf)>,
    /// Why the queue may not take appends (corruption), if so.
    pub corrupt: Option<String>,
    /// Settled messages skipped, for the log line.
    pub settled: u64,
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

pub fn recover(dir: &Path) -> Result<Recovered, String> {
    let meta: QueueMeta = serde_json::from_slice(&read(&dir.join("meta.json"))?)
        .map_err(|e| format!("{}/meta.json: {e}", dir.display()))?;
    let floor = match std::fs::read(dir.join("checkpoint")) {
        Ok(b) => format::decode_checkpoint(&b)
            .ok_or_else(|| format!("{}/checkpoint is corrupt", dir.display()))?,
        Err(_) => 0,
    };
    let mut segments = list_segments(dir)?;
    // A segment created at a roll whose first write never happened (it waits for the previous
    // segment's writes) is empty: drop it, so the previous one is the last and its tail can be
    // recognised as torn.
    while segments.len() > 1
        && std::fs::metadata(&segments[segments.len() - 1].1).is_ok_and(|m| m.len() == 0)
    {
        let (_, path) = segments.pop().expect("checked");
        let _ = std::fs::remove_file(&path);
    }
    // A crash between writing the checkpoint and deleting settled segments leaves them behind.
    while segments.len() > 1 && segments[1].0 <= floor {
        let (_, path) = segments.remove(0);
        let _ = std::fs::remove_file(&path);
    }
    let mut r = Recovered {
        meta,
        messages: Vec::new(),
        next_seq: floor,
        segments: Vec::new(),
        corrupt: None,
        settled: 0,
    };
    let acked = read_acks(dir)?;
    let queue = r.meta.name.clone();
    let mut expected = segments.first().map_or(floor, |s| s.0);
    if expected > floor {
        r.corrupt =
            Some(format!("queue {queue:?}: segment for sequences {floor}..{expected} is missing"));
        r.next_seq = expected;
    }
    let n = segments.len();
    for (i, (base, path)) in segments.into_iter().enumerate() {
        if r.corrupt.is_some() {
            break;
        }
        if base != expected {
            r.corrupt = Some(format!(
                "queue {queue:?}: segment {} starts at sequence {base}, expected {expected} \
                 (a segment is missing)",
                path.display()
            ));
            break;
        }
        let mut bytes = read(&path)?;
        let (batches, end) = format::scan_segment(&bytes, expected);
        let good = batches.last().map_or(0, |b| b.offset + b.len);
        let file_len = bytes.len();
        bytes.truncate(good);
        let data = Bytes::from(bytes);
        for b in &batches {
            let mut at = b.offset + rdmq_client::wire::record::BATCH_HEADER_LEN;
            for k in 0..b.count as u64 {
                let rec = RecordView::trusted(&data[at..]);
                let seq = b.base_seq + k;
                let len = rec.bytes.len();
                let settled = acked.contains(&seq);
                if seq < floor {
                    r.settled += 1;
                } else {
                    r.settled += settled as u64;
                    r.messages.push(RecoveredMsg {
                        seq,
                        settled,
                        rec: MsgRef { batch: data.clone(), offset: at as u32, len: len as u32 },
                        ttl_ms: rec.header.ttl_ms,
                        timestamp_us: rec.header.timestamp_us,
                    });
                }
                at += len;
            }
            expected = b.base_seq + b.count as u64;
        }
        r.segments.push((base, path.clone()));
        match end {
            ScanEnd::Clean => {}
            ScanEnd::TornTail { at } if i + 1 == n => {
                eprintln!(
                    "rdmq: recovery: queue {queue:?}: truncated a torn tail of {} bytes at \
                     segment {} offset {at}",
                    file_len - at,
                    path.display()
                );
                let f = OpenOptions::new().write(true).open(&path).map_err(|e| e.to_string())?;
                f.set_len(at as u64).and_then(|_| f.sync_all()).map_err(|e| e.to_string())?;
            }
            ScanEnd::TornTail { at } => {
                r.corrupt = Some(format!(
                    "queue {queue:?}: segment {} ends in an incomplete batch at offset {at} \
                     but later segments exist",
                    path.display()
                ));
            }
            ScanEnd::Corrupt { at, why } => {
                r.corrupt = Some(format!(
                    "queue {queue:?}: segment {} is corrupt at offset {at}: {why}",
                    path.display()
                ));
            }
        }
    }
    r.next_seq = r.next_seq.max(expected);
    // Without retention, everything below the first unsettled message is settled: record that
    // as the new floor, so the acknowledgement log can forget it.
    let retains = r.meta.max_bytes > 0 || r.meta.max_age_ms > 0;
    let mut new_floor = floor;
    if !retains && r.corrupt.is_none() {
        new_floor = r.messages.iter().find(|m| !m.settled).map_or(r.next_seq, |m| m.seq);
        if new_floor > floor {
            super::write_checkpoint(dir, new_floor)
                .map_err(|e| format!("{}: checkpoint: {e}", dir.display()))?;
            r.messages.retain(|m| m.seq >= new_floor);
        }
    }
    compact_acks(dir, &acked, new_floor, r.next_seq)?;
    if let Some(why) = &r.corrupt {
        eprintln!(
            "rdmq: recovery: {why}; serving the {} messages before it, refusing publishes",
            r.messages.len()
        );
    }
    Ok(r)
}

fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let entry = entry.map_err(|e| e.to_string())?;
        let name = entry.file_name();
        if let Some(base) = name.to_str().and_then(format::segment_base) {
            out.push((base, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Rewrites `acks.log` with only the entries that still mean something: at or above the floor
/// (below it everything is settled anyway) and below the recovered end (entries for sequences a
/// crash took away must not settle new messages that reuse them). Atomic: temp, rename, sync.
fn compact_acks(dir: &Path, acked: &HashSet<u64>, floor: u64, end: u64) -> Result<(), String> {
    let keep: Vec<u64> = {
        let mut v: Vec<u64> = acked.iter().copied().filter(|s| (floor..end).contains(s)).collect();
        v.sort_unstable();
        v
    };
    if keep.len() == acked.len()
        && std::fs::metadata(dir.join("acks.log")).map_or(0, |m| m.len()) as usize
            == keep.len() * format::ACK_ENTRY_LEN
    {
        return Ok(());
    }
    let mut bytes = Vec::with_capacity(keep.len() * format::ACK_ENTRY_LEN);
    for s in keep {
        format::encode_ack(s, &mut bytes);
    }
    super::replace_file(dir, "acks.log", &bytes)
        .map_err(|e| format!("{}: compacting acks.log: {e}", dir.display()))
}

/// Settled sequences from `acks.log`; a torn last entry (a write cut by a crash) is dropped.
fn read_acks(dir: &Path) -> Result<HashSet<u64>, String> {
    let path = dir.join("acks.log");
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let (seqs, bad) = format::acked_set(&bytes);
    if let Some(at) = bad {
        eprintln!(
            "rdmq: recovery: {}: dropped {} bytes after offset {at} (torn entry)",
            path.display(),
            bytes.len() - at
        );
        let f = OpenOptions::new().write(true).open(&path).map_err(|e| e.to_string())?;
        f.set_len(at as u64).map_err(|e| e.to_string())?;
    }
    Ok(seqs)
}
