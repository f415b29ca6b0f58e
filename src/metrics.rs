//! Server-wide counters. Shards add with relaxed atomics (no ordering is implied between them);
//! they are printed when the server stops (there is no live admin endpoint yet).

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! metrics {
    ($($name:ident: $doc:literal),* $(,)?) => {
        #[derive(Default)]
        pub struct Metrics { $(#[doc = $doc] pub $name: AtomicU64,)* }

        impl Metrics {
            /// `name value` pairs, one per counter.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

metrics! {
    connections_accepted: "Connections accepted by any shard.",
    connections_closed: "Connections closed for any reason.",
    protocol_errors: "Connections closed because of malformed or out-of-order frames.",
    published: "Messages accepted by a queue or topic.",
    delivered: "Messages written to consumers and subscribers.",
    expired: "Queue messages discarded because their TTL passed.",
    dead_lettered: "Queue messages moved to a dead-letter queue.",
    topic_dropped: "Topic messages dropped for slow subscribers (drop_oldest policy).",
    slow_disconnects: "Subscribers disconnected for being slow (disconnect policy).",
    ring_bytes_out: "Bytes copied from a shared-memory or RDMA connection's output buffer into its ring (replies, and deliveries that could not be written into the ring directly).",
    copy_in_bytes: "Bytes the server copied out of what it received into memory it keeps: a socket's bytes into its reassembly buffer (TCP, gateways), a published batch into the shard's message memory its records then live in (every transport).",
    arena_heap_bytes: "Published bytes kept on the heap instead of the shards' huge-page message memory (batches over 512 KiB, or every 2 MiB chunk still held by unconsumed messages).",
    copy_journal_bytes: "Record bytes a journal copied (only dead letters gathered from many batches; published batches are written from where they were received).",
    rdma_handed_off: "RDMA connection requests the listener (shard 0) handed to another shard to serve.",
    rdma_gather_bytes: "Record bytes RDMA deliveries were written from where they lie in message memory (no copy: the NIC reads them).",
    copy_deliver_bytes: "Record bytes copied into DELIVER frames (native protocol): into a connection's output buffer, or straight into a shm or RDMA client's ring.",
    mailbox_full: "Times a shard found a peer's mailbox full and kept the batch for the next pass.",
}

pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}
