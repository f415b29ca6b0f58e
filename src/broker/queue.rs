//! One queue: competing consumers, credits, acknowledgements, redelivery, TTL and dead letters.
//!
//! Owned by exactly one shard (the one its name hashes to); only that shard's thread touches it.
//! Invariants, checked by assertions and the tests below:
//! - a message is in exactly one place: `ready`, one consumer's `unacked`, `retained`
//!   (acknowledged, kept for seeking by a queue with a retention bound), or gone (settled,
//!   expired or handed back as a dead letter);
//! - a consumer never holds more unsettled deliveries than its credit;
//! - sequences and delivery tags only grow.

use std::collections::VecDeque;
use std::sync::Arc;

use super::store::{Store, StoreError};
use super::{MsgRef, SubKey};
use crate::arena::Bytes;
use rdmq_client::Durability;

/// Options fixed when the queue is declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueOptions {
    pub durability: Durability,
    /// Deliveries after which a message that comes back (nack, disconnect) is dead-lettered.
    pub max_deliveries: u32,
    /// Messages held at most; a publish that would exceed it is refused.
    pub max_length: u32,
    /// Where dead letters go; `None` for a dead-letter queue itself (its dead letters are dropped
    /// and counted, so a loop between two queues cannot form).
    pub dead_letter: Option<String>,
    /// Bytes of records held at most (0 = no bound). Acknowledged messages kept for seeking go
    /// first; if unconsumed ones alone would pass it, the publish is refused.
    pub max_bytes: u64,
    /// Milliseconds a message is kept at most, consumed or not (0 = no bound).
    pub max_age_ms: u64,
}

impl QueueOptions {
    /// A queue with a retention bound keeps acknowledged messages (within the bound) so its
    /// consumer can seek back to them; a queue without one drops them at once.
    pub fn retains(&self) -> bool {
        self.max_bytes > 0 || self.max_age_ms > 0
    }
}

/// Where a seek moves a queue's cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeekTo {
    Position(u64),
    /// The first message whose timestamp (µs since the epoch) is at or after this.
    TimestampUs(u64),
}

/// A stored message and its delivery state.
#[derive(Debug, Clone)]
pub struct QMsg {
    pub rec: MsgRef,
    pub seq: u64,
    pub deliveries: u32,
    /// Milliseconds on the shard clock after which it is discarded; 0 = never.
    pub expires_ms: u64,
}

/// One message handed to a consumer.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub rec: MsgRef,
    pub tag: u64,
    pub delivery_count: u32,
    pub redelivered: bool,
}

/// Messages for one consumer, produced by [`Queue::dispatch`].
#[derive(Debug)]
pub struct Dispatch {
    pub consumer: SubKey,
    pub msgs: Vec<Delivered>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    Ack,
    Nack,
    Reject,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueError {
    Full { max_length: u32 },
    FullBytes { max_bytes: u64 },
    DuplicateConsumer,
    Store(StoreError),
}

impl std::fmt::Display for QueueError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueueError::Full { max_length } => write!(f, "queue is full ({max_length} messages)"),
            QueueError::FullBytes { max_bytes } => write!(f, "queue is full ({max_bytes} bytes)"),
            QueueError::DuplicateConsumer => write!(f, "consumer id already in use"),
            QueueError::Store(e) => write!(f, "{}", e.0),
        }
    }
}

/// Counters for operators and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct QueueStats {
    pub published: u64,
    pub delivered: u64,
    pub acked: u64,
    pub requeued: u64,
    pub expired: u64,
    pub dead_lettered: u64,
    /// Dead letters of a queue that has no dead-letter queue.
    pub dropped: u64,
    pub refused_full: u64,
}

/// Bytes of dead letters handed to the store at once: well below the default journal write
/// backlog (64 MiB); a smaller backlog may refuse a chunk, which is then dropped with a log line.
const DEAD_LETTER_CHUNK_BYTES: u64 = 4 << 20;

/// The producer's timestamp of a stored record.
fn record_timestamp_us(rec: &MsgRef) -> u64 {
    rdmq_client::wire::record::RecordView::trusted(rec.bytes()).header.timestamp_us
}

#[derive(Debug)]
struct Unacked {
    tag: u64,
    msg: Option<QMsg>,
}

#[derive(Debug)]
struct ConsumerState {
    key: SubKey,
    credit: u32,
    outstanding: u32,
    /// In tag order; settled entries become `None` and are popped from the front.
    unacked: VecDeque<Unacked>,
}

pub struct Queue {
    pub name: Arc<str>,
    pub opts: QueueOptions,
    store: Box<dyn Store>,
    ready: VecDeque<QMsg>,
    next_seq: u64,
    next_tag: u64,
    consumers: Vec<ConsumerState>,
    rr: usize,
    pub stats: QueueStats,
    /// Topic patterns whose messages are appended here (durable subscriptions).
    pub bindings: Vec<String>,
    /// Acknowledged messages kept for seeking (only with a retention bound), in sequence order.
    retained: VecDeque<QMsg>,
    /// Bytes of records in `ready`, in consumers' hands and in `retained`.
    bytes: u64,
}

impl Queue {
    pub fn new(name: Arc<str>, opts: QueueOptions, store: Box<dyn Store>) -> Queue {
        assert_eq!(store.durability(), opts.durability);
        Queue {
            name,
            opts,
            store,
            ready: VecDeque::new(),
            next_seq: 0,
            next_tag: 1,
            consumers: Vec::new(),
            rr: 0,
            stats: QueueStats::default(),
            bindings: Vec::new(),
            retained: VecDeque::new(),
            bytes: 0,
        }
    }

    /// Messages waiting for a consumer.
    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }

    /// Messages delivered and not yet settled.
    pub fn unacked_len(&self) -> usize {
        self.consumers.iter().map(|c| c.outstanding as usize).sum()
    }

    pub fn consumer_count(&self) -> usize {
        self.consumers.len()
    }

    /// Appends one published batch. `records` yields (offset, length, ttl_ms) per record.
    /// Returns the first sequence assigned and the count.
    pub fn publish(
        &mut self,
        batch: &Bytes,
        records: impl Iterator<Item = (u32, u32, u32)>,
        count: u32,
        now_ms: u64,
    ) -> Result<(u64, u32), QueueError> {
        let held = self.ready.len() + self.unacked_len();
        if held + count as usize > self.opts.max_length as usize {
            self.stats.refused_full += 1;
            return Err(QueueError::Full { max_length: self.opts.max_length });
        }
        // The batch's record bytes: the batch minus its header.
        let incoming = (batch.len() - rdmq_client::wire::record::BATCH_HEADER_LEN) as u64;
        if !self.make_room(incoming) {
            self.stats.refused_full += 1;
            return Err(QueueError::FullBytes { max_bytes: self.opts.max_bytes });
        }
        let first = self.next_seq;
        let start = self.ready.len();
        for (offset, len, ttl) in records {
            let rec = MsgRef { batch: batch.clone(), offset, len };
            self.bytes += len as u64;
            let expires_ms = self.expiry(now_ms, ttl);
            self.ready.push_back(QMsg { rec, seq: self.next_seq, deliveries: 0, expires_ms });
            self.next_seq += 1;
        }
        assert_eq!(self.next_seq - first, count as u64, "record count disagrees with batch header");
        let mut stored = self.ready.range(start..).map(|m| &m.rec);
        if let Err(e) = self.store.append(first, &mut stored) {
            // Nothing confirmed: take the batch back out.
            let removed: u64 = self.ready.range(start..).map(|m| m.rec.len as u64).sum();
            self.bytes -= removed;
            self.ready.truncate(start);
            self.next_seq = first;
            return Err(QueueError::Store(e));
        }
        self.stats.published += count as u64;
        Ok((first, count))
    }

    /// When a message published now expires: its own TTL or the queue's `max_age_ms`, whichever
    /// comes first (0 = never).
    fn expiry(&self, now_ms: u64, ttl_ms: u32) -> u64 {
        let ttl = (ttl_ms > 0).then(|| now_ms + ttl_ms as u64);
        let age = (self.opts.max_age_ms > 0).then(|| now_ms + self.opts.max_age_ms);
        ttl.into_iter().chain(age).min().unwrap_or(0)
    }

    /// Frees retained (acknowledged) messages, oldest first, until `incoming` more bytes fit
    /// under `max_bytes`. False if they cannot fit even then.
    fn make_room(&mut self, incoming: u64) -> bool {
        if self.opts.max_bytes == 0 {
            return true;
        }
        while self.bytes + incoming > self.opts.max_bytes {
            let Some(m) = self.retained.pop_front() else { return false };
            self.bytes -= m.rec.len as u64;
        }
        true
    }

    /// Moves the queue's cursor: messages before the target that are waiting count as consumed
    /// (kept for seeking back, if the queue retains), retained ones at or after it wait again.
    /// Messages in consumers' hands are not touched. Returns the position sought to.
    pub fn seek(&mut self, to: SeekTo) -> u64 {
        let position = match to {
            SeekTo::Position(p) => p,
            SeekTo::TimestampUs(t) => self
                .retained
                .iter()
                .chain(self.ready.iter())
                .filter(|m| record_timestamp_us(&m.rec) >= t)
                .map(|m| m.seq)
                .min()
                .unwrap_or(self.next_seq),
        };
        while self.ready.front().is_some_and(|m| m.seq < position) {
            let m = self.ready.pop_front().expect("checked");
            self.settle_one(m);
        }
        let back = self.retained.partition_point(|m| m.seq < position);
        for m in self.retained.drain(back..).rev() {
            self.store.unsettle(m.seq);
            let at = self.ready.partition_point(|r| r.seq < m.seq);
            self.ready.insert(at, m);
        }
        position
    }

    /// An acknowledged (or skipped) message: kept for seeking if the queue retains, else gone.
    fn settle_one(&mut self, m: QMsg) {
        self.store.settle(m.seq);
        if self.opts.retains() {
            let at = self.retained.partition_point(|r| r.seq < m.seq);
            self.retained.insert(at, m);
        } else {
            self.bytes -= m.rec.len as u64;
        }
    }

    /// Appends messages dead-lettered by another queue. They start afresh here (delivery count
    /// zero) and keep their expiry.
    /// Returns how many could not be stored (and were dropped, with a log line).
    pub fn append_dead_letters(&mut self, msgs: Vec<QMsg>, _now_ms: u64) -> usize {
        let mut dropped = 0;
        let mut msgs = msgs.into_iter().peekable();
        while msgs.peek().is_some() {
            // Chunks bounded in bytes, so a large group never exceeds what a store takes at once.
            let mut chunk_bytes = 0u64;
            let chunk: Vec<QMsg> = std::iter::from_fn(|| {
                if chunk_bytes >= DEAD_LETTER_CHUNK_BYTES {
                    return None;
                }
                let m = msgs.next()?;
                chunk_bytes += m.rec.len as u64;
                Some(m)
            })
            .collect();
            let (first, start, n) = (self.next_seq, self.ready.len(), chunk.len());
            for m in chunk {
                self.ready.push_back(QMsg { seq: self.next_seq, deliveries: 0, ..m });
                self.next_seq += 1;
            }
            let mut stored = self.ready.range(start..).map(|m| &m.rec);
            if let Err(e) = self.store.append(first, &mut stored) {
                // Already settled where they came from: nothing confirmed is lost, but say so.
                eprintln!(
                    "rdmq: dead-letter queue {}: dropped {n} dead letters: {}",
                    self.name, e.0
                );
                self.ready.truncate(start);
                self.next_seq = first;
                dropped += n;
                continue;
            }
            self.bytes += chunk_bytes;
            self.stats.published += n as u64;
        }
        dropped
    }

    /// Loads messages recovered from the journal, in sequence order. They count as delivered
    /// once (they may have been before the restart), so they arrive flagged redelivered.
    /// `settled` marks messages acknowledged before the restart: kept for seeking if the queue
    /// retains (their storage is still there), skipped otherwise.
    pub fn restore(&mut self, msgs: impl Iterator<Item = (u64, MsgRef, u64, bool)>, next_seq: u64) {
        for (seq, rec, expires_ms, settled) in msgs {
            let m = QMsg { rec, seq, deliveries: 1, expires_ms };
            if settled && !self.opts.retains() {
                continue;
            }
            self.bytes += m.rec.len as u64;
            let list = if settled { &mut self.retained } else { &mut self.ready };
            assert!(list.back().is_none_or(|b| b.seq < seq), "recovered out of order");
            list.push_back(m);
        }
        self.next_seq = next_seq;
    }

    /// Up to `max` messages at or after position `from`, waiting or delivered-but-unsettled, in
    /// position order: (position, record, deliveries so far). Nothing changes.
    pub fn browse(&self, from: u64, max: usize) -> Vec<(u64, MsgRef, u32)> {
        let start = self.ready.partition_point(|m| m.seq < from);
        let mut out: Vec<(u64, MsgRef, u32)> = self
            .ready
            .range(start..)
            .take(max)
            .map(|m| (m.seq, m.rec.clone(), m.deliveries))
            .collect();
        for c in &self.consumers {
            for m in c.unacked.iter().filter_map(|u| u.msg.as_ref()).filter(|m| m.seq >= from) {
                out.push((m.seq, m.rec.clone(), m.deliveries));
            }
        }
        out.sort_by_key(|m| m.0);
        out.truncate(max);
        out
    }

    /// The lowest sequence not yet settled (or the next sequence if every message is): storage
    /// below it may be reclaimed.
    pub fn floor(&self) -> u64 {
        let unacked = self
            .consumers
            .iter()
            .flat_map(|c| c.unacked.iter().filter_map(|u| u.msg.as_ref().map(|m| m.seq)))
            .min();
        let ready = self.ready.front().map(|m| m.seq);
        let retained = self.retained.front().map(|m| m.seq);
        [unacked, ready, retained].into_iter().flatten().min().unwrap_or(self.next_seq)
    }

    pub fn add_consumer(&mut self, key: SubKey, credit: u32) -> Result<(), QueueError> {
        assert!(credit > 0, "credit of zero is refused by the codec");
        if self.consumers.iter().any(|c| c.key == key) {
            return Err(QueueError::DuplicateConsumer);
        }
        self.consumers.push(ConsumerState {
            key,
            credit,
            outstanding: 0,
            unacked: VecDeque::new(),
        });
        Ok(())
    }

    /// Removes a consumer; its unsettled messages return to the front of the queue (or to
    /// `dead` if they reached `max_deliveries`). Returns whether it existed.
    pub fn remove_consumer(&mut self, key: SubKey, dead: &mut Vec<QMsg>) -> bool {
        let Some(i) = self.consumers.iter().position(|c| c.key == key) else {
            return false;
        };
        let c = self.consumers.remove(i);
        let back: Vec<QMsg> = c.unacked.into_iter().filter_map(|u| u.msg).collect();
        self.requeue(back, dead);
        if self.rr >= self.consumers.len() {
            self.rr = 0;
        }
        true
    }

    /// Removes every consumer whose connection is `(shard, slot, generation)`.
    pub fn remove_connection(
        &mut self,
        shard: u16,
        slot: u32,
        generation: u32,
        dead: &mut Vec<QMsg>,
    ) {
        let keys: Vec<SubKey> = self
            .consumers
            .iter()
            .filter(|c| {
                c.key.shard == shard && c.key.slot == slot && c.key.generation == generation
            })
            .map(|c| c.key)
            .collect();
        for k in keys {
            self.remove_consumer(k, dead);
        }
    }

    /// Settles deliveries of one consumer. Unknown tags are ignored: they were settled already
    /// (for instance requeued when an earlier connection of the consumer closed).
    pub fn settle(
        &mut self,
        key: SubKey,
        op: Settle,
        multiple: bool,
        tags: impl Iterator<Item = u64>,
        dead: &mut Vec<QMsg>,
    ) {
        let Some(ci) = self.consumers.iter().position(|c| c.key == key) else {
            return;
        };
        let mut taken = Vec::new();
        {
            let c = &mut self.consumers[ci];
            for tag in tags {
                if multiple {
                    for u in c.unacked.iter_mut().take_while(|u| u.tag <= tag) {
                        taken.extend(u.msg.take());
                    }
                } else if let Ok(i) = c.unacked.binary_search_by_key(&tag, |u| u.tag) {
                    taken.extend(c.unacked[i].msg.take());
                }
            }
            while c.unacked.front().is_some_and(|u| u.msg.is_none()) {
                c.unacked.pop_front();
            }
            c.outstanding -= taken.len() as u32;
            assert_eq!(
                c.outstanding as usize,
                c.unacked.iter().filter(|u| u.msg.is_some()).count()
            );
        }
        match op {
            Settle::Ack => {
                self.stats.acked += taken.len() as u64;
                for m in taken {
                    self.settle_one(m);
                }
            }
            Settle::Nack => self.requeue(taken, dead),
            Settle::Reject => {
                for m in taken {
                    self.dead_letter(m, dead);
                }
            }
        }
    }

    fn requeue(&mut self, mut msgs: Vec<QMsg>, dead: &mut Vec<QMsg>) {
        msgs.sort_by_key(|m| m.seq);
        for m in msgs {
            if m.deliveries >= self.opts.max_deliveries {
                self.dead_letter(m, dead);
            } else {
                self.stats.requeued += 1;
                // `ready` stays in sequence order, so the queue's floor is its front.
                let at = self.ready.partition_point(|r| r.seq < m.seq);
                self.ready.insert(at, m);
            }
        }
    }

    fn dead_letter(&mut self, m: QMsg, dead: &mut Vec<QMsg>) {
        self.store.settle(m.seq);
        self.bytes -= m.rec.len as u64;
        if self.opts.dead_letter.is_some() {
            self.stats.dead_lettered += 1;
            dead.push(m);
        } else {
            self.stats.dropped += 1;
        }
    }

    /// The next deliverable message, discarding expired ones on the way.
    fn next_ready(&mut self, now_ms: u64) -> Option<QMsg> {
        while let Some(m) = self.ready.pop_front() {
            if m.expires_ms != 0 && m.expires_ms <= now_ms {
                self.stats.expired += 1;
                self.bytes -= m.rec.len as u64;
                self.store.settle(m.seq);
                continue;
            }
            return Some(m);
        }
        None
    }

    /// Hands ready messages to consumers with credit, one at a time round-robin, so competing
    /// consumers share the queue evenly. Work is bounded by the consumers' total credit.
    pub fn dispatch(&mut self, now_ms: u64, out: &mut Vec<Dispatch>) {
        let n = self.consumers.len();
        if n == 0 || self.ready.is_empty() {
            return;
        }
        let mut batches: Vec<Vec<Delivered>> = (0..n).map(|_| Vec::new()).collect();
        'rounds: loop {
            let mut progressed = false;
            for i in 0..n {
                let ci = (self.rr + i) % n;
                if self.consumers[ci].outstanding >= self.consumers[ci].credit {
                    continue;
                }
                let Some(mut m) = self.next_ready(now_ms) else {
                    break 'rounds;
                };
                m.deliveries += 1;
                let tag = self.next_tag;
                self.next_tag += 1;
                batches[ci].push(Delivered {
                    rec: m.rec.clone(),
                    tag,
                    delivery_count: m.deliveries,
                    redelivered: m.deliveries > 1,
                });
                let c = &mut self.consumers[ci];
                c.unacked.push_back(Unacked { tag, msg: Some(m) });
                c.outstanding += 1;
                progressed = true;
            }
            if !progressed {
                break;
            }
        }
        self.rr = (self.rr + 1) % n;
        for (ci, msgs) in batches.into_iter().enumerate() {
            if !msgs.is_empty() {
                self.stats.delivered += msgs.len() as u64;
                out.push(Dispatch { consumer: self.consumers[ci].key, msgs });
            }
        }
    }

    /// Drops expired messages at the head even when nobody consumes, so memory is returned.
    pub fn expire(&mut self, now_ms: u64) {
        while self.ready.front().is_some_and(|m| m.expires_ms != 0 && m.expires_ms <= now_ms) {
            let m = self.ready.pop_front().expect("checked");
            self.stats.expired += 1;
            self.bytes -= m.rec.len as u64;
            self.store.settle(m.seq);
        }
        while self.retained.front().is_some_and(|m| m.expires_ms != 0 && m.expires_ms <= now_ms) {
            let m = self.retained.pop_front().expect("checked");
            self.bytes -= m.rec.len as u64;
        }
    }

    /// Messages kept after acknowledgement for seeking.
    pub fn retained_len(&self) -> usize {
        self.retained.len()
    }

    /// The storage level of the queue's store.
    pub fn durability(&self) -> rdmq_client::Durability {
        self.store.durability()
    }

    pub fn durable_position(&self) -> u64 {
        self.store.durable_position()
    }
}

#[cfg(test)]
mod tests {
    use super::super::store::MemoryStore;
    use super::*;
    use rdmq_client::wire::record::{BatchBuilder, BatchView, RecordMeta};

    fn key(id: u32) -> SubKey {
        SubKey { shard: 0, slot: id, generation: 0, id }
    }

    fn queue(max_deliveries: u32, max_length: u32) -> Queue {
        queue_with(max_deliveries, max_length, 0, 0)
    }

    fn queue_with(max_deliveries: u32, max_length: u32, max_bytes: u64, max_age_ms: u64) -> Queue {
        let opts = QueueOptions {
            durability: Durability::Memory,
            max_deliveries,
            max_length,
            dead_letter: Some("q.dlq".into()),
            max_bytes,
            max_age_ms,
        };
        Queue::new("q".into(), opts, Box::new(MemoryStore::default()))
    }

    /// Publishes `n` messages with payloads "0".."n-1" and the given TTL.
    fn publish(
        q: &mut Queue,
        from: u32,
        n: u32,
        ttl_ms: u32,
        now_ms: u64,
    ) -> Result<(u64, u32), QueueError> {
        let mut buf = Vec::new();
        let mut b = BatchBuilder::begin(&mut buf);
        for i in from..from + n {
            let meta = RecordMeta { ttl_ms, ..Default::default() };
            b.push(&mut buf, &meta, i.to_string().as_bytes());
        }
        b.finish(&mut buf);
        let batch = Bytes::from(buf);
        let view = BatchView::decode(&batch).unwrap();
        let recs: Vec<_> = view
            .records()
            .map(|(at, r)| (at as u32, r.bytes.len() as u32, r.header.ttl_ms))
            .collect();
        q.publish(&batch, recs.into_iter(), n, now_ms)
    }

    fn payload(d: &Delivered) -> String {
        let r = rdmq_client::wire::record::RecordView::decode(d.rec.bytes()).unwrap();
        String::from_utf8(r.payload().to_vec()).unwrap()
    }

    fn drain(q: &mut Queue, now: u64) -> Vec<Dispatch> {
        let mut out = Vec::new();
        q.dispatch(now, &mut out);
        out
    }

    #[test]
    fn competing_consumers_share_and_credit_bounds() {
        let mut q = queue(5, 1000);
        publish(&mut q, 0, 10, 0, 0).unwrap();
        q.add_consumer(key(1), 3).unwrap();
        q.add_consumer(key(2), 2).unwrap();
        let out = drain(&mut q, 0);
        let counts: Vec<_> = out.iter().map(|d| (d.consumer.id, d.msgs.len())).collect();
        assert_eq!(counts, vec![(1, 3), (2, 2)]);
        assert_eq!(q.ready_len(), 5);
        // No credit left: nothing more goes out until something is settled.
        assert!(drain(&mut q, 0).is_empty());
        let tags: Vec<u64> = out[0].msgs.iter().map(|m| m.tag).collect();
        q.settle(key(1), Settle::Ack, false, tags.into_iter(), &mut Vec::new());
        let out = drain(&mut q, 0);
        assert_eq!(out.iter().map(|d| d.msgs.len()).sum::<usize>(), 3);
        assert_eq!(q.stats.acked, 3);
    }

    #[test]
    fn disconnect_requeues_in_order_flagged_redelivered() {
        let mut q = queue(5, 1000);
        publish(&mut q, 0, 4, 0, 0).unwrap();
        q.add_consumer(key(1), 10).unwrap();
        let first = drain(&mut q, 0);
        assert_eq!(first[0].msgs.len(), 4);
        q.settle(key(1), Settle::Ack, false, [first[0].msgs[1].tag].into_iter(), &mut Vec::new());
        assert!(q.remove_consumer(key(1), &mut Vec::new()));
        q.add_consumer(key(2), 10).unwrap();
        let again = drain(&mut q, 0);
        let got: Vec<_> =
            again[0].msgs.iter().map(|m| (payload(m), m.redelivered, m.delivery_count)).collect();
        assert_eq!(got, vec![("0".into(), true, 2), ("2".into(), true, 2), ("3".into(), true, 2)]);
    }

    #[test]
    fn nack_past_max_deliveries_dead_letters() {
        let mut q = queue(2, 1000);
        publish(&mut q, 0, 1, 0, 0).unwrap();
        q.add_consumer(key(1), 1).unwrap();
        let mut dead = Vec::new();
        for round in 1..=2 {
            let out = drain(&mut q, 0);
            assert_eq!(out[0].msgs[0].delivery_count, round);
            q.settle(key(1), Settle::Nack, false, [out[0].msgs[0].tag].into_iter(), &mut dead);
        }
        assert_eq!(dead.len(), 1);
        assert!(drain(&mut q, 0).is_empty());
        assert_eq!(q.stats.dead_lettered, 1);
    }

    #[test]
    fn reject_dead_letters_at_once_and_multiple_ack_settles_prefix() {
        let mut q = queue(9, 1000);
        publish(&mut q, 0, 5, 0, 0).unwrap();
        q.add_consumer(key(1), 10).unwrap();
        let out = drain(&mut q, 0);
        let tags: Vec<u64> = out[0].msgs.iter().map(|m| m.tag).collect();
        let mut dead = Vec::new();
        q.settle(key(1), Settle::Reject, false, [tags[4]].into_iter(), &mut dead);
        assert_eq!(dead.len(), 1);
        q.settle(key(1), Settle::Ack, true, [tags[2]].into_iter(), &mut dead);
        assert_eq!(q.unacked_len(), 1);
        assert_eq!(q.stats.acked, 3);
        // Unknown and repeated tags are ignored.
        q.settle(key(1), Settle::Ack, false, [tags[0], 9999].into_iter(), &mut dead);
        assert_eq!(q.unacked_len(), 1);
    }

    #[test]
    fn expired_messages_are_never_delivered() {
        let mut q = queue(5, 1000);
        publish(&mut q, 0, 2, 100, 1000).unwrap();
        publish(&mut q, 2, 1, 0, 1000).unwrap();
        q.add_consumer(key(1), 10).unwrap();
        let out = drain(&mut q, 1100);
        let got: Vec<_> = out[0].msgs.iter().map(payload).collect();
        assert_eq!(got, vec!["2".to_string()]);
        assert_eq!(q.stats.expired, 2);
    }

    #[test]
    fn max_length_refuses_whole_batch() {
        let mut q = queue(5, 3);
        publish(&mut q, 0, 2, 0, 0).unwrap();
        assert_eq!(publish(&mut q, 2, 2, 0, 0), Err(QueueError::Full { max_length: 3 }));
        assert_eq!(q.ready_len(), 2);
        assert_eq!(publish(&mut q, 2, 1, 0, 0), Ok((2, 1)));
    }

    fn ack_all(q: &mut Queue, now: u64) -> Vec<String> {
        let out = drain(q, now);
        let mut got = Vec::new();
        for d in out {
            got.extend(d.msgs.iter().map(payload));
            let tags: Vec<u64> = d.msgs.iter().map(|m| m.tag).collect();
            q.settle(d.consumer, Settle::Ack, false, tags.into_iter(), &mut Vec::new());
        }
        got
    }

    #[test]
    fn seek_rewinds_over_retained_messages_and_skips_forward() {
        let mut q = queue_with(5, 1000, 1 << 20, 0);
        publish(&mut q, 0, 6, 0, 0).unwrap();
        q.add_consumer(key(1), 100).unwrap();
        assert_eq!(ack_all(&mut q, 0).len(), 6);
        assert_eq!(q.retained_len(), 6, "a retaining queue keeps acknowledged messages");
        q.seek(SeekTo::Position(2));
        assert_eq!(ack_all(&mut q, 0), vec!["2", "3", "4", "5"]);
        // Forward over waiting messages: they count as consumed.
        publish(&mut q, 6, 4, 0, 0).unwrap();
        q.seek(SeekTo::Position(8));
        assert_eq!(ack_all(&mut q, 0), vec!["8", "9"]);
        q.seek(SeekTo::Position(0));
        assert_eq!(ack_all(&mut q, 0).len(), 10);
    }

    #[test]
    fn without_retention_acknowledged_messages_are_gone_and_seek_back_finds_nothing() {
        let mut q = queue(5, 1000);
        publish(&mut q, 0, 3, 0, 0).unwrap();
        q.add_consumer(key(1), 100).unwrap();
        ack_all(&mut q, 0);
        q.seek(SeekTo::Position(0));
        assert!(ack_all(&mut q, 0).is_empty());
        assert_eq!(q.floor(), 3);
    }

    #[test]
    fn max_bytes_drops_retained_first_then_refuses() {
        // Each record is ~41 bytes (40 header + 1 payload byte).
        let mut q = queue_with(5, 1000, 41 * 4, 0);
        publish(&mut q, 0, 4, 0, 0).unwrap();
        assert!(matches!(publish(&mut q, 4, 1, 0, 0), Err(QueueError::FullBytes { .. })));
        q.add_consumer(key(1), 100).unwrap();
        ack_all(&mut q, 0);
        assert_eq!(q.retained_len(), 4);
        publish(&mut q, 4, 2, 0, 0).unwrap();
        assert_eq!(q.retained_len(), 2, "the two oldest retained made room");
    }

    #[test]
    fn max_age_expires_waiting_and_retained_messages() {
        let mut q = queue_with(5, 1000, 0, 100);
        publish(&mut q, 0, 2, 0, 1000).unwrap();
        q.add_consumer(key(1), 1).unwrap();
        assert_eq!(ack_all(&mut q, 1000), vec!["0"]);
        q.expire(1200);
        assert_eq!(q.retained_len(), 0);
        assert!(ack_all(&mut q, 1200).is_empty(), "message 1 expired unconsumed");
        assert_eq!(q.stats.expired, 1);
    }

    /// Seeded random operations: every published message ends acked, dead-lettered or held,
    /// exactly once, and credit is never exceeded.
    #[test]
    fn random_operations_conserve_messages() {
        for seed in 1..=20u64 {
            let mut rng = seed;
            let mut next = move || {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng
            };
            let mut q = queue(3, 100_000);
            let mut held: Vec<(SubKey, u64)> = Vec::new();
            let mut dead = Vec::new();
            let mut published = 0u32;
            for _ in 0..2000 {
                match next() % 6 {
                    0 => {
                        let n = (next() % 5 + 1) as u32;
                        publish(&mut q, published, n, 0, 0).unwrap();
                        published += n;
                    }
                    1 => {
                        let k = key((next() % 3) as u32);
                        let _ = q.add_consumer(k, (next() % 4 + 1) as u32);
                    }
                    2 => {
                        let k = key((next() % 3) as u32);
                        q.remove_consumer(k, &mut dead);
                        held.retain(|(hk, _)| *hk != k);
                    }
                    3 => {
                        for d in drain(&mut q, 0) {
                            held.extend(d.msgs.iter().map(|m| (d.consumer, m.tag)));
                        }
                    }
                    _ if !held.is_empty() => {
                        let (k, tag) = held.swap_remove((next() as usize) % held.len());
                        let op = [Settle::Ack, Settle::Nack, Settle::Reject][(next() % 3) as usize];
                        q.settle(k, op, false, [tag].into_iter(), &mut dead);
                    }
                    _ => {}
                }
                assert_eq!(q.unacked_len(), held.len(), "seed {seed}");
            }
            let total =
                q.stats.acked + dead.len() as u64 + q.ready_len() as u64 + q.unacked_len() as u64;
            assert_eq!(total, published as u64, "seed {seed}");
        }
    }
}
