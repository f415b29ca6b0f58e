//! The verbs layer: every call into libibverbs and librdmacm (through `rdma-sys`), each behind
//! a small owning type whose `Drop` releases it. Nothing else in rdmq touches verbs; the ring
//! protocol (`super::Link`) and the server's shard loop use only what is here.
//!
//! Runs on whichever thread owns the objects: a client's thread, or the server shard that
//! accepted the connection. None of these types is `Send`.
//!
//! Objects and their owners:
//! - [`EventChannel`]: an rdma_cm event channel (its fd is non-blocking here).
//! - [`CmId`]: an rdma_cm identifier, and the RC queue pair created on it; dropping it destroys
//!   the queue pair first, then the identifier.
//! - [`Pd`], [`Cq`] (with its completion channel), [`Mr`]: protection domain, completion queue,
//!   registered memory. Callers drop queue pairs before the CQ and PD they use, and memory
//!   regions before the memory they cover (field order in `Link` and the server's state).
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::io;
use std::net::SocketAddrV4;
use std::os::fd::RawFd;
use std::ptr;
use std::rc::Rc;

use rdma_sys::*;

use crate::shm::Region;

/// Scatter entries one gathered WRITE carries at most (queue pairs are created for this many;
/// rxe and current NICs take 30 or more).
pub const SGE_MAX: usize = 16;

fn os_err(what: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Verbs functions return 0 or an errno value (not -1 with errno set).
fn check(ret: i32, what: &str) -> io::Result<()> {
    match ret {
        0 => Ok(()),
        e if e > 0 => {
            let err = io::Error::from_raw_os_error(e);
            Err(io::Error::new(err.kind(), format!("{what}: {err}")))
        }
        _ => Err(os_err(what)),
    }
}

/// Names the RDMA devices present, or says why there are none (no rdma-core provider, no
/// kernel support, no device).
pub fn devices() -> Result<Vec<String>, String> {
    let mut n = 0;
    // SAFETY: ibv_get_device_list writes the count and returns a NULL-terminated array that
    // we free below; NULL means failure with errno set.
    let list = unsafe { ibv_get_device_list(&mut n) };
    if list.is_null() {
        return Err(format!(
            "no RDMA devices (ibv_get_device_list: {}; a kernel without RDMA support, or no \
             device: SoftRoCE is set up by rxe-setup/host.sh or, without rdma_rxe, rxe-setup/vm.sh)",
            io::Error::last_os_error()
        ));
    }
    let mut names = Vec::new();
    for i in 0..n.max(0) as usize {
        // SAFETY: `i < n`, entries are valid devices until the list is freed, and names are
        // NUL-terminated strings owned by the library.
        let name = unsafe { CStr::from_ptr(ibv_get_device_name(*list.add(i))) };
        names.push(name.to_string_lossy().into_owned());
    }
    // SAFETY: frees the list returned above, once.
    unsafe { ibv_free_device_list(list) };
    if names.is_empty() {
        return Err("no RDMA devices (the device list is empty; see rxe-setup/README.md)".into());
    }
    Ok(names)
}

/// An rdma_cm event channel.
pub struct EventChannel {
    raw: *mut rdma_event_channel,
}

/// What happened on an rdma_cm identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    AddrResolved,
    RouteResolved,
    ConnectRequest,
    Established,
    Disconnected,
    Rejected,
    /// Anything else: errors (address, route, connect, unreachable), device removal.
    Other(u32),
}

/// One event, copied out of librdmacm's buffer (which is acknowledged at once).
pub struct CmEvent {
    pub kind: EventKind,
    pub status: i32,
    /// The token of the identifier the event is about (0 unless set with `set_token`).
    pub token: u64,
    /// For `ConnectRequest`: the new identifier, now owned by the caller.
    pub new_id: Option<CmId>,
    /// The peer's private data (connect request or accept).
    pub private: Vec<u8>,
    pub name: String,
}

impl EventChannel {
    pub fn new() -> io::Result<EventChannel> {
        // SAFETY: plain constructor; NULL means failure with errno set.
        let raw = unsafe { rdma_create_event_channel() };
        if raw.is_null() {
            return Err(os_err("rdma_create_event_channel"));
        }
        let ch = EventChannel { raw };
        let fd = ch.fd();
        // SAFETY: fcntl on the channel's own descriptor, which it keeps open.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        // SAFETY: as above.
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(os_err("fcntl on the rdma_cm channel"));
        }
        Ok(ch)
    }

    /// Readable when an event waits.
    pub fn fd(&self) -> RawFd {
        // SAFETY: `raw` is a live channel for `self`'s life.
        unsafe { (*self.raw).fd }
    }

    /// The next event, if one waits (never blocks).
    pub fn next(&self) -> io::Result<Option<CmEvent>> {
        let mut ev: *mut rdma_cm_event = ptr::null_mut();
        // SAFETY: the channel is live; on success `ev` points at an event we must ack.
        if unsafe { rdma_get_cm_event(self.raw, &mut ev) } != 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock => Ok(None),
                _ => Err(io::Error::new(e.kind(), format!("rdma_get_cm_event: {e}"))),
            };
        }
        // SAFETY: `ev` is valid until acked below; the fields read are plain data, and the
        // private data is `private_data_len` bytes long when non-null.
        let out = unsafe {
            let e = &*ev;
            let kind = match e.event {
                rdma_cm_event_type::RDMA_CM_EVENT_ADDR_RESOLVED => EventKind::AddrResolved,
                rdma_cm_event_type::RDMA_CM_EVENT_ROUTE_RESOLVED => EventKind::RouteResolved,
                rdma_cm_event_type::RDMA_CM_EVENT_CONNECT_REQUEST => EventKind::ConnectRequest,
                rdma_cm_event_type::RDMA_CM_EVENT_ESTABLISHED => EventKind::Established,
                rdma_cm_event_type::RDMA_CM_EVENT_DISCONNECTED => EventKind::Disconnected,
                rdma_cm_event_type::RDMA_CM_EVENT_REJECTED => EventKind::Rejected,
                other => EventKind::Other(other),
            };
            let conn = &e.param.conn;
            let private = if conn.private_data.is_null() {
                Vec::new()
            } else {
                let p = conn.private_data.cast::<u8>();
                std::slice::from_raw_parts(p, conn.private_data_len as usize).to_vec()
            };
            let name = CStr::from_ptr(rdma_event_str(e.event)).to_string_lossy().into_owned();
            let new_id = (kind == EventKind::ConnectRequest).then(|| CmId {
                raw: e.id,
                qp: false,
                send_sge: 1,
            });
            let token = if kind == EventKind::ConnectRequest || e.id.is_null() {
                0
            } else {
                (*e.id).context as u64
            };
            CmEvent { kind, status: e.status, token, new_id, private, name }
        };
        // SAFETY: acknowledges the event obtained above, once; nothing read from it is used
        // after this (the new identifier is not freed by the ack).
        unsafe { rdma_ack_cm_event(ev) };
        Ok(Some(out))
    }
}

impl Drop for EventChannel {
    fn drop(&mut self) {
        // SAFETY: every identifier on the channel was destroyed before (owners drop their
        // `CmId`s first); the channel is destroyed once.
        unsafe { rdma_destroy_event_channel(self.raw) };
    }
}

/// An rdma_cm identifier and, once created, its RC queue pair.
pub struct CmId {
    raw: *mut rdma_cm_id,
    qp: bool,
    /// Scatter entries a send work request may carry on this queue pair (set when it is made).
    send_sge: usize,
}

fn sockaddr_in(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*addr.ip()).to_be() },
        sin_zero: [0; 8],
    }
}

/// What one connection's queue pair is sized for.
#[derive(Debug, Clone, Copy)]
pub struct QpCaps {
    pub send_wr: u32,
    pub recv_wr: u32,
}

/// One work completion, decoded.
#[derive(Debug, Clone, Copy, Default)]
pub struct Wc {
    pub wr_id: u64,
    pub ok: bool,
    pub status: u32,
    /// Immediate data (host order) of a received WRITE/SEND WITH IMMEDIATE.
    pub imm: Option<u32>,
    /// A received RDMA WRITE WITH IMMEDIATE (else, with `imm`, a SEND WITH IMMEDIATE).
    pub write_imm: bool,
}

impl CmId {
    pub fn new(ch: &EventChannel) -> io::Result<CmId> {
        let mut raw = ptr::null_mut();
        // SAFETY: the channel is live; `raw` receives a new identifier owned by `CmId`.
        let rc = unsafe {
            rdma_create_id(ch.raw, &mut raw, ptr::null_mut(), rdma_port_space::RDMA_PS_TCP)
        };
        if rc != 0 {
            return Err(os_err("rdma_create_id"));
        }
        Ok(CmId { raw, qp: false, send_sge: 1 })
    }

    /// Binds to `addr` (port 0: any) and listens; returns the port.
    pub fn listen(&mut self, addr: SocketAddrV4, backlog: i32) -> io::Result<u16> {
        let mut sa = sockaddr_in(addr);
        // SAFETY: `sa` is a valid sockaddr_in for the call's duration.
        let rc = unsafe { rdma_bind_addr(self.raw, (&mut sa as *mut libc::sockaddr_in).cast()) };
        if rc != 0 {
            return Err(os_err(&format!("rdma_bind_addr {addr}")));
        }
        // SAFETY: the identifier is bound.
        if unsafe { rdma_listen(self.raw, backlog) } != 0 {
            return Err(os_err("rdma_listen"));
        }
        // SAFETY: the identifier is bound; the port comes back in network order.
        Ok(u16::from_be(unsafe { rdma_get_src_port(self.raw) }))
    }

    /// Starts resolving `dst` (answered by an `AddrResolved` event).
    pub fn resolve_addr(&mut self, dst: SocketAddrV4, timeout_ms: i32) -> io::Result<()> {
        let mut sa = sockaddr_in(dst);
        // SAFETY: `sa` is valid for the call; no source address is given.
        let rc = unsafe {
            rdma_resolve_addr(
                self.raw,
                ptr::null_mut(),
                (&mut sa as *mut libc::sockaddr_in).cast(),
                timeout_ms,
            )
        };
        if rc != 0 {
            return Err(os_err(&format!("rdma_resolve_addr {dst}")));
        }
        Ok(())
    }

    /// Starts resolving the route (answered by a `RouteResolved` event).
    pub fn resolve_route(&mut self, timeout_ms: i32) -> io::Result<()> {
        // SAFETY: the address is resolved (the caller waited for `AddrResolved`).
        if unsafe { rdma_resolve_route(self.raw, timeout_ms) } != 0 {
            return Err(os_err("rdma_resolve_route"));
        }
        Ok(())
    }

    /// Tags the identifier so its events can be told apart (`CmEvent::token`).
    pub fn set_token(&mut self, token: u64) {
        // SAFETY: `context` is a field the library hands back untouched.
        unsafe { (*self.raw).context = token as *mut libc::c_void };
    }

    fn verbs(&self) -> io::Result<*mut ibv_context> {
        // SAFETY: reads a field of a live identifier.
        let ctx = unsafe { (*self.raw).verbs };
        if ctx.is_null() {
            return Err(io::Error::other("rdma_cm identifier has no device yet"));
        }
        Ok(ctx)
    }

    /// Creates the RC queue pair, both directions completing on `cq`, with as many send
    /// scatter entries as the device allows, up to [`SGE_MAX`].
    pub fn create_qp(&mut self, pd: &Pd, cq: &Cq, caps: QpCaps) -> io::Result<()> {
        let ctx = self.verbs()?;
        // SAFETY: ibv_device_attr is plain old data; all-zero is valid before the query.
        let mut dev: ibv_device_attr = unsafe { std::mem::zeroed() };
        // SAFETY: a live device context, and an attribute struct the call fills.
        check(unsafe { ibv_query_device(ctx, &mut dev) }, "ibv_query_device")?;
        let sge = (dev.max_sge.max(1) as usize).min(SGE_MAX);
        // SAFETY: ibv_qp_init_attr is plain old data; all-zero is valid before the fields.
        let mut attr: ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        attr.send_cq = cq.raw;
        attr.recv_cq = cq.raw;
        attr.qp_type = ibv_qp_type::IBV_QPT_RC;
        attr.cap.max_send_wr = caps.send_wr;
        attr.cap.max_recv_wr = caps.recv_wr;
        attr.cap.max_send_sge = sge as u32;
        attr.cap.max_recv_sge = 1;
        // SAFETY: the PD and CQ belong to the identifier's device and outlive the QP (callers
        // drop the `CmId` first).
        if unsafe { rdma_create_qp(self.raw, pd.raw, &mut attr) } != 0 {
            return Err(os_err("rdma_create_qp"));
        }
        self.qp = true;
        self.send_sge = sge;
        Ok(())
    }

    fn conn_param(private: &[u8]) -> rdma_conn_param {
        assert!(private.len() <= 56, "rdma_cm private data is at most 56 bytes");
        // SAFETY: rdma_conn_param is plain old data; all-zero is valid before the fields.
        let mut p: rdma_conn_param = unsafe { std::mem::zeroed() };
        p.private_data = private.as_ptr().cast();
        p.private_data_len = private.len() as u8;
        p.responder_resources = 1;
        p.initiator_depth = 1;
        p.retry_count = 7;
        // 7 = retry forever when the receiver has no receive posted (RNR): a peer that is
        // slow to repost is waited for, never failed.
        p.rnr_retry_count = 7;
        p
    }

    pub fn connect(&mut self, private: &[u8]) -> io::Result<()> {
        let mut p = Self::conn_param(private);
        // SAFETY: `p` and the private data it points at live for the call.
        if unsafe { rdma_connect(self.raw, &mut p) } != 0 {
            return Err(os_err("rdma_connect"));
        }
        Ok(())
    }

    pub fn accept(&mut self, private: &[u8]) -> io::Result<()> {
        let mut p = Self::conn_param(private);
        // SAFETY: as in `connect`.
        if unsafe { rdma_accept(self.raw, &mut p) } != 0 {
            return Err(os_err("rdma_accept"));
        }
        Ok(())
    }

    /// Scatter entries one send work request may carry on this identifier's queue pair.
    pub fn send_sge(&self) -> usize {
        self.send_sge
    }

    /// Moves the identifier's events to `ch` (a connection request handed from the listener's
    /// thread to the thread that will serve it).
    pub fn migrate(&mut self, ch: &EventChannel) -> io::Result<()> {
        // SAFETY: both are live; librdmacm moves the identifier and its pending events.
        if unsafe { rdma_migrate_id(self.raw, ch.raw) } != 0 {
            return Err(os_err("rdma_migrate_id"));
        }
        Ok(())
    }

    pub fn reject(&mut self, private: &[u8]) {
        // SAFETY: the private data lives for the call; failure leaves nothing to clean up.
        unsafe { rdma_reject(self.raw, private.as_ptr().cast(), private.len() as u8) };
    }

    pub fn disconnect(&mut self) {
        // SAFETY: a live identifier; disconnecting twice or before connecting just fails.
        unsafe { rdma_disconnect(self.raw) };
    }

    fn qp_raw(&self) -> *mut ibv_qp {
        assert!(self.qp, "no queue pair yet");
        // SAFETY: reads a field of a live identifier that has a QP.
        unsafe { (*self.raw).qp }
    }

    /// Posts one receive without buffers (completions of WRITE/SEND WITH IMMEDIATE need one).
    pub fn post_recv(&self, wr_id: u64) -> io::Result<()> {
        let mut wr =
            ibv_recv_wr { wr_id, next: ptr::null_mut(), sg_list: ptr::null_mut(), num_sge: 0 };
        let mut bad = ptr::null_mut();
        // SAFETY: the QP is live; the WR has no scatter entries, so no memory is referenced.
        check(unsafe { ibv_post_recv(self.qp_raw(), &mut wr, &mut bad) }, "ibv_post_recv")
    }

    /// Posts chained RDMA WRITEs, each gathering `scratch`'s scatter entries `range` into the
    /// peer's memory at `remote_addr` under `rkey`, the last one WITH IMMEDIATE `imm`; all
    /// signaled, tagged `wr_id`. Each write takes at most [`SGE_MAX`] entries.
    pub fn post_gather_writes(
        &self,
        scratch: &mut GatherScratch,
        writes: impl ExactSizeIterator<Item = (u64, std::ops::Range<usize>)>,
        rkey: u32,
        imm: u32,
        wr_id: u64,
    ) -> io::Result<()> {
        assert!(writes.len() > 0);
        let GatherScratch { sges, wrs } = scratch;
        wrs.clear();
        // SAFETY: ibv_send_wr is plain old data; all-zero is valid before the fields.
        wrs.resize_with(writes.len(), || unsafe { std::mem::zeroed() });
        let (n, base, sge_base) = (writes.len(), wrs.as_mut_ptr(), sges.as_mut_ptr());
        for (i, (remote_addr, range)) in writes.enumerate() {
            assert!(!range.is_empty() && range.len() <= SGE_MAX && range.end <= sges.len());
            let wr = &mut wrs[i];
            wr.wr_id = wr_id;
            // SAFETY: `range.start < sges.len()`, inside `sges`.
            wr.sg_list = unsafe { sge_base.add(range.start) };
            wr.num_sge = range.len() as i32;
            wr.send_flags = ibv_send_flags::IBV_SEND_SIGNALED.0;
            wr.wr.rdma = rdma_t { remote_addr, rkey };
            if i + 1 < n {
                wr.opcode = ibv_wr_opcode::IBV_WR_RDMA_WRITE;
                // SAFETY: `i + 1 < n`, inside `wrs`.
                wr.next = unsafe { base.add(i + 1) };
            } else {
                wr.opcode = ibv_wr_opcode::IBV_WR_RDMA_WRITE_WITH_IMM;
                wr.imm_data_invalidated_rkey_union.imm_data = imm.to_be();
            }
        }
        let mut bad = ptr::null_mut();
        // SAFETY: the chain and its scatter lists live for the call; every entry lies inside
        // a registration (checked by `GatherScratch::add`), whose memory stays mapped until
        // it is dropped, which happens after the queue pair is destroyed.
        check(unsafe { ibv_post_send(self.qp_raw(), base, &mut bad) }, "ibv_post_send")
    }

    /// Posts a zero-length SEND WITH IMMEDIATE `imm` (no memory is referenced).
    pub fn post_send_imm(&self, imm: u32, wr_id: u64) -> io::Result<()> {
        // SAFETY: ibv_send_wr is plain old data; all-zero is valid before the fields.
        let mut wr: ibv_send_wr = unsafe { std::mem::zeroed() };
        wr.wr_id = wr_id;
        wr.opcode = ibv_wr_opcode::IBV_WR_SEND_WITH_IMM;
        wr.send_flags = ibv_send_flags::IBV_SEND_SIGNALED.0;
        wr.imm_data_invalidated_rkey_union.imm_data = imm.to_be();
        let mut bad = ptr::null_mut();
        // SAFETY: the WR lives for the call and references no memory.
        check(unsafe { ibv_post_send(self.qp_raw(), &mut wr, &mut bad) }, "ibv_post_send")
    }
}

impl Drop for CmId {
    fn drop(&mut self) {
        // SAFETY: the QP (if any) is destroyed before its identifier, each once; the CQ and PD
        // it used are still alive (owners drop identifiers first).
        unsafe {
            if self.qp {
                rdma_destroy_qp(self.raw);
            }
            rdma_destroy_id(self.raw);
        }
    }
}

/// A connection request's identifier (no queue pair yet) on its way to another thread: the
/// listener's thread hands it to the shard that will serve it.
pub struct MovedId(CmId);

// SAFETY: librdmacm identifiers are not tied to a thread (the library locks its own state),
// and this moves the sole owner: nothing on the sending thread uses the identifier afterwards.
unsafe impl Send for MovedId {}

impl MovedId {
    pub fn new(id: CmId) -> MovedId {
        assert!(!id.qp, "only identifiers without a queue pair move");
        MovedId(id)
    }

    pub fn into_inner(self) -> CmId {
        self.0
    }
}

impl std::fmt::Debug for MovedId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MovedId")
    }
}

/// A protection domain on a connection's device.
pub struct Pd {
    raw: *mut ibv_pd,
}

impl Pd {
    pub fn new(id: &CmId) -> io::Result<Pd> {
        // SAFETY: the device context is live while the identifier is.
        let raw = unsafe { ibv_alloc_pd(id.verbs()?) };
        if raw.is_null() {
            return Err(os_err("ibv_alloc_pd"));
        }
        Ok(Pd { raw })
    }
}

impl Drop for Pd {
    fn drop(&mut self) {
        // SAFETY: every MR and QP of the PD is gone (owners drop them first).
        unsafe { ibv_dealloc_pd(self.raw) };
    }
}

/// A protection domain shared by every thread serving connections on one device, with memory
/// registered on it that any of them may write from (the server's message memory). Each
/// chunk is registered once for the process, however many threads use it.
pub struct SharedPd {
    // Drop order: the registrations, then the PD (every queue pair on it is gone by then: its
    // users hold this by `Arc`).
    sources: Vec<Mr>,
    pd: Pd,
}

// SAFETY: libibverbs objects may be used from any thread (the library serialises what needs
// it); the registrations here hold only `Send + Sync` owners, and nothing in this value changes
// after it is made, so sharing it between threads adds no data race.
unsafe impl Send for SharedPd {}
// SAFETY: as above.
unsafe impl Sync for SharedPd {}

impl SharedPd {
    /// A PD on `id`'s device with every pin registered on it; a pin that cannot be registered
    /// (the locked-memory limit, say) is left out, and the first such error is returned with
    /// the rest.
    pub fn new(
        id: &CmId,
        pins: Vec<Box<dyn Pinned + Send + Sync>>,
    ) -> io::Result<(SharedPd, Option<io::Error>)> {
        let pd = Pd::new(id)?;
        let (mut sources, mut first_err) = (Vec::new(), None);
        for p in pins {
            match Mr::register_pinned(&pd, p) {
                Ok(mr) => sources.push(mr),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        Ok((SharedPd { sources, pd }, first_err))
    }

    pub fn pd(&self) -> &Pd {
        &self.pd
    }

    /// The registered memory, by index.
    pub fn sources(&self) -> &[Mr] {
        &self.sources
    }
}

/// A completion queue with its own completion channel, for sleeping until a completion.
pub struct Cq {
    raw: *mut ibv_cq,
    channel: *mut ibv_comp_channel,
    /// Events taken from the channel and not yet acknowledged.
    unacked: u32,
}

impl Cq {
    pub fn new(id: &CmId, entries: i32) -> io::Result<Cq> {
        let ctx = id.verbs()?;
        // SAFETY: the device context is live.
        let channel = unsafe { ibv_create_comp_channel(ctx) };
        if channel.is_null() {
            return Err(os_err("ibv_create_comp_channel"));
        }
        // SAFETY: as above; the channel outlives the CQ (destroyed after it in Drop).
        let raw = unsafe { ibv_create_cq(ctx, entries, ptr::null_mut(), channel, 0) };
        if raw.is_null() {
            let e = os_err("ibv_create_cq");
            // SAFETY: the channel has no CQ; destroyed once.
            unsafe { ibv_destroy_comp_channel(channel) };
            return Err(e);
        }
        // SAFETY: fcntl on the channel's own descriptor.
        unsafe {
            let fd = (*channel).fd;
            let flags = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
        Ok(Cq { raw, channel, unacked: 0 })
    }

    /// Readable after `arm` once a completion arrives.
    pub fn fd(&self) -> RawFd {
        // SAFETY: reads a field of the live channel.
        unsafe { (*self.channel).fd }
    }

    /// Asks for one event on the channel at the next completion.
    pub fn arm(&self) -> io::Result<()> {
        // SAFETY: the CQ is live.
        check(unsafe { ibv_req_notify_cq(self.raw, 0) }, "ibv_req_notify_cq")
    }

    /// Takes any events waiting on the channel (never blocks), so its fd stops being readable.
    pub fn drain_events(&mut self) {
        loop {
            let (mut cq, mut ctx) = (ptr::null_mut(), ptr::null_mut());
            // SAFETY: the channel is non-blocking; on success the event names our CQ.
            if unsafe { ibv_get_cq_event(self.channel, &mut cq, &mut ctx) } != 0 {
                break;
            }
            self.unacked += 1;
        }
        if self.unacked >= 64 {
            // SAFETY: acknowledges exactly the events taken above (acks are counted, and a CQ
            // cannot be destroyed with events unacknowledged).
            unsafe { ibv_ack_cq_events(self.raw, self.unacked) };
            self.unacked = 0;
        }
    }

    /// Polls up to `out.len()` completions; returns how many were written.
    pub fn poll(&self, out: &mut [Wc]) -> io::Result<usize> {
        const BATCH: usize = 32;
        // SAFETY: ibv_wc is plain old data; the array is written by the provider.
        let mut wcs: [ibv_wc; BATCH] = unsafe { std::mem::zeroed() };
        let want = out.len().min(BATCH) as i32;
        // SAFETY: `wcs` has room for `want` entries.
        let n = unsafe { ibv_poll_cq(self.raw, want, wcs.as_mut_ptr()) };
        if n < 0 {
            return Err(io::Error::other("ibv_poll_cq failed"));
        }
        for (o, w) in out.iter_mut().zip(&wcs[..n as usize]) {
            let with_imm = w.wc_flags & ibv_wc_flags::IBV_WC_WITH_IMM.0 != 0;
            *o = Wc {
                wr_id: w.wr_id,
                ok: w.status == ibv_wc_status::IBV_WC_SUCCESS,
                status: w.status,
                // SAFETY: the union holds immediate data when IBV_WC_WITH_IMM is set.
                imm: with_imm
                    .then(|| u32::from_be(unsafe { w.imm_data_invalidated_rkey_union.imm_data })),
                write_imm: w.opcode == ibv_wc_opcode::IBV_WC_RECV_RDMA_WITH_IMM,
            };
        }
        Ok(n as usize)
    }
}

impl Drop for Cq {
    fn drop(&mut self) {
        // SAFETY: every QP using the CQ is destroyed (owners drop them first); events taken are
        // acknowledged before the CQ is destroyed, and the channel after it; each once.
        unsafe {
            if self.unacked > 0 {
                ibv_ack_cq_events(self.raw, self.unacked);
            }
            ibv_destroy_cq(self.raw);
            ibv_destroy_comp_channel(self.channel);
        }
    }
}

/// Which ring of a region a registration covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingOf {
    /// The receive ring (`c2s` in the region's terms): written by the peer.
    Receive,
    /// The staging ring (`s2c`): read by the local NIC for outgoing writes.
    Staging,
}

/// Scatter entries and work requests for `post_gather_writes`, kept by their owner so a post
/// allocates nothing once they have grown.
#[derive(Default)]
pub struct GatherScratch {
    sges: Vec<ibv_sge>,
    wrs: Vec<ibv_send_wr>,
}

impl GatherScratch {
    pub fn clear(&mut self) {
        self.sges.clear();
    }

    /// Adds the scatter entry `[addr, addr + len)`, which must lie inside `mr`.
    pub fn add(&mut self, mr: &Mr, addr: u64, len: u32) {
        assert!(mr.covers(addr, len as usize), "scatter entry outside its registration");
        self.sges.push(ibv_sge { addr, length: len, lkey: mr.lkey() });
    }

    /// Scatter entries added since `clear`.
    pub fn len(&self) -> usize {
        self.sges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sges.is_empty()
    }
}

/// Memory other than a ring that a registration may cover (the server's message memory).
///
/// # Safety
/// `span` must return the same span every time, and it must stay mapped, and not move, for as
/// long as the value lives.
pub unsafe trait Pinned {
    fn span(&self) -> (*const u8, usize);
}

/// What keeps a registration's memory mapped.
enum Keep {
    Region(#[allow(dead_code)] Rc<Region>),
    Pinned(#[allow(dead_code)] Box<dyn Pinned + Send + Sync>),
}

/// Registered memory: one ring's first mapping, or pinned memory. Holds what keeps it mapped,
/// so the memory stays mapped as long as the registration exists.
pub struct Mr {
    raw: *mut ibv_mr,
    addr: u64,
    len: usize,
    _keep: Keep,
}

impl Mr {
    /// Registers one ring of `region`, remote-writable for the receive ring.
    pub fn register(pd: &Pd, region: &Rc<Region>, ring: RingOf) -> io::Result<Mr> {
        let mut access = ibv_access_flags::IBV_ACCESS_LOCAL_WRITE.0;
        let ptr = match ring {
            RingOf::Receive => {
                access |= ibv_access_flags::IBV_ACCESS_REMOTE_WRITE.0;
                region.c2s_ptr()
            }
            RingOf::Staging => region.s2c_ptr(),
        };
        let len = region.ring_bytes();
        // SAFETY: `[ptr, ptr + len)` is one ring's first mapping, kept mapped by the `Rc`
        // this registration holds until it is deregistered.
        let raw = unsafe { ibv_reg_mr(pd.raw, ptr.cast(), len, access as i32) };
        if raw.is_null() {
            return Err(os_err("ibv_reg_mr"));
        }
        Ok(Mr { raw, addr: ptr as u64, len, _keep: Keep::Region(region.clone()) })
    }

    /// Registers `owner`'s memory for the local NIC to read (the source of writes; no remote
    /// access).
    pub fn register_pinned(pd: &Pd, owner: Box<dyn Pinned + Send + Sync>) -> io::Result<Mr> {
        let (ptr, len) = owner.span();
        // SAFETY: `[ptr, ptr + len)` stays mapped while `owner` lives (`Pinned`'s contract),
        // which this registration holds until it is deregistered.
        let raw = unsafe { ibv_reg_mr(pd.raw, ptr as *mut _, len, 0) };
        if raw.is_null() {
            return Err(os_err("ibv_reg_mr"));
        }
        Ok(Mr { raw, addr: ptr as u64, len, _keep: Keep::Pinned(owner) })
    }

    /// Whether `[addr, addr + len)` lies inside this registration.
    pub fn covers(&self, addr: u64, len: usize) -> bool {
        addr >= self.addr && addr + len as u64 <= self.addr + self.len as u64
    }

    /// The registered memory's address (what a peer writes to).
    pub fn addr(&self) -> u64 {
        self.addr
    }

    pub fn lkey(&self) -> u32 {
        // SAFETY: reads a field of a live registration.
        unsafe { (*self.raw).lkey }
    }

    pub fn rkey(&self) -> u32 {
        // SAFETY: as above.
        unsafe { (*self.raw).rkey }
    }
}

impl Drop for Mr {
    fn drop(&mut self) {
        // SAFETY: deregisters once; no work request using it is outstanding (the QP is
        // destroyed first).
        unsafe { ibv_dereg_mr(self.raw) };
    }
}
