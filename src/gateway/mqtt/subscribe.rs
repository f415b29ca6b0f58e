//! SUBSCRIBE (client → server): topic filters and what to deliver from each.
//!
//! ```text
//! fixed header   0x82, remaining length               3.1.1 §3.8.1, 5.0 §3.8.1
//! packet id      u16, non-zero                        §3.8.2
//! properties     5.0 only: Subscription Identifier (once), User Property
//! payload        one or more of: topic filter (string), options (byte)   §3.8.3
//!
//! options, 3.1.1   bits 7-2 reserved = 0, bits 1-0 requested QoS
//! options, 5.0     bits 7-6 reserved = 0, 5-4 Retain Handling, 3 Retain As Published,
//!                  2 No Local, 1-0 Maximum QoS                       5.0 §3.8.3.1
//! ```
//! An empty payload is a protocol error (3.1.1 MQTT-3.8.3-3, 5.0 MQTT-3.8.3-2). Reserved bits
//! set and QoS 3 are malformed (3.1.1 MQTT-3-8.3-4, 5.0 MQTT-3.8.3-5); Retain Handling 3 and
//! No Local on a shared subscription are protocol errors (5.0 §3.8.3.1, MQTT-3.8.3-4). Every
//! filter must be valid (Topic Filter invalid otherwise); in 5.0 a `$share/` filter must also
//! be a valid shared subscription (§4.8.2). In 3.x `$share/…` is an ordinary filter.

use super::{
    begin_fixed, finish, put_string, put_u16, topic, MqttError, PacketType, Properties,
    PropertyContext, Qos, Reader, Version,
};

const QOS_MASK: u8 = 0b0000_0011;
const NO_LOCAL: u8 = 0b0000_0100;
const RETAIN_AS_PUBLISHED: u8 = 0b0000_1000;
const RETAIN_HANDLING_SHIFT: u8 = 4;
const V5_RESERVED: u8 = 0b1100_0000;
const V3_RESERVED: u8 = 0b1111_1100;

/// When the server sends retained messages for a new subscription (5.0 §3.8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RetainHandling {
    /// At subscribe time (the only behaviour before 5.0).
    #[default]
    SendAtSubscribe = 0,
    /// At subscribe time, only if the subscription did not exist.
    SendAtSubscribeIfNew = 1,
    DoNotSend = 2,
}

/// The options byte. Before 5.0 only `qos` exists; the rest read as their defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionOptions {
    /// The highest QoS the server may deliver with.
    pub qos: Qos,
    /// Do not send the client its own publications.
    pub no_local: bool,
    /// Keep the RETAIN flag of forwarded messages as published.
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
}

impl SubscriptionOptions {
    pub fn qos(qos: Qos) -> SubscriptionOptions {
        SubscriptionOptions {
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: RetainHandling::SendAtSubscribe,
        }
    }

    fn decode(b: u8, version: Version) -> Result<SubscriptionOptions, MqttError> {
        let reserved = if version.is_v5() { V5_RESERVED } else { V3_RESERVED };
        if b & reserved != 0 {
            return Err(MqttError::Malformed(format!(
                "subscription options {b:#010b}: reserved bits set"
            )));
        }
        let qos = Qos::from_bits(b & QOS_MASK)?;
        let retain_handling = match b >> RETAIN_HANDLING_SHIFT & 0b11 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendAtSubscribeIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return Err(MqttError::Protocol("Retain Handling 3".into())),
        };
        Ok(SubscriptionOptions {
            qos,
            no_local: b & NO_LOCAL != 0,
            retain_as_published: b & RETAIN_AS_PUBLISHED != 0,
            retain_handling,
        })
    }

    fn encode(&self, version: Version) -> u8 {
        if !version.is_v5() {
            return self.qos as u8;
        }
        let mut b = self.qos as u8 | (self.retain_handling as u8) << RETAIN_HANDLING_SHIFT;
        if self.no_local {
            b |= NO_LOCAL;
        }
        if self.retain_as_published {
            b |= RETAIN_AS_PUBLISHED;
        }
        b
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// As sent: a `$share/{group}/{filter}` one is split with [`topic::parse_shared`].
    pub filter: String,
    pub options: SubscriptionOptions,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub packet_id: u16,
    pub properties: Properties,
    /// At least one.
    pub subscriptions: Vec<Subscription>,
}

/// A filter as SUBSCRIBE and UNSUBSCRIBE carry it; true if it is a 5.0 shared subscription.
pub(crate) fn check_filter(filter: &str, version: Version) -> Result<bool, MqttError> {
    let invalid = |e: topic::TopicError| MqttError::TopicFilterInvalid(e.0);
    if version.is_v5() {
        if let Some(_shared) = topic::parse_shared(filter).map_err(invalid)? {
            return Ok(true);
        }
    }
    topic::validate_filter(filter).map_err(invalid)?;
    Ok(false)
}

impl Subscribe {
    pub(crate) fn decode(r: &mut Reader, version: Version) -> Result<Subscribe, MqttError> {
        let packet_id = r.packet_id(PacketType::Subscribe)?;
        let properties = if version.is_v5() {
            Properties::decode(r, PropertyContext::Subscribe)?
        } else {
            Properties::default()
        };
        if r.is_empty() {
            return Err(MqttError::Protocol("SUBSCRIBE without a topic filter".into()));
        }
        let mut subscriptions = Vec::new();
        while !r.is_empty() {
            let filter = r.string("topic filter")?;
            let shared = check_filter(&filter, version)?;
            let options = SubscriptionOptions::decode(r.u8("subscription options")?, version)?;
            if shared && options.no_local {
                return Err(MqttError::Protocol("No Local on a shared subscription".into()));
            }
            subscriptions.push(Subscription { filter, options });
        }
        Ok(Subscribe { packet_id, properties, subscriptions })
    }

    pub fn encode(&self, version: Version, out: &mut Vec<u8>) {
        assert!(self.packet_id != 0, "packet identifier 0");
        assert!(!self.subscriptions.is_empty(), "SUBSCRIBE needs a topic filter");
        let at = begin_fixed(out, PacketType::Subscribe);
        put_u16(out, self.packet_id);
        if version.is_v5() {
            self.properties.encode(PropertyContext::Subscribe, out);
        }
        for s in &self.subscriptions {
            let shared = check_filter(&s.filter, version).expect("a valid topic filter");
            assert!(
                !(shared && s.options.no_local && version.is_v5()),
                "No Local on a shared subscription"
            );
            put_string(out, &s.filter);
            out.push(s.options.encode(version));
        }
        finish(out, at, 0);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::properties::tests::full;
    use super::super::{decode_raw, round_trip, Packet};
    use super::*;

    pub(crate) fn sample(version: Version) -> Subscribe {
        let v5 = version.is_v5();
        let rich = SubscriptionOptions {
            qos: Qos::ExactlyOnce,
            no_local: v5,
            retain_as_published: v5,
            retain_handling: if v5 {
                RetainHandling::DoNotSend
            } else {
                RetainHandling::SendAtSubscribe
            },
        };
        Subscribe {
            packet_id: 3,
            properties: if v5 { full(PropertyContext::Subscribe) } else { Properties::default() },
            subscriptions: vec![
                Subscription { filter: "a/+/c".into(), options: rich },
                Subscription {
                    filter: "#".into(),
                    options: SubscriptionOptions::qos(Qos::AtMostOnce),
                },
                Subscription {
                    filter: "$share/g/x/#".into(),
                    options: SubscriptionOptions::qos(Qos::AtLeastOnce),
                },
            ],
        }
    }

    #[test]
    fn round_trips() {
        for v in [Version::V31, Version::V311, Version::V5] {
            round_trip(&Packet::Subscribe(sample(v)), v);
        }
        for rh in [RetainHandling::SendAtSubscribe, RetainHandling::SendAtSubscribeIfNew] {
            let mut s = sample(Version::V5);
            s.subscriptions[0].options.retain_handling = rh;
            round_trip(&Packet::Subscribe(s), Version::V5);
        }
    }

    #[test]
    fn wire_layout() {
        let mut out = Vec::new();
        let s = Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            subscriptions: vec![Subscription {
                filter: "a".into(),
                options: SubscriptionOptions {
                    qos: Qos::AtLeastOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainHandling::DoNotSend,
                },
            }],
        };
        s.encode(Version::V5, &mut out);
        assert_eq!(out, [0x82, 7, 0, 1, 0, 0, 1, b'a', 0b0010_1101]);
        out.clear();
        s.encode(Version::V311, &mut out);
        assert_eq!(out, [0x82, 6, 0, 1, 0, 1, b'a', 1], "3.1.1 keeps only the QoS");
    }

    #[test]
    fn malformed_3_1_1() {
        let v = Version::V311;
        let d = |body: &[u8]| decode_raw(0x82, body, v);
        assert!(matches!(d(&[0, 1]), Err(MqttError::Protocol(_))), "no filters");
        assert_eq!(d(&[0, 0, 0, 1, b'a', 0]), Err(MqttError::ZeroPacketId(PacketType::Subscribe)));
        assert!(matches!(d(&[0, 1, 0, 1, b'a', 4]), Err(MqttError::Malformed(_))), "reserved bits");
        assert_eq!(d(&[0, 1, 0, 1, b'a', 3]), Err(MqttError::InvalidQos(3)));
        assert!(matches!(d(&[0, 1, 0, 1, b'a']), Err(MqttError::Truncated { .. })), "no options");
        assert!(matches!(d(&[0, 1, 0, 2, b'a', b'#', 0]), Err(MqttError::TopicFilterInvalid(_))));
        assert!(
            matches!(d(&[0, 1, 0, 0, 0]), Err(MqttError::TopicFilterInvalid(_))),
            "empty filter"
        );
        assert!(matches!(d(&[0, 1, 0, 2, b'a', 0, 0]), Err(MqttError::NulInString { .. })));
        assert!(matches!(
            decode_raw(0x80, &[0, 1, 0, 1, b'a', 0], v),
            Err(MqttError::BadFlags { .. })
        ));
        // `$share/` is an ordinary filter before 5.0, so `$share/g` is fine.
        assert!(d(&[0, 1, 0, 8, b'$', b's', b'h', b'a', b'r', b'e', b'/', b'g', 0]).is_ok());
    }

    #[test]
    fn malformed_5_0() {
        let v = Version::V5;
        let d = |body: &[u8]| decode_raw(0x82, body, v);
        assert!(matches!(d(&[0, 1, 0]), Err(MqttError::Protocol(_))), "no filters");
        assert!(
            matches!(d(&[0, 1, 0, 0, 1, b'a', 0x40]), Err(MqttError::Malformed(_))),
            "reserved"
        );
        assert!(matches!(d(&[0, 1, 0, 0, 1, b'a', 0x30]), Err(MqttError::Protocol(_))), "RH 3");
        assert_eq!(d(&[0, 1, 0, 0, 1, b'a', 0x03]), Err(MqttError::InvalidQos(3)));
        let shared = |opts: u8| {
            let mut b = vec![0, 1, 0, 0, 10];
            b.extend_from_slice(b"$share/g/a");
            b.push(opts);
            d(&b)
        };
        assert!(shared(0x01).is_ok());
        assert!(matches!(shared(0x04), Err(MqttError::Protocol(_))), "No Local on shared");
        let mut b = vec![0, 1, 0, 0, 8];
        b.extend_from_slice(b"$share/g");
        b.push(0);
        assert!(matches!(d(&b), Err(MqttError::TopicFilterInvalid(_))), "share without filter");
        assert_eq!(
            d(&[0, 1, 4, 0x0B, 1, 0x0B, 2, 0, 1, b'a', 0]),
            Err(MqttError::DuplicateProperty(0x0B))
        );
        assert_eq!(
            d(&[0, 1, 2, 0x0B, 0, 0, 1, b'a', 0]),
            Err(MqttError::BadPropertyValue { id: 0x0B, value: 0 })
        );
        assert!(matches!(
            d(&[0, 1, 3, 0x23, 0, 1, 0, 1, b'a', 0]),
            Err(MqttError::PropertyNotAllowed { id: 0x23, .. })
        ));
    }
}
