//! The boundary between a queue's in-memory state and where its messages are kept.
//!
//! A [`Store`] receives every appended batch and every settled position; it says how far the
//! queue is durable. The in-memory store is durable at once; the journal slots in
//! here, returning a durable position that lags until its group commit completes, and the queue
//! confirms publishes only at or below it.

use rdmq_client::Durability;

use super::MsgRef;

/// What the store could not do, as a message for the publisher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

pub trait Store {
    /// Stores `records` (each a whole record as published, in the memory it was received
    /// into) starting at sequence `first_seq`.
    fn append(
        &mut self,
        first_seq: u64,
        records: &mut dyn Iterator<Item = &MsgRef>,
    ) -> Result<(), StoreError>;
    /// Records that sequence `seq` was acknowledged (or dead-lettered) and may be reclaimed.
    fn settle(&mut self, seq: u64);
    /// Undoes a `settle` (a seek moved the cursor back over `seq`).
    fn unsettle(&mut self, seq: u64);
    /// Every sequence below this survives a crash at this queue's durability level.
    fn durable_position(&self) -> u64;
    fn durability(&self) -> Durability;
}

/// Messages live only in the queue's memory: lost on restart, durable "at once" for confirms.
#[derive(Debug, Default)]
pub struct MemoryStore {
    next: u64,
}

impl Store for MemoryStore {
    fn append(
        &mut self,
        first_seq: u64,
        records: &mut dyn Iterator<Item = &MsgRef>,
    ) -> Result<(), StoreError> {
        self.next = first_seq + records.count() as u64;
        Ok(())
    }

    fn settle(&mut self, _seq: u64) {}

    fn unsettle(&mut self, _seq: u64) {}

    fn durable_position(&self) -> u64 {
        self.next
    }

    fn durability(&self) -> Durability {
        Durability::Memory
    }
}
