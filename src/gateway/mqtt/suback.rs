//! SUBACK (server → client): one return or reason code per filter of the SUBSCRIBE.
//!
//! ```text
//! fixed header   0x90, remaining length              3.1.1 §3.9.1, 5.0 §3.9.1
//! packet id      u16, the SUBSCRIBE's                §3.9.2
//! properties     5.0 only: Reason String, User Property
//! payload        one code per filter, in order       §3.9.3
//! ```
//! 3.1.1 codes: 0, 1, 2 (granted QoS) or 0x80 (failure); the rest are reserved
//! (MQTT-3.9.3-2). 5.0 codes: [`V5_CODES`]. An empty payload is refused as a protocol error:
//! SUBSCRIBE always has at least one filter.

use super::{
    begin_fixed, finish, put_u16, MqttError, PacketType, Properties, PropertyContext, Reader,
    Version,
};

/// 3.1.1 return codes (3.1.1 §3.9.3).
pub const V3_CODES: [u8; 4] = [0x00, 0x01, 0x02, 0x80];
/// 5.0 reason codes (5.0 §3.9.3).
pub const V5_CODES: [u8; 12] =
    [0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    pub packet_id: u16,
    pub properties: Properties,
    /// One per filter: the granted QoS (0-2) or a failure (0x80 and up).
    pub codes: Vec<u8>,
}

fn codes(version: Version) -> &'static [u8] {
    if version.is_v5() {
        &V5_CODES
    } else {
        &V3_CODES
    }
}

impl SubAck {
    pub(crate) fn decode(r: &mut Reader, version: Version) -> Result<SubAck, MqttError> {
        let packet_id = r.packet_id(PacketType::SubAck)?;
        let properties = if version.is_v5() {
            Properties::decode(r, PropertyContext::SubAck)?
        } else {
            Properties::default()
        };
        let list = r.rest();
        if list.is_empty() {
            return Err(MqttError::Protocol("SUBACK without a return code".into()));
        }
        if let Some(&code) = list.iter().find(|c| !codes(version).contains(c)) {
            return Err(MqttError::BadReasonCode { packet: PacketType::SubAck, code });
        }
        Ok(SubAck { packet_id, properties, codes: list.to_vec() })
    }

    pub fn encode(&self, version: Version, out: &mut Vec<u8>) {
        assert!(self.packet_id != 0, "packet identifier 0");
        assert!(!self.codes.is_empty(), "SUBACK needs a code per filter");
        assert!(
            self.codes.iter().all(|c| codes(version).contains(c)),
            "SUBACK codes {:02x?}",
            self.codes
        );
        let at = begin_fixed(out, PacketType::SubAck);
        put_u16(out, self.packet_id);
        if version.is_v5() {
            self.properties.encode(PropertyContext::SubAck, out);
        }
        out.extend_from_slice(&self.codes);
        finish(out, at, 0);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::properties::tests::full;
    use super::super::{decode_raw, round_trip, Packet};
    use super::*;

    pub(crate) fn sample(version: Version) -> SubAck {
        SubAck {
            packet_id: 3,
            properties: if version.is_v5() {
                full(PropertyContext::SubAck)
            } else {
                Properties::default()
            },
            codes: codes(version).to_vec(),
        }
    }

    #[test]
    fn round_trips() {
        for v in [Version::V31, Version::V311, Version::V5] {
            round_trip(&Packet::SubAck(sample(v)), v);
        }
        let mut out = Vec::new();
        SubAck { packet_id: 1, properties: Properties::default(), codes: vec![1, 0x80] }
            .encode(Version::V311, &mut out);
        assert_eq!(out, [0x90, 4, 0, 1, 1, 0x80]);
    }

    #[test]
    fn malformed() {
        let v3 = Version::V311;
        assert!(matches!(decode_raw(0x90, &[0, 1], v3), Err(MqttError::Protocol(_))));
        assert!(matches!(decode_raw(0x90, &[0, 1, 3], v3), Err(MqttError::BadReasonCode { .. })));
        assert!(matches!(
            decode_raw(0x90, &[0, 1, 0x8F], v3),
            Err(MqttError::BadReasonCode { .. })
        ));
        assert_eq!(
            decode_raw(0x90, &[0, 0, 0], v3),
            Err(MqttError::ZeroPacketId(PacketType::SubAck))
        );
        assert!(matches!(decode_raw(0x92, &[0, 1, 0], v3), Err(MqttError::BadFlags { .. })));
        let v5 = Version::V5;
        assert!(decode_raw(0x90, &[0, 1, 0, 0x8F], v5).is_ok());
        assert!(matches!(decode_raw(0x90, &[0, 1, 0], v5), Err(MqttError::Protocol(_))));
        assert!(matches!(
            decode_raw(0x90, &[0, 1, 0, 0x10], v5),
            Err(MqttError::BadReasonCode { .. })
        ));
        assert!(matches!(decode_raw(0x90, &[0, 1, 5, 0], v5), Err(MqttError::Truncated { .. })));
        assert!(matches!(
            decode_raw(0x90, &[0, 1, 2, 0x0B, 1, 0], v5),
            Err(MqttError::PropertyNotAllowed { id: 0x0B, .. })
        ));
    }
}
