//! Malformed input on raw sockets: truncated frames, oversized lengths, unknown opcodes, random
//! bytes, frames before HELLO and corrupted checksums. Each ends in an ERROR frame and/or a clean
//! close of that connection only; afterwards the server still serves a normal client, and it
//! exits cleanly when stopped.

mod common;

use std::net::Shutdown;

use common::*;
use rdmq_client::error_code as code;
use rdmq_client::wire::frame::FRAME_BODY_MAX;
use rdmq_client::wire::publish::{DestKind, PublishWriter};
use rdmq_client::wire::record::RecordMeta;
use rdmq_client::wire::{self, FrameHeader, Opcode, FRAME_HEADER_LEN};

fn header(length: u32, opcode: u8, request_id: u64) -> Vec<u8> {
    let mut out = Vec::new();
    FrameHeader { length, opcode, flags: 0, reserved: 0, request_id }.put(&mut out);
    out
}

fn publish_frame(queue: &str, payload: &[u8], request_id: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = PublishWriter::begin(&mut out, DestKind::Queue, queue, request_id);
    w.push(&mut out, &RecordMeta { id: 5, ..Default::default() }, payload);
    w.finish(&mut out);
    out
}

/// Reads to the end and checks the connection was closed after exactly one ERROR with `code`
/// (and request id 0: a connection-level error). Returns its message.
fn expect_fatal(raw: &mut RawConn, want: u16) -> String {
    let (frames, end) = raw.read_to_end(RECV_TIMEOUT);
    assert_eq!(end, End::Closed, "connection left open; frames: {frames:?}");
    let errs = errors(&frames);
    assert_eq!(errs.len(), 1, "want one ERROR, got {errs:?}");
    let (h, _) = frames.last().unwrap();
    assert_eq!((h.opcode, h.request_id), (Opcode::Error as u8, 0), "the ERROR is last");
    assert_eq!(errs[0].0, want, "error code; message: {}", errs[0].1);
    errs[0].1.clone()
}

/// Nothing may be left in `queue`: a malformed publish stored nothing.
fn assert_queue_empty(server: &Server, queue: &str) {
    let conn = server.connect();
    let mut c = conn.consume(queue, 8).unwrap();
    let got = c.receive(Some(QUIET)).unwrap();
    assert!(got.is_none(), "{queue} holds {:?}", got.map(|d| text(&d)));
}

fn stop_and_count_protocol_errors(mut server: Server) -> u64 {
    let log = server.stop();
    Server::counter(&log, "protocol_errors")
}

#[test]
fn truncated_frames_then_close() {
    let server = Server::start(2);
    // A partial header, then the client goes away: no reply is owed, the server just closes.
    for cut in [1, 7, FRAME_HEADER_LEN - 1] {
        let mut raw = server.raw();
        raw.send(&header(8, Opcode::Ping as u8, 1)[..cut]);
        raw.sock.shutdown(Shutdown::Write).unwrap();
        let (frames, end) = raw.read_to_end(RECV_TIMEOUT);
        assert_eq!((frames.len(), end), (0, End::Closed), "cut {cut}");
        server.assert_serves();
    }
    // A valid HELLO, then a PUBLISH cut at several points (inside the header, inside the batch).
    let frame = publish_frame("trunc", b"never stored", 2);
    for cut in [3, FRAME_HEADER_LEN, FRAME_HEADER_LEN + 5, frame.len() / 2, frame.len() - 1] {
        let mut raw = server.raw();
        raw.hello();
        raw.send(&frame[..cut]);
        raw.sock.shutdown(Shutdown::Write).unwrap();
        let (frames, end) = raw.read_to_end(RECV_TIMEOUT);
        assert_eq!(end, End::Closed, "cut {cut}");
        assert!(frames.is_empty(), "cut {cut}: reply to a frame never completed: {frames:?}");
        server.assert_serves();
    }
    assert_queue_empty(&server, "trunc");
    assert_eq!(stop_and_count_protocol_errors(server), 0, "an early close is not an error");
}

#[test]
fn oversized_length_is_refused() {
    let server = Server::start(2);
    for (length, hello_first) in
        [(u32::MAX, true), (FRAME_BODY_MAX as u32 + 1, true), (u32::MAX, false)]
    {
        let mut raw = server.raw();
        if hello_first {
            raw.hello();
        }
        // Only the header: the server must refuse on the length alone, without waiting for data.
        raw.send(&header(length, Opcode::Publish as u8, 3));
        let msg = expect_fatal(&mut raw, code::FRAME_TOO_LARGE);
        assert!(msg.contains("length"), "{msg}");
        server.assert_serves();
    }
    assert_eq!(stop_and_count_protocol_errors(server), 3);
}

#[test]
fn unknown_and_server_only_opcodes_after_hello() {
    let server = Server::start(2);
    let mut raw = server.raw();
    raw.hello();
    raw.send(&header(0, 0x55, 4));
    let msg = expect_fatal(&mut raw, code::PROTOCOL_ERROR);
    assert!(msg.contains("unknown opcode 0x55"), "{msg}");
    server.assert_serves();

    // A frame only servers send (a well-formed CONFIRM) is refused too.
    let mut raw = server.raw();
    raw.hello();
    let mut out = Vec::new();
    wire::confirm::Confirm { position: 1, count: 1 }.encode(&mut out, 5);
    raw.send(&out);
    let msg = expect_fatal(&mut raw, code::PROTOCOL_ERROR);
    assert!(msg.contains("CONFIRM"), "{msg}");

    // A non-zero reserved header field.
    let mut raw = server.raw();
    raw.hello();
    let mut bad = header(8, Opcode::Ping as u8, 6);
    bad[6] = 1;
    bad.extend_from_slice(&[0; 8]);
    raw.send(&bad);
    expect_fatal(&mut raw, code::PROTOCOL_ERROR);
    server.assert_serves();
    assert_eq!(stop_and_count_protocol_errors(server), 3);
}

#[test]
fn random_bytes_seeded() {
    let server = Server::start(2);
    for seed in 1..=24u64 {
        let mut rng = XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let len = 64 + (rng.next() % 8192) as usize;
        let junk = rng.bytes(len);
        let after_hello = seed % 2 == 0;
        let mut raw = server.raw();
        if after_hello {
            raw.hello();
        }
        raw.send(&junk);
        raw.sock.shutdown(Shutdown::Write).unwrap();
        let (frames, end) = raw.read_to_end(RECV_TIMEOUT);
        assert_eq!(end, End::Closed, "seed {seed}: connection left open");
        // The codec itself says whether the first header is acceptable; if not, an ERROR is owed.
        let header_ok = FrameHeader::decode(&junk[..FRAME_HEADER_LEN], FRAME_BODY_MAX).is_ok();
        let errs = errors(&frames);
        assert!(errs.len() <= 1, "seed {seed}: {errs:?}");
        assert_eq!(frames.len(), errs.len(), "seed {seed}: non-error replies to junk: {frames:?}");
        if !header_ok {
            assert_eq!(errs.len(), 1, "seed {seed}: bad header without an ERROR");
            assert!(
                [code::PROTOCOL_ERROR, code::FRAME_TOO_LARGE].contains(&errs[0].0),
                "seed {seed}: {errs:?}"
            );
        }
        server.assert_serves();
    }
}

#[test]
fn frames_before_or_instead_of_hello() {
    let server = Server::start(1);
    // PING before HELLO.
    let mut raw = server.raw();
    let mut out = Vec::new();
    wire::ping::Ping { token: 1 }.encode(&mut out, 1, false);
    raw.send(&out);
    let msg = expect_fatal(&mut raw, code::PROTOCOL_ERROR);
    assert!(msg.contains("HELLO"), "{msg}");
    server.assert_serves();

    // A PUBLISH before HELLO stores nothing.
    let mut raw = server.raw();
    raw.send(&publish_frame("early", b"too soon", 1));
    expect_fatal(&mut raw, code::PROTOCOL_ERROR);
    assert_queue_empty(&server, "early");

    // HELLO twice.
    let mut raw = server.raw();
    raw.hello();
    let mut out = Vec::new();
    let hello = wire::hello::Hello { version_min: 1, version_max: 1, client_name: "again" };
    hello.encode(&mut out, 2);
    raw.send(&out);
    let msg = expect_fatal(&mut raw, code::PROTOCOL_ERROR);
    assert!(msg.contains("twice"), "{msg}");

    // A HELLO for versions this server does not speak.
    let mut raw = server.raw();
    let mut out = Vec::new();
    wire::hello::Hello { version_min: 7, version_max: 9, client_name: "future" }
        .encode(&mut out, 1);
    raw.send(&out);
    expect_fatal(&mut raw, code::UNSUPPORTED_VERSION);
    server.assert_serves();
}

#[test]
fn publish_with_corrupted_crc() {
    let server = Server::start(2);
    let mut raw = server.raw();
    raw.hello();
    // A good publish and a corrupted one in the same write: the first is confirmed and kept,
    // the second refused, and nothing after it on that connection is handled.
    let good = publish_frame("crc", b"good", 2);
    let mut bad = publish_frame("crc", b"payload bytes", 3);
    let n = bad.len();
    bad[n - 3] ^= 0x20;
    let after = publish_frame("crc", b"after the bad one", 4);
    raw.send(&[good, bad, after].concat());
    let (frames, end) = raw.read_to_end(RECV_TIMEOUT);
    assert_eq!(end, End::Closed);
    let decoded: Vec<_> =
        frames.iter().map(|(h, b)| (h.request_id, wire::decode(h, b).unwrap())).collect();
    // The queue may live on the other shard, so the good publish's CONFIRM comes before the
    // ERROR or not at all (nothing may follow a connection-level ERROR). Nothing answers the
    // frame after the bad one.
    let Some((0, wire::Command::Error(e))) = decoded.last() else {
        panic!("the last frame must be a connection-level ERROR: {decoded:?}");
    };
    assert_eq!(e.code, code::PROTOCOL_ERROR, "{decoded:?}");
    assert!(e.message.contains("checksum"), "{}", e.message);
    for (id, c) in &decoded[..decoded.len() - 1] {
        assert!(
            *id == 2 && matches!(c, wire::Command::Confirm(_)),
            "unexpected reply before the ERROR: {decoded:?}"
        );
    }
    server.assert_serves();
    let conn = server.connect();
    let mut c = conn.consume("crc", 8).unwrap();
    let d = c.receive(Some(RECV_TIMEOUT)).unwrap().expect("the confirmed message");
    assert_eq!(d.payload(), b"good");
    assert!(c.receive(Some(QUIET)).unwrap().is_none(), "a refused publish was stored");
    drop(c);
    assert_eq!(stop_and_count_protocol_errors(server), 1);
}

/// Bad frames on one connection leave a healthy neighbour on the same server untouched.
#[test]
fn neighbours_are_unaffected() {
    let server = Server::start(2);
    let conn = server.connect();
    let mut c = conn.consume("steady", 16).unwrap();
    let mut p = conn.queue_producer("steady");
    for round in 0..6u64 {
        let mut raw = server.raw();
        let mut rng = XorShift(round + 101);
        raw.send(&rng.bytes(512));
        raw.sock.shutdown(Shutdown::Write).unwrap();
        assert_eq!(raw.read_to_end(RECV_TIMEOUT).1, End::Closed);
        p.send(format!("r{round}").as_bytes()).unwrap();
        p.flush().unwrap();
        let d = c.receive(Some(RECV_TIMEOUT)).unwrap().expect("neighbour's message");
        assert_eq!(text(&d), format!("r{round}"));
        c.ack(&d).unwrap();
    }
}
