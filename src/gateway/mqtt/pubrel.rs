//! PUBREL (sender → receiver): the answer to PUBREC ("release").
//!
//! ```text
//! fixed header   0x62, remaining length
//! packet id      u16, non-zero                          3.1.1 §3.6.2, 5.0 §3.6.2
//! reason code    5.0 only; absent when remaining length is 2: 0x00 Success
//! properties     5.0 only; absent when remaining length < 4: none
//! ```
//! The layout is PUBACK's; the shared decode and encode are in `puback.rs`.
//! Its fixed-header flags are 0b0010, not 0 (3.1.1 MQTT-3.6.1-1, 5.0 §3.6.1).

use super::puback::{decode_response, encode_response};
use super::{MqttError, PacketType, Properties, PropertyContext, Reader, Version};

/// Reason codes 5.0 allows in PUBREL (5.0 §3.6.2.1).
pub const V5_CODES: [u8; 2] = [0x00, 0x92];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubRel {
    pub packet_id: u16,
    /// 5.0 reason code; 0 (Success) before 5.0.
    pub reason: u8,
    pub properties: Properties,
}

impl PubRel {
    pub(crate) fn decode(r: &mut Reader, version: Version) -> Result<PubRel, MqttError> {
        let (packet_id, reason, properties) =
            decode_response(r, version, PacketType::PubRel, &V5_CODES, PropertyContext::PubRel)?;
        Ok(PubRel { packet_id, reason, properties })
    }

    pub fn encode(&self, version: Version, out: &mut Vec<u8>) {
        let fields = (self.packet_id, self.reason, &self.properties);
        encode_response(
            out,
            version,
            PacketType::PubRel,
            &V5_CODES,
            PropertyContext::PubRel,
            fields,
        );
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::properties::tests::full;
    use super::super::{decode_raw, round_trip, Packet};
    use super::*;

    pub(crate) fn sample(version: Version) -> PubRel {
        match version {
            Version::V5 => PubRel {
                packet_id: 0xFFFF,
                reason: 0x92,
                properties: full(PropertyContext::PubRel),
            },
            _ => PubRel { packet_id: 0xFFFF, reason: 0, properties: Properties::default() },
        }
    }

    #[test]
    fn round_trips() {
        for v in [Version::V31, Version::V311, Version::V5] {
            round_trip(&Packet::PubRel(sample(v)), v);
        }
        for reason in V5_CODES {
            let p = PubRel { packet_id: 1, reason, properties: Properties::default() };
            round_trip(&Packet::PubRel(p), Version::V5);
        }
        let mut out = Vec::new();
        sample(Version::V311).encode(Version::V311, &mut out);
        assert_eq!(out, [0x62, 2, 0xFF, 0xFF]);
    }

    #[test]
    fn malformed() {
        let v3 = Version::V311;
        assert!(matches!(decode_raw(0x62, &[0], v3), Err(MqttError::Truncated { .. })));
        assert_eq!(decode_raw(0x62, &[0, 0], v3), Err(MqttError::ZeroPacketId(PacketType::PubRel)));
        assert!(matches!(decode_raw(0x62, &[0, 1, 0], v3), Err(MqttError::TrailingBytes { .. })));
        assert!(matches!(decode_raw(0x60, &[0, 1], v3), Err(MqttError::BadFlags { .. })));
        let v5 = Version::V5;
        assert!(matches!(
            decode_raw(0x62, &[0, 1, 0x10], v5),
            Err(MqttError::BadReasonCode { .. })
        ));
        assert!(matches!(
            decode_raw(0x62, &[0, 1, 0, 2, 0x0B, 1], v5),
            Err(MqttError::PropertyNotAllowed { id: 0x0B, .. })
        ));
        assert!(matches!(
            decode_raw(0x62, &[0, 1, 0, 8, 0x1F, 0, 1, b'a', 0x1F, 0, 1, b'b'], v5),
            Err(MqttError::DuplicateProperty(0x1F))
        ));
    }
}
