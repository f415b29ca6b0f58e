//! PINGREQ (client → server) and PINGRESP (server → client): keep-alive, with no body.
//!
//! ```text
//! PINGREQ    0xC0 0x00        3.1.1 §3.12, 5.0 §3.12
//! PINGRESP   0xD0 0x00        3.1.1 §3.13, 5.0 §3.13
//! ```
//! Any flag or body byte is malformed. The session, not the codec, answers a PINGREQ and
//! tracks keep-alive (1.5 times the CONNECT's keep alive, 3.1.1 §3.1.2.10).

use super::{begin_fixed, finish, PacketType};

/// Appends PINGREQ or PINGRESP.
pub fn encode(packet: PacketType, out: &mut Vec<u8>) {
    assert!(matches!(packet, PacketType::PingReq | PacketType::PingResp), "{packet:?}");
    let at = begin_fixed(out, packet);
    finish(out, at, 0);
}

#[cfg(test)]
mod tests {
    use super::super::{decode, decode_raw, round_trip, MqttError, Packet, Version, TEST_MAX};
    use super::*;

    #[test]
    fn round_trips_as_two_bytes() {
        for v in [Version::V31, Version::V311, Version::V5] {
            round_trip(&Packet::PingReq, v);
            round_trip(&Packet::PingResp, v);
        }
        let mut out = Vec::new();
        encode(PacketType::PingReq, &mut out);
        encode(PacketType::PingResp, &mut out);
        assert_eq!(out, [0xC0, 0, 0xD0, 0]);
        assert_eq!(decode(&out, Version::V311, TEST_MAX), Ok(Some((Packet::PingReq, 2))));
    }

    #[test]
    fn malformed() {
        for v in [Version::V311, Version::V5] {
            assert!(matches!(decode_raw(0xC0, &[0], v), Err(MqttError::TrailingBytes { .. })));
            assert!(matches!(decode_raw(0xD0, &[1, 2], v), Err(MqttError::TrailingBytes { .. })));
            assert!(matches!(decode_raw(0xC1, &[], v), Err(MqttError::BadFlags { .. })));
            assert!(matches!(decode_raw(0xD8, &[], v), Err(MqttError::BadFlags { .. })));
        }
        assert!(matches!(
            decode(&[0xC0, 0x80, 0x00], Version::V311, 9),
            Err(MqttError::BadVarInt(_))
        ));
    }
}
