//! The RDMA transport (`rdma://host:port`): the native frame stream over RC queue pairs, with
//! the same two byte rings as the shared-memory transport (`crate::shm`), but each ring lives in
//! its *receiver's* registered memory and the sender fills it with one-sided writes.
//!
//! ```text
//!   client                                          server
//!   region: [ctrl][rx ring ×2][tx ring ×2]          region: [ctrl][rx ring ×2][tx ring ×2]
//!   tx ring (staging) ── RDMA WRITE WITH IMM ──►    rx ring (registered, remote-writable)
//!   rx ring           ◄── RDMA WRITE WITH IMM ──    tx ring (staging)
//!              credits: SEND WITH IMM (the receiver's head), both ways
//! ```
//!
//! A sender copies bytes into its staging ring (`Ring::write`, exactly as over shared memory),
//! then posts RDMA WRITEs of the new span to the same offsets of the peer's receive ring (split
//! in two at the wrap point); the last write carries the new tail (low 32 bits) as immediate
//! data. The receiver's completion queue reports it; the receiver stores the tail into its ring
//! control block, and from there reading is the shared-memory code unchanged: the server parses
//! frames in place (the receive ring is mapped twice, so a wrapped frame is contiguous). Once a
//! receiver has consumed an eighth of the ring it sends its head back as the
//! immediate of a zero-length SEND; that is the sender's credit, stored as the staging ring's
//! head, so `Ring::free` is the space the sender may write: it never overruns the peer.
//!
//! Connection set-up uses rdma_cm; each side's ring address, rkey and size travel in the
//! private data of the connect request and of the accept ([`Endpoint`]).
//!
//! Both ends use [`Link`]: the server's shard loop with its shared completion queue, a client
//! (and the bench tool's raw baseline) through the blocking [`RdmaStream`].

pub mod verbs;

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, SocketAddrV4, ToSocketAddrs};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::shm::{Region, RING_BYTES_MAX, RING_BYTES_MIN};
use verbs::{CmId, Cq, EventChannel, EventKind, Mr, Pd, QpCaps, RingOf, SharedPd, Wc};

/// Send work requests per queue pair: writes in flight plus credit messages. A sender with
/// none free waits for completions (counted in `Link::sq_free`).
pub const SEND_WR: u32 = 128;
/// Receives posted per queue pair, one per WRITE or SEND WITH IMMEDIATE the peer may have in
/// flight; reposted as each completes. A peer that outruns them is retried by the NIC (RNR
/// retry is unlimited), never failed.
pub const RECV_WR: u32 = 512;
/// Completion queue entries of a client connection: all its send and receive requests.
pub const CQ_ENTRIES: i32 = (SEND_WR + RECV_WR) as i32;
/// Work request kinds, in the low byte of a work request id (the rest is the link's token).
const KIND_RECV: u64 = 1;
const KIND_WRITE: u64 = 2;
const KIND_CREDIT: u64 = 3;
/// Private data: magic, ring bytes, ring address, rkey.
const MAGIC: [u8; 4] = *b"RDQ1";
const PRIVATE_LEN: usize = 20;
/// Prefix of a rejection's private data, followed by the reason (what fits in 56 bytes).
const REJECTED: [u8; 4] = *b"RDQ!";
/// rdma_cm address and route resolution timeout.
const RESOLVE_TIMEOUT_MS: i32 = 5_000;
/// A blocking connect waits this long for each set-up step.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// A busy-polling stream looks for rdma_cm events (a disconnect) this often, in empty polls.
const BUSY_EVENTS_EVERY: u32 = 1024;

/// A peer's receive ring, as announced in its private data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub ring_bytes: usize,
    pub addr: u64,
    pub rkey: u32,
}

impl Endpoint {
    pub fn encode(&self) -> Vec<u8> {
        let mut p = MAGIC.to_vec();
        p.extend_from_slice(&(self.ring_bytes as u32).to_le_bytes());
        p.extend_from_slice(&self.addr.to_le_bytes());
        p.extend_from_slice(&self.rkey.to_le_bytes());
        p
    }

    pub fn decode(p: &[u8]) -> Result<Endpoint, String> {
        if p.len() < PRIVATE_LEN || p[..4] != MAGIC {
            return Err(format!("not an rdmq RDMA peer ({} bytes of private data)", p.len()));
        }
        let ring_bytes = u32::from_le_bytes(p[4..8].try_into().expect("4 bytes")) as usize;
        if !ring_bytes.is_power_of_two() || !(RING_BYTES_MIN..=RING_BYTES_MAX).contains(&ring_bytes)
        {
            return Err(format!("peer announced a ring of {ring_bytes} bytes"));
        }
        Ok(Endpoint {
            ring_bytes,
            addr: u64::from_le_bytes(p[8..16].try_into().expect("8 bytes")),
            rkey: u32::from_le_bytes(p[16..20].try_into().expect("4 bytes")),
        })
    }
}

/// Private data of a rejection carrying `why` (cut to fit).
pub fn rejection(why: &str) -> Vec<u8> {
    let mut p = REJECTED.to_vec();
    p.extend(why.bytes().take(56 - REJECTED.len()));
    p
}

/// The reason in a rejection's private data (the transport pads it with NUL bytes).
fn rejection_reason(p: &[u8]) -> Option<String> {
    let why = p.strip_prefix(&REJECTED)?;
    let end = why.iter().position(|&b| b == 0).unwrap_or(why.len());
    Some(String::from_utf8_lossy(&why[..end]).into_owned())
}

/// A 64-bit position from its low 32 bits, given a recent position no more than 2^31 behind.
fn widen(recent: u64, low: u32) -> u64 {
    recent.wrapping_add(low.wrapping_sub(recent as u32) as u64)
}

/// One end of an RDMA connection: its queue pair, its region (receive ring registered for the
/// peer's writes, staging ring for its own), and the positions that tie them together.
pub struct Link {
    // Drop order matters: the queue pair (in `id`) goes before the registrations, and they go
    // before the memory they cover.
    pub id: CmId,
    rx_mr: Mr,
    tx_mr: Mr,
    pub region: Rc<Region>,
    /// Work request ids are `token << 8 | kind`.
    token: u64,
    peer: Option<Endpoint>,
    /// Staging bytes posted to the peer so far.
    posted: u64,
    /// Receive-ring head last reported to the peer.
    credited: u64,
    /// Send work requests not in flight.
    sq_free: u32,
    /// What `push` builds, kept so a push allocates nothing once they have grown: scatter
    /// entries and work requests, and the writes (remote address, entries, staging end).
    scratch: verbs::GatherScratch,
    writes: Vec<(u64, std::ops::Range<usize>, u64)>,
    /// Other registered memory staged spans may be written from (see [`Link::gather`]), and
    /// the shortest span worth it. Last: the shared PD outlives the queue pair and rings.
    sources: Option<Arc<SharedPd>>,
    gather_min: usize,
    /// Staged spans to be written from other memory instead of the staging ring, in order.
    gathers: VecDeque<Gather>,
    /// Staging position each posted write ends at, oldest first; and the end of the latest
    /// completed one (writes complete in order on a queue pair).
    write_ends: VecDeque<u64>,
    landed: u64,
    /// Bytes named by [`Link::gather`] so far, for the owner's counters to take.
    pub gathered: u64,
    /// Why the link failed (a work completion with an error status), if it did.
    pub broken: Option<String>,
}

impl Link {
    /// A link on `id` (address and route resolved, or a connect request), with rings of
    /// `ring_bytes`: registers them, creates the queue pair and posts its receives.
    pub fn new(mut id: CmId, pd: &Pd, cq: &Cq, ring_bytes: usize, token: u64) -> io::Result<Link> {
        let region = Rc::new(Region::create(ring_bytes, true)?);
        let rx_mr = Mr::register(pd, &region, RingOf::Receive)?;
        let tx_mr = Mr::register(pd, &region, RingOf::Staging)?;
        id.set_token(token);
        id.create_qp(pd, cq, QpCaps { send_wr: SEND_WR, recv_wr: RECV_WR })?;
        for _ in 0..RECV_WR {
            id.post_recv(wr_id(token, KIND_RECV))?;
        }
        Ok(Link {
            id,
            rx_mr,
            tx_mr,
            region,
            token,
            peer: None,
            posted: 0,
            credited: 0,
            sq_free: SEND_WR,
            sources: None,
            scratch: Default::default(),
            writes: Vec::new(),
            gather_min: 0,
            gathers: VecDeque::new(),
            write_ends: VecDeque::new(),
            landed: 0,
            gathered: 0,
            broken: None,
        })
    }

    /// What this end announces: its receive ring.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            ring_bytes: self.region.ring_bytes(),
            addr: self.rx_mr.addr(),
            rkey: self.rx_mr.rkey(),
        }
    }

    /// Records the peer's receive ring; it must be the size of ours (positions are mirrored).
    pub fn set_peer(&mut self, peer: Endpoint) -> Result<(), String> {
        if peer.ring_bytes != self.region.ring_bytes() {
            return Err(format!(
                "ring sizes differ: peer {} bytes, ours {}",
                peer.ring_bytes,
                self.region.ring_bytes()
            ));
        }
        self.peer = Some(peer);
        Ok(())
    }

    /// The token a work request id carries, and the kind of request.
    pub fn split_wr_id(wr_id: u64) -> (u64, u64) {
        (wr_id >> 8, wr_id & 0xFF)
    }

    /// Applies one completion of this link's queue pair.
    pub fn on_completion(&mut self, wc: &Wc) {
        let (_, kind) = Self::split_wr_id(wc.wr_id);
        if !wc.ok {
            self.broken.get_or_insert_with(|| format!("work completion status {}", wc.status));
            return;
        }
        match kind {
            KIND_RECV => {
                let ctrl = self.region.ctrl();
                let imm = wc.imm.unwrap_or(0);
                if wc.write_imm {
                    // The peer's data up to this tail is in our receive ring.
                    let tail = &ctrl.c2s_tail.0;
                    tail.store(widen(tail.load(Ordering::Relaxed), imm), Ordering::Release);
                } else {
                    // A credit: the peer consumed our staged bytes up to this head.
                    let head = &ctrl.s2c_head.0;
                    head.store(widen(head.load(Ordering::Relaxed), imm), Ordering::Release);
                }
                if let Err(e) = self.id.post_recv(self.wr(KIND_RECV)) {
                    self.broken.get_or_insert_with(|| e.to_string());
                }
            }
            KIND_WRITE => {
                self.sq_free += 1;
                if let Some(end) = self.write_ends.pop_front() {
                    self.landed = end;
                }
            }
            _ => self.sq_free += 1,
        }
    }

    /// Registered memory that [`Link::gather`] may name (by index), for spans of at least
    /// `min_len` bytes: the sources of the shared PD this link's queue pair was made on.
    pub fn set_sources(&mut self, sources: Arc<SharedPd>, min_len: usize) {
        self.sources = Some(sources);
        self.gather_min = min_len;
    }

    fn source(&self, i: u16) -> &Mr {
        &self.sources.as_ref().expect("gathers need sources").sources()[i as usize]
    }

    /// The source registration covering `[addr, addr + len)`, if any and the span is long
    /// enough to be worth a scatter entry.
    pub fn source_of(&self, addr: u64, len: usize) -> Option<u16> {
        if len < self.gather_min {
            return None;
        }
        let sources = self.sources.as_ref()?.sources();
        sources.iter().position(|m| m.covers(addr, len)).map(|i| i as u16)
    }

    /// Says that the staged span `[pos, pos + len)` (staged after every earlier gather, not yet
    /// posted) is to be written from `[addr, addr + len)` of source `src` instead of the staging
    /// ring, whose bytes there are then never read. The caller keeps that memory unchanged
    /// until [`Link::landed`] passes `pos + len`.
    pub fn gather(&mut self, pos: u64, len: u32, src: u16, addr: u64) {
        assert!(
            pos >= self.posted && self.gathers.back().is_none_or(|g| g.pos + g.len as u64 <= pos)
        );
        assert!(self.source(src).covers(addr, len as usize), "outside the source");
        self.gathers.push_back(Gather { pos, len, src, addr });
        self.gathered += len as u64;
    }

    /// Staging position up to which every posted write has completed (landed at the peer).
    pub fn landed(&self) -> u64 {
        self.landed
    }

    /// Posts the staged bytes not yet sent: one WRITE per contiguous stretch of the peer's
    /// ring, gathering staging-ring spans and the spans [`Link::gather`] named, at most
    /// as many scatter entries each as the queue pair takes, as many as there are free send requests; the last one WITH
    /// IMMEDIATE carrying the new tail. What does not fit waits for completions.
    pub fn push(&mut self) -> io::Result<()> {
        let Some(peer) = self.peer else { return Ok(()) };
        let tail = self.region.ctrl().s2c_tail.0.load(Ordering::Relaxed);
        // One send request stays free for a credit, so data never starves them.
        let budget = self.sq_free.saturating_sub(1) as usize;
        if tail == self.posted || budget == 0 || self.broken.is_some() {
            return Ok(());
        }
        let cap = self.region.ring_bytes() as u64;
        // The pieces of [posted, tail), in order: (staging position, length, source), where
        // the source is the staging ring or a gather's memory (registration, address).
        let mut gathers = self.gathers.iter().take_while(|g| g.pos < tail).peekable();
        let mut at = self.posted;
        let pieces = std::iter::from_fn(|| {
            let Some(g) = gathers.peek() else {
                let staged = (at < tail).then_some((at, tail - at, None));
                at = tail;
                return staged;
            };
            // A gather cut at the wrap may have had its first part posted already.
            let skip = at.saturating_sub(g.pos);
            let pos = g.pos + skip;
            if pos > at {
                let staged = (at, pos - at, None);
                at = pos;
                return Some(staged);
            }
            let piece = (pos, g.len as u64 - skip, Some((g.src, g.addr + skip)));
            at = g.pos + g.len as u64;
            gathers.next();
            Some(piece)
        });
        // Scatter entries, cut at the ring's wrap (the peer's ring and the staging ring are
        // registered one lap long), grouped into writes: (remote address, entries, end).
        let Link { scratch, writes, tx_mr, sources, id, .. } = self;
        let max_sge = id.send_sge();
        scratch.clear();
        writes.clear();
        let mut write_end: Option<u64> = None;
        for (pos, len, src) in pieces {
            let mut done = 0;
            while done < len {
                let p = pos + done;
                let off = p & (cap - 1);
                let n = (len - done).min(cap - off);
                let joins = write_end == Some(p)
                    && off != 0
                    && writes.last().is_some_and(|(_, r, _)| r.len() < max_sge);
                if joins {
                    writes.last_mut().expect("checked").1.end += 1;
                } else {
                    if writes.len() == budget {
                        break;
                    }
                    writes.push((peer.addr + off, scratch.len()..scratch.len() + 1, 0));
                }
                match src {
                    None => scratch.add(tx_mr, tx_mr.addr() + off, n as u32),
                    Some((i, addr)) => {
                        let mr =
                            &sources.as_ref().expect("gathers need sources").sources()[i as usize];
                        scratch.add(mr, addr + done, n as u32)
                    }
                }
                writes.last_mut().expect("pushed").2 = p + n;
                write_end = Some(p + n);
                done += n;
            }
            if done < len {
                break;
            }
        }
        let new_posted = writes.last().expect("at least one write").2;
        // Bytes in `[posted, new_posted)` (and the gathered memory) are not written again
        // until the peer's credit (or `landed`) passes them, which happens only after these
        // writes landed.
        let wr_id = self.wr(KIND_WRITE);
        let to_post = self.writes.iter().map(|(addr, r, _)| (*addr, r.clone()));
        let imm = new_posted as u32;
        self.id.post_gather_writes(&mut self.scratch, to_post, peer.rkey, imm, wr_id)?;
        self.sq_free -= self.writes.len() as u32;
        self.write_ends.extend(self.writes.iter().map(|w| w.2));
        self.posted = new_posted;
        while self.gathers.front().is_some_and(|g| g.pos + g.len as u64 <= new_posted) {
            self.gathers.pop_front();
        }
        Ok(())
    }

    /// Reports the receive ring's head to the peer once an eighth of the ring has been consumed
    /// since the last report. Never more often: a credit is a message the peer's NIC and CPU
    /// must handle. It cannot deadlock: a sender is short of space only when more than seven
    /// eighths of the ring are unreported, and then a report is due; a frame the server waits
    /// for whole is at most three quarters of the ring (the client's batch and message limits).
    pub fn credit(&mut self) -> io::Result<()> {
        let head = self.region.ctrl().c2s_head.0.load(Ordering::Relaxed);
        let due = head - self.credited >= self.region.ring_bytes() as u64 / 8;
        if !due || self.sq_free == 0 || self.peer.is_none() || self.broken.is_some() {
            return Ok(());
        }
        self.id.post_send_imm(head as u32, self.wr(KIND_CREDIT))?;
        self.sq_free -= 1;
        self.credited = head;
        Ok(())
    }

    /// Whether this end has staged bytes not yet posted (work the caller must come back for
    /// once send requests complete).
    pub fn has_pending(&self) -> bool {
        self.region.ctrl().s2c_tail.0.load(Ordering::Relaxed) != self.posted
    }

    /// Whether everything staged has been written into the peer's ring: posted, and every
    /// send request completed (an RC write completes once it has landed at the peer).
    pub fn all_landed(&self) -> bool {
        !self.has_pending() && self.sq_free == SEND_WR
    }

    fn wr(&self, kind: u64) -> u64 {
        wr_id(self.token, kind)
    }
}

/// A staged span written from other registered memory.
#[derive(Debug, Clone, Copy)]
struct Gather {
    pos: u64,
    len: u32,
    src: u16,
    addr: u64,
}

/// A work request id: the link's token, and the kind of request in the low byte.
fn wr_id(token: u64, kind: u64) -> u64 {
    token << 8 | kind
}

/// Parses `host:port` to an IPv4 address (rdma_cm over RoCE here speaks IPv4).
pub fn resolve_v4(addr: &str) -> io::Result<SocketAddrV4> {
    addr.to_socket_addrs()?
        .find_map(|a| match a {
            SocketAddr::V4(v4) => Some(v4),
            SocketAddr::V6(_) => None,
        })
        .ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("{addr}: no IPv4 address"))
        })
}

/// Waits up to `timeout` for the next rdma_cm event on `ch`.
fn next_event(ch: &EventChannel, timeout: Duration) -> io::Result<verbs::CmEvent> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(ev) = ch.next()? {
            return Ok(ev);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "no rdma_cm event in time"));
        }
        crate::shm::wait_readable(&[ch.fd()], left)?;
    }
}

fn expect(ev: verbs::CmEvent, want: EventKind, step: &str) -> io::Result<verbs::CmEvent> {
    if ev.kind == want {
        return Ok(ev);
    }
    let why = rejection_reason(&ev.private)
        .unwrap_or_else(|| format!("{} (status {})", ev.name, ev.status));
    let kind = if ev.kind == EventKind::Rejected {
        io::ErrorKind::ConnectionRefused
    } else {
        io::ErrorKind::Other
    };
    Err(io::Error::new(kind, format!("rdma {step}: {why}")))
}

/// One end of an RDMA connection, blocking, with an optional busy-poll mode: what a client
/// speaks the native protocol over, and what the bench tool's raw baseline uses. Its methods
/// mirror [`crate::shm::ShmStream`]'s.
pub struct RdmaStream {
    // Drop order: the link (queue pair, registrations, rings) before the CQ and PD it uses,
    // the event channel last.
    link: Link,
    cq: Cq,
    _pd: Pd,
    ch: EventChannel,
    busy_poll: bool,
    peer_gone: bool,
    wcs: Vec<Wc>,
}

/// An rdma_cm listener for the raw baseline's server end.
pub struct RdmaListener {
    // The identifier goes before its channel (field order).
    id: CmId,
    ch: EventChannel,
    pub port: u16,
}

impl RdmaListener {
    pub fn bind(addr: SocketAddrV4) -> io::Result<RdmaListener> {
        let ch = EventChannel::new()?;
        let mut id = CmId::new(&ch)?;
        let port = id.listen(addr, 16)?;
        Ok(RdmaListener { id, ch, port })
    }
}

impl RdmaStream {
    /// Connects to an rdmq server (or raw peer) at `addr` with rings of `ring_bytes`.
    pub fn connect(addr: &str, ring_bytes: usize) -> io::Result<RdmaStream> {
        verbs::devices().map_err(|e| io::Error::new(io::ErrorKind::NotFound, e))?;
        let dst = resolve_v4(addr)?;
        let ch = EventChannel::new()?;
        let mut id = CmId::new(&ch)?;
        id.resolve_addr(dst, RESOLVE_TIMEOUT_MS)?;
        expect(next_event(&ch, SETUP_TIMEOUT)?, EventKind::AddrResolved, "address resolution")?;
        id.resolve_route(RESOLVE_TIMEOUT_MS)?;
        expect(next_event(&ch, SETUP_TIMEOUT)?, EventKind::RouteResolved, "route resolution")?;
        let pd = Pd::new(&id)?;
        let cq = Cq::new(&id, CQ_ENTRIES)?;
        let mut link = Link::new(id, &pd, &cq, ring_bytes, 0)?;
        let private = link.endpoint().encode();
        link.id.connect(&private)?;
        let ev = expect(next_event(&ch, SETUP_TIMEOUT)?, EventKind::Established, "connect")?;
        let peer = Endpoint::decode(&ev.private).map_err(io::Error::other)?;
        link.set_peer(peer).map_err(io::Error::other)?;
        Ok(Self::with(link, cq, pd, ch))
    }

    /// Accepts one connection on `l` as the server end (the raw baseline).
    pub fn accept(l: RdmaListener) -> io::Result<RdmaStream> {
        let ev = expect(
            next_event(&l.ch, Duration::from_secs(60))?,
            EventKind::ConnectRequest,
            "accept",
        )?;
        let mut id = ev.new_id.expect("a connect request carries its identifier");
        let peer = match Endpoint::decode(&ev.private) {
            Ok(p) => p,
            Err(e) => {
                id.reject(&rejection(&e));
                return Err(io::Error::other(e));
            }
        };
        let pd = Pd::new(&id)?;
        let cq = Cq::new(&id, CQ_ENTRIES)?;
        let mut link = Link::new(id, &pd, &cq, peer.ring_bytes, 0)?;
        link.set_peer(peer).map_err(io::Error::other)?;
        let private = link.endpoint().encode();
        link.id.accept(&private)?;
        // The listener's channel reports ESTABLISHED for the new identifier.
        expect(next_event(&l.ch, SETUP_TIMEOUT)?, EventKind::Established, "accept")?;
        let RdmaListener { id: lid, ch, .. } = l;
        drop(lid);
        Ok(Self::with(link, cq, pd, ch))
    }

    fn with(link: Link, cq: Cq, pd: Pd, ch: EventChannel) -> RdmaStream {
        RdmaStream {
            link,
            cq,
            _pd: pd,
            ch,
            busy_poll: false,
            peer_gone: false,
            wcs: vec![Wc::default(); 64],
        }
    }

    pub fn set_busy_poll(&mut self, on: bool) {
        self.busy_poll = on;
    }

    pub fn ring_bytes(&self) -> usize {
        self.link.region.ring_bytes()
    }

    /// Reaps completions and moves what they unblocked: staged bytes, owed credits.
    fn progress(&mut self) -> io::Result<()> {
        loop {
            let n = self.cq.poll(&mut self.wcs)?;
            for i in 0..n {
                let wc = self.wcs[i];
                self.link.on_completion(&wc);
            }
            if n < self.wcs.len() {
                break;
            }
        }
        if let Some(why) = &self.link.broken {
            self.peer_gone = true;
            return Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                format!("rdma link: {why}"),
            ));
        }
        self.link.push()?;
        self.link.credit()
    }

    fn check_events(&mut self) -> io::Result<()> {
        while let Some(ev) = self.ch.next()? {
            if matches!(ev.kind, EventKind::Disconnected | EventKind::Other(_)) {
                self.peer_gone = true;
            }
        }
        Ok(())
    }

    /// Writes as much of `src` as the peer's ring has room for, without waiting.
    pub fn write_some(&mut self, src: &[u8]) -> io::Result<usize> {
        let _ = self.progress();
        if self.peer_gone {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "rdma peer closed"));
        }
        let n = self.link.region.s2c().write(src);
        self.link.push()?;
        Ok(n)
    }

    /// Copies received bytes into `dst` without waiting; returns the count.
    pub fn read_now(&mut self, dst: &mut [u8]) -> io::Result<usize> {
        let _ = self.progress();
        let n = self.link.region.c2s().read_into(dst);
        if n > 0 {
            self.link.credit()?;
        }
        Ok(n)
    }

    /// Reads at least one byte, waiting until `deadline` (forever if `None`). `Ok(0)`: the peer
    /// is gone and everything it wrote has been read. `TimedOut`: the deadline passed.
    pub fn read_until(&mut self, dst: &mut [u8], deadline: Option<Instant>) -> io::Result<usize> {
        self.wait_for(deadline, |s| s.link.region.c2s().readable() > 0)?;
        self.read_now(dst)
    }

    /// Waits until the peer's ring has room (or the deadline passes, or the peer is gone).
    pub fn wait_writable(&mut self, deadline: Option<Instant>) -> io::Result<()> {
        self.wait_for(deadline, |s| s.link.region.s2c().free() > 0)?;
        if self.peer_gone {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "rdma peer closed"));
        }
        Ok(())
    }

    fn wait_for(
        &mut self,
        deadline: Option<Instant>,
        ready: impl Fn(&RdmaStream) -> bool,
    ) -> io::Result<()> {
        crate::shm::wait_for(self, deadline, "rdma", ready)
    }
}

impl crate::shm::Wait for RdmaStream {
    const BUSY_CHECK_EVERY: u32 = BUSY_EVENTS_EVERY;

    fn poll(&mut self) -> io::Result<()> {
        self.progress()
    }

    fn peer_gone(&self) -> bool {
        self.peer_gone
    }

    fn busy_poll(&self) -> bool {
        self.busy_poll
    }

    fn liveness(&mut self) -> io::Result<()> {
        self.check_events()
    }

    fn arm(&mut self) -> io::Result<()> {
        self.cq.arm()
    }

    fn sleep(&mut self, slice: Duration) -> io::Result<()> {
        crate::shm::wait_readable(&[self.cq.fd(), self.ch.fd()], slice)?;
        self.cq.drain_events();
        self.check_events()
    }
}

impl io::Read for RdmaStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_until(buf, None)
    }
}

impl io::Write for RdmaStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            let n = self.write_some(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            self.wait_writable(None)?;
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        // Wait until everything written has landed in the peer's ring (not for its credit,
        // which comes only per eighth of the ring).
        let deadline = Some(Instant::now() + SETUP_TIMEOUT);
        self.wait_for(deadline, |s| s.link.all_landed())
    }
}

impl Drop for RdmaStream {
    fn drop(&mut self) {
        self.link.id.disconnect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_widen_across_32_bit_wraps() {
        assert_eq!(widen(0, 5), 5);
        assert_eq!(widen(0xFFFF_FFF0, 0x10), 0x1_0000_0010);
        assert_eq!(widen(0x1_0000_0010, 0x20), 0x1_0000_0020);
        assert_eq!(widen(7 << 32 | 100, 100), 7 << 32 | 100);
    }

    #[test]
    fn endpoint_round_trip_and_refusals() {
        let e = Endpoint { ring_bytes: 1 << 20, addr: 0xdead_beef_0000, rkey: 42 };
        assert_eq!(Endpoint::decode(&e.encode()).unwrap(), e);
        assert!(Endpoint::decode(b"RDQ1").is_err());
        let mut bad = e.encode();
        bad[4..8].copy_from_slice(&3u32.to_le_bytes());
        assert!(Endpoint::decode(&bad).is_err());
        assert_eq!(rejection_reason(&rejection("no room")).as_deref(), Some("no room"));
        let mut padded = rejection("too many");
        padded.resize(56, 0);
        assert_eq!(rejection_reason(&padded).as_deref(), Some("too many"));
        assert!(rejection("x".repeat(100).as_str()).len() <= 56);
    }

    /// Seeded fuzz of the private-data decoder: never panics; what it accepts re-encodes to the
    /// same 20 bytes and names a valid ring size.
    #[test]
    fn endpoint_decoder_fuzz() {
        let good = Endpoint { ring_bytes: 1 << 20, addr: 0x7f00_1234_5000, rkey: 0xabc }.encode();
        let mut rng = crate::mutate::Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..50_000 {
            let p = crate::mutate::mutate(&good, &mut rng, 60);
            if let Ok(e) = Endpoint::decode(&p) {
                assert_eq!(e.encode(), p[..PRIVATE_LEN].to_vec());
                assert!(e.ring_bytes.is_power_of_two() && e.ring_bytes >= RING_BYTES_MIN);
            }
            let _ = rejection_reason(&p);
        }
    }

    /// Real verbs: needs an RDMA device (see rxe-setup/), else says SKIPPED.
    #[test]
    fn stream_over_a_real_device() {
        let Ok(addr) = std::env::var("RDMQ_RDMA_ADDR") else {
            eprintln!("SKIPPED: RDMQ_RDMA_ADDR is not set (no RDMA device; see rxe-setup/)");
            return;
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let bind = resolve_v4(&format!("{addr}:0")).unwrap();
        // Verbs objects are not Send: the server end is made on its own thread.
        let server = std::thread::spawn(move || {
            let l = RdmaListener::bind(bind).unwrap();
            tx.send(l.port).unwrap();
            let mut s = RdmaStream::accept(l).unwrap();
            let mut buf = vec![0u8; 4096];
            let mut total = 0usize;
            while total < 1 << 20 {
                let n = io::Read::read(&mut s, &mut buf).unwrap();
                assert!(n > 0);
                io::Write::write_all(&mut s, &buf[..n]).unwrap();
                total += n;
            }
            io::Write::flush(&mut s).unwrap();
        });
        let port = rx.recv().unwrap();
        let mut c = RdmaStream::connect(&format!("{addr}:{port}"), RING_BYTES_MIN).unwrap();
        let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 13 % 251) as u8).collect();
        let (mut got, mut sent) = (Vec::new(), 0);
        let mut buf = vec![0u8; 8192];
        let deadline = Instant::now() + Duration::from_secs(120);
        while got.len() < data.len() {
            assert!(Instant::now() < deadline, "stalled at {} of {}", got.len(), data.len());
            if sent < data.len() {
                sent += c.write_some(&data[sent..(sent + 3000).min(data.len())]).unwrap();
            }
            let n = c.read_now(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
            if n == 0 && sent == data.len() {
                let n = c.read_until(&mut buf, Some(Instant::now() + Duration::from_secs(10)));
                got.extend_from_slice(&buf[..n.unwrap()]);
            }
        }
        assert_eq!(got, data);
        server.join().unwrap();
    }
}
