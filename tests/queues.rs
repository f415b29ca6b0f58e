//! Queue behaviour end to end against the real server: the message round trip, competing
//! consumers, redelivery after a consumer dies, TTL expiry, dead-lettering and credit.
//!
//! Two-shard servers put the queue on the shard that did not accept the client, so every
//! publish, delivery, settle and dead letter crosses the inter-shard mailboxes.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::*;
use rdmq_client::{Message, QueueOptions};

/// Round trip of a message with every optional part, with the queue on `queue_shard`.
fn round_trip(shards: usize, queue_shard: usize) {
    let server = Server::start(shards);
    let q = name_on_shard("rt", queue_shard, shards);
    let producer_conn = server.connect();
    producer_conn.declare_queue(&q, &QueueOptions::default()).unwrap();
    let mut p = producer_conn.queue_producer(&q);
    let full = Message::new(&b"hello\0world"[..])
        .id(0xDEAD_BEEF_0042)
        .ttl_ms(600_000)
        .correlation_id(&b"corr-\x01\x02"[..])
        .reply_to("replies.for.me")
        .header("content-type", "text/plain")
        .header("ünïcode", "välue")
        .header("empty", "");
    p.send_message(&full).unwrap();
    p.send(b"plain").unwrap();
    p.send(b"").unwrap();
    p.flush().unwrap();

    // A second connection: deliveries travel to whichever shard accepted it.
    let consumer_conn = server.connect();
    let mut c = consumer_conn.consume(&q, 16).unwrap();
    let got = recv_n(&mut c, 3);

    let d = &got[0];
    let rec = d.record();
    assert_eq!(d.payload(), b"hello\0world");
    assert_eq!(rec.payload(), b"hello\0world");
    assert_eq!(rec.header.id, 0xDEAD_BEEF_0042);
    assert_eq!(rec.header.ttl_ms, 600_000);
    assert_ne!(rec.header.timestamp_us, 0, "the producer stamps a timestamp");
    assert_eq!(rec.correlation_id(), b"corr-\x01\x02");
    assert_eq!(rec.reply_to(), b"replies.for.me");
    let headers: Vec<(&str, &str)> = rec.headers().collect();
    assert_eq!(headers, vec![("content-type", "text/plain"), ("ünïcode", "välue"), ("empty", "")]);
    assert_eq!((d.delivery_count, d.redelivered), (1, false));
    assert_ne!(d.tag, 0);

    let plain = got[1].record();
    assert_eq!(got[1].payload(), b"plain");
    assert_eq!((plain.header.id, plain.header.ttl_ms), (0, 0));
    assert!(plain.correlation_id().is_empty() && plain.reply_to().is_empty());
    assert_eq!(plain.headers().count(), 0);
    assert_eq!(got[2].payload(), b"");

    let tags: BTreeSet<u64> = got.iter().map(|d| d.tag).collect();
    assert_eq!(tags.len(), 3, "delivery tags are distinct");
    for d in &got {
        c.ack(d).unwrap();
    }
    c.close().unwrap();
    // Acked means gone: a new consumer finds the queue empty.
    let mut again = consumer_conn.consume(&q, 16).unwrap();
    assert!(again.receive(Some(QUIET)).unwrap().is_none(), "acked message came back");
}

#[test]
fn round_trip_one_shard() {
    round_trip(1, 0);
}

#[test]
fn round_trip_across_shards() {
    // Both placements: one of them is off the shard of at least one of the two connections.
    round_trip(2, 0);
    round_trip(2, 1);
}

/// FIFO order within a queue holds across the shard hop.
#[test]
fn fifo_order_across_shards() {
    let server = Server::start(2);
    let conn = server.connect();
    let q = name_on_shard("fifo", 1 - conn.shard().0 as usize, 2);
    let mut p = conn.queue_producer(&q);
    for i in 0..2_000u32 {
        p.send(format!("{i}").as_bytes()).unwrap();
    }
    p.flush().unwrap();
    let mut c = conn.consume(&q, 100).unwrap();
    for i in 0..2_000u32 {
        let d = c.receive(Some(RECV_TIMEOUT)).unwrap().expect("message");
        assert_eq!(text(&d), i.to_string());
        c.ack(&d).unwrap();
    }
}

const COMPETE_MESSAGES: u64 = 100_000;
const COMPETE_CONSUMERS: usize = 4;

/// 100,000 messages, four competing consumers on their own connections (so on both shards),
/// each acking: every message is received exactly once, and nothing is left afterwards.
#[test]
fn competing_consumers_exactly_once() {
    let server = Arc::new(Server::start(2));
    let q = name_on_shard("compete", 1, 2);
    server.connect().declare_queue(&q, &QueueOptions::default()).unwrap();

    let total = Arc::new(AtomicUsize::new(0));
    let ready = Arc::new(Barrier::new(COMPETE_CONSUMERS + 1));
    let mut threads = Vec::new();
    for _ in 0..COMPETE_CONSUMERS {
        let (server, q, total, ready) = (server.clone(), q.clone(), total.clone(), ready.clone());
        threads.push(std::thread::spawn(move || {
            let conn = server.connect();
            let mut c = conn.consume(&q, 256).unwrap();
            ready.wait();
            let mut ids = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(90);
            let mut grace_until: Option<Instant> = None;
            loop {
                // Once everything arrived somewhere, keep listening briefly: a duplicate shows up.
                if total.load(Ordering::SeqCst) >= COMPETE_MESSAGES as usize {
                    let g = *grace_until.get_or_insert_with(|| Instant::now() + QUIET);
                    if Instant::now() >= g {
                        break;
                    }
                }
                assert!(Instant::now() < deadline, "competing consumers stalled");
                let Some(d) = c.receive(Some(Duration::from_millis(100))).unwrap() else {
                    continue;
                };
                assert_eq!((d.delivery_count, d.redelivered), (1, false));
                let id: u64 = text(&d).strip_prefix("m-").unwrap().parse().unwrap();
                ids.push(id);
                c.ack(&d).unwrap();
                total.fetch_add(1, Ordering::SeqCst);
            }
            // Close flushes the last acks before cancelling.
            c.close().unwrap();
            ids
        }));
    }
    ready.wait();
    let conn = server.connect();
    let mut p = conn.queue_producer(&q);
    for i in 0..COMPETE_MESSAGES {
        p.send(format!("m-{i}").as_bytes()).unwrap();
    }
    p.flush().unwrap();

    let per: Vec<Vec<u64>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let mut seen = vec![0u8; COMPETE_MESSAGES as usize];
    for ids in &per {
        for &id in ids {
            seen[id as usize] += 1;
        }
    }
    let missing: Vec<usize> = (0..seen.len()).filter(|&i| seen[i] == 0).take(10).collect();
    let dups: Vec<usize> = (0..seen.len()).filter(|&i| seen[i] > 1).take(10).collect();
    assert!(missing.is_empty(), "missing (first 10): {missing:?}");
    assert!(dups.is_empty(), "duplicated (first 10): {dups:?}");
    let counts: Vec<usize> = per.iter().map(Vec::len).collect();
    assert_eq!(counts.iter().sum::<usize>(), COMPETE_MESSAGES as usize);
    assert!(counts.iter().all(|&n| n > 0), "a consumer got nothing: {counts:?}");

    // Every ack took effect: nothing is redelivered to a new consumer.
    let mut after = conn.consume(&q, 64).unwrap();
    let left = after.receive(Some(QUIET)).unwrap();
    assert!(left.is_none(), "acked message redelivered: {:?}", left.map(|d| text(&d)));
}

/// A `rdmq consume` process (no --ack) is SIGKILLed holding unacked messages: they go to the
/// next consumer flagged redelivered with delivery count 2, and nothing is lost.
#[test]
fn killed_cli_consumer_messages_are_redelivered() {
    let server = Server::start(2);
    common::transport::killed_consumer_redelivered(&server, &server.url, "tcp");
}

/// The same through a raw socket that is simply dropped mid-stream after some DELIVER frames.
#[test]
fn dropped_raw_consumer_messages_are_redelivered() {
    use rdmq_client::wire::{self, subscribe::Consume, Command};
    const N: usize = 12;
    let server = Server::start(1);
    let conn = server.connect();
    let mut p = conn.queue_producer("dropped");
    for i in 0..N {
        p.send(format!("d{i}").as_bytes()).unwrap();
    }
    p.flush().unwrap();

    let mut raw = server.raw();
    raw.hello();
    let mut out = Vec::new();
    Consume { id: 7, credit: 5, queue: "dropped" }.encode(&mut out, 2);
    raw.send(&out);
    let mut held = BTreeSet::new();
    while held.len() < 5 {
        let (h, body) = raw.read_frame(RECV_TIMEOUT).expect("a frame");
        match wire::decode(&h, &body).unwrap() {
            Command::Ok => {}
            Command::Deliver(d) => {
                assert_eq!(d.id, 7);
                for e in d.entries() {
                    held.insert(String::from_utf8(e.record.payload().to_vec()).unwrap());
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(held.len(), 5, "credit of 5 exceeded");
    drop(raw);

    let mut c = conn.consume("dropped", 100).unwrap();
    let got = recv_n(&mut c, N);
    let payloads: BTreeSet<String> = got.iter().map(text).collect();
    assert_eq!(payloads.len(), N, "duplicates or losses: {payloads:?}");
    for d in &got {
        let want = if held.contains(&text(d)) { (true, 2) } else { (false, 1) };
        assert_eq!((d.redelivered, d.delivery_count), want, "{}", text(d));
    }
}

/// Messages whose TTL passed are never delivered; the others are, in order.
#[test]
fn ttl_expired_messages_are_not_delivered() {
    for shards in [1, 2] {
        let server = Server::start(shards);
        let conn = server.connect();
        let q = name_on_shard("ttl", shards - 1, shards);
        let mut p = conn.queue_producer(&q);
        for i in 0..30 {
            let m = match i % 3 {
                0 => Message::new(format!("keep-{i}")),
                1 => Message::new(format!("short-{i}")).ttl_ms(50),
                _ => Message::new(format!("long-{i}")).ttl_ms(3_600_000),
            };
            p.send_message(&m).unwrap();
        }
        p.flush().unwrap();
        // Well past the short TTL; waiting longer can only expire more of the short ones.
        std::thread::sleep(Duration::from_millis(400));
        let mut c = conn.consume(&q, 64).unwrap();
        let mut got = Vec::new();
        while let Some(d) = c.receive(Some(QUIET)).unwrap() {
            got.push(text(&d));
            c.ack(&d).unwrap();
            assert!(got.len() <= 30, "more deliveries than messages");
        }
        let want: Vec<String> = (0..30)
            .filter(|i| i % 3 != 1)
            .map(|i| if i % 3 == 0 { format!("keep-{i}") } else { format!("long-{i}") })
            .collect();
        assert_eq!(got, want, "shards={shards}");
    }
}

/// Nacked past max_deliveries, a message moves to `<queue>.dlq`; a reject moves it at once.
#[test]
fn dead_letters_after_max_deliveries_and_on_reject() {
    let server = Server::start(2);
    let conn = server.connect();
    // A queue and its dead-letter queue on different shards.
    let q = (0..1000)
        .map(|i| format!("orders-{i}"))
        .find(|n| {
            rdmq::broker::owner_shard(n, 2) != rdmq::broker::owner_shard(&format!("{n}.dlq"), 2)
        })
        .unwrap();
    let dlq = format!("{q}.dlq");
    let opts = QueueOptions { max_deliveries: 2, ..Default::default() };
    conn.declare_queue(&q, &opts).unwrap();
    let mut p = conn.queue_producer(&q);
    p.send_message(&Message::new("poison").id(99).header("why", "bad")).unwrap();
    p.send(b"fine").unwrap();
    p.flush().unwrap();

    let mut c = conn.consume(&q, 1).unwrap();
    for round in 1..=2u32 {
        let d = c.receive(Some(RECV_TIMEOUT)).unwrap().expect("poison delivered");
        assert_eq!(text(&d), "poison");
        assert_eq!((d.delivery_count, d.redelivered), (round, round > 1));
        c.nack(&d).unwrap();
    }
    // The third delivery never happens: the next message is the good one.
    let d = c.receive(Some(RECV_TIMEOUT)).unwrap().expect("next message");
    assert_eq!(text(&d), "fine");
    c.ack(&d).unwrap();
    assert!(c.receive(Some(QUIET)).unwrap().is_none(), "poison came back to {q}");

    let other = server.connect();
    let mut dead = other.consume(&dlq, 8).unwrap();
    let d = dead.receive(Some(RECV_TIMEOUT)).unwrap().expect("poison in the dead-letter queue");
    assert_eq!(text(&d), "poison");
    assert_eq!(d.record().header.id, 99, "dead letters keep their record");
    assert_eq!(d.record().headers().collect::<Vec<_>>(), vec![("why", "bad")]);
    assert_eq!(d.delivery_count, 1, "counts start afresh in the dead-letter queue");
    dead.ack(&d).unwrap();

    // Reject: straight to the dead-letter queue on the first delivery.
    p.send(b"rejected").unwrap();
    p.flush().unwrap();
    let d = c.receive(Some(RECV_TIMEOUT)).unwrap().expect("to reject");
    assert_eq!((text(&d).as_str(), d.delivery_count), ("rejected", 1));
    c.reject(&d).unwrap();
    let d = dead.receive(Some(RECV_TIMEOUT)).unwrap().expect("rejected in the dead-letter queue");
    assert_eq!(text(&d), "rejected");
    dead.ack(&d).unwrap();
    assert!(c.receive(Some(QUIET)).unwrap().is_none(), "a rejected message was redelivered");
    assert!(dead.receive(Some(QUIET)).unwrap().is_none());
}

/// An explicit dead-letter queue name is honoured.
#[test]
fn dead_letters_go_to_named_queue() {
    let server = Server::start(2);
    let conn = server.connect();
    let opts =
        QueueOptions { max_deliveries: 1, dead_letter: "graveyard".into(), ..Default::default() };
    conn.declare_queue("work", &opts).unwrap();
    let mut p = conn.queue_producer("work");
    p.send(b"once").unwrap();
    p.flush().unwrap();
    let mut c = conn.consume("work", 1).unwrap();
    let d = c.receive(Some(RECV_TIMEOUT)).unwrap().unwrap();
    c.nack(&d).unwrap();
    let mut g = conn.consume("graveyard", 1).unwrap();
    let d = g.receive(Some(RECV_TIMEOUT)).unwrap().expect("in graveyard");
    assert_eq!(text(&d), "once");
    assert!(c.receive(Some(QUIET)).unwrap().is_none());
}

/// A consumer with credit 5 holds at most 5 unacked deliveries; each ack lets one more in.
#[test]
fn credit_limits_unacked_deliveries() {
    for shards in [1, 2] {
        let server = Server::start(shards);
        let conn = server.connect();
        let q = name_on_shard("credit", shards - 1, shards);
        let mut p = conn.queue_producer(&q);
        for i in 0..20 {
            p.send(format!("c{i}").as_bytes()).unwrap();
        }
        p.flush().unwrap();
        let mut c = conn.consume(&q, 5).unwrap();
        let first = recv_n(&mut c, 5);
        assert_eq!(first.iter().map(text).collect::<Vec<_>>(), ["c0", "c1", "c2", "c3", "c4"]);
        assert!(c.receive(Some(QUIET)).unwrap().is_none(), "a 6th delivery beyond credit 5");

        c.ack(&first[0]).unwrap();
        c.ack(&first[3]).unwrap();
        let more = recv_n(&mut c, 2);
        assert_eq!(more.iter().map(text).collect::<Vec<_>>(), ["c5", "c6"]);
        assert!(c.receive(Some(QUIET)).unwrap().is_none(), "credit exceeded after 2 acks");

        // ack_up_to settles c1, c2 and c4..c6 (c0 and c3 were already acked): 5 more fit.
        c.ack_up_to(&more[1]).unwrap();
        let rest = recv_n(&mut c, 5);
        assert_eq!(rest.iter().map(text).collect::<Vec<_>>(), ["c7", "c8", "c9", "c10", "c11"]);
        assert!(c.receive(Some(QUIET)).unwrap().is_none(), "credit exceeded after ack_up_to");

        // A nack hands the credit back too, and the message comes again.
        c.nack(&rest[0]).unwrap();
        let again = c.receive(Some(RECV_TIMEOUT)).unwrap().expect("redelivery");
        assert_eq!(
            (text(&again).as_str(), again.delivery_count, again.redelivered),
            ("c7", 2, true)
        );
        assert!(c.receive(Some(QUIET)).unwrap().is_none(), "credit exceeded after nack");

        // Two consumers on one connection each get their own credit.
        let mut c2 = conn.consume(&q, 2).unwrap();
        let two = recv_n(&mut c2, 2);
        assert_eq!(two.iter().map(text).collect::<Vec<_>>(), ["c12", "c13"]);
        assert!(c2.receive(Some(QUIET)).unwrap().is_none(), "second consumer exceeded credit 2");
    }
}

#[test]
fn browse_reads_without_consuming_and_pages_by_position() {
    let server = Server::start(2);
    let q = name_on_shard("browse", 1, 2);
    let conn = server.connect();
    let mut p = conn.queue_producer(&q);
    for n in 0..10 {
        p.send(format!("m{n}").as_bytes()).unwrap();
    }
    p.flush().unwrap();
    // Three delivered and held unacknowledged: browsing still shows them, in position order.
    let mut c = conn.consume(&q, 3).unwrap();
    let held = recv_n(&mut c, 3);
    let mut c2 = None;
    let all = conn.browse(&q, 0, 100).unwrap();
    let got: Vec<(u64, String)> = all.iter().map(|d| (d.tag, text(d))).collect();
    let want: Vec<(u64, String)> = (0..10).map(|n| (n, format!("m{n}"))).collect();
    assert_eq!(got, want);
    let page: Vec<u64> = conn.browse(&q, 5, 2).unwrap().iter().map(|d| d.tag).collect();
    assert_eq!(page, vec![5, 6]);
    // Browsing consumed nothing: acking the three and draining the rest sees all ten once.
    for d in &held {
        c.ack(d).unwrap();
    }
    c.close().unwrap();
    let c = c2.insert(conn.consume(&q, 10).unwrap());
    let rest = recv_n(c, 7);
    assert_eq!(
        rest.iter().map(text).collect::<Vec<_>>(),
        (3..10).map(|n| format!("m{n}")).collect::<Vec<_>>()
    );
    for d in &rest {
        c.ack(d).unwrap();
    }
    c2.take().unwrap().close().unwrap();
    assert!(conn.browse(&q, 0, 100).unwrap().is_empty());
    assert_eq!(conn.browse("never.declared", 0, 1).unwrap_err().code(), Some(404));
}
