//! CONNACK (server → client): the answer to CONNECT.
//!
//! ```text
//! fixed header   0x20, remaining length (2 before 5.0)
//! ack flags      bits 7-1 reserved = 0, bit 0 session present   3.1.1 §3.2.2.1, 5.0 §3.2.2.1
//! code           3.1.1 return code 0-5 (§3.2.2.3) / 5.0 reason code (§3.2.2.2)
//! properties     5.0 only (§3.2.2.3)
//! ```
//! Session present must be 0 with a failure code (3.1.1 MQTT-3.2.2-4, 5.0 MQTT-3.2.2-6).
//! MQTT 3.1 has no session-present flag: its whole first byte is reserved, so the codec writes
//! 0 and ignores it when reading.

use super::{
    begin_fixed, finish, reason, MqttError, PacketType, Properties, PropertyContext, Reader,
    Version,
};

/// Reason codes 5.0 allows in CONNACK (§3.2.2.2).
pub const V5_CODES: [u8; 22] = [
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97,
    0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
];
/// The highest 3.1.1 return code; 6-255 are reserved (§3.2.2.3).
pub const V3_CODE_MAX: u8 = reason::V3_NOT_AUTHORIZED;

const SESSION_PRESENT: u8 = 0x01;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    /// 3.x: a return code (`reason::V3_*`); 5.0: a reason code (`reason::*`). 0 accepts.
    pub code: u8,
    pub properties: Properties,
}

fn valid_code(code: u8, version: Version) -> bool {
    if version.is_v5() {
        V5_CODES.contains(&code)
    } else {
        code <= V3_CODE_MAX
    }
}

impl ConnAck {
    pub(crate) fn decode(r: &mut Reader, version: Version) -> Result<ConnAck, MqttError> {
        let flags = r.u8("connect acknowledge flags")?;
        let session_present = match version {
            Version::V31 => false,
            _ if flags & !SESSION_PRESENT != 0 => {
                return Err(MqttError::Malformed("CONNACK reserved flags are set".into()))
            }
            _ => flags & SESSION_PRESENT != 0,
        };
        let code = r.u8("connect reason code")?;
        if !valid_code(code, version) {
            return Err(MqttError::BadReasonCode { packet: PacketType::ConnAck, code });
        }
        if session_present && code != 0 {
            return Err(MqttError::Protocol(
                "CONNACK refuses but says a session is present".into(),
            ));
        }
        let properties = if version.is_v5() {
            Properties::decode(r, PropertyContext::ConnAck)?
        } else {
            Properties::default()
        };
        Ok(ConnAck { session_present, code, properties })
    }

    pub fn encode(&self, version: Version, out: &mut Vec<u8>) {
        assert!(valid_code(self.code, version), "CONNACK code {:#04x} in {version:?}", self.code);
        assert!(!self.session_present || self.code == 0, "session present on a refusal");
        let at = begin_fixed(out, PacketType::ConnAck);
        out.push(u8::from(self.session_present && version != Version::V31));
        out.push(self.code);
        if version.is_v5() {
            self.properties.encode(PropertyContext::ConnAck, out);
        }
        finish(out, at, 0);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::properties::tests::full;
    use super::super::{decode_raw, round_trip, Packet};
    use super::*;

    pub(crate) fn sample(version: Version) -> ConnAck {
        let properties =
            if version.is_v5() { full(PropertyContext::ConnAck) } else { Properties::default() };
        ConnAck { session_present: version != Version::V31, code: 0, properties }
    }

    #[test]
    fn round_trips() {
        for v in [Version::V31, Version::V311, Version::V5] {
            round_trip(&Packet::ConnAck(sample(v)), v);
        }
        for code in 0..=V3_CODE_MAX {
            let c = ConnAck { session_present: false, code, properties: Properties::default() };
            round_trip(&Packet::ConnAck(c), Version::V311);
        }
        for code in V5_CODES {
            let c = ConnAck { session_present: false, code, properties: Properties::default() };
            round_trip(&Packet::ConnAck(c), Version::V5);
        }
    }

    #[test]
    fn wire_layout() {
        let mut out = Vec::new();
        sample(Version::V311).encode(Version::V311, &mut out);
        assert_eq!(out, [0x20, 2, 1, 0]);
        out.clear();
        sample(Version::V31).encode(Version::V31, &mut out);
        assert_eq!(out, [0x20, 2, 0, 0]);
        out.clear();
        let c = ConnAck { session_present: false, code: 0x84, properties: Properties::default() };
        c.encode(Version::V5, &mut out);
        assert_eq!(out, [0x20, 3, 0, 0x84, 0]);
    }

    #[test]
    fn malformed() {
        let v3 = Version::V311;
        assert!(matches!(decode_raw(0x20, &[2, 0], v3), Err(MqttError::Malformed(_))));
        assert!(matches!(decode_raw(0x20, &[0, 6], v3), Err(MqttError::BadReasonCode { .. })));
        assert!(matches!(decode_raw(0x20, &[1, 5], v3), Err(MqttError::Protocol(_))));
        assert!(matches!(decode_raw(0x20, &[0], v3), Err(MqttError::Truncated { .. })));
        assert!(matches!(decode_raw(0x20, &[0, 0, 0], v3), Err(MqttError::TrailingBytes { .. })));
        assert!(matches!(decode_raw(0x21, &[0, 0], v3), Err(MqttError::BadFlags { .. })));
        assert_eq!(
            decode_raw(0x20, &[0xFE, 0], Version::V31),
            Ok(Packet::ConnAck(ConnAck {
                session_present: false,
                code: 0,
                properties: Properties::default()
            })),
            "3.1: the flags byte is ignored"
        );
        let v5 = Version::V5;
        assert!(matches!(decode_raw(0x20, &[0, 0], v5), Err(MqttError::Truncated { .. })));
        assert!(matches!(
            decode_raw(0x20, &[0, 0x04, 0], v5),
            Err(MqttError::BadReasonCode { .. })
        ));
        assert!(matches!(
            decode_raw(0x20, &[0, 0, 3, 0x21, 0, 0], v5),
            Err(MqttError::BadPropertyValue { id: 0x21, value: 0 })
        ));
        assert!(matches!(
            decode_raw(0x20, &[0, 0, 1, 0x24, 0], v5),
            Err(MqttError::Truncated { .. })
        ));
        assert!(matches!(
            decode_raw(0x20, &[0, 0, 4, 0x24, 0, 0x24, 1], v5),
            Err(MqttError::DuplicateProperty(0x24))
        ));
        assert!(matches!(
            decode_raw(0x20, &[0, 0, 2, 0x17, 1], v5),
            Err(MqttError::PropertyNotAllowed { id: 0x17, .. })
        ));
    }
}
