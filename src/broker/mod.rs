//! The broker state machine: queues, topic subscriptions and the message store boundary.
//!
//! Pure code: no syscalls, no clocks (callers pass `now_ms`), no threads. Each shard owns the
//! queues whose names hash to it and a replica of the topic subscription table; the shard loop
//! feeds events in and routes the effects (deliveries, dead letters) out.

pub mod pattern;
pub mod queue;
pub mod store;
pub mod topic;

use crate::arena::Bytes;

/// Identifies one consumer or subscription anywhere in the server: the shard and connection slot
/// that own it, the slot's generation (so a reused slot never receives a stale delivery) and the
/// id the client chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubKey {
    pub shard: u16,
    pub slot: u32,
    pub generation: u32,
    pub id: u32,
}

/// One stored record: a span of a received batch, shared by reference count. The batch bytes
/// are kept exactly as they arrived, so delivery copies the record without re-encoding.
#[derive(Debug, Clone)]
pub struct MsgRef {
    pub batch: Bytes,
    pub offset: u32,
    pub len: u32,
}

impl MsgRef {
    pub fn bytes(&self) -> &[u8] {
        &self.batch[self.offset as usize..(self.offset + self.len) as usize]
    }
}

/// Milliseconds since the Unix epoch: only for comparing with message timestamps (TTL at
/// recovery); the shards' own clocks are monotonic.
pub fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Which shard owns a queue: a stable hash of its name (FNV-1a, so it never depends on the
/// process's hash seed and every shard computes the same answer).
pub fn owner_shard(name: &str, shards: usize) -> usize {
    (fnv1a(name.as_bytes()) % shards as u64) as usize
}

/// 64-bit FNV-1a: stable across processes and versions, unlike the standard library's hasher.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}
