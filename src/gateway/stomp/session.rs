//! One STOMP connection's session: negotiated version and heart-beats, the subscriptions it
//! opened (each backed by a native consumer or topic subscription), requests awaiting a
//! destination owner's answer, receipts waiting on them, and open transactions.
//!
//! The shard that owns the connection drives it (`serve.rs`); this module holds the state and
//! writes server frames straight into the connection's output, without building a [`Frame`].
//!
//! Receipts are ordered: a RECEIPT is written only once every request issued before its frame
//! has been answered, so a receipt for a SEND means the message is confirmed (on disk for a
//! durable queue), and a receipt for DISCONNECT means everything before it was processed.

use std::sync::Arc;

use rustc_hash::FxHashMap;

use rdmq_client::wire::record::RecordView;

use super::ack::Ack;
use super::send::Send;
use super::subscribe::AckMode;
use super::{put_escaped, Command};
use crate::conn::SubState;
use crate::gateway::ordered::Requests;

/// Requests (SENDs, subscriptions, acks with receipts) a session may have unanswered before
/// it stops reading its socket: bounds what one STOMP publisher can queue inside the server.
pub const REQUEST_WINDOW: usize = 512;
/// Unparsed input a paused session may hold before its receive is stopped.
pub const PAUSED_INPUT_MAX: usize = 4 << 20;
/// Shortest heart-beat interval the server agrees to, either way (its timers tick every 100 ms).
pub const HEART_BEAT_MIN_MS: u64 = 100;
/// Operations one transaction may hold before it is refused.
pub const TRANSACTION_OPS_MAX: usize = 65_536;
/// Message bytes a session's open transactions may hold together.
pub const TRANSACTION_BYTES_MAX: usize = 64 << 20;
/// Credit of a queue subscription without `prefetch-count` (or `activemq.prefetchSize`).
pub const DEFAULT_PREFETCH: u32 = 1_000;

/// What a subscription is backed by.
#[derive(Debug, Clone)]
pub enum Backing {
    /// A native consumer on this queue.
    Queue(Arc<str>),
    /// A native topic subscription on this pattern.
    Topic,
    /// A durable subscription: a consumer on a queue bound to the topic pattern.
    Durable(Arc<str>),
}

#[derive(Debug, Clone)]
pub struct Sub {
    pub stomp_id: String,
    /// The SUBSCRIBE's destination, as the client wrote it.
    pub destination: String,
    pub ack: AckMode,
    pub backing: Backing,
}

impl Sub {
    /// The queue whose consumer this subscription is, if any.
    pub fn queue(&self) -> Option<&Arc<str>> {
        match &self.backing {
            Backing::Queue(q) | Backing::Durable(q) => Some(q),
            Backing::Topic => None,
        }
    }
}

/// What to do when a request's answer arrives.
#[derive(Debug)]
pub enum Pending {
    /// A SEND's confirm, or an ack's, or a subscription's last step: nothing more to do.
    Done,
    /// A durable subscription's BIND is done: start consuming its queue.
    Bound { id: u32, queue: Arc<str>, credit: u32 },
    /// A consumer is cancelled; delete its durable queue next if set.
    Cancelled { delete: Option<Arc<str>> },
}

/// A frame held in an open transaction until COMMIT.
#[derive(Debug)]
pub enum TxOp {
    Send(Send),
    Ack(Ack),
}

pub struct Session {
    /// The negotiated version ("" until CONNECT).
    pub version: &'static str,
    pub connected: bool,
    /// DISCONNECT seen: no more frames are read; close once receipts are written.
    pub disconnecting: bool,
    /// `client-id` from CONNECT (names durable subscriptions), else empty.
    pub client_id: String,
    /// Negotiated intervals in ms (0 = none): the client's beats, the server's beats.
    pub heart_beat: (u64, u64),
    pub last_in_ms: u64,
    pub last_out_ms: u64,
    /// STOMP subscription id → native consumer/subscription id.
    pub ids: FxHashMap<String, u32>,
    pub subs: FxHashMap<u32, Sub>,
    next_id: u32,
    /// Requests awaiting answers, and the receipts waiting behind them.
    pub requests: Requests<Pending>,
    pub transactions: FxHashMap<String, Vec<TxOp>>,
    /// Bytes held by `transactions`.
    pub transaction_bytes: usize,
    /// Numbers topic messages (queue messages are named by consumer and delivery tag).
    topic_seq: u64,
}

impl Session {
    pub fn new(now_ms: u64) -> Session {
        Session {
            version: "",
            connected: false,
            disconnecting: false,
            client_id: String::new(),
            heart_beat: (0, 0),
            last_in_ms: now_ms,
            last_out_ms: now_ms,
            ids: FxHashMap::default(),
            subs: FxHashMap::default(),
            next_id: 1,
            requests: Requests::default(),
            transactions: FxHashMap::default(),
            transaction_bytes: 0,
            topic_seq: 0,
        }
    }

    /// Whether header values are escaped on this session (1.1 and later).
    pub fn escapes(&self) -> bool {
        self.version != "1.0"
    }

    /// A new native id for a subscription.
    pub fn next_sub_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
    }

    /// Queues a receipt behind every request issued so far.
    pub fn receipt_after_pending(&mut self, receipt: &str) {
        let mut out = Vec::new();
        self.write_frame_start(&mut out, Command::Receipt);
        self.write_header(&mut out, "receipt-id", receipt);
        out.extend_from_slice(b"\n\0");
        self.requests.after_pending(out);
    }

    fn write_frame_start(&self, out: &mut Vec<u8>, cmd: Command) {
        out.extend_from_slice(cmd.as_str().as_bytes());
        out.push(b'\n');
    }

    fn write_header(&self, out: &mut Vec<u8>, k: &str, v: &str) {
        if self.escapes() {
            put_escaped(out, k, true);
            out.push(b':');
            put_escaped(out, v, true);
        } else {
            // STOMP 1.0 has no escapes: an EOL or a colon in a key would end the header (or the
            // header block) early, so they become spaces.
            let clean = |s: &str, colon: bool| -> String {
                s.chars()
                    .map(|c| if c == '\n' || c == '\r' || (colon && c == ':') { ' ' } else { c })
                    .collect()
            };
            out.extend_from_slice(clean(k, true).as_bytes());
            out.push(b':');
            out.extend_from_slice(clean(v, false).as_bytes());
        }
        out.push(b'\n');
    }

    /// An ERROR frame: `message` in the header (one line), the detail in the body.
    pub fn write_error(&self, out: &mut Vec<u8>, message: &str, receipt: Option<&str>) {
        self.write_error_with(out, message, receipt, &[])
    }

    /// [`Session::write_error`] with extra headers (the versions a failed CONNECT could use).
    pub fn write_error_with(
        &self,
        out: &mut Vec<u8>,
        message: &str,
        receipt: Option<&str>,
        extra: &[(&str, &str)],
    ) {
        self.write_frame_start(out, Command::Error);
        for (k, v) in extra {
            self.write_header(out, k, v);
        }
        let line = message.lines().next().unwrap_or("error");
        self.write_header(out, "message", line);
        if let Some(r) = receipt {
            self.write_header(out, "receipt-id", r);
        }
        self.write_header(out, "content-type", "text/plain");
        let body = format!("{message}\n");
        self.write_header(out, "content-length", &body.len().to_string());
        out.push(b'\n');
        out.extend_from_slice(body.as_bytes());
        out.push(0);
    }

    /// A MESSAGE frame for subscription `sub` carrying the native record `rec`: the record's
    /// headers become frame headers (protocol headers win), reply-to and correlation id keep
    /// their STOMP names, and the payload is the body, always with `content-length`.
    pub fn write_message(
        &self,
        out: &mut Vec<u8>,
        sub: &Sub,
        message_id: &str,
        destination: &str,
        redelivered: bool,
        rec: &[u8],
    ) {
        let r = RecordView::trusted(rec);
        self.write_frame_start(out, Command::Message);
        self.write_header(out, "subscription", &sub.stomp_id);
        self.write_header(out, "message-id", message_id);
        self.write_header(out, "destination", destination);
        if sub.ack != AckMode::Auto {
            self.write_header(out, "ack", message_id);
        }
        if redelivered {
            self.write_header(out, "redelivered", "true");
        }
        if !r.reply_to().is_empty() {
            self.write_header(out, "reply-to", &String::from_utf8_lossy(r.reply_to()));
        }
        if !r.correlation_id().is_empty() {
            let c = String::from_utf8_lossy(r.correlation_id());
            self.write_header(out, "correlation-id", &c);
        }
        for (k, v) in r.headers() {
            if !RESERVED.contains(&k)
                && !k.starts_with(crate::gateway::mqtt::session::INTERNAL_PREFIX)
            {
                self.write_header(out, k, v);
            }
        }
        let body = r.payload();
        out.extend_from_slice(format!("content-length:{}\n\n", body.len()).as_bytes());
        out.extend_from_slice(body);
        out.push(0);
    }

    /// Writes buffered topic messages as MESSAGE frames until `out` reaches `high_water`.
    pub fn pump(
        &mut self,
        subs: &mut FxHashMap<u32, SubState>,
        out: &mut Vec<u8>,
        high_water: usize,
    ) -> usize {
        let mut written = 0;
        for (id, state) in subs.iter_mut() {
            let Some(sub) = self.subs.get(id) else { continue };
            while out.len() < high_water {
                let (Some(msg), Some(topic)) =
                    (state.pending.pop_front(), state.topics.pop_front())
                else {
                    break;
                };
                self.topic_seq += 1;
                let message_id = format!("{id}-t{}", self.topic_seq);
                let destination = format!("/topic/{topic}");
                self.write_message(out, sub, &message_id, &destination, false, msg.bytes());
                written += 1;
            }
        }
        written
    }
}

/// Headers a MESSAGE frame sets itself; a record header with one of these names is not copied.
const RESERVED: [&str; 9] = [
    crate::gateway::mqtt::session::TOPIC_HEADER,
    "subscription",
    "message-id",
    "destination",
    "ack",
    "content-length",
    "redelivered",
    "reply-to",
    "correlation-id",
];

/// The native consumer id and delivery tag named by a queue message's `ack`/`message-id`
/// (`<id>-<tag>`); topic messages (`<id>-t<n>`) and foreign ids give `None`.
pub fn parse_ack_id(v: &str) -> Option<(u32, u64)> {
    let (id, tag) = v.split_once('-')?;
    Some((id.parse().ok()?, tag.parse().ok()?))
}

/// Whether an ack id names a topic message of subscription `id` (acks for them are accepted
/// and change nothing: topic messages are not redelivered).
pub fn is_topic_ack(v: &str) -> bool {
    v.split_once('-').is_some_and(|(id, t)| id.parse::<u32>().is_ok() && t.starts_with('t'))
}

/// A held topic message, for tests.
#[cfg(test)]
fn msg(batch: &crate::arena::Bytes) -> crate::broker::MsgRef {
    let b = rdmq_client::wire::record::BatchView::decode(batch).unwrap();
    let (at, r) = b.records().next().unwrap();
    crate::broker::MsgRef { batch: batch.clone(), offset: at as u32, len: r.bytes.len() as u32 }
}

#[cfg(test)]
mod tests {
    use super::super::{decode, Limits};
    use super::*;
    use rdmq_client::wire::record::{BatchBuilder, RecordMeta};

    fn record(headers: &[(String, String)], payload: &[u8]) -> crate::arena::Bytes {
        let mut out = Vec::new();
        let mut b = BatchBuilder::begin(&mut out);
        let meta = RecordMeta { headers, reply_to: b"/queue/r", ..Default::default() };
        b.push(&mut out, &meta, payload);
        b.finish(&mut out);
        out.into()
    }

    fn connected(version: &'static str) -> Session {
        let mut s = Session::new(0);
        s.version = version;
        s.connected = true;
        s
    }

    fn sub(ack: AckMode) -> Sub {
        Sub {
            stomp_id: "s:1".into(),
            destination: "/queue/q".into(),
            ack,
            backing: Backing::Queue("q".into()),
        }
    }

    #[test]
    fn message_carries_record_headers_escaped_and_a_binary_body() {
        let s = connected("1.2");
        let headers = vec![
            ("k:ey".to_string(), "line\nbreak ü".to_string()),
            ("destination".to_string(), "/queue/forged".to_string()),
        ];
        let batch = record(&headers, b"a\0b");
        let mut out = Vec::new();
        let m = msg(&batch);
        s.write_message(
            &mut out,
            &sub(AckMode::ClientIndividual),
            "7-3",
            "/queue/q",
            true,
            m.bytes(),
        );
        let (f, used) = decode(&out, &Limits::default()).unwrap().unwrap();
        let f = f.unwrap();
        assert_eq!(used, out.len());
        assert_eq!(f.command, Command::Message);
        assert_eq!(f.get("subscription"), Some("s:1"));
        assert_eq!(f.get("ack"), Some("7-3"));
        assert_eq!(f.get("redelivered"), Some("true"));
        assert_eq!(f.get("reply-to"), Some("/queue/r"));
        assert_eq!(f.get("k:ey"), Some("line\nbreak ü"));
        assert_eq!(f.get("destination"), Some("/queue/q"), "a record header cannot forge it");
        assert_eq!(f.body, b"a\0b");
        let mut out = Vec::new();
        s.write_message(&mut out, &sub(AckMode::Auto), "7-4", "/queue/q", false, m.bytes());
        let f = decode(&out, &Limits::default()).unwrap().unwrap().0.unwrap();
        assert_eq!((f.get("ack"), f.get("redelivered")), (None, None));
    }

    #[test]
    fn receipts_are_receipt_frames_in_order() {
        let mut s = connected("1.2");
        let a = s.requests.issue(Pending::Done);
        s.receipt_after_pending("r:1");
        s.receipt_after_pending("r2");
        let mut out = Vec::new();
        assert!(s.requests.flush(&mut out));
        s.requests.answer(a);
        assert!(!s.requests.flush(&mut out));
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text, "RECEIPT\nreceipt-id:r\\c1\n\n\0RECEIPT\nreceipt-id:r2\n\n\0");
    }

    #[test]
    fn error_frame_has_a_one_line_message_and_the_detail() {
        let s = connected("1.1");
        let mut out = Vec::new();
        s.write_error(&mut out, "bad thing\nmore", Some("r9"));
        let f = decode(&out, &Limits::default()).unwrap().unwrap().0.unwrap();
        assert_eq!(f.command, Command::Error);
        assert_eq!(f.get("message"), Some("bad thing"));
        assert_eq!(f.get("receipt-id"), Some("r9"));
        assert_eq!(f.body, b"bad thing\nmore\n");
    }

    #[test]
    fn ack_ids() {
        assert_eq!(parse_ack_id("7-42"), Some((7, 42)));
        assert_eq!(parse_ack_id("7-t42"), None);
        assert!(is_topic_ack("7-t42") && !is_topic_ack("7-42") && !is_topic_ack("x-t1"));
        assert_eq!(parse_ack_id("garbage"), None);
    }
}
