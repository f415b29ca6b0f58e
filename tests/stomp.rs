//! The STOMP gateway against the real server, over raw sockets: every case the third-party
//! suite (`interop/stomp`) covers that needs exact bytes or server internals — malformed frames,
//! receipts ordered behind confirms, the request window, heart-beat enforcement, interop with
//! native clients, durability across `kill -9`.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use rdmq::gateway::stomp::{decode, Command, Frame, Limits};
use rdmq_client::Message;

struct Stomp {
    s: TcpStream,
    buf: Vec<u8>,
    /// Heart-beat EOLs seen between frames.
    beats: usize,
}

enum Next {
    Frame(Frame),
    Timeout,
    Closed,
}

impl Stomp {
    fn raw(server: &Server) -> Stomp {
        let s = TcpStream::connect(server.stomp).expect("connect to STOMP port");
        s.set_nodelay(true).unwrap();
        Stomp { s, buf: Vec::new(), beats: 0 }
    }

    /// Connected with `accept-version: version`; returns the CONNECTED frame too.
    fn open_version(server: &Server, version: &str, extra: &[(&str, &str)]) -> (Stomp, Frame) {
        let mut c = Stomp::raw(server);
        let mut f =
            Frame::new(Command::Connect).header("accept-version", version).header("host", "/");
        for (k, v) in extra {
            f = f.header(k, *v);
        }
        c.send(&f);
        let connected = c.expect(Command::Connected);
        (c, connected)
    }

    fn open(server: &Server) -> Stomp {
        Stomp::open_version(server, "1.2", &[]).0
    }

    fn send(&mut self, f: &Frame) {
        let mut out = Vec::new();
        f.encode(&mut out);
        self.write(&out);
    }

    fn write(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).expect("write to server");
    }

    fn next(&mut self, wait: Duration) -> Next {
        let deadline = Instant::now() + wait;
        loop {
            match decode(&self.buf, &Limits { body_bytes_max: 64 << 20, ..Limits::default() }) {
                Ok(Some((f, n))) => {
                    self.buf.drain(..n);
                    match f {
                        Some(f) => return Next::Frame(f),
                        None => {
                            self.beats += 1;
                            continue;
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => panic!("server sent a malformed frame: {e}"),
            }
            match read_some(&mut self.s, &mut self.buf, deadline) {
                Some(true) => {}
                Some(false) => return Next::Timeout,
                None => return Next::Closed,
            }
        }
    }

    fn expect(&mut self, cmd: Command) -> Frame {
        match self.next(RECV_TIMEOUT) {
            Next::Frame(f) if f.command == cmd => f,
            Next::Frame(f) => panic!("expected {cmd:?}, got {f:?}"),
            Next::Timeout => panic!("no {cmd:?} within {RECV_TIMEOUT:?}"),
            Next::Closed => panic!("connection closed while waiting for {cmd:?}"),
        }
    }

    fn expect_any(&mut self) -> Frame {
        match self.next(RECV_TIMEOUT) {
            Next::Frame(f) => f,
            _ => panic!("no frame within {RECV_TIMEOUT:?}"),
        }
    }

    fn receipt(&mut self, id: &str) {
        let f = self.expect(Command::Receipt);
        assert_eq!(f.get("receipt-id"), Some(id));
    }

    /// Expects an ERROR frame and then the close; returns the ERROR.
    fn expect_error_and_close(&mut self) -> Frame {
        let err = self.expect(Command::Error);
        assert!(
            err.get("message").is_some_and(|m| !m.is_empty()),
            "ERROR without message: {err:?}"
        );
        match self.next(RECV_TIMEOUT) {
            Next::Closed => err,
            Next::Frame(f) => panic!("a frame after ERROR: {f:?}"),
            Next::Timeout => panic!("connection left open after ERROR"),
        }
    }

    fn nothing_more(&mut self) {
        if let Next::Frame(f) = self.next(QUIET) {
            panic!("unexpected frame {f:?}");
        }
    }

    fn subscribe(&mut self, id: &str, dest: &str, ack: &str) {
        let f = Frame::new(Command::Subscribe)
            .header("id", id)
            .header("destination", dest)
            .header("ack", ack)
            .header("receipt", format!("sub-{id}"));
        self.send(&f);
        self.receipt(&format!("sub-{id}"));
    }

    fn send_to(&mut self, dest: &str, body: &[u8], receipt: Option<&str>) {
        let mut f = Frame::new(Command::Send).header("destination", dest);
        if let Some(r) = receipt {
            f = f.header("receipt", r);
        }
        self.send(&f.body(body));
        if let Some(r) = receipt {
            self.receipt(r);
        }
    }

    fn ack(&mut self, msg: &Frame, nack: bool) {
        let cmd = if nack { Command::Nack } else { Command::Ack };
        self.send(&Frame::new(cmd).header("id", msg.get("ack").expect("ack header")));
    }

    fn messages(&mut self, n: usize) -> Vec<Frame> {
        (0..n).map(|_| self.expect(Command::Message)).collect()
    }
}

fn bodies(frames: &[Frame]) -> Vec<String> {
    frames.iter().map(|f| String::from_utf8_lossy(&f.body).into_owned()).collect()
}

#[test]
fn each_version_connects_and_round_trips_binary_bodies() {
    let server = Server::start(2);
    for version in ["1.0", "1.1", "1.2"] {
        let (mut c, connected) = Stomp::open_version(&server, version, &[]);
        assert_eq!(connected.get("version"), Some(version));
        assert!(connected.get("server").is_some_and(|s| s.starts_with("rdmq/")));
        let q = format!("/queue/v{}", version.replace('.', ""));
        let body = [b'x', 0, 0xff, 0, b'\n', b'y'];
        c.send_to(&q, &body, Some("r1"));
        c.subscribe("s1", &q, "auto");
        let m = c.expect(Command::Message);
        assert_eq!(m.body, body, "{version}: NULs survive via content-length");
        assert_eq!(m.get("destination"), Some(q.as_str()));
        assert_eq!(m.get("subscription"), Some("s1"));
        assert!(m.get("message-id").is_some());
    }
    // A STOMP frame without `host` (stomp.py's default connection) is accepted.
    let mut c = Stomp::raw(&server);
    c.send(&Frame::new(Command::Stomp).header("accept-version", "1.1"));
    assert_eq!(c.expect(Command::Connected).get("version"), Some("1.1"));
    // A 1.2 header with an EOL reaches a 1.0 subscriber as one header, not an early body.
    let (mut old, _) = Stomp::open_version(&server, "1.0", &[]);
    old.subscribe("s", "/queue/to-1-0", "auto");
    let mut new = Stomp::open(&server);
    new.send(
        &Frame::new(Command::Send)
            .header("destination", "/queue/to-1-0")
            .header("note", "a\n\nINJECTED")
            .body("real"),
    );
    let m = old.expect(Command::Message);
    assert_eq!((m.get("note"), m.body.as_slice()), (Some("a  INJECTED"), &b"real"[..]));
    // Nothing in common: an ERROR naming both sides, then the close.
    let mut c = Stomp::raw(&server);
    c.send(&Frame::new(Command::Connect).header("accept-version", "2.0"));
    let e = c.expect_error_and_close();
    assert!(e.get("message").unwrap().contains("version"), "{e:?}");
    assert_eq!(e.get("version"), Some("1.0,1.1,1.2"), "the versions the server speaks");
}

#[test]
fn headers_pass_through_escaped_and_to_native_clients() {
    let server = Server::start(2);
    let mut c = Stomp::open(&server);
    c.subscribe("s", "/queue/h", "auto");
    let f = Frame::new(Command::Send)
        .header("destination", "/queue/h")
        .header("weird:key", "a:b\nc\\d")
        .header("greeting", "ünïcødé ✓")
        .header("reply-to", "/queue/replies")
        .header("correlation-id", "c-1")
        .body("x");
    c.send(&f);
    let m = c.expect(Command::Message);
    assert_eq!(m.get("weird:key"), Some("a:b\nc\\d"));
    assert_eq!(m.get("greeting"), Some("ünïcødé ✓"));
    assert_eq!(m.get("reply-to"), Some("/queue/replies"));
    assert_eq!(m.get("correlation-id"), Some("c-1"));

    // STOMP → native: the same headers in the record.
    let conn = server.connect();
    let mut consumer = conn.consume("to-native", 8).unwrap();
    let mut f2 = f.clone();
    f2.headers.retain(|(k, _)| k != "destination");
    c.send(&f2.header("destination", "/queue/to-native").body("for native"));
    let d = recv_n(&mut consumer, 1).remove(0);
    assert_eq!(d.payload(), b"for native");
    let rec = d.record();
    let headers: Vec<(&str, &str)> = rec.headers().collect();
    assert!(headers.contains(&("greeting", "ünïcødé ✓")), "{headers:?}");
    assert_eq!(rec.reply_to(), b"/queue/replies");
    assert_eq!(rec.correlation_id(), b"c-1");

    // native → STOMP, queue and topic.
    let mut p = conn.queue_producer("from-native");
    c.subscribe("n", "/queue/from-native", "client-individual");
    p.send_message(&Message::new("hi").header("k", "v")).unwrap();
    p.flush().unwrap();
    let m = c.expect(Command::Message);
    assert_eq!((m.body.as_slice(), m.get("k")), (&b"hi"[..], Some("v")));
    c.ack(&m, false);
    c.subscribe("t", "/topic/news.*", "auto");
    let mut tp = conn.topic_producer("news.sport");
    tp.send(b"goal").unwrap();
    tp.flush().unwrap();
    let m = c.expect(Command::Message);
    assert_eq!(m.get("destination"), Some("/topic/news.sport"), "the topic, not the pattern");
    assert_eq!(m.body, b"goal");
    // STOMP → native topic subscriber.
    let mut sub = conn.subscribe("alerts.#").unwrap();
    c.send_to("/topic/alerts.disk.full", b"93%", Some("rt"));
    assert_eq!(recv_n_sub(&mut sub, 1)[0].payload(), b"93%");
}

#[test]
fn queue_subscribers_compete_and_topic_subscribers_each_get_all() {
    let server = Server::start(2);
    let mut a = Stomp::open(&server);
    let mut b = Stomp::open(&server);
    a.subscribe("a", "/queue/work", "client-individual");
    b.subscribe("b", "/queue/work", "client-individual");
    a.subscribe("ta", "/topic/ev", "auto");
    b.subscribe("tb", "/topic/ev", "auto");
    let mut p = Stomp::open(&server);
    for i in 0..20 {
        p.send_to("/queue/work", format!("w{i}").as_bytes(), None);
        p.send_to("/topic/ev", format!("e{i}").as_bytes(), None);
    }
    p.send_to("/queue/work", b"last", Some("done"));
    let mut work = Vec::new();
    let mut events = [0usize; 2];
    let deadline = Instant::now() + RECV_TIMEOUT;
    while (work.len() < 21 || events != [20, 20]) && Instant::now() < deadline {
        for (i, c) in [&mut a, &mut b].into_iter().enumerate() {
            while let Next::Frame(m) = c.next(Duration::from_millis(50)) {
                if m.get("destination") == Some("/topic/ev") {
                    events[i] += 1;
                } else {
                    c.ack(&m, false);
                    work.push((i, String::from_utf8(m.body).unwrap()));
                }
            }
        }
    }
    assert_eq!(events, [20, 20], "every topic subscriber gets every event");
    let mut names: Vec<&str> = work.iter().map(|(_, w)| w.as_str()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 21, "each queue message exactly once: {work:?}");
    assert!(work.iter().any(|(i, _)| *i == 0) && work.iter().any(|(i, _)| *i == 1), "{work:?}");
}

#[test]
fn unacked_messages_return_after_disconnect_and_nack_requeues() {
    let server = Server::start(2);
    let mut p = Stomp::open(&server);
    for i in 0..3 {
        p.send_to("/queue/jobs", format!("j{i}").as_bytes(), Some(&format!("r{i}")));
    }
    let mut a = Stomp::open(&server);
    a.subscribe("a", "/queue/jobs", "client-individual");
    let got = a.messages(3);
    assert_eq!(bodies(&got), ["j0", "j1", "j2"]);
    a.ack(&got[1], false);
    a.send(&Frame::new(Command::Disconnect).header("receipt", "bye"));
    a.receipt("bye");
    let mut b = Stomp::open(&server);
    b.subscribe("b", "/queue/jobs", "client-individual");
    let again = b.messages(2);
    assert_eq!(bodies(&again), ["j0", "j2"], "the acked one stays acked");
    assert!(again.iter().all(|m| m.get("redelivered") == Some("true")), "{again:?}");
    // NACK puts it back: delivered again, to this subscriber.
    b.ack(&again[0], true);
    let third = b.expect(Command::Message);
    assert_eq!((third.body.as_slice(), third.get("redelivered")), (&b"j0"[..], Some("true")));
    b.ack(&third, false);
    b.ack(&again[1], false);
    b.nothing_more();
}

#[test]
fn client_ack_is_cumulative() {
    let server = Server::start(2);
    let mut p = Stomp::open(&server);
    for i in 0..5 {
        p.send_to("/queue/cum", format!("m{i}").as_bytes(), None);
    }
    p.send_to("/queue/cum", b"m5", Some("sent"));
    let mut a = Stomp::open(&server);
    a.subscribe("a", "/queue/cum", "client");
    let got = a.messages(6);
    // ACK of the 4th acknowledges the first four.
    a.send(
        &Frame::new(Command::Ack)
            .header("id", got[3].get("ack").unwrap())
            .header("receipt", "acked"),
    );
    a.receipt("acked");
    drop(a);
    let mut b = Stomp::open(&server);
    b.subscribe("b", "/queue/cum", "client");
    assert_eq!(bodies(&b.messages(2)), ["m4", "m5"]);
    b.nothing_more();
}

#[test]
fn transactions_commit_abort_and_cover_acks() {
    let server = Server::start(2);
    let mut c = Stomp::open(&server);
    c.subscribe("s", "/queue/tx", "client-individual");
    c.send(&Frame::new(Command::Begin).header("transaction", "t1"));
    c.send(
        &Frame::new(Command::Send)
            .header("destination", "/queue/tx")
            .header("transaction", "t1")
            .body("kept"),
    );
    c.send(&Frame::new(Command::Begin).header("transaction", "t2"));
    c.send(
        &Frame::new(Command::Send)
            .header("destination", "/queue/tx")
            .header("transaction", "t2")
            .body("dropped"),
    );
    c.nothing_more(); // nothing is delivered before COMMIT
    c.send(&Frame::new(Command::Abort).header("transaction", "t2").header("receipt", "aborted"));
    c.receipt("aborted");
    c.send(&Frame::new(Command::Commit).header("transaction", "t1").header("receipt", "committed"));
    // The message may be delivered before its confirm (the receipt waits for the disk).
    let mut two = [c.expect_any(), c.expect_any()];
    two.sort_by_key(|f| f.command == Command::Receipt);
    let [m, r] = two;
    assert_eq!((r.command, r.get("receipt-id")), (Command::Receipt, Some("committed")));
    assert_eq!((m.command, m.body.as_slice()), (Command::Message, &b"kept"[..]));
    c.nothing_more();
    // An ACK in an aborted transaction leaves the message unacked: it comes back later.
    c.send(&Frame::new(Command::Begin).header("transaction", "t3"));
    c.send(
        &Frame::new(Command::Ack).header("id", m.get("ack").unwrap()).header("transaction", "t3"),
    );
    c.send(&Frame::new(Command::Abort).header("transaction", "t3").header("receipt", "a3"));
    c.receipt("a3");
    drop(c);
    let mut d = Stomp::open(&server);
    d.subscribe("s", "/queue/tx", "client-individual");
    let m = d.expect(Command::Message);
    assert_eq!((m.body.as_slice(), m.get("redelivered")), (&b"kept"[..], Some("true")));
    // An ACK in a committed transaction acks it.
    d.send(&Frame::new(Command::Begin).header("transaction", "t4"));
    d.send(
        &Frame::new(Command::Ack).header("id", m.get("ack").unwrap()).header("transaction", "t4"),
    );
    d.send(&Frame::new(Command::Commit).header("transaction", "t4").header("receipt", "c4"));
    d.receipt("c4");
    drop(d);
    let mut e = Stomp::open(&server);
    e.subscribe("s", "/queue/tx", "client-individual");
    e.nothing_more();
    // Unknown transactions are errors.
    e.send(&Frame::new(Command::Commit).header("transaction", "nope"));
    let err = e.expect_error_and_close();
    assert!(err.get("message").unwrap().contains("nope"), "{err:?}");
}

#[test]
fn heart_beats_are_negotiated_sent_and_enforced() {
    let server = Server::start(2);
    // The client wants a beat every 200 ms and sends none.
    let (mut c, connected) = Stomp::open_version(&server, "1.2", &[("heart-beat", "0,200")]);
    assert_eq!(connected.get("heart-beat"), Some("200,0"));
    let deadline = Instant::now() + RECV_TIMEOUT;
    while c.beats < 3 && Instant::now() < deadline {
        if let Next::Frame(f) = c.next(Duration::from_millis(100)) {
            panic!("unexpected {f:?}");
        }
    }
    assert!(c.beats >= 3, "saw {} heart-beats", c.beats);
    // The client promises a beat every 200 ms and goes silent: ERROR, then close.
    let (mut d, connected) = Stomp::open_version(&server, "1.2", &[("heart-beat", "200,0")]);
    assert_eq!(connected.get("heart-beat"), Some("0,200"));
    let err = d.expect_error_and_close();
    assert!(err.get("message").unwrap().contains("heart-beat"), "{err:?}");
    // A client that does beat stays connected.
    let (mut e, _) = Stomp::open_version(&server, "1.2", &[("heart-beat", "200,0")]);
    for _ in 0..8 {
        std::thread::sleep(Duration::from_millis(100));
        e.write(b"\n");
    }
    e.send_to("/queue/alive", b"still here", Some("ok"));
}

#[test]
fn malformed_frames_get_an_error_and_cost_nothing_else() {
    let server = Server::start(2);
    let mut keep = Stomp::open(&server);
    keep.send_to("/queue/safe", b"confirmed", Some("r"));
    let connect = b"CONNECT\naccept-version:1.2\nhost:/\n\n\0".as_slice();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unknown command", [connect, b"FOO\n\n\0"].concat()),
        ("header without colon", [connect, b"SEND\ndestination:/queue/x\nnocolon\n\nb\0"].concat()),
        ("bad escape", [connect, b"SEND\ndestination:/queue/x\nk:\\t\n\nb\0"].concat()),
        (
            "content-length not a number",
            [connect, b"SEND\ndestination:/queue/x\ncontent-length:ten\n\nb\0"].concat(),
        ),
        (
            "content-length too short",
            [connect, b"SEND\ndestination:/queue/x\ncontent-length:1\n\nbody\0"].concat(),
        ),
        ("frame before CONNECT", b"SEND\ndestination:/queue/x\n\nb\0".to_vec()),
        ("unknown destination", [connect, b"SEND\ndestination:/foo/bar\n\nb\0"].concat()),
        ("SEND without destination", [connect, b"SEND\n\nb\0"].concat()),
        (
            "bad topic pattern",
            [connect, b"SUBSCRIBE\nid:1\ndestination:/topic/a.b*\n\n\0"].concat(),
        ),
        ("ACK for nothing", [connect, b"ACK\nid:garbage\n\n\0"].concat()),
        ("server frame", [connect, b"MESSAGE\n\n\0"].concat()),
        ("connect twice", [connect, connect].concat()),
        ("oversized body", {
            let mut v =
                [connect, b"SEND\ndestination:/queue/x\ncontent-length:999999999\n\n"].concat();
            v.extend_from_slice(&[b'a'; 1000]);
            v
        }),
        ("too many headers", {
            let mut v = [connect, b"SEND\ndestination:/queue/x\n"].concat();
            for i in 0..200 {
                v.extend_from_slice(format!("h{i}:v\n").as_bytes());
            }
            v
        }),
        ("not UTF-8", [connect, b"SEND\ndestination:/queue/\xff\xfe\n\nb\0"].concat()),
    ];
    for (what, bytes) in cases {
        let mut c = Stomp::raw(&server);
        c.write(&bytes);
        let mut frames = Vec::new();
        let closed = loop {
            match c.next(RECV_TIMEOUT) {
                Next::Frame(f) => frames.push(f),
                Next::Closed => break true,
                Next::Timeout => break false,
            }
        };
        assert!(closed, "{what}: connection left open ({frames:?})");
        let last = frames.last().unwrap_or_else(|| panic!("{what}: no ERROR frame"));
        assert_eq!(last.command, Command::Error, "{what}: {frames:?}");
        assert!(last.get("message").is_some_and(|m| !m.is_empty()), "{what}: {last:?}");
        assert!(!frames.iter().any(|f| f.command == Command::Message), "{what}");
    }
    // Nothing was stored by the bad frames; the server still serves and kept what it confirmed.
    keep.subscribe("k", "/queue/safe", "auto");
    assert_eq!(keep.expect(Command::Message).body, b"confirmed");
    keep.subscribe("x", "/queue/x", "auto");
    keep.nothing_more();
    server.assert_serves();
}

#[test]
fn pipelined_sends_past_the_request_window_are_all_confirmed_in_order() {
    let server = Server::start(2);
    let mut c = Stomp::open(&server);
    let n = 5_000;
    let mut bytes = Vec::new();
    for i in 0..n {
        let f =
            Frame::new(Command::Send).header("destination", "/queue/burst").body(format!("{i}"));
        f.encode(&mut bytes);
    }
    Frame::new(Command::Disconnect).header("receipt", "all").encode(&mut bytes);
    // One write: far more requests than the session's window, so it pauses and resumes.
    let writer = {
        let mut s = c.s.try_clone().unwrap();
        std::thread::spawn(move || s.write_all(&bytes).unwrap())
    };
    c.receipt("all");
    writer.join().unwrap();
    let mut d = Stomp::open(&server);
    d.send(
        &Frame::new(Command::Subscribe)
            .header("id", "1")
            .header("destination", "/queue/burst")
            .header("prefetch-count", "0"),
    );
    let got: Vec<usize> = d
        .messages(n)
        .iter()
        .map(|m| std::str::from_utf8(&m.body).unwrap().parse().unwrap())
        .collect();
    assert_eq!(got, (0..n).collect::<Vec<_>>());
    d.nothing_more();
}

#[test]
fn durable_subscriptions_and_confirmed_sends_survive_kill_9() {
    let mut server = Server::start(2);
    let mut c = Stomp::open_version(&server, "1.2", &[("client-id", "app1")]).0;
    let sub = Frame::new(Command::Subscribe)
        .header("id", "orders")
        .header("destination", "/topic/orders.*")
        .header("durable", "true")
        .header("auto-delete", "false")
        .header("ack", "client-individual")
        .header("receipt", "subbed");
    c.send(&sub);
    c.receipt("subbed");
    drop(c); // away: the subscription keeps collecting
    let mut p = Stomp::open(&server);
    p.send_to("/topic/orders.new", b"o1", Some("p1"));
    p.send_to("/queue/durable-q", b"q1", Some("p2"));
    // The topic publish's confirm does not wait for bound queues; a receipted send on the same
    // connection to that queue does (events from one shard to another arrive in order).
    p.send_to("/queue/stomp.durable.app1.orders", b"fence", Some("f"));
    server.kill9();
    server.restart();
    let mut c = Stomp::open_version(&server, "1.2", &[("client-id", "app1")]).0;
    c.send(&sub);
    c.receipt("subbed");
    let got = c.messages(2);
    assert_eq!(bodies(&got), ["o1", "fence"]);
    assert_eq!(got[0].get("destination"), Some("/topic/orders.new"), "the topic it was sent to");
    for m in &got {
        c.ack(m, false);
    }
    c.subscribe("q", "/queue/durable-q", "auto");
    assert_eq!(c.expect(Command::Message).body, b"q1");
    // UNSUBSCRIBE with durable:true deletes it: later publishes are not kept.
    c.send(
        &Frame::new(Command::Unsubscribe)
            .header("id", "orders")
            .header("durable", "true")
            .header("receipt", "gone"),
    );
    c.receipt("gone");
    p = Stomp::open(&server);
    p.send_to("/topic/orders.new", b"o2", Some("p3"));
    let mut c = Stomp::open_version(&server, "1.2", &[("client-id", "app1")]).0;
    c.subscribe("plain", "/queue/stomp.durable.app1.orders", "auto");
    c.nothing_more();
}

#[test]
fn receipts_and_unsubscribe() {
    let server = Server::start(2);
    let mut c = Stomp::open(&server);
    c.subscribe("s", "/queue/u", "auto");
    c.send(&Frame::new(Command::Unsubscribe).header("id", "s").header("receipt", "u1"));
    c.receipt("u1");
    c.send_to("/queue/u", b"after", Some("r"));
    c.nothing_more();
    // Unsubscribing twice is an error (no such subscription).
    c.send(&Frame::new(Command::Unsubscribe).header("id", "s"));
    c.expect_error_and_close();
    // The message is still there for the next subscriber.
    let mut d = Stomp::open(&server);
    d.subscribe("s", "/queue/u", "auto");
    assert_eq!(d.expect(Command::Message).body, b"after");
}
