//! MQTT 5.0 properties (5.0 §2.2.2): the typed key/values most 5.0 packets carry after their
//! variable header. Absent in 3.x: there the codec neither reads nor writes them.
//!
//! ```text
//! property length   Variable Byte Integer: bytes of properties that follow
//! property          identifier (Variable Byte Integer), then a value of the identifier's type:
//!                   byte | two-byte int | four-byte int | VBI | UTF-8 string | binary |
//!                   UTF-8 string pair (two strings)
//! ```
//! [`PROPERTIES`] is the spec's table (§2.2.2.2, Table 2-4): every identifier, its type and
//! the packets it may appear in. Decoding rejects, in this order: an unknown identifier or one
//! not allowed where it is (both Malformed Packet, §2.2.2.2), a value running past the
//! property length (malformed), a repeat of anything but User Property and (in PUBLISH only)
//! Subscription Identifier (Protocol Error, each property's section), and the values the spec
//! forbids (Protocol Error): 0 for Receive Maximum (§3.1.2.11.3, §3.2.2.3.3), Maximum Packet
//! Size (§3.1.2.11.4, §3.2.2.3.6) and Subscription Identifier (§3.3.2.3.8, §3.8.2.1.2); a
//! byte other than 0 or 1 for the flag-like properties; Authentication Data without an
//! Authentication Method (§3.1.2.11.10). A Topic Alias of 0 is Topic Alias invalid
//! (§3.3.2.3.4) and a Response Topic with wildcards Topic Name invalid (§3.3.2.3.5).
//! Encoding writes properties in identifier order, user properties in their own order.

use super::{
    check_utf8, insert_vbi, put_binary, put_string, put_u16, put_u32, topic, MqttError, Reader,
};

/// Where a property list sits. Will properties (in CONNECT's payload) are their own context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PropertyContext {
    Connect,
    Will,
    ConnAck,
    Publish,
    PubAck,
    PubRec,
    PubRel,
    PubComp,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

impl PropertyContext {
    const fn bit(self) -> u16 {
        1 << self as u16
    }
}

/// The data type of a property's value (5.0 §1.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropertyType {
    Byte,
    TwoByteInt,
    FourByteInt,
    VarInt,
    Utf8,
    Binary,
    Utf8Pair,
}

/// One row of the spec's property table.
#[derive(Debug, Clone, Copy)]
pub struct PropertySpec {
    pub id: u8,
    pub name: &'static str,
    pub kind: PropertyType,
    /// One bit per [`PropertyContext`].
    allowed: u16,
}

impl PropertySpec {
    pub fn allowed_in(&self, context: PropertyContext) -> bool {
        self.allowed & context.bit() != 0
    }
}

/// Property identifiers (5.0 §2.2.2.2).
pub mod id {
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub const RESPONSE_INFORMATION: u8 = 0x1A;
    pub const SERVER_REFERENCE: u8 = 0x1C;
    pub const REASON_STRING: u8 = 0x1F;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

const fn mask(contexts: &[PropertyContext]) -> u16 {
    let mut m = 0;
    let mut i = 0;
    while i < contexts.len() {
        m |= contexts[i].bit();
        i += 1;
    }
    m
}

const fn row(id: u8, name: &'static str, kind: PropertyType, allowed: u16) -> PropertySpec {
    PropertySpec { id, name, kind, allowed }
}

use PropertyContext as C;
use PropertyType as T;

const PUBLISH_AND_WILL: u16 = mask(&[C::Publish, C::Will]);
const CONNECT_AND_CONNACK: u16 = mask(&[C::Connect, C::ConnAck]);
const CONNACK: u16 = mask(&[C::ConnAck]);
const AUTH_EXCHANGE: u16 = mask(&[C::Connect, C::ConnAck, C::Auth]);
const REASON_STRING_IN: u16 = mask(&[
    C::ConnAck,
    C::PubAck,
    C::PubRec,
    C::PubRel,
    C::PubComp,
    C::SubAck,
    C::UnsubAck,
    C::Disconnect,
    C::Auth,
]);
/// Every place properties exist.
pub(crate) const ALL_CONTEXTS: [PropertyContext; 14] = [
    C::Connect,
    C::Will,
    C::ConnAck,
    C::Publish,
    C::PubAck,
    C::PubRec,
    C::PubRel,
    C::PubComp,
    C::Subscribe,
    C::SubAck,
    C::Unsubscribe,
    C::UnsubAck,
    C::Disconnect,
    C::Auth,
];
/// User Property is allowed everywhere properties exist.
const EVERYWHERE: u16 = mask(&ALL_CONTEXTS);

/// Every property MQTT 5.0 defines (§2.2.2.2, Table 2-4), in identifier order.
pub const PROPERTIES: [PropertySpec; 27] = [
    row(id::PAYLOAD_FORMAT_INDICATOR, "Payload Format Indicator", T::Byte, PUBLISH_AND_WILL),
    row(id::MESSAGE_EXPIRY_INTERVAL, "Message Expiry Interval", T::FourByteInt, PUBLISH_AND_WILL),
    row(id::CONTENT_TYPE, "Content Type", T::Utf8, PUBLISH_AND_WILL),
    row(id::RESPONSE_TOPIC, "Response Topic", T::Utf8, PUBLISH_AND_WILL),
    row(id::CORRELATION_DATA, "Correlation Data", T::Binary, PUBLISH_AND_WILL),
    row(
        id::SUBSCRIPTION_IDENTIFIER,
        "Subscription Identifier",
        T::VarInt,
        mask(&[C::Publish, C::Subscribe]),
    ),
    row(
        id::SESSION_EXPIRY_INTERVAL,
        "Session Expiry Interval",
        T::FourByteInt,
        mask(&[C::Connect, C::ConnAck, C::Disconnect]),
    ),
    row(id::ASSIGNED_CLIENT_IDENTIFIER, "Assigned Client Identifier", T::Utf8, CONNACK),
    row(id::SERVER_KEEP_ALIVE, "Server Keep Alive", T::TwoByteInt, CONNACK),
    row(id::AUTHENTICATION_METHOD, "Authentication Method", T::Utf8, AUTH_EXCHANGE),
    row(id::AUTHENTICATION_DATA, "Authentication Data", T::Binary, AUTH_EXCHANGE),
    row(
        id::REQUEST_PROBLEM_INFORMATION,
        "Request Problem Information",
        T::Byte,
        mask(&[C::Connect]),
    ),
    row(id::WILL_DELAY_INTERVAL, "Will Delay Interval", T::FourByteInt, mask(&[C::Will])),
    row(
        id::REQUEST_RESPONSE_INFORMATION,
        "Request Response Information",
        T::Byte,
        mask(&[C::Connect]),
    ),
    row(id::RESPONSE_INFORMATION, "Response Information", T::Utf8, CONNACK),
    row(id::SERVER_REFERENCE, "Server Reference", T::Utf8, mask(&[C::ConnAck, C::Disconnect])),
    row(id::REASON_STRING, "Reason String", T::Utf8, REASON_STRING_IN),
    row(id::RECEIVE_MAXIMUM, "Receive Maximum", T::TwoByteInt, CONNECT_AND_CONNACK),
    row(id::TOPIC_ALIAS_MAXIMUM, "Topic Alias Maximum", T::TwoByteInt, CONNECT_AND_CONNACK),
    row(id::TOPIC_ALIAS, "Topic Alias", T::TwoByteInt, mask(&[C::Publish])),
    row(id::MAXIMUM_QOS, "Maximum QoS", T::Byte, CONNACK),
    row(id::RETAIN_AVAILABLE, "Retain Available", T::Byte, CONNACK),
    row(id::USER_PROPERTY, "User Property", T::Utf8Pair, EVERYWHERE),
    row(id::MAXIMUM_PACKET_SIZE, "Maximum Packet Size", T::FourByteInt, CONNECT_AND_CONNACK),
    row(id::WILDCARD_SUBSCRIPTION_AVAILABLE, "Wildcard Subscription Available", T::Byte, CONNACK),
    row(
        id::SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        "Subscription Identifier Available",
        T::Byte,
        CONNACK,
    ),
    row(id::SHARED_SUBSCRIPTION_AVAILABLE, "Shared Subscription Available", T::Byte, CONNACK),
];

/// The table row for identifier `id`, if 5.0 defines it.
pub fn spec(id: u32) -> Option<&'static PropertySpec> {
    PROPERTIES.iter().find(|p| u32::from(p.id) == id)
}

/// The spec's name for a property (for messages).
pub fn property_name(id: u8) -> &'static str {
    spec(u32::from(id)).map_or("unknown", |p| p.name)
}

/// Every 5.0 property as a typed field; `None`/empty when absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    /// 0: unspecified bytes, 1: UTF-8 (§3.3.2.3.2).
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Vec<u8>>,
    /// One in SUBSCRIBE; in PUBLISH, one per matching subscription that had one.
    pub subscription_identifiers: Vec<u32>,
    pub session_expiry_interval: Option<u32>,
    pub assigned_client_identifier: Option<String>,
    pub server_keep_alive: Option<u16>,
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Vec<u8>>,
    pub request_problem_information: Option<bool>,
    pub will_delay_interval: Option<u32>,
    pub request_response_information: Option<bool>,
    pub response_information: Option<String>,
    pub server_reference: Option<String>,
    pub reason_string: Option<String>,
    pub receive_maximum: Option<u16>,
    pub topic_alias_maximum: Option<u16>,
    pub topic_alias: Option<u16>,
    /// 0 or 1: a server that supports QoS 2 leaves it out (§3.2.2.3.4).
    pub maximum_qos: Option<u8>,
    pub retain_available: Option<bool>,
    /// Repeatable, order kept (§3.1.2.11.8).
    pub user_properties: Vec<(String, String)>,
    pub maximum_packet_size: Option<u32>,
    pub wildcard_subscription_available: Option<bool>,
    pub subscription_identifier_available: Option<bool>,
    pub shared_subscription_available: Option<bool>,
}

/// Fills an absent single-valued property, refusing a repeat.
fn set_once<V>(slot: &mut Option<V>, value: V, id: u8) -> Result<(), MqttError> {
    if slot.is_some() {
        return Err(MqttError::DuplicateProperty(id));
    }
    *slot = Some(value);
    Ok(())
}

/// A byte that must be 0 or 1.
fn flag(r: &mut Reader, id: u8) -> Result<bool, MqttError> {
    match r.u8(property_name(id))? {
        0 => Ok(false),
        1 => Ok(true),
        v => Err(MqttError::BadPropertyValue { id, value: u32::from(v) }),
    }
}

fn nonzero_u16(r: &mut Reader, id: u8) -> Result<u16, MqttError> {
    match r.u16(property_name(id))? {
        0 => Err(MqttError::BadPropertyValue { id, value: 0 }),
        v => Ok(v),
    }
}

impl Properties {
    pub fn is_empty(&self) -> bool {
        *self == Properties::default()
    }

    /// Reads a property length and the properties it covers, as found in `context`.
    pub(crate) fn decode(
        r: &mut Reader,
        context: PropertyContext,
    ) -> Result<Properties, MqttError> {
        let len = r.vbi("property length")?;
        let mut pr = r.split(len as usize, "properties")?;
        let mut props = Properties::default();
        while !pr.is_empty() {
            let raw = pr.vbi("property identifier")?;
            let spec = spec(raw).ok_or(MqttError::UnknownProperty(raw))?;
            if !spec.allowed_in(context) {
                return Err(MqttError::PropertyNotAllowed { id: spec.id, context });
            }
            props.read_value(&mut pr, spec.id, context)?;
        }
        if props.authentication_data.is_some() && props.authentication_method.is_none() {
            return Err(MqttError::Protocol(
                "Authentication Data without an Authentication Method".into(),
            ));
        }
        Ok(props)
    }

    /// Reads the value of property `id` (known and allowed) into its field.
    fn read_value(
        &mut self,
        r: &mut Reader,
        id: u8,
        context: PropertyContext,
    ) -> Result<(), MqttError> {
        let name = property_name(id);
        match id {
            id::PAYLOAD_FORMAT_INDICATOR => {
                set_once(&mut self.payload_format_indicator, u8::from(flag(r, id)?), id)
            }
            id::MESSAGE_EXPIRY_INTERVAL => {
                set_once(&mut self.message_expiry_interval, r.u32(name)?, id)
            }
            id::CONTENT_TYPE => set_once(&mut self.content_type, r.string(name)?, id),
            id::RESPONSE_TOPIC => {
                let t = r.string(name)?;
                topic::validate_name(&t).map_err(|e| MqttError::TopicNameInvalid(e.0))?;
                set_once(&mut self.response_topic, t, id)
            }
            id::CORRELATION_DATA => set_once(&mut self.correlation_data, r.binary(name)?, id),
            id::SUBSCRIPTION_IDENTIFIER => self.read_subscription_identifier(r, context),
            id::SESSION_EXPIRY_INTERVAL => {
                set_once(&mut self.session_expiry_interval, r.u32(name)?, id)
            }
            id::ASSIGNED_CLIENT_IDENTIFIER => {
                set_once(&mut self.assigned_client_identifier, r.string(name)?, id)
            }
            id::SERVER_KEEP_ALIVE => set_once(&mut self.server_keep_alive, r.u16(name)?, id),
            id::AUTHENTICATION_METHOD => {
                set_once(&mut self.authentication_method, r.string(name)?, id)
            }
            id::AUTHENTICATION_DATA => set_once(&mut self.authentication_data, r.binary(name)?, id),
            id::WILL_DELAY_INTERVAL => set_once(&mut self.will_delay_interval, r.u32(name)?, id),
            id::RESPONSE_INFORMATION => {
                set_once(&mut self.response_information, r.string(name)?, id)
            }
            id::SERVER_REFERENCE => set_once(&mut self.server_reference, r.string(name)?, id),
            id::REASON_STRING => set_once(&mut self.reason_string, r.string(name)?, id),
            id::RECEIVE_MAXIMUM => set_once(&mut self.receive_maximum, nonzero_u16(r, id)?, id),
            id::TOPIC_ALIAS_MAXIMUM => set_once(&mut self.topic_alias_maximum, r.u16(name)?, id),
            id::TOPIC_ALIAS => match r.u16(name)? {
                0 => Err(MqttError::TopicAliasInvalid),
                v => set_once(&mut self.topic_alias, v, id),
            },
            id::MAXIMUM_QOS => set_once(&mut self.maximum_qos, u8::from(flag(r, id)?), id),
            id::USER_PROPERTY => {
                let k = r.string(name)?;
                let v = r.string(name)?;
                self.user_properties.push((k, v));
                Ok(())
            }
            id::MAXIMUM_PACKET_SIZE => match r.u32(name)? {
                0 => Err(MqttError::BadPropertyValue { id, value: 0 }),
                v => set_once(&mut self.maximum_packet_size, v, id),
            },
            id::REQUEST_PROBLEM_INFORMATION
            | id::REQUEST_RESPONSE_INFORMATION
            | id::RETAIN_AVAILABLE
            | id::WILDCARD_SUBSCRIPTION_AVAILABLE
            | id::SUBSCRIPTION_IDENTIFIER_AVAILABLE
            | id::SHARED_SUBSCRIPTION_AVAILABLE => {
                let v = flag(r, id)?;
                set_once(self.flag_slot(id), v, id)
            }
            other => unreachable!("property {other:#04x} is in the table but not read"),
        }
    }

    /// The field of a 0-or-1 property that reads as a bool.
    fn flag_slot(&mut self, id: u8) -> &mut Option<bool> {
        match id {
            id::REQUEST_PROBLEM_INFORMATION => &mut self.request_problem_information,
            id::REQUEST_RESPONSE_INFORMATION => &mut self.request_response_information,
            id::RETAIN_AVAILABLE => &mut self.retain_available,
            id::WILDCARD_SUBSCRIPTION_AVAILABLE => &mut self.wildcard_subscription_available,
            id::SUBSCRIPTION_IDENTIFIER_AVAILABLE => &mut self.subscription_identifier_available,
            id::SHARED_SUBSCRIPTION_AVAILABLE => &mut self.shared_subscription_available,
            other => unreachable!("property {other:#04x} is not a flag"),
        }
    }

    /// Subscription Identifier: 1 to 268,435,455; once in SUBSCRIBE (§3.8.2.1.2), repeatable
    /// in PUBLISH (§3.3.2.3.8).
    fn read_subscription_identifier(
        &mut self,
        r: &mut Reader,
        context: PropertyContext,
    ) -> Result<(), MqttError> {
        let id = id::SUBSCRIPTION_IDENTIFIER;
        let v = r.vbi(property_name(id))?;
        if v == 0 {
            return Err(MqttError::BadPropertyValue { id, value: 0 });
        }
        if context != PropertyContext::Publish && !self.subscription_identifiers.is_empty() {
            return Err(MqttError::DuplicateProperty(id));
        }
        self.subscription_identifiers.push(v);
        Ok(())
    }

    /// Appends the property length and the properties. Every property present must be
    /// allowed in `context` and hold a value [`Properties::decode`] accepts (asserted).
    pub(crate) fn encode(&self, context: PropertyContext, out: &mut Vec<u8>) {
        let at = out.len();
        self.encode_fields(context, out);
        let len = out.len() - at;
        assert!(len <= super::VBI_MAX as usize, "properties of {len} bytes");
        insert_vbi(out, at, len as u32);
    }

    fn encode_fields(&self, context: PropertyContext, out: &mut Vec<u8>) {
        let mut w = Writer { out, context };
        if let Some(v) = self.payload_format_indicator {
            assert!(v <= 1, "Payload Format Indicator {v}");
            w.byte(id::PAYLOAD_FORMAT_INDICATOR, v);
        }
        w.opt_u32(id::MESSAGE_EXPIRY_INTERVAL, self.message_expiry_interval);
        w.opt_str(id::CONTENT_TYPE, &self.content_type);
        w.opt_str(id::RESPONSE_TOPIC, &self.response_topic);
        w.opt_bin(id::CORRELATION_DATA, &self.correlation_data);
        assert!(
            context == PropertyContext::Publish || self.subscription_identifiers.len() <= 1,
            "one Subscription Identifier outside PUBLISH"
        );
        for &v in &self.subscription_identifiers {
            assert!(v != 0, "Subscription Identifier 0");
            w.head(id::SUBSCRIPTION_IDENTIFIER);
            super::encode_vbi(v, w.out);
        }
        w.opt_u32(id::SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        w.opt_str(id::ASSIGNED_CLIENT_IDENTIFIER, &self.assigned_client_identifier);
        w.opt_u16(id::SERVER_KEEP_ALIVE, self.server_keep_alive);
        w.opt_str(id::AUTHENTICATION_METHOD, &self.authentication_method);
        assert!(
            self.authentication_data.is_none() || self.authentication_method.is_some(),
            "Authentication Data without an Authentication Method"
        );
        w.opt_bin(id::AUTHENTICATION_DATA, &self.authentication_data);
        w.opt_flag(id::REQUEST_PROBLEM_INFORMATION, self.request_problem_information);
        w.opt_u32(id::WILL_DELAY_INTERVAL, self.will_delay_interval);
        w.opt_flag(id::REQUEST_RESPONSE_INFORMATION, self.request_response_information);
        w.opt_str(id::RESPONSE_INFORMATION, &self.response_information);
        w.opt_str(id::SERVER_REFERENCE, &self.server_reference);
        w.opt_str(id::REASON_STRING, &self.reason_string);
        assert!(self.receive_maximum != Some(0), "Receive Maximum 0");
        w.opt_u16(id::RECEIVE_MAXIMUM, self.receive_maximum);
        w.opt_u16(id::TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        assert!(self.topic_alias != Some(0), "Topic Alias 0");
        w.opt_u16(id::TOPIC_ALIAS, self.topic_alias);
        if let Some(v) = self.maximum_qos {
            assert!(v <= 1, "Maximum QoS {v}");
            w.byte(id::MAXIMUM_QOS, v);
        }
        w.opt_flag(id::RETAIN_AVAILABLE, self.retain_available);
        for (k, v) in &self.user_properties {
            w.head(id::USER_PROPERTY);
            put_string(w.out, k);
            put_string(w.out, v);
        }
        assert!(self.maximum_packet_size != Some(0), "Maximum Packet Size 0");
        w.opt_u32(id::MAXIMUM_PACKET_SIZE, self.maximum_packet_size);
        w.opt_flag(id::WILDCARD_SUBSCRIPTION_AVAILABLE, self.wildcard_subscription_available);
        w.opt_flag(id::SUBSCRIPTION_IDENTIFIER_AVAILABLE, self.subscription_identifier_available);
        w.opt_flag(id::SHARED_SUBSCRIPTION_AVAILABLE, self.shared_subscription_available);
    }
}

/// Writes property identifiers and values, checking each is allowed in the context.
struct Writer<'a> {
    out: &'a mut Vec<u8>,
    context: PropertyContext,
}

impl Writer<'_> {
    fn head(&mut self, id: u8) {
        let spec = spec(u32::from(id)).expect("a defined property");
        assert!(
            spec.allowed_in(self.context),
            "{} is not allowed in {:?}",
            spec.name,
            self.context
        );
        self.out.push(id);
    }

    fn byte(&mut self, id: u8, v: u8) {
        self.head(id);
        self.out.push(v);
    }

    fn opt_flag(&mut self, id: u8, v: Option<bool>) {
        if let Some(v) = v {
            self.byte(id, u8::from(v));
        }
    }

    fn opt_u16(&mut self, id: u8, v: Option<u16>) {
        if let Some(v) = v {
            self.head(id);
            put_u16(self.out, v);
        }
    }

    fn opt_u32(&mut self, id: u8, v: Option<u32>) {
        if let Some(v) = v {
            self.head(id);
            put_u32(self.out, v);
        }
    }

    fn opt_str(&mut self, id: u8, v: &Option<String>) {
        if let Some(v) = v {
            self.head(id);
            put_string(self.out, v);
        }
    }

    fn opt_bin(&mut self, id: u8, v: &Option<Vec<u8>>) {
        if let Some(v) = v {
            self.head(id);
            put_binary(self.out, v);
        }
    }
}

/// Checks a string a caller wants to put in a property or packet: at most 65535 bytes and
/// no U+0000, so that encoding it cannot fail.
pub fn check_string(s: &str, field: &'static str) -> Result<(), MqttError> {
    if s.len() > super::STRING_LEN_MAX {
        return Err(MqttError::Malformed(format!("{field} longer than 65535 bytes")));
    }
    check_utf8(s.as_bytes(), field).map(|_| ())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::{encode_vbi, Reader};
    use super::*;

    fn decode(bytes: &[u8], context: PropertyContext) -> Result<Properties, MqttError> {
        let mut r = Reader::new(bytes, 0);
        let p = Properties::decode(&mut r, context)?;
        assert!(r.is_empty(), "property length covers everything");
        Ok(p)
    }

    /// A property list: the length, then `body`.
    fn list(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_vbi(body.len() as u32, &mut out);
        out.extend_from_slice(body);
        out
    }

    /// A valid, non-zero value of each type (with its identifier first).
    fn sample(spec: &PropertySpec) -> Vec<u8> {
        let mut b = vec![spec.id];
        match spec.kind {
            T::Byte => b.push(1),
            T::TwoByteInt => b.extend_from_slice(&[0, 7]),
            T::FourByteInt => b.extend_from_slice(&[0, 0, 0, 9]),
            T::VarInt => b.extend_from_slice(&[0x80, 0x01]),
            T::Utf8 => b.extend_from_slice(&[0, 3, b'a', b'/', b'b']),
            T::Binary => b.extend_from_slice(&[0, 2, 0, 0xFF]),
            T::Utf8Pair => b.extend_from_slice(&[0, 1, b'k', 0, 1, b'v']),
        }
        b
    }

    const ALL: [PropertyContext; 14] = ALL_CONTEXTS;

    /// Properties with every field allowed in `context` set (used by the packet samples).
    pub(crate) fn full(context: PropertyContext) -> Properties {
        let mut body = Vec::new();
        for spec in PROPERTIES.iter().filter(|s| s.allowed_in(context)) {
            if spec.id == id::AUTHENTICATION_DATA {
                continue; // needs the method; added below with it
            }
            body.extend_from_slice(&sample(spec));
            if spec.id == id::USER_PROPERTY {
                body.extend_from_slice(&[id::USER_PROPERTY, 0, 1, b'k', 0, 2, b'v', b'2']);
            }
        }
        if context == C::Publish {
            body.extend_from_slice(&[id::SUBSCRIPTION_IDENTIFIER, 0x05]);
        }
        if spec(u32::from(id::AUTHENTICATION_DATA)).unwrap().allowed_in(context) {
            body.extend_from_slice(&sample(spec(u32::from(id::AUTHENTICATION_DATA)).unwrap()));
        }
        decode(&list(&body), context).unwrap()
    }

    #[test]
    fn the_table_is_in_identifier_order_and_complete() {
        assert!(PROPERTIES.windows(2).all(|w| w[0].id < w[1].id));
        for id in 0..=0x7Fu32 {
            let defined = [
                0x01, 0x02, 0x03, 0x08, 0x09, 0x0B, 0x11, 0x12, 0x13, 0x15, 0x16, 0x17, 0x18, 0x19,
                0x1A, 0x1C, 0x1F, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2A,
            ]
            .contains(&id);
            assert_eq!(spec(id).is_some(), defined, "{id:#04x}");
        }
    }

    #[test]
    fn each_property_decodes_where_allowed_and_nowhere_else() {
        for spec in &PROPERTIES {
            let mut body = sample(spec);
            if spec.id == id::AUTHENTICATION_DATA {
                body.extend_from_slice(&sample(super::spec(0x15).unwrap()));
            }
            for ctx in ALL {
                let got = decode(&list(&body), ctx);
                if spec.allowed_in(ctx) {
                    let p = got.unwrap_or_else(|e| panic!("{} in {ctx:?}: {e}", spec.name));
                    assert!(!p.is_empty());
                    let mut out = Vec::new();
                    p.encode(ctx, &mut out);
                    assert_eq!(decode(&out, ctx), Ok(p), "{} round trip", spec.name);
                } else {
                    assert_eq!(
                        got,
                        Err(MqttError::PropertyNotAllowed { id: spec.id, context: ctx }),
                        "{} in {ctx:?}",
                        spec.name
                    );
                }
            }
        }
    }

    #[test]
    fn full_property_sets_round_trip() {
        for ctx in ALL {
            let p = full(ctx);
            let mut out = Vec::new();
            p.encode(ctx, &mut out);
            assert_eq!(decode(&out, ctx), Ok(p.clone()), "{ctx:?}");
            assert_eq!(p.user_properties.len(), 2, "user properties repeat, in order");
        }
        assert_eq!(full(C::Publish).subscription_identifiers, vec![128, 5]);
    }

    #[test]
    fn duplicates_are_protocol_errors_except_user_properties_and_publish_sub_ids() {
        for spec in &PROPERTIES {
            let ctx = *ALL.iter().find(|c| spec.allowed_in(**c)).unwrap();
            let mut body = [sample(spec), sample(spec)].concat();
            if spec.id == id::AUTHENTICATION_DATA {
                body.extend_from_slice(&sample(super::spec(0x15).unwrap()));
            }
            let got = decode(&list(&body), ctx);
            if spec.id == id::USER_PROPERTY {
                assert_eq!(got.unwrap().user_properties.len(), 2);
            } else if spec.id == id::SUBSCRIPTION_IDENTIFIER {
                assert_eq!(ctx, C::Publish);
                assert_eq!(got.unwrap().subscription_identifiers, vec![128, 128]);
                let err = decode(&list(&body), C::Subscribe).unwrap_err();
                assert_eq!(err, MqttError::DuplicateProperty(spec.id), "once in SUBSCRIBE");
            } else {
                assert_eq!(got, Err(MqttError::DuplicateProperty(spec.id)), "{}", spec.name);
                assert_eq!(got.unwrap_err().reason_code(), 0x82);
            }
        }
    }

    #[test]
    fn forbidden_values_are_refused() {
        let cases: [(&[u8], PropertyContext, MqttError); 9] = [
            (&[0x21, 0, 0], C::Connect, MqttError::BadPropertyValue { id: 0x21, value: 0 }),
            (&[0x27, 0, 0, 0, 0], C::ConnAck, MqttError::BadPropertyValue { id: 0x27, value: 0 }),
            (&[0x0B, 0x00], C::Subscribe, MqttError::BadPropertyValue { id: 0x0B, value: 0 }),
            (&[0x23, 0, 0], C::Publish, MqttError::TopicAliasInvalid),
            (&[0x01, 2], C::Publish, MqttError::BadPropertyValue { id: 0x01, value: 2 }),
            (&[0x17, 2], C::Connect, MqttError::BadPropertyValue { id: 0x17, value: 2 }),
            (&[0x24, 2], C::ConnAck, MqttError::BadPropertyValue { id: 0x24, value: 2 }),
            (
                &[0x08, 0, 3, b'a', b'/', b'+'],
                C::Publish,
                MqttError::TopicNameInvalid(String::new()),
            ),
            (&[0x16, 0, 0], C::Auth, MqttError::Protocol(String::new())),
        ];
        for (body, ctx, want) in cases {
            let got = decode(&list(body), ctx).unwrap_err();
            assert_eq!(std::mem::discriminant(&got), std::mem::discriminant(&want), "{body:02x?}");
            if let MqttError::BadPropertyValue { .. } | MqttError::TopicAliasInvalid = want {
                assert_eq!(got, want);
            }
        }
        // Topic Alias Maximum 0 is allowed: it means "no aliases" (§3.1.2.11.5).
        assert_eq!(decode(&list(&[0x22, 0, 0]), C::Connect).unwrap().topic_alias_maximum, Some(0));
    }

    #[test]
    fn bad_lengths_and_identifiers_are_malformed() {
        // Property length beyond the packet.
        assert!(matches!(decode(&[5, 0x21, 0, 1], C::Connect), Err(MqttError::Truncated { .. })));
        // A value running past the property length, though the packet has more bytes.
        let mut r = Reader::new(&[2, 0x21, 0, 1, 0], 0);
        assert!(matches!(Properties::decode(&mut r, C::Connect), Err(MqttError::Truncated { .. })));
        // A string whose length runs past the list.
        assert!(matches!(
            decode(&list(&[0x1F, 0, 9, b'x']), C::PubAck),
            Err(MqttError::Truncated { .. })
        ));
        assert_eq!(decode(&list(&[0x7F, 0]), C::Connect), Err(MqttError::UnknownProperty(0x7F)));
        assert_eq!(decode(&list(&[0x00]), C::Connect), Err(MqttError::UnknownProperty(0)));
        assert!(matches!(decode(&[0x80], C::Connect), Err(MqttError::Truncated { .. })));
        assert!(matches!(decode(&[0x80, 0x00], C::Connect), Err(MqttError::BadVarInt(_))));
        assert_eq!(
            decode(&list(&[0x1F, 0, 2, b'a', 0]), C::PubAck),
            Err(MqttError::NulInString { field: "Reason String" })
        );
        assert_eq!(
            decode(&list(&[0x26, 0, 1, 0xFF, 0, 0]), C::PubAck),
            Err(MqttError::BadUtf8 { field: "User Property" })
        );
        assert!(matches!(
            decode(&list(&[0x23, 0, 1]), C::Connect).unwrap_err(),
            MqttError::PropertyNotAllowed { id: 0x23, .. }
        ));
    }

    #[test]
    #[should_panic(expected = "not allowed")]
    fn encoding_a_property_where_it_is_not_allowed_is_a_bug() {
        let p = Properties { topic_alias: Some(1), ..Properties::default() };
        p.encode(C::Connect, &mut Vec::new());
    }

    #[test]
    fn checking_strings_before_encoding() {
        assert!(check_string("ok", "x").is_ok());
        assert!(check_string("a\0", "x").is_err());
        assert!(check_string(&"x".repeat(65_536), "x").is_err());
    }
}
