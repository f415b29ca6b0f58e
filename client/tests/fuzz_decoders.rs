//! A seeded, dependency-free fuzzer for every decoder in `rdmq_client::wire`.
//!
//! Inputs are random bytes and mutations of valid frames of every command (bit flips, boundary
//! values in length fields, truncation, extension, splices), sometimes with the frame length and
//! the batch checksum repaired so the mutation reaches the record decoders behind them. Every
//! decoder must return `Ok` or `Err`, never panic, and what it accepts must be self-consistent
//! (iterators yield the advertised counts, canonical commands re-encode to the same bytes).
//!
//! A failure prints the seed and iteration; rerun one with `RDMQ_FUZZ_SEED=<seed>`, and run
//! longer with `RDMQ_FUZZ_ITERS=<n>`.

use std::panic::{catch_unwind, AssertUnwindSafe};

use rdmq_client::wire::ack::Acks;
use rdmq_client::wire::bind::Bind;
use rdmq_client::wire::browse::Browse;
use rdmq_client::wire::confirm::Confirm;
use rdmq_client::wire::declare::{DeclareQueue, Durability, Named};
use rdmq_client::wire::deliver::{DeliverWriter, ENTRY_HEADER_LEN};
use rdmq_client::wire::error::{encode_ok, ErrorFrame};
use rdmq_client::wire::frame::{FLAG_MULTIPLE, FRAME_BODY_MAX};
use rdmq_client::wire::hello::{Hello, Welcome};
use rdmq_client::wire::ping::Ping;
use rdmq_client::wire::publish::{DestKind, PublishWriter};
use rdmq_client::wire::record::{BatchBuilder, BatchView, RecordMeta, RecordView, CRC_START};
use rdmq_client::wire::seek::{Seek, SeekTarget};
use rdmq_client::wire::subscribe::{Consume, Subscribe, Unsubscribe};
use rdmq_client::wire::{self, Command, FrameHeader, Opcode, FRAME_HEADER_LEN};

/// Iterations per seed unless `RDMQ_FUZZ_ITERS` says otherwise: enough to reach every decoder
/// through many mutation shapes in a couple of seconds of a debug build.
const DEFAULT_ITERS: u64 = 20_000;
/// Seeds run by default; each is independent and reproducible on its own.
const DEFAULT_SEEDS: [u64; 3] = [0x5EED_0001, 0xC0FF_EE00_1234, 0x00DD_BA11_5EED];

/// xorshift64*: small, fast and the same on every platform.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Frame,
    Batch,
    Record,
}

/// A valid encoded input and where its batch starts, if it has one.
struct Seed {
    kind: Kind,
    bytes: Vec<u8>,
    batch_at: Option<usize>,
}

fn frame(f: impl FnOnce(&mut Vec<u8>)) -> Seed {
    let mut out = Vec::new();
    f(&mut out);
    Seed { kind: Kind::Frame, bytes: out, batch_at: None }
}

fn sample_batch(out: &mut Vec<u8>) {
    let headers = vec![("k".to_string(), "välue".to_string()), ("".to_string(), "".to_string())];
    let mut b = BatchBuilder::begin(out);
    let meta = RecordMeta {
        id: 7,
        timestamp_us: 11,
        ttl_ms: 500,
        correlation_id: b"corr",
        reply_to: b"replies",
        headers: &headers,
    };
    b.push(out, &meta, b"hello\0world");
    b.push(out, &RecordMeta::default(), b"");
    b.push(out, &RecordMeta { id: u64::MAX, ..Default::default() }, &[0xAB; 40]);
    b.finish(out);
}

/// One valid input per command, plus bare batches and records.
fn corpus() -> Vec<Seed> {
    let mut seeds = vec![
        frame(|o| Hello { version_min: 1, version_max: 1, client_name: "fuzz" }.encode(o, 1)),
        frame(|o| {
            Welcome { version: 1, shard: 1, shard_count: 2, frame_body_max: 99, server_name: "s" }
                .encode(o, 1)
        }),
        frame(|o| Ping { token: 42 }.encode(o, 2, false)),
        frame(|o| Ping { token: 43 }.encode(o, 2, true)),
        frame(|o| {
            DeclareQueue {
                name: "orders",
                durability: Durability::Fsync,
                max_deliveries: 5,
                max_length: 1000,
                max_bytes: 4096,
                max_age_ms: 1000,
                dead_letter: "orders.dead",
            }
            .encode(o, 3)
        }),
        frame(|o| Named { name: "q" }.encode(o, Opcode::DeleteQueue, 4)),
        frame(|o| Named { name: "a.b" }.encode(o, Opcode::DeclareTopic, 5)),
        frame(|o| Named { name: "a.b.c" }.encode(o, Opcode::DeleteTopic, 6)),
        frame(|o| Confirm { position: 1 << 40, count: 9 }.encode(o, 7)),
        frame(|o| Subscribe { id: 4, pattern: "a.*.#" }.encode(o, 8)),
        frame(|o| Consume { id: 5, credit: 100, queue: "q" }.encode(o, 9)),
        frame(|o| Unsubscribe { id: 5 }.encode(o, 10)),
        frame(|o| Acks::encode(o, Opcode::Ack, 0, 9, &[1, 5, u64::MAX])),
        frame(|o| Acks::encode(o, Opcode::Nack, 0, 9, &[3])),
        frame(|o| Acks::encode(o, Opcode::Reject, FLAG_MULTIPLE, 1, &[8])),
        frame(|o| Browse { id: 6, max: 10, from: 3, queue: "q" }.encode(o, 13)),
        frame(|o| Bind { queue: "q", pattern: "a.#" }.encode(o, Opcode::Bind, 14)),
        frame(|o| Seek { queue: "q", target: SeekTarget::TimestampUs(9) }.encode(o, 16)),
        frame(|o| Bind { queue: "q", pattern: "a.*" }.encode(o, Opcode::Unbind, 15)),
        frame(|o| encode_ok(o, 11)),
        frame(|o| ErrorFrame { code: 404, message: "no queue \"x\"" }.encode(o, 12)),
    ];
    for kind in [DestKind::Queue, DestKind::Topic] {
        let mut out = Vec::new();
        let mut w = PublishWriter::begin(&mut out, kind, "a.b.c", 77);
        let batch_at = out.len() - 24;
        let headers = vec![("h".to_string(), "v".to_string())];
        for i in 0..3u8 {
            let meta = RecordMeta { id: i as u64, headers: &headers, ..Default::default() };
            w.push(&mut out, &meta, &[i; 10]);
        }
        w.finish(&mut out);
        seeds.push(Seed { kind: Kind::Frame, bytes: out, batch_at: Some(batch_at) });
    }
    // A DELIVER carrying the records of a batch.
    let mut batch = Vec::new();
    sample_batch(&mut batch);
    let view = BatchView::decode(&batch).expect("sample batch is valid");
    let mut out = Vec::new();
    let mut w = DeliverWriter::begin(&mut out, 3);
    for (i, (_, rec)) in view.records().enumerate() {
        w.push(&mut out, 100 + i as u64, 1 + i as u32, i as u16 & 1, rec.bytes);
    }
    w.finish(&mut out);
    seeds.push(Seed { kind: Kind::Frame, bytes: out, batch_at: None });
    // Bare batch and bare record, for BatchView::decode and RecordView::decode.
    let first_record = view.records().next().expect("a record").1.bytes.to_vec();
    seeds.push(Seed { kind: Kind::Batch, bytes: batch, batch_at: Some(0) });
    seeds.push(Seed { kind: Kind::Record, bytes: first_record, batch_at: None });
    seeds
}

const INTERESTING_U32: [u32; 9] =
    [0, 1, 2, 0x7F, 0xFF, 0xFFFF, 0x7FFF_FFFF, 0xFFFF_FFFF, FRAME_BODY_MAX as u32 + 1];

/// Applies one to four random mutations, then sometimes repairs the frame length and the batch
/// header so the checks behind them are reached.
fn mutate(rng: &mut Rng, seed: &Seed, all: &[Seed]) -> Vec<u8> {
    let mut b = seed.bytes.clone();
    for _ in 0..1 + rng.below(4) {
        let len = b.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                b[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                b[i] = [0, 0xFF, 0x7F, 0x80, 1][rng.below(5)];
            }
            2 if len >= 4 => {
                let i = rng.below(len - 3);
                let v = INTERESTING_U32[rng.below(INTERESTING_U32.len())];
                b[i..i + 4].copy_from_slice(&v.to_le_bytes());
            }
            3 if len >= 2 => {
                let i = rng.below(len - 1);
                let v = [0u16, 1, 0xFF, 0x100, 0xFFFF][rng.below(5)];
                b[i..i + 2].copy_from_slice(&v.to_le_bytes());
            }
            4 => b.truncate(rng.below(len + 1)),
            5 => {
                let n = 1 + rng.below(64);
                let extra = rng.bytes(n);
                b.extend_from_slice(&extra);
            }
            6 if len > 0 => {
                let at = rng.below(len);
                let end = (at + 1 + rng.below(16)).min(len);
                b.drain(at..end);
            }
            7 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let ins = rng.bytes(n);
                b.splice(at..at, ins);
            }
            _ => {
                // Splice: the front of this input with the back of another.
                let other = &all[rng.below(all.len())].bytes;
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                b.truncate(cut);
                b.extend_from_slice(&other[from..]);
            }
        }
    }
    if let Some(at) = seed.batch_at {
        if b.len() >= at + 24 && rng.below(2) == 0 {
            let batch_len = (b.len() - at) as u32;
            b[at..at + 4].copy_from_slice(&batch_len.to_le_bytes());
            let crc = crc32c(&b[at + CRC_START..]);
            b[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
        }
    }
    if seed.kind == Kind::Frame && b.len() >= FRAME_HEADER_LEN && rng.below(2) == 0 {
        let body = (b.len() - FRAME_HEADER_LEN) as u32;
        b[0..4].copy_from_slice(&body.to_le_bytes());
    }
    b
}

/// CRC32C (Castagnoli), bit by bit: the test must not borrow the implementation it checks.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= byte as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    !crc
}

const OPCODES: [Opcode; 23] = [
    Opcode::Hello,
    Opcode::Welcome,
    Opcode::Ping,
    Opcode::Pong,
    Opcode::DeclareQueue,
    Opcode::DeleteQueue,
    Opcode::DeclareTopic,
    Opcode::DeleteTopic,
    Opcode::Publish,
    Opcode::Confirm,
    Opcode::Subscribe,
    Opcode::Consume,
    Opcode::Unsubscribe,
    Opcode::Deliver,
    Opcode::Ack,
    Opcode::Nack,
    Opcode::Reject,
    Opcode::Browse,
    Opcode::Bind,
    Opcode::Unbind,
    Opcode::Seek,
    Opcode::Ok,
    Opcode::Error,
];

fn header(opcode: u8, flags: u8, body_len: usize) -> FrameHeader {
    FrameHeader { length: body_len as u32, opcode, flags, reserved: 0, request_id: 1 }
}

/// What a successfully decoded record must satisfy.
fn check_record(r: &RecordView<'_>) {
    let h = r.header;
    assert_eq!(r.bytes.len(), h.len as usize);
    assert_eq!(r.headers().count(), h.header_count as usize, "headers() count");
    let parts = r.correlation_id().len() + r.reply_to().len() + r.payload().len();
    assert!(parts <= r.bytes.len());
    assert_eq!(r.payload().len(), h.payload_len as usize);
}

fn check_batch(b: &BatchView<'_>) {
    let mut total = wire::record::BATCH_HEADER_LEN;
    let mut n = 0;
    for (at, r) in b.records() {
        assert_eq!(at, total, "record offsets are contiguous");
        check_record(&r);
        total += r.bytes.len();
        n += 1;
    }
    assert_eq!(n, b.count, "records() yields the batch count");
    assert_eq!(total, b.bytes.len());
}

/// Re-encodes a command that has one canonical encoding and compares with the input.
fn reencode(h: &FrameHeader, cmd: &Command<'_>) -> Option<Vec<u8>> {
    let mut o = Vec::new();
    let id = h.request_id;
    match cmd {
        Command::Hello(x) => x.encode(&mut o, id),
        Command::Welcome(x) => x.encode(&mut o, id),
        Command::Ping(x) => x.encode(&mut o, id, false),
        Command::Pong(x) => x.encode(&mut o, id, true),
        Command::DeclareQueue(x) => x.encode(&mut o, id),
        Command::DeleteQueue(x) => x.encode(&mut o, Opcode::DeleteQueue, id),
        Command::DeclareTopic(x) => x.encode(&mut o, Opcode::DeclareTopic, id),
        Command::DeleteTopic(x) => x.encode(&mut o, Opcode::DeleteTopic, id),
        Command::Confirm(x) => x.encode(&mut o, id),
        Command::Subscribe(x) => x.encode(&mut o, id),
        Command::Consume(x) => x.encode(&mut o, id),
        Command::Unsubscribe(x) => x.encode(&mut o, id),
        Command::Ok => encode_ok(&mut o, id),
        // ERROR's decoder does not check its reserved field; compared with it zeroed below.
        Command::Error(x) => x.encode(&mut o, id),
        _ => return None,
    }
    // Flags are not part of these commands' encoding; carry them over.
    o[5] = h.flags;
    Some(o)
}

/// Checks that hold for every command a decoder accepted.
fn check_command(h: &FrameHeader, body: &[u8], cmd: &Command<'_>) {
    match cmd {
        Command::Publish(p) => {
            check_batch(&p.batch);
            assert_eq!(p.batch.bytes, &body[p.batch_offset..]);
        }
        Command::Deliver(d) => {
            let mut n = 0;
            for e in d.entries() {
                check_record(&e.record);
                // The client's arithmetic for where a delivered payload starts.
                let at = 8 + e.offset + ENTRY_HEADER_LEN;
                let payload_at = at + e.record.bytes.len() - e.record.payload().len();
                assert_eq!(&body[payload_at..at + e.record.bytes.len()], e.record.payload());
                n += 1;
            }
            assert_eq!(n, d.count, "entries() yields the advertised count");
        }
        Command::Ack(a) | Command::Nack(a) | Command::Reject(a) => {
            assert_eq!(a.tags().count(), a.len());
            assert!(!a.is_empty());
        }
        Command::Error(e) => {
            let _ = e.is_fatal(h.request_id);
        }
        _ => {}
    }
    if let Some(again) = reencode(h, cmd) {
        let mut original = Vec::new();
        h.put(&mut original);
        original.extend_from_slice(body);
        if matches!(cmd, Command::Error(_)) {
            original[FRAME_HEADER_LEN + 2..FRAME_HEADER_LEN + 4].fill(0);
        }
        assert_eq!(again, original, "accepted a non-canonical encoding of {cmd:?}");
    }
}

/// Runs every decoder over `input` in every way it can be fed.
fn exercise(input: &[u8]) {
    for max in [FRAME_BODY_MAX, 64, 0] {
        if let Ok(Some((h, body))) = wire::split_frame(input, max) {
            assert_eq!(h.length as usize, body.len());
            assert!(body.len() <= max);
            if let Ok(cmd) = wire::decode(&h, body) {
                check_command(&h, body, &cmd);
            }
        }
    }
    let _ = FrameHeader::decode(input, FRAME_BODY_MAX);
    // The body (after a would-be header, and the whole input) under every opcode.
    let bodies = [input.get(FRAME_HEADER_LEN..).unwrap_or(&[]), input];
    for body in bodies {
        for op in OPCODES.iter().map(|&o| o as u8).chain([0x00, 0x55, 0xFF]) {
            for flags in [0, FLAG_MULTIPLE] {
                let h = header(op, flags, body.len());
                if let Ok(cmd) = wire::decode(&h, body) {
                    check_command(&h, body, &cmd);
                }
            }
        }
    }
    for at in [0, FRAME_HEADER_LEN, FRAME_HEADER_LEN + 4, 24] {
        let Some(rest) = input.get(at..) else { continue };
        if let Ok(b) = BatchView::decode(rest) {
            check_batch(&b);
        }
        if let Ok(r) = RecordView::decode(rest) {
            check_record(&r);
        }
    }
}

/// A failing iteration, with what it takes to reproduce it.
#[derive(Debug)]
struct Failure {
    seed: u64,
    iteration: u64,
    input: Vec<u8>,
    message: String,
}

/// The `iteration`th input of `seed`: deterministic, so a failure can be replayed alone.
fn input_for(rng: &mut Rng, all: &[Seed]) -> Vec<u8> {
    match rng.below(10) {
        0 => {
            let n = rng.below(512);
            rng.bytes(n)
        }
        1 => {
            // Random body behind a plausible header.
            let n = rng.below(256);
            let op = OPCODES[rng.below(OPCODES.len())] as u8;
            let mut b = Vec::new();
            header(op, 0, n).put(&mut b);
            b.extend(rng.bytes(n));
            b
        }
        _ => {
            let s = &all[rng.below(all.len())];
            mutate(rng, s, all)
        }
    }
}

fn run(seed: u64, iters: u64, check: &dyn Fn(&[u8])) -> Result<u64, Failure> {
    let all = corpus();
    let mut rng = Rng::new(seed);
    let mut accepted = 0;
    for iteration in 0..iters {
        let input = input_for(&mut rng, &all);
        let r = catch_unwind(AssertUnwindSafe(|| check(&input)));
        if let Err(panic) = r {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            return Err(Failure { seed, iteration, input, message });
        }
        if wire::split_frame(&input, FRAME_BODY_MAX)
            .ok()
            .flatten()
            .is_some_and(|(h, body)| wire::decode(&h, body).is_ok())
        {
            accepted += 1;
        }
    }
    Ok(accepted)
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn decoders_never_panic_on_random_and_mutated_input() {
    let seeds: Vec<u64> = match env_u64("RDMQ_FUZZ_SEED") {
        Some(s) => vec![s],
        None => DEFAULT_SEEDS.to_vec(),
    };
    let iters = env_u64("RDMQ_FUZZ_ITERS").unwrap_or(DEFAULT_ITERS);
    for seed in seeds {
        match run(seed, iters, &exercise) {
            Ok(accepted) => {
                eprintln!("fuzz seed {seed:#x}: {iters} inputs, {accepted} accepted whole frames")
            }
            Err(f) => panic!(
                "decoder failure with seed {:#x} at iteration {} (rerun: RDMQ_FUZZ_SEED={:#x}): \
                 {}\ninput ({} bytes): {}",
                f.seed,
                f.iteration,
                f.seed,
                f.message,
                f.input.len(),
                hex(&f.input)
            ),
        }
    }
}

/// Every corpus entry is valid to begin with (otherwise mutations would prove little), and
/// decodes to the command it was built as.
#[test]
fn corpus_is_valid() {
    for (i, s) in corpus().iter().enumerate() {
        exercise(&s.bytes);
        match s.kind {
            Kind::Batch => check_batch(&BatchView::decode(&s.bytes).expect("corpus batch")),
            Kind::Record => check_record(&RecordView::decode(&s.bytes).expect("corpus record")),
            Kind::Frame => {}
        }
        if s.kind != Kind::Frame {
            continue;
        }
        let (h, body) = wire::split_frame(&s.bytes, FRAME_BODY_MAX).unwrap().expect("whole frame");
        assert_eq!(FRAME_HEADER_LEN + body.len(), s.bytes.len(), "corpus entry {i}");
        let cmd = wire::decode(&h, body).unwrap_or_else(|e| panic!("corpus entry {i}: {e}"));
        check_command(&h, body, &cmd);
    }
}

/// The harness can fail: mutations are often rejected and sometimes accepted (so they are
/// neither no-ops nor always fatal), and a planted decoder bug is caught with its seed and an
/// input that reproduces it.
#[test]
fn harness_can_fail() {
    let all = corpus();
    let frames: Vec<&Seed> = all.iter().filter(|s| s.kind == Kind::Frame).collect();
    let mut rng = Rng::new(7);
    let (mut rejected, mut accepted, mut changed_publishes) = (0, 0, 0);
    for _ in 0..5_000 {
        let s = frames[rng.below(frames.len())];
        let m = mutate(&mut rng, s, &all);
        match wire::split_frame(&m, FRAME_BODY_MAX).ok().flatten() {
            Some((h, body)) => match wire::decode(&h, body) {
                Ok(Command::Publish(_)) if m != s.bytes => {
                    accepted += 1;
                    changed_publishes += 1;
                }
                Ok(_) => accepted += 1,
                Err(_) => rejected += 1,
            },
            None => rejected += 1,
        }
    }
    assert!(rejected > 500, "mutations rejected only {rejected} times of 5000");
    assert!(accepted > 50, "mutations accepted only {accepted} times of 5000");
    // The checksum repair lets changed batches through to the record checks behind it.
    assert!(changed_publishes > 0, "no mutated PUBLISH ever passed its checksum");

    // A naive decoder that trusts the length field, as a buggy one would.
    let naive = |input: &[u8]| {
        if input.len() >= FRAME_HEADER_LEN {
            let len = u32::from_le_bytes(input[0..4].try_into().unwrap()) as usize;
            let _body = &input[FRAME_HEADER_LEN..FRAME_HEADER_LEN + len];
        }
    };
    let f = run(0xBAD, 10_000, &naive).expect_err("a slice past the end must be found");
    assert_eq!(f.seed, 0xBAD);
    assert!(f.message.contains("out of range"), "{}", f.message);
    // Replaying the reported input alone reproduces it.
    assert!(catch_unwind(|| naive(&f.input)).is_err());
    // And the same seed finds it at the same iteration: the run is deterministic.
    let again = run(0xBAD, 10_000, &naive).expect_err("deterministic");
    assert_eq!((again.iteration, again.input), (f.iteration, f.input));
}
