//! Cases every client transport must pass, written once against a URL: the shared-memory tests
//! (`tests/shm.rs`) run them over `shm://`, `tests/rdma.rs` over `rdma://`, and `tests/queues.rs`
//! uses some over TCP.
//! Each case uses queues of its own, so they can share a server.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use super::*;
use rdmq_client::{Message, QueueOptions};

/// The payload of message `i` of a stream: its index, then a pattern seeded by it, of a length
/// that varies with `i` (up to `max` bytes) so frames of many sizes cross the transport.
pub fn stream_payload(i: u64, max: usize) -> Vec<u8> {
    let mut rng = XorShift(i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let len = 8 + rng.below(max - 8);
    let mut p = i.to_le_bytes().to_vec();
    p.extend(rng.bytes(len - 8));
    p
}

/// Publish with headers and consume with ack over `url`; the message arrives whole.
pub fn round_trip(server: &Server, url: &str, tag: &str) {
    let q = format!("{tag}.round-trip");
    let conn = server.connect_url(url);
    conn.ping().expect("ping");
    conn.declare_queue(&q, &QueueOptions::default()).expect("declare");
    let mut p = conn.queue_producer(&q);
    let m = Message::new("hello over the transport")
        .header("tenant", "acme")
        .correlation_id("c-1")
        .reply_to("answers");
    p.send_message(&m).expect("send");
    p.flush().expect("confirmed");
    let mut c = conn.consume(&q, 8).expect("consume");
    let d = c.receive(Some(RECV_TIMEOUT)).expect("receive").expect("a message");
    assert_eq!(d.payload(), b"hello over the transport");
    let rec = d.record();
    assert_eq!(rec.correlation_id(), b"c-1");
    assert_eq!(rec.reply_to(), b"answers");
    assert_eq!(rec.headers().collect::<Vec<_>>(), vec![("tenant", "acme")]);
    c.ack(&d).expect("ack");
    assert!(c.receive(Some(QUIET)).unwrap().is_none(), "one message, delivered once");
}

/// `n` messages of varied sizes from a producer on `from` to a consumer on `to`, every one
/// checked for order and content; the consumer acks as it goes.
pub fn stream(server: &Server, from: &str, to: &str, n: u64, tag: &str) {
    let q = format!("{tag}.stream");
    let prod_conn = server.connect_url(from);
    prod_conn.declare_queue(&q, &QueueOptions::default()).expect("declare");
    let cons_conn = server.connect_url(to);
    let mut c = cons_conn.consume(&q, 512).expect("consume");
    let mut p = prod_conn.queue_producer(&q);
    let mut next = 0u64;
    for i in 0..n {
        p.send(&stream_payload(i, 2_000)).expect("send");
        // Drain as we go, so neither side's window is the only thing moving data.
        if i % 1_000 == 999 {
            p.push().expect("push");
            while let Some(d) = c.receive(Some(Duration::ZERO)).expect("receive") {
                assert_eq!(d.payload(), &stream_payload(next, 2_000)[..], "message {next}");
                c.ack(&d).expect("ack");
                next += 1;
            }
        }
    }
    p.flush().expect("all confirmed");
    while next < n {
        let d = c
            .receive(Some(RECV_TIMEOUT))
            .expect("receive")
            .unwrap_or_else(|| panic!("message {next} of {n} did not arrive"));
        assert_eq!(d.payload(), &stream_payload(next, 2_000)[..], "message {next}");
        c.ack(&d).expect("ack");
        next += 1;
    }
    assert!(c.receive(Some(QUIET)).unwrap().is_none(), "more than {n} deliveries");
}

/// A producer far faster than a consumer that does not read at all for a while: the bytes back
/// up (the server's ring to the consumer fills, its output waits), then everything arrives in
/// order once the consumer reads. And the reverse: a producer sending many times the ring's
/// size waits for ring space and loses nothing. Use with a server whose rings are small.
pub fn stall_and_recover(server: &Server, url: &str, ring_bytes: usize, tag: &str) {
    let q = format!("{tag}.stall");
    let n = (8 * ring_bytes / 1_000) as u64; // eight rings' worth of 1 KB messages
    let conn = server.connect_url(url);
    conn.declare_queue(&q, &QueueOptions::default()).expect("declare");
    // Subscribed with credit for everything, then not read while the producer runs.
    let cons_conn = server.connect_url(url);
    let mut c = cons_conn.consume(&q, n as u32).expect("consume");
    let mut p = conn.queue_producer(&q);
    let payload = |i: u64| {
        let mut v = i.to_le_bytes().to_vec();
        v.resize(1_000, (i % 251) as u8);
        v
    };
    for i in 0..n {
        p.send(&payload(i)).expect("send through a full ring");
    }
    p.flush().expect("every publish confirmed although the consumer is stalled");
    std::thread::sleep(QUIET);
    for i in 0..n {
        let d = c
            .receive(Some(RECV_TIMEOUT))
            .expect("receive")
            .unwrap_or_else(|| panic!("message {i} of {n} lost after the stall"));
        assert_eq!(d.payload(), &payload(i)[..], "message {i}");
        c.ack(&d).expect("ack");
    }
    assert!(c.receive(Some(QUIET)).unwrap().is_none(), "more than {n} deliveries");
}

/// A CLI consumer on `url` holding unacknowledged messages is killed with SIGKILL mid-stream:
/// what it held comes back, flagged redelivered with a delivery count of 2, the rest arrive
/// for the first time, and nothing is lost or duplicated. Credit bounds what it held.
pub fn killed_consumer_redelivered(server: &Server, url: &str, tag: &str) {
    const N: usize = 40;
    const CREDIT: usize = 10;
    let q = format!("{tag}.killed");
    let conn = server.connect();
    let mut p = conn.queue_producer(&q);
    for i in 0..N {
        p.send(format!("job-{i}").as_bytes()).unwrap();
    }
    p.flush().unwrap();
    let mut child = std::process::Command::new(rdmq_bin())
        .args(["consume", "--url", url, "--queue", &q, "--credit", &CREDIT.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut held = BTreeSet::new();
    while held.len() < CREDIT {
        match rx.recv_timeout(RECV_TIMEOUT) {
            Ok(line) => assert!(held.insert(line), "CLI printed a line twice"),
            Err(e) => {
                let _ = child.kill();
                panic!("CLI consumer printed {} of {CREDIT} lines: {e}", held.len());
            }
        }
    }
    assert!(rx.recv_timeout(QUIET).is_err(), "consumer exceeded its credit");
    child.kill().unwrap();
    child.wait().unwrap();
    let mut c = conn.consume(&q, 100).unwrap();
    let got = recv_n(&mut c, N);
    let mut by_payload = BTreeMap::new();
    for d in &got {
        let seen = (d.redelivered, d.delivery_count);
        assert!(by_payload.insert(text(d), seen).is_none(), "delivered twice");
        c.ack(d).unwrap();
    }
    let expected: BTreeSet<String> = (0..N).map(|i| format!("job-{i}")).collect();
    assert_eq!(by_payload.keys().cloned().collect::<BTreeSet<_>>(), expected, "messages lost");
    for (payload, seen) in &by_payload {
        let want = if held.contains(payload) { (true, 2) } else { (false, 1) };
        assert_eq!(*seen, want, "{payload}: (redelivered, delivery_count)");
    }
    assert!(c.receive(Some(QUIET)).unwrap().is_none(), "more than {N} deliveries");
}

/// Topic ping-pong between two connections on `url`: subscriptions and request/response work.
pub fn topic_request_reply(server: &Server, url: &str, tag: &str) {
    let a = server.connect_url(url);
    let b = server.connect_url(url);
    let mut sub_b = b.subscribe(&format!("{tag}.ping")).expect("subscribe");
    let mut sub_a = a.subscribe(&format!("{tag}.pong")).expect("subscribe");
    let mut pa = a.topic_producer(&format!("{tag}.ping"));
    let mut pb = b.topic_producer(&format!("{tag}.pong"));
    for i in 0..200u32 {
        pa.send(&i.to_le_bytes()).expect("ping");
        pa.flush().expect("confirmed");
        let d = sub_b.receive(Some(RECV_TIMEOUT)).expect("receive").expect("ping arrives");
        pb.send(d.payload()).expect("pong");
        pb.flush().expect("confirmed");
        let d = sub_a.receive(Some(RECV_TIMEOUT)).expect("receive").expect("pong arrives");
        assert_eq!(d.payload(), &i.to_le_bytes()[..]);
    }
}

/// Messages and record size `copies` uses: 200-byte payloads, no headers, so each record is
/// the 40-byte fixed part plus the payload.
pub const COPIES_MESSAGES: usize = 1_000;
pub const COPIES_RECORD: usize = 40 + 200;

/// What the server's copy counters said after one `copies` run.
#[derive(Debug)]
pub struct Copies {
    pub copy_in: usize,
    pub copy_journal: usize,
    pub copy_deliver: usize,
    pub ring_out: usize,
    pub rdma_gather: usize,
}

/// Publishes [`COPIES_MESSAGES`] messages over `from` to a queue of `durability` and consumes
/// them over `to` (the same connection when they are the same URL), then stops `server` and
/// returns its copy counters.
pub fn copies(server: Server, from: &str, to: &str, durability: rdmq_client::Durability) -> Copies {
    copies_n(server, from, to, durability, COPIES_MESSAGES)
}

/// [`copies`] with `n` messages. The consumer reads nothing until every message is published
/// and confirmed, so with more than a ring's worth its ring fills and the rest wait.
pub fn copies_n(
    mut server: Server,
    from: &str,
    to: &str,
    durability: rdmq_client::Durability,
    n: usize,
) -> Copies {
    const PAYLOAD: usize = COPIES_RECORD - 40;
    let conn = server.connect_url(to);
    let other = (from != to).then(|| server.connect_url(from));
    let opts = QueueOptions { durability, ..Default::default() };
    conn.declare_queue("copies", &opts).unwrap();
    let mut c = conn.consume("copies", n as u32).unwrap();
    let mut p = other.as_ref().unwrap_or(&conn).queue_producer("copies");
    for i in 0..n {
        let mut payload = vec![(i % 251) as u8; PAYLOAD];
        payload[..8].copy_from_slice(&(i as u64).to_le_bytes());
        p.send(&payload).unwrap();
    }
    p.flush().unwrap();
    for (i, d) in recv_n(&mut c, n).into_iter().enumerate() {
        let p = d.payload();
        assert_eq!((p.len(), &p[..8]), (PAYLOAD, &(i as u64).to_le_bytes()[..]), "message {i}");
        assert!(p[8..].iter().all(|&b| b == (i % 251) as u8), "message {i} damaged");
        c.ack(&d).unwrap();
    }
    c.close().unwrap();
    drop((p, conn, other));
    let log = server.stop();
    let get = |k: &str| Server::counter(&log, k) as usize;
    Copies {
        copy_in: get("copy_in_bytes"),
        copy_journal: get("copy_journal_bytes"),
        copy_deliver: get("copy_deliver_bytes"),
        ring_out: get("ring_bytes_out"),
        rdma_gather: get("rdma_gather_bytes"),
    }
}
