//! Events that travel between shards through the mailboxes (and within a shard through its
//! local queue). Each names its target implicitly: queue events go to the queue's owner, delivery
//! and reply events to the shard that owns the connection, broadcasts to every shard.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use crate::arena::Bytes;
use crate::broker::queue::{Delivered, QMsg, QueueOptions, Settle};
use crate::broker::SubKey;

/// Where the answer to a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyTo {
    pub shard: u16,
    pub slot: u32,
    pub generation: u32,
    pub request_id: u64,
}

#[derive(Debug)]
pub enum ReplyKind {
    Ok,
    Confirm { position: u64, count: u32 },
    Error { code: u16, message: String },
}

#[derive(Debug)]
pub enum Event {
    /// An RDMA connection request the listener (shard 0) hands to the shard that will serve
    /// it, with the client's private data.
    #[cfg(feature = "rdma")]
    RdmaConnect {
        id: rdmq_client::rdma::verbs::MovedId,
        private: Vec<u8>,
    },
    // To the queue's owner.
    DeclareQueue {
        reply: ReplyTo,
        name: Arc<str>,
        opts: QueueOptions,
        explicit_dlq: bool,
    },
    /// `force` deletes even with consumers (a gateway discarding a session it owns).
    DeleteQueue {
        reply: ReplyTo,
        name: Arc<str>,
        force: bool,
    },
    /// `reply` is `None` for appends nobody waits for (a topic publish copied into a bound
    /// queue); `confirm` is false for NO_CONFIRM publishes, which hear only of errors.
    Publish {
        reply: Option<ReplyTo>,
        confirm: bool,
        queue: Arc<str>,
        batch: Bytes,
        count: u32,
        /// A copy into a bound queue: if the queue is full the copy is dropped (counted in
        /// `topic_dropped`) and the topic publish still succeeds.
        bound: bool,
    },
    DeadLetter {
        queue: Arc<str>,
        durability: rdmq_client::Durability,
        msgs: Vec<QMsg>,
    },
    Consume {
        reply: ReplyTo,
        queue: Arc<str>,
        key: SubKey,
        credit: u32,
    },
    Cancel {
        reply: ReplyTo,
        queue: Arc<str>,
        key: SubKey,
    },
    /// `reply`, when set, hears OK once the settlement is applied (a STOMP receipt waits on it).
    Settle {
        reply: Option<ReplyTo>,
        queue: Arc<str>,
        key: SubKey,
        op: Settle,
        multiple: bool,
        tags: Vec<u64>,
    },
    /// BIND/UNBIND at the queue's owner, which records the binding with the queue and then
    /// broadcasts it.
    Bind {
        reply: ReplyTo,
        queue: Arc<str>,
        pattern: Arc<str>,
        add: bool,
    },
    /// To every shard: topic messages matching `pattern` go to `queue` too.
    BindAdd {
        pattern: Arc<str>,
        queue: Arc<str>,
    },
    /// To every shard: drop `queue`'s binding to `pattern`, or all its bindings if `None`.
    BindRemove {
        queue: Arc<str>,
        pattern: Option<Arc<str>>,
    },
    /// SEEK at the queue's owner.
    Seek {
        reply: ReplyTo,
        queue: Arc<str>,
        to: crate::broker::queue::SeekTo,
    },
    /// BROWSE: copy up to `max` messages from position `from`, consuming nothing.
    Browse {
        reply: ReplyTo,
        queue: Arc<str>,
        id: u32,
        from: u64,
        max: u32,
    },
    // To the connection's shard.
    /// The answer to `Browse`: (position, record, deliveries so far).
    Browsed {
        to: ReplyTo,
        id: u32,
        msgs: Vec<(u64, crate::broker::MsgRef, u32)>,
    },
    Deliver {
        key: SubKey,
        msgs: Vec<Delivered>,
    },
    TopicDeliver {
        key: SubKey,
        /// The topic published to (a gateway names it in each message; the native DELIVER does not).
        topic: Arc<str>,
        batch: Bytes,
        spans: Arc<[(u32, u32)]>,
    },
    Reply {
        to: ReplyTo,
        kind: ReplyKind,
    },
    // To every shard.
    SubAdd {
        pattern: Arc<str>,
        key: SubKey,
    },
    SubRemove {
        key: SubKey,
    },
    TopicDeclare {
        name: Arc<str>,
    },
    TopicDelete {
        name: Arc<str>,
    },
    ConnClosed {
        shard: u16,
        slot: u32,
        generation: u32,
    },
    /// The MQTT gateway's own events (client ids, sessions, retained messages, wills).
    Mqtt(Box<crate::gateway::mqtt::serve::MqttEvent>),
    /// Follows a broadcast; the shard that applies the last copy answers OK. Mailboxes are FIFO,
    /// so by then every shard has applied the broadcast.
    Fence {
        reply: ReplyTo,
        left: Arc<AtomicUsize>,
    },
}
