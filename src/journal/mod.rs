//! Durable queue storage: one journal per `flush` or `fsync` queue, on the shard that owns the
//! queue.
//!
//! Write path: `append` claims space in the shard's huge-page [`ring::Ring`], lays the records
//! out there as one record batch (wire layout, checksummed, `base_seq` stamped) and queues the
//! span. The shard loop then writes queued spans to the current segment file through io_uring
//! (up to `WRITES_IN_FLIGHT` per journal, adjacent spans merged) and, for `fsync` queues, syncs with
//! `fdatasync` through io_uring, one sync in flight per journal: everything written while a sync
//! runs shares the next one (group commit). Positions only grow:
//! `durable <= written <= appended`. A publish is confirmed only once `durable` covers it.
//!
//! Acknowledgements are appended to `acks.log` with a plain `write(2)` at the end of the pass
//! that settled them, before the pass sends any reply, so a reply the client sees after its acks
//! implies they reached the page cache (they survive `kill -9`; a power cut may bring a few back,
//! which at-least-once allows).
//!
//! Recovery and the on-disk format: `format.rs` and `docs/JOURNAL.md`.

pub mod format;
pub mod recovery;
pub mod ring;

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rdmq_client::wire::record::{set_base_seq, BATCH_HEADER_LEN, CRC_START};
use rdmq_client::Durability;

use crate::broker::store::{Store, StoreError};

use format::segment_name;
pub use recovery::{recover, Recovered};
use ring::{Claim, Ring};

/// One queued or in-flight write: a ring span bound for a file offset.
#[derive(Debug, Clone)]
struct Pending {
    /// The span to write: one claim, or several adjacent ones merged (released as one span).
    claim: Claim,
    file: Rc<File>,
    offset: u64,
    /// Sequence just past the last record in this span.
    end_seq: u64,
}

/// A write the shard should submit: `len` bytes of the ring at `claim` to `fd` at `offset`.
#[derive(Debug, Clone, Copy)]
pub struct WriteReq {
    pub fd: RawFd,
    pub claim: Claim,
    pub offset: u64,
    /// Identifies the write in its completion (24 bits travel in the user data).
    pub tag: u32,
}

/// Writes one journal keeps in flight: enough to hide the kernel's hand-off to its workers,
/// few enough that a failing disk is noticed after little more is queued.
pub const WRITES_IN_FLIGHT: usize = 8;
const WRITE_TAG_MASK: u32 = 0xFF_FFFF;

pub struct Journal {
    dir: PathBuf,
    durability: Durability,
    segment_bytes: u64,
    ring: Rc<RefCell<Ring>>,
    /// The segment appended to: file, first sequence, bytes so far.
    segment: Rc<File>,
    segment_len: u64,
    /// Segments in order: (first sequence, path); the last is the current one.
    segments: Vec<(u64, PathBuf)>,
    appended: u64,
    written: u64,
    durable: u64,
    queued: std::collections::VecDeque<Pending>,
    /// Writes handed to the kernel, in submission order, each with its tag and whether it has
    /// completed; `written` advances over the completed prefix only.
    in_flight: std::collections::VecDeque<(u32, Pending, bool)>,
    next_tag: u32,
    /// Files written since their last sync.
    unsynced: Vec<Rc<File>>,
    syncs_in_flight: usize,
    /// Files whose syncs are in flight, kept open until they complete.
    unsynced_in_flight: Vec<Rc<File>>,
    sync_target: u64,
    acks: File,
    ack_buf: Vec<u8>,
    /// The first failure; sticky until restart.
    failed: Option<String>,
    group: GroupCommit,
    /// Bytes written into the open group, and when (shard clock, µs) the group opened.
    group_bytes: u64,
    group_since_us: Option<u64>,
}

/// Bounds on one group commit (see `next_syncs`).
#[derive(Debug, Clone, Copy, Default)]
pub struct GroupCommit {
    pub max_delay_us: u64,
    pub max_bytes: u64,
}

impl Journal {
    /// Opens a journal whose recovered state ends at `next_seq`, appending to the last segment.
    pub fn open(
        dir: &Path,
        durability: Durability,
        segment_bytes: u64,
        ring: Rc<RefCell<Ring>>,
        segments: Vec<(u64, PathBuf)>,
        next_seq: u64,
    ) -> Result<Journal, StoreError> {
        let io =
            |what: &str, e: std::io::Error| StoreError(format!("{}: {what}: {e}", dir.display()));
        let mut segments = segments;
        if segments.is_empty() {
            let path = dir.join(segment_name(next_seq));
            // Never truncate: a file of this name may hold data recovery refused to read.
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| io("create segment", e))?;
            sync_dir(dir).map_err(|e| io("sync directory", e))?;
            segments.push((next_seq, path));
        }
        let path = &segments.last().expect("at least one").1;
        let segment =
            OpenOptions::new().write(true).open(path).map_err(|e| io("open segment", e))?;
        let segment_len = segment.metadata().map_err(|e| io("stat segment", e))?.len();
        let acks = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("acks.log"))
            .map_err(|e| io("open acks.log", e))?;
        Ok(Journal {
            dir: dir.to_path_buf(),
            durability,
            segment_bytes,
            ring,
            segment: Rc::new(segment),
            segment_len,
            segments,
            appended: next_seq,
            written: next_seq,
            durable: next_seq,
            queued: Default::default(),
            in_flight: Default::default(),
            next_tag: 0,
            unsynced: Vec::new(),
            syncs_in_flight: 0,
            unsynced_in_flight: Vec::new(),
            sync_target: next_seq,
            acks,
            ack_buf: Vec::new(),
            failed: None,
            group: GroupCommit::default(),
            group_bytes: 0,
            group_since_us: None,
        })
    }

    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    fn fail(&mut self, what: String) {
        if self.failed.is_none() {
            eprintln!(
                "rdmq: journal {}: {what}; durable publishes refused until restart",
                self.dir.display()
            );
            self.failed = Some(what);
            // Queued spans will never be written: give their ring space back to the shard's
            // other journals (in-flight ones come back with their completions).
            for p in self.queued.drain(..) {
                self.ring.borrow_mut().release(p.claim);
            }
        }
    }

    /// Starts a new segment once the current one is full. Creating a file is rare and the
    /// directory must be synced before anything confirmed lives in it, so this is synchronous.
    fn roll_if_full(&mut self, first_seq: u64, batch_len: u64) -> Result<(), StoreError> {
        if self.segment_len == 0 || self.segment_len + batch_len <= self.segment_bytes {
            return Ok(());
        }
        let path = self.dir.join(segment_name(first_seq));
        let file = File::create(&path)
            .and_then(|f| sync_dir(&self.dir).map(|_| f))
            .map_err(|e| StoreError(format!("{}: new segment: {e}", path.display())))?;
        self.segment = Rc::new(file);
        self.segment_len = 0;
        self.segments.push((first_seq, path));
        Ok(())
    }

    /// The next write to submit, while fewer than [`WRITES_IN_FLIGHT`] are in flight: queued
    /// spans adjacent both in the ring and in the same file go out as one write.
    pub fn next_write(&mut self) -> Option<WriteReq> {
        if self.in_flight.len() >= WRITES_IN_FLIGHT || self.failed.is_some() {
            return None;
        }
        // Writes to a new segment wait for the previous segment's: a crash then leaves at most
        // the last segment with a hole, which recovery can tell from corruption.
        let next_file = &self.queued.front()?.file;
        if self.in_flight.back().is_some_and(|(_, p, _)| !Rc::ptr_eq(&p.file, next_file)) {
            return None;
        }
        let mut p = self.queued.pop_front()?;
        while let Some(next) = self.queued.front() {
            let ring_adjacent = next.claim.start == p.claim.start + p.claim.len as u64;
            let file_adjacent =
                Rc::ptr_eq(&next.file, &p.file) && next.offset == p.offset + p.claim.len as u64;
            // Merged spans must not cross the ring's wrap (claims never do individually).
            let cap = self.ring.borrow().capacity() as u64;
            let same_lap =
                (p.claim.start / cap) == ((next.claim.start + next.claim.len as u64 - 1) / cap);
            if !(ring_adjacent && file_adjacent && same_lap) {
                break;
            }
            let next = self.queued.pop_front().expect("peeked");
            p.claim.len += next.claim.len;
            p.end_seq = next.end_seq;
        }
        let tag = self.next_tag;
        self.next_tag = (self.next_tag + 1) & WRITE_TAG_MASK;
        let req = WriteReq { fd: p.file.as_raw_fd(), claim: p.claim, offset: p.offset, tag };
        self.in_flight.push_back((tag, p, false));
        Some(req)
    }

    /// The write with `tag` finished with `result` (bytes written or -errno).
    pub fn write_done(&mut self, tag: u32, result: i32) {
        let at = self
            .in_flight
            .iter()
            .position(|(t, _, done)| *t == tag && !done)
            .expect("completion for a write in flight");
        self.in_flight[at].2 = true;
        let p = self.in_flight[at].1.clone();
        self.ring.borrow_mut().release(p.claim);
        if self.failed.is_some() {
            // After a failure nothing more becomes written or durable; just let go of it.
            self.in_flight.remove(at);
            return;
        }
        if result < 0 || result as usize != p.claim.len {
            self.in_flight.remove(at);
            let why = if result < 0 {
                std::io::Error::from_raw_os_error(-result).to_string()
            } else {
                format!("short write ({result} of {} bytes; disk full?)", p.claim.len)
            };
            self.fail(format!("segment write failed: {why}"));
            return;
        }
        if self.durability == Durability::Fsync
            && !self.unsynced.iter().any(|f| Rc::ptr_eq(f, &p.file))
        {
            self.unsynced.push(p.file.clone());
        }
        self.group_bytes += p.claim.len as u64;
        // Only a completed prefix is written: a later write may land before an earlier one.
        while let Some((_, p, true)) = self.in_flight.front() {
            self.written = p.end_seq;
            self.in_flight.pop_front();
        }
        if self.durability == Durability::Flush {
            self.durable = self.written;
        }
    }

    /// Files to `fdatasync` now, if this is an `fsync` journal with written data not yet synced
    /// and no sync in flight (everything written meanwhile joins the next group), and the group
    /// is closed: `max_bytes` written, or its first write `max_delay_us` old (0: at once).
    pub fn next_syncs(&mut self, now_us: u64) -> Vec<RawFd> {
        if self.durability != Durability::Fsync
            || self.syncs_in_flight > 0
            || self.written == self.durable
            || self.failed.is_some()
        {
            return Vec::new();
        }
        let since = *self.group_since_us.get_or_insert(now_us);
        let full = self.group.max_bytes > 0 && self.group_bytes >= self.group.max_bytes;
        if !full && now_us < since + self.group.max_delay_us {
            return Vec::new();
        }
        self.group_since_us = None;
        self.group_bytes = 0;
        self.sync_target = self.written;
        let files = std::mem::take(&mut self.unsynced);
        self.syncs_in_flight = files.len();
        let fds = files.iter().map(|f| f.as_raw_fd()).collect();
        // Keep the files open until their syncs complete.
        self.unsynced_in_flight = files;
        fds
    }

    pub fn sync_done(&mut self, result: i32) {
        self.syncs_in_flight -= 1;
        if result < 0 {
            let e = std::io::Error::from_raw_os_error(-result);
            self.fail(format!("fdatasync failed: {e}"));
        }
        if self.syncs_in_flight == 0 {
            self.unsynced_in_flight.clear();
            if self.failed.is_none() {
                self.durable = self.sync_target;
            }
        }
    }

    /// Writes buffered acknowledgements to `acks.log` (see the module comment for why this is
    /// a plain write).
    pub fn flush_acks(&mut self) {
        if self.ack_buf.is_empty() {
            return;
        }
        if let Err(e) = self.acks.write_all(&self.ack_buf) {
            self.fail(format!("acks.log write failed: {e}"));
        }
        self.ack_buf.clear();
    }

    pub fn set_group_commit(&mut self, group: GroupCommit) {
        self.group = group;
    }

    /// Whether a group is open and waiting for its delay to pass.
    pub fn sync_waiting(&self) -> bool {
        self.group_since_us.is_some() && self.syncs_in_flight == 0
    }

    pub fn has_io(&self) -> bool {
        !self.queued.is_empty() || !self.in_flight.is_empty() || self.syncs_in_flight > 0
    }

    /// Deletes segments whose every sequence is below `floor` (settled), writing the new floor
    /// to the checkpoint first so recovery never mistakes a deleted segment for a missing one.
    pub fn retire_below(&mut self, floor: u64) {
        // A message can be acknowledged before its write completes; the checkpoint must never
        // claim more than is on disk, or a restart would append after a gap.
        let floor = floor.min(self.written);
        let retire = self.segments.windows(2).take_while(|w| w[1].0 <= floor).count();
        if retire == 0 {
            return;
        }
        if let Err(e) = write_checkpoint(&self.dir, floor) {
            self.fail(format!("checkpoint write failed: {e}"));
            return;
        }
        for (_, path) in self.segments.drain(..retire) {
            if let Err(e) = std::fs::remove_file(&path) {
                eprintln!("rdmq: cannot delete settled segment {}: {e}", path.display());
            }
        }
        if let Err(e) = sync_dir(&self.dir) {
            self.fail(format!("sync directory failed: {e}"));
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The queue's view of its journal: the queue appends and settles through it, while the shard
/// drives the journal's I/O through the same shared handle.
pub struct JournalStore(pub Rc<RefCell<Journal>>);

impl Store for JournalStore {
    fn append(
        &mut self,
        first_seq: u64,
        bytes: usize,
        records: &mut dyn Iterator<Item = &[u8]>,
    ) -> Result<(), StoreError> {
        self.0.borrow_mut().append(first_seq, bytes, records)
    }

    fn settle(&mut self, seq: u64) {
        format::encode_ack(seq, &mut self.0.borrow_mut().ack_buf);
    }

    fn unsettle(&mut self, seq: u64) {
        format::encode_unack(seq, &mut self.0.borrow_mut().ack_buf);
    }

    fn durable_position(&self) -> u64 {
        self.0.borrow().durable
    }

    fn durability(&self) -> Durability {
        self.0.borrow().durability
    }
}

impl Journal {
    fn append(
        &mut self,
        first_seq: u64,
        bytes: usize,
        records: &mut dyn Iterator<Item = &[u8]>,
    ) -> Result<(), StoreError> {
        if let Some(why) = &self.failed {
            return Err(StoreError(format!("journal failed earlier: {why}")));
        }
        assert_eq!(first_seq, self.appended, "journal sequences must be contiguous");
        let len = BATCH_HEADER_LEN + bytes;
        self.roll_if_full(first_seq, len as u64)?;
        let claim = self.ring.borrow_mut().claim(len).ok_or_else(|| {
            StoreError("journal write ring is full: the disk is slower than the publishers".into())
        })?;
        let count = {
            let mut ring = self.ring.borrow_mut();
            let buf = ring.bytes_mut(claim);
            let (mut at, mut count) = (BATCH_HEADER_LEN, 0u32);
            for r in records {
                buf[at..at + r.len()].copy_from_slice(r);
                at += r.len();
                count += 1;
            }
            assert_eq!(at, len, "record bytes disagree with the length given");
            buf[0..4].copy_from_slice(&(len as u32).to_le_bytes());
            buf[16..20].copy_from_slice(&count.to_le_bytes());
            buf[20..24].copy_from_slice(&0u32.to_le_bytes());
            set_base_seq(buf, first_seq);
            let crc = crc32c::crc32c(&buf[CRC_START..]);
            buf[4..8].copy_from_slice(&crc.to_le_bytes());
            count
        };
        self.appended = first_seq + count as u64;
        let file = self.segment.clone();
        let offset = self.segment_len;
        let end_seq = self.appended;
        self.queued.push_back(Pending { claim, file, offset, end_seq });
        self.segment_len += len as u64;
        Ok(())
    }

    pub fn durable_position(&self) -> u64 {
        self.durable
    }

    /// Marks the journal failed from the start (a corrupt segment found by recovery).
    pub fn refuse(&mut self, why: String) {
        self.fail(why);
    }
}

pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

pub fn write_checkpoint(dir: &Path, floor: u64) -> std::io::Result<()> {
    replace_file(dir, "checkpoint", &format::encode_checkpoint(floor))
}

/// Replaces `dir/name` with `bytes` so a crash leaves the old or the new file, never a mix:
/// write a temp file, sync it, rename it over, sync the directory.
pub fn replace_file(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let f = File::create(&tmp)?;
    f.write_all_at(bytes, 0)?;
    f.sync_data()?;
    std::fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal(tag: &str, group: GroupCommit) -> (Journal, PathBuf) {
        let dir = std::env::temp_dir().join(format!("rdmq-journal-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ring = Rc::new(RefCell::new(Ring::new(ring::HUGE_PAGE * 2).unwrap()));
        let mut j = Journal::open(&dir, Durability::Fsync, 1 << 30, ring, Vec::new(), 0).unwrap();
        j.set_group_commit(group);
        (j, dir)
    }

    /// Appends one record and completes its write as the kernel would.
    fn write_one(j: &mut Journal, seq: u64, len: usize) {
        // The journal stores record bytes as given; they need not parse as a record here.
        j.append(seq, len, &mut [vec![0u8; len].as_slice()].into_iter()).unwrap();
        let w = j.next_write().unwrap();
        j.write_done(w.tag, w.claim.len as i32);
    }

    #[test]
    fn positions_only_grow_and_confirm_waits_for_the_sync() {
        let (mut j, dir) = journal("positions", GroupCommit::default());
        write_one(&mut j, 0, 100);
        assert_eq!((j.appended, j.written, j.durable), (1, 1, 0));
        let fds = j.next_syncs(0);
        assert_eq!(fds.len(), 1);
        write_one(&mut j, 1, 100);
        assert!(j.next_syncs(0).is_empty(), "one sync in flight at a time");
        j.sync_done(0);
        assert_eq!(j.durable, 1, "durable is what the sync covered, not what came after");
        assert_eq!(j.next_syncs(0).len(), 1);
        j.sync_done(0);
        assert_eq!(j.durable, 2);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn group_commit_waits_for_delay_or_bytes() {
        let (mut j, dir) = journal("group", GroupCommit { max_delay_us: 1000, max_bytes: 10_000 });
        write_one(&mut j, 0, 100);
        assert!(j.next_syncs(0).is_empty(), "group open, delay not reached");
        assert!(j.sync_waiting());
        assert!(j.next_syncs(999).is_empty());
        assert_eq!(j.next_syncs(1000).len(), 1, "delay reached");
        j.sync_done(0);
        // The byte bound closes a group before its delay.
        write_one(&mut j, 1, 20_000);
        assert_eq!(j.next_syncs(2000).len(), 1);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_failed_write_fails_the_journal_for_good() {
        let (mut j, dir) = journal("fail", GroupCommit::default());
        j.append(0, 10, &mut [[1u8; 10].as_slice()].into_iter()).unwrap();
        let w = j.next_write().unwrap();
        j.write_done(w.tag, -libc::ENOSPC);
        assert!(j.failure().unwrap().contains("No space"));
        assert!(j.append(1, 10, &mut [[1u8; 10].as_slice()].into_iter()).is_err());
        assert!(j.next_syncs(0).is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }
}
