//! MQTT 3.1, 3.1.1 and 5.0 packets: the fixed header, the data types every packet shares, and
//! one module per packet kind. Pure code: no I/O, no clocks, nothing wired to a server yet.
//!
//! ```text
//! bit     7   6   5   4   3   2   1   0
//! byte 1  packet type     flags                 (3.1.1 §2.2, 5.0 §2.1.2-2.1.3)
//! byte 2… remaining length                      Variable Byte Integer, 1-4 bytes
//!         variable header, payload              exactly `remaining length` bytes
//! ```
//! Flags are DUP, QoS (2 bits), RETAIN for PUBLISH and a fixed value for every other type
//! (0b0010 for PUBREL, SUBSCRIBE and UNSUBSCRIBE, 0 otherwise); anything else is malformed.
//!
//! Data types (3.1.1 §1.5, 5.0 §1.5): two- and four-byte big-endian integers; the Variable Byte
//! Integer (7 bits a byte, low group first, continuation in bit 7, at most 4 bytes, shortest
//! form only); UTF-8 strings and binary data, each a two-byte length then the bytes. Strings
//! must be well-formed UTF-8 without U+0000 (3.1.1 §1.5.3, 5.0 §1.5.4).
//!
//! [`decode`] checks the type, the flags and the total size (against `max_packet`) from the
//! fixed header alone, before it waits for the body, so a hostile peer can make the caller
//! buffer at most `max_packet` bytes. It returns `Ok(None)` until the whole packet is there.
//! CONNECT carries its own protocol level, so it decodes before the version is known
//! ([`decode_connect`]); every later packet is decoded with the version CONNECT chose.
//! Errors carry the MQTT 5 reason code for the DISCONNECT or CONNACK that reports them
//! ([`MqttError::reason_code`]) and the 3.1.1 CONNACK return code where one exists.

pub mod auth;
pub mod connack;
pub mod connect;
pub mod disconnect;
pub mod ping;
pub mod properties;
pub mod puback;
pub mod pubcomp;
pub mod publish;
pub mod pubrec;
pub mod pubrel;
pub mod registry;
pub mod serve;
pub mod session;
pub mod suback;
pub mod subscribe;
pub mod topic;
pub mod unsuback;
pub mod unsubscribe;

use std::fmt;

pub use auth::Auth;
pub use connack::ConnAck;
pub use connect::{Connect, Will};
pub use disconnect::Disconnect;
pub use properties::{Properties, PropertyContext};
pub use puback::PubAck;
pub use pubcomp::PubComp;
pub use publish::Publish;
pub use pubrec::PubRec;
pub use pubrel::PubRel;
pub use suback::SubAck;
pub use subscribe::{RetainHandling, Subscribe, Subscription, SubscriptionOptions};
pub use unsuback::UnsubAck;
pub use unsubscribe::Unsubscribe;

/// Largest Variable Byte Integer: four groups of seven bits (5.0 §1.5.5, 3.1.1 §2.2.3). It
/// bounds the remaining length, the property length and subscription identifiers.
pub const VBI_MAX: u32 = 268_435_455;
/// Bytes a Variable Byte Integer may take; a fifth is malformed.
pub const VBI_BYTES_MAX: usize = 4;
/// Longest UTF-8 string or binary data: its length prefix is two bytes (5.0 §1.5.4, §1.5.6).
pub const STRING_LEN_MAX: usize = 65_535;
/// Largest fixed header: the type byte and a four-byte remaining length.
pub const FIXED_HEADER_LEN_MAX: usize = 1 + VBI_BYTES_MAX;
/// Largest packet MQTT can express: the fixed header and the largest remaining length.
pub const PACKET_LEN_MAX: usize = FIXED_HEADER_LEN_MAX + VBI_MAX as usize;

/// The protocol a connection speaks, chosen by its CONNECT's protocol name and level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    /// MQTT 3.1 (IBM, 2010): protocol name "MQIsdp", level 3. On the wire it is 3.1.1 except
    /// that CONNACK has no session-present flag and client ids are 1-23 bytes.
    V31,
    /// MQTT 3.1.1 (OASIS 2014): "MQTT", level 4.
    V311,
    /// MQTT 5.0 (OASIS 2019): "MQTT", level 5.
    V5,
}

impl Version {
    /// The protocol level byte of CONNECT (3.1.1 §3.1.2.2, 5.0 §3.1.2.2).
    pub fn level(self) -> u8 {
        match self {
            Version::V31 => 3,
            Version::V311 => 4,
            Version::V5 => 5,
        }
    }

    /// The protocol name CONNECT must carry with that level (3.1.1 §3.1.2.1, 5.0 §3.1.2.1).
    pub fn protocol_name(self) -> &'static str {
        match self {
            Version::V31 => "MQIsdp",
            Version::V311 | Version::V5 => "MQTT",
        }
    }

    /// The version a CONNECT's protocol name and level select, if this codec speaks it.
    pub fn from_connect(name: &str, level: u8) -> Option<Version> {
        [Version::V31, Version::V311, Version::V5]
            .into_iter()
            .find(|v| v.level() == level && v.protocol_name() == name)
    }

    /// Whether packets carry reason codes and properties.
    pub fn is_v5(self) -> bool {
        self == Version::V5
    }
}

/// Quality of service. The value 3 is malformed wherever a QoS appears.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Qos {
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl Qos {
    pub fn from_bits(bits: u8) -> Result<Qos, MqttError> {
        match bits {
            0 => Ok(Qos::AtMostOnce),
            1 => Ok(Qos::AtLeastOnce),
            2 => Ok(Qos::ExactlyOnce),
            other => Err(MqttError::InvalidQos(other)),
        }
    }
}

/// The control packet types (3.1.1 §2.2.1, 5.0 §2.1.2). 0 is reserved; 15 is AUTH in 5.0 and
/// reserved before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketType {
    Connect = 1,
    ConnAck = 2,
    Publish = 3,
    PubAck = 4,
    PubRec = 5,
    PubRel = 6,
    PubComp = 7,
    Subscribe = 8,
    SubAck = 9,
    Unsubscribe = 10,
    UnsubAck = 11,
    PingReq = 12,
    PingResp = 13,
    Disconnect = 14,
    Auth = 15,
}

impl PacketType {
    /// The type in the high nibble of the first byte, if `version` defines it.
    pub fn from_nibble(n: u8, version: Version) -> Option<PacketType> {
        use PacketType::*;
        Some(match n {
            1 => Connect,
            2 => ConnAck,
            3 => Publish,
            4 => PubAck,
            5 => PubRec,
            6 => PubRel,
            7 => PubComp,
            8 => Subscribe,
            9 => SubAck,
            10 => Unsubscribe,
            11 => UnsubAck,
            12 => PingReq,
            13 => PingResp,
            14 => Disconnect,
            15 if version.is_v5() => Auth,
            _ => return None,
        })
    }

    /// The flags every type but PUBLISH must carry (3.1.1 Table 2.2, 5.0 Table 2-2).
    pub fn required_flags(self) -> Option<u8> {
        match self {
            PacketType::Publish => None,
            PacketType::PubRel | PacketType::Subscribe | PacketType::Unsubscribe => Some(0b0010),
            _ => Some(0),
        }
    }

    pub fn name(self) -> &'static str {
        use PacketType::*;
        match self {
            Connect => "CONNECT",
            ConnAck => "CONNACK",
            Publish => "PUBLISH",
            PubAck => "PUBACK",
            PubRec => "PUBREC",
            PubRel => "PUBREL",
            PubComp => "PUBCOMP",
            Subscribe => "SUBSCRIBE",
            SubAck => "SUBACK",
            Unsubscribe => "UNSUBSCRIBE",
            UnsubAck => "UNSUBACK",
            PingReq => "PINGREQ",
            PingResp => "PINGRESP",
            Disconnect => "DISCONNECT",
            Auth => "AUTH",
        }
    }

    /// The first byte of a packet of this type with its required flags (not for PUBLISH).
    fn first_byte(self) -> u8 {
        let flags = self.required_flags().expect("PUBLISH computes its own flags");
        (self as u8) << 4 | flags
    }
}

/// MQTT 5.0 reason codes (5.0 §2.4, Table 2-6). Codes below 0x80 report success.
pub mod reason {
    pub const SUCCESS: u8 = 0x00;
    pub const NORMAL_DISCONNECTION: u8 = 0x00;
    pub const GRANTED_QOS_0: u8 = 0x00;
    pub const GRANTED_QOS_1: u8 = 0x01;
    pub const GRANTED_QOS_2: u8 = 0x02;
    pub const DISCONNECT_WITH_WILL_MESSAGE: u8 = 0x04;
    pub const NO_MATCHING_SUBSCRIBERS: u8 = 0x10;
    pub const NO_SUBSCRIPTION_EXISTED: u8 = 0x11;
    pub const CONTINUE_AUTHENTICATION: u8 = 0x18;
    pub const RE_AUTHENTICATE: u8 = 0x19;
    pub const UNSPECIFIED_ERROR: u8 = 0x80;
    pub const MALFORMED_PACKET: u8 = 0x81;
    pub const PROTOCOL_ERROR: u8 = 0x82;
    pub const IMPLEMENTATION_SPECIFIC_ERROR: u8 = 0x83;
    pub const UNSUPPORTED_PROTOCOL_VERSION: u8 = 0x84;
    pub const CLIENT_IDENTIFIER_NOT_VALID: u8 = 0x85;
    pub const BAD_USER_NAME_OR_PASSWORD: u8 = 0x86;
    pub const NOT_AUTHORIZED: u8 = 0x87;
    pub const SERVER_UNAVAILABLE: u8 = 0x88;
    pub const SERVER_BUSY: u8 = 0x89;
    pub const BANNED: u8 = 0x8A;
    pub const SERVER_SHUTTING_DOWN: u8 = 0x8B;
    pub const BAD_AUTHENTICATION_METHOD: u8 = 0x8C;
    pub const KEEP_ALIVE_TIMEOUT: u8 = 0x8D;
    pub const SESSION_TAKEN_OVER: u8 = 0x8E;
    pub const TOPIC_FILTER_INVALID: u8 = 0x8F;
    pub const TOPIC_NAME_INVALID: u8 = 0x90;
    pub const PACKET_IDENTIFIER_IN_USE: u8 = 0x91;
    pub const PACKET_IDENTIFIER_NOT_FOUND: u8 = 0x92;
    pub const RECEIVE_MAXIMUM_EXCEEDED: u8 = 0x93;
    pub const TOPIC_ALIAS_INVALID: u8 = 0x94;
    pub const PACKET_TOO_LARGE: u8 = 0x95;
    pub const MESSAGE_RATE_TOO_HIGH: u8 = 0x96;
    pub const QUOTA_EXCEEDED: u8 = 0x97;
    pub const ADMINISTRATIVE_ACTION: u8 = 0x98;
    pub const PAYLOAD_FORMAT_INVALID: u8 = 0x99;
    pub const RETAIN_NOT_SUPPORTED: u8 = 0x9A;
    pub const QOS_NOT_SUPPORTED: u8 = 0x9B;
    pub const USE_ANOTHER_SERVER: u8 = 0x9C;
    pub const SERVER_MOVED: u8 = 0x9D;
    pub const SHARED_SUBSCRIPTIONS_NOT_SUPPORTED: u8 = 0x9E;
    pub const CONNECTION_RATE_EXCEEDED: u8 = 0x9F;
    pub const MAXIMUM_CONNECT_TIME: u8 = 0xA0;
    pub const SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED: u8 = 0xA1;
    pub const WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED: u8 = 0xA2;

    /// MQTT 3.1.1 CONNACK return codes (3.1.1 §3.2.2.3, Table 3.1); 6-255 are reserved.
    pub const V3_ACCEPTED: u8 = 0;
    pub const V3_UNACCEPTABLE_PROTOCOL_VERSION: u8 = 1;
    pub const V3_IDENTIFIER_REJECTED: u8 = 2;
    pub const V3_SERVER_UNAVAILABLE: u8 = 3;
    pub const V3_BAD_USER_NAME_OR_PASSWORD: u8 = 4;
    pub const V3_NOT_AUTHORIZED: u8 = 5;
}

/// Why bytes are not a valid MQTT packet. Each ends the connection: with a DISCONNECT (5.0),
/// a CONNACK (while connecting, where the version has one) or a plain close (3.1.1 §4.8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MqttError {
    /// A field runs past the end of the packet (or of its property list). `offset` counts
    /// from the packet's first byte.
    Truncated {
        field: &'static str,
        offset: usize,
        needed: usize,
        available: usize,
    },
    /// Bytes left over after the last field the packet defines.
    TrailingBytes {
        packet: PacketType,
        extra: usize,
    },
    /// Packet type 0, or 15 before 5.0.
    ReservedPacketType(u8),
    /// Fixed-header flags other than the ones the type requires, or DUP set on QoS 0.
    BadFlags {
        packet: PacketType,
        flags: u8,
    },
    /// A Variable Byte Integer of five bytes, or longer than its value needs.
    BadVarInt(&'static str),
    /// A string that is not well-formed UTF-8.
    BadUtf8 {
        field: &'static str,
    },
    /// A string that contains U+0000.
    NulInString {
        field: &'static str,
    },
    /// QoS 3, in PUBLISH flags, CONNECT will flags or subscription options.
    InvalidQos(u8),
    /// The fixed header announces more than the receiver's maximum packet size.
    PacketTooLarge {
        size: usize,
        max: usize,
    },
    /// Any other Malformed Packet (5.0 §1.2, §2.2.2.2): reserved bits set, bad lengths.
    Malformed(String),
    /// A Protocol Error (5.0 §1.2), or a 3.1.1 rule whose breach closes the connection.
    Protocol(String),
    /// A CONNECT protocol name and level this codec does not speak.
    UnsupportedProtocolVersion {
        name: String,
        level: u8,
    },
    ClientIdNotValid(String),
    TopicFilterInvalid(String),
    TopicNameInvalid(String),
    /// A Topic Alias property of 0 (5.0 §3.3.2.3.4).
    TopicAliasInvalid,
    /// A property identifier 5.0 does not define (§2.2.2.2: malformed).
    UnknownProperty(u32),
    /// A property the spec does not allow in this packet (§2.2.2.2: malformed).
    PropertyNotAllowed {
        id: u8,
        context: PropertyContext,
    },
    /// A property that may appear once, twice (each property's section: protocol error).
    DuplicateProperty(u8),
    /// A property value the spec forbids, such as a Receive Maximum of 0 (protocol error).
    BadPropertyValue {
        id: u8,
        value: u32,
    },
    /// A reason or return code the packet type does not define.
    BadReasonCode {
        packet: PacketType,
        code: u8,
    },
    /// A packet identifier of 0 (3.1.1 §2.3.1, 5.0 §2.2.1).
    ZeroPacketId(PacketType),
    /// `decode_connect` found another packet first (3.1.1 §3.1, 5.0 §3.1: MQTT-3.1.0-1).
    NotConnect(PacketType),
}

impl MqttError {
    /// The MQTT 5 reason code for the DISCONNECT (or CONNACK) that reports this error.
    pub fn reason_code(&self) -> u8 {
        use MqttError::*;
        match self {
            Truncated { .. }
            | TrailingBytes { .. }
            | ReservedPacketType(_)
            | BadFlags { .. }
            | BadVarInt(_)
            | BadUtf8 { .. }
            | NulInString { .. }
            | InvalidQos(_)
            | Malformed(_)
            | UnknownProperty(_)
            | PropertyNotAllowed { .. } => reason::MALFORMED_PACKET,
            Protocol(_)
            | DuplicateProperty(_)
            | BadPropertyValue { .. }
            | BadReasonCode { .. }
            | ZeroPacketId(_)
            | NotConnect(_) => reason::PROTOCOL_ERROR,
            PacketTooLarge { .. } => reason::PACKET_TOO_LARGE,
            UnsupportedProtocolVersion { .. } => reason::UNSUPPORTED_PROTOCOL_VERSION,
            ClientIdNotValid(_) => reason::CLIENT_IDENTIFIER_NOT_VALID,
            TopicFilterInvalid(_) => reason::TOPIC_FILTER_INVALID,
            TopicNameInvalid(_) => reason::TOPIC_NAME_INVALID,
            TopicAliasInvalid => reason::TOPIC_ALIAS_INVALID,
        }
    }

    /// The CONNACK code to answer a CONNECT that failed with this error, in `version`'s
    /// format; `None` means close without a CONNACK (3.1.1 §3.1.4 allows only these two
    /// return codes for decode failures). For a protocol level this codec does not speak,
    /// answer in 3.1.1 format (return code 1), which every 3.x client reads (5.0 §3.1.2.2).
    pub fn connack_code(&self, version: Version) -> Option<u8> {
        if version.is_v5() {
            return Some(self.reason_code());
        }
        match self {
            MqttError::UnsupportedProtocolVersion { .. } => {
                Some(reason::V3_UNACCEPTABLE_PROTOCOL_VERSION)
            }
            MqttError::ClientIdNotValid(_) => Some(reason::V3_IDENTIFIER_REJECTED),
            _ => None,
        }
    }
}

impl fmt::Display for MqttError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use MqttError::*;
        match self {
            Truncated { field, offset, needed, available } => write!(
                f,
                "malformed packet: {field} at byte {offset} needs {needed} bytes, \
                 {available} left"
            ),
            TrailingBytes { packet, extra } => {
                write!(f, "malformed packet: {extra} bytes after the end of {}", packet.name())
            }
            ReservedPacketType(t) => write!(f, "malformed packet: reserved packet type {t}"),
            BadFlags { packet, flags } => {
                write!(f, "malformed packet: {} with flags {flags:#06b}", packet.name())
            }
            BadVarInt(why) => write!(f, "malformed packet: variable byte integer {why}"),
            BadUtf8 { field } => write!(f, "malformed packet: {field} is not well-formed UTF-8"),
            NulInString { field } => write!(f, "malformed packet: {field} contains U+0000"),
            InvalidQos(q) => write!(f, "malformed packet: QoS {q}"),
            PacketTooLarge { size, max } => {
                write!(f, "packet of {size} bytes is larger than the maximum of {max}")
            }
            Malformed(m) => write!(f, "malformed packet: {m}"),
            Protocol(m) => write!(f, "protocol error: {m}"),
            UnsupportedProtocolVersion { name, level } => {
                write!(f, "unsupported protocol {name:?} level {level}")
            }
            ClientIdNotValid(m) => write!(f, "client identifier not valid: {m}"),
            TopicFilterInvalid(m) => write!(f, "topic filter invalid: {m}"),
            TopicNameInvalid(m) => write!(f, "topic name invalid: {m}"),
            TopicAliasInvalid => write!(f, "topic alias invalid: 0"),
            UnknownProperty(id) => write!(f, "malformed packet: unknown property {id:#04x}"),
            PropertyNotAllowed { id, context } => write!(
                f,
                "malformed packet: property {} not allowed in {context:?}",
                properties::property_name(*id)
            ),
            DuplicateProperty(id) => {
                write!(f, "protocol error: property {} repeated", properties::property_name(*id))
            }
            BadPropertyValue { id, value } => write!(
                f,
                "protocol error: property {} may not be {value}",
                properties::property_name(*id)
            ),
            BadReasonCode { packet, code } => {
                write!(f, "protocol error: {} with undefined code {code:#04x}", packet.name())
            }
            ZeroPacketId(p) => write!(f, "protocol error: {} with packet identifier 0", p.name()),
            NotConnect(p) => write!(f, "protocol error: {} before CONNECT", p.name()),
        }
    }
}

impl std::error::Error for MqttError {}

/// A decoded packet. Properties, reason codes and 5.0-only fields are empty/zero under 3.x.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// Boxed: two property lists make it twice the size of any other packet, and it comes
    /// once per connection.
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(PubAck),
    PubRec(PubRec),
    PubRel(PubRel),
    PubComp(PubComp),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    Auth(Auth),
}

impl Packet {
    pub fn packet_type(&self) -> PacketType {
        match self {
            Packet::Connect(_) => PacketType::Connect,
            Packet::ConnAck(_) => PacketType::ConnAck,
            Packet::Publish(_) => PacketType::Publish,
            Packet::PubAck(_) => PacketType::PubAck,
            Packet::PubRec(_) => PacketType::PubRec,
            Packet::PubRel(_) => PacketType::PubRel,
            Packet::PubComp(_) => PacketType::PubComp,
            Packet::Subscribe(_) => PacketType::Subscribe,
            Packet::SubAck(_) => PacketType::SubAck,
            Packet::Unsubscribe(_) => PacketType::Unsubscribe,
            Packet::UnsubAck(_) => PacketType::UnsubAck,
            Packet::PingReq => PacketType::PingReq,
            Packet::PingResp => PacketType::PingResp,
            Packet::Disconnect(_) => PacketType::Disconnect,
            Packet::Auth(_) => PacketType::Auth,
        }
    }
}

/// What the first bytes of a packet say, once they are all there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedHeader {
    pub packet_type: PacketType,
    /// The low nibble of the first byte, already validated for the type.
    pub flags: u8,
    /// Bytes after the fixed header.
    pub remaining_len: usize,
    /// Bytes of the fixed header itself (2 to 5).
    pub header_len: usize,
}

impl FixedHeader {
    /// The whole packet's size in bytes, the quantity 5.0's Maximum Packet Size bounds.
    pub fn packet_len(&self) -> usize {
        self.header_len + self.remaining_len
    }
}

/// Reads and checks the fixed header: `Ok(None)` until its last byte has arrived. Rejects a
/// packet larger than `max_packet` bytes here, before any of its body is buffered.
pub fn decode_fixed_header(
    buf: &[u8],
    version: Version,
    max_packet: usize,
) -> Result<Option<FixedHeader>, MqttError> {
    let Some(&first) = buf.first() else { return Ok(None) };
    let packet_type = PacketType::from_nibble(first >> 4, version)
        .ok_or(MqttError::ReservedPacketType(first >> 4))?;
    let flags = first & 0x0F;
    check_flags(packet_type, flags)?;
    let Some((remaining, vbi_len)) = decode_vbi(&buf[1..])? else { return Ok(None) };
    let header = FixedHeader {
        packet_type,
        flags,
        remaining_len: remaining as usize,
        header_len: 1 + vbi_len,
    };
    if header.packet_len() > max_packet {
        return Err(MqttError::PacketTooLarge { size: header.packet_len(), max: max_packet });
    }
    Ok(Some(header))
}

/// Flags must be exactly the required ones (3.1.1 §2.2.2: MQTT-2.2.2-2; 5.0 §2.1.3: malformed).
/// PUBLISH: QoS 3 is malformed (MQTT-3.3.1-4) and DUP must be 0 at QoS 0 (MQTT-3.3.1-2).
fn check_flags(packet_type: PacketType, flags: u8) -> Result<(), MqttError> {
    match packet_type.required_flags() {
        Some(required) if flags != required => {
            Err(MqttError::BadFlags { packet: packet_type, flags })
        }
        Some(_) => Ok(()),
        None => {
            let qos = Qos::from_bits((flags >> 1) & 0b11)?;
            if flags & 0b1000 != 0 && qos == Qos::AtMostOnce {
                return Err(MqttError::BadFlags { packet: packet_type, flags });
            }
            Ok(())
        }
    }
}

/// Decodes one packet from the front of `buf`: `Ok(None)` when more bytes are needed, else
/// the packet and the bytes it used. `version` is the connection's; a CONNECT is decoded with
/// the version its own protocol level names, whatever `version` says. Fails fast, from the
/// fixed header alone, for packets larger than `max_packet` bytes.
pub fn decode(
    buf: &[u8],
    version: Version,
    max_packet: usize,
) -> Result<Option<(Packet, usize)>, MqttError> {
    let Some(header) = decode_fixed_header(buf, version, max_packet)? else { return Ok(None) };
    let end = header.packet_len();
    if buf.len() < end {
        return Ok(None);
    }
    let mut r = Reader::new(&buf[header.header_len..end], header.header_len);
    let packet = decode_body(&header, &mut r, version)?;
    r.end(header.packet_type)?;
    Ok(Some((packet, end)))
}

/// Decodes the first packet of a connection, which must be CONNECT (MQTT-3.1.0-1). Whatever
/// error it returns, [`connect_version`] on the same bytes tells which CONNACK format to use.
pub fn decode_connect(
    buf: &[u8],
    max_packet: usize,
) -> Result<Option<(Connect, usize)>, MqttError> {
    if let Some(&first) = buf.first() {
        // 5.0 defines every type, so AUTH is refused as "not CONNECT", not as reserved.
        let t = PacketType::from_nibble(first >> 4, Version::V5)
            .ok_or(MqttError::ReservedPacketType(first >> 4))?;
        if t != PacketType::Connect {
            return Err(MqttError::NotConnect(t));
        }
    }
    match decode(buf, Version::V5, max_packet)? {
        Some((Packet::Connect(c), used)) => Ok(Some((*c, used))),
        Some((other, _)) => unreachable!("CONNECT header decoded as {:?}", other.packet_type()),
        None => Ok(None),
    }
}

/// The version a (possibly incomplete or invalid) CONNECT at the front of `buf` asks for, once
/// its protocol name and level have arrived: picks the CONNACK format for reporting errors.
pub fn connect_version(buf: &[u8]) -> Option<Version> {
    let header = decode_fixed_header(buf, Version::V5, PACKET_LEN_MAX).ok()??;
    if header.packet_type != PacketType::Connect {
        return None;
    }
    let end = header.packet_len().min(buf.len());
    let mut r = Reader::new(buf.get(header.header_len..end)?, header.header_len);
    let name = r.string("protocol name").ok()?;
    Version::from_connect(&name, r.u8("protocol level").ok()?)
}

fn decode_body(h: &FixedHeader, r: &mut Reader, version: Version) -> Result<Packet, MqttError> {
    use PacketType as T;
    Ok(match h.packet_type {
        T::Connect => Packet::Connect(Box::new(Connect::decode(r)?)),
        T::ConnAck => Packet::ConnAck(ConnAck::decode(r, version)?),
        T::Publish => Packet::Publish(Publish::decode(h.flags, r, version)?),
        T::PubAck => Packet::PubAck(PubAck::decode(r, version)?),
        T::PubRec => Packet::PubRec(PubRec::decode(r, version)?),
        T::PubRel => Packet::PubRel(PubRel::decode(r, version)?),
        T::PubComp => Packet::PubComp(PubComp::decode(r, version)?),
        T::Subscribe => Packet::Subscribe(Subscribe::decode(r, version)?),
        T::SubAck => Packet::SubAck(SubAck::decode(r, version)?),
        T::Unsubscribe => Packet::Unsubscribe(Unsubscribe::decode(r, version)?),
        T::UnsubAck => Packet::UnsubAck(UnsubAck::decode(r, version)?),
        T::PingReq => Packet::PingReq,
        T::PingResp => Packet::PingResp,
        T::Disconnect => Packet::Disconnect(Disconnect::decode(r, version)?),
        T::Auth => Packet::Auth(Auth::decode(r, version)?),
    })
}

/// Appends `p` as `version` encodes it. A CONNECT is encoded in the version it names. 5.0-only
/// parts (properties, reason codes) are left out under 3.x; everything else must be valid
/// for the version (asserted: these are the rules [`decode`] enforces, so a packet that
/// decoded always encodes).
pub fn encode(p: &Packet, version: Version, out: &mut Vec<u8>) {
    match p {
        Packet::Connect(c) => c.encode(out),
        Packet::ConnAck(c) => c.encode(version, out),
        Packet::Publish(x) => x.encode(version, out),
        Packet::PubAck(x) => x.encode(version, out),
        Packet::PubRec(x) => x.encode(version, out),
        Packet::PubRel(x) => x.encode(version, out),
        Packet::PubComp(x) => x.encode(version, out),
        Packet::Subscribe(x) => x.encode(version, out),
        Packet::SubAck(x) => x.encode(version, out),
        Packet::Unsubscribe(x) => x.encode(version, out),
        Packet::UnsubAck(x) => x.encode(version, out),
        Packet::PingReq => ping::encode(PacketType::PingReq, out),
        Packet::PingResp => ping::encode(PacketType::PingResp, out),
        Packet::Disconnect(x) => x.encode(version, out),
        Packet::Auth(x) => x.encode(version, out),
    }
}

/// Reads a Variable Byte Integer from the front of `buf`: `Ok(None)` when it continues past
/// the end; else the value and its length. Rejects a fifth byte and non-minimal encodings
/// (5.0 §1.5.5: MQTT-1.5.5-1): a last byte of 0 after a continuation adds nothing.
pub fn decode_vbi(buf: &[u8]) -> Result<Option<(u32, usize)>, MqttError> {
    let mut value = 0u32;
    for i in 0..VBI_BYTES_MAX {
        let Some(&b) = buf.get(i) else { return Ok(None) };
        value |= u32::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            if i > 0 && b == 0 {
                return Err(MqttError::BadVarInt("not in its shortest form"));
            }
            return Ok(Some((value, i + 1)));
        }
    }
    Err(MqttError::BadVarInt("longer than four bytes"))
}

/// Appends `value` as a Variable Byte Integer.
pub fn encode_vbi(value: u32, out: &mut Vec<u8>) {
    let mut bytes = [0u8; VBI_BYTES_MAX];
    let n = vbi_bytes(value, &mut bytes);
    out.extend_from_slice(&bytes[..n]);
}

/// Writes `value` into `bytes`, returning how many it took.
fn vbi_bytes(value: u32, bytes: &mut [u8; VBI_BYTES_MAX]) -> usize {
    assert!(value <= VBI_MAX, "variable byte integer {value} exceeds {VBI_MAX}");
    let mut v = value;
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = (v & 0x7F) as u8;
        v >>= 7;
        if v == 0 {
            return i + 1;
        }
        *b |= 0x80;
    }
    unreachable!("a value below 2^28 fits four bytes")
}

/// Checks a string's bytes against the UTF-8 string rules (3.1.1 §1.5.3, 5.0 §1.5.4):
/// well-formed UTF-8 (which excludes surrogates) and no U+0000. The other control characters
/// and non-characters are only SHOULD NOTs and are accepted.
pub fn check_utf8<'a>(bytes: &'a [u8], field: &'static str) -> Result<&'a str, MqttError> {
    let s = std::str::from_utf8(bytes).map_err(|_| MqttError::BadUtf8 { field })?;
    if s.contains('\0') {
        return Err(MqttError::NulInString { field });
    }
    Ok(s)
}

/// Bounds-checked reads over one packet's body. Offsets in errors count from the packet's
/// first byte.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
    /// Where `buf` starts in the packet.
    base: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], base: usize) -> Reader<'a> {
        Reader { buf, at: 0, base }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.at
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    pub(crate) fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], MqttError> {
        if n > self.remaining() {
            return Err(MqttError::Truncated {
                field,
                offset: self.base + self.at,
                needed: n,
                available: self.remaining(),
            });
        }
        let bytes = &self.buf[self.at..self.at + n];
        self.at += n;
        Ok(bytes)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, MqttError> {
        Ok(self.take(1, field)?[0])
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, MqttError> {
        let b = self.take(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, MqttError> {
        let b = self.take(4, field)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A Variable Byte Integer inside the body: running off the end is truncation here.
    pub(crate) fn vbi(&mut self, field: &'static str) -> Result<u32, MqttError> {
        match decode_vbi(&self.buf[self.at..])? {
            Some((v, n)) => {
                self.at += n;
                Ok(v)
            }
            None => Err(MqttError::Truncated {
                field,
                offset: self.base + self.at,
                needed: self.remaining() + 1,
                available: self.remaining(),
            }),
        }
    }

    /// Binary data: a two-byte length, then that many bytes (5.0 §1.5.6).
    pub(crate) fn binary(&mut self, field: &'static str) -> Result<Vec<u8>, MqttError> {
        let n = self.u16(field)?;
        Ok(self.take(usize::from(n), field)?.to_vec())
    }

    /// A UTF-8 string (see [`check_utf8`]).
    pub(crate) fn string(&mut self, field: &'static str) -> Result<String, MqttError> {
        let n = self.u16(field)?;
        let bytes = self.take(usize::from(n), field)?;
        Ok(check_utf8(bytes, field)?.to_string())
    }

    /// A packet identifier, which is never 0 (3.1.1 §2.3.1, 5.0 §2.2.1).
    pub(crate) fn packet_id(&mut self, packet: PacketType) -> Result<u16, MqttError> {
        match self.u16("packet identifier")? {
            0 => Err(MqttError::ZeroPacketId(packet)),
            id => Ok(id),
        }
    }

    /// The next `n` bytes as their own reader (a property list).
    pub(crate) fn split(&mut self, n: usize, field: &'static str) -> Result<Reader<'a>, MqttError> {
        let base = self.base + self.at;
        Ok(Reader::new(self.take(n, field)?, base))
    }

    /// Everything left (a PUBLISH payload).
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let bytes = &self.buf[self.at..];
        self.at = self.buf.len();
        bytes
    }

    /// The packet must end here.
    pub(crate) fn end(&self, packet: PacketType) -> Result<(), MqttError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(MqttError::TrailingBytes { packet, extra }),
        }
    }
}

/// Starts a packet: writes its first byte and returns where the remaining length goes.
pub(crate) fn begin(out: &mut Vec<u8>, first_byte: u8) -> usize {
    out.push(first_byte);
    out.len()
}

/// Ends a packet begun at `at`: inserts its remaining length, counting the `tail` bytes the
/// caller appends next (a PUBLISH payload, so it is never moved). Only the variable header
/// written since `begin` shifts to make room.
pub(crate) fn finish(out: &mut Vec<u8>, at: usize, tail: usize) {
    let remaining = out.len() - at + tail;
    assert!(remaining <= VBI_MAX as usize, "packet body of {remaining} bytes exceeds {VBI_MAX}");
    insert_vbi(out, at, remaining as u32);
}

/// Inserts `value` as a Variable Byte Integer at `at` (a length prefix written after the
/// fact).
pub(crate) fn insert_vbi(out: &mut Vec<u8>, at: usize, value: u32) {
    let mut bytes = [0u8; VBI_BYTES_MAX];
    let n = vbi_bytes(value, &mut bytes);
    out.splice(at..at, bytes[..n].iter().copied());
}

/// The first byte of a packet with fixed flags.
pub(crate) fn begin_fixed(out: &mut Vec<u8>, packet_type: PacketType) -> usize {
    begin(out, packet_type.first_byte())
}

pub(crate) fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

pub(crate) fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Binary data. Longer than 65535 bytes cannot be expressed: the caller checks first.
pub(crate) fn put_binary(out: &mut Vec<u8>, b: &[u8]) {
    assert!(b.len() <= STRING_LEN_MAX, "binary data of {} bytes exceeds {STRING_LEN_MAX}", b.len());
    put_u16(out, b.len() as u16);
    out.extend_from_slice(b);
}

/// A UTF-8 string, which must obey the rules [`check_utf8`] enforces on the way in.
pub(crate) fn put_string(out: &mut Vec<u8>, s: &str) {
    assert!(!s.contains('\0'), "MQTT strings may not contain U+0000: {s:?}");
    put_binary(out, s.as_bytes());
}

#[cfg(test)]
pub(crate) const TEST_MAX: usize = 1 << 20;

/// Encodes `p`, decodes it back, and checks that every strict prefix asks for more bytes and
/// that bytes after the packet are left alone.
#[cfg(test)]
pub(crate) fn round_trip(p: &Packet, version: Version) -> Packet {
    let mut out = Vec::new();
    encode(p, version, &mut out);
    let (got, used) = decode(&out, version, TEST_MAX).unwrap().unwrap();
    assert_eq!(used, out.len(), "{p:?}");
    for n in 0..out.len() {
        assert_eq!(decode(&out[..n], version, TEST_MAX), Ok(None), "prefix of {n} bytes");
    }
    let mut two = out.clone();
    two.extend_from_slice(&out);
    assert_eq!(decode(&two, version, TEST_MAX).unwrap().unwrap().1, out.len());
    assert_eq!(&got, p, "{version:?}");
    got
}

/// Frames `body` behind `first_byte` and decodes it, demanding a whole packet or an error.
#[cfg(test)]
pub(crate) fn decode_raw(
    first_byte: u8,
    body: &[u8],
    version: Version,
) -> Result<Packet, MqttError> {
    let mut out = vec![first_byte];
    encode_vbi(body.len() as u32, &mut out);
    out.extend_from_slice(body);
    let (p, used) = decode(&out, version, TEST_MAX)?.expect("a whole packet");
    assert_eq!(used, out.len());
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variable_byte_integers_at_their_boundaries() {
        // 5.0 §1.5.5 Table 1-1: the smallest and largest value of each length.
        let cases: [(u32, &[u8]); 8] = [
            (0, &[0x00]),
            (127, &[0x7F]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xFF, 0x7F]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xFF, 0xFF, 0x7F]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
            (VBI_MAX, &[0xFF, 0xFF, 0xFF, 0x7F]),
        ];
        for (value, bytes) in cases {
            let mut out = Vec::new();
            encode_vbi(value, &mut out);
            assert_eq!(out, bytes, "{value}");
            assert_eq!(decode_vbi(bytes), Ok(Some((value, bytes.len()))));
            assert_eq!(decode_vbi(&bytes[..bytes.len() - 1]), Ok(None), "{value} cut short");
        }
        assert!(matches!(
            decode_vbi(&[0xFF, 0xFF, 0xFF, 0xFF, 0x01]),
            Err(MqttError::BadVarInt(_))
        ));
        assert!(matches!(decode_vbi(&[0x80, 0x00]), Err(MqttError::BadVarInt(_))), "overlong 0");
        assert!(matches!(decode_vbi(&[0xFF, 0x80, 0x00]), Err(MqttError::BadVarInt(_))));
    }

    #[test]
    #[should_panic(expected = "exceeds")]
    fn encoding_a_vbi_too_large_is_a_bug() {
        encode_vbi(VBI_MAX + 1, &mut Vec::new());
    }

    #[test]
    fn fixed_header_flags_are_exact() {
        let v = Version::V5;
        for t in 1..=15u8 {
            let pt = PacketType::from_nibble(t, v).unwrap();
            for flags in 0..16u8 {
                let res = decode_fixed_header(&[t << 4 | flags, 0], v, TEST_MAX);
                let ok = match pt.required_flags() {
                    Some(req) => flags == req,
                    None => (flags >> 1) & 3 != 3 && !(flags & 8 != 0 && (flags >> 1) & 3 == 0),
                };
                assert_eq!(res.is_ok(), ok, "{} flags {flags:#06b}", pt.name());
            }
        }
        assert_eq!(decode_fixed_header(&[0x00, 0], v, 10), Err(MqttError::ReservedPacketType(0)));
        assert_eq!(
            decode_fixed_header(&[0xF0, 0], Version::V311, 10),
            Err(MqttError::ReservedPacketType(15)),
            "AUTH is 5.0 only"
        );
        assert_eq!(decode_raw(0x36, &[0, 1, b'a', 0, 1], v), Err(MqttError::InvalidQos(3)));
        assert!(matches!(decode_raw(0x62, &[0, 1], Version::V311), Ok(Packet::PubRel(_))));
        assert!(matches!(
            decode_raw(0x60, &[0, 1], Version::V311),
            Err(MqttError::BadFlags { .. })
        ));
        assert!(matches!(decode_raw(0x82, &[0, 1], v), Err(MqttError::Truncated { .. })));
    }

    #[test]
    fn too_large_is_refused_from_the_fixed_header_alone() {
        // Only the type byte and the remaining length have arrived.
        let head = [0x30, 0x80, 0x80, 0x04]; // PUBLISH, remaining length 65536
        let err = decode(&head, Version::V311, 1000).unwrap_err();
        assert_eq!(err, MqttError::PacketTooLarge { size: 4 + 65_536, max: 1000 });
        assert_eq!(err.reason_code(), reason::PACKET_TOO_LARGE);
        assert_eq!(decode(&[0xC0, 0x00], Version::V311, 2), Ok(Some((Packet::PingReq, 2))));
        assert!(decode(&[0xC0, 0x00], Version::V311, 1).is_err(), "the limit counts the header");
        assert_eq!(decode(&[0x30, 0xFF], Version::V311, 10), Ok(None), "length incomplete");
        assert_eq!(decode(&[0x30, 0x05, 0, 1], Version::V311, 10), Ok(None), "body incomplete");
        assert!(matches!(
            decode(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F], Version::V311, 10),
            Err(MqttError::BadVarInt(_))
        ));
    }

    #[test]
    fn strings_must_be_utf8_without_nul() {
        assert_eq!(check_utf8(b"a/\xC3\xBC", "t"), Ok("a/ü"));
        assert_eq!(check_utf8(b"\xC3", "t"), Err(MqttError::BadUtf8 { field: "t" }));
        assert_eq!(check_utf8(b"\xED\xA0\x80", "t"), Err(MqttError::BadUtf8 { field: "t" }));
        assert_eq!(
            check_utf8(b"\xC0\x80", "t"),
            Err(MqttError::BadUtf8 { field: "t" }),
            "overlong"
        );
        assert_eq!(check_utf8(b"a\0b", "t"), Err(MqttError::NulInString { field: "t" }));
        // U+FEFF is kept, not stripped (MQTT-1.5.4-3).
        assert_eq!(check_utf8("\u{FEFF}x".as_bytes(), "t"), Ok("\u{FEFF}x"));
    }

    #[test]
    fn connect_decides_the_version_and_other_packets_are_refused_first() {
        let c = Connect { version: Version::V5, ..connect::tests::minimal(Version::V5) };
        let mut out = Vec::new();
        c.encode(&mut out);
        assert_eq!(connect_version(&out[..8]), None, "level not there yet");
        assert_eq!(connect_version(&out[..9]), Some(Version::V5));
        assert_eq!(decode_connect(&out[..5], TEST_MAX), Ok(None));
        let (got, used) = decode_connect(&out, TEST_MAX).unwrap().unwrap();
        assert_eq!((got, used), (c.clone(), out.len()));
        let (p, _) = decode(&out, Version::V311, TEST_MAX).unwrap().unwrap();
        assert_eq!(p, Packet::Connect(Box::new(c)), "CONNECT ignores the connection's version");
        assert_eq!(
            decode_connect(&[0xC0, 0], TEST_MAX),
            Err(MqttError::NotConnect(PacketType::PingReq))
        );
        assert_eq!(
            decode_connect(&[0x30], TEST_MAX),
            Err(MqttError::NotConnect(PacketType::Publish))
        );
    }

    #[test]
    fn errors_map_to_reason_codes_and_connack_codes() {
        let e = MqttError::UnsupportedProtocolVersion { name: "MQTT".into(), level: 9 };
        assert_eq!(e.reason_code(), reason::UNSUPPORTED_PROTOCOL_VERSION);
        assert_eq!(e.connack_code(Version::V311), Some(reason::V3_UNACCEPTABLE_PROTOCOL_VERSION));
        let e = MqttError::ClientIdNotValid(String::new());
        assert_eq!(e.connack_code(Version::V31), Some(reason::V3_IDENTIFIER_REJECTED));
        assert_eq!(e.connack_code(Version::V5), Some(reason::CLIENT_IDENTIFIER_NOT_VALID));
        assert_eq!(MqttError::Malformed("x".into()).connack_code(Version::V311), None);
        assert_eq!(MqttError::DuplicateProperty(0x21).reason_code(), reason::PROTOCOL_ERROR);
        assert_eq!(
            MqttError::PropertyNotAllowed { id: 0x23, context: PropertyContext::Connect }
                .reason_code(),
            reason::MALFORMED_PACKET
        );
        assert_eq!(MqttError::TopicFilterInvalid("a#".into()).reason_code(), 0x8F);
        assert_eq!(MqttError::TopicNameInvalid("a/+".into()).reason_code(), 0x90);
        let msg = MqttError::DuplicateProperty(0x21).to_string();
        assert!(msg.contains("Receive Maximum"), "{msg}");
        let msg = MqttError::Truncated { field: "topic name", offset: 2, needed: 5, available: 1 }
            .to_string();
        assert!(msg.contains("topic name") && msg.contains("byte 2"), "{msg}");
    }

    /// One valid packet of every type the version has, with most optional parts present.
    fn samples(version: Version) -> Vec<Packet> {
        let mut all = vec![
            Packet::Connect(Box::new(connect::tests::full(version))),
            Packet::ConnAck(connack::tests::sample(version)),
            Packet::Publish(publish::tests::sample(version, Qos::AtMostOnce)),
            Packet::Publish(publish::tests::sample(version, Qos::ExactlyOnce)),
            Packet::PubAck(puback::tests::sample(version)),
            Packet::PubRec(pubrec::tests::sample(version)),
            Packet::PubRel(pubrel::tests::sample(version)),
            Packet::PubComp(pubcomp::tests::sample(version)),
            Packet::Subscribe(subscribe::tests::sample(version)),
            Packet::SubAck(suback::tests::sample(version)),
            Packet::Unsubscribe(unsubscribe::tests::sample(version)),
            Packet::UnsubAck(unsuback::tests::sample(version)),
            Packet::PingReq,
            Packet::PingResp,
            Packet::Disconnect(disconnect::tests::sample(version)),
        ];
        if version.is_v5() {
            all.push(Packet::Auth(auth::tests::sample()));
        }
        all
    }

    #[test]
    fn every_packet_round_trips_in_every_version() {
        for version in [Version::V31, Version::V311, Version::V5] {
            for p in samples(version) {
                round_trip(&p, version);
            }
        }
    }

    /// Seeded mutations of valid packets of every type, both versions: the decoder never
    /// panics, never claims more bytes than it was given, and whatever it accepts encodes to
    /// bytes that decode to the same packet. A failure names the seed and iteration.
    #[test]
    fn seeded_fuzz_never_panics() {
        let seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut x = seed;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut seeds = Vec::new();
        for version in [Version::V311, Version::V5] {
            for p in samples(version) {
                let mut b = Vec::new();
                encode(&p, version, &mut b);
                seeds.push((version, b));
            }
        }
        const SMALL_MAX: usize = 16;
        let interesting = [0x00, 0x01, 0x02, 0x03, 0x0B, 0x23, 0x26, 0x7F, 0x80, 0xFF, b'+', b'#'];
        let mut accepted = 0;
        for i in 0..60_000 {
            let (version, seed_bytes) = &seeds[i % seeds.len()];
            let mut b = seed_bytes.clone();
            for _ in 0..(1 + next() % 3) {
                let at = (next() as usize) % b.len();
                match next() % 5 {
                    0 => b[at] = next() as u8,
                    1 => b[at] ^= 1 << (next() % 8),
                    2 => {
                        b.remove(at);
                    }
                    3 => b.insert(at, interesting[(next() as usize) % interesting.len()]),
                    _ => b.truncate(at.max(1)),
                }
                if b.is_empty() {
                    b.push(0x30);
                }
            }
            // Keep the remaining length honest half the time, so bodies get exercised.
            if next() % 2 == 0 && b.len() >= 2 && b.len() - 2 < 128 {
                b[1] = (b.len() - 2) as u8;
            }
            let ctx = format!("seed {seed:#x} iteration {i} {version:?} bytes {b:02x?}");
            let _ = (decode_connect(&b, TEST_MAX), connect_version(&b));
            if let Ok(Some((_, used))) = decode(&b, *version, SMALL_MAX) {
                assert!(used <= SMALL_MAX, "{ctx}: {used} bytes passed a {SMALL_MAX}-byte limit");
            }
            let p = match decode(&b, *version, TEST_MAX) {
                Ok(Some(got)) => got,
                Ok(None) => continue,
                Err(e) => {
                    assert!(e.reason_code() >= 0x80 && !e.to_string().is_empty(), "{ctx}");
                    continue;
                }
            };
            let (p, used) = p;
            assert!(used <= b.len(), "{ctx}: used {used}");
            accepted += 1;
            let mut again = Vec::new();
            encode(&p, *version, &mut again);
            let (q, n) = decode(&again, *version, TEST_MAX)
                .unwrap_or_else(|e| panic!("{ctx}: re-encoded {p:?} fails: {e}"))
                .unwrap_or_else(|| panic!("{ctx}: re-encoded {p:?} is incomplete"));
            assert_eq!(n, again.len(), "{ctx}");
            assert_eq!(q, p, "{ctx}");
        }
        assert!(accepted > 1000, "the fuzzer should reach valid packets, got {accepted}");
    }
}
