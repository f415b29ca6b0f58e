//! The journal's write ring: one per shard, in 2 MiB huge pages when the host has them reserved
//! (`MAP_HUGETLB`), otherwise in ordinary pages with transparent-huge-page advice and one warning.
//!
//! Positions only grow; a byte's offset is `position & (capacity - 1)`. A claim reserves a
//! contiguous span (a batch is never split across the wrap: the tail of the ring is skipped
//! instead), the caller writes the batch in place, and the span is leased to the kernel until
//! its write completes; `release` frees spans in claim order, so `released <= claimed` always.
//! This is one of the modules allowed `unsafe` (it maps memory the kernel writes from).
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};

/// Huge page size on x86-64 and arm64 with 4 KiB base pages.
pub const HUGE_PAGE: usize = 2 << 20;

static WARNED: AtomicBool = AtomicBool::new(false);

pub struct Ring {
    base: *mut u8,
    capacity: usize,
    /// Next position to claim.
    claimed: u64,
    /// Everything below is free again.
    released: u64,
    /// Claims not yet released, in order: (start, end, done).
    claims: VecDeque<(u64, u64, bool)>,
}

// SAFETY: the ring is owned by one shard thread; the raw pointer is only an address.
unsafe impl Send for Ring {}

/// A claimed span: where to write, and its identity for `release`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub start: u64,
    pub len: usize,
}

impl Ring {
    /// Maps `capacity` bytes (a power of two, a multiple of 2 MiB).
    pub fn new(capacity: usize) -> std::io::Result<Ring> {
        assert!(capacity.is_power_of_two() && capacity.is_multiple_of(HUGE_PAGE));
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
        // SAFETY: anonymous mapping with no address hint; the result is checked.
        let huge = unsafe {
            libc::mmap(std::ptr::null_mut(), capacity, prot, flags | libc::MAP_HUGETLB, -1, 0)
        };
        if huge != libc::MAP_FAILED {
            return Ok(Ring::with(huge.cast(), capacity));
        }
        if !WARNED.swap(true, Ordering::Relaxed) {
            eprintln!(
                "rdmq: warning: no 2 MiB huge pages reserved (/proc/sys/vm/nr_hugepages); the \
                 journal ring uses ordinary pages with transparent-huge-page advice"
            );
        }
        // Populated at start, as the huge-page path is: the first publishes then pay no page
        // faults (allocate at start, not per message).
        let populate = flags | libc::MAP_POPULATE;
        // SAFETY: as above, without MAP_HUGETLB.
        let base = unsafe { libc::mmap(std::ptr::null_mut(), capacity, prot, populate, -1, 0) };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: advice on a mapping we own; failure only loses the hint.
        unsafe { libc::madvise(base, capacity, libc::MADV_HUGEPAGE) };
        Ok(Ring::with(base.cast(), capacity))
    }

    fn with(base: *mut u8, capacity: usize) -> Ring {
        Ring { base, capacity, claimed: 0, released: 0, claims: VecDeque::new() }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Claims `len` contiguous bytes, or `None` when the ring has no room (back-pressure).
    pub fn claim(&mut self, len: usize) -> Option<Claim> {
        assert!(len > 0, "empty claim");
        if len > self.capacity / 2 {
            return None;
        }
        let offset = (self.claimed as usize) & (self.capacity - 1);
        let mut start = self.claimed;
        if offset + len > self.capacity {
            // Skip to the wrap so the span stays contiguous; the skipped bytes are a done claim.
            start += (self.capacity - offset) as u64;
        }
        if start + len as u64 - self.released > self.capacity as u64 {
            return None;
        }
        if start != self.claimed {
            self.claims.push_back((self.claimed, start, true));
        }
        self.claims.push_back((start, start + len as u64, false));
        self.claimed = start + len as u64;
        Some(Claim { start, len })
    }

    /// The claimed bytes, to fill in place.
    pub fn bytes_mut(&mut self, c: Claim) -> &mut [u8] {
        let off = (c.start as usize) & (self.capacity - 1);
        // SAFETY: `claim` guarantees off + len <= capacity and the span is not released, so no
        // write is in flight on it yet (the caller leases it to the kernel only after filling).
        unsafe { std::slice::from_raw_parts_mut(self.base.add(off), c.len) }
    }

    /// The claimed bytes, for the kernel to write from.
    pub fn bytes(&self, c: Claim) -> &[u8] {
        let off = (c.start as usize) & (self.capacity - 1);
        // SAFETY: as in `bytes_mut`; shared access while the kernel reads it.
        unsafe { std::slice::from_raw_parts(self.base.add(off), c.len) }
    }

    /// Marks the claims a span covers (one claim, or adjacent ones written together) complete;
    /// frees every leading completed claim.
    pub fn release(&mut self, c: Claim) {
        let end = c.start + c.len as u64;
        let mut found = false;
        for entry in self.claims.iter_mut().filter(|e| e.0 >= c.start && e.1 <= end) {
            entry.2 = true;
            found = true;
        }
        assert!(found, "released a span that was not claimed");
        while let Some(&(_, end, true)) = self.claims.front() {
            self.released = end;
            self.claims.pop_front();
        }
        assert!(self.released <= self.claimed);
    }

    /// Bytes claimed and not yet released.
    pub fn in_use(&self) -> u64 {
        self.claimed - self.released
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: the mapping was created with this length; the shard drops the ring only after
        // its io_uring (field order), so no write still reads from it.
        unsafe { libc::munmap(self.base.cast(), self.capacity) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_wrap_contiguously_and_release_in_order() {
        let mut r = Ring::new(HUGE_PAGE).unwrap();
        let cap = r.capacity();
        let a = r.claim(cap / 2).unwrap();
        let b = r.claim(cap / 4).unwrap();
        assert!(r.claim(cap / 2).is_none(), "full");
        r.bytes_mut(a).fill(1);
        r.release(b); // out of order: nothing freed yet
        assert_eq!(r.in_use(), (cap / 2 + cap / 4) as u64);
        r.release(a);
        assert_eq!(r.in_use(), 0);
        // 3/4 used position: a half-size claim must wrap to offset 0.
        let c = r.claim(cap / 2).unwrap();
        assert_eq!(c.start as usize & (cap - 1), 0);
        assert_eq!(r.bytes(c).len(), cap / 2);
        r.release(c);
        assert_eq!(r.in_use(), 0);
        // Adjacent claims written as one span are released as one.
        let (d, e) = (r.claim(4096).unwrap(), r.claim(4096).unwrap());
        r.release(Claim { start: d.start, len: d.len + e.len });
        assert_eq!(r.in_use(), 0);
    }
}
