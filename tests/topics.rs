//! Topics end to end: fan-out to wildcard subscribers across shards, and the slow-subscriber
//! policies (disconnect, drop oldest) with a subscriber that stops reading.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::*;
use rdmq_client::{Error, Subscription};

const TOPICS: [&str; 6] = [
    "orders",
    "orders.created",
    "orders.created.eu",
    "orders.shipped",
    "payments.created",
    "orders.created.us.west",
];
const PER_TOPIC: usize = 5;

/// Which of [`TOPICS`] each pattern must receive (checked against the matcher's rules by hand).
fn expected(pattern: &str) -> Vec<&'static str> {
    let want: &[&str] = match pattern {
        "orders.*" => &["orders.created", "orders.shipped"],
        "orders.#" => &[
            "orders",
            "orders.created",
            "orders.created.eu",
            "orders.shipped",
            "orders.created.us.west",
        ],
        "#.created" => &["orders.created", "payments.created"],
        "orders.*.us" => &[],
        _ => unreachable!(),
    };
    want.to_vec()
}

/// Receives until `n` messages arrived, then checks that nothing more comes.
fn take_exactly(s: &mut Subscription, n: usize, who: &str) -> Vec<String> {
    let got: Vec<String> = recv_n_sub(s, n).iter().map(text).collect();
    if let Some(extra) = s.receive(Some(QUIET)).unwrap() {
        panic!("{who}: unexpected extra message {:?}", text(&extra));
    }
    got
}

fn fan_out(shards: usize) {
    let server = Server::start(shards);
    let patterns = ["orders.*", "orders.#", "#.created", "orders.*.us"];
    // Subscribers spread over the shards, each on its own connection.
    let conns: Vec<_> =
        (0..patterns.len()).map(|i| server.connect_on_shard((i % shards) as u16)).collect();
    let mut subs: Vec<Subscription> =
        conns.iter().zip(patterns).map(|(c, p)| c.subscribe(p).unwrap()).collect();
    // A second, overlapping subscription on the first connection gets its own copy.
    let mut overlap = conns[0].subscribe("orders.created").unwrap();

    // Two publishers, one per shard, so matching runs on both shards' subscription replicas.
    let publishers: Vec<_> =
        (0..shards.max(2)).map(|i| server.connect_on_shard((i % shards) as u16)).collect();
    for (pi, pc) in publishers.iter().enumerate() {
        for t in TOPICS {
            let mut p = pc.topic_producer(t);
            for k in 0..PER_TOPIC {
                p.send(format!("{t}|p{pi}|{k}").as_bytes()).unwrap();
            }
            p.flush().unwrap();
        }
    }
    let npub = publishers.len();

    for (s, pat) in subs.iter_mut().zip(patterns) {
        let want_topics = expected(pat);
        let got = take_exactly(s, want_topics.len() * PER_TOPIC * npub, pat);
        let mut by_topic: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
        for m in &got {
            let parts: Vec<&str> = m.split('|').collect();
            by_topic
                .entry((parts[0].into(), parts[1].into()))
                .or_default()
                .push(parts[2].parse().unwrap());
        }
        let topics: BTreeSet<&str> = by_topic.keys().map(|(t, _)| t.as_str()).collect();
        assert_eq!(topics, want_topics.iter().copied().collect(), "{pat}: topics received");
        for ((t, p), ks) in by_topic {
            // Publication order per publisher per topic, nothing lost or doubled.
            assert_eq!(ks, (0..PER_TOPIC).collect::<Vec<_>>(), "{pat}: {t} from {p}");
        }
    }
    let got = take_exactly(&mut overlap, PER_TOPIC * npub, "overlap");
    assert!(got.iter().all(|m| m.starts_with("orders.created|")));

    // Subscription deliveries carry no tag and are first deliveries.
    let mut again = publishers[0].topic_producer("orders.shipped");
    again.send(b"last").unwrap();
    again.flush().unwrap();
    let d = subs[0].receive(Some(RECV_TIMEOUT)).unwrap().expect("last");
    assert_eq!((d.tag, d.delivery_count, d.redelivered), (0, 1, false));

    // After unsubscribing, nothing more arrives for that subscription; the others still get it.
    let mut gone = subs.remove(1);
    assert_eq!(text(&gone.receive(Some(RECV_TIMEOUT)).unwrap().expect("last for #")), "last");
    gone.close().unwrap();
    again.send(b"after").unwrap();
    again.flush().unwrap();
    assert_eq!(text(&subs[0].receive(Some(RECV_TIMEOUT)).unwrap().expect("after")), "after");
    let mut probe = conns[1].subscribe("orders.shipped").unwrap();
    assert!(probe.receive(Some(QUIET)).unwrap().is_none(), "subscribed late, got an old message");
}

#[test]
fn fan_out_with_wildcards_one_shard() {
    fan_out(1);
}

#[test]
fn fan_out_with_wildcards_two_shards() {
    fan_out(2);
}

/// Publishing to a topic nobody subscribed to is confirmed and goes nowhere; bad names fail.
#[test]
fn topic_publish_without_subscribers_and_bad_names() {
    let server = Server::start(2);
    let conn = server.connect();
    let mut p = conn.topic_producer("nobody.listens");
    p.send(b"void").unwrap();
    p.flush().unwrap();
    let mut bad = conn.topic_producer("has.*.wildcard");
    bad.send(b"x").unwrap();
    let e = bad.flush().unwrap_err();
    assert_eq!(e.code(), Some(rdmq_client::error_code::INVALID_ARGUMENT), "{e}");
    let e = conn.subscribe("a.b*").err().expect("bad pattern refused");
    assert_eq!(e.code(), Some(rdmq_client::error_code::INVALID_ARGUMENT), "{e}");
    let e = conn.subscribe("a..b").err().expect("empty word refused");
    assert_eq!(e.code(), Some(rdmq_client::error_code::INVALID_ARGUMENT), "{e}");
    // The connection is still usable after refused requests.
    conn.ping().unwrap();
    server.assert_serves();
}

/// Topic messages of this size fill socket buffers quickly.
const SLOW_PAYLOAD: usize = 16 << 10;
const SLOW_CONFIG: &str = "subscriber_buffer_max = 32\nconn_output_high_water = 262144\n";

/// Bytes to publish so that a subscriber that never reads must overflow: more than the kernel
/// can hold for it on both ends, plus the server's own bounded buffers, with room to spare.
fn flood_bytes() -> usize {
    let max_of = |path: &str| -> usize {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.split_whitespace().last().and_then(|v| v.parse().ok()))
            .unwrap_or(8 << 20)
    };
    max_of("/proc/sys/net/ipv4/tcp_rmem") + max_of("/proc/sys/net/ipv4/tcp_wmem") + (16 << 20)
}

/// Publishes numbered messages to `topic` until `bytes` were sent. Returns how many.
fn flood(conn: &rdmq_client::Connection, topic: &str, bytes: usize) -> u64 {
    let mut p = conn.topic_producer(topic);
    let mut payload = vec![b'.'; SLOW_PAYLOAD];
    let n = bytes.div_ceil(SLOW_PAYLOAD) as u64;
    for i in 0..n {
        payload[..8].copy_from_slice(&i.to_le_bytes());
        p.send(&payload).unwrap();
        if i % 64 == 63 {
            p.flush().unwrap();
        }
    }
    p.flush().unwrap();
    n
}

fn seq(d: &rdmq_client::Delivery) -> u64 {
    u64::from_le_bytes(d.payload()[..8].try_into().unwrap())
}

/// While the stuck subscriber holds its place, another client publishes, subscribes and
/// consumes normally.
fn assert_others_unaffected(server: &Server) {
    server.assert_serves();
    let conn = server.connect();
    let mut s = conn.subscribe("other.topic").unwrap();
    let mut p = server.connect().topic_producer("other.topic");
    let deadline = Instant::now() + RECV_TIMEOUT;
    // Publish until the subscription is visible to the publisher's shard.
    loop {
        p.send(b"hi").unwrap();
        p.flush().unwrap();
        if let Some(d) = s.receive(Some(Duration::from_millis(100))).unwrap() {
            assert_eq!(d.payload(), b"hi");
            break;
        }
        assert!(Instant::now() < deadline, "healthy subscriber got nothing");
    }
}

#[test]
fn slow_subscriber_is_disconnected() {
    let mut server =
        Server::start_with(2, &format!("{SLOW_CONFIG}slow_subscriber_policy = \"disconnect\"\n"));
    let slow_conn = server.connect_on_shard(0);
    let mut slow = slow_conn.subscribe("feed.#").unwrap();
    // The publisher sits on the other shard: deliveries cross the mailboxes.
    let n = flood(&server.connect_on_shard(1), "feed.data", flood_bytes());
    assert_others_unaffected(&server);

    // Now read: a gap-free run of the feed, then the 503 error and the close. (Nothing is
    // dropped before a disconnect; the run starts at 0 unless the first publishes raced the
    // subscription's arrival on the publisher's shard.)
    let mut got = 0u64;
    let mut first = None;
    let err = loop {
        match slow.receive(Some(RECV_TIMEOUT)) {
            Ok(Some(d)) => {
                let first = *first.get_or_insert(seq(&d));
                assert_eq!(seq(&d), first + got, "a gap before the disconnect");
                got += 1;
                assert!(got <= n);
            }
            Ok(None) => panic!("no disconnect after {got} of {n} messages"),
            Err(e) => break e,
        }
    };
    assert!(got < n, "the slow subscriber received everything ({n}): no overflow happened");
    // The ERROR (503) follows the backlog. If the test was slower to start reading than the
    // server's close linger, the server shut the socket without it: still a disconnect, and the
    // counter below says why.
    match &err {
        Error::Closed(why) if why.contains("server error") => {
            assert!(why.contains("503"), "close reason: {why}")
        }
        Error::Closed(_) | Error::Io(_) => {}
        other => panic!("expected the connection to be closed, got {other}"),
    }
    assert_others_unaffected(&server);
    let log = server.stop();
    assert_eq!(Server::counter(&log, "slow_disconnects"), 1, "log:\n{log}");
    assert_eq!(Server::counter(&log, "topic_dropped"), 0, "log:\n{log}");
}

#[test]
fn slow_subscriber_drops_oldest_and_stays_connected() {
    let mut server =
        Server::start_with(2, &format!("{SLOW_CONFIG}slow_subscriber_policy = \"drop_oldest\"\n"));
    let slow_conn = server.connect_on_shard(1);
    let mut slow = slow_conn.subscribe("feed.#").unwrap();
    let n = flood(&server.connect_on_shard(0), "feed.data", flood_bytes());
    assert_others_unaffected(&server);

    // Read everything that is left, then a final marker proves the connection still works.
    let end_conn = server.connect();
    let mut end = end_conn.topic_producer("feed.end");
    end.send(b"end").unwrap();
    end.flush().unwrap();
    let mut got = 0u64;
    let mut last: Option<u64> = None;
    loop {
        let d = slow.receive(Some(RECV_TIMEOUT)).expect("still connected").expect("the end marker");
        if d.payload() == b"end" {
            break;
        }
        let s = seq(&d);
        assert!(last.is_none_or(|l| s > l), "order broken: {s} after {last:?}");
        last = Some(s);
        got += 1;
        assert!(got <= n, "more messages than published");
    }
    assert!(got < n, "nothing was dropped for a subscriber that did not read ({n} published)");
    assert_eq!(last, Some(n - 1), "the newest message survives drop_oldest");
    let log = server.stop();
    assert_eq!(Server::counter(&log, "slow_disconnects"), 0, "log:\n{log}");
    assert!(Server::counter(&log, "topic_dropped") > 0, "log:\n{log}");
}

/// SUBSCRIBE's OK means every shard matches the subscription: a publish right after it, on a
/// connection that another shard owns, is delivered. (Before the server fenced the broadcast,
/// about one in a thousand of these was lost on a loaded machine.)
#[test]
fn subscribe_ok_means_every_shard_matches() {
    let server = Server::start(2);
    let sub_conn = server.connect_on_shard(0);
    let pub_conn = server.connect_on_shard(1);
    for i in 0..300 {
        let topic = format!("fence.t{i}");
        let mut s = sub_conn.subscribe(&topic).unwrap();
        let mut p = pub_conn.topic_producer(&topic);
        p.send(b"x").unwrap();
        p.flush().unwrap();
        let got = s.receive(Some(RECV_TIMEOUT)).unwrap();
        assert!(got.is_some(), "publish {i} right after SUBSCRIBE's OK was not delivered");
        s.close().unwrap();
    }
    let mut probe = sub_conn.subscribe("fence.done").unwrap();
    let mut p = pub_conn.topic_producer("fence.done");
    p.send(b"done").unwrap();
    p.flush().unwrap();
    assert_eq!(text(&probe.receive(Some(RECV_TIMEOUT)).unwrap().unwrap()), "done");
}

/// A durable subscription is a queue bound to a pattern: what is published while its consumer is
/// away waits for it, across a server restart, and what it acknowledged stays acknowledged.
#[test]
fn durable_subscription_keeps_messages_while_away_and_across_restart() {
    let mut server = Server::start(2);
    let name = name_on_shard("audit", 1, 2);
    {
        let conn = server.connect();
        let mut sub = conn.durable_subscribe(&name, "news.#", 16).unwrap();
        let mut p = conn.topic_producer("news.eu");
        p.send(b"first").unwrap();
        p.flush().unwrap();
        let d = sub.receive(Some(RECV_TIMEOUT)).unwrap().expect("first");
        assert_eq!(d.payload(), b"first");
        sub.ack(&d).unwrap();
        sub.close().unwrap();
    }
    // Away: three more on matching topics, one on a topic that does not match.
    {
        let conn = server.connect();
        for (topic, body) in
            [("news.eu", "a"), ("news.us.east", "b"), ("sport.eu", "x"), ("news", "c")]
        {
            let mut p = conn.topic_producer(topic);
            p.send(body.as_bytes()).unwrap();
            p.flush().unwrap();
        }
    }
    // A topic confirm waits for the bound queues' copies: they survive a crash right after.
    server.kill9();
    server.restart();
    let conn = server.connect();
    let mut sub = conn.durable_subscribe(&name, "news.#", 16).unwrap();
    let got: Vec<String> = recv_n(&mut sub, 3).iter().map(text).collect();
    assert_eq!(got, vec!["a", "b", "c"], "the acknowledged 'first' never returns, 'x' never came");
    assert!(sub.receive(Some(QUIET)).unwrap().is_none());
    // The binding itself survived the restart: new messages keep arriving.
    let mut p = conn.topic_producer("news.eu");
    p.send(b"after").unwrap();
    p.flush().unwrap();
    assert_eq!(sub.receive(Some(RECV_TIMEOUT)).unwrap().expect("after").payload(), b"after");
    // Unbinding stops the flow; deleting the queue ends the subscription.
    conn.unbind(&name, "news.#").unwrap();
    p.send(b"unbound").unwrap();
    p.flush().unwrap();
    let late = sub.receive(Some(QUIET)).unwrap();
    assert!(late.is_none(), "unbound queue still received {:?}", late.map(|d| text(&d)));
}

/// A durable subscription whose queue is full loses the copy (as a slow topic subscriber
/// does, counted in `topic_dropped`); the publisher is not failed for it.
#[test]
fn a_full_bound_queue_drops_the_copy_not_the_publish() {
    let mut server = Server::start(2);
    let conn = server.connect();
    let opts = rdmq_client::QueueOptions { max_length: 1, ..Default::default() };
    conn.declare_queue("tiny-sub", &opts).unwrap();
    conn.bind("tiny-sub", "gauge.#").unwrap();
    let mut p = conn.topic_producer("gauge.level");
    p.send(b"1").unwrap();
    p.flush().expect("the first copy fits");
    p.send(b"2").unwrap();
    p.flush().expect("the publish succeeds; the copy that does not fit is dropped");
    let held: Vec<String> = conn.browse("tiny-sub", 0, 10).unwrap().iter().map(text).collect();
    assert_eq!(held, ["1"]);
    drop(conn);
    assert_eq!(Server::counter(&server.stop(), "topic_dropped"), 1);
}
