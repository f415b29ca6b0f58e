//! The shard's message memory: a ring of 2 MiB chunks, in huge pages when the host has them
//! reserved (`MAP_HUGETLB`), otherwise in ordinary pages with transparent-huge-page advice and
//! one warning.
//!
//! A received batch is copied once, into the next free span of the current chunk, and from then
//! on is only shared: queues keep [`Bytes`] handles into it, the journal writes segment files
//! straight from it (`writev`, no second copy) and deliveries are encoded from it. That one copy
//! is what makes the bytes the server's own: a shared-memory or RDMA producer can rewrite its
//! ring at any time, so nothing is checksummed, stored or served from there.
//!
//! A chunk is filled front to back; a handle covers bytes already written and nothing writes
//! them again while any handle to the chunk lives. A chunk is reused once the arena holds its
//! only reference (every message in it consumed or dropped, every write of it complete; the
//! check synchronises with the other shards' drops), the most recently used free chunk first,
//! so a shard whose consumers keep up cycles through a few cache-warm chunks.
//! When every chunk is still held (a slow consumer, a long retention) a batch goes to the heap
//! instead, so one held message never pins more than its own bytes beyond the arena's size;
//! the `arena_heap_bytes` counter says how often that happens.
//!
//! This is one of the modules allowed `unsafe`: it maps memory and hands out views of it.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::metrics::{self, Metrics};

/// Huge page size on x86-64 and arm64 with 4 KiB base pages; also the chunk size.
pub use rdmq_client::shm::HUGE_PAGE;
/// Batches above this go to the heap: a chunk should hold a few of them.
pub const ARENA_BATCH_MAX: usize = HUGE_PAGE / 4;
/// Spans start on 8-byte boundaries (record headers are read field by field either way).
const ALIGN: usize = 8;

static WARNED: AtomicBool = AtomicBool::new(false);

/// One 2 MiB mapping, unmapped when the last of its chunk and its pins lets go.
struct Mapping {
    base: *mut u8,
}

// SAFETY: plain memory; who may write it is governed by the chunk over it (module comment).
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn new() -> std::io::Result<Mapping> {
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
        // SAFETY: anonymous mapping with no address hint; the result is checked.
        let huge = unsafe {
            libc::mmap(std::ptr::null_mut(), HUGE_PAGE, prot, flags | libc::MAP_HUGETLB, -1, 0)
        };
        if huge != libc::MAP_FAILED {
            return Ok(Mapping { base: huge.cast() });
        }
        if !WARNED.swap(true, Ordering::Relaxed) {
            eprintln!(
                "rdmq: warning: no 2 MiB huge pages reserved (/proc/sys/vm/nr_hugepages); message \
                 memory uses ordinary pages with transparent-huge-page advice"
            );
        }
        // SAFETY: as above, without MAP_HUGETLB.
        let base = unsafe { libc::mmap(std::ptr::null_mut(), HUGE_PAGE, prot, flags, -1, 0) };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        // Advice first, then populated at start, as huge pages are: the first faults then
        // take transparent huge pages where the kernel has them, and the first publishes pay
        // no page faults.
        // SAFETY: advice on a mapping we own; failure only loses the hint.
        unsafe { libc::madvise(base, HUGE_PAGE, libc::MADV_HUGEPAGE) };
        // SAFETY: as above; on kernels before 5.14 the pages are faulted in on first use.
        unsafe { libc::madvise(base, HUGE_PAGE, libc::MADV_POPULATE_WRITE) };
        Ok(Mapping { base: base.cast() })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: mapped with this length in `new`; the chunk over it (and so every handle and
        // io_uring write) and every pin (and so every NIC registration) are gone.
        unsafe { libc::munmap(self.base.cast(), HUGE_PAGE) };
    }
}

/// Memory that handles point into: one mapped chunk, or one heap buffer. The arena reuses a
/// chunk only when it holds the chunk's sole reference; NIC registrations hold the mapping
/// ([`ChunkPin`]), not the chunk, so they never count as holding it.
struct Chunk {
    base: *mut u8,
    len: usize,
    owner: Owner,
}

enum Owner {
    Mapped(#[allow(dead_code)] Arc<Mapping>),
    /// A heap buffer, from `Box::into_raw`, freed in `drop`.
    Heap,
}

// SAFETY: a chunk is plain memory. Bytes behind a handle are never written while the handle
// lives (see the module comment), so sharing and sending handles between shards is sound.
unsafe impl Send for Chunk {}
// SAFETY: as above.
unsafe impl Sync for Chunk {}

impl Chunk {
    fn map() -> std::io::Result<Chunk> {
        let m = Arc::new(Mapping::new()?);
        Ok(Chunk { base: m.base, len: HUGE_PAGE, owner: Owner::Mapped(m) })
    }

    fn heap(buf: Box<[u8]>) -> Chunk {
        let len = buf.len();
        let base = Box::into_raw(buf).cast::<u8>();
        Chunk { base, len, owner: Owner::Heap }
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        if let Owner::Heap = self.owner {
            let raw = std::ptr::slice_from_raw_parts_mut(self.base, self.len);
            // SAFETY: made by `Box::into_raw` in `heap` with this length, freed only here.
            drop(unsafe { Box::from_raw(raw) });
        }
    }
}

/// A shared, immutable span of message memory: cheap to clone (one reference count), sendable
/// to other shards, and alive for as long as any clone is.
#[derive(Clone)]
pub struct Bytes {
    chunk: Arc<Chunk>,
    off: usize,
    len: usize,
}

impl Bytes {
    /// A sub-span, `len` bytes from `off` within this one, sharing the same memory.
    pub fn slice(&self, off: usize, len: usize) -> Bytes {
        assert!(off + len <= self.len, "slice out of range");
        Bytes { chunk: self.chunk.clone(), off: self.off + off, len }
    }

    /// Whether `other` is this very span (not merely equal bytes).
    pub fn same_as(&self, other: &Bytes) -> bool {
        Arc::ptr_eq(&self.chunk, &other.chunk) && self.off == other.off && self.len == other.len
    }

    /// Whether `next` starts in the same memory exactly where this one ends.
    pub fn continued_by(&self, next: &Bytes) -> bool {
        Arc::ptr_eq(&self.chunk, &next.chunk) && self.off + self.len == next.off
    }

    /// This span extended over `next` (which must continue it).
    pub fn joined(&self, next: &Bytes) -> Bytes {
        assert!(self.continued_by(next), "spans are not adjacent");
        Bytes { chunk: self.chunk.clone(), off: self.off, len: self.len + next.len }
    }

    /// Whether `other` lies in the same memory (chunk or heap buffer).
    pub fn same_memory(&self, other: &Bytes) -> bool {
        Arc::ptr_eq(&self.chunk, &other.chunk)
    }

    /// Whether this span lives in a mapped chunk (not the heap).
    pub fn in_arena(&self) -> bool {
        matches!(self.chunk.owner, Owner::Mapped(_))
    }
}

impl std::ops::Deref for Bytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: off + len <= chunk length (checked where handles are made); those bytes were
        // written before the handle existed and are not written again while it lives.
        unsafe { std::slice::from_raw_parts(self.chunk.base.add(self.off), self.len) }
    }
}

impl AsRef<[u8]> for Bytes {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl From<Vec<u8>> for Bytes {
    /// Takes the buffer over (no copy).
    fn from(v: Vec<u8>) -> Bytes {
        let len = v.len();
        Bytes { chunk: Arc::new(Chunk::heap(v.into_boxed_slice())), off: 0, len }
    }
}

impl From<&[u8]> for Bytes {
    /// Copies into a new heap buffer.
    fn from(s: &[u8]) -> Bytes {
        Bytes::from(s.to_vec())
    }
}

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bytes({} bytes{})", self.len, if self.in_arena() { "" } else { ", heap" })
    }
}

impl PartialEq for Bytes {
    fn eq(&self, other: &Bytes) -> bool {
        **self == **other
    }
}

/// One shard's ring of chunks.
pub struct Arena {
    chunks: Vec<Arc<Chunk>>,
    /// When each chunk was last started (a count of chunk starts).
    started: Vec<u64>,
    starts: u64,
    /// The chunk being filled, and how far.
    current: usize,
    used: usize,
    metrics: Option<Arc<Metrics>>,
}

/// A whole chunk's mapping, for a NIC registration: keeps the memory mapped for as long as it
/// lives, without holding the chunk (the arena goes on reusing it).
#[derive(Clone)]
pub struct ChunkPin(Arc<Mapping>);

impl ChunkPin {
    /// The chunk's memory.
    pub fn span(&self) -> (*const u8, usize) {
        (self.0.base, HUGE_PAGE)
    }
}

#[cfg(feature = "rdma")]
// SAFETY: the chunk's mapping is fixed for its life, and this value holds the chunk.
unsafe impl rdmq_client::rdma::verbs::Pinned for ChunkPin {
    fn span(&self) -> (*const u8, usize) {
        ChunkPin::span(self)
    }
}

impl Arena {
    /// Maps `bytes` of chunks (a multiple of 2 MiB, at least two chunks).
    pub fn new(bytes: usize) -> std::io::Result<Arena> {
        assert!(bytes >= 2 * HUGE_PAGE && bytes.is_multiple_of(HUGE_PAGE));
        let chunks = (0..bytes / HUGE_PAGE)
            .map(|_| Chunk::map().map(Arc::new))
            .collect::<std::io::Result<_>>()?;
        let mut started = vec![0; bytes / HUGE_PAGE];
        started[0] = 1;
        Ok(Arena { chunks, started, starts: 1, current: 0, used: 0, metrics: None })
    }

    /// Counts batches that went to the heap in `arena_heap_bytes`.
    pub fn with_metrics(self, metrics: Arc<Metrics>) -> Arena {
        Arena { metrics: Some(metrics), ..self }
    }

    /// A new handle of `len` bytes, filled by `fill` (which must write all of them). Lands in
    /// the arena when a chunk has room, else on the heap (a large batch, or every chunk held).
    pub fn fill(&mut self, len: usize, fill: impl FnOnce(&mut [u8])) -> Bytes {
        let Some(off) = self.claim(len) else {
            let mut buf = vec![0u8; len];
            fill(&mut buf);
            if let Some(m) = &self.metrics {
                metrics::add(&m.arena_heap_bytes, len as u64);
            }
            return Bytes::from(buf);
        };
        let chunk = &self.chunks[self.current];
        // SAFETY: [off, off + len) lies within the chunk (`claim` checked), and no handle covers
        // it: handles only cover bytes below `used` of the current chunk, and a chunk is
        // restarted only when the arena holds its sole reference. Nothing else borrows it.
        let dst = unsafe { std::slice::from_raw_parts_mut(chunk.base.add(off), len) };
        fill(dst);
        Bytes { chunk: chunk.clone(), off, len }
    }

    /// A copy of `src` (the one copy a received batch gets).
    pub fn copy(&mut self, src: &[u8]) -> Bytes {
        self.fill(src.len(), |dst| dst.copy_from_slice(src))
    }

    /// Reserves `len` bytes in the current chunk, moving to the next free one if needed.
    fn claim(&mut self, len: usize) -> Option<usize> {
        if len > ARENA_BATCH_MAX || len == 0 {
            return None;
        }
        if self.used + len > HUGE_PAGE && !self.advance() {
            return None;
        }
        let off = self.used;
        self.used = (off + len).next_multiple_of(ALIGN);
        Some(off)
    }

    /// Moves to the free chunk (nothing else holds it) used most recently: when consumers keep
    /// up, two or three chunks take turns and stay in the CPU's caches, where going round all
    /// of them would write every batch into memory long out of cache.
    fn advance(&mut self) -> bool {
        let free = (0..self.chunks.len())
            .filter(|&i| i != self.current && self.unheld(i))
            .max_by_key(|&i| (self.started[i], std::cmp::Reverse(i)));
        let Some(i) = free else { return false };
        self.starts += 1;
        self.started[i] = self.starts;
        self.current = i;
        self.used = 0;
        true
    }

    /// Whether only the arena holds chunk `i` (pins hold its mapping, not it). The fence
    /// pairs with the release of the last other handle's drop (as in `Arc`'s own drop), so
    /// what that holder did with the bytes happens before they are written again.
    fn unheld(&self, i: usize) -> bool {
        let unheld = Arc::strong_count(&self.chunks[i]) == 1;
        if unheld {
            std::sync::atomic::fence(Ordering::Acquire);
        }
        unheld
    }

    /// Chunks something outside the arena still holds (messages kept, writes in flight).
    pub fn chunks_held(&self) -> usize {
        (0..self.chunks.len()).filter(|&i| !self.unheld(i)).count()
    }

    /// One pin per chunk, to register the whole arena with a NIC; they do not hold the
    /// chunks, only keep their memory mapped.
    pub fn pins(&self) -> Vec<ChunkPin> {
        let mapping = |c: &Arc<Chunk>| match &c.owner {
            Owner::Mapped(m) => ChunkPin(m.clone()),
            Owner::Heap => unreachable!("arena chunks are mapped"),
        };
        self.chunks.iter().map(mapping).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_keep_their_bytes_and_chunks_come_back_when_let_go() {
        let mut a = Arena::new(2 * HUGE_PAGE).unwrap();
        let first = a.copy(b"hello");
        assert_eq!(&*first, b"hello");
        assert!(first.in_arena());
        // Fill the first chunk and move into the second while `first` is held.
        let big = vec![7u8; ARENA_BATCH_MAX];
        let fills: Vec<Bytes> = (0..4).map(|_| a.copy(&big)).collect();
        assert!(fills.iter().all(|b| b.in_arena()));
        assert_eq!(a.current, 1, "the fourth large batch did not fit beside the first");
        // Both chunks held: the next batch that needs a new chunk goes to the heap.
        let more: Vec<Bytes> = (0..4).map(|_| a.copy(&big)).collect();
        assert!(more[2].in_arena(), "the second chunk filled to its last byte");
        assert!(!more.last().unwrap().in_arena(), "no free chunk, so the heap");
        assert_eq!(&*first, b"hello", "held bytes were not overwritten");
        assert_eq!(a.chunks_held(), 2);
        // Let go of everything in chunk 0: it is reused, from its start.
        drop(first);
        drop(fills);
        drop(more);
        let again = a.copy(&big);
        assert!(again.in_arena());
        assert_eq!(a.current, 0);
        assert_eq!(again.off, 0);
        // Pinned (registered with a NIC): a pin is expected, so chunks are still reused.
        let pins = a.pins();
        drop(again);
        assert_eq!(a.chunks_held(), 0);
        let fill: Vec<Bytes> = (0..5).map(|_| a.copy(&big)).collect();
        assert!(fill.iter().all(|b| b.in_arena()), "reused with pins held");
        drop(fill);
        drop(pins);
        assert_eq!(a.chunks_held(), 0, "and after the pins are gone");
    }

    #[test]
    fn the_most_recently_used_free_chunk_is_taken_next() {
        let mut a = Arena::new(4 * HUGE_PAGE).unwrap();
        let big = vec![7u8; ARENA_BATCH_MAX];
        let mut currents = Vec::new();
        // Consumers keep up: each batch is let go before the next arrives.
        for _ in 0..24 {
            drop(a.copy(&big));
            currents.push(a.current);
        }
        currents.dedup();
        assert_eq!(currents, [0, 1, 0, 1, 0, 1], "two warm chunks take turns");
        // Held chunks are skipped; the never-used ones come into play when needed (the
        // current chunk is full: 24 batches filled six chunks' worth).
        let held: Vec<Bytes> = (0..12).map(|_| a.copy(&big)).collect();
        assert!(held.iter().all(|b| b.in_arena()));
        assert_eq!(a.chunks_held(), 3);
    }

    #[test]
    fn slices_join_only_when_adjacent_in_the_same_memory() {
        let mut a = Arena::new(2 * HUGE_PAGE).unwrap();
        let b = a.copy(b"0123456789");
        let (x, y, z) = (b.slice(0, 4), b.slice(4, 3), b.slice(8, 2));
        assert!(x.continued_by(&y));
        assert_eq!(&*x.joined(&y), b"0123456");
        assert!(!y.continued_by(&z), "a gap between them");
        let heap = Bytes::from(b"89".to_vec());
        assert!(!y.continued_by(&heap) && !heap.in_arena());
        assert_eq!(heap, z);
    }
}
