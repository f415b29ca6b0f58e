//! What a shard does with each frame a client sends and each event another shard sends.
//!
//! Runs on the shard thread that owns the connection (frames) or the destination (events).
//! Frames are decoded by the client crate's codec; a frame that does not decode, or arrives out
//! of order, closes only its own connection with an ERROR frame saying why.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use rdmq_client::error_code as code;
use rdmq_client::wire::deliver::FLAG_REDELIVERED;
use rdmq_client::wire::error::{encode_ok, ErrorFrame};
use rdmq_client::wire::frame::{FLAG_MULTIPLE, FLAG_NO_CONFIRM};
use rdmq_client::wire::hello::Welcome;
use rdmq_client::wire::publish::{DestKind, Publish};
use rdmq_client::wire::record::BatchView;
use rdmq_client::wire::{self, Command, FrameHeader, PROTOCOL_VERSION};

use crate::arena::Bytes;
use crate::broker::pattern;
use crate::broker::queue::{Delivered, QMsg, Queue, QueueOptions, SeekTo, Settle};
use crate::broker::{MsgRef, SubKey};
use crate::conn::{write_deliver_frames, DeliverItem, SubState};
use crate::durable::Held;
use crate::event::{Event, ReplyKind, ReplyTo};
use crate::metrics;
use crate::shard::Shard;

impl Shard {
    /// Bytes arrived for the connection in `slot`: append them and handle every whole frame.
    pub fn on_bytes(&mut self, slot: u32, generation: u32, bid: u16, len: usize) {
        let data = self.ring.buffer(bid, len);
        let Some(conn) = self.conns[slot as usize].as_mut().filter(|c| c.generation == generation)
        else {
            return;
        };
        if conn.closing {
            return;
        }
        if conn.ring.is_some() {
            // After the handshake the shm socket only signals liveness: data there is a peer
            // that does not speak the transport.
            let msg = "unexpected bytes on the shm socket (frames go through the rings)";
            return fatal(self, slot, code::PROTOCOL_ERROR, msg);
        }
        conn.inbuf.extend_from_slice(data);
        metrics::add(&self.metrics.copy_in_bytes, data.len() as u64);
        if let Some(session) = conn.stomp.as_mut() {
            session.last_in_ms = self.now_ms;
            return self.stomp_parse(slot);
        }
        if let Some(session) = conn.mqtt.as_mut() {
            session.last_in_ms = self.now_ms;
            return self.mqtt_parse(slot);
        }
        let inbuf = std::mem::take(&mut conn.inbuf);
        let body_max = self.cfg.frame_body_max;
        let mut pos = 0;
        loop {
            match wire::split_frame(&inbuf[pos..], body_max) {
                Ok(None) => break,
                Ok(Some((h, body))) => {
                    let frame_len = wire::FRAME_HEADER_LEN + body.len();
                    self.on_frame(slot, generation, &h, body);
                    pos += frame_len;
                    if self.conns[slot as usize].as_ref().is_none_or(|c| c.closing) {
                        return;
                    }
                }
                Err(e) => return fatal_bad_header(self, slot, e),
            }
        }
        let conn = self.conns[slot as usize].as_mut().expect("still open");
        conn.inbuf = inbuf;
        conn.inbuf.drain(..pos);
    }

    pub(crate) fn on_frame(&mut self, slot: u32, generation: u32, h: &FrameHeader, body: &[u8]) {
        let reply = ReplyTo { shard: self.id, slot, generation, request_id: h.request_id };
        let cmd = match wire::decode(h, body) {
            Ok(cmd) => cmd,
            Err(e) => return fatal(self, slot, code::PROTOCOL_ERROR, &malformed(h.opcode, e)),
        };
        let handshaken = self.conns[slot as usize].as_ref().expect("live").handshaken;
        match (handshaken, cmd) {
            (false, Command::Hello(hello)) => {
                self.on_hello(slot, reply, hello.version_min, hello.version_max)
            }
            (false, other) => {
                let msg = format!("expected HELLO as the first frame, got {}", name_of(&other));
                fatal(self, slot, code::PROTOCOL_ERROR, &msg)
            }
            (true, Command::Hello(_)) => {
                fatal(self, slot, code::PROTOCOL_ERROR, "HELLO sent twice")
            }
            (true, Command::Ping(p)) => {
                let conn = self.conns[slot as usize].as_mut().expect("live");
                p.encode(&mut conn.out, h.request_id, true);
                self.dirty_conns.push(slot);
            }
            (true, Command::DeclareQueue(d)) => {
                let Some(opts) = self.queue_options(reply, &d) else {
                    return;
                };
                let name: Arc<str> = d.name.into();
                let explicit_dlq = !d.dead_letter.is_empty();
                self.route(
                    self.queue_owner(&name),
                    Event::DeclareQueue { reply, name, opts, explicit_dlq },
                );
            }
            (true, Command::DeleteQueue(n)) => {
                let name: Arc<str> = n.name.into();
                let owner = self.queue_owner(&name);
                self.route(owner, Event::DeleteQueue { reply, name, force: false });
            }
            (true, Command::DeclareTopic(n)) => {
                if let Err(e) = pattern::validate_topic(n.name) {
                    return self.reply(reply, err(code::INVALID_ARGUMENT, e.0));
                }
                let name: Arc<str> = n.name.into();
                self.broadcast_then_ok(reply, || Event::TopicDeclare { name: name.clone() });
            }
            (true, Command::DeleteTopic(n)) => {
                let name: Arc<str> = n.name.into();
                self.broadcast_then_ok(reply, || Event::TopicDelete { name: name.clone() });
            }
            (true, Command::Publish(p)) => {
                self.on_publish(reply, h.flags & FLAG_NO_CONFIRM == 0, body, p)
            }
            (true, Command::Subscribe(s)) => {
                self.on_subscribe(slot, generation, reply, s.id, s.pattern)
            }
            (true, Command::Consume(c)) => {
                self.on_consume(slot, generation, reply, c.id, c.credit, c.queue)
            }
            (true, Command::Unsubscribe(u)) => self.on_unsubscribe(slot, generation, reply, u.id),
            (true, Command::Ack(a)) => self.on_settle(slot, generation, Settle::Ack, h.flags, &a),
            (true, Command::Nack(a)) => self.on_settle(slot, generation, Settle::Nack, h.flags, &a),
            (true, Command::Reject(a)) => {
                self.on_settle(slot, generation, Settle::Reject, h.flags, &a)
            }
            (true, Command::Bind(b)) | (true, Command::Unbind(b)) => {
                if let Err(e) = pattern::validate_pattern(b.pattern) {
                    return self.reply(reply, err(code::INVALID_ARGUMENT, e.0));
                }
                let add = h.opcode == wire::Opcode::Bind as u8;
                let queue: Arc<str> = b.queue.into();
                let ev =
                    Event::Bind { reply, queue: queue.clone(), pattern: b.pattern.into(), add };
                self.route(self.queue_owner(&queue), ev);
            }
            (true, Command::Seek(sk)) => {
                let queue: Arc<str> = sk.queue.into();
                let to = match sk.target {
                    rdmq_client::SeekTarget::Position(p) => SeekTo::Position(p),
                    rdmq_client::SeekTarget::TimestampUs(t) => SeekTo::TimestampUs(t),
                };
                self.route(self.queue_owner(&queue), Event::Seek { reply, queue, to });
            }
            (true, Command::Browse(b)) => {
                let queue: Arc<str> = b.queue.into();
                let ev = Event::Browse {
                    reply,
                    queue: queue.clone(),
                    id: b.id,
                    from: b.from,
                    max: b.max,
                };
                self.route(self.queue_owner(&queue), ev);
            }
            (true, other) => {
                let msg = format!("{} is sent by servers, not clients", name_of(&other));
                fatal(self, slot, code::PROTOCOL_ERROR, &msg)
            }
        }
    }

    fn on_hello(&mut self, slot: u32, reply: ReplyTo, min: u16, max: u16) {
        if !(min..=max).contains(&PROTOCOL_VERSION) {
            let msg = format!(
                "client speaks versions {min}..={max}; this server speaks {PROTOCOL_VERSION}"
            );
            return fatal(self, slot, code::UNSUPPORTED_VERSION, &msg);
        }
        let (id, shards, frame_max) = (self.id, self.shards as u16, self.cfg.frame_body_max as u32);
        let conn = self.conns[slot as usize].as_mut().expect("live");
        conn.handshaken = true;
        let w = Welcome {
            version: PROTOCOL_VERSION,
            shard: id,
            shard_count: shards,
            frame_body_max: frame_max,
            server_name: concat!("rdmq ", env!("CARGO_PKG_VERSION")),
        };
        w.encode(&mut conn.out, reply.request_id);
        self.dirty_conns.push(slot);
    }

    /// Fills in server defaults; answers an error and returns `None` if the options are invalid.
    pub fn queue_options(
        &mut self,
        reply: ReplyTo,
        d: &rdmq_client::wire::declare::DeclareQueue<'_>,
    ) -> Option<QueueOptions> {
        let dead_letter = if d.dead_letter.is_empty() {
            format!("{}.dlq", d.name)
        } else {
            d.dead_letter.to_string()
        };
        if dead_letter == d.name {
            self.reply(
                reply,
                err(code::INVALID_ARGUMENT, "a queue cannot be its own dead-letter queue".into()),
            );
            return None;
        }
        let or = |v: u32, default: u32| if v == 0 { default } else { v };
        Some(QueueOptions {
            durability: d.durability,
            max_deliveries: or(d.max_deliveries, self.cfg.queue_max_deliveries),
            max_length: or(d.max_length, self.cfg.queue_max_length),
            dead_letter: Some(dead_letter),
            max_bytes: d.max_bytes,
            max_age_ms: d.max_age_ms,
        })
    }

    fn on_publish(&mut self, reply: ReplyTo, confirm: bool, body: &[u8], p: Publish<'_>) {
        match p.kind {
            DestKind::Queue => {
                let batch = self.arena.copy(&body[p.batch_offset..]);
                metrics::add(&self.metrics.copy_in_bytes, batch.len() as u64);
                self.publish_batch(reply, confirm, p.kind, p.name, batch, p.batch.count);
            }
            DestKind::Topic => {
                metrics::add(&self.metrics.published, p.batch.count as u64);
                let batch = &body[p.batch_offset..];
                self.publish_topic(reply, confirm, p.name, batch, p.batch.count, None)
            }
        }
    }

    /// Publishes a validated batch already in the buffer the destination keeps (no copy).
    pub(crate) fn publish_batch(
        &mut self,
        reply: ReplyTo,
        confirm: bool,
        kind: DestKind,
        name: &str,
        batch: Bytes,
        count: u32,
    ) {
        metrics::add(&self.metrics.published, count as u64);
        if kind == DestKind::Topic {
            return self.publish_topic(reply, confirm, name, &batch, count, Some(&batch));
        }
        let queue: Arc<str> = name.into();
        let owner = self.queue_owner(&queue);
        let ev = Event::Publish { reply: Some(reply), confirm, queue, batch, count, bound: false };
        self.route(owner, ev);
    }

    /// Publishes a validated batch to topic `name`: copies into bound queues, fan-out to every
    /// matching subscription, then the confirm (once every bound queue has confirmed its copy).
    /// `shared`, if given, is the batch already in a shared buffer, which subscribers then
    /// share instead of a new copy.
    pub fn publish_topic(
        &mut self,
        reply: ReplyTo,
        confirm: bool,
        name: &str,
        batch: &[u8],
        count: u32,
        shared: Option<&Bytes>,
    ) {
        if let Err(e) = pattern::validate_topic(name) {
            return self.reply(reply, err(code::INVALID_ARGUMENT, e.0));
        }
        if !self.cfg.auto_create && !self.topics.contains_key(name) {
            let msg = format!("no topic {name:?} (auto_create is off)");
            return self.reply(reply, err(code::NOT_FOUND, msg));
        }
        let join = confirm.then_some(reply);
        let bound = self.route_to_bound_queues(name, batch, count, join);
        let mut targets: Vec<SubKey> = Vec::new();
        self.subscriptions.for_each_match(name, |k| targets.push(k));
        if !targets.is_empty() {
            let topic: Arc<str> = name.into();
            let shared: Bytes = shared.cloned().unwrap_or_else(|| {
                metrics::add(&self.metrics.copy_in_bytes, batch.len() as u64);
                self.arena.copy(batch)
            });
            let spans: Arc<[(u32, u32)]> = BatchView::trusted(batch)
                .records()
                .map(|(at, r)| (at as u32, r.bytes.len() as u32))
                .collect();
            for key in targets {
                let ev = Event::TopicDeliver {
                    key,
                    topic: topic.clone(),
                    batch: shared.clone(),
                    spans: spans.clone(),
                };
                self.route(key.shard as usize, ev);
            }
        }
        let position = self.topic_seq;
        self.topic_seq += count as u64;
        if confirm && bound > 0 {
            // The confirm waits for every bound queue's (a durable subscriber's copy is as safe
            // as a queue publish once confirmed); `write_reply` counts them down here.
            let then = ReplyKind::Confirm { position, count };
            self.joins.insert(
                (reply.slot, reply.generation, reply.request_id),
                Join { left: bound, then },
            );
        } else if confirm {
            self.reply(reply, ReplyKind::Confirm { position, count });
        }
    }

    fn on_subscribe(&mut self, slot: u32, generation: u32, reply: ReplyTo, id: u32, pat: &str) {
        if let Err(e) = pattern::validate_pattern(pat) {
            return self.reply(reply, err(code::INVALID_ARGUMENT, e.0));
        }
        let conn = self.conns[slot as usize].as_mut().expect("live");
        if conn.id_in_use(id) {
            return self
                .reply(reply, err(code::INVALID_ARGUMENT, format!("id {id} already in use")));
        }
        let pattern: Arc<str> = pat.into();
        conn.subs.insert(id, SubState::default());
        let key = SubKey { shard: self.id, slot, generation, id };
        self.broadcast_then_ok(reply, || Event::SubAdd { pattern: pattern.clone(), key });
    }

    fn on_consume(
        &mut self,
        slot: u32,
        generation: u32,
        reply: ReplyTo,
        id: u32,
        credit: u32,
        queue: &str,
    ) {
        let conn = self.conns[slot as usize].as_mut().expect("live");
        if conn.id_in_use(id) {
            return self
                .reply(reply, err(code::INVALID_ARGUMENT, format!("id {id} already in use")));
        }
        let queue: Arc<str> = queue.into();
        conn.consumers.insert(id, queue.clone());
        conn.pending_consume.insert(reply.request_id, id);
        let key = SubKey { shard: self.id, slot, generation, id };
        self.route(self.queue_owner(&queue), Event::Consume { reply, queue, key, credit });
    }

    fn on_unsubscribe(&mut self, slot: u32, generation: u32, reply: ReplyTo, id: u32) {
        let conn = self.conns[slot as usize].as_mut().expect("live");
        let key = SubKey { shard: self.id, slot, generation, id };
        if let Some(queue) = conn.consumers.remove(&id) {
            self.route(self.queue_owner(&queue), Event::Cancel { reply, queue, key });
        } else if conn.subs.remove(&id).is_some() {
            self.broadcast_then_ok(reply, || Event::SubRemove { key });
        } else {
            self.reply(reply, err(code::NOT_FOUND, format!("no subscription or consumer {id}")));
        }
    }

    fn on_settle(
        &mut self,
        slot: u32,
        generation: u32,
        op: Settle,
        flags: u8,
        acks: &wire::ack::Acks<'_>,
    ) {
        let conn = self.conns[slot as usize].as_mut().expect("live");
        // Unknown consumers are ignored: the consumer may have been cancelled with acks in flight.
        let Some(queue) = conn.consumers.get(&acks.consumer).cloned() else {
            return;
        };
        let key = SubKey { shard: self.id, slot, generation, id: acks.consumer };
        let owner = self.queue_owner(&queue);
        let multiple = flags & FLAG_MULTIPLE != 0;
        let ev =
            Event::Settle { reply: None, queue, key, op, multiple, tags: acks.tags().collect() };
        self.route(owner, ev);
    }

    /// The queue `name` on this shard, created with default options if auto-creation is on.
    /// A dead-letter queue is created at the durability of the queue that feeds it. `Err` says
    /// why the queue does not exist and could not be made.
    fn queue_or_create(
        &mut self,
        name: &Arc<str>,
        dead_letter_of: Option<rdmq_client::Durability>,
    ) -> Result<&mut Queue, ReplyKind> {
        if !self.queues.contains_key(name) {
            if !self.cfg.auto_create && dead_letter_of.is_none() {
                let msg = format!("no queue {name:?} (auto_create is off)");
                return Err(err(code::NOT_FOUND, msg));
            }
            let opts = QueueOptions {
                durability: dead_letter_of.unwrap_or(self.cfg.default_durability),
                max_deliveries: self.cfg.queue_max_deliveries,
                max_length: self.cfg.queue_max_length,
                dead_letter: dead_letter_of.is_none().then(|| format!("{name}.dlq")),
                max_bytes: 0,
                max_age_ms: 0,
            };
            self.create_queue(name, opts).map_err(|e| err(code::STORAGE_FAILED, e))?;
        }
        Ok(self.queues.get_mut(name).expect("present or just created"))
    }

    fn route_dead_letters(
        &mut self,
        dlq: Option<String>,
        durability: rdmq_client::Durability,
        msgs: Vec<QMsg>,
    ) {
        if msgs.is_empty() {
            return;
        }
        metrics::add(&self.metrics.dead_lettered, msgs.len() as u64);
        let dlq: Arc<str> = dlq.expect("queues without a dead-letter queue drop instead").into();
        let owner = self.queue_owner(&dlq);
        self.route(owner, Event::DeadLetter { queue: dlq, durability, msgs });
    }

    /// Appends a topic publish to every queue bound to a matching pattern (durable
    /// subscriptions); with `join`, each queue answers it (confirm or error). Returns how many
    /// queues it went to.
    fn route_to_bound_queues(
        &mut self,
        topic: &str,
        batch: &[u8],
        count: u32,
        join: Option<ReplyTo>,
    ) -> usize {
        let mut queues: Vec<Arc<str>> = self
            .bindings
            .iter()
            .filter(|(pat, _)| pattern::matches(pat, topic))
            .map(|(_, q)| q.clone())
            .collect();
        if queues.is_empty() {
            return 0;
        }
        queues.sort_unstable();
        queues.dedup();
        // A queue does not keep the topic a message was published to; put it in a header, so a
        // durable subscriber (and a gateway's persistent session) can say where it came from.
        let batch = Bytes::from(stamp_topic(batch, topic));
        metrics::add(&self.metrics.copy_in_bytes, batch.len() as u64);
        let n = queues.len();
        for queue in queues {
            let owner = self.queue_owner(&queue);
            let confirm = join.is_some();
            let batch = batch.clone();
            let ev = Event::Publish { reply: join, confirm, queue, batch, count, bound: true };
            self.route(owner, ev);
        }
        n
    }

    /// The answer to BROWSE: DELIVER frames tagged with positions, then OK.
    fn write_browsed(&mut self, to: ReplyTo, id: u32, msgs: Vec<(u64, MsgRef, u32)>) {
        let Some(conn) = self.conn(to.slot, to.generation) else { return };
        if conn.closing {
            return;
        }
        let entries = msgs.iter().map(|(seq, rec, deliveries)| (*seq, *deliveries, 0, rec.bytes()));
        let (_, copied) = write_deliver_frames(&mut conn.out, id, entries);
        encode_ok(&mut conn.out, to.request_id);
        metrics::add(&self.metrics.copy_deliver_bytes, copied as u64);
        self.dirty_conns.push(to.slot);
    }

    fn write_deliveries(&mut self, key: SubKey, msgs: Vec<Delivered>) {
        let Some(conn) = self.conn(key.slot, key.generation) else {
            return;
        };
        if conn.closing || !conn.consumers.contains_key(&key.id) {
            // Dropped here; the queue requeues them when the cancel or close reaches it.
            return;
        }
        if conn.stomp.is_some() {
            return self.write_stomp_messages(key, msgs);
        }
        if conn.mqtt.is_some() {
            return self.write_mqtt_messages(key, msgs);
        }
        let (direct, mut copied, flushed) = conn.deliver_to_ring(key.id, &msgs, queue_entry);
        if direct < msgs.len() && conn.ring.is_some() {
            // Behind a full ring: held, and written straight into it once it has room.
            let rest = msgs[direct..].iter().map(|m| {
                let (tag, deliveries, flags, rec) = queue_entry(m);
                DeliverItem { tag, deliveries, flags, rec: rec.clone() }
            });
            copied += conn.hold_deliveries(key.id, rest);
        } else if direct < msgs.len() {
            let rest =
                msgs[direct..].iter().map(queue_entry).map(|(t, d, f, r)| (t, d, f, r.bytes()));
            copied += write_deliver_frames(&mut conn.out, key.id, rest).1;
        }
        metrics::add(&self.metrics.ring_bytes_out, flushed as u64);
        metrics::add(&self.metrics.delivered, msgs.len() as u64);
        metrics::add(&self.metrics.copy_deliver_bytes, copied as u64);
        self.dirty_conns.push(key.slot);
    }

    fn write_reply(&mut self, to: ReplyTo, mut kind: ReplyKind) {
        let key = (to.slot, to.generation, to.request_id);
        if let Some(j) = self.joins.get_mut(&key) {
            // A topic publish waiting for its bound queues: the first error wins, else the
            // topic's confirm goes out when the last queue has confirmed.
            j.left -= 1;
            if let ReplyKind::Error { .. } = kind {
                if !matches!(j.then, ReplyKind::Error { .. }) {
                    j.then = kind;
                }
            }
            if j.left > 0 {
                return;
            }
            kind = self.joins.remove(&key).expect("present").then;
        }
        let Some(conn) = self.conn(to.slot, to.generation) else {
            return;
        };
        if conn.closing {
            // Nothing may follow a connection-level ERROR on the wire.
            return;
        }
        if conn.stomp.is_some() {
            return self.on_stomp_reply(to, kind);
        }
        if conn.mqtt.is_some() {
            return self.on_mqtt_reply(to, kind);
        }
        if let Some(id) = conn.pending_consume.remove(&to.request_id) {
            if matches!(kind, ReplyKind::Error { .. }) {
                conn.consumers.remove(&id);
            }
        }
        match kind {
            ReplyKind::Ok => encode_ok(&mut conn.out, to.request_id),
            ReplyKind::Confirm { position, count } => {
                wire::confirm::Confirm { position, count }.encode(&mut conn.out, to.request_id)
            }
            ReplyKind::Error { code, message } => {
                ErrorFrame { code, message: &message }.encode(&mut conn.out, to.request_id)
            }
        }
        self.dirty_conns.push(to.slot);
    }
}

/// Applies one event to the shard that owns its subject.
pub fn apply(s: &mut Shard, ev: Event) {
    match ev {
        #[cfg(feature = "rdma")]
        Event::RdmaConnect { id, private } => s.rdma_connect_moved(id, private),
        Event::DeclareQueue { reply, name, opts, explicit_dlq } => {
            declare_queue(s, reply, name, opts, explicit_dlq)
        }
        Event::DeleteQueue { reply, name, force } => {
            let kind = match s.queues.get(&name) {
                None => err(code::NOT_FOUND, format!("no queue {name:?}")),
                Some(q) if q.consumer_count() > 0 && !force => err(
                    code::PRECONDITION_FAILED,
                    format!("queue {name:?} has {} consumers", q.consumer_count()),
                ),
                Some(_) => {
                    s.queues.remove(&name);
                    s.drop_queue_storage(&name);
                    let queue = name.clone();
                    s.broadcast(|| Event::BindRemove { queue: queue.clone(), pattern: None });
                    ReplyKind::Ok
                }
            };
            s.reply(reply, kind);
        }
        Event::Publish { reply, confirm, queue, batch, count, bound } => {
            let now = s.now_ms;
            let answer = |s: &mut Shard, kind| {
                if let Some(to) = reply {
                    s.reply(to, kind)
                }
            };
            if bound && !s.queues.contains_key(&queue) {
                // The queue was deleted and its binding not yet dropped everywhere: a copy must
                // not bring it back.
                return answer(s, ReplyKind::Ok);
            }
            let q = match s.queue_or_create(&queue, None) {
                Ok(q) => q,
                Err(kind) => return answer(s, kind),
            };
            let recs = BatchView::trusted(&batch)
                .records()
                .map(|(at, r)| (at as u32, r.bytes.len() as u32, r.header.ttl_ms));
            let result = q.publish(&batch, recs, count, now);
            let durable = q.durable_position();
            s.mark_queue_dirty(&queue);
            // Errors go to whoever asked; confirms only to publishers that want them.
            match (result, reply.filter(|_| confirm)) {
                (Ok(_), None) => {}
                (Ok((position, count)), Some(to)) if durable >= position + count as u64 => {
                    s.reply(to, ReplyKind::Confirm { position, count })
                }
                (Ok((position, count)), Some(to)) => {
                    let held =
                        Held { end_seq: position + count as u64, reply: to, position, count };
                    s.hold_confirm(&queue, held);
                }
                (
                    Err(
                        crate::broker::queue::QueueError::Full { .. }
                        | crate::broker::queue::QueueError::FullBytes { .. },
                    ),
                    _,
                ) if bound => {
                    // A durable subscriber that fell this far behind loses the copy, as a slow
                    // topic subscriber does; the publisher is not failed for it.
                    metrics::add(&s.metrics.topic_dropped, count as u64);
                    answer(s, ReplyKind::Ok)
                }
                (
                    Err(
                        e @ (crate::broker::queue::QueueError::Full { .. }
                        | crate::broker::queue::QueueError::FullBytes { .. }),
                    ),
                    _,
                ) => answer(s, err(code::RESOURCE_LIMIT, format!("{queue}: {e}"))),
                (Err(e), _) => answer(s, err(code::STORAGE_FAILED, format!("{queue}: {e}"))),
            }
        }
        Event::DeadLetter { queue, durability, msgs } => {
            let now = s.now_ms;
            match s.queue_or_create(&queue, Some(durability)) {
                Ok(q) => {
                    q.append_dead_letters(msgs, now);
                }
                Err(why) => eprintln!("rdmq: dropped {} dead letters: {why:?}", msgs.len()),
            }
            s.mark_queue_dirty(&queue);
        }
        Event::Consume { reply, queue, key, credit } => {
            let q = match s.queue_or_create(&queue, None) {
                Ok(q) => q,
                Err(kind) => return s.reply(reply, kind),
            };
            let kind = match q.add_consumer(key, credit) {
                Ok(()) => ReplyKind::Ok,
                Err(e) => err(code::INVALID_ARGUMENT, e.to_string()),
            };
            s.mark_queue_dirty(&queue);
            s.reply(reply, kind);
        }
        Event::Cancel { reply, queue, key } => {
            let mut dead = Vec::new();
            let mut dlq = (None, rdmq_client::Durability::Memory);
            if let Some(q) = s.queues.get_mut(&queue) {
                q.remove_consumer(key, &mut dead);
                dlq = (q.opts.dead_letter.clone(), q.opts.durability);
            }
            s.route_dead_letters(dlq.0, dlq.1, dead);
            s.mark_queue_dirty(&queue);
            s.reply(reply, ReplyKind::Ok);
        }
        Event::Settle { reply, queue, key, op, multiple, tags } => {
            let mut dead = Vec::new();
            if let Some(to) = reply {
                // Acks are logged before this pass's replies go out (see `Shard::pass`).
                s.reply(to, ReplyKind::Ok);
            }
            let Some(q) = s.queues.get_mut(&queue) else {
                return;
            };
            q.settle(key, op, multiple, tags.into_iter(), &mut dead);
            let (dlq, durability) = (q.opts.dead_letter.clone(), q.opts.durability);
            s.route_dead_letters(dlq, durability, dead);
            s.mark_queue_dirty(&queue);
        }
        Event::Deliver { key, msgs } => s.write_deliveries(key, msgs),
        Event::Browse { reply, queue, id, from, max } => match s.queues.get(&queue) {
            None => s.reply(reply, err(code::NOT_FOUND, format!("no queue {queue:?}"))),
            Some(q) => {
                let msgs = q.browse(from, max as usize);
                s.route(reply.shard as usize, Event::Browsed { to: reply, id, msgs });
            }
        },
        Event::Browsed { to, id, msgs } => s.write_browsed(to, id, msgs),
        Event::Seek { reply, queue, to } => {
            let kind = match s.queues.get_mut(&queue) {
                None => err(code::NOT_FOUND, format!("no queue {queue:?}")),
                Some(q) => {
                    q.seek(to);
                    ReplyKind::Ok
                }
            };
            s.mark_queue_dirty(&queue);
            s.reply(reply, kind);
        }
        Event::Bind { reply, queue, pattern, add } => {
            let q = if add {
                match s.queue_or_create(&queue, None) {
                    Ok(q) => q,
                    Err(kind) => return s.reply(reply, kind),
                }
            } else {
                match s.queues.get_mut(&queue) {
                    Some(q) => q,
                    None => {
                        return s.reply(reply, err(code::NOT_FOUND, format!("no queue {queue:?}")))
                    }
                }
            };
            let had = q.bindings.iter().any(|b| **b == *pattern);
            if add && !had {
                q.bindings.push(pattern.to_string());
            } else if !add && had {
                q.bindings.retain(|b| **b != *pattern);
            }
            if let Err(e) = s.persist_bindings(&queue) {
                // Not on disk: not in memory either, so every shard keeps agreeing.
                if let Some(q) = s.queues.get_mut(&queue) {
                    if add && !had {
                        q.bindings.retain(|b| **b != *pattern);
                    } else if !add && had {
                        q.bindings.push(pattern.to_string());
                    }
                }
                return s.reply(reply, err(code::STORAGE_FAILED, e));
            }
            if add {
                s.broadcast_then_ok(reply, || Event::BindAdd {
                    pattern: pattern.clone(),
                    queue: queue.clone(),
                });
            } else {
                let pattern = Some(pattern.clone());
                s.broadcast_then_ok(reply, || Event::BindRemove {
                    queue: queue.clone(),
                    pattern: pattern.clone(),
                });
            }
        }
        Event::BindAdd { pattern, queue } => {
            if !s.bindings.iter().any(|(p, q)| *p == pattern && *q == queue) {
                s.bindings.push((pattern, queue));
            }
        }
        Event::BindRemove { queue, pattern } => {
            s.bindings.retain(|(p, q)| *q != queue || pattern.as_ref().is_some_and(|x| x != p));
        }
        Event::TopicDeliver { key, topic, batch, spans } => {
            s.buffer_topic(key, &topic, &batch, &spans)
        }
        Event::Reply { to, kind } => s.write_reply(to, kind),
        Event::SubAdd { pattern, key } => s.subscriptions.add(&pattern, key),
        Event::SubRemove { key } => s.subscriptions.remove(key),
        Event::TopicDeclare { name } => {
            s.topics.insert(name, ());
        }
        Event::TopicDelete { name } => {
            s.topics.remove(&name);
        }
        Event::Mqtt(ev) => crate::gateway::mqtt::serve::apply(s, *ev),
        Event::Fence { reply, left } => {
            if left.fetch_sub(1, Ordering::AcqRel) == 1 {
                s.reply(reply, ReplyKind::Ok);
            }
        }
        Event::ConnClosed { shard, slot, generation } => {
            s.subscriptions.remove_connection(shard, slot, generation);
            let mut all_dead = Vec::new();
            let mut touched = Vec::new();
            for (name, q) in s.queues.iter_mut() {
                if q.consumer_count() == 0 {
                    continue;
                }
                let mut dead = Vec::new();
                q.remove_connection(shard, slot, generation, &mut dead);
                touched.push(name.clone());
                if !dead.is_empty() {
                    all_dead.push((q.opts.dead_letter.clone(), q.opts.durability, dead));
                }
            }
            for name in touched {
                s.mark_queue_dirty(&name);
            }
            for (dlq, durability, dead) in all_dead {
                s.route_dead_letters(dlq, durability, dead);
            }
        }
    }
}

fn declare_queue(
    s: &mut Shard,
    reply: ReplyTo,
    name: Arc<str>,
    opts: QueueOptions,
    explicit_dlq: bool,
) {
    if let Some(q) = s.queues.get(&name) {
        // An auto-created queue has default options; a declaration only conflicts on the fields
        // it set explicitly, as RabbitMQ compares declared arguments.
        let same = q.opts.durability == opts.durability
            && q.opts.max_deliveries == opts.max_deliveries
            && q.opts.max_length == opts.max_length
            && q.opts.max_bytes == opts.max_bytes
            && q.opts.max_age_ms == opts.max_age_ms
            && (!explicit_dlq || q.opts.dead_letter == opts.dead_letter);
        let kind = if same {
            ReplyKind::Ok
        } else {
            err(
                code::PRECONDITION_FAILED,
                format!("queue {name:?} exists with different options: {:?}", q.opts),
            )
        };
        return s.reply(reply, kind);
    }
    let kind = match s.create_queue(&name, opts) {
        Ok(()) => ReplyKind::Ok,
        Err(e) => err(code::STORAGE_FAILED, e),
    };
    s.reply(reply, kind);
}

/// A reply that waits for several answers (see `publish_topic`).
pub struct Join {
    pub left: usize,
    pub then: ReplyKind,
}

pub fn err(code: u16, message: String) -> ReplyKind {
    ReplyKind::Error { code, message }
}

/// Writes a connection-level ERROR and closes the connection once it is sent.
pub fn fatal(s: &mut Shard, slot: u32, code: u16, message: &str) {
    let Some(conn) = s.conns[slot as usize].as_mut() else {
        return;
    };
    if conn.closing {
        return;
    }
    match (conn.stomp.as_ref(), conn.mqtt.as_ref()) {
        (Some(session), _) => session.write_error(&mut conn.out, message, None),
        (None, Some(m)) => m.write_fatal(&mut conn.out, code, message),
        (None, None) => ErrorFrame { code, message }.encode(&mut conn.out, 0),
    }
    if code == code::PROTOCOL_ERROR || code == code::FRAME_TOO_LARGE {
        metrics::add(&s.metrics.protocol_errors, 1);
    }
    s.close_conn_with(slot, true);
}

/// Closes a connection whose frame header does not decode: ERROR 501 for a length above the
/// limit, 500 for anything else.
pub fn fatal_bad_header(s: &mut Shard, slot: u32, e: wire::DecodeError) {
    let c = if matches!(e, wire::DecodeError::Invalid { offset: 0, .. }) {
        code::FRAME_TOO_LARGE
    } else {
        code::PROTOCOL_ERROR
    };
    fatal(s, slot, c, &format!("bad frame header: {e}"));
}

/// The ERROR message for a frame whose body does not decode.
pub fn malformed(opcode: u8, e: wire::DecodeError) -> String {
    format!("malformed frame (opcode 0x{opcode:02x}): {e}")
}

/// A queue delivery as a DELIVER entry.
fn queue_entry(m: &Delivered) -> (u64, u32, u16, &MsgRef) {
    let flags = if m.redelivered { FLAG_REDELIVERED } else { 0 };
    (m.tag, m.delivery_count, flags, &m.rec)
}

fn name_of(cmd: &Command<'_>) -> &'static str {
    match cmd {
        Command::Hello(_) => "HELLO",
        Command::Welcome(_) => "WELCOME",
        Command::Ping(_) => "PING",
        Command::Pong(_) => "PONG",
        Command::DeclareQueue(_) => "DECLARE_QUEUE",
        Command::DeleteQueue(_) => "DELETE_QUEUE",
        Command::DeclareTopic(_) => "DECLARE_TOPIC",
        Command::DeleteTopic(_) => "DELETE_TOPIC",
        Command::Publish(_) => "PUBLISH",
        Command::Confirm(_) => "CONFIRM",
        Command::Subscribe(_) => "SUBSCRIBE",
        Command::Consume(_) => "CONSUME",
        Command::Unsubscribe(_) => "UNSUBSCRIBE",
        Command::Deliver(_) => "DELIVER",
        Command::Ack(_) => "ACK",
        Command::Nack(_) => "NACK",
        Command::Reject(_) => "REJECT",
        Command::Browse(_) => "BROWSE",
        Command::Bind(_) => "BIND",
        Command::Seek(_) => "SEEK",
        Command::Unbind(_) => "UNBIND",
        Command::Ok => "OK",
        Command::Error(_) => "ERROR",
    }
}

/// The batch with header `rdmq-topic: <topic>` set on every record. Only topic
/// publishes copied into bound queues pay for this copy.
fn stamp_topic(batch: &[u8], topic: &str) -> Vec<u8> {
    use rdmq_client::wire::record::{BatchBuilder, RecordMeta};
    const TOPIC_HEADER: &str = crate::gateway::mqtt::session::TOPIC_HEADER;
    let mut out = Vec::with_capacity(batch.len() + 64);
    let mut b = BatchBuilder::begin(&mut out);
    for (_, r) in BatchView::trusted(batch).records() {
        // The server's word on the topic replaces any header a client set under that name.
        let mut headers: Vec<(String, String)> = r
            .headers()
            .filter(|(k, _)| *k != TOPIC_HEADER)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        headers.push((TOPIC_HEADER.to_string(), topic.to_string()));
        let meta = RecordMeta {
            id: r.header.id,
            timestamp_us: r.header.timestamp_us,
            ttl_ms: r.header.ttl_ms,
            correlation_id: r.correlation_id(),
            reply_to: r.reply_to(),
            headers: &headers,
        };
        b.push(&mut out, &meta, r.payload());
    }
    b.finish(&mut out);
    out
}
