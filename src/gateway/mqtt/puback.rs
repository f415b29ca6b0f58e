//! PUBACK (both directions): the answer to a QoS 1 PUBLISH. Also the layout PUBREC, PUBREL
//! and PUBCOMP share, so the shared decode and encode live here.
//!
//! ```text
//! fixed header   0x40 (PUBREC 0x50, PUBREL 0x62, PUBCOMP 0x70), remaining length
//! packet id      u16, non-zero                          3.1.1 §3.4.2, 5.0 §3.4.2
//! reason code    5.0 only; absent when remaining length is 2: 0x00 Success
//! properties     5.0 only; absent when remaining length < 4: none     5.0 §3.4.2.2.1
//! ```
//! Before 5.0 the remaining length is exactly 2. Encoding in 5.0 writes the shortest form: 2
//! bytes for Success without properties, 3 for another code without properties.

use super::{
    begin_fixed, finish, put_u16, MqttError, PacketType, Properties, PropertyContext, Reader,
    Version,
};

/// Reason codes 5.0 allows in PUBACK (§3.4.2.1) and PUBREC (§3.5.2.1).
pub const V5_CODES: [u8; 9] = [0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubAck {
    pub packet_id: u16,
    /// 5.0 reason code; 0 (Success) before 5.0.
    pub reason: u8,
    pub properties: Properties,
}

impl PubAck {
    pub(crate) fn decode(r: &mut Reader, version: Version) -> Result<PubAck, MqttError> {
        let (packet_id, reason, properties) =
            decode_response(r, version, PacketType::PubAck, &V5_CODES, PropertyContext::PubAck)?;
        Ok(PubAck { packet_id, reason, properties })
    }

    pub fn encode(&self, version: Version, out: &mut Vec<u8>) {
        let fields = (self.packet_id, self.reason, &self.properties);
        encode_response(
            out,
            version,
            PacketType::PubAck,
            &V5_CODES,
            PropertyContext::PubAck,
            fields,
        );
    }
}

/// Reads packet id, reason code and properties of PUBACK, PUBREC, PUBREL or PUBCOMP.
pub(crate) fn decode_response(
    r: &mut Reader,
    version: Version,
    packet: PacketType,
    codes: &[u8],
    context: PropertyContext,
) -> Result<(u16, u8, Properties), MqttError> {
    let packet_id = r.packet_id(packet)?;
    if !version.is_v5() || r.is_empty() {
        return Ok((packet_id, 0, Properties::default()));
    }
    let code = r.u8("reason code")?;
    if !codes.contains(&code) {
        return Err(MqttError::BadReasonCode { packet, code });
    }
    let properties =
        if r.is_empty() { Properties::default() } else { Properties::decode(r, context)? };
    Ok((packet_id, code, properties))
}

/// Writes PUBACK, PUBREC, PUBREL or PUBCOMP in its shortest form.
pub(crate) fn encode_response(
    out: &mut Vec<u8>,
    version: Version,
    packet: PacketType,
    codes: &[u8],
    context: PropertyContext,
    (packet_id, code, properties): (u16, u8, &Properties),
) {
    assert!(packet_id != 0, "packet identifier 0");
    assert!(codes.contains(&code), "{} reason code {code:#04x}", packet.name());
    let at = begin_fixed(out, packet);
    put_u16(out, packet_id);
    if version.is_v5() && (code != 0 || !properties.is_empty()) {
        out.push(code);
        if !properties.is_empty() {
            properties.encode(context, out);
        }
    }
    finish(out, at, 0);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::properties::tests::full;
    use super::super::{decode_raw, round_trip, Packet};
    use super::*;

    pub(crate) fn sample(version: Version) -> PubAck {
        match version {
            Version::V5 => {
                PubAck { packet_id: 7, reason: 0x10, properties: full(PropertyContext::PubAck) }
            }
            _ => PubAck { packet_id: 7, reason: 0, properties: Properties::default() },
        }
    }

    #[test]
    fn round_trips_and_short_forms() {
        for v in [Version::V311, Version::V5] {
            round_trip(&Packet::PubAck(sample(v)), v);
        }
        for reason in V5_CODES {
            let p = PubAck { packet_id: 1, reason, properties: Properties::default() };
            round_trip(&Packet::PubAck(p.clone()), Version::V5);
            let mut out = Vec::new();
            p.encode(Version::V5, &mut out);
            assert_eq!(out.len(), if reason == 0 { 4 } else { 5 }, "shortest form");
        }
        let mut out = Vec::new();
        sample(Version::V5).encode(Version::V311, &mut out);
        assert_eq!(out, [0x40, 2, 0, 7], "3.1.1 drops reason and properties");
    }

    #[test]
    fn malformed() {
        let v3 = Version::V311;
        assert!(matches!(decode_raw(0x40, &[0], v3), Err(MqttError::Truncated { .. })));
        assert_eq!(decode_raw(0x40, &[0, 0], v3), Err(MqttError::ZeroPacketId(PacketType::PubAck)));
        assert!(matches!(decode_raw(0x40, &[0, 1, 0], v3), Err(MqttError::TrailingBytes { .. })));
        assert!(matches!(decode_raw(0x42, &[0, 1], v3), Err(MqttError::BadFlags { .. })));
        let v5 = Version::V5;
        assert_eq!(
            decode_raw(0x40, &[0, 1, 0x10], v5),
            Ok(Packet::PubAck(PubAck {
                packet_id: 1,
                reason: 0x10,
                properties: Properties::default()
            }))
        );
        assert!(matches!(
            decode_raw(0x40, &[0, 1, 0x92], v5),
            Err(MqttError::BadReasonCode { .. })
        ));
        assert!(matches!(
            decode_raw(0x40, &[0, 1, 0, 3, 0x1F, 0], v5),
            Err(MqttError::Truncated { .. })
        ));
        assert!(matches!(
            decode_raw(0x40, &[0, 1, 0, 2, 0x23, 0], v5),
            Err(MqttError::PropertyNotAllowed { id: 0x23, .. })
        ));
        assert!(matches!(
            decode_raw(0x40, &[0, 1, 0, 0, 9], v5),
            Err(MqttError::TrailingBytes { .. })
        ));
    }
}
