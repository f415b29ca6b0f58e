//! Mutated MQTT packet streams against a running server's MQTT port: whatever arrives, the
//! server closes or answers that connection only, and keeps serving MQTT, STOMP and native
//! clients. (The decoder itself is fuzzed by `gateway::mqtt`'s unit tests.)
//!
//! Rerun one seed with `RDMQ_FUZZ_SEED=<seed>`; more streams with `RDMQ_FUZZ_ITERS=<n>`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use rdmq::gateway::mqtt::subscribe::{Subscription, SubscriptionOptions};
use rdmq::gateway::mqtt::{
    encode, Connect, Disconnect, Packet, Properties, PubAck, Publish, Qos, Subscribe, Unsubscribe,
    Version, Will,
};

fn corpus(v: Version) -> Vec<Vec<u8>> {
    let props = Properties::default();
    let packets = [
        Packet::Connect(Box::new(Connect {
            version: v,
            clean_start: false,
            keep_alive_s: 5,
            client_id: "fuzz".into(),
            will: Some(Will {
                topic: "w/t".into(),
                payload: b"bye".to_vec(),
                qos: Qos::AtLeastOnce,
                retain: true,
                properties: props.clone(),
            }),
            username: Some("u".into()),
            password: Some(b"p".to_vec()),
            properties: props.clone(),
        })),
        Packet::Publish(Publish {
            dup: false,
            qos: Qos::ExactlyOnce,
            retain: true,
            topic: "a/b".into(),
            packet_id: Some(7),
            properties: props.clone(),
            payload: b"payload".to_vec(),
        }),
        Packet::Subscribe(Subscribe {
            packet_id: 3,
            properties: props.clone(),
            subscriptions: vec![Subscription {
                filter: "a/#".into(),
                options: SubscriptionOptions::qos(Qos::AtLeastOnce),
            }],
        }),
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 4,
            properties: props.clone(),
            filters: vec!["a/#".into()],
        }),
        Packet::PubAck(PubAck { packet_id: 1, reason: 0, properties: props.clone() }),
        Packet::PingReq,
        Packet::Disconnect(Disconnect { reason: 0, properties: props }),
    ];
    packets
        .iter()
        .map(|p| {
            let mut out = Vec::new();
            encode(p, v, &mut out);
            out
        })
        .collect()
}

#[test]
fn gateway_survives_mutated_streams() {
    let server = Server::start(2);
    let seed =
        std::env::var("RDMQ_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x4D51_5454);
    let iters = std::env::var("RDMQ_FUZZ_ITERS").ok().and_then(|s| s.parse().ok()).unwrap_or(300);
    let mut rng = XorShift(seed | 1);
    for i in 0..iters {
        let v = if i % 2 == 0 { Version::V311 } else { Version::V5 };
        let corpus = corpus(v);
        let mut input = corpus[0].clone();
        for _ in 0..1 + rng.below(4) {
            let mut b = corpus[rng.below(corpus.len())].clone();
            for _ in 0..1 + rng.below(3) {
                let at = rng.below(b.len());
                match rng.below(4) {
                    0 => b[at] = rng.next() as u8,
                    1 => b.truncate(at.max(1)),
                    2 => b.insert(at, rng.next() as u8),
                    _ => b[at] ^= 1 << rng.below(8),
                }
            }
            input.extend(b);
        }
        let Ok(mut s) = TcpStream::connect(server.mqtt) else {
            panic!("seed {seed}: not accepting")
        };
        let _ = s.write_all(&input);
        let _ = s.shutdown(std::net::Shutdown::Write);
        s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    }
    server.assert_serves();
    let mut s = TcpStream::connect(server.mqtt).unwrap();
    s.write_all(&[0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 1, b'x']).unwrap();
    s.set_read_timeout(Some(RECV_TIMEOUT)).unwrap();
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack).unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0], "seed {seed}: a new client is accepted");
}
