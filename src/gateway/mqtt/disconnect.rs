//! DISCONNECT (client → server; 5.0 also server → client): the end of a connection.
//!
//! ```text
//! fixed header   0xE0, remaining length                3.1.1 §3.14, 5.0 §3.14
//! reason code    5.0 only; absent (remaining length 0): 0x00 Normal disconnection
//! properties     5.0 only; absent when remaining length < 2: none   5.0 §3.14.2.2
//!                Session Expiry Interval, Reason String, Server Reference, User Property
//! ```
//! 3.1.1 DISCONNECT has no body. Encoding in 5.0 writes the shortest form. Whether a client
//! may raise its Session Expiry Interval from 0 here (it may not, §3.14.2.2.2) is the
//! session's check: it needs the CONNECT.

use super::{
    begin_fixed, finish, MqttError, PacketType, Properties, PropertyContext, Reader, Version,
};

/// Reason codes 5.0 allows in DISCONNECT (5.0 §3.14.2.1).
pub const V5_CODES: [u8; 29] = [
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95,
    0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
];

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Disconnect {
    /// 5.0 reason code; 0 (Normal disconnection) before 5.0.
    pub reason: u8,
    pub properties: Properties,
}

impl Disconnect {
    pub(crate) fn decode(r: &mut Reader, version: Version) -> Result<Disconnect, MqttError> {
        if !version.is_v5() || r.is_empty() {
            return Ok(Disconnect::default());
        }
        let reason = r.u8("reason code")?;
        if !V5_CODES.contains(&reason) {
            return Err(MqttError::BadReasonCode { packet: PacketType::Disconnect, code: reason });
        }
        let properties = if r.is_empty() {
            Properties::default()
        } else {
            Properties::decode(r, PropertyContext::Disconnect)?
        };
        Ok(Disconnect { reason, properties })
    }

    pub fn encode(&self, version: Version, out: &mut Vec<u8>) {
        assert!(V5_CODES.contains(&self.reason), "DISCONNECT reason {:#04x}", self.reason);
        let at = begin_fixed(out, PacketType::Disconnect);
        if version.is_v5() && (self.reason != 0 || !self.properties.is_empty()) {
            out.push(self.reason);
            if !self.properties.is_empty() {
                self.properties.encode(PropertyContext::Disconnect, out);
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

    pub(crate) fn sample(version: Version) -> Disconnect {
        match version {
            Version::V5 => {
                Disconnect { reason: 0x04, properties: full(PropertyContext::Disconnect) }
            }
            _ => Disconnect::default(),
        }
    }

    #[test]
    fn round_trips_and_short_forms() {
        for v in [Version::V31, Version::V311, Version::V5] {
            round_trip(&Packet::Disconnect(sample(v)), v);
        }
        for reason in V5_CODES {
            let d = Disconnect { reason, properties: Properties::default() };
            round_trip(&Packet::Disconnect(d.clone()), Version::V5);
            let mut out = Vec::new();
            d.encode(Version::V5, &mut out);
            assert_eq!(out.len(), if reason == 0 { 2 } else { 3 });
        }
        let mut out = Vec::new();
        sample(Version::V5).encode(Version::V311, &mut out);
        assert_eq!(out, [0xE0, 0]);
        let expiry = Properties { session_expiry_interval: Some(30), ..Properties::default() };
        round_trip(&Packet::Disconnect(Disconnect { reason: 0, properties: expiry }), Version::V5);
    }

    #[test]
    fn malformed() {
        assert!(matches!(
            decode_raw(0xE0, &[0], Version::V311),
            Err(MqttError::TrailingBytes { .. })
        ));
        assert!(matches!(decode_raw(0xE2, &[], Version::V311), Err(MqttError::BadFlags { .. })));
        let v5 = Version::V5;
        assert_eq!(
            decode_raw(0xE0, &[0x95, 0], v5),
            Ok(Packet::Disconnect(Disconnect { reason: 0x95, properties: Properties::default() }))
        );
        assert!(matches!(decode_raw(0xE0, &[0x01], v5), Err(MqttError::BadReasonCode { .. })));
        assert!(matches!(
            decode_raw(0xE0, &[0, 4, 0x11, 0, 0], v5),
            Err(MqttError::Truncated { .. })
        ));
        assert!(matches!(
            decode_raw(0xE0, &[0, 2, 0x21, 0], v5),
            Err(MqttError::PropertyNotAllowed { id: 0x21, .. })
        ));
        assert_eq!(
            decode_raw(0xE0, &[0, 10, 0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2], v5),
            Err(MqttError::DuplicateProperty(0x11))
        );
    }
}
