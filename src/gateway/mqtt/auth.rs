//! AUTH (both directions, 5.0 only): a step of extended authentication (5.0 §3.15, §4.12).
//!
//! ```text
//! fixed header   0xF0, remaining length                       5.0 §3.15.1
//! reason code    0x00 Success, 0x18 Continue authentication, 0x19 Re-authenticate;
//!                absent (remaining length 0): 0x00             §3.15.2.1
//! properties     Authentication Method, Authentication Data, Reason String, User Property
//! ```
//! Before 5.0 packet type 15 is reserved, so the fixed header already refuses AUTH. A
//! remaining length of 1 (a code, no property length) is accepted as no properties, as
//! DISCONNECT allows. That the method matches the CONNECT's (§4.12) is the session's check.

use super::{
    begin_fixed, finish, MqttError, PacketType, Properties, PropertyContext, Reader, Version,
};

/// Reason codes AUTH allows (5.0 §3.15.2.1).
pub const V5_CODES: [u8; 3] = [0x00, 0x18, 0x19];

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Auth {
    pub reason: u8,
    pub properties: Properties,
}

impl Auth {
    pub(crate) fn decode(r: &mut Reader, version: Version) -> Result<Auth, MqttError> {
        assert!(version.is_v5(), "the fixed header refuses AUTH before 5.0");
        if r.is_empty() {
            return Ok(Auth::default());
        }
        let reason = r.u8("reason code")?;
        if !V5_CODES.contains(&reason) {
            return Err(MqttError::BadReasonCode { packet: PacketType::Auth, code: reason });
        }
        let properties = if r.is_empty() {
            Properties::default()
        } else {
            Properties::decode(r, PropertyContext::Auth)?
        };
        Ok(Auth { reason, properties })
    }

    pub fn encode(&self, version: Version, out: &mut Vec<u8>) {
        assert!(version.is_v5(), "AUTH exists only in MQTT 5");
        assert!(V5_CODES.contains(&self.reason), "AUTH reason {:#04x}", self.reason);
        let at = begin_fixed(out, PacketType::Auth);
        if self.reason != 0 || !self.properties.is_empty() {
            out.push(self.reason);
            if !self.properties.is_empty() {
                self.properties.encode(PropertyContext::Auth, out);
            }
        }
        finish(out, at, 0);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::properties::tests::full;
    use super::super::{decode_raw, round_trip, Packet};
    use super::*;

    pub(crate) fn sample() -> Auth {
        Auth { reason: 0x18, properties: full(PropertyContext::Auth) }
    }

    #[test]
    fn round_trips() {
        round_trip(&Packet::Auth(sample()), Version::V5);
        for reason in V5_CODES {
            round_trip(
                &Packet::Auth(Auth { reason, properties: Properties::default() }),
                Version::V5,
            );
        }
        let mut out = Vec::new();
        Auth::default().encode(Version::V5, &mut out);
        assert_eq!(out, [0xF0, 0]);
    }

    #[test]
    fn malformed() {
        let v5 = Version::V5;
        assert_eq!(decode_raw(0xF0, &[], Version::V311), Err(MqttError::ReservedPacketType(15)));
        assert!(matches!(decode_raw(0xF1, &[], v5), Err(MqttError::BadFlags { .. })));
        assert!(matches!(decode_raw(0xF0, &[0x80], v5), Err(MqttError::BadReasonCode { .. })));
        assert!(
            matches!(decode_raw(0xF0, &[0x18, 3, 0x16, 0, 0], v5), Err(MqttError::Protocol(_))),
            "data without a method"
        );
        assert!(matches!(
            decode_raw(0xF0, &[0x18, 2, 0x11, 0], v5),
            Err(MqttError::PropertyNotAllowed { id: 0x11, .. })
        ));
        assert!(matches!(decode_raw(0xF0, &[0x18, 9], v5), Err(MqttError::Truncated { .. })));
    }
}
