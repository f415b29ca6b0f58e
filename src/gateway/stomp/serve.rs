//! The STOMP gateway on a shard: frames from a STOMP connection become the same events a
//! native client's frames do (publish, consume, subscribe, settle, bind), and deliveries and
//! replies for it are written back as MESSAGE, RECEIPT and ERROR frames.
//!
//! Mapping: `/queue/<name>` is the rdmq queue `<name>` (competing subscribers, acks,
//! redelivery); `/topic/<name>` is the rdmq topic `<name>` (`.`-separated words, `*` and `#`
//! wildcards in SUBSCRIBE). A SUBSCRIBE to a topic with `durable:true` or `persistent:true`
//! (RabbitMQ and Apollo) or `activemq.subscriptionName` (ActiveMQ) is a durable subscription:
//! the queue `stomp.durable.<client-id>.<name>` bound to the topic, which keeps collecting
//! while the subscriber is away; UNSUBSCRIBE with the same header deletes it.
//!
//! Any error ends the session the STOMP way: an ERROR frame, then the connection closes.

use std::sync::Arc;

use rdmq_client::wire::record::{BatchBuilder, RecordMeta, RecordView};

use super::ack::Ack;
use super::connect::{negotiate_heart_beat, Connect, Connected};
use super::send::{Destination, Send};
use super::session::{
    is_topic_ack, parse_ack_id, Backing, Pending, Session, Sub, TxOp, DEFAULT_PREFETCH,
    HEART_BEAT_MIN_MS, PAUSED_INPUT_MAX, REQUEST_WINDOW, TRANSACTION_BYTES_MAX,
    TRANSACTION_OPS_MAX,
};
use super::subscribe::{AckMode, Subscribe, Unsubscribe};
use super::transaction::{Transaction, TxOp as TxKind};
use super::{decode, Command, Frame, Limits};
use crate::broker::pattern;
use crate::broker::queue::{Delivered, Settle};
use crate::broker::SubKey;
use crate::conn::SubState;
use crate::event::{Event, ReplyKind, ReplyTo};
use crate::metrics;
use crate::shard::Shard;

/// A failed frame: what the ERROR frame says, and the receipt it answers, if any.
struct Fault {
    message: String,
    receipt: Option<String>,
}

impl Fault {
    fn new(message: impl Into<String>, frame: &Frame) -> Fault {
        Fault { message: message.into(), receipt: frame.get("receipt").map(str::to_string) }
    }
}

impl Shard {
    /// Parses and handles every whole frame in a STOMP connection's input, unless the session
    /// has too many unanswered requests (then it waits for their answers).
    pub fn stomp_parse(&mut self, slot: u32) {
        let Some(conn) = self.conns[slot as usize].as_mut() else { return };
        let unescape = conn.stomp.as_ref().expect("a STOMP connection").escapes();
        let limits =
            Limits { body_bytes_max: self.cfg.frame_body_max, unescape, ..Limits::default() };
        let mut inbuf = std::mem::take(&mut conn.inbuf);
        let mut pos = 0;
        loop {
            let Some(conn) = self.conns[slot as usize].as_mut() else { return };
            let session = conn.stomp.as_mut().expect("a STOMP connection");
            if conn.closing || session.disconnecting {
                return;
            }
            if session.requests.len() >= REQUEST_WINDOW {
                conn.paused = true;
                if inbuf.len() - pos > PAUSED_INPUT_MAX {
                    self.stop_recv(slot);
                }
                break;
            }
            match decode(&inbuf[pos..], &limits) {
                Ok(None) => break,
                Ok(Some((None, n))) => pos += n,
                Ok(Some((Some(frame), n))) => {
                    pos += n;
                    if let Err(f) = self.on_stomp_frame(slot, frame) {
                        return self.stomp_fail(slot, &f.message, f.receipt.as_deref());
                    }
                }
                Err(e) => {
                    metrics::add(&self.metrics.protocol_errors, 1);
                    return self.stomp_fail(slot, &format!("malformed frame: {e}"), None);
                }
            }
        }
        let conn = self.conns[slot as usize].as_mut().expect("still open");
        inbuf.drain(..pos);
        conn.inbuf = inbuf;
    }

    /// Writes an ERROR frame and closes the connection once it is sent.
    fn stomp_fail(&mut self, slot: u32, message: &str, receipt: Option<&str>) {
        let Some(conn) = self.conns[slot as usize].as_mut() else { return };
        if conn.closing {
            return;
        }
        let session = conn.stomp.as_ref().expect("a STOMP connection");
        session.write_error(&mut conn.out, message, receipt);
        self.close_conn_with(slot, true);
    }

    fn session(&mut self, slot: u32) -> &mut Session {
        let conn = self.conns[slot as usize].as_mut().expect("live");
        conn.stomp.as_mut().expect("a STOMP connection")
    }

    fn stomp_reply_to(&self, slot: u32, request_id: u64) -> ReplyTo {
        let generation = self.conns[slot as usize].as_ref().expect("live").generation;
        ReplyTo { shard: self.id, slot, generation, request_id }
    }

    fn on_stomp_frame(&mut self, slot: u32, frame: Frame) -> Result<(), Fault> {
        let connected = self.session(slot).connected;
        match (connected, frame.command) {
            (false, Command::Connect | Command::Stomp) => return self.stomp_connect(slot, &frame),
            (false, other) => {
                let msg =
                    format!("expected CONNECT or STOMP as the first frame, got {}", other.as_str());
                return Err(Fault::new(msg, &frame));
            }
            (true, Command::Connect | Command::Stomp) => {
                return Err(Fault::new("already connected: CONNECT sent twice", &frame))
            }
            _ => {}
        }
        let receipt = frame.get("receipt").map(str::to_string);
        match frame.command {
            Command::Send => {
                let fault = |e: super::StompError| Fault {
                    message: e.to_string(),
                    receipt: receipt.clone(),
                };
                let send = Send::from_frame(frame).map_err(fault)?;
                match send.transaction.clone() {
                    Some(tx) => self.stomp_tx_push(slot, &tx, TxOp::Send(send), receipt.clone())?,
                    None => self.stomp_send(slot, send)?,
                }
            }
            Command::Subscribe => self.stomp_subscribe(slot, &frame)?,
            Command::Unsubscribe => self.stomp_unsubscribe(slot, &frame)?,
            Command::Ack | Command::Nack => {
                let ack = Ack::from_frame(&frame).map_err(|e| Fault::new(e.to_string(), &frame))?;
                match ack.transaction.clone() {
                    Some(tx) => self.stomp_tx_push(slot, &tx, TxOp::Ack(ack), receipt.clone())?,
                    None => self.stomp_ack(slot, &ack, &frame)?,
                }
            }
            Command::Begin | Command::Commit | Command::Abort => {
                let t = Transaction::from_frame(&frame)
                    .map_err(|e| Fault::new(e.to_string(), &frame))?;
                self.stomp_transaction(slot, t, &frame)?;
            }
            Command::Disconnect => {
                let session = self.session(slot);
                session.disconnecting = true;
                if let Some(r) = receipt {
                    session.receipt_after_pending(&r);
                    self.stomp_flush_receipts(slot);
                } else {
                    self.close_conn_with(slot, true);
                }
                return Ok(());
            }
            Command::Connected | Command::Message | Command::Receipt | Command::Error => {
                let msg = format!("{} is sent by servers, not clients", frame.command.as_str());
                return Err(Fault::new(msg, &frame));
            }
            Command::Connect | Command::Stomp => unreachable!("handled above"),
        }
        if let Some(r) = receipt {
            self.session(slot).receipt_after_pending(&r);
            self.stomp_flush_receipts(slot);
        }
        Ok(())
    }

    fn stomp_connect(&mut self, slot: u32, frame: &Frame) -> Result<(), Fault> {
        let c = match Connect::from_frame(frame) {
            Ok(c) => c,
            Err(e) => {
                // STOMP 1.2 "Protocol Negotiation": the ERROR lists the versions spoken here.
                let conn = self.conns[slot as usize].as_mut().expect("live");
                let session = conn.stomp.as_ref().expect("a STOMP connection");
                let versions = super::connect::VERSIONS.join(",");
                let extra = [("version", versions.as_str())];
                let receipt = frame.get("receipt");
                session.write_error_with(&mut conn.out, &e.to_string(), receipt, &extra);
                self.close_conn_with(slot, true);
                return Ok(());
            }
        };
        let floor = |ms: u64| if ms == 0 { 0 } else { ms.max(HEART_BEAT_MIN_MS) };
        // The server offers what the client asks for (as RabbitMQ does), no faster than its
        // timers: it can send every `cy` ms and wants to hear every `cx` ms.
        let server = (floor(c.heart_beat.1), floor(c.heart_beat.0));
        let heart_beat = negotiate_heart_beat(c.heart_beat, server);
        let (id, now) = (self.id, self.now_ms);
        let conn = self.conns[slot as usize].as_mut().expect("live");
        conn.handshaken = true;
        let session_name = format!("rdmq-{id}-{slot}-{}", conn.generation);
        let session = conn.stomp.as_mut().expect("a STOMP connection");
        session.version = c.version;
        session.connected = true;
        session.heart_beat = heart_beat;
        session.last_in_ms = now;
        session.client_id = frame.get("client-id").unwrap_or("").to_string();
        let reply = Connected { version: c.version, heart_beat: server, session: session_name };
        reply.to_frame().encode(&mut conn.out);
        self.dirty_conns.push(slot);
        Ok(())
    }

    fn stomp_send(&mut self, slot: u32, send: Send) -> Result<(), Fault> {
        let fault = |message: String| Fault { message, receipt: send.receipt.clone() };
        let mut batch = Vec::with_capacity(send.body.len() + 128);
        let mut b = BatchBuilder::begin(&mut batch);
        let mut headers = send.headers;
        let take = |headers: &mut Vec<(String, String)>, k: &str| {
            headers.iter().position(|(h, _)| h == k).map(|i| headers.remove(i).1)
        };
        let reply_to = take(&mut headers, "reply-to").unwrap_or_default();
        let correlation = take(&mut headers, "correlation-id").unwrap_or_default();
        // RabbitMQ's per-message TTL: `expiration` in milliseconds from now.
        let ttl_ms = match headers.iter().find(|(k, _)| k == "expiration") {
            Some((_, v)) => v
                .parse::<u32>()
                .map_err(|_| fault(format!("bad expiration {v:?}: milliseconds")))?,
            None => 0,
        };
        if reply_to.len() > u16::MAX as usize || correlation.len() > u16::MAX as usize {
            return Err(fault("reply-to or correlation-id longer than 65535 bytes".into()));
        }
        let meta = RecordMeta {
            timestamp_us: crate::broker::wall_clock_ms() * 1000,
            ttl_ms,
            correlation_id: correlation.as_bytes(),
            reply_to: reply_to.as_bytes(),
            headers: &headers,
            ..Default::default()
        };
        b.push(&mut batch, &meta, &send.body);
        b.finish(&mut batch);
        metrics::add(&self.metrics.published, 1);
        let request = self.session(slot).requests.issue(Pending::Done);
        let reply = self.stomp_reply_to(slot, request);
        match send.destination {
            Destination::Queue(name) => {
                let queue: Arc<str> = name.into();
                let owner = self.queue_owner(&queue);
                let ev = Event::Publish {
                    reply: Some(reply),
                    confirm: true,
                    queue,
                    batch: batch.into(),
                    count: 1,
                    bound: false,
                };
                self.route(owner, ev);
            }
            Destination::Topic(name) => self.publish_topic(reply, true, &name, &batch, 1, None),
        }
        Ok(())
    }

    fn stomp_subscribe(&mut self, slot: u32, frame: &Frame) -> Result<(), Fault> {
        let s = Subscribe::from_frame(frame).map_err(|e| Fault::new(e.to_string(), frame))?;
        if self.session(slot).ids.contains_key(&s.id) {
            return Err(Fault::new(format!("subscription id {:?} is already in use", s.id), frame));
        }
        let credit =
            match frame.get("prefetch-count").or_else(|| frame.get("activemq.prefetchSize")) {
                None => DEFAULT_PREFETCH,
                Some(v) => match v.parse::<u32>() {
                    // RabbitMQ: 0 = unlimited; credit here is bounded by the queue's length anyway.
                    Ok(0) => u32::MAX,
                    Ok(n) => n,
                    Err(_) => return Err(Fault::new(format!("bad prefetch-count {v:?}"), frame)),
                },
            };
        let durable_name = durable_name(frame, &s.id);
        let destination = frame.get("destination").unwrap_or_default().to_string();
        let (id, generation) = {
            let session = self.session(slot);
            let id = session.next_sub_id();
            session.ids.insert(s.id.clone(), id);
            (id, self.conns[slot as usize].as_ref().expect("live").generation)
        };
        let key = SubKey { shard: self.id, slot, generation, id };
        let backing = match (&s.destination, durable_name) {
            (Destination::Queue(name), _) => {
                let queue: Arc<str> = name.as_str().into();
                self.conns[slot as usize]
                    .as_mut()
                    .expect("live")
                    .consumers
                    .insert(id, queue.clone());
                let request = self.session(slot).requests.issue(Pending::Done);
                let reply = self.stomp_reply_to(slot, request);
                let owner = self.queue_owner(&queue);
                self.route(owner, Event::Consume { reply, queue: queue.clone(), key, credit });
                Backing::Queue(queue)
            }
            (Destination::Topic(pat), name) => {
                pattern::validate_pattern(pat).map_err(|e| Fault::new(e.0, frame))?;
                match name {
                    None => {
                        let conn = self.conns[slot as usize].as_mut().expect("live");
                        conn.subs.insert(id, SubState::default());
                        let request = self.session(slot).requests.issue(Pending::Done);
                        let reply = self.stomp_reply_to(slot, request);
                        let pattern: Arc<str> = pat.as_str().into();
                        self.broadcast_then_ok(reply, || Event::SubAdd {
                            pattern: pattern.clone(),
                            key,
                        });
                        Backing::Topic
                    }
                    Some(name) => {
                        let client = self.session(slot).client_id.clone();
                        let queue: Arc<str> = durable_queue(&client, &name).into();
                        let then = Pending::Bound { id, queue: queue.clone(), credit };
                        let request = self.session(slot).requests.issue(then);
                        let reply = self.stomp_reply_to(slot, request);
                        let owner = self.queue_owner(&queue);
                        let ev = Event::Bind {
                            reply,
                            queue: queue.clone(),
                            pattern: pat.as_str().into(),
                            add: true,
                        };
                        self.route(owner, ev);
                        Backing::Durable(queue)
                    }
                }
            }
        };
        let sub = Sub { stomp_id: s.id, destination, ack: s.ack, backing };
        self.session(slot).subs.insert(id, sub);
        Ok(())
    }

    fn stomp_unsubscribe(&mut self, slot: u32, frame: &Frame) -> Result<(), Fault> {
        let u = Unsubscribe::from_frame(frame).map_err(|e| Fault::new(e.to_string(), frame))?;
        let session = self.session(slot);
        let Some(id) = session.ids.remove(&u.id) else {
            return Err(Fault::new(format!("no subscription {:?}", u.id), frame));
        };
        let sub = session.subs.remove(&id).expect("ids and subs agree");
        let generation = self.conns[slot as usize].as_ref().expect("live").generation;
        let key = SubKey { shard: self.id, slot, generation, id };
        let forget = durable_name(frame, &u.id).is_some();
        let durable = matches!(sub.backing, Backing::Durable(_));
        match sub.backing {
            Backing::Topic => {
                self.conns[slot as usize].as_mut().expect("live").subs.remove(&id);
                let request = self.session(slot).requests.issue(Pending::Done);
                let reply = self.stomp_reply_to(slot, request);
                self.broadcast_then_ok(reply, || Event::SubRemove { key });
            }
            Backing::Queue(queue) | Backing::Durable(queue) => {
                self.conns[slot as usize].as_mut().expect("live").consumers.remove(&id);
                let delete = (durable && forget).then(|| queue.clone());
                let request = self.session(slot).requests.issue(Pending::Cancelled { delete });
                let reply = self.stomp_reply_to(slot, request);
                let owner = self.queue_owner(&queue);
                self.route(owner, Event::Cancel { reply, queue, key });
            }
        }
        Ok(())
    }

    fn stomp_ack(&mut self, slot: u32, ack: &Ack, frame: &Frame) -> Result<(), Fault> {
        if is_topic_ack(&ack.id) {
            return Ok(()); // topic messages are never redelivered: nothing to settle
        }
        let Some((id, tag)) = parse_ack_id(&ack.id) else {
            return Err(Fault::new(format!("no message with ack id {:?}", ack.id), frame));
        };
        let session = self.session(slot);
        let Some(sub) = session.subs.get(&id) else {
            // Its subscription is gone: the queue already took the message back.
            return Ok(());
        };
        let Some(queue) = sub.queue().cloned() else { return Ok(()) };
        let multiple = sub.ack == AckMode::Client;
        let op = match (ack.nack, frame.get("requeue")) {
            (false, _) => Settle::Ack,
            // RabbitMQ's extension: `requeue:false` dead-letters instead of requeueing.
            (true, Some("false")) => Settle::Reject,
            (true, _) => Settle::Nack,
        };
        let reply = match &ack.receipt {
            Some(_) => {
                let request = session.requests.issue(Pending::Done);
                Some(self.stomp_reply_to(slot, request))
            }
            None => None,
        };
        let generation = self.conns[slot as usize].as_ref().expect("live").generation;
        let key = SubKey { shard: self.id, slot, generation, id };
        let owner = self.queue_owner(&queue);
        self.route(owner, Event::Settle { reply, queue, key, op, multiple, tags: vec![tag] });
        Ok(())
    }

    fn stomp_tx_push(
        &mut self,
        slot: u32,
        tx: &str,
        op: TxOp,
        receipt: Option<String>,
    ) -> Result<(), Fault> {
        let fault = |message: String| Fault { message, receipt: receipt.clone() };
        let session = self.session(slot);
        let Some(ops) = session.transactions.get_mut(tx) else {
            return Err(fault(format!("no transaction {tx:?} (send BEGIN first)")));
        };
        if ops.len() >= TRANSACTION_OPS_MAX {
            return Err(fault(format!(
                "transaction {tx:?} holds more than {TRANSACTION_OPS_MAX} frames"
            )));
        }
        let bytes = tx_bytes(&op);
        ops.push(op);
        session.transaction_bytes += bytes;
        if session.transaction_bytes > TRANSACTION_BYTES_MAX {
            return Err(fault(format!(
                "open transactions hold more than {} MiB of messages",
                TRANSACTION_BYTES_MAX >> 20
            )));
        }
        Ok(())
    }

    fn stomp_transaction(&mut self, slot: u32, t: Transaction, frame: &Frame) -> Result<(), Fault> {
        let session = self.session(slot);
        match t.op {
            TxKind::Begin => {
                if session.transactions.contains_key(&t.id) {
                    return Err(Fault::new(format!("transaction {:?} already begun", t.id), frame));
                }
                session.transactions.insert(t.id, Vec::new());
            }
            TxKind::Abort => {
                let Some(ops) = session.transactions.remove(&t.id) else {
                    return Err(Fault::new(format!("no transaction {:?}", t.id), frame));
                };
                session.transaction_bytes -= ops.iter().map(tx_bytes).sum::<usize>();
            }
            TxKind::Commit => {
                let Some(ops) = session.transactions.remove(&t.id) else {
                    return Err(Fault::new(format!("no transaction {:?}", t.id), frame));
                };
                session.transaction_bytes -= ops.iter().map(tx_bytes).sum::<usize>();
                for op in ops {
                    match op {
                        TxOp::Send(s) => self.stomp_send(slot, s)?,
                        TxOp::Ack(a) => self.stomp_ack(slot, &a, frame)?,
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes receipts whose requests are answered, and closes a disconnecting session whose
    /// last receipt is out.
    fn stomp_flush_receipts(&mut self, slot: u32) {
        let Some(conn) = self.conns[slot as usize].as_mut() else { return };
        let session = conn.stomp.as_mut().expect("a STOMP connection");
        let waiting = session.requests.flush(&mut conn.out);
        let close = session.disconnecting && !waiting;
        self.dirty_conns.push(slot);
        if close {
            self.close_conn_with(slot, true);
        }
    }

    /// A destination owner's answer to one of a session's requests.
    pub fn on_stomp_reply(&mut self, to: ReplyTo, kind: ReplyKind) {
        let slot = to.slot;
        let Some(then) = self.session(slot).requests.answer(to.request_id) else { return };
        if let ReplyKind::Error { message, .. } = kind {
            return self.stomp_fail(slot, &message, None);
        }
        match then {
            Pending::Done | Pending::Cancelled { delete: None } => {}
            Pending::Bound { id, queue, credit } => {
                // Same request id: receipts issued after the SUBSCRIBE keep waiting for it.
                let conn = self.conns[slot as usize].as_mut().expect("live");
                let session = conn.stomp.as_mut().expect("a STOMP connection");
                if session.subs.contains_key(&id) {
                    conn.consumers.insert(id, queue.clone());
                    session.requests.reissue(to.request_id, Pending::Done);
                    let key = SubKey { shard: self.id, slot, generation: to.generation, id };
                    let owner = self.queue_owner(&queue);
                    self.route(owner, Event::Consume { reply: to, queue, key, credit });
                }
            }
            Pending::Cancelled { delete: Some(queue) } => {
                self.session(slot).requests.reissue(to.request_id, Pending::Done);
                let owner = self.queue_owner(&queue);
                self.route(owner, Event::DeleteQueue { reply: to, name: queue, force: false });
            }
        }
        self.stomp_flush_receipts(slot);
        let conn = self.conns[slot as usize].as_mut().expect("live");
        let session = conn.stomp.as_ref().expect("a STOMP connection");
        if conn.paused && session.requests.len() <= REQUEST_WINDOW / 2 && !conn.closing {
            conn.paused = false;
            self.stomp_parse(slot);
            self.resume_recv(slot);
        }
    }

    /// Queue deliveries to a STOMP subscription: MESSAGE frames; an `ack:auto` subscription's
    /// deliveries are settled as they are written.
    pub fn write_stomp_messages(&mut self, key: SubKey, msgs: Vec<Delivered>) {
        let conn = self.conns[key.slot as usize].as_mut().expect("checked by caller");
        let session = conn.stomp.as_ref().expect("a STOMP connection");
        let Some(sub) = session.subs.get(&key.id) else { return };
        let destination = match &sub.backing {
            Backing::Queue(q) => format!("/queue/{q}"),
            _ => sub.destination.clone(),
        };
        let mut tags = Vec::new();
        for m in &msgs {
            let message_id = format!("{}-{}", key.id, m.tag);
            // A durable subscription's messages name the topic they were published to.
            let topic = match sub.backing {
                Backing::Durable(_) => RecordView::trusted(m.rec.bytes())
                    .headers()
                    .find(|(k, _)| *k == crate::gateway::mqtt::session::TOPIC_HEADER)
                    .map(|(_, t)| format!("/topic/{t}")),
                _ => None,
            };
            let destination = topic.as_deref().unwrap_or(&destination);
            let (redelivered, rec) = (m.redelivered, m.rec.bytes());
            session.write_message(&mut conn.out, sub, &message_id, destination, redelivered, rec);
            if sub.ack == AckMode::Auto {
                tags.push(m.tag);
            }
        }
        let queue = sub.queue().cloned();
        metrics::add(&self.metrics.delivered, msgs.len() as u64);
        self.dirty_conns.push(key.slot);
        if let (false, Some(queue)) = (tags.is_empty(), queue) {
            self.settle_when_written(key, queue, tags);
        }
    }

    /// Heart-beat timers, run from housekeeping: writes an EOL to sessions due one, and ends
    /// sessions whose client has been silent for twice its negotiated interval.
    pub fn stomp_heart_beats(&mut self) {
        let now = self.now_ms;
        let mut silent = Vec::new();
        let mut beat = Vec::new();
        for (slot, conn) in self.conns.iter_mut().enumerate() {
            let Some(conn) = conn.as_mut().filter(|c| !c.closing) else { continue };
            let Some(session) = conn.stomp.as_mut().filter(|s| s.connected) else { continue };
            let (client, server) = session.heart_beat;
            if client > 0 && now > session.last_in_ms + 2 * client {
                silent.push((slot as u32, client));
                continue;
            }
            if server > 0 && now >= session.last_out_ms + server && conn.out.is_empty() {
                conn.out.push(b'\n');
                session.last_out_ms = now;
                beat.push(slot as u32);
            }
        }
        self.dirty_conns.extend(beat);
        for (slot, interval) in silent {
            let msg =
                format!("no heart-beat or frame from the client for over {} ms", 2 * interval);
            self.stomp_fail(slot, &msg, None);
        }
    }
}

/// What a held frame costs against `TRANSACTION_BYTES_MAX`.
fn tx_bytes(op: &TxOp) -> usize {
    match op {
        TxOp::Send(s) => {
            s.body.len() + s.headers.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
        }
        TxOp::Ack(a) => a.id.len(),
    }
}

/// The durable subscription name a SUBSCRIBE or UNSUBSCRIBE asks for, if it asks for one:
/// `activemq.subscriptionName`, or the subscription id with `durable:true`/`persistent:true`.
fn durable_name(frame: &Frame, id: &str) -> Option<String> {
    if let Some(n) = frame.get("activemq.subscriptionName") {
        return Some(n.to_string());
    }
    let yes = |k: &str| frame.get(k).is_some_and(|v| v.eq_ignore_ascii_case("true"));
    (yes("durable") || yes("persistent")).then(|| id.to_string())
}

/// The queue behind a durable subscription.
fn durable_queue(client_id: &str, name: &str) -> String {
    if client_id.is_empty() {
        format!("stomp.durable.{name}")
    } else {
        format!("stomp.durable.{client_id}.{name}")
    }
}
