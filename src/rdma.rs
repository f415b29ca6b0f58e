//! The server's side of the RDMA transport (`rdma://IP:PORT`): the rdma_cm listener, accepting
//! connections (each a `Conn` whose `RingConn::Rdma` link holds its queue pair and rings),
//! the shared completion queue, and sleeping on both their descriptors. The ring protocol and
//! every verbs call are in the client crate (`rdmq_client::rdma`), shared with clients.
//!
//! Shard 0 owns the listener: rdma_cm hands it every connection request, and it deals them out
//! to the shards in turn. A request for another shard travels there through the mailbox
//! (`Event::RdmaConnect`), and that shard moves the identifier onto its own event channel
//! (`rdma_migrate_id`) before accepting it. So every shard that serves RDMA has its own event
//! channel, protection domain, completion queue and registration of the message memory, and
//! its connections' completions are its own. Each pass `poll_rdma` takes rdma_cm events
//! (connect requests, disconnects) and completions (the peer's tail after its writes, its
//! credits, our writes done) without blocking; `poll_rings` then reads frames out of each
//! link's receive ring, exactly as for shared memory. Before sleeping the shard arms the
//! completion queue and keeps a poll armed on its channel and the rdma_cm channel in its
//! io_uring, so a completion or a disconnect wakes it.
//!
//! Built only with the `rdma` cargo feature; without it `rdma_start` says why RDMA is
//! unavailable and the rest is inert.

use std::net::{SocketAddr, SocketAddrV4};

use crate::shard::Shard;

/// Why RDMA is off, in one line the server prints at start.
pub type Unavailable = String;

#[cfg(not(feature = "rdma"))]
pub struct RdmaState;

#[cfg(not(feature = "rdma"))]
impl Shard {
    pub fn rdma_start(&mut self, _addr: SocketAddrV4) -> Result<SocketAddr, Unavailable> {
        Err("this build has no RDMA support (build with --features rdma; see rxe-setup/README.md)"
            .into())
    }

    pub fn poll_rdma(&mut self) -> usize {
        0
    }

    pub fn rdma_before_sleep(&mut self) -> bool {
        false
    }

    pub fn on_rdma_ready(&mut self, _which: u32) {}
}

#[cfg(feature = "rdma")]
pub use built::RdmaState;

#[cfg(feature = "rdma")]
mod built {
    use super::*;
    use crate::conn::{Conn, RingConn};
    use crate::event::Event;
    use crate::metrics;
    use crate::shard::{op, user_data};
    use rdmq_client::rdma::verbs::{
        self, CmEvent, CmId, Cq, EventChannel, EventKind, MovedId, SharedPd, Wc,
    };
    use rdmq_client::rdma::{rejection, Endpoint, Link, RECV_WR, SEND_WR};
    use std::sync::Arc;

    /// Completions taken per pass, so sockets and mailboxes get their turn under load.
    const COMPLETIONS_PER_PASS: usize = 256;
    /// Pending connection requests rdma_cm queues for the listener.
    const LISTEN_BACKLOG: i32 = 64;
    /// Which descriptor an armed io_uring poll watches (its slot field).
    const WATCH_CQ: u32 = 0;
    const WATCH_CM: u32 = 1;

    /// A connection's token (in its work request ids and its rdma_cm identifier): the slot and
    /// generation that find it in the shard's table, laid out as in io_uring user data.
    fn token(slot: u32, generation: u32) -> u64 {
        (generation as u64) << 32 | slot as u64
    }

    /// The (slot, generation) a token names.
    fn untoken(token: u64) -> (u32, u32) {
        (token as u32, (token >> 32) as u32)
    }

    pub struct RdmaState {
        // Drop order: the listener identifier, then the CQ and this shard's hold on the shared
        // PD (every connection's queue pair is gone by then: `Shard::conns` is dropped first;
        // the PD itself goes with its last holder), the channel last.
        _listener: Option<CmId>,
        cq: Option<Cq>,
        /// The process's shared PD and registered message memory.
        device: Option<Arc<SharedPd>>,
        ch: EventChannel,
        wcs: Vec<Wc>,
        /// io_uring polls in flight on the CQ channel and the rdma_cm channel.
        armed: [bool; 2],
        /// The rdma_cm channel was reported readable: take its events this pass. (Reading it
        /// every pass would cost a system call per pass for something that happens once per
        /// connection.)
        cm_ready: bool,
        connections: usize,
        /// The shard the next connection request goes to (listener only).
        next_shard: usize,
    }

    impl RdmaState {
        fn new(listener: Option<CmId>, ch: EventChannel) -> RdmaState {
            RdmaState {
                _listener: listener,
                cq: None,
                device: None,
                ch,
                wcs: vec![Wc::default(); COMPLETIONS_PER_PASS],
                armed: [false; 2],
                cm_ready: true,
                connections: 0,
                next_shard: 0,
            }
        }
    }

    impl Shard {
        /// Opens the listener. The error says, in one line, why RDMA is unavailable.
        pub fn rdma_start(&mut self, addr: SocketAddrV4) -> Result<SocketAddr, Unavailable> {
            let devices = verbs::devices()?;
            let ch = EventChannel::new().map_err(|e| e.to_string())?;
            let mut listener = CmId::new(&ch).map_err(|e| e.to_string())?;
            let port = listener.listen(addr, LISTEN_BACKLOG).map_err(|e| {
                format!(
                    "{e} (devices: {}; is {} an address of one?)",
                    devices.join(", "),
                    addr.ip()
                )
            })?;
            self.rdma = Some(RdmaState::new(Some(listener), ch));
            Ok(SocketAddr::V4(SocketAddrV4::new(*addr.ip(), port)))
        }

        /// Takes rdma_cm events and completions without blocking; returns the work done.
        pub fn poll_rdma(&mut self) -> usize {
            let Some(r) = self.rdma.as_mut() else { return 0 };
            let mut events = Vec::new();
            if !r.armed[WATCH_CM as usize] {
                // Keep a poll on the rdma_cm channel armed at all times; it sets `cm_ready`.
                r.armed[WATCH_CM as usize] = true;
                let fd = r.ch.fd();
                self.ring.poll_in(fd, user_data(op::RDMA_READY, 0, WATCH_CM));
            }
            let Some(r) = self.rdma.as_mut() else { return 0 };
            while std::mem::take(&mut r.cm_ready) {
                match r.ch.next() {
                    Ok(Some(ev)) => {
                        events.push(ev);
                        r.cm_ready = true; // there may be more
                    }
                    Ok(None) => {}
                    Err(e) => eprintln!("rdmq: rdma_cm: {e}"),
                }
            }
            let mut work = events.len();
            for ev in events {
                self.on_cm_event(ev);
            }
            work += self.reap_rdma_completions();
            work
        }

        fn reap_rdma_completions(&mut self) -> usize {
            let Some(r) = self.rdma.as_mut() else { return 0 };
            let Some(cq) = r.cq.as_ref() else { return 0 };
            let n = match cq.poll(&mut r.wcs) {
                Ok(n) => n,
                Err(e) => {
                    eprintln!("rdmq: rdma: {e}");
                    return 0;
                }
            };
            // Taken out for the loop (handlers need the shard) and put back: no allocation.
            let wcs = std::mem::take(&mut r.wcs);
            let metrics = self.metrics.clone();
            for wc in &wcs[..n] {
                let (slot, generation) = untoken(Link::split_wr_id(wc.wr_id).0);
                let Some(conn) = self.conn(slot, generation) else { continue };
                let Some(RingConn::Rdma(link)) = conn.ring.as_deref_mut() else { continue };
                link.on_completion(wc);
                metrics::add(&metrics.rdma_gather_bytes, std::mem::take(&mut link.gathered));
                let landed = link.landed();
                while conn.gather_keep.front().is_some_and(|(end, _)| *end <= landed) {
                    conn.gather_keep.pop_front();
                }
                let Some(RingConn::Rdma(link)) = conn.ring.as_deref_mut() else { continue };
                let broken = link.broken.clone();
                // Space or send requests may have come back: move what waited.
                let _ = link.push();
                let _ = link.credit();
                if let Some(why) = broken {
                    if !conn.closing {
                        eprintln!("rdmq: rdma connection {slot}: {why}; closing");
                        self.close_conn(slot);
                    }
                } else {
                    self.dirty_conns.push(slot);
                }
            }
            if let Some(r) = self.rdma.as_mut() {
                r.wcs = wcs;
            }
            n
        }

        fn on_cm_event(&mut self, ev: CmEvent) {
            match ev.kind {
                EventKind::ConnectRequest => self.rdma_accept(ev),
                EventKind::Established => {}
                _ => {
                    // Disconnected, or an error on an established connection: close it.
                    let (slot, generation) = untoken(ev.token);
                    if ev.token != 0 && self.conn(slot, generation).is_some() {
                        self.close_conn(slot);
                    }
                }
            }
        }

        /// A connection request on the listener: served here, or handed to the next shard in
        /// turn.
        fn rdma_accept(&mut self, ev: CmEvent) {
            let id = ev.new_id.expect("a connect request carries its identifier");
            let r = self.rdma.as_mut().expect("listening");
            let target = r.next_shard % self.shards;
            r.next_shard = r.next_shard.wrapping_add(1);
            if target == self.id as usize {
                return self.rdma_serve(id, &ev.private);
            }
            let ev = Event::RdmaConnect { id: MovedId::new(id), private: ev.private };
            metrics::add(&self.metrics.rdma_handed_off, 1);
            self.route(target, ev);
        }

        /// A connection request the listener handed to this shard: its events move to this
        /// shard's channel (made with the first one), then it is served here.
        pub fn rdma_connect_moved(&mut self, id: MovedId, private: Vec<u8>) {
            let mut id = id.into_inner();
            if self.rdma.is_none() {
                match EventChannel::new() {
                    Ok(ch) => self.rdma = Some(RdmaState::new(None, ch)),
                    Err(e) => return refuse(id, &format!("shard {}: {e}", self.id)),
                }
            }
            let r = self.rdma.as_ref().expect("made");
            if let Err(e) = id.migrate(&r.ch) {
                return refuse(id, &format!("shard {}: {e}", self.id));
            }
            self.rdma_serve(id, &private);
        }

        /// The PD every shard shares, with every shard's message memory registered on it once
        /// (so deliveries are written from where the records lie, whichever shard received
        /// them); made on `id`'s device by the first shard to need it.
        fn shared_pd(&mut self, id: &CmId) -> std::io::Result<Arc<SharedPd>> {
            let shared = self.rdma_shared.clone().expect("RDMA is configured");
            let mut shared = shared.lock().expect("not poisoned");
            if let Some(d) = &shared.device {
                return Ok(d.clone());
            }
            let pins = shared.pins.iter().map(|p| Box::new(p.clone()) as _).collect();
            let (device, failed) = SharedPd::new(id, pins)?;
            if let Some(e) = failed {
                eprintln!(
                    "rdmq: rdma: cannot register all message memory ({e}; see RLIMIT_MEMLOCK); \
                     deliveries of records outside it are copied into the staging ring"
                );
            }
            let device = Arc::new(device);
            shared.device = Some(device.clone());
            Ok(device)
        }

        /// Accepts a connection request on this shard: its device objects (the first time),
        /// the link, the connection.
        fn rdma_serve(&mut self, id: CmId, private: &[u8]) {
            let max = self.cfg.rdma_ring_bytes_max;
            let peer = match Endpoint::decode(private) {
                Ok(p) if p.ring_bytes <= max => p,
                Ok(p) => return refuse(id, &format!("ring {} > {max} bytes", p.ring_bytes)),
                Err(e) => return refuse(id, &e),
            };
            let r = self.rdma.as_mut().expect("made before");
            if r.connections >= self.cfg.rdma_connections_max {
                return refuse(id, "too many RDMA connections");
            }
            if r.cq.is_none() {
                // This shard's first connection: its CQ, and the process's shared PD (made by
                // whichever shard serves a connection first, on that connection's device).
                let entries = (self.cfg.rdma_connections_max as u32 * (SEND_WR + RECV_WR)) as i32;
                let device = match self.shared_pd(&id) {
                    Ok(d) => d,
                    Err(e) => return refuse(id, &e.to_string()),
                };
                let cq = match Cq::new(&id, entries) {
                    Ok(cq) => cq,
                    Err(e) => return refuse(id, &e.to_string()),
                };
                let r = self.rdma.as_mut().expect("made before");
                (r.device, r.cq) = (Some(device), Some(cq));
            }
            let Some(slot) = self.free_slots_pop() else {
                return refuse(id, "connection table full");
            };
            let generation = self.next_generation(slot);
            let token = token(slot, generation);
            let r = self.rdma.as_mut().expect("made before");
            let device = r.device.clone().expect("made");
            let cq = r.cq.as_ref().expect("made");
            let gather_min = self.cfg.rdma_gather_min_bytes as usize;
            let link = Link::new(id, device.pd(), cq, peer.ring_bytes, token).and_then(|mut l| {
                l.set_peer(peer).map_err(std::io::Error::other)?;
                l.set_sources(device, gather_min);
                let private = l.endpoint().encode();
                l.id.accept(&private)?;
                Ok(l)
            });
            let link = match link {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("rdmq: rdma accept failed: {e}");
                    self.free_slot(slot);
                    return;
                }
            };
            r.connections += 1;
            let mut conn = Conn::new(-1, generation);
            conn.recv_armed = false;
            conn.accepted_ms = self.now_ms;
            conn.ring = Some(Box::new(RingConn::Rdma(link)));
            self.conns[slot as usize] = Some(conn);
            self.ring_slots.push(slot);
            metrics::add(&self.metrics.connections_accepted, 1);
        }

        /// Arms the CQ and the io_uring polls before the shard sleeps; returns whether work
        /// arrived meanwhile (then the shard must not sleep).
        pub fn rdma_before_sleep(&mut self) -> bool {
            let Some(r) = self.rdma.as_mut() else { return false };
            if let Some(cq) = r.cq.as_mut() {
                cq.drain_events();
                let _ = cq.arm();
            }
            let fds = [r.cq.as_ref().map(|c| c.fd()), Some(r.ch.fd())];
            for (which, fd) in [WATCH_CQ, WATCH_CM].into_iter().zip(fds) {
                let r = self.rdma.as_mut().expect("checked");
                let Some(fd) = fd.filter(|_| !r.armed[which as usize]) else { continue };
                r.armed[which as usize] = true;
                self.ring.poll_in(fd, user_data(op::RDMA_READY, 0, which));
            }
            // A completion that arrived before the arming raised no event: look once more.
            self.poll_rdma() > 0
        }

        /// An armed poll fired: the next pass takes what is there; re-armed before sleeping.
        pub fn on_rdma_ready(&mut self, which: u32) {
            if let Some(r) = self.rdma.as_mut() {
                r.armed[(which as usize).min(1)] = false;
                if which == WATCH_CQ {
                    if let Some(cq) = r.cq.as_mut() {
                        cq.drain_events();
                    }
                } else {
                    r.cm_ready = true;
                }
            }
        }

        /// Called when an RDMA connection is released.
        pub fn rdma_released(&mut self) {
            if let Some(r) = self.rdma.as_mut() {
                r.connections = r.connections.saturating_sub(1);
            }
        }
    }

    fn refuse(mut id: CmId, why: &str) {
        eprintln!("rdmq: rdma connection refused: {why}");
        id.reject(&rejection(why));
    }
}
