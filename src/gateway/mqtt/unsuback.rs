//! UNSUBACK (server → client): the answer to UNSUBSCRIBE.
//!
//! ```text
//! fixed header   0xB0, remaining length (2 before 5.0)   3.1.1 §3.11.1, 5.0 §3.11.1
//! packet id      u16, the UNSUBSCRIBE's                  §3.11.2
//! properties     5.0 only: Reason String, User Property
//! payload        5.0 only: one reason code per filter    5.0 §3.11.3
//! ```
//! 3.1.1 has no payload. 5.0 codes: [`V5_CODES`]; an empty list is a protocol error.

use super::{
    begin_fixed, finish, put_u16, MqttError, PacketType, Properties, PropertyContext, Reader,
    Version,
};

/// 5.0 reason codes (5.0 §3.11.3).
pub const V5_CODES: [u8; 7] = [0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    pub packet_id: u16,
    pub properties: Properties,
    /// 5.0: one per filter. Empty before 5.0.
    pub codes: Vec<u8>,
}

impl UnsubAck {
    pub(crate) fn decode(r: &mut Reader, version: Version) -> Result<UnsubAck, MqttError> {
        let packet_id = r.packet_id(PacketType::UnsubAck)?;
        if !version.is_v5() {
            return Ok(UnsubAck {
                packet_id,
                properties: Properties::default(),
                codes: Vec::new(),
            });
        }
        let properties = Properties::decode(r, PropertyContext::UnsubAck)?;
        let codes = r.rest();
        if codes.is_empty() {
            return Err(MqttError::Protocol("UNSUBACK without a reason code".into()));
        }
        if let Some(&code) = codes.iter().find(|c| !V5_CODES.contains(c)) {
            return Err(MqttError::BadReasonCode { packet: PacketType::UnsubAck, code });
        }
        Ok(UnsubAck { packet_id, properties, codes: codes.to_vec() })
    }

    pub fn encode(&self, version: Version, out: &mut Vec<u8>) {
        assert!(self.packet_id != 0, "packet identifier 0");
        let at = begin_fixed(out, PacketType::UnsubAck);
        put_u16(out, self.packet_id);
        if version.is_v5() {
            assert!(!self.codes.is_empty(), "UNSUBACK needs a code per filter");
            assert!(self.codes.iter().all(|c| V5_CODES.contains(c)), "codes {:02x?}", self.codes);
            self.properties.encode(PropertyContext::UnsubAck, out);
            out.extend_from_slice(&self.codes);
        }
        finish(out, at, 0);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::properties::tests::full;
    use super::super::{decode_raw, round_trip, Packet};
    use super::*;

    pub(crate) fn sample(version: Version) -> UnsubAck {
        match version {
            Version::V5 => UnsubAck {
                packet_id: 9,
                properties: full(PropertyContext::UnsubAck),
                codes: V5_CODES.to_vec(),
            },
            _ => UnsubAck { packet_id: 9, properties: Properties::default(), codes: Vec::new() },
        }
    }

    #[test]
    fn round_trips() {
        for v in [Version::V31, Version::V311, Version::V5] {
            round_trip(&Packet::UnsubAck(sample(v)), v);
        }
        let mut out = Vec::new();
        sample(Version::V5).encode(Version::V311, &mut out);
        assert_eq!(out, [0xB0, 2, 0, 9], "3.1.1: packet id only");
    }

    #[test]
    fn malformed() {
        let v3 = Version::V311;
        assert!(matches!(decode_raw(0xB0, &[0, 1, 0], v3), Err(MqttError::TrailingBytes { .. })));
        assert!(matches!(decode_raw(0xB0, &[0], v3), Err(MqttError::Truncated { .. })));
        assert!(matches!(decode_raw(0xB1, &[0, 1], v3), Err(MqttError::BadFlags { .. })));
        let v5 = Version::V5;
        assert!(matches!(decode_raw(0xB0, &[0, 1], v5), Err(MqttError::Truncated { .. })));
        assert!(matches!(decode_raw(0xB0, &[0, 1, 0], v5), Err(MqttError::Protocol(_))));
        assert!(matches!(
            decode_raw(0xB0, &[0, 1, 0, 0x01], v5),
            Err(MqttError::BadReasonCode { .. })
        ));
        assert_eq!(
            decode_raw(0xB0, &[0, 0, 0, 0], v5),
            Err(MqttError::ZeroPacketId(PacketType::UnsubAck))
        );
    }
}
