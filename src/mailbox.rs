//! Bounded single-producer single-consumer mailboxes between shards.
//!
//! Each ordered pair of shards has one mailbox; the sending shard's thread is its only producer
//! and the receiving shard's thread its only consumer. Slots carry batches (`Vec<Event>`), so one
//! atomic handoff moves many events. Positions only grow; a slot index is `position & mask`.
//! A full mailbox is back-pressure (`Err(item)` back to the sender), never a block.
//! This is one of the modules allowed `unsafe`.
#![allow(unsafe_code)]

use std::cell::UnsafeCell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Keeps head and tail on separate cache lines so producer and consumer do not false-share.
#[repr(align(128))]
struct Padded(AtomicUsize);

struct Ring<T> {
    slots: Box<[UnsafeCell<MaybeUninit<T>>]>,
    mask: usize,
    /// Next position the consumer reads; written only by the consumer.
    head: Padded,
    /// Next position the producer writes; written only by the producer.
    tail: Padded,
}

// SAFETY: a slot is accessed by the producer only while it is outside [head, tail) and by the
// consumer only while inside it; the acquire/release pairs on head and tail order those accesses.
unsafe impl<T: Send> Sync for Ring<T> {}
// SAFETY: as above; values of T move between threads, which T: Send permits.
unsafe impl<T: Send> Send for Ring<T> {}

pub struct Sender<T> {
    ring: Arc<Ring<T>>,
    tail: usize,
    head_cache: usize,
}

pub struct Receiver<T> {
    ring: Arc<Ring<T>>,
    head: usize,
    tail_cache: usize,
}

/// A mailbox of `capacity` slots (a power of two).
pub fn mailbox<T: Send>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    assert!(capacity.is_power_of_two() && capacity >= 2, "capacity must be a power of two");
    let slots = (0..capacity).map(|_| UnsafeCell::new(MaybeUninit::uninit())).collect();
    let ring = Arc::new(Ring {
        slots,
        mask: capacity - 1,
        head: Padded(AtomicUsize::new(0)),
        tail: Padded(AtomicUsize::new(0)),
    });
    (
        Sender { ring: ring.clone(), tail: 0, head_cache: 0 },
        Receiver { ring, head: 0, tail_cache: 0 },
    )
}

impl<T: Send> Sender<T> {
    /// Enqueues `item`, or hands it back when the mailbox is full.
    pub fn push(&mut self, item: T) -> Result<(), T> {
        let cap = self.ring.mask + 1;
        if self.tail - self.head_cache == cap {
            self.head_cache = self.ring.head.0.load(Ordering::Acquire);
            if self.tail - self.head_cache == cap {
                return Err(item);
            }
        }
        let slot = &self.ring.slots[self.tail & self.ring.mask];
        // SAFETY: position `tail` is outside [head, tail), so the consumer does not touch this
        // slot, and the slot holds no live value (it was read out or never written).
        unsafe { (*slot.get()).write(item) };
        self.tail += 1;
        self.ring.tail.0.store(self.tail, Ordering::Release);
        Ok(())
    }
}

impl<T: Send> Receiver<T> {
    pub fn pop(&mut self) -> Option<T> {
        if self.head == self.tail_cache {
            self.tail_cache = self.ring.tail.0.load(Ordering::Acquire);
            if self.head == self.tail_cache {
                return None;
            }
        }
        let slot = &self.ring.slots[self.head & self.ring.mask];
        // SAFETY: position `head` is inside [head, tail): the producer wrote it (acquire above
        // synchronises with its release) and will not touch it until head moves past.
        let item = unsafe { (*slot.get()).assume_init_read() };
        self.head += 1;
        self.ring.head.0.store(self.head, Ordering::Release);
        Some(item)
    }

    /// Whether anything is waiting (used before a shard goes to sleep).
    pub fn is_empty(&self) -> bool {
        self.head == self.ring.tail.0.load(Ordering::Acquire)
    }
}

impl<T> Drop for Ring<T> {
    fn drop(&mut self) {
        let head = *self.head.0.get_mut();
        let tail = *self.tail.0.get_mut();
        for pos in head..tail {
            // SAFETY: positions in [head, tail) hold initialised values nobody else can reach now.
            unsafe { (*self.slots[pos & self.mask].get()).assume_init_drop() };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_and_full() {
        let (mut tx, mut rx) = mailbox::<u32>(4);
        for i in 0..4 {
            tx.push(i).unwrap();
        }
        assert_eq!(tx.push(9), Err(9));
        assert_eq!(rx.pop(), Some(0));
        tx.push(4).unwrap();
        assert_eq!((1..5).map(|_| rx.pop().unwrap()).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
        assert_eq!(rx.pop(), None);
        assert!(rx.is_empty());
    }

    #[test]
    fn threads_see_every_item_once_in_order() {
        let (mut tx, mut rx) = mailbox::<Vec<u64>>(8);
        const N: u64 = 200_000;
        let t = std::thread::spawn(move || {
            let mut i = 0;
            while i < N {
                let mut item = vec![i];
                loop {
                    match tx.push(item) {
                        Ok(()) => break,
                        Err(back) => {
                            item = back;
                            std::hint::spin_loop();
                        }
                    }
                }
                i += 1;
            }
        });
        let mut expect = 0;
        while expect < N {
            if let Some(v) = rx.pop() {
                assert_eq!(v, vec![expect]);
                expect += 1;
            }
        }
        t.join().unwrap();
    }

    #[test]
    fn undelivered_items_are_dropped() {
        let item = Arc::new(());
        let (mut tx, rx) = mailbox::<Arc<()>>(4);
        tx.push(item.clone()).unwrap();
        tx.push(item.clone()).unwrap();
        drop((tx, rx));
        assert_eq!(Arc::strong_count(&item), 1);
    }
}
