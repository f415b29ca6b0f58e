//! PUBLISH (both directions): an application message.
//!
//! ```text
//! fixed header   0x3 | DUP << 3 | QoS << 1 | RETAIN, remaining length   3.1.1 §3.3.1, 5.0 §3.3.1
//! topic name     string                                                 §3.3.2.1
//! packet id      u16, only when QoS > 0                                 §3.3.2.2
//! properties     5.0 only                                               5.0 §3.3.2.3
//! payload        the rest of the packet, possibly empty                 §3.3.3
//! ```
//! The flags are checked with the fixed header (QoS 3 and DUP at QoS 0 are malformed). The
//! topic name has no wildcards (MQTT-3.3.2-2). Before 5.0 it is non-empty (MQTT-4.7.3-1); in
//! 5.0 an empty name is allowed only with a Topic Alias, which the session then resolves
//! (§3.3.2.3.4; otherwise a Protocol Error). Whether a Subscription Identifier may appear
//! depends on the direction (MQTT-3.3.4-6: never client → server), which the session checks.

use super::{
    begin, finish, put_string, put_u16, topic, MqttError, PacketType, Properties, PropertyContext,
    Qos, Reader, Version,
};

const DUP: u8 = 0b1000;
const RETAIN: u8 = 0b0001;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// A redelivery (QoS > 0 only).
    pub dup: bool,
    pub qos: Qos,
    pub retain: bool,
    /// Empty only in 5.0 with a Topic Alias.
    pub topic: String,
    /// Present exactly when QoS > 0, never 0.
    pub packet_id: Option<u16>,
    pub properties: Properties,
    pub payload: Vec<u8>,
}

impl Publish {
    pub(crate) fn decode(
        flags: u8,
        r: &mut Reader,
        version: Version,
    ) -> Result<Publish, MqttError> {
        let qos = Qos::from_bits((flags >> 1) & 0b11)?;
        let topic = r.string("topic name")?;
        let packet_id = match qos {
            Qos::AtMostOnce => None,
            _ => Some(r.packet_id(PacketType::Publish)?),
        };
        let properties = if version.is_v5() {
            Properties::decode(r, PropertyContext::Publish)?
        } else {
            Properties::default()
        };
        check_topic(&topic, &properties, version)?;
        Ok(Publish {
            dup: flags & DUP != 0,
            qos,
            retain: flags & RETAIN != 0,
            topic,
            packet_id,
            properties,
            payload: r.rest().to_vec(),
        })
    }

    /// Appends the packet; the payload is copied once, after the remaining length is known.
    pub fn encode(&self, version: Version, out: &mut Vec<u8>) {
        assert_eq!(self.packet_id.is_some(), self.qos != Qos::AtMostOnce, "packet id iff QoS > 0");
        assert!(self.packet_id != Some(0), "packet identifier 0");
        assert!(!(self.dup && self.qos == Qos::AtMostOnce), "DUP on QoS 0");
        let no_props = Properties::default();
        let props = if version.is_v5() { &self.properties } else { &no_props };
        check_topic(&self.topic, props, version).expect("a valid topic name");
        let flags = u8::from(self.dup) << 3 | (self.qos as u8) << 1 | u8::from(self.retain);
        let at = begin(out, (PacketType::Publish as u8) << 4 | flags);
        put_string(out, &self.topic);
        if let Some(id) = self.packet_id {
            put_u16(out, id);
        }
        if version.is_v5() {
            self.properties.encode(PropertyContext::Publish, out);
        }
        finish(out, at, self.payload.len());
        out.extend_from_slice(&self.payload);
    }
}

fn check_topic(topic: &str, properties: &Properties, version: Version) -> Result<(), MqttError> {
    if topic.is_empty() && version.is_v5() {
        if properties.topic_alias.is_none() {
            return Err(MqttError::Protocol("empty topic name without a Topic Alias".into()));
        }
        return Ok(());
    }
    topic::validate_name(topic).map_err(|e| MqttError::TopicNameInvalid(e.0))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::properties::tests::full;
    use super::super::{decode_raw, round_trip, Packet};
    use super::*;

    pub(crate) fn sample(version: Version, qos: Qos) -> Publish {
        let properties =
            if version.is_v5() { full(PropertyContext::Publish) } else { Properties::default() };
        let qos0 = qos == Qos::AtMostOnce;
        Publish {
            dup: !qos0,
            qos,
            retain: true,
            topic: "a/b/ü".into(),
            packet_id: if qos0 { None } else { Some(0xBEEF) },
            properties,
            payload: vec![0, 1, 2, 0, 0xFF],
        }
    }

    #[test]
    fn round_trips_at_every_qos() {
        for v in [Version::V311, Version::V5] {
            for qos in [Qos::AtMostOnce, Qos::AtLeastOnce, Qos::ExactlyOnce] {
                round_trip(&Packet::Publish(sample(v, qos)), v);
                let mut p = sample(v, qos);
                p.payload.clear();
                p.retain = false;
                round_trip(&Packet::Publish(p), v);
            }
        }
        let big = Publish { payload: vec![7; 300_000], ..sample(Version::V311, Qos::AtLeastOnce) };
        round_trip(&Packet::Publish(big), Version::V311);
    }

    #[test]
    fn wire_layout() {
        let p = Publish {
            dup: false,
            qos: Qos::AtLeastOnce,
            retain: true,
            topic: "t".into(),
            packet_id: Some(10),
            properties: Properties::default(),
            payload: b"hi".to_vec(),
        };
        let mut out = Vec::new();
        p.encode(Version::V311, &mut out);
        assert_eq!(out, [0x33, 7, 0, 1, b't', 0, 10, b'h', b'i']);
        out.clear();
        p.encode(Version::V5, &mut out);
        assert_eq!(out, [0x33, 8, 0, 1, b't', 0, 10, 0, b'h', b'i']);
    }

    #[test]
    fn topic_alias_allows_an_empty_topic_in_5_0_only() {
        let mut p = sample(Version::V5, Qos::AtMostOnce);
        p.topic.clear();
        round_trip(&Packet::Publish(p.clone()), Version::V5);
        assert!(matches!(decode_raw(0x30, &[0, 0, 0], Version::V5), Err(MqttError::Protocol(_))));
        assert!(matches!(
            decode_raw(0x30, &[0, 0], Version::V311),
            Err(MqttError::TopicNameInvalid(_))
        ));
        assert_eq!(
            decode_raw(0x30, &[0, 0, 3, 0x23, 0, 0], Version::V5),
            Err(MqttError::TopicAliasInvalid)
        );
    }

    #[test]
    fn malformed() {
        let v3 = Version::V311;
        assert!(matches!(
            decode_raw(0x30, &[0, 3, b'a', b'/', b'+'], v3),
            Err(MqttError::TopicNameInvalid(_))
        ));
        assert!(matches!(decode_raw(0x30, &[0, 1, b'#'], v3), Err(MqttError::TopicNameInvalid(_))));
        assert!(matches!(
            decode_raw(0x30, &[0, 2, b'a', 0], v3),
            Err(MqttError::NulInString { .. })
        ));
        assert!(matches!(decode_raw(0x30, &[0, 1, 0xFF], v3), Err(MqttError::BadUtf8 { .. })));
        assert!(matches!(decode_raw(0x30, &[0, 5, b'a'], v3), Err(MqttError::Truncated { .. })));
        assert!(
            matches!(decode_raw(0x32, &[0, 1, b'a'], v3), Err(MqttError::Truncated { .. })),
            "no packet id"
        );
        assert!(matches!(decode_raw(0x32, &[0, 1, b'a', 0], v3), Err(MqttError::Truncated { .. })));
        assert_eq!(
            decode_raw(0x34, &[0, 1, b'a', 0, 0], v3),
            Err(MqttError::ZeroPacketId(PacketType::Publish))
        );
        assert_eq!(decode_raw(0x36, &[0, 1, b'a', 0, 1], v3), Err(MqttError::InvalidQos(3)));
        assert!(
            matches!(decode_raw(0x38, &[0, 1, b'a'], v3), Err(MqttError::BadFlags { .. })),
            "DUP at QoS 0"
        );
        let v5 = Version::V5;
        assert!(
            matches!(decode_raw(0x30, &[0, 1, b'a'], v5), Err(MqttError::Truncated { .. })),
            "no property length"
        );
        assert!(matches!(
            decode_raw(0x30, &[0, 1, b'a', 2, 0x23, 0], v5),
            Err(MqttError::Truncated { .. })
        ));
        assert_eq!(
            decode_raw(0x30, &[0, 1, b'a', 6, 0x23, 0, 1, 0x23, 0, 2], v5),
            Err(MqttError::DuplicateProperty(0x23))
        );
        assert!(matches!(
            decode_raw(0x30, &[0, 1, b'a', 2, 0x11, 0], v5),
            Err(MqttError::PropertyNotAllowed { id: 0x11, .. })
        ));
        // In 3.1.1 the bytes after the topic are all payload, even ones that look like properties.
        let p = decode_raw(0x30, &[0, 1, b'a', 2, 0x11, 0], v3).unwrap();
        assert!(
            matches!(p, Packet::Publish(Publish { ref payload, .. }) if payload == &[2, 0x11, 0])
        );
    }
}
