//! The MQTT gateway on a shard: packets from an MQTT connection become the same events native
//! frames do, and deliveries are written back as PUBLISH packets.
//!
//! Mapping (docs/MQTT.md): an MQTT topic is the native topic given by `topic::to_native_topic`
//! (`/` ↔ `.`, `+` → `*`). A clean, non-persistent session's subscriptions are native topic
//! subscriptions. A persistent session (3.1.1 clean session 0, 5.0 session expiry > 0) has a
//! durable queue bound to its filters, so messages wait there while it is away and across
//! restarts; its acknowledgements settle that queue. A 5.0 shared subscription
//! `$share/<group>/<filter>` is a queue per (group, filter) with one consumer per member.
//! Client ids, persistent sessions, retained messages and wills are kept by the home shard
//! (`registry.rs`).

use std::sync::Arc;

use rdmq_client::wire::record::{BatchBuilder, BatchView, RecordMeta};

use super::registry::{Registry, StoredSession, StoredSub};
use super::session::{
    expired, header, message_qos, Backing, Outbound, Pending, Send, Session, Sub, WillMsg,
    CONTENT_TYPE_HEADER, DEFAULT_RECEIVE_MAXIMUM, ORIGIN_HEADER, PAYLOAD_FORMAT_HEADER, QOS_HEADER,
    REQUEST_WINDOW, RETAIN_HEADER, TOPIC_ALIAS_MAXIMUM, TOPIC_HEADER,
};
use super::subscribe::RetainHandling;
use super::{
    connect_version, decode, decode_connect, ping, reason, topic, ConnAck, Connect, Disconnect,
    MqttError, Packet, PacketType, Properties, PubAck, PubComp, PubRec, Publish, Qos, Version,
};
use crate::broker::queue::{Delivered, Settle};
use crate::broker::{owner_shard, pattern, SubKey};
use crate::conn::SubState;
use crate::event::{Event, ReplyKind, ReplyTo};
use crate::metrics;
use crate::shard::Shard;

/// Events of the MQTT gateway, between connection shards and the home shard.
#[derive(Debug)]
pub enum MqttEvent {
    /// To home: this connection wants the client id.
    Claim { reply: ReplyTo, client_id: Arc<str>, clean_start: bool, expiry_s: u32 },
    /// To the connection: the client id is yours; `queue` is the persistent session's queue.
    Claimed {
        to: ReplyTo,
        present: bool,
        queue: Option<String>,
        subs: Vec<StoredSub>,
        pubrel: Vec<u16>,
    },
    /// To a connection whose client id was taken by a newer connection.
    Kick { slot: u32, generation: u32 },
    /// To home: a persistent session's subscriptions changed.
    SaveSubs { client_id: Arc<str>, holder: ReplyTo, subs: Vec<StoredSub> },
    /// To home: a connection holding `client_id` closed.
    Left {
        client_id: Arc<str>,
        conn: ReplyTo,
        will: Option<WillMsg>,
        expiry_s: u32,
        pubrel: Vec<u16>,
    },
    /// To home: set (or clear, `None`) the retained message of a native topic; `reply` hears
    /// OK once it is stored (a QoS 1/2 publisher's acknowledgement waits for it).
    Retain { topic: String, batch: Option<Arc<[u8]>>, reply: Option<ReplyTo> },
    /// To a connection: PUBREL again for these packet ids (its predecessor released them).
    Resend { to: ReplyTo, pubrel: Vec<u16> },
    /// To home: the retained messages matching an MQTT filter.
    RetainedFor { reply: ReplyTo, filter: String },
    /// To the connection: the answer (MQTT topic, one-record batch).
    Retained { to: ReplyTo, msgs: Vec<(String, Arc<[u8]>)> },
}

/// Shares of a queue name the gateway makes up: names past rdmq's 255-byte limit are hashed.
fn queue_name(prefix: &str, tail: &str) -> String {
    let name = format!("{prefix}{tail}");
    if name.len() <= 200 {
        name
    } else {
        format!("{prefix}h{:016x}", crate::broker::fnv1a(tail.as_bytes()))
    }
}

/// A reply address nobody answers at (wills and other server-made publishes).
fn nobody(shard: u16) -> ReplyTo {
    ReplyTo { shard, slot: u32::MAX, generation: 0, request_id: 0 }
}

/// Why the session ends: a reason code for 5.0's DISCONNECT, and words for the log.
struct Fail {
    code: u8,
    message: String,
}

impl Fail {
    fn new(code: u8, message: impl Into<String>) -> Fail {
        Fail { code, message: message.into() }
    }
}

impl From<MqttError> for Fail {
    fn from(e: MqttError) -> Fail {
        Fail { code: e.reason_code(), message: e.to_string() }
    }
}

impl Shard {
    fn mqtt_home(&self) -> usize {
        owner_shard("$mqtt", self.shards)
    }

    fn mqtt(&mut self, slot: u32) -> &mut Session {
        let conn = self.conns[slot as usize].as_mut().expect("live");
        conn.mqtt.as_mut().expect("an MQTT connection")
    }

    fn mqtt_reply_to(&self, slot: u32, request_id: u64) -> ReplyTo {
        let generation = self.conns[slot as usize].as_ref().expect("live").generation;
        ReplyTo { shard: self.id, slot, generation, request_id }
    }

    /// Parses and handles every whole packet in an MQTT connection's input.
    pub fn mqtt_parse(&mut self, slot: u32) {
        let max_packet = self.cfg.frame_body_max;
        let Some(conn) = self.conns[slot as usize].as_mut() else { return };
        let mut inbuf = std::mem::take(&mut conn.inbuf);
        let mut pos = 0;
        loop {
            let Some(conn) = self.conns[slot as usize].as_mut() else { return };
            let session = conn.mqtt.as_mut().expect("an MQTT connection");
            if conn.closing || (conn.handshaken && !session.connected) {
                break; // closing, or waiting for the home shard to grant the client id
            }
            if session.requests.len() >= REQUEST_WINDOW {
                conn.paused = true;
                if inbuf.len() - pos > crate::gateway::stomp::session::PAUSED_INPUT_MAX {
                    self.stop_recv(slot);
                }
                break;
            }
            let buf = &inbuf[pos..];
            if !conn.handshaken {
                match decode_connect(buf, max_packet) {
                    Ok(None) => break,
                    Ok(Some((c, n))) => {
                        pos += n;
                        self.mqtt_connect(slot, c);
                    }
                    Err(e) => {
                        metrics::add(&self.metrics.protocol_errors, 1);
                        let version = connect_version(buf);
                        return self.mqtt_refuse_connect(slot, version, &e);
                    }
                }
                continue;
            }
            let version = session.version;
            match decode(buf, version, max_packet) {
                Ok(None) => break,
                Ok(Some((p, n))) => {
                    pos += n;
                    if let Err(f) = self.mqtt_packet(slot, p) {
                        return self.mqtt_fail(slot, f);
                    }
                }
                Err(e) => {
                    metrics::add(&self.metrics.protocol_errors, 1);
                    return self.mqtt_fail(slot, e.into());
                }
            }
        }
        let Some(conn) = self.conns[slot as usize].as_mut() else { return };
        inbuf.drain(..pos);
        conn.inbuf = inbuf;
    }

    /// A CONNECT that cannot be accepted: CONNACK with the code, if the version allows one, then
    /// the close.
    fn mqtt_refuse_connect(&mut self, slot: u32, version: Option<Version>, e: &MqttError) {
        let Some(conn) = self.conns[slot as usize].as_mut() else { return };
        // A protocol level this server does not speak: the 3.1.1 answer, return code 1
        // (MQTT-3.1.2-2), which clients of every version understand.
        let unknown_level = matches!(
            e,
            MqttError::UnsupportedProtocolVersion { name, .. } if name == "MQTT" || name == "MQIsdp"
        );
        let version = version.or(unknown_level.then_some(Version::V311));
        if let Some(v) = version {
            let code = if v.is_v5() {
                // Only codes CONNACK may carry.
                let c = e.reason_code();
                Some(if super::connack::V5_CODES.contains(&c) { c } else { reason::PROTOCOL_ERROR })
            } else {
                e.connack_code(v)
            };
            if let Some(code) = code {
                let mut properties = Properties::default();
                if v.is_v5() {
                    properties.reason_string = Some(e.to_string());
                }
                ConnAck { session_present: false, code, properties }.encode(v, &mut conn.out);
            }
        }
        self.close_conn_with(slot, true);
    }

    /// Ends the session after a protocol error or a refusal: 5.0 gets a DISCONNECT with the
    /// reason code first (MQTT-4.13.1-1), 3.1.1 only the close.
    fn mqtt_fail(&mut self, slot: u32, f: Fail) {
        let Some(conn) = self.conns[slot as usize].as_mut() else { return };
        if conn.closing {
            return;
        }
        let session = conn.mqtt.as_ref().expect("an MQTT connection");
        if session.version.is_v5() && session.connected {
            let properties = Properties {
                reason_string: Some(f.message.chars().take(200).collect()),
                ..Properties::default()
            };
            // Only codes DISCONNECT may carry (some errors name CONNACK-only codes).
            let code = if super::disconnect::V5_CODES.contains(&f.code) {
                f.code
            } else {
                reason::PROTOCOL_ERROR
            };
            Disconnect { reason: code, properties }.encode(Version::V5, &mut conn.out);
        }
        self.close_conn_with(slot, true);
    }

    fn mqtt_connect(&mut self, slot: u32, c: Connect) {
        let v = c.version;
        let (shard, now) = (self.id, self.now_ms);
        let conn = self.conns[slot as usize].as_mut().expect("live");
        conn.handshaken = true;
        let generation = conn.generation;
        let session = conn.mqtt.as_mut().expect("an MQTT connection");
        session.version = v;
        let mut client_id = c.client_id.clone();
        let mut assigned = None;
        if client_id.is_empty() {
            if !v.is_v5() && !c.clean_start {
                // MQTT-3.1.3-8: a zero-byte id needs a clean session.
                let e = MqttError::ClientIdNotValid("empty client id without clean session".into());
                return self.mqtt_refuse_connect(slot, Some(v), &e);
            }
            client_id = format!("rdmq-{shard}-{slot}-{generation}-{now}");
            assigned = Some(client_id.clone());
        }
        if c.properties.authentication_method.is_some() {
            // 5.0 §4.12: a method the server does not support is refused with 0x8C.
            let properties = Properties {
                reason_string: Some("extended authentication is not supported".into()),
                ..Properties::default()
            };
            let conn = self.conns[slot as usize].as_mut().expect("live");
            let code = reason::BAD_AUTHENTICATION_METHOD;
            ConnAck { session_present: false, code, properties }.encode(v, &mut conn.out);
            return self.close_conn_with(slot, true);
        }
        let expiry_s = match v {
            Version::V5 => c.properties.session_expiry_interval.unwrap_or(0),
            _ if c.clean_start => 0,
            _ => u32::MAX,
        };
        let will = match &c.will {
            None => None,
            Some(w) => {
                let Ok(native) = topic::to_native_topic(&w.topic) else {
                    let e = MqttError::TopicNameInvalid(format!("will topic {:?}", w.topic));
                    return self.mqtt_refuse_connect(slot, Some(v), &e);
                };
                let batch = record_batch(&w.payload, w.qos, w.retain, &client_id, &w.properties);
                let delay_s = w.properties.will_delay_interval.unwrap_or(0);
                Some(WillMsg { topic: native, batch: batch.into(), retain: w.retain, delay_s })
            }
        };
        let session = self.mqtt(slot);
        session.client_id = client_id.as_str().into();
        session.expiry_s = expiry_s;
        session.keep_alive_ms = c.keep_alive_s as u64 * 1000;
        session.last_in_ms = now;
        session.will = will;
        if v.is_v5() {
            session.receive_maximum = c.properties.receive_maximum.unwrap_or(u16::MAX);
            session.max_packet = c.properties.maximum_packet_size.unwrap_or(u32::MAX) as usize;
        } else {
            session.receive_maximum = DEFAULT_RECEIVE_MAXIMUM;
        }
        session.claimed = true;
        session.assigned_id = assigned;
        let reply = self.mqtt_reply_to(slot, 0);
        let ev = MqttEvent::Claim {
            reply,
            client_id: client_id.into(),
            clean_start: c.clean_start,
            expiry_s,
        };
        let home = self.mqtt_home();
        self.route(home, Event::Mqtt(Box::new(ev)));
    }

    fn mqtt_claimed(
        &mut self,
        to: ReplyTo,
        present: bool,
        queue: Option<String>,
        subs: Vec<StoredSub>,
        pubrel: Vec<u16>,
    ) {
        let slot = to.slot;
        let Some(conn) = self.conn(slot, to.generation) else { return };
        if conn.closing {
            return;
        }
        let frame_max = self.cfg.frame_body_max as u32;
        let conn = self.conns[slot as usize].as_mut().expect("live");
        let session = conn.mqtt.as_mut().expect("an MQTT connection");
        session.connected = true;
        let assigned = session.assigned_id.take();
        let v = session.version;
        let mut properties = Properties::default();
        if v.is_v5() {
            properties.assigned_client_identifier = assigned;
            properties.topic_alias_maximum = Some(TOPIC_ALIAS_MAXIMUM);
            properties.maximum_packet_size = Some(frame_max);
            properties.subscription_identifier_available = Some(false);
            properties.retain_available = Some(true);
            properties.wildcard_subscription_available = Some(true);
            properties.shared_subscription_available = Some(true);
        }
        ConnAck { session_present: present, code: reason::SUCCESS, properties }
            .encode(v, &mut conn.out);
        // QoS 2 messages released on the last connection and not completed: PUBREL again.
        for packet_id in pubrel {
            session.outbound.insert(packet_id, Outbound::Free { qos2_released: true });
            let rel = super::PubRel { packet_id, reason: 0, properties: Properties::default() };
            rel.encode(v, &mut conn.out);
        }
        self.dirty_conns.push(slot);
        if let Some(queue) = queue {
            let session = self.mqtt(slot);
            session.persistent = true;
            session.session_queue = Some(queue.as_str().into());
            let id = session.next_sub_id();
            session.queue_consumer = Some(id);
            let credit = session.receive_maximum as u32;
            for s in &subs {
                let Ok(qos) = Qos::from_bits(s.qos) else { continue };
                let (shared, match_filter) = split_shared(&s.filter);
                let backing = match shared {
                    Some(queue) => {
                        Backing::Shared { id: session.next_sub_id(), queue: queue.into() }
                    }
                    None => Backing::SessionQueue,
                };
                session.subs.push(Sub {
                    filter: s.filter.clone(),
                    match_filter,
                    qos,
                    no_local: s.no_local,
                    retain_as_published: s.retain_as_published,
                    backing,
                });
            }
            let shared: Vec<(u32, Arc<str>)> = session
                .subs
                .iter()
                .filter_map(|s| match &s.backing {
                    Backing::Shared { id, queue } => Some((*id, queue.clone())),
                    _ => None,
                })
                .collect();
            self.mqtt_consume(slot, id, queue.into(), credit);
            for (id, queue) in shared {
                self.mqtt_consume(slot, id, queue, credit);
            }
        }
        // Packets pipelined behind CONNECT were held until now.
        self.mqtt_parse(slot);
    }

    fn mqtt_consume(&mut self, slot: u32, id: u32, queue: Arc<str>, credit: u32) {
        let conn = self.conns[slot as usize].as_mut().expect("live");
        conn.consumers.insert(id, queue.clone());
        let generation = conn.generation;
        let request = self.mqtt(slot).requests.issue(Pending::Done);
        let reply = self.mqtt_reply_to(slot, request);
        let key = SubKey { shard: self.id, slot, generation, id };
        let owner = self.queue_owner(&queue);
        self.route(owner, Event::Consume { reply, queue, key, credit: credit.max(1) });
    }

    fn mqtt_packet(&mut self, slot: u32, p: Packet) -> Result<(), Fail> {
        match p {
            Packet::Connect(_) => Err(Fail::new(reason::PROTOCOL_ERROR, "CONNECT sent twice")),
            Packet::Publish(p) => self.mqtt_publish(slot, p),
            Packet::PubAck(a) => {
                self.mqtt_acked(slot, a.packet_id, true);
                Ok(())
            }
            Packet::PubRec(r) => {
                let session = self.mqtt(slot);
                let v = session.version;
                if let Some(o) = session.outbound.get_mut(&r.packet_id) {
                    let settle = match o {
                        Outbound::Free { qos2_released } => {
                            *qos2_released = true;
                            None
                        }
                        Outbound::Queued { id, queue, tag, qos2_released } => {
                            *qos2_released = true;
                            Some((*id, queue.clone(), *tag))
                        }
                    };
                    if let Some((id, queue, tag)) = settle {
                        self.mqtt_settle(slot, id, queue, vec![tag]);
                    }
                }
                let rel = super::PubRel {
                    packet_id: r.packet_id,
                    reason: 0,
                    properties: Properties::default(),
                };
                let conn = self.conns[slot as usize].as_mut().expect("live");
                rel.encode(v, &mut conn.out);
                self.dirty_conns.push(slot);
                Ok(())
            }
            Packet::PubComp(c) => {
                self.mqtt_acked(slot, c.packet_id, false);
                Ok(())
            }
            Packet::PubRel(r) => {
                let session = self.mqtt(slot);
                session.incoming_qos2.remove(&r.packet_id);
                let mut out = Vec::new();
                let comp = PubComp {
                    packet_id: r.packet_id,
                    reason: 0,
                    properties: Properties::default(),
                };
                comp.encode(session.version, &mut out);
                session.requests.after_pending(out);
                self.mqtt_flush(slot);
                Ok(())
            }
            Packet::Subscribe(s) => self.mqtt_subscribe(slot, s),
            Packet::Unsubscribe(u) => self.mqtt_unsubscribe(slot, u),
            Packet::PingReq => {
                let conn = self.conns[slot as usize].as_mut().expect("live");
                ping::encode(PacketType::PingResp, &mut conn.out);
                self.dirty_conns.push(slot);
                Ok(())
            }
            Packet::Disconnect(d) => {
                let session = self.mqtt(slot);
                if d.reason != reason::DISCONNECT_WITH_WILL_MESSAGE {
                    session.will = None;
                }
                if let Some(e) = d.properties.session_expiry_interval {
                    if session.expiry_s == 0 && e != 0 {
                        // MQTT-3.14.2-2
                        return Err(Fail::new(
                            reason::PROTOCOL_ERROR,
                            "session expiry set at DISCONNECT after 0 at CONNECT",
                        ));
                    }
                    session.expiry_s = e;
                }
                self.close_conn_with(slot, true);
                Ok(())
            }
            // Only sent after a CONNECT with an Authentication Method, which is refused: here
            // it is a protocol error (5.0 §4.12).
            Packet::Auth(_) => Err(Fail::new(
                reason::PROTOCOL_ERROR,
                "AUTH without an authentication method (extended authentication is not supported)",
            )),
            other => Err(Fail::new(
                reason::PROTOCOL_ERROR,
                format!("{} is sent by servers, not clients", other.packet_type().name()),
            )),
        }
    }

    /// PUBACK (`puback`) or PUBCOMP from the client: the message is done.
    fn mqtt_acked(&mut self, slot: u32, packet_id: u16, puback: bool) {
        let session = self.mqtt(slot);
        match session.outbound.remove(&packet_id) {
            Some(Outbound::Queued { id, queue, tag, qos2_released: false }) if puback => {
                self.mqtt_settle(slot, id, queue, vec![tag]);
            }
            _ => {}
        }
        self.dirty_conns.push(slot); // the window may have opened
    }

    fn mqtt_settle(&mut self, slot: u32, id: u32, queue: Arc<str>, tags: Vec<u64>) {
        let generation = self.conns[slot as usize].as_ref().expect("live").generation;
        let key = SubKey { shard: self.id, slot, generation, id };
        let owner = self.queue_owner(&queue);
        let ev = Event::Settle { reply: None, queue, key, op: Settle::Ack, multiple: false, tags };
        self.route(owner, ev);
    }

    fn mqtt_publish(&mut self, slot: u32, mut p: Publish) -> Result<(), Fail> {
        let session = self.mqtt(slot);
        if let Some(alias) = p.properties.topic_alias {
            if alias == 0 || alias > TOPIC_ALIAS_MAXIMUM {
                return Err(Fail::new(reason::TOPIC_ALIAS_INVALID, format!("topic alias {alias}")));
            }
            if p.topic.is_empty() {
                match session.aliases.get(&alias) {
                    Some(t) => p.topic = t.clone(),
                    None => {
                        return Err(Fail::new(
                            reason::PROTOCOL_ERROR,
                            format!("unknown topic alias {alias}"),
                        ))
                    }
                }
            } else {
                session.aliases.insert(alias, p.topic.clone());
            }
        }
        let native = topic::to_native_topic(&p.topic)
            .ok()
            .filter(|n| n.len() <= 255 && pattern::validate_topic(n).is_ok())
            .ok_or_else(|| Fail::new(reason::TOPIC_NAME_INVALID, format!("topic {:?}", p.topic)))?;
        metrics::add(&self.metrics.published, 1);
        let origin = self.mqtt(slot).client_id.clone();
        let batch = record_batch(&p.payload, p.qos, p.retain, &origin, &p.properties);
        if p.retain {
            // Acknowledged (below, in order) only once the retained message is stored, so a
            // subscriber that comes after the PUBACK finds it.
            let reply = (p.qos != Qos::AtMostOnce).then(|| {
                let request = self.mqtt(slot).requests.issue(Pending::Done);
                self.mqtt_reply_to(slot, request)
            });
            let ev = MqttEvent::Retain {
                topic: native.clone(),
                batch: (!p.payload.is_empty()).then(|| Arc::from(batch.as_slice())),
                reply,
            };
            let home = self.mqtt_home();
            self.route(home, Event::Mqtt(Box::new(ev)));
        }
        let session = self.mqtt(slot);
        let v = session.version;
        match (p.qos, p.packet_id) {
            (Qos::AtMostOnce, _) | (_, None) => {
                let reply = self.mqtt_reply_to(slot, 0);
                self.publish_topic(reply, false, &native, &batch, 1, None);
            }
            (Qos::AtLeastOnce, Some(id)) => {
                let request = session.requests.issue(Pending::Published);
                let mut ack = Vec::new();
                PubAck { packet_id: id, reason: 0, properties: Properties::default() }
                    .encode(v, &mut ack);
                session.requests.after_pending(ack);
                let reply = self.mqtt_reply_to(slot, request);
                self.publish_topic(reply, true, &native, &batch, 1, None);
            }
            (Qos::ExactlyOnce, Some(id)) => {
                let first = session.incoming_qos2.insert(id);
                let request = first.then(|| session.requests.issue(Pending::Published));
                let mut rec = Vec::new();
                PubRec { packet_id: id, reason: 0, properties: Properties::default() }
                    .encode(v, &mut rec);
                session.requests.after_pending(rec);
                if let Some(request) = request {
                    let reply = self.mqtt_reply_to(slot, request);
                    self.publish_topic(reply, true, &native, &batch, 1, None);
                }
                self.mqtt_flush(slot);
            }
        }
        Ok(())
    }

    fn mqtt_subscribe(&mut self, slot: u32, s: super::Subscribe) -> Result<(), Fail> {
        if !s.properties.subscription_identifiers.is_empty() {
            return Err(Fail::new(
                reason::SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED,
                "subscription identifiers are not supported",
            ));
        }
        let generation = self.conns[slot as usize].as_ref().expect("live").generation;
        let mut codes = Vec::new();
        for sub in s.subscriptions {
            let (shared, match_filter) = split_shared(&sub.filter);
            let native = topic::to_native_filter(&match_filter)
                .ok()
                .filter(|n| n.len() <= 255 && pattern::validate_pattern(n).is_ok());
            let Some(native) = native else {
                codes.push(if self.mqtt(slot).version.is_v5() {
                    reason::TOPIC_FILTER_INVALID
                } else {
                    0x80
                });
                continue;
            };
            let qos = sub.options.qos;
            codes.push(qos as u8);
            let session = self.mqtt(slot);
            let existed = session.subs.iter().position(|x| x.filter == sub.filter);
            if let Some(i) = existed {
                session.subs[i].qos = qos; // a replacement keeps its backing (MQTT-3.8.4-3)
            } else {
                let backing = if let Some(queue) = shared {
                    let queue: Arc<str> = queue.into();
                    let id = session.next_sub_id();
                    let then = Pending::Bound { id, queue: queue.clone() };
                    let request = session.requests.issue(then);
                    let reply = self.mqtt_reply_to(slot, request);
                    let owner = self.queue_owner(&queue);
                    let ev = Event::Bind {
                        reply,
                        queue: queue.clone(),
                        pattern: native.into(),
                        add: true,
                    };
                    self.route(owner, ev);
                    Backing::Shared { id, queue }
                } else if let Some(queue) = session.session_queue.clone() {
                    let request = session.requests.issue(Pending::Done);
                    let reply = self.mqtt_reply_to(slot, request);
                    let owner = self.queue_owner(&queue);
                    self.route(
                        owner,
                        Event::Bind { reply, queue, pattern: native.into(), add: true },
                    );
                    Backing::SessionQueue
                } else {
                    let id = session.next_sub_id();
                    let request = session.requests.issue(Pending::Done);
                    let reply = self.mqtt_reply_to(slot, request);
                    let conn = self.conns[slot as usize].as_mut().expect("live");
                    conn.subs.insert(id, SubState::default());
                    let key = SubKey { shard: self.id, slot, generation, id };
                    let pattern: Arc<str> = native.into();
                    self.broadcast_then_ok(reply, || Event::SubAdd {
                        pattern: pattern.clone(),
                        key,
                    });
                    Backing::Topic(id)
                };
                let session = self.mqtt(slot);
                let no_local = sub.options.no_local;
                let retain_as_published = sub.options.retain_as_published;
                session.subs.push(Sub {
                    filter: sub.filter.clone(),
                    match_filter: match_filter.clone(),
                    qos,
                    no_local,
                    retain_as_published,
                    backing,
                });
            }
            // Retained messages (5.0 §3.3.1.3): not for shared subscriptions, and per the
            // retain handling option.
            let send_retained = !sub.filter.starts_with(topic::SHARE_PREFIX)
                && match sub.options.retain_handling {
                    RetainHandling::SendAtSubscribe => true,
                    RetainHandling::SendAtSubscribeIfNew => existed.is_none(),
                    RetainHandling::DoNotSend => false,
                };
            if send_retained {
                let session = self.mqtt(slot);
                let request = session.requests.issue(Pending::Retained { qos });
                let reply = self.mqtt_reply_to(slot, request);
                let ev = MqttEvent::RetainedFor { reply, filter: match_filter };
                let home = self.mqtt_home();
                self.route(home, Event::Mqtt(Box::new(ev)));
            }
        }
        let session = self.mqtt(slot);
        let mut out = Vec::new();
        super::SubAck { packet_id: s.packet_id, properties: Properties::default(), codes }
            .encode(session.version, &mut out);
        session.requests.after_pending(out);
        self.mqtt_save_subs(slot);
        self.mqtt_flush(slot);
        Ok(())
    }

    fn mqtt_unsubscribe(&mut self, slot: u32, u: super::Unsubscribe) -> Result<(), Fail> {
        let generation = self.conns[slot as usize].as_ref().expect("live").generation;
        let mut codes = Vec::new();
        for filter in &u.filters {
            let session = self.mqtt(slot);
            let Some(i) = session.subs.iter().position(|s| s.filter == *filter) else {
                codes.push(reason::NO_SUBSCRIPTION_EXISTED);
                continue;
            };
            codes.push(reason::SUCCESS);
            let sub = session.subs.remove(i);
            let request = session.requests.issue(Pending::Done);
            let reply = self.mqtt_reply_to(slot, request);
            match sub.backing {
                Backing::Topic(id) => {
                    self.conns[slot as usize].as_mut().expect("live").subs.remove(&id);
                    let key = SubKey { shard: self.id, slot, generation, id };
                    self.broadcast_then_ok(reply, || Event::SubRemove { key });
                }
                Backing::SessionQueue => {
                    let queue = self.mqtt(slot).session_queue.clone().expect("persistent");
                    let pattern = topic::to_native_filter(&sub.match_filter).unwrap_or_default();
                    let owner = self.queue_owner(&queue);
                    self.route(
                        owner,
                        Event::Bind { reply, queue, pattern: pattern.into(), add: false },
                    );
                }
                Backing::Shared { id, queue } => {
                    self.conns[slot as usize].as_mut().expect("live").consumers.remove(&id);
                    let key = SubKey { shard: self.id, slot, generation, id };
                    let owner = self.queue_owner(&queue);
                    self.route(owner, Event::Cancel { reply, queue: queue.clone(), key });
                    self.mqtt_forget_shared(queue);
                }
            }
        }
        let session = self.mqtt(slot);
        let mut out = Vec::new();
        super::UnsubAck { packet_id: u.packet_id, properties: Properties::default(), codes }
            .encode(session.version, &mut out);
        session.requests.after_pending(out);
        self.mqtt_save_subs(slot);
        self.mqtt_flush(slot);
        Ok(())
    }

    /// A persistent session's subscriptions go to the home shard, which stores them.
    fn mqtt_save_subs(&mut self, slot: u32) {
        let session = self.mqtt(slot);
        if !session.persistent {
            return;
        }
        let subs = session
            .subs
            .iter()
            .map(|s| StoredSub {
                filter: s.filter.clone(),
                qos: s.qos as u8,
                no_local: s.no_local,
                retain_as_published: s.retain_as_published,
            })
            .collect();
        let client_id = session.client_id.clone();
        let holder = self.mqtt_reply_to(slot, 0);
        let home = self.mqtt_home();
        self.route(home, Event::Mqtt(Box::new(MqttEvent::SaveSubs { client_id, holder, subs })));
    }

    fn mqtt_flush(&mut self, slot: u32) {
        let Some(conn) = self.conns[slot as usize].as_mut() else { return };
        let session = conn.mqtt.as_mut().expect("an MQTT connection");
        session.requests.flush(&mut conn.out);
        self.dirty_conns.push(slot);
    }

    /// A destination owner's answer to one of a session's requests.
    pub fn on_mqtt_reply(&mut self, to: ReplyTo, kind: ReplyKind) {
        let slot = to.slot;
        let Some(then) = self.mqtt(slot).requests.answer(to.request_id) else { return };
        if let ReplyKind::Error { message, .. } = kind {
            let code = if matches!(then, Pending::Published) {
                reason::QUOTA_EXCEEDED
            } else {
                reason::UNSPECIFIED_ERROR
            };
            return self.mqtt_fail(slot, Fail::new(code, message));
        }
        if let Pending::Bound { id, queue } = then {
            let session = self.mqtt(slot);
            if session
                .subs
                .iter()
                .any(|s| matches!(&s.backing, Backing::Shared { id: x, .. } if *x == id))
            {
                let credit = session.receive_maximum as u32;
                session.requests.reissue(to.request_id, Pending::Done);
                let conn = self.conns[slot as usize].as_mut().expect("live");
                conn.consumers.insert(id, queue.clone());
                let key = SubKey { shard: self.id, slot, generation: to.generation, id };
                let owner = self.queue_owner(&queue);
                self.route(owner, Event::Consume { reply: to, queue, key, credit: credit.max(1) });
            }
        }
        self.mqtt_after_reply(slot);
    }

    fn mqtt_after_reply(&mut self, slot: u32) {
        self.mqtt_flush(slot);
        let conn = self.conns[slot as usize].as_mut().expect("live");
        let session = conn.mqtt.as_ref().expect("an MQTT connection");
        if conn.paused && session.requests.len() <= REQUEST_WINDOW / 2 && !conn.closing {
            conn.paused = false;
            self.mqtt_parse(slot);
            self.resume_recv(slot);
        }
    }

    /// Queue deliveries (persistent session or shared subscription) as PUBLISH packets.
    pub fn write_mqtt_messages(&mut self, key: SubKey, msgs: Vec<Delivered>) {
        let now_us = crate::broker::wall_clock_ms() * 1000;
        let conn = self.conns[key.slot as usize].as_mut().expect("checked by caller");
        let session = conn.mqtt.as_mut().expect("an MQTT connection");
        let Some(queue) = conn.consumers.get(&key.id).cloned() else { return };
        let shared = session
            .subs
            .iter()
            .find(|s| matches!(&s.backing, Backing::Shared { id, .. } if *id == key.id))
            .cloned();
        let mut settle_now = Vec::new();
        for m in &msgs {
            let rec = m.rec.bytes();
            let r = rdmq_client::wire::record::RecordView::trusted(rec);
            let native = r.headers().find(|(k, _)| *k == TOPIC_HEADER).map(|(_, v)| v.to_string());
            let mqtt_topic = native.as_deref().and_then(|n| topic::from_native_topic(n).ok());
            let granted = match (&shared, &mqtt_topic) {
                (Some(s), Some(_)) => Some(s.qos),
                (None, Some(t)) => session.granted_qos(t),
                _ => None,
            };
            let (Some(t), Some(granted)) = (mqtt_topic, granted) else {
                settle_now.push(m.tag); // no MQTT spelling, or no subscription matches any more
                continue;
            };
            // No Local and Retain As Published, from the subscriptions this message matched.
            let any_matching = |flag: fn(&Sub) -> bool| match &shared {
                Some(s) => flag(s),
                None => session.subs.iter().any(|s| flag(s) && topic::matches(&s.match_filter, &t)),
            };
            let from_self = header(rec, ORIGIN_HEADER) == Some(&*session.client_id);
            if from_self && any_matching(|s| s.no_local) {
                settle_now.push(m.tag);
                continue;
            }
            let retain =
                header(rec, RETAIN_HEADER).is_some() && any_matching(|s| s.retain_as_published);
            let qos = granted.min(message_qos(rec));
            let packet_id = match qos {
                Qos::AtMostOnce => None,
                _ => session.take_packet_id_unbounded(Outbound::Queued {
                    id: key.id,
                    queue: queue.clone(),
                    tag: m.tag,
                    qos2_released: false,
                }),
            };
            let how = Send { qos, packet_id, dup: m.redelivered, retain };
            let p = session.publish_packet(&t, rec, how, now_us);
            if p.len() > session.max_packet {
                if let Some(id) = packet_id {
                    session.outbound.remove(&id);
                }
                settle_now.push(m.tag);
                continue;
            }
            conn.out.extend_from_slice(&p);
            if packet_id.is_none() {
                settle_now.push(m.tag);
            }
        }
        metrics::add(&self.metrics.delivered, msgs.len() as u64);
        self.dirty_conns.push(key.slot);
        if !settle_now.is_empty() {
            self.settle_when_written(key, queue, settle_now);
        }
    }

    /// Housekeeping: keep-alive (1.5 times the interval, MQTT-3.1.2-24) and the home shard's
    /// timers (wills, session expiry).
    pub fn mqtt_timers(&mut self) {
        let now = self.now_ms;
        let silent: Vec<u32> = (0..self.conns.len() as u32)
            .filter(|&s| {
                self.conns[s as usize].as_ref().is_some_and(|c| {
                    !c.closing
                        && c.mqtt.as_ref().is_some_and(|m| {
                            m.connected
                                && m.keep_alive_ms > 0
                                && now > m.last_in_ms + m.keep_alive_ms * 3 / 2
                        })
                })
            })
            .collect();
        for slot in silent {
            self.mqtt_fail(slot, Fail::new(reason::KEEP_ALIVE_TIMEOUT, "keep-alive timeout"));
        }
        if self.id as usize != self.mqtt_home() || !self.mqtt_registry.loaded {
            return;
        }
        let due: Vec<(u64, Arc<str>, WillMsg)> = {
            let wills = &mut self.mqtt_registry.wills;
            let (due, keep) = std::mem::take(wills).into_iter().partition(|(at, _, _)| *at <= now);
            *wills = keep;
            due
        };
        for (_, _, will) in due {
            self.mqtt_publish_will(will);
        }
        let expired: Vec<Arc<str>> = self
            .mqtt_registry
            .clients
            .iter()
            .filter(|(_, c)| c.holder.is_none() && c.expires_at_ms.is_some_and(|at| at <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            self.mqtt_end_session(&id);
        }
    }

    fn mqtt_publish_will(&mut self, will: WillMsg) {
        let reply = nobody(self.id);
        self.publish_topic(reply, false, &will.topic, &will.batch, 1, None);
        if will.retain {
            let empty =
                BatchView::trusted(&will.batch).records().all(|(_, r)| r.payload().is_empty());
            self.mqtt_set_retained(will.topic, (!empty).then_some(will.batch));
        }
    }

    fn mqtt_set_retained(&mut self, topic: String, batch: Option<Arc<[u8]>>) {
        match batch {
            Some(b) => {
                self.mqtt_registry.retained.insert(topic, b);
            }
            None => {
                self.mqtt_registry.retained.remove(&topic);
            }
        }
        if let Err(e) = self.mqtt_registry.save_retained() {
            eprintln!("rdmq: mqtt: cannot save retained messages: {e}");
        }
    }

    /// Drops a stored session and its queue.
    fn mqtt_end_session(&mut self, id: &Arc<str>) {
        let Some(c) = self.mqtt_registry.clients.get_mut(id) else { return };
        c.expires_at_ms = None;
        let session = c.session.take();
        if c.holder.is_none() {
            self.mqtt_registry.clients.remove(id);
        }
        if let Some(s) = session {
            let name: Arc<str> = session_queue_of(&s).into();
            let owner = self.queue_owner(&name);
            self.route(owner, Event::DeleteQueue { reply: nobody(self.id), name, force: true });
        }
        if let Err(e) = self.mqtt_registry.save_sessions() {
            eprintln!("rdmq: mqtt: cannot save sessions: {e}");
        }
    }

    /// An MQTT connection is closing: tell the home shard (which publishes its will unless it
    /// disconnected normally, and ends its session if it does not outlive the connection).
    pub fn mqtt_on_close(&mut self, slot: u32) {
        let reply = self.mqtt_reply_to(slot, 0);
        let Some(session) = self.conns[slot as usize].as_mut().and_then(|c| c.mqtt.as_mut()) else {
            return;
        };
        if !session.claimed {
            return;
        }
        session.claimed = false;
        // DISCONNECT dropped the will unless its reason asked for it (0x04).
        let will = session.will.take();
        let mut pubrel: Vec<u16> = session
            .outbound
            .iter()
            .filter(|(_, o)| {
                matches!(
                    o,
                    Outbound::Free { qos2_released: true }
                        | Outbound::Queued { qos2_released: true, .. }
                )
            })
            .map(|(id, _)| *id)
            .collect();
        pubrel.sort_unstable();
        let ev = MqttEvent::Left {
            client_id: session.client_id.clone(),
            conn: reply,
            will,
            expiry_s: session.expiry_s,
            pubrel,
        };
        let home = self.mqtt_home();
        self.route(home, Event::Mqtt(Box::new(ev)));
    }

    /// Deletes a shared subscription's queue if its last member has left (a plain delete, which
    /// the owner refuses while any consumer remains; routed after the member's cancel or close,
    /// so it is applied after it). Messages published while a group has no members are then
    /// dropped, as Mosquitto does.
    fn mqtt_forget_shared(&mut self, queue: Arc<str>) {
        let owner = self.queue_owner(&queue);
        let ev = Event::DeleteQueue { reply: nobody(self.id), name: queue, force: false };
        self.route(owner, ev);
    }

    /// After a closing connection's ConnClosed went out: a session that ends with it leaves its
    /// shared subscriptions.
    pub fn mqtt_after_close(&mut self, slot: u32) {
        let Some(session) = self.conns[slot as usize].as_ref().and_then(|c| c.mqtt.as_ref()) else {
            return;
        };
        if session.persistent {
            return; // the session, and its shared subscriptions, outlive the connection
        }
        let shared: Vec<Arc<str>> = session
            .subs
            .iter()
            .filter_map(|s| match &s.backing {
                Backing::Shared { queue, .. } => Some(queue.clone()),
                _ => None,
            })
            .collect();
        for queue in shared {
            self.mqtt_forget_shared(queue);
        }
    }

    /// Loads the registry on the home shard (at start, and before any MQTT event there).
    /// Stored sessions with a finite expiry start counting again from now.
    pub fn mqtt_registry_ready(&mut self) {
        if self.mqtt_registry.loaded {
            return;
        }
        let dir = self.cfg.data_dir.join("mqtt");
        self.mqtt_registry = Registry::load(&dir).unwrap_or_else(|e| {
            eprintln!("rdmq: mqtt: cannot load sessions and retained messages: {e}");
            Registry { loaded: true, dir, ..Registry::default() }
        });
        let now = self.now_ms;
        for c in self.mqtt_registry.clients.values_mut() {
            if let Some(s) = c.session.as_ref().filter(|s| s.expiry_s != u32::MAX) {
                c.expires_at_ms = Some(now + s.expiry_s as u64 * 1000);
            }
        }
    }

    /// Whether this shard keeps the MQTT registry.
    pub fn is_mqtt_home(&self) -> bool {
        self.id as usize == self.mqtt_home()
    }
}

/// Applies an MQTT gateway event on this shard.
pub fn apply(s: &mut Shard, ev: MqttEvent) {
    match ev {
        MqttEvent::Claim { reply, client_id, clean_start, expiry_s } => {
            s.mqtt_registry_ready();
            let now = s.now_ms;
            s.mqtt_registry.wills.retain(|(_, id, _)| *id != client_id);
            let entry = s.mqtt_registry.clients.entry(client_id.clone()).or_default();
            if let Some(old) = entry.holder.take() {
                s.route(
                    old.shard as usize,
                    Event::Mqtt(Box::new(MqttEvent::Kick {
                        slot: old.slot,
                        generation: old.generation,
                    })),
                );
            }
            if clean_start {
                s.mqtt_end_session(&client_id);
            }
            let entry = s.mqtt_registry.clients.entry(client_id.clone()).or_default();
            let present = entry.session.is_some();
            entry.holder = Some(reply);
            entry.expires_at_ms = None;
            if entry.session.is_none() && expiry_s > 0 {
                let queue = queue_name("mqtt.session.", &format!("{client_id}.{now}"));
                entry.session = Some(StoredSession {
                    client_id: client_id.to_string(),
                    expiry_s,
                    subs: Vec::new(),
                    pubrel: Vec::new(),
                    queue: Some(queue),
                });
            }
            if let Some(sess) = entry.session.as_mut() {
                sess.expiry_s = expiry_s;
            }
            let (queue, subs, pubrel) = match entry.session.as_mut() {
                Some(sess) if present && !clean_start => (
                    Some(session_queue_of(sess)),
                    sess.subs.clone(),
                    std::mem::take(&mut sess.pubrel),
                ),
                Some(sess) => (Some(session_queue_of(sess)), sess.subs.clone(), Vec::new()),
                None => (None, Vec::new(), Vec::new()),
            };
            if let Err(e) = s.mqtt_registry.save_sessions() {
                eprintln!("rdmq: mqtt: cannot save sessions: {e}");
            }
            let ev = MqttEvent::Claimed { to: reply, present, queue, subs, pubrel };
            s.route(reply.shard as usize, Event::Mqtt(Box::new(ev)));
        }
        MqttEvent::Claimed { to, present, queue, subs, pubrel } => {
            s.mqtt_claimed(to, present, queue, subs, pubrel)
        }
        MqttEvent::Kick { slot, generation } => {
            let Some(conn) = s.conn(slot, generation) else { return };
            if conn.closing {
                return;
            }
            if let Some(m) = conn.mqtt.as_ref().filter(|m| m.version.is_v5() && m.connected) {
                let _ = m;
                let properties = Properties {
                    reason_string: Some("another connection took this client id".into()),
                    ..Properties::default()
                };
                Disconnect { reason: reason::SESSION_TAKEN_OVER, properties }
                    .encode(Version::V5, &mut conn.out);
            }
            s.close_conn_with(slot, true);
        }
        MqttEvent::SaveSubs { client_id, holder, subs } => {
            s.mqtt_registry_ready();
            let Some(c) = s.mqtt_registry.clients.get_mut(&client_id) else { return };
            if c.holder != Some(holder) {
                return;
            }
            if let Some(sess) = c.session.as_mut() {
                sess.subs = subs;
                if let Err(e) = s.mqtt_registry.save_sessions() {
                    eprintln!("rdmq: mqtt: cannot save sessions: {e}");
                }
            }
        }
        MqttEvent::Left { client_id, conn, will, expiry_s, pubrel } => {
            s.mqtt_registry_ready();
            let now = s.now_ms;
            let mut end = false;
            // Taken over before this close arrived: the new connection resends PUBREL.
            let newer = s.mqtt_registry.clients.get(&client_id).and_then(|c| c.holder);
            if let Some(h) = newer.filter(|h| *h != conn && !pubrel.is_empty()) {
                let ev = MqttEvent::Resend { to: h, pubrel: pubrel.clone() };
                s.route(h.shard as usize, Event::Mqtt(Box::new(ev)));
            }
            if let Some(c) = s.mqtt_registry.clients.get_mut(&client_id) {
                if c.holder == Some(conn) {
                    c.holder = None;
                    match c.session.as_mut() {
                        None => end = true,
                        Some(sess) => {
                            sess.expiry_s = expiry_s;
                            sess.pubrel = pubrel;
                            match expiry_s {
                                0 => end = true,
                                u32::MAX => {}
                                e => c.expires_at_ms = Some(now + e as u64 * 1000),
                            }
                        }
                    }
                }
            }
            if end {
                s.mqtt_end_session(&client_id);
            }
            if let Some(w) = will {
                // 5.0 §3.1.3.2.2: after the delay, or when the session ends, whichever is first.
                let delay = if end { 0 } else { w.delay_s.min(expiry_s) };
                if delay == 0 {
                    s.mqtt_publish_will(w);
                } else {
                    s.mqtt_registry.wills.push((now + delay as u64 * 1000, client_id, w));
                }
            }
        }
        MqttEvent::Retain { topic, batch, reply } => {
            s.mqtt_registry_ready();
            s.mqtt_set_retained(topic, batch);
            if let Some(to) = reply {
                s.reply(to, ReplyKind::Ok);
            }
        }
        MqttEvent::Resend { to, pubrel } => {
            let Some(conn) = s.conn(to.slot, to.generation) else { return };
            let Some(session) = conn.mqtt.as_mut().filter(|m| m.connected) else { return };
            if conn.closing {
                return;
            }
            for packet_id in pubrel {
                session.outbound.insert(packet_id, Outbound::Free { qos2_released: true });
                let rel = super::PubRel { packet_id, reason: 0, properties: Properties::default() };
                rel.encode(session.version, &mut conn.out);
            }
            s.dirty_conns.push(to.slot);
        }
        MqttEvent::RetainedFor { reply, filter } => {
            s.mqtt_registry_ready();
            let now_us = crate::broker::wall_clock_ms() * 1000;
            let msgs = s
                .mqtt_registry
                .retained
                .iter()
                .filter(|(_, b)| {
                    let rec = BatchView::trusted(b).records().next().map(|(_, r)| r.bytes);
                    !rec.is_some_and(|r| expired(r, now_us))
                })
                .filter_map(|(native, b)| {
                    let t = topic::from_native_topic(native).ok()?;
                    (topic::matches(&filter, &t) && !topic::dollar_hidden(&filter, &t))
                        .then(|| (t, b.clone()))
                })
                .collect();
            s.route(
                reply.shard as usize,
                Event::Mqtt(Box::new(MqttEvent::Retained { to: reply, msgs })),
            );
        }
        MqttEvent::Retained { to, msgs } => {
            let Some(conn) = s.conn(to.slot, to.generation) else { return };
            if conn.closing {
                return;
            }
            let session = conn.mqtt.as_mut().expect("an MQTT connection");
            let Some(Pending::Retained { qos }) = session.requests.answer(to.request_id) else {
                return;
            };
            let now_us = crate::broker::wall_clock_ms() * 1000;
            for (t, batch) in msgs {
                let Some((_, r)) = BatchView::trusted(&batch).records().next() else { continue };
                let q = qos.min(message_qos(r.bytes));
                let packet_id = match q {
                    Qos::AtMostOnce => None,
                    _ => session.take_packet_id_unbounded(Outbound::Free { qos2_released: false }),
                };
                let how = Send { qos: q, packet_id, dup: false, retain: true };
                let p = session.publish_packet(&t, r.bytes, how, now_us);
                if p.len() <= session.max_packet {
                    session.requests.after_pending(p);
                } else if let Some(id) = packet_id {
                    session.outbound.remove(&id);
                }
            }
            s.mqtt_after_reply(to.slot);
        }
    }
}

/// The queue of a stored session.
fn session_queue_of(s: &StoredSession) -> String {
    s.queue.clone().unwrap_or_else(|| queue_name("mqtt.session.", &s.client_id))
}

/// A subscription filter as it is matched, and the queue behind it if it is a shared one
/// (`$share/<group>/<filter>`).
fn split_shared(filter: &str) -> (Option<String>, String) {
    match topic::parse_shared(filter) {
        Ok(Some((group, f))) => (Some(shared_queue(group, f)), f.to_string()),
        _ => (None, filter.to_string()),
    }
}

/// The queue behind `$share/<group>/<filter>`.
fn shared_queue(group: &str, filter: &str) -> String {
    let native = topic::to_native_filter(filter).unwrap_or_else(|_| filter.to_string());
    queue_name("mqtt.share.", &format!("{group}.{native}"))
}

/// One record for an MQTT message: payload, the publisher's QoS, and 5.0's properties
/// (user properties as headers, content type, response topic as reply-to, correlation data,
/// message expiry as TTL).
fn record_batch(payload: &[u8], qos: Qos, retain: bool, origin: &str, p: &Properties) -> Vec<u8> {
    let mut headers: Vec<(String, String)> = Vec::with_capacity(3 + p.user_properties.len());
    headers.push((QOS_HEADER.to_string(), (qos as u8).to_string()));
    headers.push((ORIGIN_HEADER.to_string(), origin.to_string()));
    if retain {
        headers.push((RETAIN_HEADER.to_string(), "1".to_string()));
    }
    if let Some(ct) = &p.content_type {
        headers.push((CONTENT_TYPE_HEADER.to_string(), ct.clone()));
    }
    if let Some(f) = p.payload_format_indicator {
        headers.push((PAYLOAD_FORMAT_HEADER.to_string(), f.to_string()));
    }
    for (k, v) in &p.user_properties {
        headers.push((k.clone(), v.clone()));
    }
    let reply_to = p.response_topic.as_deref().unwrap_or("");
    let correlation = p.correlation_data.as_deref().unwrap_or(&[]);
    let ttl_ms = p.message_expiry_interval.map_or(0, |s| s.saturating_mul(1000));
    let meta = RecordMeta {
        timestamp_us: crate::broker::wall_clock_ms() * 1000,
        ttl_ms,
        correlation_id: &correlation[..correlation.len().min(u16::MAX as usize)],
        reply_to: reply_to.as_bytes().get(..reply_to.len().min(u16::MAX as usize)).unwrap_or(&[]),
        headers: &headers,
        ..Default::default()
    };
    let mut batch = Vec::with_capacity(payload.len() + 96);
    let mut b = BatchBuilder::begin(&mut batch);
    b.push(&mut batch, &meta, payload);
    b.finish(&mut batch);
    batch
}
