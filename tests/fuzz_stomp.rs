//! A seeded fuzzer for the STOMP decoder and frame parsers, then for the live gateway.
//!
//! Inputs are random bytes and mutations of valid frames of every command (byte flips,
//! inserted NULs, EOLs, colons and backslashes, truncation, duplication, splices). The decoder
//! must return `Ok` or `Err`, never panic, never report using more bytes than it was given,
//! and respect its limits; whatever it accepts must re-encode to a frame that decodes the same.
//! The second test sends mutated streams to a running server's STOMP port and checks it keeps
//! serving both protocols.
//!
//! A failure prints the seed and iteration; rerun one with `RDMQ_FUZZ_SEED=<seed>`, and run
//! longer with `RDMQ_FUZZ_ITERS=<n>`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use common::*;
use rdmq::gateway::stomp::ack::Ack;
use rdmq::gateway::stomp::connect::Connect;
use rdmq::gateway::stomp::send::Send;
use rdmq::gateway::stomp::subscribe::{Subscribe, Unsubscribe};
use rdmq::gateway::stomp::transaction::Transaction;
use rdmq::gateway::stomp::{decode, Command, Frame, Limits};

const DEFAULT_ITERS: u64 = 30_000;
const DEFAULT_SEEDS: [u64; 3] = [0x570_0001, 0xFEED_FACE_0042, 0x0BAD_C0DE_5EED];

type Rng = XorShift;

fn rng(seed: u64) -> Rng {
    XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
}

fn seeds() -> Vec<u64> {
    match std::env::var("RDMQ_FUZZ_SEED") {
        Ok(s) => vec![s.parse().expect("RDMQ_FUZZ_SEED is a number")],
        Err(_) => DEFAULT_SEEDS.to_vec(),
    }
}

fn iters() -> u64 {
    std::env::var("RDMQ_FUZZ_ITERS").ok().and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_ITERS)
}

/// Valid frames of every client and server command.
fn corpus() -> Vec<Vec<u8>> {
    let frames = [
        Frame::new(Command::Connect)
            .header("accept-version", "1.0,1.1,1.2")
            .header("host", "/")
            .header("heart-beat", "100,200"),
        Frame::new(Command::Stomp).header("accept-version", "1.2").header("host", "h"),
        Frame::new(Command::Send)
            .header("destination", "/queue/a")
            .header("k:x", "v\nw\\")
            .header("receipt", "r1")
            .body(vec![0u8, 1, 2, 0]),
        Frame::new(Command::Send).header("destination", "/topic/a.b").header("transaction", "t"),
        Frame::new(Command::Subscribe)
            .header("id", "1")
            .header("destination", "/topic/a.*")
            .header("ack", "client"),
        Frame::new(Command::Unsubscribe).header("id", "1"),
        Frame::new(Command::Ack).header("id", "3-4").header("transaction", "t"),
        Frame::new(Command::Nack).header("id", "3-5"),
        Frame::new(Command::Begin).header("transaction", "t"),
        Frame::new(Command::Commit).header("transaction", "t"),
        Frame::new(Command::Abort).header("transaction", "t"),
        Frame::new(Command::Disconnect).header("receipt", "bye"),
        Frame::new(Command::Message)
            .header("subscription", "1")
            .header("message-id", "1-1")
            .header("destination", "/queue/a")
            .body("hello"),
        Frame::new(Command::Receipt).header("receipt-id", "r"),
        Frame::new(Command::Error).header("message", "m").body("detail"),
    ];
    let mut out: Vec<Vec<u8>> = frames
        .iter()
        .map(|f| {
            let mut b = Vec::new();
            f.encode(&mut b);
            b
        })
        .collect();
    // Without content-length, CRLF line ends, leading heart-beats.
    out.push(b"\r\n\nSEND\r\ndestination:/queue/q\r\n\r\nbody\0".to_vec());
    out
}

fn mutate(rng: &mut Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut b = corpus[rng.below(corpus.len())].clone();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(b.len() + 1);
        match rng.below(9) {
            0 if !b.is_empty() => {
                let i = at.min(b.len() - 1);
                b[i] = rng.next() as u8;
            }
            1 => b.insert(at, 0),
            2 => b.insert(at, b'\n'),
            3 => b.insert(at, b':'),
            4 => b.insert(at, b'\\'),
            5 => b.truncate(at),
            6 => {
                let other = &corpus[rng.below(corpus.len())];
                let from = rng.below(other.len());
                b.splice(at..at, other[from..].iter().copied());
            }
            7 => {
                let digits = format!("content-length:{}\n", rng.next() % 100);
                b.splice(at..at, digits.bytes());
            }
            _ => {
                let n = rng.below(16);
                b.splice(at..at, (0..n).map(|_| rng.next() as u8));
            }
        }
    }
    b
}

/// Every parser behind the decoder, as the gateway calls them.
fn parse_all(f: &Frame) {
    let _ = Connect::from_frame(f);
    let _ = Send::from_frame(f.clone());
    let _ = Subscribe::from_frame(f);
    let _ = Unsubscribe::from_frame(f);
    let _ = Ack::from_frame(f);
    let _ = Transaction::from_frame(f);
}

fn check_one(input: &[u8], limits: &Limits) -> Result<(), String> {
    let mut at = 0;
    while at < input.len() {
        match decode(&input[at..], limits) {
            Err(_) | Ok(None) => return Ok(()),
            Ok(Some((frame, used))) => {
                if used == 0 || used > input.len() - at {
                    return Err(format!("used {used} of {} bytes", input.len() - at));
                }
                at += used;
                let Some(f) = frame else { continue };
                if f.headers.len() > limits.headers_max || f.body.len() > limits.body_bytes_max {
                    return Err(format!("limits exceeded: {f:?}"));
                }
                parse_all(&f);
                // Accepted frames re-encode to bytes that decode to the same command, headers
                // (first occurrence of each) and body.
                let mut again = Vec::new();
                f.encode(&mut again);
                let big = Limits { header_bytes_max: usize::MAX, ..*limits };
                let g = match decode(&again, &big) {
                    Ok(Some((Some(g), n))) if n == again.len() => g,
                    other => return Err(format!("{f:?} re-encoded to {again:?}: {other:?}")),
                };
                if g.command != f.command || g.body != f.body {
                    return Err(format!("{f:?} became {g:?}"));
                }
                for (k, _) in &f.headers {
                    if k != "content-length" && g.get(k) != f.get(k) {
                        return Err(format!("header {k:?}: {f:?} became {g:?}"));
                    }
                }
            }
        }
    }
    Ok(())
}

#[test]
fn decoder_survives_random_and_mutated_frames() {
    let corpus = corpus();
    let limits =
        Limits { headers_max: 16, header_bytes_max: 512, body_bytes_max: 256, unescape: true };
    for seed in seeds() {
        let mut rng = rng(seed);
        for i in 0..iters() {
            let input = if rng.below(8) == 0 {
                (0..rng.below(64)).map(|_| rng.next() as u8).collect()
            } else {
                mutate(&mut rng, &corpus)
            };
            let r = catch_unwind(AssertUnwindSafe(|| check_one(&input, &limits)));
            match r {
                Ok(Ok(())) => {}
                Ok(Err(why)) => panic!("seed {seed} iteration {i}: {why}\ninput: {input:?}"),
                Err(_) => panic!("seed {seed} iteration {i}: decoder panicked on {input:?}"),
            }
        }
    }
}

#[test]
fn gateway_survives_mutated_streams() {
    let server = Server::start(2);
    let corpus = corpus();
    let mut rng = rng(seeds()[0]);
    for _ in 0..300 {
        let mut input = b"CONNECT\naccept-version:1.2\nhost:/\n\n\0".to_vec();
        for _ in 0..1 + rng.below(4) {
            input.extend(mutate(&mut rng, &corpus));
        }
        let Ok(mut s) = TcpStream::connect(server.stomp) else {
            panic!("server stopped accepting")
        };
        let _ = s.write_all(&input);
        let _ = s.shutdown(std::net::Shutdown::Write);
        s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    }
    server.assert_serves();
    let mut s = TcpStream::connect(server.stomp).unwrap();
    s.write_all(b"CONNECT\naccept-version:1.2\nhost:/\n\n\0").unwrap();
    s.set_read_timeout(Some(RECV_TIMEOUT)).unwrap();
    let mut buf = [0u8; 9];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"CONNECTED");
}
