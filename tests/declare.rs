//! Declaring and deleting destinations, and the errors a client can act on: durability levels
//! that need the journal, conflicting redeclarations (406), unknown names (404), full queues
//! (429) and a server with `auto_create = false`.

mod common;

use common::*;
use rdmq_client::error_code as code;
use rdmq_client::{Durability, Error, QueueOptions};

fn server_code(r: Result<(), Error>) -> (u16, String) {
    match r {
        Err(Error::Server { code, message }) => (code, message),
        other => panic!("expected a server error, got {other:?}"),
    }
}

#[test]
fn every_durability_level_declares_and_only_journalled_ones_survive_a_restart() {
    let mut server = Server::start(2);
    let levels = [Durability::Memory, Durability::Flush, Durability::Fsync];
    {
        let conn = server.connect();
        for (i, durability) in levels.into_iter().enumerate() {
            let q = name_on_shard(&format!("level-{}", durability.as_str()), i % 2, 2);
            conn.declare_queue(&q, &QueueOptions { durability, ..Default::default() }).unwrap();
            let mut p = conn.queue_producer(&q);
            p.send(durability.as_str().as_bytes()).unwrap();
            p.flush().unwrap();
        }
    }
    server.stop();
    server.restart();
    let conn = server.connect();
    for (i, durability) in levels.into_iter().enumerate() {
        let q = name_on_shard(&format!("level-{}", durability.as_str()), i % 2, 2);
        let mut c = conn.consume(&q, 4).unwrap();
        let got = c.receive(Some(QUIET)).unwrap();
        match durability {
            Durability::Memory => assert!(got.is_none(), "a memory queue is empty after restart"),
            _ => {
                let d = got.unwrap_or_else(|| panic!("{q}: message lost across restart"));
                assert_eq!(d.payload(), durability.as_str().as_bytes());
                assert!(d.redelivered, "recovered messages may have been delivered before");
            }
        }
    }
}

#[test]
fn redeclare_with_different_options_is_precondition_failed() {
    let server = Server::start(2);
    let conn = server.connect();
    for shard in 0..2 {
        let q = name_on_shard("redeclare", shard, 2);
        let opts = QueueOptions { max_deliveries: 3, max_length: 100, ..Default::default() };
        conn.declare_queue(&q, &opts).unwrap();
        conn.declare_queue(&q, &opts).expect("an identical redeclaration is fine");
        let variants = [
            QueueOptions { max_deliveries: 4, ..opts.clone() },
            QueueOptions { max_length: 101, ..opts.clone() },
            QueueOptions { dead_letter: "elsewhere".into(), ..opts.clone() },
            // Zeros mean the server's defaults, which differ from what was declared.
            QueueOptions::default(),
        ];
        for v in variants {
            let (c, msg) = server_code(conn.declare_queue(&q, &v));
            assert_eq!(c, code::PRECONDITION_FAILED, "{v:?}: {msg}");
            assert!(msg.contains("different options"), "{msg}");
        }
        // The original options still hold: max_deliveries 3 means three deliveries, then the DLQ.
        let mut p = conn.queue_producer(&q);
        p.send(b"m").unwrap();
        p.flush().unwrap();
        let mut c = conn.consume(&q, 1).unwrap();
        for round in 1..=3 {
            let d = c.receive(Some(RECV_TIMEOUT)).unwrap().expect("delivery");
            assert_eq!(d.delivery_count, round);
            c.nack(&d).unwrap();
        }
        assert!(c.receive(Some(QUIET)).unwrap().is_none(), "a 4th delivery: options changed");
    }
    // An auto-created queue has the defaults: redeclaring it with them is fine, and naming its
    // implicit dead-letter queue explicitly is the same declaration.
    let mut p = conn.queue_producer("auto");
    p.send(b"x").unwrap();
    p.flush().unwrap();
    conn.declare_queue("auto", &QueueOptions::default()).unwrap();
    let same = QueueOptions { dead_letter: "auto.dlq".into(), ..Default::default() };
    conn.declare_queue("auto", &same).unwrap();
    let other = QueueOptions { dead_letter: "auto.other".into(), ..Default::default() };
    assert_eq!(server_code(conn.declare_queue("auto", &other)).0, code::PRECONDITION_FAILED);
    // A queue cannot be its own dead-letter queue.
    let selfish = QueueOptions { dead_letter: "loop".into(), ..Default::default() };
    assert_eq!(server_code(conn.declare_queue("loop", &selfish)).0, code::INVALID_ARGUMENT);
}

#[test]
fn delete_errors() {
    let server = Server::start(2);
    let conn = server.connect();
    for shard in 0..2 {
        let q = name_on_shard("gone", shard, 2);
        let (c, msg) = server_code(conn.delete_queue(&q));
        assert_eq!(c, code::NOT_FOUND, "{msg}");
        assert!(msg.contains(&q), "the error names the queue: {msg}");

        conn.declare_queue(&q, &QueueOptions::default()).unwrap();
        let consumer = conn.consume(&q, 1).unwrap();
        let (c, msg) = server_code(conn.delete_queue(&q));
        assert_eq!(c, code::PRECONDITION_FAILED, "a queue with consumers: {msg}");
        consumer.close().unwrap();
        conn.delete_queue(&q).unwrap();
        assert_eq!(server_code(conn.delete_queue(&q)).0, code::NOT_FOUND, "deleted twice");
    }
    conn.ping().unwrap();
}

#[test]
fn full_queue_refuses_the_whole_batch() {
    let server = Server::start(2);
    let conn = server.connect();
    let q = name_on_shard("small", 1, 2);
    conn.declare_queue(&q, &QueueOptions { max_length: 3, ..Default::default() }).unwrap();
    let mut p = conn.queue_producer(&q);
    for i in 0..5 {
        p.send(format!("{i}").as_bytes()).unwrap();
    }
    let e = p.flush().unwrap_err();
    assert_eq!(e.code(), Some(code::RESOURCE_LIMIT), "{e}");
    let mut c = conn.consume(&q, 8).unwrap();
    assert!(c.receive(Some(QUIET)).unwrap().is_none(), "part of a refused batch was stored");
    // Room again for a batch that fits.
    for i in 0..3 {
        p.send(format!("{i}").as_bytes()).unwrap();
    }
    p.flush().unwrap();
    assert_eq!(recv_n(&mut c, 3).iter().map(text).collect::<Vec<_>>(), ["0", "1", "2"]);
}

#[test]
fn auto_create_off_refuses_unknown_destinations() {
    let server = Server::start_with(2, "auto_create = false\n");
    let conn = server.connect();
    for shard in 0..2 {
        let q = name_on_shard("ghost", shard, 2);
        let mut p = conn.queue_producer(&q);
        p.send(b"boo").unwrap();
        let e = p.flush().unwrap_err();
        assert_eq!(e.code(), Some(code::NOT_FOUND), "{e}");
        assert!(e.to_string().contains("auto_create"), "the error says why: {e}");
        let e = conn.consume(&q, 1).err().expect("consume of an unknown queue");
        assert_eq!(e.code(), Some(code::NOT_FOUND), "{e}");

        // Declared, it works.
        conn.declare_queue(&q, &QueueOptions { max_deliveries: 1, ..Default::default() }).unwrap();
        p.send(b"real").unwrap();
        p.flush().unwrap();
        let mut c = conn.consume(&q, 1).unwrap();
        let d = c.receive(Some(RECV_TIMEOUT)).unwrap().expect("delivery");
        assert_eq!(d.payload(), b"real");
        // Dead-letter queues are created even so, or dead letters would be lost.
        c.nack(&d).unwrap();
        let dlq = format!("{q}.dlq");
        let deadline = std::time::Instant::now() + RECV_TIMEOUT;
        let mut dead = loop {
            match conn.consume(&dlq, 1) {
                Ok(c) => break c,
                Err(e) if e.code() == Some(code::NOT_FOUND) => {
                    assert!(std::time::Instant::now() < deadline, "{dlq} never created");
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => panic!("{e}"),
            }
        };
        let d = dead.receive(Some(RECV_TIMEOUT)).unwrap().expect("dead letter");
        assert_eq!(d.payload(), b"real");
    }

    // Topics: publishing to an undeclared one fails; once declared, every shard accepts it
    // (DECLARE_TOPIC's OK comes after every shard applied it).
    let other_shard = server.connect_on_shard(1 - conn.shard().0);
    let mut p = other_shard.topic_producer("news.sport");
    p.send(b"goal").unwrap();
    assert_eq!(p.flush().unwrap_err().code(), Some(code::NOT_FOUND));
    for i in 0..50 {
        let t = format!("news.n{i}");
        conn.declare_topic(&t).unwrap();
        let mut p = other_shard.topic_producer(&t);
        p.send(b"ok").unwrap();
        p.flush().unwrap_or_else(|e| panic!("{t} declared but refused on the other shard: {e}"));
        conn.delete_topic(&t).unwrap();
        p.send(b"late").unwrap();
        let e = p.flush().unwrap_err();
        assert_eq!(e.code(), Some(code::NOT_FOUND), "{t} deleted but accepted: {e}");
    }
    assert_eq!(
        conn.declare_topic("bad.*").err().and_then(|e| e.code()),
        Some(code::INVALID_ARGUMENT)
    );
    server.assert_serves();
}
