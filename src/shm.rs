//! The server's side of the ring transports: accepting a shared-memory client on the Unix
//! socket (`shm://PATH`: credential check, region, handshake), and for every ring connection
//! (shared memory, or RDMA, see `rdma.rs`) reading its frames out of its receive ring every
//! pass and writing its output into its outgoing ring.
//! The ring layout and handshake are in the client crate (`rdmq_client::shm`), shared by both
//! ends.
//!
//! Runs on the shard that accepted the connection, like a TCP connection: the shm socket is a
//! `Conn` whose `fd` carries only the handshake and then end-of-file, and whose frames go
//! through the rings instead of io_uring receives and sends.
//!
//! Data path, per pass: `poll_rings` looks at every ring connection's receive ring (one
//! acquire load when idle); each whole frame is copied out before it is decoded (a PUBLISH
//! batch straight into the buffer the queue keeps), with no reassembly buffer; the bytes are
//! given back to the client (the head advances) once handled. Deliveries are written straight
//! into the outgoing ring (`Conn::deliver_to_ring`); `flush_ring` copies the rest of the
//! pass's output there, as a send would into the kernel, and wakes the shm client if it sleeps
//! (or posts the RDMA writes).
//!
//! The shard trusts nothing a shm client can write: it keeps its own ring positions
//! (`RingPositions`) and validates the client's.

use std::os::fd::{AsFd, BorrowedFd};
use std::rc::Rc;
use std::sync::atomic::Ordering;

use rdmq_client::error_code as code;
use rdmq_client::shm::{self, Region, Ring};
use rdmq_client::wire::frame::FLAG_NO_CONFIRM;
use rdmq_client::wire::publish::{Publish, PREFIX_MAX};
use rdmq_client::wire::record::BatchView;
use rdmq_client::wire::{FrameHeader, Opcode, Reader, FRAME_HEADER_LEN};

use crate::conn::{one_deliver_frame, Conn, RingConn, ShmConn};
use crate::event::ReplyTo;
use crate::handlers::{fatal, fatal_bad_header, malformed};
use crate::metrics;
use crate::shard::Shard;

impl Shard {
    /// Checks a new shm peer and hands it its region. The error is the reason sent back.
    pub fn shm_handshake(&self, sock: BorrowedFd<'_>) -> Result<ShmConn, String> {
        let uid = shm::peer_uid(sock).map_err(|e| format!("cannot read peer credentials: {e}"))?;
        let me = shm::effective_uid();
        if uid != me && uid != 0 && !self.cfg.shm_allow_uids.contains(&uid) {
            return Err(format!(
                "uid {uid} may not use this server's shared memory (the server runs as uid {me}; \
                 add it to shm_allow_uids)"
            ));
        }
        let region = Region::create(self.cfg.shm_ring_bytes, true)
            .map_err(|e| format!("cannot create the shared region: {e}"))?;
        let client_wake = shm::eventfd().map_err(|e| format!("eventfd: {e}"))?;
        shm::send_handshake(sock, &region, self.wake_fd(), client_wake.as_fd())
            .map_err(|e| format!("handshake: {e}"))?;
        Ok(ShmConn { region: Rc::new(region), client_wake })
    }

    /// Handles the whole frames waiting in every ring connection's receive ring (shared memory
    /// or RDMA); resumes output that a full ring held back. Returns the number of connections
    /// that had input.
    pub fn poll_rings(&mut self) -> usize {
        let high_water = self.cfg.conn_output_high_water;
        let mut work = 0;
        let mut i = 0;
        // By index: a handler may close (and release) connections, which edits the list.
        while i < self.ring_slots.len() {
            let slot = self.ring_slots[i];
            i += 1;
            let Some(conn) = self.conns[slot as usize].as_ref() else { continue };
            let region = conn.ring.as_ref().expect("ring slot").region().clone();
            if held_output_can_move(conn, &region) {
                self.dirty_conns.push(slot);
            }
            if !has_input(conn, &region, high_water) {
                continue;
            }
            if self.ring_input(slot, &region) == 0 {
                continue;
            }
            work += 1;
            if let Some(ring) = self.conns[slot as usize].as_mut().and_then(|c| c.ring.as_mut()) {
                ring.after_consume();
            }
        }
        work
    }

    /// Handles the whole frames in one connection's receive ring, each copied out of the ring
    /// before it is decoded (a PUBLISH batch straight into the buffer the queue keeps,
    /// everything else into a scratch buffer), so a peer that rewrites bytes it already sent
    /// cannot change what was validated. Returns the bytes consumed; a client whose tail is
    /// impossible, or whose frame header is bad, is closed with an error.
    fn ring_input(&mut self, slot: u32, region: &Rc<Region>) -> usize {
        let conn = self.conns[slot as usize].as_ref().expect("ring slot");
        let (generation, start) = (conn.generation, conn.ring_pos.rx_head.get());
        let rx = region.c2s();
        let tail = rx.tail();
        let Some(avail) = rx.readable_after(start) else {
            let why = format!("ring positions corrupted (tail {tail}, head {start})");
            fatal(self, slot, code::PROTOCOL_ERROR, &why);
            return 0;
        };
        let end = start + avail as u64;
        // A frame is read whole from the ring, so it must fit it.
        let body_max = self.cfg.frame_body_max.min(region.ring_bytes() - FRAME_HEADER_LEN);
        let mut scratch = std::mem::take(&mut self.ring_scratch);
        let mut head = start;
        while end - head >= FRAME_HEADER_LEN as u64 {
            let mut hb = [0u8; FRAME_HEADER_LEN];
            rx.copy_out(head, &mut hb);
            let h = match FrameHeader::decode(&hb, body_max) {
                Ok(h) => h,
                Err(e) => {
                    fatal_bad_header(self, slot, e);
                    break;
                }
            };
            let frame_len = (FRAME_HEADER_LEN + h.length as usize) as u64;
            if end - head < frame_len {
                break;
            }
            let body_at = head + FRAME_HEADER_LEN as u64;
            if h.opcode == Opcode::Publish as u8 {
                self.on_ring_publish(slot, generation, &h, &rx, body_at);
            } else {
                scratch.clear();
                scratch.resize(h.length as usize, 0);
                rx.copy_out(body_at, &mut scratch);
                self.on_frame(slot, generation, &h, &scratch);
            }
            head += frame_len;
            if self.conns[slot as usize].as_ref().is_none_or(|c| c.closing) {
                break;
            }
        }
        self.ring_scratch = scratch;
        let Some(conn) = self.conns[slot as usize].as_mut() else { return 0 };
        conn.ring_pos.rx_head.set(head);
        // Nothing whole to handle: note the tail, so the shard does not spin on a partial frame.
        conn.ring_pos.rx_stalled_at.set((head == start).then_some(tail));
        rx.set_head(head);
        (head - start) as usize
    }

    /// A PUBLISH frame in a receive ring: its prefix (kind, name) is copied into a small
    /// buffer, its batch straight into the shared buffer the queue will keep (the one copy of
    /// the payload on the way in), and both are validated there.
    fn on_ring_publish(
        &mut self,
        slot: u32,
        generation: u32,
        h: &FrameHeader,
        rx: &Ring<'_>,
        body_at: u64,
    ) {
        let len = h.length as usize;
        let mut prefix = [0u8; PREFIX_MAX];
        let n = len.min(PREFIX_MAX);
        rx.copy_out(body_at, &mut prefix[..n]);
        let mut r = Reader::new(&prefix[..n]);
        let (kind, name) = match Publish::decode_prefix(&mut r) {
            Ok(p) => p,
            Err(e) => return fatal(self, slot, code::PROTOCOL_ERROR, &malformed(h.opcode, e)),
        };
        let batch_offset = r.position();
        if !self.conns[slot as usize].as_ref().is_some_and(|c| c.handshaken) {
            let msg = "expected HELLO as the first frame, got PUBLISH";
            return fatal(self, slot, code::PROTOCOL_ERROR, msg);
        }
        let at = body_at + batch_offset as u64;
        let batch = self.arena.fill(len - batch_offset, |dst| rx.copy_out(at, dst));
        metrics::add(&self.metrics.copy_in_bytes, batch.len() as u64);
        let count = match BatchView::decode(&batch) {
            Ok(view) => view.count,
            Err(e) => {
                let msg = malformed(h.opcode, e.shifted(batch_offset));
                return fatal(self, slot, code::PROTOCOL_ERROR, &msg);
            }
        };
        let reply = ReplyTo { shard: self.id, slot, generation, request_id: h.request_id };
        let confirm = h.flags & FLAG_NO_CONFIRM == 0;
        self.publish_batch(reply, confirm, kind, name, batch, count);
    }

    /// Copies a ring connection's output into its outgoing ring, as far as the ring has room;
    /// the rest waits in `sending` until the client frees space (noticed by `poll_rings`).
    pub fn flush_ring(&mut self, slot: u32) {
        let Some(conn) = self.conns[slot as usize].as_mut() else { return };
        let region = conn.ring.as_ref().expect("ring connection").region().clone();
        let tx = region.s2c();
        let (mut wrote, mut copied) = (0, 0);
        let mut corrupt = false;
        loop {
            if conn.sending.is_empty() {
                // Held output first (deliveries written straight in), then the buffer.
                let Some(b) = conn.write_held() else {
                    corrupt = true;
                    break;
                };
                copied += b;
            }
            if conn.sending.is_empty() {
                if !conn.held.is_empty() || conn.out.is_empty() {
                    break; // a held delivery waits for room, or nothing is left
                }
                std::mem::swap(&mut conn.sending, &mut conn.out);
                conn.send_offset = 0;
            }
            let tail = conn.ring_pos.tx_tail.get();
            let Some(n) = tx.write_after(tail, &conn.sending[conn.send_offset..]) else {
                corrupt = true;
                break;
            };
            conn.ring_pos.tx_tail.set(tail + n as u64);
            wrote += n;
            conn.send_offset += n;
            if conn.send_offset < conn.sending.len() {
                break; // the ring is full
            }
            conn.sending.clear();
            conn.send_offset = 0;
        }
        metrics::add(&self.metrics.ring_bytes_out, wrote as u64);
        // Held deliveries were counted as delivered when they were held.
        metrics::add(&self.metrics.copy_deliver_bytes, copied as u64);
        // Deliveries may have been written straight into the ring this pass, so always: a shm
        // client is woken only if it sleeps, an RDMA link posts only what is new.
        conn.ring.as_mut().expect("ring connection").after_write();
        if corrupt && !conn.closing {
            // The client moved its head where it cannot be: nothing more can be written to it.
            conn.out.clear();
            conn.sending.clear();
            conn.held.clear();
            conn.held_bytes = 0;
            conn.send_offset = 0;
            eprintln!("rdmq: ring connection {slot}: client's ring head corrupted; closing");
            self.close_conn(slot);
        }
        if self.conns[slot as usize].as_ref().is_some_and(|c| c.closing) {
            self.maybe_release(slot);
        }
    }

    /// Before sleeping (`true`) the shard asks every shm client to wake it after writing or
    /// consuming; after waking (`false`) it withdraws the request. (RDMA completions wake it
    /// through the completion channel, see `rdma.rs`.)
    pub fn set_ring_waiting(&mut self, on: bool) {
        for &slot in &self.ring_slots {
            if let Some(RingConn::Shm(shm)) =
                self.conns[slot as usize].as_ref().and_then(|c| c.ring.as_deref())
            {
                shm.region.ctrl().server_waiting.0.store(on as u32, Ordering::SeqCst);
            }
        }
    }

    /// Whether any ring connection has input, or held-back output and room for it (checked
    /// after `set_ring_waiting(true)` and a fence, so nothing written before is missed).
    pub fn rings_pending(&self) -> bool {
        let high_water = self.cfg.conn_output_high_water;
        self.ring_slots.iter().any(|&slot| {
            let Some(conn) = self.conns[slot as usize].as_ref() else { return false };
            let region = conn.ring.as_ref().expect("ring slot").region();
            has_input(conn, region, high_water) || held_output_can_move(conn, region)
        })
    }

    /// Lets go of a released connection's transport: an RDMA connection is disconnected
    /// before its queue pair is destroyed.
    pub fn release_ring(&mut self, ring: RingConn) {
        match ring {
            RingConn::Shm(_) => {}
            #[cfg(feature = "rdma")]
            RingConn::Rdma(mut link) => {
                link.id.disconnect();
                drop(link);
                self.rdma_released();
            }
        }
    }
}

/// Whether a ring connection's receive ring is worth reading now: it is open, its output has
/// drained below `high_water` (a client that sends requests and never reads the answers stalls
/// in its own ring, not in the shard's memory), and its tail has moved since the shard last
/// found only part of a frame. An impossible tail counts as input: reading it closes the
/// connection.
fn has_input(conn: &Conn, region: &Region, high_water: usize) -> bool {
    let (rx, pos) = (region.c2s(), &conn.ring_pos);
    !conn.closing
        && conn.out.len() + conn.sending.len() + conn.held_bytes < high_water
        && pos.rx_stalled_at.get() != Some(rx.tail())
        && rx.readable_after(pos.rx_head.get()) != Some(0)
}

/// Whether output held back by a full outgoing ring can move (or the client's head is
/// impossible, which the flush reports).
fn held_output_can_move(conn: &Conn, region: &Region) -> bool {
    // The free space the next piece of output needs, if anything waits.
    let need = if !conn.sending.is_empty() {
        1
    } else if !conn.held.is_empty() {
        conn.held_need.max(1)
    } else if conn.closing {
        return false;
    } else {
        // Topic messages waiting in subscription buffers (`Conn::pump`): the smallest front
        // frame must fit (one larger than the ring goes through the output: any room will do).
        let ring = region.ring_bytes();
        let need = |m: &crate::broker::MsgRef| match one_deliver_frame(m.len as usize) {
            n if n > ring => 1,
            n => n,
        };
        match conn.subs.values().filter_map(|s| s.pending.front()).map(need).min() {
            Some(n) => n,
            None => return false,
        }
    };
    // `None`: the head is impossible, which the flush reports.
    region.s2c().free_after(conn.ring_pos.tx_tail.get()).is_none_or(|free| free >= need)
}
