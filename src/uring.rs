//! The shard's io_uring: submission helpers and the provided-buffer ring that multishot receives
//! fill. One `Uring` per shard thread, never shared.
//!
//! Buffers the kernel may touch are leased: receive buffers belong to the kernel from the moment
//! they are in the buffer ring until a completion names them, and go back with [`Uring::recycle`];
//! send buffers are borrowed from their connection until the send completes (see [`Uring::send`]).
//! This is one of the modules allowed `unsafe`.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use io_uring::types::{BufRingEntry, Fd, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring};

/// Buffer group id of the shard's one provided-buffer ring.
const BUF_GROUP: u16 = 0;

/// One completion, copied out of the completion queue.
#[derive(Debug, Clone, Copy)]
pub struct Completion {
    pub user_data: u64,
    pub result: i32,
    pub flags: u32,
}

impl Completion {
    /// The provided buffer this completion filled, if any.
    pub fn buffer(&self) -> Option<u16> {
        cqueue::buffer_select(self.flags)
    }

    /// Whether a multishot operation stays armed after this completion.
    pub fn more(&self) -> bool {
        cqueue::more(self.flags)
    }
}

/// Provided buffers in a ring shared with the kernel (`IORING_REGISTER_PBUF_RING`).
struct BufRing {
    /// Ring of `entries` descriptors, page-aligned, mapped anonymously.
    ring: *mut BufRingEntry,
    ring_bytes: usize,
    entries: u16,
    tail: u16,
    buf_size: usize,
    data: Box<[u8]>,
}

pub struct Uring {
    ring: IoUring,
    bufs: BufRing,
}

impl Uring {
    /// `sq_entries` submission slots; `buf_count` receive buffers of `buf_size` bytes each.
    pub fn new(sq_entries: u32, buf_count: u16, buf_size: usize) -> io::Result<Uring> {
        assert!(buf_count.is_power_of_two(), "buffer ring size must be a power of two");
        let ring = IoUring::builder()
            .setup_coop_taskrun()
            .setup_single_issuer()
            .setup_cqsize(sq_entries * 4)
            .build(sq_entries)?;
        let ring_bytes = buf_count as usize * std::mem::size_of::<BufRingEntry>();
        // SAFETY: anonymous private mapping; the result is checked before use.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ring_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut bufs = BufRing {
            ring: base.cast(),
            ring_bytes,
            entries: buf_count,
            tail: 0,
            buf_size,
            data: vec![0u8; buf_count as usize * buf_size].into_boxed_slice(),
        };
        // SAFETY: the mapping lives as long as `bufs`, which `Uring` drops after `ring`
        // (field order), and the ring is unregistered when the io_uring is closed.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(base as u64, buf_count, BUF_GROUP, 0)?
        };
        for bid in 0..buf_count {
            bufs.push(bid);
        }
        bufs.publish();
        Ok(Uring { ring, bufs })
    }

    fn push(&mut self, entry: squeue::Entry) {
        loop {
            // SAFETY: every entry pushed here references memory whose owner keeps it alive until
            // its completion; the helpers below document each case.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
            // Submission queue full: hand what is queued to the kernel and retry.
            if let Err(e) = self.ring.submit() {
                assert!(e.raw_os_error() == Some(libc::EBUSY), "io_uring submit: {e}");
            }
        }
    }

    pub fn accept_multi(&mut self, listener: RawFd, user_data: u64) {
        let e = opcode::AcceptMulti::new(Fd(listener)).flags(libc::SOCK_CLOEXEC).build();
        self.push(e.user_data(user_data));
    }

    pub fn recv_multi(&mut self, fd: RawFd, user_data: u64) {
        let e = opcode::RecvMulti::new(Fd(fd), BUF_GROUP).build();
        self.push(e.user_data(user_data));
    }

    /// Sends `buf` on `fd`.
    ///
    /// # Safety
    /// `buf` must stay allocated and unmodified until the completion with `user_data` is reaped.
    pub unsafe fn send(&mut self, fd: RawFd, buf: &[u8], user_data: u64) {
        let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        let e = opcode::Send::new(Fd(fd), buf.as_ptr(), len).flags(libc::MSG_NOSIGNAL).build();
        self.push(e.user_data(user_data));
    }

    /// Writes the `iov_len` buffers described at `iov` to `fd` at `offset` (a journal segment).
    ///
    /// # Safety
    /// The iovecs and the memory they describe must stay allocated and unmodified until the
    /// completion with `user_data` is reaped.
    pub unsafe fn writev_at(
        &mut self,
        fd: RawFd,
        iov: *const libc::iovec,
        iov_len: u32,
        offset: u64,
        user_data: u64,
    ) {
        let e = opcode::Writev::new(Fd(fd), iov, iov_len).offset(offset).build();
        self.push(e.user_data(user_data));
    }

    /// `fdatasync(fd)`.
    pub fn fdatasync(&mut self, fd: RawFd, user_data: u64) {
        let e = opcode::Fsync::new(Fd(fd)).flags(io_uring::types::FsyncFlags::DATASYNC).build();
        self.push(e.user_data(user_data));
    }

    /// Reads an eventfd counter into `*dst`.
    ///
    /// # Safety
    /// `dst` must stay valid for writes until the completion with `user_data` is reaped.
    pub unsafe fn read_eventfd(&mut self, fd: RawFd, dst: *mut u64, user_data: u64) {
        let e = opcode::Read::new(Fd(fd), dst.cast(), 8).build();
        self.push(e.user_data(user_data));
    }

    /// One readiness notification when `fd` becomes readable.
    pub fn poll_in(&mut self, fd: RawFd, user_data: u64) {
        let e = opcode::PollAdd::new(Fd(fd), libc::POLLIN as u32).build();
        self.push(e.user_data(user_data));
    }

    /// Cancels every operation tagged `target`; its own completion carries `user_data`.
    pub fn cancel(&mut self, target: u64, user_data: u64) {
        let e = opcode::AsyncCancel::new(target).build();
        self.push(e.user_data(user_data));
    }

    pub fn close(&mut self, fd: RawFd, user_data: u64) {
        let e = opcode::Close::new(Fd(fd)).build();
        self.push(e.user_data(user_data));
    }

    /// Submits queued entries without waiting.
    pub fn submit(&mut self) -> io::Result<()> {
        match self.ring.submit() {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Submits and sleeps until a completion arrives or `timeout` passes.
    pub fn submit_and_wait(&mut self, timeout: Duration) -> io::Result<()> {
        let ts = Timespec::from(timeout);
        let args = SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR | libc::EBUSY)) => {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Moves up to `max` completions into `out`; returns how many.
    pub fn reap(&mut self, out: &mut Vec<Completion>, max: usize) -> usize {
        let mut cq = self.ring.completion();
        cq.sync();
        let mut n = 0;
        for cqe in cq.by_ref().take(max) {
            out.push(Completion {
                user_data: cqe.user_data(),
                result: cqe.result(),
                flags: cqe.flags(),
            });
            n += 1;
        }
        n
    }

    /// Whether completions are waiting, without a syscall.
    pub fn has_completions(&mut self) -> bool {
        let mut cq = self.ring.completion();
        cq.sync();
        !cq.is_empty()
    }

    /// The first `len` bytes of provided buffer `bid`, filled by the completion that named it.
    pub fn buffer(&self, bid: u16, len: usize) -> &[u8] {
        let at = bid as usize * self.bufs.buf_size;
        &self.bufs.data[at..at + len.min(self.bufs.buf_size)]
    }

    /// Returns buffer `bid` to the kernel once its bytes have been consumed.
    pub fn recycle(&mut self, bid: u16) {
        self.bufs.push(bid);
        self.bufs.publish();
    }
}

impl BufRing {
    fn push(&mut self, bid: u16) {
        assert!(bid < self.entries, "buffer id {bid} out of range");
        let idx = (self.tail & (self.entries - 1)) as usize;
        let addr = self.data.as_ptr() as u64 + (bid as usize * self.buf_size) as u64;
        // SAFETY: `idx < entries`, so the slot is inside the mapping; the kernel reads slots only
        // below the published tail, and this one is at or past it until `publish`.
        let entry = unsafe { &mut *self.ring.add(idx) };
        entry.set_addr(addr);
        entry.set_len(self.buf_size as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&mut self) {
        // SAFETY: the tail lives in the first entry's reserved field (the kernel's layout);
        // a release store makes the entries written above visible before the new tail.
        unsafe {
            let tail = BufRingEntry::tail(self.ring) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: the mapping was created in `Uring::new` with this length and the io_uring that
        // used it is already closed (field order in `Uring`).
        unsafe { libc::munmap(self.ring.cast(), self.ring_bytes) };
    }
}
