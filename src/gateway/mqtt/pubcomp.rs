//! PUBCOMP (receiver → sender): the answer to PUBREL, ending a QoS 2 exchange ("complete").
//!
//! ```text
//! fixed header   0x70, remaining length
//! packet id      u16, non-zero                          3.1.1 §3.7.2, 5.0 §3.7.2
//! reason code    5.0 only; absent when remaining length is 2: 0x00 Success
//! properties     5.0 only; absent when remaining length < 4: none
//! ```
//! The layout is PUBACK's; the shared decode and encode are in `puback.rs`.

use super::puback::{decode_response, encode_response};
use super::{MqttError, PacketType, Properties, PropertyContext, Reader, Version};

/// Reason codes 5.0 allows in PUBCOMP (5.0 §3.7.2.1).
pub const V5_CODES: [u8; 2] = [0x00, 0x92];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubComp {
    pub packet_id: u16,
    /// 5.0 reason code; 0 (Success) before 5.0.
    pub reason: u8,
    pub properties: Properties,
}

impl PubComp {
    pub(crate) fn decode(r: &mut Reader, version: Version) -> Result<PubComp, MqttError> {
        let (packet_id, reason, properties) =
            decode_response(r, version, PacketType::PubComp, &V5_CODES, PropertyContext::PubComp)?;
        Ok(PubComp { packet_id, reason, properties })
    }

    pub fn encode(&self, version: Version, out: &mut Vec<u8>) {
        let fields = (self.packet_id, self.reason, &self.properties);
        encode_response(
            out,
            version,
            PacketType::PubComp,
            &V5_CODES,
            PropertyContext::PubComp,
            fields,
        );
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::properties::tests::full;
    use super::super::{decode_raw, round_trip, Packet};
    use super::*;

    pub(crate) fn sample(version: Version) -> PubComp {
        match version {
            Version::V5 => PubComp {
                packet_id: 0xFFFF,
                reason: 0x92,
                properties: full(PropertyContext::PubComp),
            },
            _ => PubComp { packet_id: 0xFFFF, reason: 0, properties: Properties::default() },
        }
    }

    #[test]
    fn round_trips() {
        for v in [Version::V31, Version::V311, Version::V5] {
            round_trip(&Packet::PubComp(sample(v)), v);
        }
        for reason in V5_CODES {
            let p = PubComp { packet_id: 1, reason, properties: Properties::default() };
            round_trip(&Packet::PubComp(p), Version::V5);
        }
        let mut out = Vec::new();
        sample(Version::V311).encode(Version::V311, &mut out);
        assert_eq!(out, [0x70, 2, 0xFF, 0xFF]);
    }

    #[test]
    fn malformed() {
        let v3 = Version::V311;
        assert!(matches!(decode_raw(0x70, &[0], v3), Err(MqttError::Truncated { .. })));
        assert_eq!(
            decode_raw(0x70, &[0, 0], v3),
            Err(MqttError::ZeroPacketId(PacketType::PubComp))
        );
        assert!(matches!(decode_raw(0x70, &[0, 1, 0], v3), Err(MqttError::TrailingBytes { .. })));
        assert!(matches!(decode_raw(0x72, &[0, 1], v3), Err(MqttError::BadFlags { .. })));
        let v5 = Version::V5;
        assert!(matches!(
            decode_raw(0x70, &[0, 1, 0x10], v5),
            Err(MqttError::BadReasonCode { .. })
        ));
        assert!(matches!(
            decode_raw(0x70, &[0, 1, 0, 2, 0x0B, 1], v5),
            Err(MqttError::PropertyNotAllowed { id: 0x0B, .. })
        ));
        assert!(matches!(
            decode_raw(0x70, &[0, 1, 0, 8, 0x1F, 0, 1, b'a', 0x1F, 0, 1, b'b'], v5),
            Err(MqttError::DuplicateProperty(0x1F))
        ));
    }
}
