//! The shared-memory transport (`shm:///path/to/socket`): the native frame stream over two byte
//! rings in one memory-mapped file, for processes on one host. Both ends live here, so the
//! layout is written once: the server's shard loop uses [`Region`] and [`Ring`] directly;
//! clients, and the bench tool's raw baseline, use the blocking [`ShmStream`].
//!
//! Set-up: the client connects to the server's Unix socket. The server checks the peer's
//! credentials (`SO_PEERCRED`), creates the region (a memfd, in 2 MiB huge pages when the host
//! has enough free, else ordinary pages) and sends one handshake message carrying three
//! descriptors with `SCM_RIGHTS`: the region, the server's wake-up eventfd and the client's.
//! Only that peer ever holds the region's descriptor; the socket file's mode and the uid check
//! decide who may become a peer. The socket then carries no data; it stays open so each side
//! learns at once when the other process dies (EOF/HUP).
//!
//! ```text
//! region file:  [control: one page][c2s ring: cap bytes][s2c ring: cap bytes]
//! mapping:      [control][c2s][c2s again][s2c][s2c again]
//! ```
//! Each ring is mapped twice back to back, so any span of up to `cap` bytes that starts anywhere
//! in the ring is contiguous in memory: a frame is copied out of it in one piece even where it
//! wraps.
//!
//! Positions only grow: a ring's `tail` counts bytes written (stored by its producer, release),
//! `head` bytes consumed (stored by its consumer, release). Free space is
//! `cap - (tail - head)`; byte `p` lives at offset `p & (cap - 1)`.
//!
//! Wake-ups (Dekker, as between the server's shards): a side about to block sets its `waiting`
//! flag, fences (SeqCst) and looks at the rings once more before sleeping on its eventfd; a side
//! that made progress (wrote bytes, or consumed and so freed space) fences and, if the peer's
//! flag is set, writes the peer's eventfd. A busy-polling side never sets its flag, so its peer
//! never pays for the syscall.
//!
//! Trust: both processes map the rings read-write. The server reads only the span between its
//! head and the client's tail, bounds-checks every frame like bytes from a socket, and copies
//! what it keeps; a client that scribbles on bytes it already published can corrupt only its
//! own messages. Who may connect is therefore the whole access control: see `peer_uid`.
#![allow(unsafe_code)]

use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// First bytes of the handshake message and of the control block.
const MAGIC: [u8; 8] = *b"RDMQSHM1";
/// First bytes of a refusal (followed by the reason in UTF-8, no descriptors).
const REFUSED: [u8; 8] = *b"RDMQERR1";
/// Handshake message: magic, control bytes, ring bytes, huge-page flag.
const HANDSHAKE_LEN: usize = 32;
/// Descriptors in the handshake: region, server wake-up, client wake-up.
const HANDSHAKE_FDS: usize = 3;
/// Ordinary and huge page sizes: rings and the control block are whole pages of the mapping.
const PAGE: usize = 4096;
pub const HUGE_PAGE: usize = 2 << 20;
/// Smallest and largest ring: one frame header plus a small body at least; bounded so one
/// connection cannot ask for absurd amounts of memory.
pub const RING_BYTES_MIN: usize = 64 << 10;
pub const RING_BYTES_MAX: usize = 1 << 30;
/// A busy-polling reader checks its socket for a dead peer this often (in empty polls).
const BUSY_LIVENESS_EVERY: u32 = 4096;
/// Longest a blocking wait sleeps before re-checking: bounds the cost of a lost wake-up race
/// with a peer that died between the two.
const WAIT_SLICE: Duration = Duration::from_millis(100);

/// A value alone on its own 128-byte line (two cache lines, against adjacent-line prefetch).
#[repr(C, align(128))]
pub struct Line<T>(pub T);

/// The control block at the start of the region.
#[repr(C)]
pub struct Control {
    magic: Line<[u8; 8]>,
    ring_bytes: Line<u64>,
    /// Client-to-server ring: tail by the client, head by the server.
    pub c2s_tail: Line<AtomicU64>,
    pub c2s_head: Line<AtomicU64>,
    /// Server-to-client ring: tail by the server, head by the client.
    pub s2c_tail: Line<AtomicU64>,
    pub s2c_head: Line<AtomicU64>,
    /// Set by a side about to sleep on its eventfd.
    pub server_waiting: Line<AtomicU32>,
    pub client_waiting: Line<AtomicU32>,
}

const _: () = assert!(std::mem::size_of::<Control>() == 8 * 128);
const _: () = assert!(std::mem::size_of::<Control>() <= PAGE);
const _: () = assert!(RING_BYTES_MIN.is_power_of_two() && RING_BYTES_MIN.is_multiple_of(PAGE));
const _: () = assert!(HUGE_PAGE.is_multiple_of(PAGE));

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// One connection's mapped region: the control block and both rings.
pub struct Region {
    base: NonNull<u8>,
    map_len: usize,
    ctrl_bytes: usize,
    cap: usize,
    huge: bool,
    file: OwnedFd,
}

/// Whether `ring_bytes` is a ring size the protocol allows: a power of two from
/// [`RING_BYTES_MIN`] to [`RING_BYTES_MAX`].
pub fn ring_bytes_ok(ring_bytes: usize) -> bool {
    ring_bytes.is_power_of_two() && (RING_BYTES_MIN..=RING_BYTES_MAX).contains(&ring_bytes)
}

impl Region {
    /// Creates a region with rings of `ring_bytes` (a power of two, at least
    /// [`RING_BYTES_MIN`]) in a new memfd: in huge pages if `try_huge` and the kernel has them
    /// free, else in ordinary pages.
    pub fn create(ring_bytes: usize, try_huge: bool) -> io::Result<Region> {
        if !ring_bytes_ok(ring_bytes) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("shm ring of {ring_bytes} bytes: must be a power of two in 64 KiB..1 GiB"),
            ));
        }
        if try_huge && ring_bytes >= HUGE_PAGE {
            if let Ok(r) = Self::create_in(ring_bytes, true) {
                return Ok(r);
            }
        }
        Self::create_in(ring_bytes, false)
    }

    fn create_in(cap: usize, huge: bool) -> io::Result<Region> {
        let ctrl_bytes = if huge { HUGE_PAGE } else { PAGE };
        let flags =
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING | if huge { libc::MFD_HUGETLB } else { 0 };
        // SAFETY: memfd_create with a NUL-terminated constant name; the result is checked.
        let fd = cvt(unsafe { libc::memfd_create(c"rdmq-shm".as_ptr(), flags) })?;
        // SAFETY: `fd` was just created and is owned by nobody else.
        let file = unsafe { OwnedFd::from_raw_fd(fd) };
        let len = (ctrl_bytes + 2 * cap) as libc::off_t;
        // SAFETY: ftruncate on a descriptor we own.
        cvt(unsafe { libc::ftruncate(file.as_raw_fd(), len) })?;
        // Sealed at this size before any peer gets it: a peer that could shrink the file would
        // make this process's next access to the mapping a SIGBUS.
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        // SAFETY: fcntl on a memfd we own, created with MFD_ALLOW_SEALING.
        cvt(unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) })?;
        let region = Self::map(file, ctrl_bytes, cap, huge)?;
        // Touch every page now: a huge-page region without backing pages fails here (SIGBUS
        // later would kill the server), and no first message pays for page faults.
        if huge {
            // SAFETY: MADV_POPULATE_WRITE on our own mapping of the file; fails cleanly when
            // the huge pages are not there.
            let rc = unsafe {
                libc::madvise(
                    region.base.as_ptr().cast(),
                    ctrl_bytes + 4 * cap,
                    libc::MADV_POPULATE_WRITE, // Linux 5.14
                )
            };
            cvt(rc)?;
        }
        let ctrl = region.ctrl_ptr();
        // SAFETY: the control block is inside the mapping and nobody else has the file yet.
        unsafe {
            (*ctrl).magic.0 = MAGIC;
            (*ctrl).ring_bytes.0 = cap as u64;
        }
        Ok(region)
    }

    /// Maps a region received in a handshake and checks its control block.
    fn open(file: OwnedFd, ctrl_bytes: usize, cap: usize, huge: bool) -> io::Result<Region> {
        let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
        if !ring_bytes_ok(cap) {
            return Err(bad(format!("shm handshake: ring of {cap} bytes")));
        }
        if ctrl_bytes != if huge { HUGE_PAGE } else { PAGE } {
            return Err(bad(format!("shm handshake: control block of {ctrl_bytes} bytes")));
        }
        // SAFETY: stat is plain old data; fstat fills it for a descriptor we own.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `st` outlives the call.
        cvt(unsafe { libc::fstat(file.as_raw_fd(), &mut st) })?;
        if (st.st_size as u64) < (ctrl_bytes + 2 * cap) as u64 {
            return Err(bad(format!("shm region file of {} bytes is too small", st.st_size)));
        }
        let region = Self::map(file, ctrl_bytes, cap, huge)?;
        // SAFETY: the control block is inside the mapping; magic is written once, before the
        // server sent the descriptor.
        let magic = unsafe { (*region.ctrl_ptr()).magic.0 };
        // SAFETY: as above.
        let ring = unsafe { (*region.ctrl_ptr()).ring_bytes.0 };
        if magic != MAGIC || ring != cap as u64 {
            return Err(bad("shm region: bad control block".into()));
        }
        Ok(region)
    }

    /// Reserves address space and maps the control block and each ring twice into it.
    fn map(file: OwnedFd, ctrl_bytes: usize, cap: usize, huge: bool) -> io::Result<Region> {
        let map_len = ctrl_bytes + 4 * cap;
        // SAFETY: an anonymous PROT_NONE reservation; nothing is accessed through it.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(base.cast::<u8>()).expect("mmap returned non-null");
        // Owned from here on: Drop unmaps the whole reservation on any error below.
        let region = Region { base, map_len, ctrl_bytes, cap, huge, file };
        let pieces = [
            (0, 0, ctrl_bytes),
            (ctrl_bytes, ctrl_bytes, cap),
            (ctrl_bytes + cap, ctrl_bytes, cap),
            (ctrl_bytes + 2 * cap, ctrl_bytes + cap, cap),
            (ctrl_bytes + 3 * cap, ctrl_bytes + cap, cap),
        ];
        for (at, offset, len) in pieces {
            // SAFETY: MAP_FIXED inside our own reservation (`at + len <= map_len`), so no other
            // mapping is replaced; the file is at least `ctrl_bytes + 2 * cap` long.
            let p = unsafe {
                libc::mmap(
                    region.base.as_ptr().add(at).cast(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_FIXED,
                    region.file.as_raw_fd(),
                    offset as libc::off_t,
                )
            };
            if p == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(region)
    }

    fn ctrl_ptr(&self) -> *mut Control {
        self.base.as_ptr().cast()
    }

    pub fn ctrl(&self) -> &Control {
        // SAFETY: the control block is mapped for the region's life, aligned (page), and its
        // shared fields are atomics; `magic` and `ring_bytes` are not written after creation.
        unsafe { &*self.ctrl_ptr() }
    }

    /// Bytes per ring.
    pub fn ring_bytes(&self) -> usize {
        self.cap
    }

    /// The first mapping of the client-to-server ring (an RDMA peer's receive ring).
    pub fn c2s_ptr(&self) -> *mut u8 {
        // SAFETY: the ring's mappings start right after the control block, inside the mapping.
        unsafe { self.base.as_ptr().add(self.ctrl_bytes) }
    }

    /// The first mapping of the server-to-client ring (an RDMA sender's staging ring).
    pub fn s2c_ptr(&self) -> *mut u8 {
        // SAFETY: inside the mapping, after the c2s ring's two mappings.
        unsafe { self.base.as_ptr().add(self.ctrl_bytes + 2 * self.cap) }
    }

    /// The client-to-server ring.
    pub fn c2s(&self) -> Ring<'_> {
        let c = self.ctrl();
        // SAFETY: the c2s ring's two mappings start right after the control block.
        let data = unsafe { self.base.as_ptr().add(self.ctrl_bytes) };
        Ring { data, cap: self.cap, head: &c.c2s_head.0, tail: &c.c2s_tail.0 }
    }

    /// The server-to-client ring.
    pub fn s2c(&self) -> Ring<'_> {
        let c = self.ctrl();
        // SAFETY: the s2c ring's two mappings follow the c2s ring's.
        let data = unsafe { self.base.as_ptr().add(self.ctrl_bytes + 2 * self.cap) };
        Ring { data, cap: self.cap, head: &c.s2c_head.0, tail: &c.s2c_tail.0 }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the reservation made in `map`; no `Ring` or slice borrowed
        // from the region outlives it (they borrow `&self`).
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.map_len) };
    }
}

/// One direction of a region: a single-producer single-consumer byte ring.
pub struct Ring<'a> {
    data: *mut u8,
    cap: usize,
    head: &'a AtomicU64,
    tail: &'a AtomicU64,
}

impl Ring<'_> {
    /// Producer: bytes that can be written now (0 if the consumer's head is impossible).
    pub fn free(&self) -> usize {
        self.free_after(self.tail.load(Ordering::Relaxed)).unwrap_or(0)
    }

    /// Producer: copies as much of `src` as fits and publishes it; returns the bytes written.
    pub fn write(&self, src: &[u8]) -> usize {
        self.write_after(self.tail.load(Ordering::Relaxed), src).unwrap_or(0)
    }

    /// Consumer keeping its own head (a side that does not trust the shared copy): the bytes
    /// readable past `head`, or `None` if the producer's tail is impossible (behind `head`, or
    /// more than a ring ahead). The tail is read once; a caller reads only that span.
    pub fn readable_after(&self, head: u64) -> Option<usize> {
        let tail = self.tail.load(Ordering::Acquire);
        let n = tail.wrapping_sub(head);
        (n <= self.cap as u64).then_some(n as usize)
    }

    /// The producer's tail as last published (for telling new input from old).
    pub fn tail(&self) -> u64 {
        self.tail.load(Ordering::Acquire)
    }

    /// Copies `len` (at most a ring) bytes from position `pos` to `dst`.
    ///
    /// # Safety
    /// `dst` must be valid for `len` bytes of writes and must not point into this ring.
    unsafe fn copy_to(&self, pos: u64, dst: *mut u8, len: usize) {
        assert!(len <= self.cap, "copy of more than a ring");
        let at = pos as usize & (self.cap - 1);
        // SAFETY: `[at, at + len)` with `len <= cap` lies inside the double mapping, which lives
        // as long as `self`'s region; the caller vouches for `dst`.
        unsafe { std::ptr::copy_nonoverlapping(self.data.add(at), dst, len) };
    }

    /// Consumer: copies `dst.len()` (at most a ring) bytes from position `pos` into private
    /// memory. The bytes may be changed by the producer meanwhile if it breaks the protocol;
    /// the copy is then garbage, which the caller validates as such: no reference into shared
    /// memory ever leaves this module on that side.
    pub fn copy_out(&self, pos: u64, dst: &mut [u8]) {
        // SAFETY: `dst` is a private slice of exactly that length.
        unsafe { self.copy_to(pos, dst.as_mut_ptr(), dst.len()) };
    }

    /// Consumer keeping its own head: publishes it, giving the space before it back.
    pub fn set_head(&self, head: u64) {
        self.head.store(head, Ordering::Release);
    }

    /// Producer keeping its own tail: copies what fits after `tail` and publishes it; returns
    /// the bytes written, or `None` if the consumer's head is impossible (ahead of `tail`, or
    /// more than a ring behind).
    pub fn write_after(&self, tail: u64, src: &[u8]) -> Option<usize> {
        self.write_with_after(tail, |span| {
            let n = span.len().min(src.len());
            span[..n].copy_from_slice(&src[..n]);
            n
        })
    }

    /// Producer keeping its own tail: the free space, or `None` if the consumer's head is
    /// impossible.
    pub fn free_after(&self, tail: u64) -> Option<usize> {
        let used = tail.wrapping_sub(self.head.load(Ordering::Acquire));
        (used <= self.cap as u64).then(|| self.cap - used as usize)
    }

    /// As [`Ring::write_after`], letting `f` encode in place into the free span (contiguous,
    /// thanks to the double mapping) and report how much it wrote.
    pub fn write_with_after(&self, tail: u64, f: impl FnOnce(&mut [u8]) -> usize) -> Option<usize> {
        let head = self.head.load(Ordering::Acquire);
        let used = tail.wrapping_sub(head);
        if used > self.cap as u64 {
            return None;
        }
        let free = self.cap - used as usize;
        if free == 0 {
            return Some(0);
        }
        let at = tail as usize & (self.cap - 1);
        // SAFETY: `[at, at + free)` lies inside the double mapping; those bytes are past the
        // published tail, which only this side moves, so the consumer does not read them yet.
        // A peer that writes there anyway breaks the protocol and only garbles its own input.
        let span = unsafe { std::slice::from_raw_parts_mut(self.data.add(at), free) };
        let n = f(span);
        assert!(n <= free, "wrote past the free span");
        self.tail.store(tail + n as u64, Ordering::Release);
        Some(n)
    }

    /// Consumer: bytes written and not yet consumed (a whole ring if the tail is impossible:
    /// this side trusts its peer).
    pub fn readable(&self) -> usize {
        self.readable_after(self.head.load(Ordering::Relaxed)).unwrap_or(self.cap)
    }

    /// Consumer: the readable bytes, contiguous (the double mapping joins a wrapped span).
    /// Valid until `consume` gives them back, which needs `&mut self`.
    pub fn peek(&self) -> &[u8] {
        let n = self.readable();
        let at = self.head.load(Ordering::Relaxed) as usize & (self.cap - 1);
        // SAFETY: `[at, at + n)` with `n <= cap` is inside the double mapping, and those bytes
        // were published by the producer's release store (acquired in `readable`); the producer
        // does not write them again until `consume` moves the head past them.
        unsafe { std::slice::from_raw_parts(self.data.add(at), n) }
    }

    /// Consumer: gives `n` bytes back to the producer.
    pub fn consume(&mut self, n: usize) {
        let head = self.head.load(Ordering::Relaxed);
        assert!(n <= self.readable(), "consume past tail");
        self.head.store(head + n as u64, Ordering::Release);
    }

    /// Consumer: copies what is readable (up to `dst.len()`) into `dst` and gives it back;
    /// returns the count.
    pub fn read_into(&mut self, dst: &mut [u8]) -> usize {
        let src = self.peek();
        let n = src.len().min(dst.len());
        dst[..n].copy_from_slice(&src[..n]);
        if n > 0 {
            self.consume(n);
        }
        n
    }
}

/// Which end of a region a stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

/// What a server sends after accepting: the region and both wake-up eventfds.
pub fn send_handshake(
    sock: BorrowedFd<'_>,
    region: &Region,
    server_wake: BorrowedFd<'_>,
    client_wake: BorrowedFd<'_>,
) -> io::Result<()> {
    let mut msg = [0u8; HANDSHAKE_LEN];
    msg[..8].copy_from_slice(&MAGIC);
    msg[8..16].copy_from_slice(&(region.ctrl_bytes as u64).to_le_bytes());
    msg[16..24].copy_from_slice(&(region.cap as u64).to_le_bytes());
    msg[24] = region.huge as u8;
    let fds = [region.file.as_raw_fd(), server_wake.as_raw_fd(), client_wake.as_raw_fd()];
    send_with_fds(sock.as_raw_fd(), &msg, &fds)
}

/// Tells a connecting peer why it is refused (no descriptors), before closing.
pub fn send_refusal(sock: BorrowedFd<'_>, why: &str) {
    let mut msg = REFUSED.to_vec();
    msg.extend_from_slice(why.as_bytes());
    let _ = send_with_fds(sock.as_raw_fd(), &msg, &[]);
}

fn send_with_fds(sock: RawFd, msg: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let fd_bytes = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    let mut iov = [IoSlice::new(msg)];
    // SAFETY: msghdr is plain old data; all-zero is valid before the fields are set.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = iov.as_mut_ptr().cast();
    hdr.msg_iovlen = 1;
    if !fds.is_empty() {
        hdr.msg_control = cbuf.as_mut_ptr().cast();
        hdr.msg_controllen = space as _;
        // SAFETY: the control buffer is `space` bytes, aligned for cmsghdr, so the first header
        // and `fd_bytes` of data fit in it.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&hdr);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c).cast(), fds.len());
        }
    }
    // SAFETY: `hdr` points at live buffers for the call's duration.
    let n = unsafe { libc::sendmsg(sock, &hdr, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != msg.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short shm handshake write"));
    }
    Ok(())
}

/// Receives the handshake: the message and up to three descriptors.
fn recv_handshake(sock: RawFd) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; 4096];
    let fd_bytes = HANDSHAKE_FDS * std::mem::size_of::<RawFd>();
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    let mut iov = [libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() }];
    // SAFETY: msghdr is plain old data; all-zero is valid before the fields are set.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = iov.as_mut_ptr();
    hdr.msg_iovlen = 1;
    hdr.msg_control = cbuf.as_mut_ptr().cast();
    hdr.msg_controllen = space as _;
    // SAFETY: `hdr` points at live buffers for the call's duration; received descriptors are
    // close-on-exec.
    let n = unsafe { libc::recvmsg(sock, &mut hdr, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    let mut fds = Vec::new();
    // SAFETY: walks the control messages the kernel wrote into `cbuf`, within
    // `msg_controllen`; each SCM_RIGHTS payload holds whole descriptors, now owned by us.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&hdr);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<RawFd>();
                let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                    / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            c = libc::CMSG_NXTHDR(&hdr, c);
        }
    }
    Ok((buf, fds))
}

/// The server's reason for refusing a connection (the error inside the `io::Error` that
/// [`ShmStream::connect`] returns then), so callers can tell it from a local failure.
#[derive(Debug)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// What a server's handshake message says about the region it sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Handshake {
    ctrl_bytes: usize,
    cap: usize,
    huge: bool,
}

/// Decodes a handshake message that came with `fds` descriptors (a refusal, or anything else
/// than the expected 32 bytes with three descriptors, is an error saying so). The sizes are
/// checked when the region is mapped.
fn parse_handshake(msg: &[u8], fds: usize) -> io::Result<Handshake> {
    if msg.starts_with(&REFUSED) {
        let why = String::from_utf8_lossy(&msg[REFUSED.len()..]).into_owned();
        return Err(io::Error::new(io::ErrorKind::PermissionDenied, Refused(why)));
    }
    if msg.len() != HANDSHAKE_LEN || msg[..8] != MAGIC || fds != HANDSHAKE_FDS {
        let m = if msg.is_empty() {
            "the server closed the shm socket during the handshake".to_string()
        } else {
            format!("bad shm handshake ({} bytes, {fds} descriptors)", msg.len())
        };
        return Err(io::Error::new(io::ErrorKind::InvalidData, m));
    }
    let word = |at: usize| u64::from_le_bytes(msg[at..at + 8].try_into().expect("8 bytes"));
    Ok(Handshake { ctrl_bytes: word(8) as usize, cap: word(16) as usize, huge: msg[24] != 0 })
}

/// The uid of the process at the other end of a Unix socket.
pub fn peer_uid(sock: BorrowedFd<'_>) -> io::Result<u32> {
    // SAFETY: ucred is plain old data; all-zero is valid.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` outlive the call and `len` is its size.
    cvt(unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    })?;
    Ok(cred.uid)
}

/// This process's effective uid.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// A non-blocking, close-on-exec eventfd.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd(2) with constant flags; the result is checked.
    let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
    // SAFETY: `fd` was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds one to an eventfd; a saturated counter (EAGAIN) still means "awake".
pub fn signal(fd: BorrowedFd<'_>) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64 to an eventfd the caller keeps open.
    let _ = unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
}

/// The waker's side of the wake-up protocol: after progress, a full fence, then the eventfd is
/// written only if the other side said (`waiting`) it is about to sleep.
pub fn wake_if_waiting(waiting: &AtomicU32, fd: BorrowedFd<'_>) {
    fence(Ordering::SeqCst);
    if waiting.load(Ordering::Relaxed) != 0 {
        signal(fd);
    }
}

/// Resets an eventfd's counter (non-blocking).
fn drain(fd: BorrowedFd<'_>) {
    let mut v: u64 = 0;
    // SAFETY: reads at most 8 bytes into a live u64.
    let _ = unsafe { libc::read(fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
}

/// Waits until one of `fds` (at most two) is readable or hung up, or `timeout` passes (EINTR
/// counts as a wake-up). Returns which ones reported something.
pub(crate) fn wait_readable(fds: &[RawFd], timeout: Duration) -> io::Result<[bool; 2]> {
    assert!(fds.len() <= 2);
    let mut p = [libc::pollfd { fd: -1, events: libc::POLLIN, revents: 0 }; 2];
    for (slot, &fd) in p.iter_mut().zip(fds) {
        slot.fd = fd;
    }
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `p` and `ts` outlive the call (unused entries have fd -1, which poll ignores);
    // no signal mask is changed.
    let rc =
        unsafe { libc::ppoll(p.as_mut_ptr(), fds.len() as libc::nfds_t, &ts, std::ptr::null()) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted { Ok([false; 2]) } else { Err(e) };
    }
    Ok([p[0].revents != 0, p[1].revents != 0])
}

/// One end of a shared-memory connection, blocking, with an optional busy-poll mode: what a
/// client speaks the native protocol over, and what the bench tool's raw baseline uses.
pub struct ShmStream {
    region: Region,
    side: Side,
    sock: UnixStream,
    /// Woken by the peer.
    my_wake: OwnedFd,
    /// Written to wake the peer.
    peer_wake: OwnedFd,
    busy_poll: bool,
    /// The peer closed its socket (its process exited or it closed the connection).
    peer_gone: bool,
}

impl ShmStream {
    /// Connects to a server's shm socket and maps the region it hands over.
    pub fn connect(path: &Path) -> io::Result<ShmStream> {
        let sock = UnixStream::connect(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot connect to shm socket {}: {e}", path.display()),
            )
        })?;
        let (msg, mut fds) = recv_handshake(sock.as_raw_fd())?;
        let Handshake { ctrl_bytes, cap, huge } = parse_handshake(&msg, fds.len())?;
        let client_wake = fds.pop().expect("three");
        let server_wake = fds.pop().expect("three");
        let file = fds.pop().expect("three");
        let region = Region::open(file, ctrl_bytes, cap, huge)?;
        Ok(ShmStream {
            region,
            side: Side::Client,
            sock,
            my_wake: client_wake,
            peer_wake: server_wake,
            busy_poll: false,
            peer_gone: false,
        })
    }

    /// Accepts one connection on `listener` and acts as the server end (the bench tool's raw
    /// baseline: the same rings and wake-ups, no broker).
    pub fn accept(listener: &UnixListener, ring_bytes: usize) -> io::Result<ShmStream> {
        let (sock, _) = listener.accept()?;
        let region = Region::create(ring_bytes, true)?;
        let (server_wake, client_wake) = (eventfd()?, eventfd()?);
        send_handshake(sock.as_fd(), &region, server_wake.as_fd(), client_wake.as_fd())?;
        Ok(ShmStream {
            region,
            side: Side::Server,
            sock,
            my_wake: server_wake,
            peer_wake: client_wake,
            busy_poll: false,
            peer_gone: false,
        })
    }

    /// Spin instead of sleeping on the eventfd: lowest latency, one busy core.
    pub fn set_busy_poll(&mut self, on: bool) {
        self.busy_poll = on;
    }

    /// Bytes per ring: the largest frame the server accepts over this connection.
    pub fn ring_bytes(&self) -> usize {
        self.region.ring_bytes()
    }

    fn rings(&self) -> (Ring<'_>, Ring<'_>) {
        match self.side {
            Side::Client => (self.region.s2c(), self.region.c2s()),
            Side::Server => (self.region.c2s(), self.region.s2c()),
        }
    }

    fn flags(&self) -> (&AtomicU32, &AtomicU32) {
        let c = self.region.ctrl();
        match self.side {
            Side::Client => (&c.client_waiting.0, &c.server_waiting.0),
            Side::Server => (&c.server_waiting.0, &c.client_waiting.0),
        }
    }

    /// Wakes the peer if it said it is about to sleep.
    fn nudge(&self) {
        wake_if_waiting(self.flags().1, self.peer_wake.as_fd());
    }

    /// Writes as much of `src` as the ring has room for, without waiting.
    pub fn write_some(&mut self, src: &[u8]) -> usize {
        let n = self.rings().1.write(src);
        if n > 0 {
            self.nudge();
        }
        n
    }

    /// Copies readable bytes into `dst` without waiting; returns the count.
    pub fn read_now(&mut self, dst: &mut [u8]) -> usize {
        let n = self.rings().0.read_into(dst);
        if n > 0 {
            self.nudge();
        }
        n
    }

    /// Reads at least one byte, waiting until `deadline` (forever if `None`). `Ok(0)`: the peer
    /// closed and everything it wrote has been read. `TimedOut`: the deadline passed.
    pub fn read_until(&mut self, dst: &mut [u8], deadline: Option<Instant>) -> io::Result<usize> {
        self.wait_for(deadline, |s| s.rings().0.readable() > 0)?;
        Ok(self.read_now(dst)) // 0: the peer is gone and left nothing
    }

    /// Waits until the outgoing ring has room (or the deadline passes, or the peer is gone).
    pub fn wait_writable(&mut self, deadline: Option<Instant>) -> io::Result<()> {
        self.wait_for(deadline, |s| s.rings().1.free() > 0)?;
        if self.peer_gone {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "shm peer closed"));
        }
        Ok(())
    }

    /// Waits until `ready` holds or the peer is gone; `TimedOut` at the deadline.
    fn wait_for(
        &mut self,
        deadline: Option<Instant>,
        ready: impl Fn(&ShmStream) -> bool,
    ) -> io::Result<()> {
        wait_for(self, deadline, "shm", ready)
    }

    /// Sleeps on the eventfd and the socket for up to `timeout`; notes a closed peer.
    fn check_peer(&mut self, timeout: Duration) -> io::Result<()> {
        let fds = [self.my_wake.as_raw_fd(), self.sock.as_raw_fd()];
        if wait_readable(&fds, timeout)?[1] {
            let mut b = [0u8; 64];
            // The socket carries nothing after the handshake: readable means closed (0) or a
            // peer breaking the protocol; either way the connection is over.
            self.sock.set_nonblocking(true)?;
            match self.sock.read(&mut b) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                _ => self.peer_gone = true,
            }
        }
        Ok(())
    }

    /// The mapped region (tests use it to break the protocol on purpose).
    #[doc(hidden)]
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// The socket, for callers that want to poll it themselves.
    pub fn socket(&self) -> &UnixStream {
        &self.sock
    }
}

impl Wait for ShmStream {
    const BUSY_CHECK_EVERY: u32 = BUSY_LIVENESS_EVERY;

    fn peer_gone(&self) -> bool {
        self.peer_gone
    }

    fn busy_poll(&self) -> bool {
        self.busy_poll
    }

    fn liveness(&mut self) -> io::Result<()> {
        self.check_peer(Duration::ZERO)
    }

    /// Says this side is about to sleep (the peer then writes the eventfd after its next
    /// write); the fence orders it before the look at the ring that follows.
    fn arm(&mut self) -> io::Result<()> {
        self.flags().0.store(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        Ok(())
    }

    fn disarm(&mut self) {
        self.flags().0.store(0, Ordering::Relaxed);
        drain(self.my_wake.as_fd());
    }

    fn sleep(&mut self, slice: Duration) -> io::Result<()> {
        self.check_peer(slice)
    }
}

/// What a ring stream does at each step of the wait both transports share ([`wait_for`]).
pub(crate) trait Wait {
    /// Busy spins between two `liveness` checks.
    const BUSY_CHECK_EVERY: u32;
    /// Takes what the transport has without blocking (completions, say); an error ends the
    /// wait (the caller's next step reports it).
    fn poll(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn peer_gone(&self) -> bool;
    fn busy_poll(&self) -> bool;
    /// Notices a dead peer while busy-polling.
    fn liveness(&mut self) -> io::Result<()>;
    /// Asks to be woken by the peer's next write; `disarm` undoes it.
    fn arm(&mut self) -> io::Result<()>;
    fn disarm(&mut self) {}
    /// Sleeps until woken, the peer stirs, or `slice` passes.
    fn sleep(&mut self, slice: Duration) -> io::Result<()>;
}

/// Waits until `ready` holds or the peer is gone; `TimedOut` at the deadline. Busy-polling
/// spins (yielding, and checking liveness now and then); otherwise it arms, looks once more (a
/// write between the last look and the arming raises no wake-up), and sleeps in slices of at
/// most [`WAIT_SLICE`].
pub(crate) fn wait_for<W: Wait>(
    w: &mut W,
    deadline: Option<Instant>,
    what: &str,
    ready: impl Fn(&W) -> bool,
) -> io::Result<()> {
    let mut spins = 0u32;
    loop {
        if w.poll().is_err() || ready(w) || w.peer_gone() {
            return Ok(());
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return Err(io::Error::new(io::ErrorKind::TimedOut, format!("{what} read timed out")));
        }
        if w.busy_poll() {
            spins += 1;
            if spins.is_multiple_of(W::BUSY_CHECK_EVERY) {
                w.liveness()?;
            }
            std::thread::yield_now();
            continue;
        }
        w.arm()?;
        if w.poll().is_err() || ready(w) {
            w.disarm();
            continue;
        }
        let slice = deadline.map_or(WAIT_SLICE, |d| d.saturating_duration_since(now));
        let r = w.sleep(slice.min(WAIT_SLICE));
        w.disarm();
        r?;
    }
}

impl Read for ShmStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_until(buf, None)
    }
}

impl Write for ShmStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            let n = self.write_some(buf);
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            self.wait_writable(None)?;
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_wraps_contiguously_and_counts_space() {
        let region = Region::create(RING_BYTES_MIN, false).unwrap();
        let (tx, mut rx) = (region.c2s(), region.c2s());
        let cap = region.ring_bytes();
        // Move the positions close to the end, so the next write wraps.
        let filler = vec![7u8; cap - 10];
        assert_eq!(tx.write(&filler), cap - 10);
        assert_eq!(tx.free(), 10);
        rx.consume(cap - 10);
        assert_eq!(tx.free(), cap);
        let msg: Vec<u8> = (0..100u8).collect();
        assert_eq!(tx.write(&msg), 100);
        // The span wraps past the end of the ring but reads as one slice.
        assert_eq!(rx.peek(), &msg[..]);
        rx.consume(40);
        assert_eq!(rx.peek(), &msg[40..]);
        // Full: only what fits is written.
        let big = vec![1u8; cap];
        assert_eq!(tx.write(&big), cap - 60);
        assert_eq!(tx.free(), 0);
        assert_eq!(tx.write(b"x"), 0);
    }

    /// Seeded fuzz of the handshake decoder: random and mutated messages never panic, and what
    /// it accepts is exactly a 32-byte message with the magic and three descriptors.
    #[test]
    fn handshake_decoder_fuzz() {
        let mut good = MAGIC.to_vec();
        good.extend_from_slice(&(PAGE as u64).to_le_bytes());
        good.extend_from_slice(&(RING_BYTES_MIN as u64).to_le_bytes());
        good.extend_from_slice(&[0; 8]);
        let ok = parse_handshake(&good, 3).unwrap();
        assert_eq!(ok, Handshake { ctrl_bytes: PAGE, cap: RING_BYTES_MIN, huge: false });
        assert!(parse_handshake(&good, 2).is_err());
        let refused = [&REFUSED[..], b"uid 7 may not"].concat();
        let e = parse_handshake(&refused, 0).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("uid 7"));
        let mut rng = crate::mutate::Rng(0x2545_f491_4f6c_dd1d);
        for _ in 0..50_000 {
            let m = crate::mutate::mutate(&good, &mut rng, 64);
            let fds = (rng.next() % 4) as usize;
            if let Ok(h) = parse_handshake(&m, fds) {
                assert!(m.len() == HANDSHAKE_LEN && m[..8] == MAGIC && fds == 3);
                assert_eq!(h.huge, m[24] != 0);
            }
        }
    }

    #[test]
    fn the_region_file_is_sealed_against_resizing() {
        let region = Region::create(RING_BYTES_MIN, false).unwrap();
        let fd = region.file.as_raw_fd();
        // SAFETY: ftruncate on the region's own descriptor; it must fail (sealed).
        let rc = unsafe { libc::ftruncate(fd, 0) };
        assert_eq!(rc, -1, "a sealed memfd cannot shrink");
        assert_eq!(io::Error::last_os_error().raw_os_error(), Some(libc::EPERM));
        // SAFETY: as above, growing.
        let rc = unsafe { libc::ftruncate(fd, 1 << 30) };
        assert_eq!(rc, -1, "a sealed memfd cannot grow");
    }

    #[test]
    fn own_positions_refuse_impossible_peer_positions() {
        let region = Region::create(RING_BYTES_MIN, false).unwrap();
        let ring = region.c2s();
        let cap = region.ring_bytes() as u64;
        assert_eq!(ring.readable_after(0), Some(0));
        region.ctrl().c2s_tail.0.store(cap + 1, Ordering::Release);
        assert_eq!(ring.readable_after(0), None, "a tail more than a ring ahead");
        region.ctrl().c2s_tail.0.store(5, Ordering::Release);
        assert_eq!(ring.readable_after(10), None, "a tail behind the head");
        let tx = region.s2c();
        region.ctrl().s2c_head.0.store(100, Ordering::Release);
        assert_eq!(tx.write_after(50, b"x"), None, "a head ahead of the tail");
        region.ctrl().s2c_head.0.store(0, Ordering::Release);
        assert_eq!(tx.write_after(0, b"abc"), Some(3));
        let mut out = [0u8; 3];
        tx.copy_out(0, &mut out);
        assert_eq!(&out, b"abc");
    }

    #[test]
    fn refuses_bad_sizes() {
        assert!(Region::create(RING_BYTES_MIN + 1, false).is_err());
        assert!(Region::create(RING_BYTES_MIN / 2, false).is_err());
    }

    #[test]
    fn stream_round_trip_between_threads() {
        let dir = std::env::temp_dir().join(format!("rdmq-shm-unit-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("s.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let mut s = ShmStream::accept(&listener, RING_BYTES_MIN).unwrap();
            let mut buf = vec![0u8; 1000];
            let mut total = 0usize;
            // Echo 1 MiB back (more than the ring: exercises waiting on both sides).
            while total < 1 << 20 {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0);
                s.write_all(&buf[..n]).unwrap();
                total += n;
            }
        });
        let mut c = ShmStream::connect(&path).unwrap();
        let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 7 % 251) as u8).collect();
        let mut got = Vec::new();
        let mut sent = 0;
        let mut buf = vec![0u8; 4096];
        while got.len() < data.len() {
            if sent < data.len() {
                sent += c.write_some(&data[sent..(sent + 3000).min(data.len())]);
            }
            let n = c.read_now(&mut buf);
            got.extend_from_slice(&buf[..n]);
            if n == 0 && sent == data.len() {
                let n = c.read_until(&mut buf, Some(Instant::now() + Duration::from_secs(10)));
                got.extend_from_slice(&buf[..n.unwrap()]);
            }
        }
        assert_eq!(got, data);
        server.join().unwrap();
        // The server end is gone: reads end with 0 once the ring is empty.
        assert_eq!(
            c.read_until(&mut buf, Some(Instant::now() + Duration::from_secs(10))).unwrap(),
            0
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
