//! The shard loop: one pinned thread per core owning an io_uring, its connections, the queues
//! whose names hash to it and a replica of the topic subscription table.
//!
//! Each pass reads the clock once, drains the inbound mailboxes, reaps io_uring completions
//! (both bounded), applies the resulting events, dispatches dirty queues, turns output into
//! sends, flushes outbound mailboxes and makes one `io_uring_enter`. A pass that did nothing
//! counts toward the idle strategy: spin for `idle_spin_us`, then sleep in the ring until a
//! completion, an eventfd wake-up from another shard, or the housekeeping tick.
//!
//! `unsafe` is allowed here only for the operations whose memory the shard leases to the
//! kernel: a connection's send buffer, the eventfd read target and journal writes' iovecs.
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use std::rc::Rc;

use crate::arena::{Arena, Bytes};
use crate::broker::queue::{Dispatch, Queue};
use crate::broker::topic::SubscriptionTable;
use crate::broker::{owner_shard, MsgRef, SubKey};
use crate::config::Config;
use crate::conn::Conn;
use crate::durable::{Held, JournalEntry};
use crate::event::{Event, ReplyKind, ReplyTo};
use crate::journal::{Backlog, WriteReq};
use crate::mailbox::{Receiver, Sender};
use crate::metrics::{self, Metrics};
use crate::sys;
use crate::uring::{Completion, Uring};

/// Completions handled per pass, so mailboxes and sends get their turn under load.
const COMPLETIONS_PER_PASS: usize = 1024;
/// Mailbox slots drained per peer per pass, for the same reason.
const MAILBOX_SLOTS_PER_PASS: usize = 64;
/// Submission queue entries: a pass submits at most a few per active connection.
const SQ_ENTRIES: u32 = 4096;
/// Longest sleep in the ring: bounds how late TTL expiry and shutdown are noticed.
const HOUSEKEEPING_TICK: Duration = Duration::from_millis(100);
/// Longest a stopping shard waits for its journals' queued writes and syncs.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);
/// How long a closing connection may take to write its final ERROR frame before the socket is
/// shut down under it: a peer that stopped reading must not pin a slot forever.
const CLOSE_LINGER_MS: u64 = 5_000;
/// A connection must send HELLO this soon after connecting, or it is closed: a peer that
/// never speaks must not hold a connection slot.
const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;

/// Operation kinds in the top byte of a completion's user data.
pub mod op {
    pub const ACCEPT: u8 = 1;
    pub const RECV: u8 = 2;
    pub const SEND: u8 = 3;
    pub const WAKE: u8 = 4;
    pub const CANCEL: u8 = 5;
    pub const CLOSE: u8 = 6;
    /// A journal segment write; the slot field is the journal id.
    pub const JOURNAL_WRITE: u8 = 7;
    /// A journal fdatasync; the slot field is the journal id.
    pub const JOURNAL_SYNC: u8 = 8;
    /// A poll on an RDMA descriptor (slot 0: completion channel, 1: rdma_cm channel).
    pub const RDMA_READY: u8 = 9;
}

/// Listener indexes, carried in an accept's slot field.
const LISTENER_NATIVE: u32 = 0;
const LISTENER_STOMP: u32 = 1;
const LISTENER_MQTT: u32 = 2;
const LISTENER_SHM: u32 = 3;

/// `[op: 8][generation: 24][slot: 32]`.
pub fn user_data(op: u8, generation: u32, slot: u32) -> u64 {
    ((op as u64) << 56) | (((generation & 0xFF_FFFF) as u64) << 32) | slot as u64
}

fn split_user_data(ud: u64) -> (u8, u32, u32) {
    ((ud >> 56) as u8, ((ud >> 32) & 0xFF_FFFF) as u32, ud as u32)
}

/// What one shard shares with the others: how to wake it.
pub struct ShardCtl {
    pub sleeping: AtomicBool,
    pub eventfd: OwnedFd,
}

pub struct Shard {
    pub id: u16,
    pub shards: usize,
    pub cfg: Arc<Config>,
    pub metrics: Arc<Metrics>,
    pub ring: Uring,
    listener: OwnedFd,
    /// The STOMP gateway's listener, when it is on.
    stomp_listener: Option<OwnedFd>,
    /// The MQTT gateway's listener, when it is on.
    mqtt_listener: Option<OwnedFd>,
    /// The shared-memory transport's Unix socket (this shard's descriptor of it), when it is on.
    shm_listener: Option<OwnedFd>,
    /// Slots of this shard's shared-memory and RDMA connections, polled every pass.
    pub(crate) ring_slots: Vec<u32>,
    /// Where a frame other than PUBLISH is copied out of a ring before it is decoded.
    pub(crate) ring_scratch: Vec<u8>,
    /// The MQTT gateway's client ids, sessions and retained messages (home shard only).
    pub mqtt_registry: crate::gateway::mqtt::registry::Registry,
    ctls: Arc<Vec<ShardCtl>>,
    inbox: Vec<Receiver<Vec<Event>>>,
    outbox: Vec<Option<Sender<Vec<Event>>>>,
    /// Events staged per peer shard this pass; kept across passes while a mailbox is full.
    staged: Vec<Vec<Event>>,
    /// Events for this shard itself, applied within the pass.
    pub local: VecDeque<Event>,
    pub conns: Vec<Option<Conn>>,
    free_slots: Vec<u32>,
    generations: Vec<u32>,
    /// Connections with output to send or subscriptions to pump.
    pub dirty_conns: Vec<u32>,
    pub queues: FxHashMap<Arc<str>, Queue>,
    /// Dropped once used, so a start-up waiting for shards never waits on a dead one.
    ready: Option<std::sync::mpsc::Sender<u16>>,
    dirty_queues: Vec<Arc<str>>,
    /// Where received batches are copied, once: queues keep them there, journals write them
    /// from there, deliveries are encoded from there. Declared after `ring`, so the io_uring
    /// (and any write still reading this memory) goes first.
    pub arena: Arena,
    /// Bytes appended to this shard's journals and not yet written.
    pub journal_backlog: Rc<Backlog>,
    /// What the shards share for RDMA (see `ShardInit::rdma_shared`).
    #[cfg_attr(not(feature = "rdma"), allow(dead_code))]
    pub rdma_shared: Option<RdmaShares>,
    /// Journals by id (the id travels in completion user data).
    pub journals: Vec<Option<JournalEntry>>,
    /// Publish confirms waiting for their queue's durable position, per queue in order.
    pub held: FxHashMap<Arc<str>, VecDeque<Held>>,
    pub subscriptions: SubscriptionTable,
    /// Topic publishes whose confirm waits for bound queues: (slot, generation, request id).
    pub joins: FxHashMap<(u32, u32, u64), crate::handlers::Join>,
    /// Topic pattern → queue bindings (durable subscriptions), replicated on every shard.
    pub bindings: Vec<(Arc<str>, Arc<str>)>,
    pub topics: FxHashMap<Arc<str>, ()>,
    pub topic_seq: u64,
    wake_buf: Box<u64>,
    completions: Vec<Completion>,
    pub now_ms: u64,
    housekeeping_ms: u64,
    start: Instant,
    /// Where to listen for RDMA, and whom to tell how it went (shard 0, until started).
    rdma_init: Option<RdmaInit>,
    /// This shard's RDMA event channel, device objects and completion queue (and on shard 0
    /// the listener), once it serves RDMA. Declared after
    /// `conns`, so every connection's queue pair is destroyed before them.
    #[cfg_attr(not(feature = "rdma"), allow(dead_code))]
    pub(crate) rdma: Option<crate::rdma::RdmaState>,
}

/// Shard 0's RDMA assignment: the address, and the channel the result goes back on.
pub type RdmaInit = (
    std::net::SocketAddrV4,
    std::sync::mpsc::Sender<Result<std::net::SocketAddr, crate::rdma::Unavailable>>,
);

pub struct ShardInit {
    pub id: u16,
    pub cfg: Arc<Config>,
    pub metrics: Arc<Metrics>,
    pub listener: OwnedFd,
    pub stomp_listener: Option<OwnedFd>,
    pub mqtt_listener: Option<OwnedFd>,
    pub shm_listener: Option<OwnedFd>,
    pub ctls: Arc<Vec<ShardCtl>>,
    pub inbox: Vec<Receiver<Vec<Event>>>,
    pub outbox: Vec<Option<Sender<Vec<Event>>>>,
    /// Told once this shard has recovered its queues and is about to serve.
    pub ready: std::sync::mpsc::Sender<u16>,
    pub rdma: Option<RdmaInit>,
    /// What the shards share for RDMA (only when RDMA may be used): touched at start and when
    /// a shard first serves RDMA, never on the data path.
    pub rdma_shared: Option<RdmaShares>,
}

/// What the shards share for RDMA.
#[derive(Default)]
pub struct RdmaShared {
    /// Pins of every shard's message memory, each shard's left at its start.
    pub pins: Vec<crate::arena::ChunkPin>,
    /// The protection domain every shard's connections use, with those pins registered on it
    /// once; made with the first RDMA connection.
    #[cfg(feature = "rdma")]
    pub device: Option<Arc<rdmq_client::rdma::verbs::SharedPd>>,
}

pub type RdmaShares = Arc<std::sync::Mutex<RdmaShared>>;

impl Shard {
    pub fn new(init: ShardInit) -> std::io::Result<Shard> {
        let cfg = init.cfg;
        let ring = Uring::new(SQ_ENTRIES, cfg.recv_buffers, cfg.recv_buffer_bytes)?;
        let n = cfg.shards;
        let slots = cfg.connections_per_shard;
        Ok(Shard {
            id: init.id,
            shards: n,
            metrics: init.metrics.clone(),
            ring,
            listener: init.listener,
            stomp_listener: init.stomp_listener,
            mqtt_listener: init.mqtt_listener,
            shm_listener: init.shm_listener,
            ring_slots: Vec::new(),
            ring_scratch: Vec::new(),
            mqtt_registry: Default::default(),
            ctls: init.ctls,
            inbox: init.inbox,
            outbox: init.outbox,
            ready: Some(init.ready),
            staged: (0..n).map(|_| Vec::new()).collect(),
            local: VecDeque::new(),
            conns: (0..slots).map(|_| None).collect(),
            free_slots: (0..slots as u32).rev().collect(),
            generations: vec![0; slots],
            dirty_conns: Vec::new(),
            queues: FxHashMap::default(),
            dirty_queues: Vec::new(),
            arena: {
                let a = Arena::new(cfg.journal_ring_bytes)?.with_metrics(init.metrics.clone());
                if let Some(shared) = &init.rdma_shared {
                    shared.lock().expect("not poisoned").pins.extend(a.pins());
                }
                a
            },
            journal_backlog: Backlog::new(cfg.journal_ring_bytes as u64),
            rdma_shared: init.rdma_shared,
            journals: Vec::new(),
            held: FxHashMap::default(),
            subscriptions: SubscriptionTable::default(),
            joins: FxHashMap::default(),
            bindings: Vec::new(),
            topics: FxHashMap::default(),
            topic_seq: 0,
            wake_buf: Box::new(0),
            completions: Vec::with_capacity(COMPLETIONS_PER_PASS),
            now_ms: 0,
            housekeeping_ms: 0,
            start: Instant::now(),
            rdma_init: init.rdma,
            rdma: None,
            cfg,
        })
    }

    /// Runs until termination is requested. Returns the first fatal ring error.
    pub fn run(mut self) -> std::io::Result<()> {
        // Durable queues first: nothing is accepted or applied until they are back.
        self.recover_queues();
        if self.cfg.mqtt_addr.is_some() && self.is_mqtt_home() {
            self.mqtt_registry_ready();
        }
        if let Some((addr, tx)) = self.rdma_init.take() {
            let _ = tx.send(self.rdma_start(addr));
        }
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(self.id);
        }
        self.arm_accept(LISTENER_NATIVE);
        if self.stomp_listener.is_some() {
            self.arm_accept(LISTENER_STOMP);
        }
        if self.mqtt_listener.is_some() {
            self.arm_accept(LISTENER_MQTT);
        }
        if self.shm_listener.is_some() {
            self.arm_accept(LISTENER_SHM);
        }
        self.arm_wake();
        self.ring.submit()?;
        let spin = Duration::from_micros(self.cfg.idle_spin_us);
        let mut idle_since: Option<Instant> = None;
        while !sys::terminating() {
            let work = self.pass()?;
            if work > 0 {
                idle_since = None;
                continue;
            }
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() < spin {
                std::thread::yield_now();
                continue;
            }
            self.sleep()?;
            idle_since = None;
        }
        self.drain_journals()
    }

    /// On shutdown, lets every journal finish the writes and syncs it has queued, so what was
    /// accepted reaches the disk; bounded by `SHUTDOWN_DRAIN`.
    fn drain_journals(&mut self) -> std::io::Result<()> {
        let deadline = Instant::now() + SHUTDOWN_DRAIN;
        while Instant::now() < deadline
            && self.journals.iter().flatten().any(|e| e.journal.borrow().has_io())
        {
            if self.pass()? == 0 {
                self.ring.submit_and_wait(Duration::from_millis(10))?;
            }
        }
        Ok(())
    }

    /// One pass of the loop; returns the amount of work done.
    fn pass(&mut self) -> std::io::Result<usize> {
        self.now_ms = self.start.elapsed().as_millis() as u64;
        if self.now_ms >= self.housekeeping_ms + HOUSEKEEPING_TICK.as_millis() as u64 {
            self.housekeeping_ms = self.now_ms;
            self.housekeeping();
        }
        let mut work = self.drain_mailboxes();
        self.completions.clear();
        self.ring.reap(&mut self.completions, COMPLETIONS_PER_PASS);
        let completions = std::mem::take(&mut self.completions);
        work += completions.len();
        for c in &completions {
            self.on_completion(*c);
        }
        self.completions = completions;
        work += self.poll_rdma();
        work += self.poll_rings();
        work += self.apply_local();
        self.dispatch_queues();
        work += self.apply_local();
        // Journals before connections: acknowledgements reach the page cache before any reply
        // of this pass is sent, and confirms made durable by this pass's completions go out now.
        work += self.drive_journals();
        self.flush_conns();
        self.flush_mailboxes();
        // Events held back by a full mailbox are work: retry next pass instead of sleeping.
        work += self.staged.iter().map(Vec::len).sum::<usize>();
        self.ring.submit()?;
        Ok(work)
    }

    fn sleep(&mut self) -> std::io::Result<()> {
        self.set_ring_waiting(true);
        let ctl = &self.ctls[self.id as usize];
        ctl.sleeping.store(true, Ordering::SeqCst);
        // Pairs with the fence in `flush_mailboxes`: either the peer sees `sleeping` and signals,
        // or this look sees its push (Dekker's handshake; the mailbox's own orderings are only
        // acquire/release, which would let both sides miss each other).
        std::sync::atomic::fence(Ordering::SeqCst);
        // A peer that pushed before seeing `sleeping` did not signal: look once more.
        // RDMA: arm the completion queue first, then look (a completion before the arming
        // raises no event).
        let pending = self.inbox.iter().any(|r| !r.is_empty())
            || self.ring.has_completions()
            || self.rings_pending()
            || self.rdma_before_sleep();
        if !pending {
            self.ring.submit_and_wait(HOUSEKEEPING_TICK)?;
        }
        self.ctls[self.id as usize].sleeping.store(false, Ordering::SeqCst);
        self.set_ring_waiting(false);
        self.now_ms = self.start.elapsed().as_millis() as u64;
        self.housekeeping();
        Ok(())
    }

    /// Work that only needs doing now and then: expiring messages nobody consumes, and giving
    /// up on closing connections whose peer stopped reading their last output.
    fn housekeeping(&mut self) {
        self.retire_segments();
        for q in self.queues.values_mut() {
            let before = q.stats.expired;
            q.expire(self.now_ms);
            metrics::add(&self.metrics.expired, q.stats.expired - before);
        }
        let now = self.now_ms;
        let silent: Vec<u32> = (0..self.conns.len() as u32)
            .filter(|&s| {
                self.conns[s as usize].as_ref().is_some_and(|c| {
                    !c.handshaken && !c.closing && now >= c.accepted_ms + HANDSHAKE_TIMEOUT_MS
                })
            })
            .collect();
        for slot in silent {
            let gateway = self.conns[slot as usize]
                .as_ref()
                .is_some_and(|c| c.stomp.is_some() || c.mqtt.is_some());
            let msg = if gateway {
                "no CONNECT within 10 s of connecting"
            } else {
                "no HELLO within 10 s of connecting (is this an rdmq client?)"
            };
            crate::handlers::fatal(self, slot, rdmq_client::error_code::PROTOCOL_ERROR, msg);
        }
        self.stomp_heart_beats();
        self.mqtt_timers();
        for &slot in &self.ring_slots {
            let Some(conn) = self.conns[slot as usize].as_mut() else { continue };
            if conn.closing && conn.flush_on_close && now >= conn.closing_since_ms + CLOSE_LINGER_MS
            {
                // A client that stopped reading its ring never drains the final ERROR.
                conn.flush_on_close = false;
                self.dirty_conns.push(slot);
            }
        }
        for conn in self.conns.iter_mut().flatten() {
            if conn.closing && conn.send_inflight && now >= conn.closing_since_ms + CLOSE_LINGER_MS
            {
                // The in-flight send then fails, its completion frees the slot.
                sys::shutdown(conn.fd);
                conn.flush_on_close = false;
            }
        }
    }

    pub fn submit_journal_write(&mut self, w: WriteReq, journal: u32) {
        let ud = user_data(op::JOURNAL_WRITE, w.tag, journal);
        // SAFETY: the journal keeps the iovecs and the memory they describe (handles into it)
        // until `write_done`, on this write's completion; a journal with writes in flight is
        // never dropped (`drive_journals`), and the shard drops its io_uring first.
        unsafe { self.ring.writev_at(w.fd, w.iov, w.iov_len, w.offset, ud) };
    }

    pub fn submit_journal_sync(&mut self, fd: RawFd, journal: u32) {
        self.ring.fdatasync(fd, user_data(op::JOURNAL_SYNC, 0, journal));
    }

    /// This shard's wake-up eventfd (peers and shm clients write it while the shard sleeps).
    pub fn wake_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.ctls[self.id as usize].eventfd.as_fd()
    }

    fn arm_wake(&mut self) {
        let fd = self.ctls[self.id as usize].eventfd.as_raw_fd();
        let dst: *mut u64 = &mut *self.wake_buf;
        // SAFETY: `wake_buf` is boxed, owned by the shard and outlives the ring's operations
        // (the ring is dropped with the shard, which cancels them).
        unsafe { self.ring.read_eventfd(fd, dst, user_data(op::WAKE, 0, 0)) };
    }

    fn drain_mailboxes(&mut self) -> usize {
        let mut work = 0;
        for peer in 0..self.inbox.len() {
            for _ in 0..MAILBOX_SLOTS_PER_PASS {
                let Some(batch) = self.inbox[peer].pop() else {
                    break;
                };
                work += batch.len();
                for ev in batch {
                    self.apply(ev);
                }
            }
        }
        work
    }

    fn flush_mailboxes(&mut self) {
        for peer in 0..self.shards {
            if self.staged[peer].is_empty() {
                continue;
            }
            let tx = self.outbox[peer].as_mut().expect("no mailbox to self");
            let batch = std::mem::take(&mut self.staged[peer]);
            match tx.push(batch) {
                Ok(()) => {
                    std::sync::atomic::fence(Ordering::SeqCst);
                    if self.ctls[peer].sleeping.load(Ordering::SeqCst) {
                        rdmq_client::shm::signal(self.ctls[peer].eventfd.as_fd());
                    }
                }
                Err(batch) => {
                    // Full: keep it for the next pass. Bounded by the clients' windows
                    // (unconfirmed publishes, consumer credit), never by blocking this shard.
                    metrics::add(&self.metrics.mailbox_full, 1);
                    self.staged[peer] = batch;
                }
            }
        }
    }

    /// Microseconds on this shard's clock.
    pub fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// Sends `ev` to shard `target` (applied later this pass if it is this shard).
    pub fn route(&mut self, target: usize, ev: Event) {
        if target == self.id as usize {
            self.local.push_back(ev);
        } else {
            self.staged[target].push(ev);
        }
    }

    /// Sends a copy of an event to every shard, this one included.
    pub fn broadcast(&mut self, make: impl Fn() -> Event) {
        for s in 0..self.shards {
            self.route(s, make());
        }
    }

    /// Broadcasts an event and answers OK once every shard has applied it: a client that hears
    /// OK for a subscription can publish on another connection (so another shard) and be sure
    /// that shard already matches it.
    pub fn broadcast_then_ok(&mut self, reply: ReplyTo, make: impl Fn() -> Event) {
        self.broadcast(make);
        let left = Arc::new(AtomicUsize::new(self.shards));
        self.broadcast(|| Event::Fence { reply, left: left.clone() });
    }

    pub fn reply(&mut self, to: ReplyTo, kind: ReplyKind) {
        self.route(to.shard as usize, Event::Reply { to, kind });
    }

    fn apply_local(&mut self) -> usize {
        let mut n = 0;
        while let Some(ev) = self.local.pop_front() {
            self.apply(ev);
            n += 1;
        }
        n
    }

    pub fn queue_owner(&self, name: &str) -> usize {
        owner_shard(name, self.shards)
    }

    pub fn mark_queue_dirty(&mut self, name: &Arc<str>) {
        self.dirty_queues.push(name.clone());
    }

    fn dispatch_queues(&mut self) {
        if self.dirty_queues.is_empty() {
            return;
        }
        let mut dirty = std::mem::take(&mut self.dirty_queues);
        dirty.sort_unstable();
        dirty.dedup();
        let mut out: Vec<Dispatch> = Vec::new();
        for name in &dirty {
            if let Some(q) = self.queues.get_mut(name) {
                let expired = q.stats.expired;
                q.dispatch(self.now_ms, &mut out);
                metrics::add(&self.metrics.expired, q.stats.expired - expired);
            }
        }
        for d in out {
            self.route(d.consumer.shard as usize, Event::Deliver { key: d.consumer, msgs: d.msgs });
        }
        dirty.clear();
        self.dirty_queues = dirty;
    }

    fn on_completion(&mut self, c: Completion) {
        let (kind, generation, slot) = split_user_data(c.user_data);
        match kind {
            op::ACCEPT => self.on_accept(slot, c),
            op::RECV => self.on_recv(slot, generation, c),
            op::SEND => self.on_send(slot, generation, c),
            op::WAKE => self.arm_wake(),
            op::JOURNAL_WRITE => self.on_journal_completion(Some(generation), slot, c.result),
            op::JOURNAL_SYNC => self.on_journal_completion(None, slot, c.result),
            op::RDMA_READY => self.on_rdma_ready(slot),
            op::CANCEL | op::CLOSE => {}
            other => panic!("completion with unknown op {other}"),
        }
    }

    /// Arms a multishot accept on a listener; its index travels in the slot field.
    fn arm_accept(&mut self, which: u32) {
        let fd = match which {
            LISTENER_STOMP => self.stomp_listener.as_ref().expect("stomp listener").as_raw_fd(),
            LISTENER_MQTT => self.mqtt_listener.as_ref().expect("mqtt listener").as_raw_fd(),
            LISTENER_SHM => self.shm_listener.as_ref().expect("shm listener").as_raw_fd(),
            _ => self.listener.as_raw_fd(),
        };
        self.ring.accept_multi(fd, user_data(op::ACCEPT, 0, which));
    }

    fn on_accept(&mut self, which: u32, c: Completion) {
        if !c.more() {
            self.arm_accept(which);
        }
        if c.result < 0 {
            eprintln!("rdmq: shard {}: accept failed: {}", self.id, errno(c.result));
            return;
        }
        let fd = c.result as RawFd;
        let Some(slot) = self.free_slots.pop() else {
            eprintln!("rdmq: shard {}: connection table full, refusing", self.id);
            self.ring.close(fd, user_data(op::CLOSE, 0, 0));
            return;
        };
        let _ = sys::set_nodelay(fd);
        let generation = self.next_generation(slot);
        let mut conn = Conn::new(fd, generation);
        conn.accepted_ms = self.now_ms;
        if which == LISTENER_STOMP {
            conn.stomp = Some(Box::new(crate::gateway::stomp::session::Session::new(self.now_ms)));
        }
        if which == LISTENER_MQTT {
            conn.mqtt = Some(Box::new(crate::gateway::mqtt::session::Session::new(self.now_ms)));
        }
        if which == LISTENER_SHM {
            // SAFETY: `fd` was just accepted and stays open until this function closes it or
            // hands it to the connection.
            let sock = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            match self.shm_handshake(sock) {
                Ok(shm) => {
                    conn.ring = Some(Box::new(crate::conn::RingConn::Shm(shm)));
                    self.ring_slots.push(slot);
                }
                Err(why) => {
                    eprintln!("rdmq: shard {}: shm connection refused: {why}", self.id);
                    rdmq_client::shm::send_refusal(sock, &why);
                    self.ring.close(fd, user_data(op::CLOSE, 0, 0));
                    self.free_slot(slot);
                    return;
                }
            }
        }
        self.conns[slot as usize] = Some(conn);
        self.ring.recv_multi(fd, user_data(op::RECV, generation, slot));
        metrics::add(&self.metrics.connections_accepted, 1);
    }

    /// A free connection slot, if any.
    #[cfg_attr(not(feature = "rdma"), allow(dead_code))]
    pub(crate) fn free_slots_pop(&mut self) -> Option<u32> {
        self.free_slots.pop()
    }

    /// Gives back a slot taken with `free_slots_pop` and never used.
    pub(crate) fn free_slot(&mut self, slot: u32) {
        self.free_slots.push(slot);
    }

    /// Bumps and returns the generation of a slot about to get a new connection.
    pub(crate) fn next_generation(&mut self, slot: u32) -> u32 {
        let generation = self.generations[slot as usize].wrapping_add(1) & 0xFF_FFFF;
        self.generations[slot as usize] = generation;
        generation
    }

    /// The connection in `slot` if it is still the one with `generation`.
    pub fn conn(&mut self, slot: u32, generation: u32) -> Option<&mut Conn> {
        self.conns.get_mut(slot as usize)?.as_mut().filter(|c| c.generation == generation)
    }

    fn on_recv(&mut self, slot: u32, generation: u32, c: Completion) {
        let bid = c.buffer();
        let live = self.conn(slot, generation).is_some();
        if !live {
            if let Some(bid) = bid {
                self.ring.recycle(bid);
            }
            return;
        }
        if c.result > 0 {
            let bid = bid.expect("a receive with data names its buffer");
            self.on_bytes(slot, generation, bid, c.result as usize);
            self.ring.recycle(bid);
        }
        let conn = self.conn(slot, generation).expect("checked above");
        if !c.more() {
            conn.recv_armed = false;
        }
        if c.result == 0 {
            self.close_conn(slot); // the peer closed
        } else if c.result < 0 && c.result != -libc::ENOBUFS && c.result != -libc::ECANCELED {
            self.close_conn(slot); // receive failed
        }
        let conn = self.conn(slot, generation).expect("closing keeps the slot");
        if !conn.recv_armed && !conn.closing && !conn.paused {
            conn.recv_armed = true;
            let fd = conn.fd;
            self.ring.recv_multi(fd, user_data(op::RECV, generation, slot));
        }
        self.maybe_release(slot);
    }

    /// Stops receiving for a paused connection (its unparsed input is already large).
    pub fn stop_recv(&mut self, slot: u32) {
        let Some(conn) = self.conns[slot as usize].as_mut() else { return };
        if conn.recv_armed && !conn.closing {
            let target = user_data(op::RECV, conn.generation, slot);
            self.ring.cancel(target, user_data(op::CANCEL, conn.generation, slot));
        }
    }

    /// Receives again for a connection whose receive was stopped.
    pub fn resume_recv(&mut self, slot: u32) {
        let Some(conn) = self.conns[slot as usize].as_mut() else { return };
        if !conn.recv_armed && !conn.closing && !conn.paused {
            conn.recv_armed = true;
            let (fd, generation) = (conn.fd, conn.generation);
            self.ring.recv_multi(fd, user_data(op::RECV, generation, slot));
        }
    }

    fn on_send(&mut self, slot: u32, generation: u32, c: Completion) {
        let Some(conn) = self.conn(slot, generation) else {
            return;
        };
        conn.send_inflight = false;
        if c.result < 0 {
            conn.sending.clear();
            conn.send_offset = 0;
            self.close_conn(slot); // send failed
            self.maybe_release(slot);
            return;
        }
        conn.send_offset += c.result as usize;
        if conn.send_offset >= conn.sending.len() {
            conn.sending.clear();
            conn.send_offset = 0;
        }
        self.dirty_conns.push(slot);
        self.maybe_release(slot);
    }

    /// Starts sends for connections with output, pumping topic buffers first.
    fn flush_conns(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty_conns);
        dirty.sort_unstable();
        dirty.dedup();
        for &slot in &dirty {
            self.pump_subscriptions(slot);
            let Some(conn) = self.conns[slot as usize].as_mut() else {
                continue;
            };
            if conn.ring.is_some() {
                self.flush_ring(slot);
                continue;
            }
            if conn.send_inflight {
                continue;
            }
            if conn.sending.is_empty() {
                if conn.out.is_empty() {
                    if conn.closing {
                        self.maybe_release(slot);
                    }
                    continue;
                }
                std::mem::swap(&mut conn.sending, &mut conn.out);
                conn.send_offset = 0;
            }
            conn.send_inflight = true;
            if let Some(session) = conn.stomp.as_mut() {
                session.last_out_ms = self.now_ms;
            }
            let (fd, generation) = (conn.fd, conn.generation);
            let buf = &conn.sending[conn.send_offset..];
            // SAFETY: `sending` is leased to this send: it is neither touched nor dropped until
            // its completion clears `send_inflight` (`maybe_release` waits for that).
            unsafe { self.ring.send(fd, buf, user_data(op::SEND, generation, slot)) };
        }
        dirty.clear();
        self.dirty_conns = dirty;
    }

    /// Begins closing a connection: tells every shard (its consumers' unacked messages are
    /// requeued, its subscriptions removed), cancels its receive and, once nothing is in flight
    /// and queued output is written, closes the socket.
    pub fn close_conn(&mut self, slot: u32) {
        self.close_conn_with(slot, false)
    }

    /// As [`Shard::close_conn`]; with `flush`, queued output (an error frame) is written first.
    pub fn close_conn_with(&mut self, slot: u32, flush: bool) {
        let id = self.id;
        let Some(conn) = self.conns[slot as usize].as_mut() else {
            return;
        };
        if conn.closing {
            return;
        }
        let mqtt = conn.mqtt.is_some();
        if mqtt {
            self.mqtt_on_close(slot);
        }
        let Some(conn) = self.conns[slot as usize].as_mut() else {
            return;
        };
        conn.closing = true;
        conn.closing_since_ms = self.now_ms;
        conn.flush_on_close = flush;
        if !flush {
            conn.out.clear();
            conn.held.clear();
            conn.held_bytes = 0;
        }
        let generation = conn.generation;
        if conn.recv_armed {
            let target = user_data(op::RECV, generation, slot);
            self.ring.cancel(target, user_data(op::CANCEL, generation, slot));
        }
        self.broadcast(|| Event::ConnClosed { shard: id, slot, generation });
        if mqtt {
            self.mqtt_after_close(slot);
        }
        self.dirty_conns.push(slot);
        metrics::add(&self.metrics.connections_closed, 1);
    }

    /// Frees the slot of a closing connection once no operation references its memory.
    pub(crate) fn maybe_release(&mut self, slot: u32) {
        let Some(conn) = self.conns[slot as usize].as_ref() else {
            return;
        };
        // An error frame is written before the close; a vanished peer's output is dropped.
        let unsent = conn.ring.as_ref().is_some_and(|r| r.has_unsent());
        let flushed = !conn.flush_on_close
            || (conn.out.is_empty() && conn.sending.is_empty() && conn.held.is_empty() && !unsent);
        if !conn.closing || conn.recv_armed || conn.send_inflight || !flushed {
            return;
        }
        let conn = self.conns[slot as usize].take().expect("checked");
        if let Some(ring) = conn.ring {
            self.ring_slots.retain(|&s| s != slot);
            self.release_ring(*ring);
        }
        if conn.fd >= 0 {
            self.ring.close(conn.fd, user_data(op::CLOSE, 0, 0));
        }
        self.free_slots.push(slot);
    }

    /// Applies one event to this shard's state.
    fn apply(&mut self, ev: Event) {
        crate::handlers::apply(self, ev);
    }

    /// Writes buffered topic messages into a connection's output while it is below the
    /// high-water mark, so a slow reader's backlog stays in its bounded subscription buffer.
    fn pump_subscriptions(&mut self, slot: u32) {
        let high_water = self.cfg.conn_output_high_water;
        let Some(conn) = self.conns[slot as usize].as_mut() else {
            return;
        };
        let (delivered, copied, flushed) = conn.pump(high_water);
        metrics::add(&self.metrics.delivered, delivered as u64);
        metrics::add(&self.metrics.copy_deliver_bytes, copied as u64);
        metrics::add(&self.metrics.ring_bytes_out, flushed as u64);
        if !conn.deferred_settles.is_empty() && conn.out.len() < high_water {
            for (key, queue, tags) in std::mem::take(&mut conn.deferred_settles) {
                self.settle_acks(key, queue, tags);
            }
        }
    }

    /// Acknowledges deliveries a gateway settles on its own (STOMP `ack:auto`, MQTT QoS 0)
    /// once they are written, but not while the connection's output is above its high-water
    /// mark: held back, they keep the consumer's credit used, so a client that stops reading
    /// stalls its consumer instead of growing the server's buffers.
    pub fn settle_when_written(&mut self, key: SubKey, queue: Arc<str>, tags: Vec<u64>) {
        let high_water = self.cfg.conn_output_high_water;
        let Some(conn) = self.conns[key.slot as usize].as_mut() else { return };
        if conn.out.len() >= high_water {
            conn.deferred_settles.push((key, queue, tags));
        } else {
            self.settle_acks(key, queue, tags);
        }
    }

    fn settle_acks(&mut self, key: SubKey, queue: Arc<str>, tags: Vec<u64>) {
        let owner = self.queue_owner(&queue);
        let op = crate::broker::queue::Settle::Ack;
        let ev = Event::Settle { reply: None, queue, key, op, multiple: false, tags };
        self.route(owner, ev);
    }

    /// Queues topic messages for one subscription, applying the slow-subscriber policy.
    pub fn buffer_topic(
        &mut self,
        key: SubKey,
        topic: &Arc<str>,
        batch: &Bytes,
        spans: &[(u32, u32)],
    ) {
        let max = self.cfg.subscriber_buffer_max;
        let policy = self.cfg.slow_subscriber_policy;
        // A closing connection takes no more messages: deliveries still in flight from other
        // shards (sent before they learned of the close) would otherwise grow its buffer and
        // count it as slow once more.
        let Some(conn) = self.conn(key.slot, key.generation).filter(|c| !c.closing) else {
            return;
        };
        let gateway = conn.stomp.is_some() || conn.mqtt.is_some();
        let Some(sub) = conn.subs.get_mut(&key.id) else {
            return;
        };
        for &(offset, len) in spans {
            sub.pending.push_back(MsgRef { batch: batch.clone(), offset, len });
            if gateway {
                sub.topics.push_back(topic.clone());
            }
        }
        let excess = sub.pending.len().saturating_sub(max);
        if excess > 0 {
            match policy {
                crate::config::SlowSubscriberPolicy::DropOldest => {
                    sub.pending.drain(..excess);
                    sub.topics.drain(..excess.min(sub.topics.len()));
                    sub.dropped += excess as u64;
                    metrics::add(&self.metrics.topic_dropped, excess as u64);
                }
                crate::config::SlowSubscriberPolicy::Disconnect => {
                    metrics::add(&self.metrics.slow_disconnects, 1);
                    let msg = format!(
                        "subscription {} fell {} messages behind; disconnecting (slow subscriber)",
                        key.id, max
                    );
                    crate::handlers::fatal(
                        self,
                        key.slot,
                        rdmq_client::error_code::SLOW_CONSUMER,
                        &msg,
                    );
                    return;
                }
            }
        }
        self.dirty_conns.push(key.slot);
    }
}

fn errno(res: i32) -> std::io::Error {
    std::io::Error::from_raw_os_error(-res)
}
