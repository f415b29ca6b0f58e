//! One MQTT connection's session state: the negotiated version and limits, its subscriptions
//! and the native subscriptions or consumers behind them, packet identifiers in flight both
//! ways, topic aliases, and packets waiting for earlier requests to be answered.
//!
//! MQTT requires acknowledgements in order (PUBACK/PUBREC in the order the PUBLISH packets
//! arrived, MQTT-4.6.0-2/-3), and a SUBACK must follow the subscription it acknowledges. So
//! every packet the server writes in answer to a request is queued behind the requests issued
//! before it, as STOMP receipts are (`gateway::ordered`).

use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};

use rdmq_client::wire::record::RecordView;

use super::topic;
use super::{Properties, Publish, Qos, Version};
use crate::conn::SubState;
use crate::gateway::ordered::Requests;

/// Record headers the gateway writes next to MQTT's own fields.
pub const QOS_HEADER: &str = "mqtt-qos";
/// Set when the message was published with RETAIN (for Retain As Published).
pub const RETAIN_HEADER: &str = "mqtt-retain";
/// The publishing client's id (for No Local).
pub const ORIGIN_HEADER: &str = "mqtt-origin";
/// Record headers starting with this are the gateway's own and are not user properties.
pub const INTERNAL_PREFIX: &str = "mqtt-";
pub const PAYLOAD_FORMAT_HEADER: &str = "mqtt-payload-format";
/// The topic a message copied into a queue by a binding was published to.
pub const TOPIC_HEADER: &str = "rdmq-topic";
/// `content-type` is shared with STOMP, so a STOMP consumer sees an MQTT 5 content type.
pub const CONTENT_TYPE_HEADER: &str = "content-type";

/// Requests (publishes at QoS 1/2, subscriptions) a session may have unanswered before the
/// server stops reading its packets.
pub const REQUEST_WINDOW: usize = 512;
/// Messages sent to a 3.1.1 client and not yet acknowledged (5.0 clients say their own).
pub const DEFAULT_RECEIVE_MAXIMUM: u16 = 256;
/// Topic aliases a 5.0 client may set up towards the server.
pub const TOPIC_ALIAS_MAXIMUM: u16 = 64;

/// What one of the client's subscriptions is backed by.
#[derive(Debug, Clone)]
pub enum Backing {
    /// A native topic subscription with this id (clean, non-shared).
    Topic(u32),
    /// A binding of the session queue (persistent sessions).
    SessionQueue,
    /// A consumer (this id) on a shared subscription's queue.
    Shared { id: u32, queue: Arc<str> },
}

#[derive(Debug, Clone)]
pub struct Sub {
    /// As the client sent it (`$share/...` included).
    pub filter: String,
    /// The filter the messages are matched with (the part after `$share/group/`).
    pub match_filter: String,
    pub qos: Qos,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub backing: Backing,
}

/// A message sent to the client at QoS 1 or 2 and not yet fully acknowledged.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// From a topic subscription or a retained message: nothing to settle.
    Free { qos2_released: bool },
    /// From a queue: settle `tag` of consumer `id` when acknowledged.
    Queued { id: u32, queue: Arc<str>, tag: u64, qos2_released: bool },
}

/// What to do when a request's answer arrives.
#[derive(Debug)]
pub enum Pending {
    Done,
    /// A QoS 1/2 publish: nothing but the queued PUBACK/PUBREC.
    Published,
    /// Retained messages for a new subscription: the answer carries them.
    Retained {
        qos: Qos,
    },
    /// A shared subscription's binding is in place: start consuming.
    Bound {
        id: u32,
        queue: Arc<str>,
    },
}

pub struct Session {
    pub version: Version,
    pub connected: bool,
    pub client_id: Arc<str>,
    /// The session outlives the connection (3.1.1 clean session 0, 5.0 expiry > 0, or a
    /// resumed session): subscriptions bind the session queue.
    pub persistent: bool,
    pub expiry_s: u32,
    pub keep_alive_ms: u64,
    pub last_in_ms: u64,
    /// How many unacknowledged QoS 1/2 messages the client accepts, and its packet size limit.
    pub receive_maximum: u16,
    pub max_packet: usize,
    /// The will, dropped on a normal DISCONNECT.
    pub will: Option<WillMsg>,
    /// The home shard knows this connection holds the client id (so tell it when it closes).
    pub claimed: bool,
    /// A client id the server made up for an empty one (5.0 sends it back in CONNACK).
    pub assigned_id: Option<String>,
    /// A persistent session's queue.
    pub session_queue: Option<Arc<str>>,
    pub subs: Vec<Sub>,
    /// The session queue's consumer id, once consuming.
    pub queue_consumer: Option<u32>,
    next_id: u32,
    next_packet_id: u16,
    pub outbound: FxHashMap<u16, Outbound>,
    /// QoS 2 packet ids received and confirmed, until PUBREL.
    pub incoming_qos2: FxHashSet<u16>,
    pub aliases: FxHashMap<u16, String>,
    /// Requests awaiting answers, and the acknowledgements waiting behind them.
    pub requests: Requests<Pending>,
}

/// A will as the home shard keeps it until it is due.
#[derive(Debug, Clone)]
pub struct WillMsg {
    /// Native topic.
    pub topic: String,
    /// One record batch.
    pub batch: Arc<[u8]>,
    pub retain: bool,
    pub delay_s: u32,
}

impl Session {
    pub fn new(now_ms: u64) -> Session {
        Session {
            version: Version::V311,
            connected: false,
            client_id: "".into(),
            persistent: false,
            expiry_s: 0,
            keep_alive_ms: 0,
            last_in_ms: now_ms,
            receive_maximum: DEFAULT_RECEIVE_MAXIMUM,
            max_packet: usize::MAX,
            will: None,
            claimed: false,
            assigned_id: None,
            session_queue: None,
            subs: Vec::new(),
            queue_consumer: None,
            next_id: 1,
            next_packet_id: 1,
            outbound: FxHashMap::default(),
            incoming_qos2: FxHashSet::default(),
            aliases: FxHashMap::default(),
            requests: Requests::default(),
        }
    }

    pub fn next_sub_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
    }

    /// A free packet identifier for a message to the client, or `None` if the client's receive
    /// maximum is reached.
    pub fn take_packet_id(&mut self, o: Outbound) -> Option<u16> {
        self.take_packet_id_within(o, self.receive_maximum as usize)
    }

    /// A packet identifier for a queue delivery: the consumer's credit (the receive maximum)
    /// already bounds these, so topic messages cannot make it wait.
    pub fn take_packet_id_unbounded(&mut self, o: Outbound) -> Option<u16> {
        self.take_packet_id_within(o, u16::MAX as usize - 1)
    }

    fn take_packet_id_within(&mut self, o: Outbound, limit: usize) -> Option<u16> {
        if self.outbound.len() >= limit {
            return None;
        }
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = self.next_packet_id.wrapping_add(1).max(1);
            if let std::collections::hash_map::Entry::Vacant(e) = self.outbound.entry(id) {
                e.insert(o);
                return Some(id);
            }
        }
    }

    pub fn window_open(&self) -> bool {
        self.outbound.len() < self.receive_maximum as usize
    }

    /// The highest QoS among this session's subscriptions whose filter matches `topic`.
    pub fn granted_qos(&self, mqtt_topic: &str) -> Option<Qos> {
        self.subs
            .iter()
            .filter(|s| !matches!(s.backing, Backing::Shared { .. }))
            .filter(|s| topic::matches(&s.match_filter, mqtt_topic))
            .map(|s| s.qos)
            .max()
    }

    /// A PUBLISH for the client built from a native record: `None` if it cannot be sent (too
    /// large for the client). QoS is the smaller of the publisher's and `granted`.
    pub fn publish_packet(&self, mqtt_topic: &str, rec: &[u8], how: Send, now_us: u64) -> Vec<u8> {
        let Send { qos: granted, packet_id, dup, retain } = how;
        let r = RecordView::trusted(rec);
        let mut properties = Properties::default();
        for (k, v) in r.headers() {
            match k {
                PAYLOAD_FORMAT_HEADER => properties.payload_format_indicator = v.parse().ok(),
                CONTENT_TYPE_HEADER => properties.content_type = Some(v.to_string()),
                TOPIC_HEADER => {}
                _ if k.starts_with(INTERNAL_PREFIX) => {}
                _ => properties.user_properties.push((k.to_string(), v.to_string())),
            }
        }
        if !r.reply_to().is_empty() {
            properties.response_topic = std::str::from_utf8(r.reply_to()).ok().map(str::to_string);
        }
        if !r.correlation_id().is_empty() {
            properties.correlation_data = Some(r.correlation_id().to_vec());
        }
        if r.header.ttl_ms > 0 {
            // The time left, in whole seconds (5.0 §3.3.2.3.3), at least 1 while not expired.
            let age_ms = now_us.saturating_sub(r.header.timestamp_us) / 1000;
            let left = (r.header.ttl_ms as u64).saturating_sub(age_ms).div_ceil(1000).max(1);
            properties.message_expiry_interval = Some(left as u32);
        }
        let qos = if packet_id.is_some() { granted } else { Qos::AtMostOnce };
        let p = Publish {
            dup: dup && qos != Qos::AtMostOnce,
            qos,
            retain,
            topic: mqtt_topic.to_string(),
            packet_id,
            properties: if self.version.is_v5() { properties } else { Properties::default() },
            payload: r.payload().to_vec(),
        };
        let mut out = Vec::with_capacity(r.payload().len() + mqtt_topic.len() + 16);
        p.encode(self.version, &mut out);
        out
    }

    /// Writes buffered topic messages as PUBLISH packets while the window is open and `out`
    /// is below `high_water`.
    pub fn pump(
        &mut self,
        subs: &mut FxHashMap<u32, SubState>,
        out: &mut Vec<u8>,
        high_water: usize,
        now_us: u64,
    ) -> usize {
        let mut written = 0;
        for (id, state) in subs.iter_mut() {
            let Some(sub) =
                self.subs.iter().find(|s| matches!(s.backing, Backing::Topic(t) if t == *id))
            else {
                continue;
            };
            let sub_qos = sub.qos;
            let match_filter = sub.match_filter.clone();
            let (no_local, rap) = (sub.no_local, sub.retain_as_published);
            while out.len() < high_water && !state.pending.is_empty() {
                let needs_window = sub_qos != Qos::AtMostOnce;
                if needs_window && !self.window_open() {
                    break;
                }
                let msg = state.pending.pop_front().expect("checked");
                let native = state.topics.pop_front().expect("in step with pending");
                let Ok(mqtt_topic) = topic::from_native_topic(&native) else { continue };
                if topic::dollar_hidden(&match_filter, &mqtt_topic)
                    || (no_local && header(msg.bytes(), ORIGIN_HEADER) == Some(&*self.client_id))
                {
                    continue;
                }
                let retain = rap && header(msg.bytes(), RETAIN_HEADER).is_some();
                let qos = sub_qos.min(message_qos(msg.bytes()));
                let packet_id = match qos {
                    Qos::AtMostOnce => None,
                    _ => self.take_packet_id(Outbound::Free { qos2_released: false }),
                };
                let how = Send { qos, packet_id, dup: false, retain };
                let p = self.publish_packet(&mqtt_topic, msg.bytes(), how, now_us);
                if p.len() > self.max_packet {
                    if let Some(id) = packet_id {
                        self.outbound.remove(&id);
                    }
                    continue; // 5.0 §3.1.2.11.4: discarded, as if sent
                }
                out.extend_from_slice(&p);
                written += 1;
            }
        }
        written
    }
}

impl Session {
    /// A server-side fatal error (handshake timeout, slow subscriber): 5.0 hears a DISCONNECT
    /// with the closest reason code first; 3.1.1 only sees the close.
    pub fn write_fatal(&self, out: &mut Vec<u8>, code: u16, message: &str) {
        if !self.version.is_v5() || !self.connected {
            return;
        }
        let reason = match code {
            rdmq_client::error_code::SLOW_CONSUMER => super::reason::QUOTA_EXCEEDED,
            rdmq_client::error_code::PROTOCOL_ERROR => super::reason::PROTOCOL_ERROR,
            _ => super::reason::UNSPECIFIED_ERROR,
        };
        let properties = Properties {
            reason_string: Some(message.chars().take(200).collect()),
            ..Properties::default()
        };
        super::Disconnect { reason, properties }.encode(self.version, out);
    }
}

/// How a message goes out: its QoS, packet id (QoS > 0), DUP and RETAIN flags.
#[derive(Debug, Clone, Copy)]
pub struct Send {
    pub qos: Qos,
    pub packet_id: Option<u16>,
    pub dup: bool,
    pub retain: bool,
}

/// The value of record header `key`, if present.
pub fn header<'a>(rec: &'a [u8], key: &str) -> Option<&'a str> {
    RecordView::trusted(rec).headers().find(|(k, _)| *k == key).map(|(_, v)| v)
}

/// Whether a message with a TTL has outlived it (`now_us` on the wall clock).
pub fn expired(rec: &[u8], now_us: u64) -> bool {
    let r = RecordView::trusted(rec);
    r.header.ttl_ms > 0 && r.header.timestamp_us + r.header.ttl_ms as u64 * 1000 <= now_us
}

/// The QoS a record was published with (`mqtt-qos`); messages from other protocols count as
/// QoS 1: they were confirmed to their publisher.
pub fn message_qos(rec: &[u8]) -> Qos {
    match header(rec, QOS_HEADER) {
        Some("0") => Qos::AtMostOnce,
        Some("2") => Qos::ExactlyOnce,
        _ => Qos::AtLeastOnce,
    }
}
