//! Durable queue storage: one journal per `flush` or `fsync` queue, on the shard that owns the
//! queue.
//!
//! Write path: the records a queue appends already live in the shard's huge-page message
//! memory ([`crate::arena`]), copied there once when they arrived. `append` builds the batch
//! header for them (wire layout, `base_seq` stamped, CRC32C over the records where they lie)
//! and queues header and record spans as one write. The shard loop then writes queued spans to
//! the current segment file with `writev` through io_uring, straight from that memory (up to
//! `WRITES_IN_FLIGHT` per journal, adjacent writes merged) and, for `fsync` queues, syncs with
//! `fdatasync` through io_uring, one sync in flight per journal: everything written while a sync
//! runs shares the next one (group commit). Positions only grow:
//! `durable <= written <= appended`. A publish is confirmed only once `durable` covers it.
//! Bytes appended and not yet written are bounded per shard ([`Backlog`]): a disk slower than
//! the publishers refuses publishes rather than growing memory.
//!
//! Acknowledgements are appended to `acks.log` with a plain `write(2)` at the end of the pass
//! that settled them, before the pass sends any reply, so a reply the client sees after its acks
//! implies they reached the page cache (they survive `kill -9`; a power cut may bring a few back,
//! which at-least-once allows).
//!
//! Recovery and the on-disk format: `format.rs` and `docs/JOURNAL.md`.

pub mod format;
pub mod recovery;

use std::cell::{Cell, RefCell};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rdmq_client::wire::record::{set_base_seq, BATCH_HEADER_LEN, CRC_START};
use rdmq_client::Durability;

use crate::arena::Bytes;
use crate::broker::store::{Store, StoreError};
use crate::broker::MsgRef;

use format::segment_name;
pub use recovery::{recover, Recovered};

/// One queued or in-flight write: spans of memory bound for a file offset.
#[derive(Debug, Clone)]
struct Pending {
    /// Batch headers and the record bytes after each, in file order.
    spans: Vec<Bytes>,
    len: u64,
    file: Rc<File>,
    offset: u64,
    /// Sequence just past the last record in this write.
    end_seq: u64,
}

/// A write handed to the kernel: the pending write and the iovecs describing it, which must
/// stay where they are until the completion.
struct InFlight {
    tag: u32,
    p: Pending,
    /// Read by the kernel only, through the pointer in the `WriteReq`.
    _iov: Box<[libc::iovec]>,
    done: bool,
}

/// A write the shard should submit: `iov_len` iovecs at `iov` (`len` bytes) to `fd` at `offset`.
#[derive(Debug, Clone, Copy)]
pub struct WriteReq {
    pub fd: RawFd,
    pub iov: *const libc::iovec,
    pub iov_len: u32,
    pub len: u64,
    pub offset: u64,
    /// Identifies the write in its completion (24 bits travel in the user data).
    pub tag: u32,
}

/// Writes one journal keeps in flight: enough to hide the kernel's hand-off to its workers,
/// few enough that a failing disk is noticed after little more is queued.
pub const WRITES_IN_FLIGHT: usize = 8;
const WRITE_TAG_MASK: u32 = 0xFF_FFFF;
/// Iovecs in one `writev` (the kernel takes up to 1024); merging stops here.
const IOV_PER_WRITE: usize = 256;
/// A batch whose records lie in more separate spans than this (dead letters gathered from
/// many batches) is copied into one buffer instead.
const SPANS_PER_BATCH: usize = 64;

/// Bytes appended to a shard's journals and not yet written, shared by them and bounded.
#[derive(Debug)]
pub struct Backlog {
    used: Cell<u64>,
    max: u64,
}

impl Backlog {
    pub fn new(max: u64) -> Rc<Backlog> {
        Rc::new(Backlog { used: Cell::new(0), max })
    }

    fn take(&self, n: u64) -> bool {
        let ok = self.used.get() + n <= self.max;
        if ok {
            self.used.set(self.used.get() + n);
        }
        ok
    }

    fn give_back(&self, n: u64) {
        self.used.set(self.used.get() - n);
    }

    pub fn used(&self) -> u64 {
        self.used.get()
    }
}

pub struct Journal {
    dir: PathBuf,
    durability: Durability,
    segment_bytes: u64,
    backlog: Rc<Backlog>,
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
    in_flight: std::collections::VecDeque<InFlight>,
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
    /// Record bytes this journal copied (batches gathered from too many spans), for the
    /// shard's copy counter to take.
    pub copied: u64,
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
        backlog: Rc<Backlog>,
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
            backlog,
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
            copied: 0,
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
            // Queued writes will never happen: give their backlog back to the shard's other
            // journals (in-flight ones come back with their completions).
            for p in self.queued.drain(..) {
                self.backlog.give_back(p.len);
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
    /// writes adjacent in the same file go out as one `writev`.
    pub fn next_write(&mut self) -> Option<WriteReq> {
        if self.in_flight.len() >= WRITES_IN_FLIGHT || self.failed.is_some() {
            return None;
        }
        // Writes to a new segment wait for the previous segment's: a crash then leaves at most
        // the last segment with a hole, which recovery can tell from corruption.
        let next_file = &self.queued.front()?.file;
        if self.in_flight.back().is_some_and(|w| !Rc::ptr_eq(&w.p.file, next_file)) {
            return None;
        }
        let mut p = self.queued.pop_front()?;
        while let Some(next) = self.queued.front() {
            let file_adjacent = Rc::ptr_eq(&next.file, &p.file) && next.offset == p.offset + p.len;
            if !file_adjacent || p.spans.len() + next.spans.len() > IOV_PER_WRITE {
                break;
            }
            let next = self.queued.pop_front().expect("peeked");
            p.spans.extend(next.spans);
            p.len += next.len;
            p.end_seq = next.end_seq;
        }
        let iov: Box<[libc::iovec]> = p
            .spans
            .iter()
            .map(|s| libc::iovec { iov_base: s.as_ptr() as *mut libc::c_void, iov_len: s.len() })
            .collect();
        let tag = self.next_tag;
        self.next_tag = (self.next_tag + 1) & WRITE_TAG_MASK;
        let req = WriteReq {
            fd: p.file.as_raw_fd(),
            iov: iov.as_ptr(),
            iov_len: iov.len() as u32,
            len: p.len,
            offset: p.offset,
            tag,
        };
        self.in_flight.push_back(InFlight { tag, p, _iov: iov, done: false });
        Some(req)
    }

    /// The write with `tag` finished with `result` (bytes written or -errno).
    pub fn write_done(&mut self, tag: u32, result: i32) {
        let at = self
            .in_flight
            .iter()
            .position(|w| w.tag == tag && !w.done)
            .expect("completion for a write in flight");
        self.in_flight[at].done = true;
        let (len, file) = (self.in_flight[at].p.len, self.in_flight[at].p.file.clone());
        self.backlog.give_back(len);
        if self.failed.is_some() {
            // After a failure nothing more becomes written or durable; just let go of it.
            self.in_flight.remove(at);
            return;
        }
        if result < 0 || result as u64 != len {
            self.in_flight.remove(at);
            let why = if result < 0 {
                std::io::Error::from_raw_os_error(-result).to_string()
            } else {
                format!("short write ({result} of {len} bytes; disk full?)")
            };
            self.fail(format!("segment write failed: {why}"));
            return;
        }
        if self.durability == Durability::Fsync
            && !self.unsynced.iter().any(|f| Rc::ptr_eq(f, &file))
        {
            self.unsynced.push(file);
        }
        self.group_bytes += len;
        // Only a completed prefix is written: a later write may land before an earlier one.
        while let Some(w) = self.in_flight.front().filter(|w| w.done) {
            self.written = w.p.end_seq;
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
        records: &mut dyn Iterator<Item = &MsgRef>,
    ) -> Result<(), StoreError> {
        self.0.borrow_mut().append(first_seq, records)
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
    /// Queues `records` (contiguous sequences from `first_seq`) as one batch: a fresh header,
    /// then the records where they already lie. Nothing is copied unless the records are
    /// scattered over more than [`SPANS_PER_BATCH`] spans.
    fn append(
        &mut self,
        first_seq: u64,
        records: &mut dyn Iterator<Item = &MsgRef>,
    ) -> Result<(), StoreError> {
        if let Some(why) = &self.failed {
            return Err(StoreError(format!("journal failed earlier: {why}")));
        }
        assert_eq!(first_seq, self.appended, "journal sequences must be contiguous");
        // Runs of adjacent records in the same batch become one span each.
        let mut spans: Vec<Bytes> = Vec::with_capacity(2);
        let mut run: Option<(&Bytes, usize, usize)> = None;
        let (mut count, mut bytes) = (0u32, 0usize);
        for r in records {
            let (at, len) = (r.offset as usize, r.len as usize);
            match &mut run {
                Some((b, _, end)) if b.same_as(&r.batch) && *end == at => *end += len,
                _ => {
                    if let Some((b, start, end)) = run.replace((&r.batch, at, at + len)) {
                        spans.push(b.slice(start, end - start));
                    }
                }
            }
            count += 1;
            bytes += len;
        }
        if let Some((b, start, end)) = run {
            spans.push(b.slice(start, end - start));
        }
        let len = BATCH_HEADER_LEN + bytes;
        self.roll_if_full(first_seq, len as u64)?;
        if !self.backlog.take(len as u64) {
            return Err(StoreError(
                "journal write backlog is full: the disk is slower than the publishers".into(),
            ));
        }
        if spans.len() > SPANS_PER_BATCH {
            let mut one = Vec::with_capacity(bytes);
            spans.iter().for_each(|s| one.extend_from_slice(s));
            self.copied += bytes as u64;
            spans = vec![Bytes::from(one)];
        }
        let mut header = vec![0u8; BATCH_HEADER_LEN];
        header[0..4].copy_from_slice(&(len as u32).to_le_bytes());
        header[16..20].copy_from_slice(&count.to_le_bytes());
        set_base_seq(&mut header, first_seq);
        let crc = spans
            .iter()
            .fold(crc32c::crc32c(&header[CRC_START..]), |crc, s| crc32c::crc32c_append(crc, s));
        header[4..8].copy_from_slice(&crc.to_le_bytes());
        spans.insert(0, Bytes::from(header));
        self.appended = first_seq + count as u64;
        let (file, offset, end_seq) = (self.segment.clone(), self.segment_len, self.appended);
        self.queued.push_back(Pending { spans, len: len as u64, file, offset, end_seq });
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
        let backlog = Backlog::new(1 << 20);
        let mut j =
            Journal::open(&dir, Durability::Fsync, 1 << 30, backlog, Vec::new(), 0).unwrap();
        j.set_group_commit(group);
        (j, dir)
    }

    /// A stored record of `len` bytes (the journal stores record bytes as given; they need not
    /// parse as a record here).
    fn rec(len: usize) -> MsgRef {
        MsgRef { batch: Bytes::from(vec![1u8; len]), offset: 0, len: len as u32 }
    }

    /// Appends one record and completes its write as the kernel would.
    fn write_one(j: &mut Journal, seq: u64, len: usize) {
        j.append(seq, &mut [rec(len)].iter()).unwrap();
        let w = j.next_write().unwrap();
        j.write_done(w.tag, w.len as i32);
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

    /// Does what the kernel does with a `WriteReq` (from the spans its iovecs describe, this
    /// module being one without `unsafe`), and completes it.
    fn pwritev(j: &mut Journal, w: WriteReq) {
        let p = &j.in_flight.back().expect("in flight").p;
        let data: Vec<u8> = p.spans.iter().flat_map(|s| s.iter().copied()).collect();
        assert_eq!((data.len() as u64, p.spans.len() as u32), (w.len, w.iov_len));
        p.file.write_all_at(&data, w.offset).unwrap();
        j.write_done(w.tag, data.len() as i32);
    }

    #[test]
    fn records_are_written_from_where_they_lie_and_read_back_intact() {
        use crate::arena::{Arena, HUGE_PAGE};
        use rdmq_client::wire::record::{BatchBuilder, BatchView, RecordMeta};
        let (mut j, dir) = journal("writev", GroupCommit::default());
        let mut arena = Arena::new(2 * HUGE_PAGE).unwrap();
        let batch = |arena: &mut Arena, from: u32, n: u32| {
            let mut buf = Vec::new();
            let mut b = BatchBuilder::begin(&mut buf);
            for i in from..from + n {
                b.push(&mut buf, &RecordMeta::default(), format!("message {i}").as_bytes());
            }
            b.finish(&mut buf);
            let bytes = arena.copy(&buf);
            let recs: Vec<MsgRef> = BatchView::decode(&bytes)
                .unwrap()
                .records()
                .map(|(at, r)| MsgRef {
                    batch: bytes.clone(),
                    offset: at as u32,
                    len: r.bytes.len() as u32,
                })
                .collect();
            recs
        };
        // A whole batch (one span), then every other record of two batches (dead letters
        // gathered from here and there: one span each), then one scattered over more spans than
        // a batch may have, which the journal copies.
        let whole = batch(&mut arena, 0, 5);
        let (a, b) = (batch(&mut arena, 5, 6), batch(&mut arena, 11, 6));
        let picked: Vec<MsgRef> = a.iter().chain(&b).step_by(2).cloned().collect();
        let many = batch(&mut arena, 17, 2 * SPANS_PER_BATCH as u32 + 2);
        let scattered: Vec<MsgRef> = many.iter().step_by(2).cloned().collect();
        let groups = [&whole, &picked, &scattered];
        let mut seq = 0;
        for g in groups {
            j.append(seq, &mut g.iter()).unwrap();
            seq += g.len() as u64;
        }
        assert_eq!(j.copied, scattered.iter().map(|r| r.len as u64).sum::<u64>());
        let w = j.next_write().unwrap();
        assert_eq!(w.iov_len, 1 + 1 + 1 + 6 + 1 + 1, "spans merged into one writev");
        pwritev(&mut j, w);
        assert_eq!(j.written, seq);
        let bytes = std::fs::read(dir.join(segment_name(0))).unwrap();
        let (batches, end) = format::scan_segment(&bytes, 0);
        assert!(matches!(end, format::ScanEnd::Clean), "every checksum holds");
        let counts: Vec<u32> = batches.iter().map(|b| b.count).collect();
        assert_eq!(counts, [5, 6, SPANS_PER_BATCH as u32 + 1]);
        let stored: Vec<&[u8]> = batches
            .iter()
            .flat_map(|b| BatchView::trusted(&bytes[b.offset..b.offset + b.len]).records())
            .map(|(_, r)| r.bytes)
            .collect();
        let sent: Vec<&[u8]> = groups.iter().flat_map(|g| g.iter()).map(|r| r.bytes()).collect();
        assert_eq!(stored, sent);
        assert_eq!(j.backlog.used(), 0);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_failed_write_fails_the_journal_for_good() {
        let (mut j, dir) = journal("fail", GroupCommit::default());
        j.append(0, &mut [rec(10)].iter()).unwrap();
        let w = j.next_write().unwrap();
        j.write_done(w.tag, -libc::ENOSPC);
        assert!(j.failure().unwrap().contains("No space"));
        assert!(j.append(1, &mut [rec(10)].iter()).is_err());
        assert_eq!(j.backlog.used(), 0, "the failed write's backlog came back");
        assert!(j.next_syncs(0).is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }
}
