//! CONNECT (client → server, first packet of a connection): protocol, session and will.
//!
//! ```text
//! fixed header   0x10, remaining length
//! protocol name  string "MQTT" ("MQIsdp" for 3.1)          3.1.1 §3.1.2.1, 5.0 §3.1.2.1
//! level          byte 4 (3.1.1), 5 (5.0), 3 (3.1)          §3.1.2.2
//! connect flags  bit 7 user name, 6 password, 5 will retain, 4-3 will QoS, 2 will flag,
//!                1 clean session (3.1.1) / clean start (5.0), 0 reserved = 0   §3.1.2.3
//! keep alive     u16 seconds                                §3.1.2.10
//! properties     5.0 only                                   5.0 §3.1.2.11
//! payload        client id (string), [will properties (5.0), will topic (string),
//!                will payload (binary)], [user name (string)], [password (binary)]
//! ```
//! Rules checked here: an unknown name/level is Unsupported Protocol Version (§3.1.2.2); the
//! reserved flag set and a will QoS of 3 are malformed (MQTT-3.1.2-3, 5.0 §3.1.2.5); a will
//! QoS or retain without the will flag is a protocol error (3.1.1 MQTT-3.1.2-13/-15,
//! 5.0 MQTT-3.1.2-11/-13); before 5.0 a password needs a user name (3.1.1 MQTT-3.1.2-22); the will
//! topic is a topic name. Client ids: 3.1.1 refuses an empty one unless clean session is set
//! (MQTT-3.1.3-8, return code 2); 3.1 wants 1-23 bytes; 5.0 takes any (the server assigns
//! one for an empty id). Whether a 3.1.1 server accepts ids over 23 bytes is its choice.

use super::{
    begin_fixed, finish, put_binary, put_string, put_u16, topic, MqttError, PacketType, Properties,
    PropertyContext, Qos, Reader, Version,
};

/// Longest MQTT 3.1 client id (3.1 §3.1, "Client Identifier").
pub const V31_CLIENT_ID_LEN_MAX: usize = 23;

const USER_NAME: u8 = 0x80;
const PASSWORD: u8 = 0x40;
const WILL_RETAIN: u8 = 0x20;
const WILL_QOS_SHIFT: u8 = 3;
const WILL: u8 = 0x04;
const CLEAN_START: u8 = 0x02;
const RESERVED: u8 = 0x01;

/// The message the server publishes if the connection ends without a DISCONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: Qos,
    pub retain: bool,
    /// 5.0 will properties (will delay, message expiry, content type, …).
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// Chosen by the protocol name and level; every later packet uses it.
    pub version: Version,
    /// Clean Session (3.1.1) or Clean Start (5.0).
    pub clean_start: bool,
    pub keep_alive_s: u16,
    pub client_id: String,
    pub will: Option<Will>,
    pub username: Option<String>,
    pub password: Option<Vec<u8>>,
    pub properties: Properties,
}

impl Connect {
    pub(crate) fn decode(r: &mut Reader) -> Result<Connect, MqttError> {
        let name = r.string("protocol name")?;
        let level = r.u8("protocol level")?;
        let version = Version::from_connect(&name, level)
            .ok_or(MqttError::UnsupportedProtocolVersion { name, level })?;
        let flags = r.u8("connect flags")?;
        check_flags(flags, version)?;
        let keep_alive_s = r.u16("keep alive")?;
        let properties = if version.is_v5() {
            Properties::decode(r, PropertyContext::Connect)?
        } else {
            Properties::default()
        };
        let clean_start = flags & CLEAN_START != 0;
        let client_id = r.string("client identifier")?;
        check_client_id(&client_id, clean_start, version)?;
        let will = if flags & WILL != 0 { Some(decode_will(r, flags, version)?) } else { None };
        let username = if flags & USER_NAME != 0 { Some(r.string("user name")?) } else { None };
        let password = if flags & PASSWORD != 0 { Some(r.binary("password")?) } else { None };
        Ok(Connect {
            version,
            clean_start,
            keep_alive_s,
            client_id,
            will,
            username,
            password,
            properties,
        })
    }

    /// Appends the packet in `self.version`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let v = self.version;
        check_client_id(&self.client_id, self.clean_start, v).expect("a valid client id");
        assert!(
            v.is_v5() || self.password.is_none() || self.username.is_some(),
            "a password without a user name needs MQTT 5"
        );
        let at = begin_fixed(out, PacketType::Connect);
        put_string(out, v.protocol_name());
        out.push(v.level());
        out.push(self.flags());
        put_u16(out, self.keep_alive_s);
        if v.is_v5() {
            self.properties.encode(PropertyContext::Connect, out);
        }
        put_string(out, &self.client_id);
        if let Some(w) = &self.will {
            if v.is_v5() {
                w.properties.encode(PropertyContext::Will, out);
            }
            topic::validate_name(&w.topic).expect("a valid will topic");
            put_string(out, &w.topic);
            put_binary(out, &w.payload);
        }
        if let Some(u) = &self.username {
            put_string(out, u);
        }
        if let Some(p) = &self.password {
            put_binary(out, p);
        }
        finish(out, at, 0);
    }

    fn flags(&self) -> u8 {
        let mut f = 0;
        if self.username.is_some() {
            f |= USER_NAME;
        }
        if self.password.is_some() {
            f |= PASSWORD;
        }
        if let Some(w) = &self.will {
            f |= WILL | (w.qos as u8) << WILL_QOS_SHIFT;
            if w.retain {
                f |= WILL_RETAIN;
            }
        }
        if self.clean_start {
            f |= CLEAN_START;
        }
        f
    }
}

/// The connect flags byte on its own (3.1.1 §3.1.2.3-§3.1.2.9, 5.0 §3.1.2.3-§3.1.2.9).
fn check_flags(flags: u8, version: Version) -> Result<(), MqttError> {
    if flags & RESERVED != 0 {
        return Err(MqttError::Malformed("CONNECT reserved flag is set".into()));
    }
    let will_qos = Qos::from_bits((flags >> WILL_QOS_SHIFT) & 0b11)?;
    if flags & WILL == 0 && (will_qos != Qos::AtMostOnce || flags & WILL_RETAIN != 0) {
        return Err(MqttError::Protocol("will QoS or retain set without the will flag".into()));
    }
    if !version.is_v5() && flags & PASSWORD != 0 && flags & USER_NAME == 0 {
        return Err(MqttError::Protocol("password flag without the user name flag".into()));
    }
    Ok(())
}

fn check_client_id(id: &str, clean_start: bool, version: Version) -> Result<(), MqttError> {
    match version {
        Version::V31 if id.is_empty() || id.len() > V31_CLIENT_ID_LEN_MAX => Err(
            MqttError::ClientIdNotValid(format!("MQTT 3.1 client ids are 1-23 bytes, got {id:?}")),
        ),
        Version::V311 if id.is_empty() && !clean_start => {
            Err(MqttError::ClientIdNotValid("an empty client id needs clean session set".into()))
        }
        _ => Ok(()),
    }
}

fn decode_will(r: &mut Reader, flags: u8, version: Version) -> Result<Will, MqttError> {
    let properties = if version.is_v5() {
        Properties::decode(r, PropertyContext::Will)?
    } else {
        Properties::default()
    };
    let topic = r.string("will topic")?;
    topic::validate_name(&topic).map_err(|e| MqttError::TopicNameInvalid(e.0))?;
    let payload = r.binary("will payload")?;
    Ok(Will {
        topic,
        payload,
        qos: Qos::from_bits((flags >> WILL_QOS_SHIFT) & 0b11)?,
        retain: flags & WILL_RETAIN != 0,
        properties,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::properties::tests::full as full_props;
    use super::super::{decode, decode_raw, encode, round_trip, Packet, TEST_MAX};
    use super::*;

    /// The smallest valid CONNECT of `version`.
    pub(crate) fn minimal(version: Version) -> Connect {
        Connect {
            version,
            clean_start: true,
            keep_alive_s: 60,
            client_id: "c1".into(),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        }
    }

    /// Every optional part present.
    pub(crate) fn full(version: Version) -> Connect {
        let v5 = version.is_v5();
        let props = |ctx| if v5 { full_props(ctx) } else { Properties::default() };
        Connect {
            version,
            clean_start: false,
            keep_alive_s: 0xFFFF,
            client_id: "client-ü".into(),
            will: Some(Will {
                topic: "last/will".into(),
                payload: vec![0, 1, 2, 0xFF],
                qos: Qos::ExactlyOnce,
                retain: true,
                properties: props(PropertyContext::Will),
            }),
            username: Some("user".into()),
            password: Some(vec![0, b'p', 0xFF]),
            properties: props(PropertyContext::Connect),
        }
    }

    fn bytes(c: &Connect) -> Vec<u8> {
        let mut out = Vec::new();
        c.encode(&mut out);
        out
    }

    #[test]
    fn round_trips_in_every_version() {
        for v in [Version::V31, Version::V311, Version::V5] {
            round_trip(&Packet::Connect(Box::new(minimal(v))), v);
            round_trip(&Packet::Connect(Box::new(full(v))), v);
            let mut c = full(v);
            c.will.as_mut().unwrap().qos = Qos::AtMostOnce;
            c.will.as_mut().unwrap().retain = false;
            c.password = None;
            round_trip(&Packet::Connect(Box::new(c)), v);
        }
        let mut c = minimal(Version::V5);
        c.username = None;
        c.password = Some(b"token".to_vec());
        c.client_id = String::new();
        c.clean_start = false;
        round_trip(&Packet::Connect(Box::new(c)), Version::V5);
    }

    #[test]
    fn wire_layout_of_a_3_1_1_connect() {
        let got = bytes(&minimal(Version::V311));
        let want = [0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 2, b'c', b'1'];
        assert_eq!(got, want);
        let got = bytes(&minimal(Version::V5));
        assert_eq!(&got[2..10], &[0, 4, b'M', b'Q', b'T', b'T', 5, 0x02]);
        assert_eq!(got[12], 0, "empty property length");
        let got = bytes(&minimal(Version::V31));
        assert_eq!(&got[2..11], &[0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3]);
    }

    /// A 3.1.1 CONNECT body with the given flags and payload after the client id.
    fn v311(flags: u8, client_id: &[u8], tail: &[u8]) -> Vec<u8> {
        let mut b = vec![0, 4, b'M', b'Q', b'T', b'T', 4, flags, 0, 10];
        b.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
        b.extend_from_slice(client_id);
        b.extend_from_slice(tail);
        b
    }

    #[test]
    fn protocol_name_and_level() {
        let mut b = v311(0x02, b"c", &[]);
        b[6] = 6;
        let err = decode_raw(0x10, &b, Version::V311).unwrap_err();
        assert_eq!(err, MqttError::UnsupportedProtocolVersion { name: "MQTT".into(), level: 6 });
        assert_eq!(err.connack_code(Version::V311), Some(1));
        b[6] = 3;
        assert!(
            matches!(
                decode_raw(0x10, &b, Version::V311),
                Err(MqttError::UnsupportedProtocolVersion { .. })
            ),
            "level 3 needs the name MQIsdp"
        );
        let mut b = v311(0x02, b"c", &[]);
        b[2] = b'X';
        assert!(matches!(
            decode_raw(0x10, &b, Version::V311),
            Err(MqttError::UnsupportedProtocolVersion { .. })
        ));
    }

    #[test]
    fn connect_flags_are_checked() {
        let d = |flags, tail: &[u8]| decode_raw(0x10, &v311(flags, b"c", tail), Version::V311);
        assert!(matches!(d(0x03, &[]), Err(MqttError::Malformed(_))), "reserved bit");
        assert!(matches!(d(0x0A, &[]), Err(MqttError::Protocol(_))), "will QoS without will");
        assert!(matches!(d(0x22, &[]), Err(MqttError::Protocol(_))), "will retain without will");
        assert_eq!(d(0x1E, &[0, 1, b't', 0, 0]), Err(MqttError::InvalidQos(3)));
        assert!(
            matches!(d(0x42, &[0, 1, b'p']), Err(MqttError::Protocol(_))),
            "3.1.1 password alone"
        );
        assert!(matches!(d(0xC2, &[0, 1, b'u', 0, 1, b'p']), Ok(Packet::Connect(_))));
        assert!(matches!(d(0x82, &[]), Err(MqttError::Truncated { field: "user name", .. })));
        assert!(
            matches!(d(0x06, &[0, 1, b't']), Err(MqttError::Truncated { .. })),
            "no will payload"
        );
        assert!(matches!(d(0x02, &[0]), Err(MqttError::TrailingBytes { .. })));
        assert!(matches!(
            d(0x06, &[0, 3, b'a', b'/', b'#', 0, 0]),
            Err(MqttError::TopicNameInvalid(_))
        ));
        assert!(matches!(d(0x06, &[0, 2, b'a', 0, 0, 0]), Err(MqttError::NulInString { .. })));
    }

    #[test]
    fn client_id_rules_per_version() {
        let err = decode_raw(0x10, &v311(0x00, b"", &[]), Version::V311).unwrap_err();
        assert!(matches!(err, MqttError::ClientIdNotValid(_)));
        assert_eq!(err.connack_code(Version::V311), Some(2));
        assert!(decode_raw(0x10, &v311(0x02, b"", &[]), Version::V311).is_ok());
        assert!(decode_raw(0x10, &v311(0x02, &[b'x'; 200], &[]), Version::V311).is_ok());
        let v31 = |id: &[u8]| {
            let mut b = vec![0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 0x02, 0, 10];
            b.extend_from_slice(&(id.len() as u16).to_be_bytes());
            b.extend_from_slice(id);
            decode_raw(0x10, &b, Version::V31)
        };
        assert!(v31(&[b'x'; 23]).is_ok());
        assert!(matches!(v31(&[b'x'; 24]), Err(MqttError::ClientIdNotValid(_))));
        assert!(matches!(v31(b""), Err(MqttError::ClientIdNotValid(_))));
        assert!(matches!(
            decode_raw(0x10, &v311(0x02, b"\xC3", &[]), Version::V311),
            Err(MqttError::BadUtf8 { field: "client identifier" })
        ));
    }

    #[test]
    fn v5_properties_are_checked_in_connect_and_will() {
        let mut c = minimal(Version::V5);
        c.properties.receive_maximum = Some(10);
        let mut b = bytes(&c);
        let at = b.iter().position(|&x| x == 0x21).unwrap();
        b[at] = 0x23; // Topic Alias: not allowed in CONNECT
        assert!(matches!(
            decode(&b, Version::V5, TEST_MAX),
            Err(MqttError::PropertyNotAllowed { id: 0x23, context: PropertyContext::Connect })
        ));
        b[at] = 0x18; // Will Delay Interval: will properties only (and the wrong width here)
        assert!(matches!(
            decode(&b, Version::V5, TEST_MAX),
            Err(MqttError::PropertyNotAllowed { .. })
        ));
    }

    #[test]
    #[should_panic(expected = "not allowed in Will")]
    fn encoding_a_connect_property_as_a_will_property_is_a_bug() {
        let mut c = full(Version::V5);
        c.will.as_mut().unwrap().properties =
            Properties { session_expiry_interval: Some(1), ..Properties::default() };
        bytes(&c);
    }

    #[test]
    fn version_is_read_from_the_packet_not_the_connection() {
        let c = full(Version::V5);
        let mut out = Vec::new();
        encode(&Packet::Connect(Box::new(c.clone())), Version::V311, &mut out);
        assert_eq!(
            decode(&out, Version::V311, TEST_MAX).unwrap().unwrap().0,
            Packet::Connect(Box::new(c))
        );
    }
}
