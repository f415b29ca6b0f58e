//! The server's side of the ring transports: accepting a shared-memory client on the Unix
//! socket (`shm://PATH`: credential check, region, handshake), and for every ring connection
//! (shared memory, or RDMA, see `rdma.rs`) reading its frames in place from its receive ring
//! every pass and writing its output into its outgoing ring.
//! The ring layout and handshake are in the client crate (`rdmq_client::shm`), shared by both
//! ends.
//!
//! Runs on the shard that accepted the connection, like a TCP connection: the shm socket is a
//! `Conn` whose `fd` carries only the handshake and then end-of-file, and whose frames go
//! through the rings instead of io_uring receives and sends.
//!
//! Data path, per pass: `poll_rings` looks at every ring connection's receive ring (one acquire load when
//! idle); whole frames are handled where they lie in the shared mapping, with no copy into a
//! reassembly buffer; the bytes are given back to the client (the head advances) once handled.
//! `flush_ring` copies the pass's output into the outgoing ring, as a send would into the
//! kernel, and wakes the shm client if it sleeps (or posts the RDMA writes).

use std::os::fd::{AsFd, BorrowedFd};
use std::rc::Rc;
use std::sync::atomic::Ordering;

use rdmq_client::shm::{self, Region};
use rdmq_client::wire::FRAME_HEADER_LEN;

use crate::conn::{RingConn, ShmConn};
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
        let mut work = 0;
        let mut i = 0;
        // By index: a handler may close (and release) connections, which edits the list.
        while i < self.ring_slots.len() {
            let slot = self.ring_slots[i];
            i += 1;
            let Some(conn) = self.conns[slot as usize].as_ref() else { continue };
            let region = conn.ring.as_ref().expect("ring slot").region().clone();
            if !conn.sending.is_empty() && region.s2c().free() > 0 {
                self.dirty_conns.push(slot);
            }
            if conn.closing {
                continue;
            }
            let generation = conn.generation;
            let mut rx = region.c2s();
            let data = rx.peek();
            if data.is_empty() {
                continue;
            }
            work += 1;
            // A frame is parsed in place, so it must fit the ring whole.
            let body_max = self.cfg.frame_body_max.min(region.ring_bytes() - FRAME_HEADER_LEN);
            let consumed = self.on_native_input(slot, generation, data, body_max);
            // A closing connection's unread input is dropped, as a socket's would be.
            rx.consume(consumed.unwrap_or(data.len()));
            if let Some(ring) = self.conns[slot as usize].as_mut().and_then(|c| c.ring.as_mut()) {
                ring.after_consume();
            }
        }
        work
    }

    /// Copies a ring connection's output into its outgoing ring, as far as the ring has room;
    /// the rest waits in `sending` until the client frees space (noticed by `poll_rings`).
    pub fn flush_ring(&mut self, slot: u32) {
        let Some(conn) = self.conns[slot as usize].as_mut() else { return };
        let ring = conn.ring.as_mut().expect("ring connection");
        let region = ring.region().clone();
        let tx = region.s2c();
        let mut wrote = 0;
        loop {
            if conn.sending.is_empty() {
                if conn.out.is_empty() {
                    break;
                }
                std::mem::swap(&mut conn.sending, &mut conn.out);
                conn.send_offset = 0;
            }
            let n = tx.write(&conn.sending[conn.send_offset..]);
            wrote += n;
            conn.send_offset += n;
            if conn.send_offset < conn.sending.len() {
                break; // the ring is full
            }
            conn.sending.clear();
            conn.send_offset = 0;
        }
        metrics::add(&self.metrics.ring_bytes_out, wrote as u64);
        // Deliveries may have been written straight into the ring this pass, so always: a shm
        // client is woken only if it sleeps, an RDMA link posts only what is new.
        ring.after_write();
        if conn.closing {
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
    pub fn rings_pending(&mut self) -> bool {
        let rings = self.ring_slots.iter().any(|&slot| {
            let Some(conn) = self.conns[slot as usize].as_ref() else { return false };
            let region = conn.ring.as_ref().expect("ring slot").region();
            (!conn.closing && region.c2s().readable() > 0)
                || (!conn.sending.is_empty() && region.s2c().free() > 0)
        });
        rings || self.rdma_before_sleep()
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
