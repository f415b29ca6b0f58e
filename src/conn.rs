//! One client connection's state on its shard: input reassembly, output buffers (one being
//! filled, one leased to the kernel), and the consumers and subscriptions it opened.
//!
//! Owned by the shard that accepted the connection; never touched by another thread.

use std::cell::Cell;
use std::collections::VecDeque;
use std::os::fd::{OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::arena::Bytes;
use crate::broker::MsgRef;
use crate::gateway::stomp::session::Session;
use rdmq_client::shm::Region;
use rdmq_client::wire::deliver::DeliverWriter;

/// Topic messages moved from a subscription's buffer into the output at a time (between
/// high-water checks): large enough to amortise the frame header.
pub const TOPIC_DELIVER_BATCH: usize = 1024;
/// Bytes per DELIVER frame: a frame is cut before a record would take it past this (it always
/// holds at least one record, and a record always fits a client's frame limit).
pub const DELIVER_FRAME_BYTES: usize = 1 << 20;

/// Appends DELIVER frames for consumer or subscription `id`, entries given as (tag,
/// delivery count, flags, record), cut at [`DELIVER_FRAME_BYTES`]. Returns the entry count and
/// the record bytes copied.
pub fn write_deliver_frames<'a>(
    out: &mut Vec<u8>,
    id: u32,
    entries: impl Iterator<Item = (u64, u32, u16, &'a [u8])>,
) -> (usize, usize) {
    let (mut written, mut bytes) = (0, 0);
    let mut frame_start = out.len();
    let mut w = DeliverWriter::begin(out, id);
    for (tag, count, flags, record) in entries {
        if w.count() > 0 && out.len() - frame_start + record.len() > DELIVER_FRAME_BYTES {
            w.finish(out);
            frame_start = out.len();
            w = DeliverWriter::begin(out, id);
        }
        w.push(out, tag, count, flags, record);
        written += 1;
        bytes += record.len();
    }
    w.finish(out);
    (written, bytes)
}

/// Writes whole DELIVER frames for `id` straight into `buf` (a ring's free span), frames cut
/// at [`DELIVER_FRAME_BYTES`], entries from `items` through `entry` (tag, delivery count,
/// flags, record), stopping at the first entry that does not fit. A record `gather` takes
/// (given its offset in `buf`) is left for the NIC to write from where it lies: its bytes in
/// `buf` are not written. Returns (bytes used, entries written, record bytes copied). The
/// layout comes from the codec (`wire::deliver`), as `DeliverWriter`'s does; this one writes
/// into a slice instead of a `Vec`.
pub fn write_deliver_into<T>(
    buf: &mut [u8],
    id: u32,
    items: &[T],
    entry: impl Fn(&T) -> (u64, u32, u16, &MsgRef),
    gather: &mut dyn FnMut(usize, &MsgRef) -> bool,
) -> (usize, usize, usize) {
    use rdmq_client::wire::deliver::{body_header, entry_header, BODY_HEADER_LEN};
    use rdmq_client::wire::{deliver::ENTRY_HEADER_LEN, FrameHeader, Opcode, FRAME_HEADER_LEN};
    let (mut used, mut written, mut copied) = (0, 0, 0);
    while written < items.len() {
        let frame_at = used;
        let mut at = frame_at + FRAME_HEADER_LEN + BODY_HEADER_LEN;
        let mut count = 0u32;
        while written < items.len() {
            let (tag, deliveries, flags, rec) = entry(&items[written]);
            let len = ENTRY_HEADER_LEN + rec.len as usize;
            let frame_full = count > 0 && at - frame_at + rec.len as usize > DELIVER_FRAME_BYTES;
            if frame_full || at + len > buf.len() {
                break;
            }
            buf[at..at + ENTRY_HEADER_LEN].copy_from_slice(&entry_header(tag, deliveries, flags));
            if !gather(at + ENTRY_HEADER_LEN, rec) {
                buf[at + ENTRY_HEADER_LEN..at + len].copy_from_slice(rec.bytes());
                copied += rec.len as usize;
            }
            at += len;
            count += 1;
            written += 1;
        }
        if count == 0 {
            break; // not even one entry fits: the caller buffers the rest
        }
        let length = (at - frame_at - FRAME_HEADER_LEN) as u32;
        let opcode = Opcode::Deliver as u8;
        let h = FrameHeader { length, opcode, flags: 0, reserved: 0, request_id: 0 };
        let body_at = frame_at + FRAME_HEADER_LEN;
        buf[frame_at..body_at].copy_from_slice(&h.to_bytes());
        buf[body_at..body_at + BODY_HEADER_LEN].copy_from_slice(&body_header(id, count));
        used = at;
    }
    (used, written, copied)
}

/// A topic message as a DELIVER entry: tag 0, first delivery, no flags.
fn topic_entry(m: &MsgRef) -> (u64, u32, u16, &MsgRef) {
    (0, 1, 0, m)
}

/// Handles to message memory an RDMA link writes deliveries from: each kept until the link's
/// writes have landed past its staging position (one handle per run of records in the same
/// memory, which is what keeps that memory from being reused).
pub type GatherKeep = VecDeque<(u64, Bytes)>;

/// Output a ring connection holds back behind a full outgoing ring, in order: bytes already
/// encoded (replies), and queue deliveries not yet encoded, which are written straight into
/// the ring (or gathered by the NIC) once it has room, rather than copied into a buffer first.
#[derive(Debug)]
pub enum HeldOutput {
    Bytes(Vec<u8>),
    Deliver { id: u32, items: VecDeque<DeliverItem> },
}

/// One held queue delivery: tag, delivery count, flags and the record.
#[derive(Debug, Clone)]
pub struct DeliverItem {
    pub tag: u64,
    pub deliveries: u32,
    pub flags: u16,
    pub rec: MsgRef,
}

/// Ring bytes a DELIVER frame holding one record of `len` bytes takes.
pub fn one_deliver_frame(len: usize) -> usize {
    use rdmq_client::wire::deliver::{BODY_HEADER_LEN, ENTRY_HEADER_LEN};
    rdmq_client::wire::FRAME_HEADER_LEN + BODY_HEADER_LEN + ENTRY_HEADER_LEN + len
}

fn held_entry(d: &DeliverItem) -> (u64, u32, u16, &MsgRef) {
    (d.tag, d.deliveries, d.flags, &d.rec)
}

/// Writes DELIVER frames for as many of `items` as fit into the ring's free space, records
/// the NIC can gather left to it. Returns (entries written, record bytes copied), or `None`
/// when the client's head is impossible (nothing written; `flush_ring` finds the same and
/// closes the connection).
fn write_direct<T>(
    ring: &mut RingConn,
    pos: &RingPositions,
    keep: &mut GatherKeep,
    id: u32,
    items: &[T],
    entry: impl Fn(&T) -> (u64, u32, u16, &MsgRef),
) -> Option<(usize, usize)> {
    let region = ring.region().clone();
    let tx = region.s2c();
    let (mut n, mut bytes) = (0, 0);
    let tail = pos.tx_tail.get();
    let used = tx.write_with_after(tail, |buf| {
        let mut gather = |at: usize, m: &MsgRef| ring.gather(tail + at as u64, m, keep);
        let (used, w, b) = write_deliver_into(buf, id, items, &entry, &mut gather);
        (n, bytes) = (w, b);
        used
    })?;
    pos.tx_tail.set(tail + used as u64);
    Some((n, bytes))
}

/// `Conn::deliver_to_ring` on the parts of a connection, so `pump` can use it while it walks
/// the subscriptions. `blocked`: output is already held back (nothing may overtake it).
#[allow(clippy::too_many_arguments)]
fn ring_deliver<T>(
    ring: Option<&mut RingConn>,
    pos: &RingPositions,
    keep: &mut GatherKeep,
    out: &mut Vec<u8>,
    blocked: bool,
    id: u32,
    items: &[T],
    entry: impl Fn(&T) -> (u64, u32, u16, &MsgRef),
) -> (usize, usize, usize) {
    let Some(ring) = ring else { return (0, 0, 0) };
    if blocked || items.is_empty() {
        return (0, 0, 0);
    }
    let mut flushed = 0;
    if !out.is_empty() {
        let region = ring.region().clone();
        let tx = region.s2c();
        let tail = pos.tx_tail.get();
        if tx.free_after(tail).is_none_or(|free| free < out.len()) {
            return (0, 0, 0);
        }
        let wrote = tx.write_after(tail, out).expect("checked just above");
        pos.tx_tail.set(tail + wrote as u64);
        flushed = out.len();
        out.clear();
    }
    match write_direct(ring, pos, keep, id, items, entry) {
        Some((n, bytes)) => (n, bytes, flushed),
        None => (0, 0, flushed),
    }
}

/// A topic subscription's bounded buffer.
#[derive(Default)]
pub struct SubState {
    pub pending: VecDeque<MsgRef>,
    /// For gateway connections only: the topic of each pending message, in step with `pending`.
    pub topics: VecDeque<Arc<str>>,
    pub dropped: u64,
}

/// A shared-memory connection's rings and the eventfd that wakes its client. The socket
/// (`Conn::fd`) only carries the handshake, then tells the shard when the client goes away.
pub struct ShmConn {
    /// Cloned while the shard reads the ring, so a handler that closes and releases the
    /// connection meanwhile does not unmap the memory under the read.
    pub region: Rc<Region>,
    pub client_wake: OwnedFd,
}

/// A connection whose bytes move through a region's two rings instead of a socket: shared
/// memory, or RDMA (where the receive ring is written by the client's NIC and the other ring
/// stages what the shard writes into the client's).
// Boxed where it lives (`Conn::ring`), so the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum RingConn {
    Shm(ShmConn),
    #[cfg(feature = "rdma")]
    Rdma(rdmq_client::rdma::Link),
}

/// The shard's own positions in a ring connection's two rings. The control block of a shm
/// region is shared with the client, so the shard writes its head and tail there for the
/// client but never reads them back: a client that scribbles on them cannot move the shard's
/// view (its own tail and head are read, validated, and a wrong one closes the connection).
#[derive(Debug, Default)]
pub struct RingPositions {
    /// Receive ring: bytes the shard has handled.
    pub rx_head: Cell<u64>,
    /// Outgoing ring: bytes the shard has written.
    pub tx_tail: Cell<u64>,
    /// The client's tail when the shard last found only part of a frame: until it moves,
    /// there is nothing new to parse (the shard may sleep).
    pub rx_stalled_at: Cell<Option<u64>>,
}

impl RingConn {
    /// Whether the record `m`, staged at `pos` in the outgoing ring, will be written by the
    /// NIC from where it lies (an RDMA link whose registered memory holds it) rather than
    /// copied into the ring; if so its memory is kept in `keep` until the write lands.
    pub fn gather(&mut self, pos: u64, m: &MsgRef, keep: &mut GatherKeep) -> bool {
        match self {
            RingConn::Shm(_) => {
                // The consumer's ring is written directly: the one copy is already the last.
                let _ = (pos, m, keep);
                false
            }
            #[cfg(feature = "rdma")]
            RingConn::Rdma(link) => {
                let (addr, len) = (m.bytes().as_ptr() as u64, m.len as usize);
                let Some(src) = link.source_of(addr, len) else { return false };
                link.gather(pos, m.len, src, addr);
                let end = pos + len as u64;
                match keep.back_mut() {
                    Some((last, b)) if b.same_memory(&m.batch) => *last = end,
                    _ => keep.push_back((end, m.batch.clone())),
                }
                true
            }
        }
    }

    pub fn region(&self) -> &Rc<Region> {
        match self {
            RingConn::Shm(s) => &s.region,
            #[cfg(feature = "rdma")]
            RingConn::Rdma(l) => &l.region,
        }
    }

    /// Input was consumed (ring space freed): a sleeping shm client is woken, an RDMA client
    /// gets its credit.
    pub fn after_consume(&mut self) {
        match self {
            RingConn::Shm(s) => wake_if_waiting(s),
            #[cfg(feature = "rdma")]
            RingConn::Rdma(l) => {
                let _ = l.credit(); // a failure shows as an error completion
            }
        }
    }

    /// Output was written into the ring: a sleeping shm client is woken, an RDMA link posts
    /// the bytes to the client's ring.
    pub fn after_write(&mut self) {
        match self {
            RingConn::Shm(s) => wake_if_waiting(s),
            #[cfg(feature = "rdma")]
            RingConn::Rdma(l) => {
                let _ = l.push();
            }
        }
    }

    /// Written output not yet on its way to the client (RDMA writes wait for free send
    /// requests); shared memory has none once it is in the ring.
    pub fn has_unsent(&self) -> bool {
        match self {
            RingConn::Shm(_) => false,
            #[cfg(feature = "rdma")]
            RingConn::Rdma(l) => l.has_pending(),
        }
    }
}

fn wake_if_waiting(s: &ShmConn) {
    use std::os::fd::AsFd;
    let waiting = &s.region.ctrl().client_waiting.0;
    rdmq_client::shm::wake_if_waiting(waiting, s.client_wake.as_fd());
}

pub struct Conn {
    pub fd: RawFd,
    pub generation: u32,
    pub handshaken: bool,
    pub closing: bool,
    pub closing_since_ms: u64,
    /// Shard clock at accept, for the handshake deadline.
    pub accepted_ms: u64,
    pub flush_on_close: bool,
    pub recv_armed: bool,
    /// Bytes received but not yet forming a whole frame.
    pub inbuf: Vec<u8>,
    /// Output being filled this pass.
    pub out: Vec<u8>,
    /// Output leased to the kernel while `send_inflight`.
    pub sending: Vec<u8>,
    pub send_offset: usize,
    pub send_inflight: bool,
    /// Consumer id → queue name.
    pub consumers: FxHashMap<u32, Arc<str>>,
    pub subs: FxHashMap<u32, SubState>,
    /// CONSUME requests awaiting the queue owner's answer: request id → consumer id.
    pub pending_consume: FxHashMap<u64, u32>,
    /// A STOMP gateway connection's session (`None`: the native protocol).
    pub stomp: Option<Box<Session>>,
    /// An MQTT gateway connection's session.
    pub mqtt: Option<Box<crate::gateway::mqtt::session::Session>>,
    /// A shared-memory or RDMA connection (`None`: a socket carries the frames).
    pub ring: Option<Box<RingConn>>,
    /// The shard's positions in `ring`.
    pub ring_pos: RingPositions,
    /// Message memory an RDMA link's writes still read (after `ring`, so the link, and its
    /// queue pair, go first).
    pub gather_keep: GatherKeep,
    /// A ring connection's output held back behind a full ring, after `sending` and before
    /// `out` ([`HeldOutput`]); the bytes it holds (record bytes of deliveries, all of the
    /// rest), which count toward the output high-water mark; and the free ring space the
    /// front delivery waits for (0: any).
    pub held: VecDeque<HeldOutput>,
    pub held_bytes: usize,
    pub held_need: usize,
    /// Input is not being parsed until outstanding requests drain (a gateway's send window).
    pub paused: bool,
    /// Acknowledgements a gateway holds back while the output is above its high-water mark
    /// (`Shard::settle_when_written`).
    pub deferred_settles: Vec<(crate::broker::SubKey, Arc<str>, Vec<u64>)>,
}

impl Conn {
    pub fn new(fd: RawFd, generation: u32) -> Conn {
        Conn {
            fd,
            generation,
            handshaken: false,
            closing: false,
            closing_since_ms: 0,
            accepted_ms: 0,
            flush_on_close: false,
            recv_armed: true,
            inbuf: Vec::new(),
            out: Vec::with_capacity(64 << 10),
            sending: Vec::with_capacity(64 << 10),
            send_offset: 0,
            send_inflight: false,
            consumers: FxHashMap::default(),
            subs: FxHashMap::default(),
            pending_consume: FxHashMap::default(),
            stomp: None,
            mqtt: None,
            ring: None,
            ring_pos: RingPositions::default(),
            gather_keep: GatherKeep::new(),
            held: VecDeque::new(),
            held_bytes: 0,
            held_need: 0,
            paused: false,
            deferred_settles: Vec::new(),
        }
    }

    /// For a ring connection: writes DELIVER frames for as many of `items` as fit straight
    /// into its outgoing ring, the record's one copy on its way out, after any output already
    /// buffered (order is kept; if that output does not fit whole, nothing goes direct).
    /// Returns (entries written, record bytes copied, buffered bytes moved into the ring); the
    /// caller buffers the rest in `out` as usual.
    pub fn deliver_to_ring<T>(
        &mut self,
        id: u32,
        items: &[T],
        entry: impl Fn(&T) -> (u64, u32, u16, &MsgRef),
    ) -> (usize, usize, usize) {
        let blocked = !self.sending.is_empty() || !self.held.is_empty();
        let Conn { ring, ring_pos, gather_keep, out, .. } = self;
        ring_deliver(ring.as_deref_mut(), ring_pos, gather_keep, out, blocked, id, items, entry)
    }

    /// Holds queue deliveries a ring connection's full ring did not take, behind what is
    /// already waiting (the buffered output first, so order is kept), to be written straight
    /// into the ring by `write_held` once it has room. A delivery whose frame could not fit
    /// even an empty ring is encoded here instead, to go in pieces like other output. Returns
    /// the record bytes that encoding copied.
    pub fn hold_deliveries(&mut self, id: u32, items: impl Iterator<Item = DeliverItem>) -> usize {
        let ring_bytes = self.ring.as_ref().map_or(0, |r| r.region().ring_bytes());
        let whole = |d: &DeliverItem| one_deliver_frame(d.rec.len as usize) <= ring_bytes;
        if !self.out.is_empty() {
            self.held_bytes += self.out.len();
            self.held.push_back(HeldOutput::Bytes(std::mem::take(&mut self.out)));
        }
        let mut copied = 0;
        for d in items {
            if !whole(&d) {
                let mut frame = Vec::new();
                let entry = (d.tag, d.deliveries, d.flags, d.rec.bytes());
                copied += write_deliver_frames(&mut frame, id, std::iter::once(entry)).1;
                self.held_bytes += frame.len();
                self.held.push_back(HeldOutput::Bytes(frame));
                continue;
            }
            self.held_bytes += d.rec.len as usize;
            match self.held.back_mut() {
                Some(HeldOutput::Deliver { id: last, items }) if *last == id => items.push_back(d),
                _ => self.held.push_back(HeldOutput::Deliver { id, items: VecDeque::from([d]) }),
            }
        }
        copied
    }

    /// Moves held output towards the ring, in order, as far as it has room: bytes into
    /// `sending` (the caller copies them), deliveries written straight in. Returns the record
    /// bytes copied, or `None` when the client's head is impossible.
    pub fn write_held(&mut self) -> Option<usize> {
        let mut copied = 0;
        let Conn { ring, ring_pos, gather_keep, held, held_bytes, held_need, sending, .. } = self;
        let Some(ring) = ring.as_deref_mut() else { return Some(0) };
        *held_need = 0;
        while sending.is_empty() {
            match held.front_mut() {
                None => break,
                Some(HeldOutput::Bytes(b)) => {
                    *held_bytes -= b.len();
                    *sending = std::mem::take(b);
                }
                Some(HeldOutput::Deliver { id, items }) => {
                    let front = items.make_contiguous();
                    let (n, b) = write_direct(ring, ring_pos, gather_keep, *id, front, held_entry)?;
                    copied += b;
                    for d in items.drain(..n) {
                        *held_bytes -= d.rec.len as usize;
                    }
                    if let Some(next) = items.front() {
                        // The ring is full: wait until the next whole frame fits (it fits an
                        // empty ring: `hold_deliveries` sees to that).
                        *held_need = one_deliver_frame(next.rec.len as usize);
                        break;
                    }
                }
            }
            held.pop_front();
        }
        Some(copied)
    }

    /// Whether `id` is already used by a consumer or subscription of this connection.
    pub fn id_in_use(&self, id: u32) -> bool {
        self.consumers.contains_key(&id) || self.subs.contains_key(&id)
    }

    /// Moves buffered topic messages into the output until it reaches `high_water`. Returns
    /// how many messages were written, their record bytes (native connections) and the
    /// buffered output moved into a ring on the way.
    pub fn pump(&mut self, high_water: usize) -> (usize, usize, usize) {
        if self.closing {
            return (0, 0, 0);
        }
        if let Some(session) = self.stomp.as_mut() {
            return (session.pump(&mut self.subs, &mut self.out, high_water), 0, 0);
        }
        if let Some(session) = self.mqtt.as_mut() {
            let now_us = crate::broker::wall_clock_ms() * 1000;
            return (session.pump(&mut self.subs, &mut self.out, high_water, now_us), 0, 0);
        }
        let (mut written, mut bytes, mut flushed) = (0, 0, 0);
        let blocked = !self.sending.is_empty() || !self.held.is_empty();
        let ring_bytes = self.ring.as_ref().map(|r| r.region().ring_bytes());
        let Conn { subs, ring, ring_pos, gather_keep, out, .. } = self;
        for (&id, sub) in subs.iter_mut() {
            // Straight into the ring while nothing waits ahead. Behind a full ring a ring
            // connection's messages wait here, in the subscription buffer, until it drains
            // (`Shard::poll_rings` notices), except one too large for the ring, which goes in
            // pieces through `out`; a socket's go into `out`.
            while !sub.pending.is_empty() {
                let front = sub.pending.as_slices().0;
                let n = front.len().min(TOPIC_DELIVER_BATCH);
                let front = &front[..n];
                let ring = ring.as_deref_mut();
                let (w, b, f) =
                    ring_deliver(ring, ring_pos, gather_keep, out, blocked, id, front, topic_entry);
                (written, bytes, flushed) = (written + w, bytes + b, flushed + f);
                sub.pending.drain(..w);
                if w < n {
                    break;
                }
            }
            while !sub.pending.is_empty() && out.len() < high_water {
                let n = match ring_bytes {
                    Some(rb) => {
                        let too_large = |m: &&MsgRef| one_deliver_frame(m.len as usize) > rb;
                        sub.pending.iter().take(TOPIC_DELIVER_BATCH).take_while(too_large).count()
                    }
                    None => sub.pending.len().min(TOPIC_DELIVER_BATCH),
                };
                if n == 0 {
                    break;
                }
                let entries = sub.pending.iter().take(n).map(|m| (0, 1, 0, m.bytes()));
                let (w, b) = write_deliver_frames(out, id, entries);
                (written, bytes) = (written + w, bytes + b);
                sub.pending.drain(..n);
            }
        }
        (written, bytes, flushed)
    }
}
