//! UNSUBSCRIBE (client → server): topic filters to remove.
//!
//! ```text
//! fixed header   0xA2, remaining length              3.1.1 §3.10.1, 5.0 §3.10.1
//! packet id      u16, non-zero                       §3.10.2
//! properties     5.0 only: User Property
//! payload        one or more topic filters (strings) §3.10.3
//! ```
//! An empty payload is a protocol error (MQTT-3.10.3-2). Filters are checked as in SUBSCRIBE,
//! `$share/` ones included in 5.0.

use super::subscribe::check_filter;
use super::{
    begin_fixed, finish, put_string, put_u16, MqttError, PacketType, Properties, PropertyContext,
    Reader, Version,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub packet_id: u16,
    pub properties: Properties,
    /// At least one, exactly as subscribed.
    pub filters: Vec<String>,
}

impl Unsubscribe {
    pub(crate) fn decode(r: &mut Reader, version: Version) -> Result<Unsubscribe, MqttError> {
        let packet_id = r.packet_id(PacketType::Unsubscribe)?;
        let properties = if version.is_v5() {
            Properties::decode(r, PropertyContext::Unsubscribe)?
        } else {
            Properties::default()
        };
        if r.is_empty() {
            return Err(MqttError::Protocol("UNSUBSCRIBE without a topic filter".into()));
        }
        let mut filters = Vec::new();
        while !r.is_empty() {
            let filter = r.string("topic filter")?;
            check_filter(&filter, version)?;
            filters.push(filter);
        }
        Ok(Unsubscribe { packet_id, properties, filters })
    }

    pub fn encode(&self, version: Version, out: &mut Vec<u8>) {
        assert!(self.packet_id != 0, "packet identifier 0");
        assert!(!self.filters.is_empty(), "UNSUBSCRIBE needs a topic filter");
        let at = begin_fixed(out, PacketType::Unsubscribe);
        put_u16(out, self.packet_id);
        if version.is_v5() {
            self.properties.encode(PropertyContext::Unsubscribe, out);
        }
        for f in &self.filters {
            check_filter(f, version).expect("a valid topic filter");
            put_string(out, f);
        }
        finish(out, at, 0);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::properties::tests::full;
    use super::super::{decode_raw, round_trip, Packet};
    use super::*;

    pub(crate) fn sample(version: Version) -> Unsubscribe {
        Unsubscribe {
            packet_id: 0x1234,
            properties: if version.is_v5() {
                full(PropertyContext::Unsubscribe)
            } else {
                Properties::default()
            },
            filters: vec!["a/+".into(), "#".into(), "$share/g/b".into()],
        }
    }

    #[test]
    fn round_trips() {
        for v in [Version::V31, Version::V311, Version::V5] {
            round_trip(&Packet::Unsubscribe(sample(v)), v);
        }
        let mut out = Vec::new();
        let u = Unsubscribe {
            packet_id: 1,
            properties: Properties::default(),
            filters: vec!["a".into()],
        };
        u.encode(Version::V311, &mut out);
        assert_eq!(out, [0xA2, 5, 0, 1, 0, 1, b'a']);
    }

    #[test]
    fn malformed() {
        for v in [Version::V311, Version::V5] {
            let props: &[u8] = if v.is_v5() { &[0] } else { &[] };
            let d = |tail: &[u8]| decode_raw(0xA2, &[&[0, 1], props, tail].concat(), v);
            assert!(matches!(d(&[]), Err(MqttError::Protocol(_))), "{v:?} no filters");
            assert!(matches!(d(&[0, 2, b'a', b'#']), Err(MqttError::TopicFilterInvalid(_))));
            assert!(matches!(d(&[0, 2, b'a']), Err(MqttError::Truncated { .. })));
            assert!(matches!(d(&[0, 1, 0xFF]), Err(MqttError::BadUtf8 { .. })));
            assert!(matches!(
                decode_raw(0xA0, &[0, 1, 0, 1, b'a'], v),
                Err(MqttError::BadFlags { .. })
            ));
        }
        assert_eq!(
            decode_raw(0xA2, &[0, 0, 0, 1, b'a'], Version::V311),
            Err(MqttError::ZeroPacketId(PacketType::Unsubscribe))
        );
        assert!(matches!(
            decode_raw(0xA2, &[0, 1, 2, 0x0B, 1, 0, 1, b'a'], Version::V5),
            Err(MqttError::PropertyNotAllowed { id: 0x0B, .. })
        ));
    }
}
