//! One client connection's state on its shard: input reassembly, output buffers (one being
//! filled, one leased to the kernel), and the consumers and subscriptions it opened.
//!
//! Owned by the shard that accepted the connection; never touched by another thread.

use std::collections::VecDeque;
use std::os::fd::{OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;

use rustc_hash::FxHashMap;

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
/// delivery count, flags, record), cut at [`DELIVER_FRAME_BYTES`]. Returns the entry count.
pub fn write_deliver_frames<'a>(
    out: &mut Vec<u8>,
    id: u32,
    entries: impl Iterator<Item = (u64, u32, u16, &'a [u8])>,
) -> usize {
    let mut written = 0;
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
    }
    w.finish(out);
    written
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
    /// Shared with the frame handlers during a parse, so frames can be read in place while the
    /// connection's state changes (a close keeps the mapping alive until the parse returns).
    pub region: Rc<Region>,
    pub client_wake: OwnedFd,
}

/// A connection whose bytes move through a region's two rings instead of a socket: shared
/// memory, or RDMA (where the receive ring is written by the client's NIC and the other ring
/// stages what the shard writes into the client's).
pub enum RingConn {
    Shm(ShmConn),
    #[cfg(feature = "rdma")]
    Rdma(rdmq_client::rdma::Link),
}

impl RingConn {
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
    use std::sync::atomic::{fence, Ordering};
    fence(Ordering::SeqCst);
    if s.region.ctrl().client_waiting.0.load(Ordering::Relaxed) != 0 {
        rdmq_client::shm::signal(s.client_wake.as_fd());
    }
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
            paused: false,
            deferred_settles: Vec::new(),
        }
    }

    /// Whether `id` is already used by a consumer or subscription of this connection.
    pub fn id_in_use(&self, id: u32) -> bool {
        self.consumers.contains_key(&id) || self.subs.contains_key(&id)
    }

    /// Moves buffered topic messages into the output until it reaches `high_water`.
    /// Returns how many messages were written.
    pub fn pump(&mut self, high_water: usize) -> usize {
        if self.closing {
            return 0;
        }
        if let Some(session) = self.stomp.as_mut() {
            return session.pump(&mut self.subs, &mut self.out, high_water);
        }
        if let Some(session) = self.mqtt.as_mut() {
            let now_us = crate::broker::wall_clock_ms() * 1000;
            return session.pump(&mut self.subs, &mut self.out, high_water, now_us);
        }
        let mut written = 0;
        for (&id, sub) in self.subs.iter_mut() {
            while !sub.pending.is_empty() && self.out.len() < high_water {
                let n = sub.pending.len().min(TOPIC_DELIVER_BATCH);
                let entries = sub.pending.iter().take(n).map(|m| (0, 1, 0, m.bytes()));
                written += write_deliver_frames(&mut self.out, id, entries);
                sub.pending.drain(..n);
            }
        }
        written
    }
}
