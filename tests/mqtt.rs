//! The MQTT gateway against the real server, over raw sockets with the crate's own codec: the
//! cases that need exact packets or server internals (malformed packets, acknowledgement order,
//! DUP on redelivery, receive maximum, kill -9, interop with native and STOMP clients). The
//! third-party suite (`interop/mqtt`, paho-mqtt, mosquitto_pub/sub, rumqttc) covers the rest
//! beside Mosquitto.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use rdmq::gateway::mqtt::subscribe::{Subscription, SubscriptionOptions};
use rdmq::gateway::mqtt::{
    decode, encode, reason, Connect, Disconnect, Packet, Properties, PubAck, PubComp, PubRec,
    PubRel, Publish, Qos, Subscribe, Unsubscribe, Version, Will,
};

struct Mqtt {
    s: TcpStream,
    buf: Vec<u8>,
    v: Version,
}

enum Next {
    Packet(Box<Packet>),
    Timeout,
    Closed,
}

fn connect_packet(v: Version, id: &str, clean: bool) -> Connect {
    Connect {
        version: v,
        clean_start: clean,
        keep_alive_s: 60,
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }
}

impl Mqtt {
    fn raw(server: &Server, v: Version) -> Mqtt {
        let s = TcpStream::connect(server.mqtt).expect("connect to MQTT port");
        s.set_nodelay(true).unwrap();
        Mqtt { s, buf: Vec::new(), v }
    }

    /// Connected; returns the CONNACK's session-present flag and properties.
    fn open_with(server: &Server, c: Connect) -> (Mqtt, bool, Properties) {
        let mut m = Mqtt::raw(server, c.version);
        m.send(&Packet::Connect(Box::new(c)));
        match m.expect() {
            Packet::ConnAck(a) => {
                assert_eq!(a.code, 0, "CONNACK refused: {a:?}");
                (m, a.session_present, a.properties)
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    fn open(server: &Server, v: Version, id: &str) -> Mqtt {
        Mqtt::open_with(server, connect_packet(v, id, true)).0
    }

    fn send(&mut self, p: &Packet) {
        let mut out = Vec::new();
        encode(p, self.v, &mut out);
        self.s.write_all(&out).expect("write to server");
    }

    fn next(&mut self, wait: Duration) -> Next {
        let deadline = Instant::now() + wait;
        loop {
            match decode(&self.buf, self.v, 64 << 20) {
                Ok(Some((p, n))) => {
                    self.buf.drain(..n);
                    return Next::Packet(Box::new(p));
                }
                Ok(None) => {}
                Err(e) => panic!("server sent a malformed packet: {e}"),
            }
            match read_some(&mut self.s, &mut self.buf, deadline) {
                Some(true) => {}
                Some(false) => return Next::Timeout,
                None => return Next::Closed,
            }
        }
    }

    fn expect(&mut self) -> Packet {
        match self.next(RECV_TIMEOUT) {
            Next::Packet(p) => *p,
            Next::Timeout => panic!("no packet within {RECV_TIMEOUT:?}"),
            Next::Closed => panic!("connection closed"),
        }
    }

    fn expect_publish(&mut self) -> Publish {
        match self.expect() {
            Packet::Publish(p) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    fn nothing_more(&mut self) {
        if let Next::Packet(p) = self.next(QUIET) {
            panic!("unexpected {p:?}");
        }
    }

    /// Reads until the server closes; returns what came before.
    fn until_closed(&mut self) -> Vec<Packet> {
        let mut got = Vec::new();
        loop {
            match self.next(RECV_TIMEOUT) {
                Next::Packet(p) => got.push(*p),
                Next::Closed => return got,
                Next::Timeout => panic!("connection left open; got {got:?}"),
            }
        }
    }

    fn subscribe(&mut self, filter: &str, qos: Qos) -> u8 {
        let s = Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            subscriptions: vec![Subscription {
                filter: filter.into(),
                options: SubscriptionOptions::qos(qos),
            }],
        };
        self.send(&Packet::Subscribe(s));
        match self.expect() {
            Packet::SubAck(a) => a.codes[0],
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    fn publish(&mut self, topic: &str, payload: &[u8], qos: Qos, retain: bool, id: u16) {
        let p = Publish {
            dup: false,
            qos,
            retain,
            topic: topic.into(),
            packet_id: (qos != Qos::AtMostOnce).then_some(id),
            properties: Properties::default(),
            payload: payload.to_vec(),
        };
        self.send(&Packet::Publish(p));
        match qos {
            Qos::AtMostOnce => {}
            Qos::AtLeastOnce => match self.expect() {
                Packet::PubAck(a) => assert_eq!(a.packet_id, id),
                other => panic!("expected PUBACK, got {other:?}"),
            },
            Qos::ExactlyOnce => {
                match self.expect() {
                    Packet::PubRec(r) => assert_eq!(r.packet_id, id),
                    other => panic!("expected PUBREC, got {other:?}"),
                }
                self.send(&Packet::PubRel(PubRel {
                    packet_id: id,
                    reason: 0,
                    properties: Properties::default(),
                }));
                match self.expect() {
                    Packet::PubComp(c) => assert_eq!(c.packet_id, id),
                    other => panic!("expected PUBCOMP, got {other:?}"),
                }
            }
        }
    }

    fn puback(&mut self, p: &Publish) {
        let packet_id = p.packet_id.expect("QoS > 0");
        self.send(&Packet::PubAck(PubAck {
            packet_id,
            reason: 0,
            properties: Properties::default(),
        }));
    }

    fn disconnect(mut self) {
        self.send(&Packet::Disconnect(Disconnect { reason: 0, properties: Properties::default() }));
        let _ = self.until_closed();
    }
}

const VERSIONS: [Version; 2] = [Version::V311, Version::V5];

#[test]
fn qos_0_1_2_round_trips_at_the_lower_of_the_two_qos() {
    let server = Server::start(2);
    for v in VERSIONS {
        let mut sub = Mqtt::open(&server, v, &format!("sub-{v:?}"));
        assert_eq!(sub.subscribe(&format!("{v:?}/+/x"), Qos::AtLeastOnce), 1);
        let mut publ = Mqtt::open(&server, v, &format!("pub-{v:?}"));
        for (i, qos) in
            [Qos::AtMostOnce, Qos::AtLeastOnce, Qos::ExactlyOnce].into_iter().enumerate()
        {
            publ.publish(
                &format!("{v:?}/{i}/x"),
                format!("m{i}").as_bytes(),
                qos,
                false,
                10 + i as u16,
            );
            let got = sub.expect_publish();
            assert_eq!(
                (got.topic.as_str(), got.payload.as_slice()),
                (format!("{v:?}/{i}/x").as_str(), format!("m{i}").as_bytes())
            );
            assert_eq!(
                got.qos,
                qos.min(Qos::AtLeastOnce),
                "{v:?}: min(publish {qos:?}, granted 1)"
            );
            assert!(!got.retain && !got.dup);
            if got.qos != Qos::AtMostOnce {
                sub.puback(&got);
            }
        }
        // A QoS 2 subscription receives QoS 2 with the full handshake.
        let mut sub2 = Mqtt::open(&server, v, &format!("sub2-{v:?}"));
        sub2.subscribe(&format!("{v:?}/two"), Qos::ExactlyOnce);
        publ.publish(&format!("{v:?}/two"), b"exactly", Qos::ExactlyOnce, false, 20);
        let got = sub2.expect_publish();
        assert_eq!((got.qos, got.payload.as_slice()), (Qos::ExactlyOnce, &b"exactly"[..]));
        let id = got.packet_id.unwrap();
        sub2.send(&Packet::PubRec(PubRec {
            packet_id: id,
            reason: 0,
            properties: Properties::default(),
        }));
        match sub2.expect() {
            Packet::PubRel(r) => assert_eq!(r.packet_id, id),
            other => panic!("expected PUBREL, got {other:?}"),
        }
        sub2.send(&Packet::PubComp(PubComp {
            packet_id: id,
            reason: 0,
            properties: Properties::default(),
        }));
        sub2.nothing_more();
        // A duplicate QoS 2 PUBLISH (same packet id, before PUBREL) is not delivered twice.
        let dup = Publish {
            dup: false,
            qos: Qos::ExactlyOnce,
            retain: false,
            topic: format!("{v:?}/two"),
            packet_id: Some(30),
            properties: Properties::default(),
            payload: b"once".to_vec(),
        };
        publ.send(&Packet::Publish(dup.clone()));
        publ.send(&Packet::Publish(Publish { dup: true, ..dup }));
        for _ in 0..2 {
            assert!(matches!(publ.expect(), Packet::PubRec(r) if r.packet_id == 30));
        }
        publ.send(&Packet::PubRel(PubRel {
            packet_id: 30,
            reason: 0,
            properties: Properties::default(),
        }));
        assert!(matches!(publ.expect(), Packet::PubComp(_)));
        let got = sub2.expect_publish();
        assert_eq!(got.payload, b"once");
        sub2.send(&Packet::PubRec(PubRec {
            packet_id: got.packet_id.unwrap(),
            reason: 0,
            properties: Properties::default(),
        }));
        assert!(matches!(sub2.expect(), Packet::PubRel(_)));
        sub2.nothing_more();
    }
}

#[test]
fn retained_set_replace_clear_and_dollar_topics() {
    let server = Server::start(2);
    let mut p = Mqtt::open(&server, Version::V311, "retainer");
    p.publish("home/hall/light", b"on", Qos::AtLeastOnce, true, 1);
    p.publish("home/hall/light", b"off", Qos::AtLeastOnce, true, 2);
    p.publish("home/kitchen/light", b"dim", Qos::AtLeastOnce, true, 3);
    p.publish("$sys/uptime", b"42", Qos::AtLeastOnce, true, 4);
    for v in VERSIONS {
        let mut s = Mqtt::open(&server, v, "reader");
        s.subscribe("home/+/light", Qos::AtLeastOnce);
        let mut got: Vec<(String, Vec<u8>, bool)> = (0..2)
            .map(|_| {
                let m = s.expect_publish();
                s.puback(&m);
                (m.topic, m.payload, m.retain)
            })
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                ("home/hall/light".into(), b"off".to_vec(), true),
                ("home/kitchen/light".into(), b"dim".to_vec(), true)
            ]
        );
        s.nothing_more();
        // `#` does not see `$` topics (MQTT-4.7.2-1); `$sys/#` does.
        let mut all = Mqtt::open(&server, v, "all");
        all.subscribe("#", Qos::AtMostOnce);
        let mut seen: Vec<String> = Vec::new();
        while let Next::Packet(p) = all.next(QUIET) {
            let Packet::Publish(m) = *p else { panic!("{p:?}") };
            seen.push(m.topic);
        }
        assert!(!seen.iter().any(|t| t.starts_with('$')), "{seen:?}");
        assert_eq!(seen.len(), 2, "{seen:?}");
        let mut sys = Mqtt::open(&server, v, "sys");
        sys.subscribe("$sys/#", Qos::AtMostOnce);
        assert_eq!(sys.expect_publish().payload, b"42");
    }
    // Clearing with an empty payload: later subscribers get nothing.
    p.publish("home/hall/light", b"", Qos::AtLeastOnce, true, 5);
    let mut s = Mqtt::open(&server, Version::V5, "late");
    s.subscribe("home/hall/light", Qos::AtLeastOnce);
    s.nothing_more();
}

#[test]
fn wills_on_abnormal_close_only_and_keep_alive() {
    let server = Server::start(2);
    for v in VERSIONS {
        let mut watcher = Mqtt::open(&server, v, "watcher");
        watcher.subscribe("wills/#", Qos::AtLeastOnce);
        let with_will = |id: &str, keep_alive_s: u16| {
            let mut c = connect_packet(v, id, true);
            c.keep_alive_s = keep_alive_s;
            c.will = Some(Will {
                topic: format!("wills/{id}"),
                payload: b"gone".to_vec(),
                qos: Qos::AtLeastOnce,
                retain: false,
                properties: Properties::default(),
            });
            c
        };
        // A clean DISCONNECT: no will.
        let (c, _, _) = Mqtt::open_with(&server, with_will("polite", 60));
        c.disconnect();
        watcher.nothing_more();
        // The socket just closes: the will goes out.
        let (c, _, _) = Mqtt::open_with(&server, with_will("rude", 60));
        drop(c);
        let m = watcher.expect_publish();
        assert_eq!((m.topic.as_str(), m.payload.as_slice()), ("wills/rude", &b"gone"[..]));
        watcher.puback(&m);
        // Silent past 1.5 x keep-alive: closed by the server, will published.
        let (mut c, _, _) = Mqtt::open_with(&server, with_will("sleepy", 1));
        let started = Instant::now();
        let before = c.until_closed();
        assert!(started.elapsed() >= Duration::from_millis(1000), "closed too early");
        if v == Version::V5 {
            assert!(
                matches!(before.last(), Some(Packet::Disconnect(d)) if d.reason == reason::KEEP_ALIVE_TIMEOUT),
                "{before:?}"
            );
        }
        let m = watcher.expect_publish();
        assert_eq!(m.topic, "wills/sleepy");
        watcher.puback(&m);
        // PINGREQ keeps a connection alive.
        let (mut c, _, _) = Mqtt::open_with(&server, with_will("awake", 1));
        for _ in 0..4 {
            std::thread::sleep(Duration::from_millis(500));
            c.send(&Packet::PingReq);
            assert!(matches!(c.expect(), Packet::PingResp));
        }
        c.disconnect();
        watcher.nothing_more();
    }
}

#[test]
fn persistent_sessions_keep_messages_across_reconnect_and_kill_9() {
    let mut server = Server::start(2);
    for v in VERSIONS {
        let id = format!("durable-{v:?}");
        let persistent = |server: &Server| {
            let mut c = connect_packet(v, &id, false);
            if v == Version::V5 {
                c.properties.session_expiry_interval = Some(3600);
            }
            Mqtt::open_with(server, c)
        };
        let (mut s, present, _) = persistent(&server);
        assert!(!present);
        s.subscribe(&format!("{v:?}/alerts/#"), Qos::ExactlyOnce);
        s.disconnect();
        let mut p = Mqtt::open(&server, v, "pub");
        p.publish(&format!("{v:?}/alerts/disk"), b"q1", Qos::AtLeastOnce, false, 1);
        p.publish(&format!("{v:?}/alerts/cpu"), b"q2", Qos::ExactlyOnce, false, 2);
        p.publish(&format!("{v:?}/alerts/fan"), b"q0", Qos::AtMostOnce, false, 3);
        // The QoS 0 one travels through the same journal; wait for it with a later QoS 1.
        p.publish(&format!("{v:?}/alerts/end"), b"q1b", Qos::AtLeastOnce, false, 4);
        p.disconnect();
        server.kill9();
        server.restart();
        let (mut s, present, _) = persistent(&server);
        assert!(present, "{v:?}: the session survived");
        let got: Vec<Publish> = (0..4).map(|_| s.expect_publish()).collect();
        let bodies: Vec<&[u8]> = got.iter().map(|m| m.payload.as_slice()).collect();
        assert_eq!(bodies, [&b"q1"[..], b"q2", b"q0", b"q1b"]);
        assert_eq!(
            got.iter().map(|m| m.qos).collect::<Vec<_>>(),
            [Qos::AtLeastOnce, Qos::ExactlyOnce, Qos::AtMostOnce, Qos::AtLeastOnce]
        );
        // Ack only the first: the rest come back with DUP after a reconnect.
        s.puback(&got[0]);
        s.send(&Packet::PubRec(PubRec {
            packet_id: got[1].packet_id.unwrap(),
            reason: 0,
            properties: Properties::default(),
        }));
        assert!(matches!(s.expect(), Packet::PubRel(_)));
        drop(s);
        let (mut s, present, _) = persistent(&server);
        assert!(present);
        // The released QoS 2 message gets PUBREL again (MQTT-4.4.0-1) and the unacknowledged
        // QoS 1 one comes back with DUP; the two come from different shards, in either order.
        let q2 = got[1].packet_id.unwrap();
        let (mut rel, mut again) = (None, None);
        for _ in 0..2 {
            match s.expect() {
                Packet::PubRel(r) => rel = Some(r.packet_id),
                Packet::Publish(p) => again = Some(p),
                other => panic!("expected PUBREL {q2} and a PUBLISH, got {other:?}"),
            }
        }
        assert_eq!(rel, Some(q2));
        s.send(&Packet::PubComp(PubComp {
            packet_id: q2,
            reason: 0,
            properties: Properties::default(),
        }));
        let again = again.expect("the QoS 1 message again");
        assert_eq!((again.payload.as_slice(), again.dup), (&b"q1b"[..], true));
        s.puback(&again);
        s.nothing_more();
        // A clean start discards the session.
        s.disconnect();
        let (s, present, _) = Mqtt::open_with(&server, connect_packet(v, &id, true));
        assert!(!present);
        s.disconnect();
    }
}

#[test]
fn client_id_takeover_and_empty_ids() {
    let server = Server::start(2);
    for v in VERSIONS {
        let mut first = Mqtt::open(&server, v, "same-id");
        let _second = Mqtt::open(&server, v, "same-id");
        let before = first.until_closed();
        if v == Version::V5 {
            assert!(
                matches!(before.last(), Some(Packet::Disconnect(d)) if d.reason == reason::SESSION_TAKEN_OVER),
                "{before:?}"
            );
        }
        // An empty id with a clean session: accepted; 5.0 is told the id it got.
        let (_c, _, props) = Mqtt::open_with(&server, connect_packet(v, "", true));
        if v == Version::V5 {
            assert!(props.assigned_client_identifier.is_some_and(|id| !id.is_empty()));
        }
    }
    // 3.1.1: an empty id without a clean session is refused with return code 2.
    let mut c = Mqtt::raw(&server, Version::V311);
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&[0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x00, 0, 60, 0, 0]);
    c.s.write_all(&bytes).unwrap();
    let got = c.until_closed();
    assert!(matches!(got.as_slice(), [Packet::ConnAck(a)] if a.code == 2), "{got:?}");
}

#[test]
fn shared_subscriptions_topic_aliases_and_properties() {
    let server = Server::start(2);
    let v = Version::V5;
    let mut a = Mqtt::open(&server, v, "member-a");
    let mut b = Mqtt::open(&server, v, "member-b");
    let mut all = Mqtt::open(&server, v, "everyone");
    assert_eq!(a.subscribe("$share/g/jobs/+", Qos::AtLeastOnce), 1);
    assert_eq!(b.subscribe("$share/g/jobs/+", Qos::AtLeastOnce), 1);
    all.subscribe("jobs/+", Qos::AtMostOnce);
    let mut p = Mqtt::open(&server, v, "boss");
    for i in 0..20u16 {
        p.publish(&format!("jobs/{i}"), b"work", Qos::AtLeastOnce, false, i + 1);
    }
    let mut shares = [0, 0];
    let mut seen = std::collections::BTreeSet::new();
    let deadline = Instant::now() + RECV_TIMEOUT;
    while seen.len() < 20 && Instant::now() < deadline {
        for (i, c) in [&mut a, &mut b].into_iter().enumerate() {
            while let Next::Packet(p) = c.next(Duration::from_millis(50)) {
                let Packet::Publish(m) = *p else { panic!("{p:?}") };
                c.puback(&m);
                assert!(seen.insert(m.topic.clone()), "{} delivered twice", m.topic);
                shares[i] += 1;
            }
        }
    }
    assert_eq!(seen.len(), 20, "each job once across the group");
    assert!(shares[0] > 0 && shares[1] > 0, "both members got work: {shares:?}");
    let everyone: usize = std::iter::from_fn(|| match all.next(QUIET) {
        Next::Packet(p) if matches!(*p, Packet::Publish(_)) => Some(()),
        _ => None,
    })
    .count();
    assert_eq!(everyone, 20, "a non-shared subscriber gets them all");
    // When the last member leaves (one unsubscribes, one disconnects), the group is gone:
    // what is published meanwhile is not kept for a later member (as in Mosquitto).
    a.send(&Packet::Unsubscribe(Unsubscribe {
        packet_id: 2,
        properties: Properties::default(),
        filters: vec!["$share/g/jobs/+".into()],
    }));
    assert!(matches!(a.expect(), Packet::UnsubAck(_)));
    b.disconnect();
    // The group's queue goes once the owner has applied the close (another shard, so wait).
    let native = server.connect();
    let deadline = Instant::now() + RECV_TIMEOUT;
    while native.browse("mqtt.share.g.jobs.*", 0, 1).is_ok() {
        assert!(Instant::now() < deadline, "the group's queue was never deleted");
        std::thread::sleep(Duration::from_millis(10));
    }
    p.publish("jobs/late", b"nobody home", Qos::AtLeastOnce, false, 99);
    let mut c = Mqtt::open(&server, v, "member-c");
    c.subscribe("$share/g/jobs/+", Qos::AtLeastOnce);
    c.nothing_more();
    p.publish("jobs/next", b"for c", Qos::AtLeastOnce, false, 100);
    assert_eq!(c.expect_publish().payload, b"for c");

    // Topic alias, user properties, content type, response topic and correlation data.
    let mut s = Mqtt::open(&server, v, "props-sub");
    s.subscribe("alias/t", Qos::AtLeastOnce);
    let mut props = Properties { topic_alias: Some(3), ..Properties::default() };
    props.user_properties.push(("k".into(), "v ✓".into()));
    props.content_type = Some("text/plain".into());
    props.response_topic = Some("replies/1".into());
    props.correlation_data = Some(vec![1, 2, 3]);
    let first = Publish {
        dup: false,
        qos: Qos::AtLeastOnce,
        retain: false,
        topic: "alias/t".into(),
        packet_id: Some(1),
        properties: props,
        payload: b"1".to_vec(),
    };
    p.send(&Packet::Publish(first));
    assert!(matches!(p.expect(), Packet::PubAck(_)));
    let by_alias = Publish {
        dup: false,
        qos: Qos::AtLeastOnce,
        retain: false,
        topic: String::new(),
        packet_id: Some(2),
        properties: Properties { topic_alias: Some(3), ..Properties::default() },
        payload: b"2".to_vec(),
    };
    p.send(&Packet::Publish(by_alias));
    assert!(matches!(p.expect(), Packet::PubAck(_)));
    let m1 = s.expect_publish();
    assert_eq!(m1.properties.user_properties, [("k".to_string(), "v ✓".to_string())]);
    assert_eq!(m1.properties.content_type.as_deref(), Some("text/plain"));
    assert_eq!(m1.properties.response_topic.as_deref(), Some("replies/1"));
    assert_eq!(m1.properties.correlation_data.as_deref(), Some(&[1u8, 2, 3][..]));
    s.puback(&m1);
    let m2 = s.expect_publish();
    assert_eq!((m2.topic.as_str(), m2.payload.as_slice()), ("alias/t", &b"2"[..]));
}

#[test]
fn receive_maximum_bounds_unacknowledged_deliveries() {
    let server = Server::start(2);
    let mut c = connect_packet(Version::V5, "slow", true);
    c.properties.receive_maximum = Some(2);
    let (mut s, _, _) = Mqtt::open_with(&server, c);
    s.subscribe("rm/x", Qos::AtLeastOnce);
    let mut p = Mqtt::open(&server, Version::V5, "fast");
    for i in 1..=5u16 {
        p.publish("rm/x", format!("{i}").as_bytes(), Qos::AtLeastOnce, false, i);
    }
    let first: Vec<Publish> = (0..2).map(|_| s.expect_publish()).collect();
    s.nothing_more(); // two in flight: no third until one is acknowledged
    s.puback(&first[0]);
    let third = s.expect_publish();
    assert_eq!(third.payload, b"3");
    s.nothing_more();
}

#[test]
fn mqtt_stomp_and_native_clients_share_topics() {
    let server = Server::start(2);
    let conn = server.connect();
    let mut native = conn.subscribe("plant.*.temp").unwrap();
    let mut m = Mqtt::open(&server, Version::V5, "bridge");
    m.subscribe("plant/+/temp", Qos::AtLeastOnce);
    m.publish("plant/boiler/temp", b"81", Qos::AtLeastOnce, false, 1);
    assert_eq!(recv_n_sub(&mut native, 1)[0].payload(), b"81", "MQTT → native");
    let got = m.expect_publish();
    m.puback(&got);
    let mut tp = conn.topic_producer("plant.pump.temp");
    tp.send(b"40").unwrap();
    tp.flush().unwrap();
    let got = m.expect_publish();
    assert_eq!(
        (got.topic.as_str(), got.payload.as_slice()),
        ("plant/pump/temp", &b"40"[..]),
        "native → MQTT"
    );
    m.puback(&got);
    // STOMP → MQTT through the same topic.
    let mut st = TcpStream::connect(server.stomp).unwrap();
    st.write_all(b"CONNECT\naccept-version:1.2\nhost:/\n\n\0SEND\ndestination:/topic/plant.valve.temp\nreceipt:r\n\n12\0").unwrap();
    let got = m.expect_publish();
    assert_eq!(
        (got.topic.as_str(), got.payload.as_slice()),
        ("plant/valve/temp", &b"12"[..]),
        "STOMP → MQTT"
    );
}

#[test]
fn malformed_packets_close_the_connection_and_cost_nothing_else() {
    let server = Server::start(2);
    let connect5 = {
        let mut out = Vec::new();
        encode(
            &Packet::Connect(Box::new(connect_packet(Version::V5, "bad", true))),
            Version::V5,
            &mut out,
        );
        out
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("bad protocol name", vec![0x10, 12, 0, 4, b'M', b'Q', b'T', b'X', 4, 2, 0, 60, 0, 0]),
        ("remaining length over 4 bytes", vec![0x10, 0xff, 0xff, 0xff, 0xff, 0x01]),
        ("first packet not CONNECT", vec![0xc0, 0x00]),
        (
            "reserved flags on SUBSCRIBE",
            [connect5.clone(), vec![0x80, 6, 0, 1, 0, 1, b'a', 0]].concat(),
        ),
        ("QoS 3 publish", [connect5.clone(), vec![0x36, 5, 0, 1, b'a', 0, 1]].concat()),
        ("CONNECT twice", [connect5.clone(), connect5.clone()].concat()),
        (
            "invalid filter",
            [connect5.clone(), vec![0x82, 8, 0, 1, 0, 0, 3, b'a', b'#', b'b', 1][..10].to_vec()]
                .concat(),
        ),
    ];
    for (what, bytes) in cases {
        let mut c = Mqtt::raw(&server, Version::V5);
        c.s.write_all(&bytes).unwrap();
        let got = c.until_closed();
        assert!(
            got.iter().all(|p| matches!(p, Packet::ConnAck(_) | Packet::Disconnect(_))),
            "{what}: {got:?}"
        );
    }
    // Packets whose error has no DISCONNECT reason code of its own (AUTH, a second CONNECT
    // with an unknown level): DISCONNECT 0x82, and the server lives on.
    for tail in [vec![0xf0u8, 0x00], vec![0x10, 10, 0, 4, b'M', b'Q', b'T', b'T', 9, 2, 0, 60]] {
        let mut c = Mqtt::raw(&server, Version::V5);
        c.s.write_all(&[connect5.clone(), tail].concat()).unwrap();
        let got = c.until_closed();
        assert!(
            matches!(got.last(), Some(Packet::Disconnect(d)) if d.reason == reason::PROTOCOL_ERROR),
            "{got:?}"
        );
    }
    // Extended authentication is refused at CONNECT with 0x8C.
    let mut auth = connect_packet(Version::V5, "auth", true);
    auth.properties.authentication_method = Some("SCRAM-SHA-1".into());
    let mut c = Mqtt::raw(&server, Version::V5);
    c.send(&Packet::Connect(Box::new(auth)));
    let got = c.until_closed();
    assert!(
        matches!(got.as_slice(), [Packet::ConnAck(a)] if a.code == reason::BAD_AUTHENTICATION_METHOD),
        "{got:?}"
    );
    // Still serving, both gateways and the native protocol.
    let mut ok = Mqtt::open(&server, Version::V311, "after");
    ok.subscribe("still/here", Qos::AtLeastOnce);
    ok.publish("still/here", b"yes", Qos::AtLeastOnce, false, 1);
    assert_eq!(ok.expect_publish().payload, b"yes");
    server.assert_serves();
    // Unsubscribe works, and says which filters existed (5.0).
    let mut u = Mqtt::open(&server, Version::V5, "unsub");
    u.subscribe("u/1", Qos::AtMostOnce);
    u.send(&Packet::Unsubscribe(Unsubscribe {
        packet_id: 9,
        properties: Properties::default(),
        filters: vec!["u/1".into(), "u/2".into()],
    }));
    match u.expect() {
        Packet::UnsubAck(a) => {
            assert_eq!(a.codes, [reason::SUCCESS, reason::NO_SUBSCRIPTION_EXISTED])
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn pipelined_qos1_publishes_past_the_window_are_acked_in_order() {
    let server = Server::start(2);
    let mut sub = Mqtt::open(&server, Version::V311, "burst-sub");
    sub.subscribe("burst/#", Qos::AtMostOnce);
    let mut p = Mqtt::open(&server, Version::V311, "burst-pub");
    let n = 3_000u16;
    let mut bytes = Vec::new();
    for i in 1..=n {
        let publish = Publish {
            dup: false,
            qos: Qos::AtLeastOnce,
            retain: false,
            topic: format!("burst/{}", i % 7),
            packet_id: Some(i),
            properties: Properties::default(),
            payload: i.to_string().into_bytes(),
        };
        encode(&Packet::Publish(publish), Version::V311, &mut bytes);
    }
    // One write: far more than the session's request window, so it pauses and resumes.
    let writer = {
        let mut s = p.s.try_clone().unwrap();
        std::thread::spawn(move || s.write_all(&bytes).unwrap())
    };
    for i in 1..=n {
        match p.expect() {
            Packet::PubAck(a) => assert_eq!(a.packet_id, i, "PUBACKs in PUBLISH order"),
            other => panic!("{other:?}"),
        }
    }
    writer.join().unwrap();
    let got: Vec<u16> = (0..n)
        .map(|_| String::from_utf8(sub.expect_publish().payload).unwrap().parse().unwrap())
        .collect();
    assert_eq!(got, (1..=n).collect::<Vec<_>>());
}
