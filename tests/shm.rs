//! The shared-memory transport (`shm://`) against the real server: the transport cases every
//! client transport passes (round trip, a verified 10,000-message stream, mixed with TCP both
//! ways, rings filling up and draining, a consumer killed mid-stream), then what is particular
//! to shared memory: who may connect, malformed bytes in the ring or on the socket, and a
//! server that dies under a waiting client.

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::transport::*;
use common::*;
use rdmq_client::error_code as code;
use rdmq_client::shm::ShmStream;
use rdmq_client::wire::hello::Hello;
use rdmq_client::wire::publish::{DestKind, PublishWriter};
use rdmq_client::wire::record::RecordMeta;
use rdmq_client::wire::{self, FrameHeader, Opcode, FRAME_HEADER_LEN, PROTOCOL_VERSION};

/// The uid the permission tests run a client as (`nobody` on Debian).
const OTHER_UID: u32 = 65534;

#[test]
fn round_trip_and_request_reply() {
    let server = Server::start(2);
    round_trip(&server, &server.shm_url, "shm");
    topic_request_reply(&server, &server.shm_url, "shm");
}

#[test]
fn stream_of_10k_verified_in_order() {
    let server = Server::start(2);
    stream(&server, &server.shm_url, &server.shm_url, 10_000, "shm-shm");
}

#[test]
fn producer_and_consumer_on_different_transports() {
    let server = Server::start(2);
    stream(&server, &server.url, &server.shm_url, 3_000, "tcp-shm");
    stream(&server, &server.shm_url, &server.url, 3_000, "shm-tcp");
}

#[test]
fn full_rings_stall_without_loss() {
    let ring = 64 << 10;
    let server = Server::start_with(2, &format!("shm_ring_bytes = {ring}\n"));
    stall_and_recover(&server, &server.shm_url, ring, "shm");
    // A message that cannot fit half the ring is refused by the client before anything is sent.
    let conn = server.connect_url(&server.shm_url);
    let mut p = conn.queue_producer("shm.too-big");
    let err = p.send(&vec![0u8; ring]).unwrap_err();
    assert!(err.to_string().contains("does not fit"), "{err}");
    server.assert_serves();
}

/// A queue message larger than the consumer's whole ring (a TCP producer may send one) still
/// arrives: it cannot be written into the ring whole, so it goes in pieces, and what follows
/// it is not stuck behind it.
#[test]
fn a_message_larger_than_the_consumers_ring_arrives() {
    let server = Server::start_with(1, "shm_ring_bytes = 1048576\n");
    let (tcp, shm) = (server.connect(), server.connect_url(&server.shm_url));
    tcp.declare_queue("shm.big", &rdmq_client::QueueOptions::default()).unwrap();
    let mut c = shm.consume("shm.big", 8).unwrap();
    let big: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 253) as u8).collect();
    let mut p = tcp.queue_producer("shm.big");
    p.send(b"before").unwrap();
    p.send(&big).unwrap();
    p.send(b"after").unwrap();
    p.flush().unwrap();
    let got: Vec<Vec<u8>> = recv_n(&mut c, 3).iter().map(|d| d.payload().to_vec()).collect();
    assert_eq!(got[0], b"before");
    assert!(got[1] == big, "the 3 MiB message arrived damaged ({} bytes)", got[1].len());
    assert_eq!(got[2], b"after");
    server.assert_serves();
}

/// Topic messages for a subscriber that reads nothing until 30,000 (7 MB) are published wait in
/// its subscription buffer behind its full 1 MiB ring and then go straight into the ring: each
/// record copied once, nothing through the output buffer, none lost, in order; and the server
/// sleeps meanwhile.
#[test]
fn topic_messages_for_a_slow_subscriber_are_copied_once() {
    const N: usize = 30_000;
    let mut server = Server::start_with(1, "shm_ring_bytes = 1048576\n");
    let (tcp, shm) = (server.connect(), server.connect_url(&server.shm_url));
    let mut s = shm.subscribe("shm.slow-topic").unwrap();
    let mut p = tcp.topic_producer("shm.slow-topic");
    for i in 0..N as u32 {
        let mut payload = [0u8; 200];
        payload[..4].copy_from_slice(&i.to_le_bytes());
        p.send(&payload).unwrap();
    }
    p.flush().unwrap();
    let used = idle_cpu_ticks(&server, Duration::from_millis(500));
    assert!(used < 25, "the server used {used} ticks in 0.5 s with a stalled subscriber");
    let got = recv_n_sub(&mut s, N);
    for (i, d) in got.iter().enumerate() {
        assert_eq!(d.payload()[..4], (i as u32).to_le_bytes(), "message {i} out of order");
    }
    drop((p, s, tcp, shm));
    let log = server.stop();
    let record = 40 + 200;
    assert_eq!(Server::counter(&log, "copy_deliver_bytes") as usize, N * record);
    let ring_out = Server::counter(&log, "ring_bytes_out");
    assert!(ring_out < 4096, "topic messages went through the output buffer: {ring_out} B");
}

/// CPU time (clock ticks) the server uses over `window`, once 300 ms have let it settle.
fn idle_cpu_ticks(server: &Server, window: Duration) -> u64 {
    std::thread::sleep(Duration::from_millis(300));
    let before = cpu_ticks(server.pid());
    std::thread::sleep(window);
    cpu_ticks(server.pid()) - before
}

/// CPU time (user + system, in clock ticks) process `pid` has used so far.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses): utime and stime are 14 and 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// A consumer that stops reading leaves deliveries held behind its full ring; the shard then
/// sleeps until the client frees space rather than looking again every pass.
#[test]
fn deliveries_held_for_a_stalled_consumer_cost_no_cpu() {
    let server = Server::start_with(1, "shm_ring_bytes = 65536\n");
    let (tcp, shm) = (server.connect(), server.connect_url(&server.shm_url));
    tcp.declare_queue("shm.held", &rdmq_client::QueueOptions::default()).unwrap();
    let mut c = shm.consume("shm.held", 10_000).unwrap();
    let mut p = tcp.queue_producer("shm.held");
    for i in 0..2_000u32 {
        p.send(&[i as u8; 200]).unwrap();
    }
    p.flush().unwrap();
    let used = idle_cpu_ticks(&server, Duration::from_secs(1));
    // A shard looking every pass would use the whole second (100 ticks).
    assert!(used < 50, "the server used {used} ticks in 1 s with a stalled consumer");
    assert_eq!(recv_n(&mut c, 2_000).len(), 2_000);
}

#[test]
fn killed_consumer_messages_are_redelivered() {
    let server = Server::start(2);
    killed_consumer_redelivered(&server, &server.shm_url, "shm");
}

/// Connects a raw shm stream and completes HELLO/WELCOME by hand.
fn raw_shm(server: &Server) -> ShmStream {
    let path = server.shm_url.strip_prefix("shm://").expect("shm url");
    let mut s = ShmStream::connect(std::path::Path::new(path)).expect("shm connect");
    let mut hello = Vec::new();
    let h =
        Hello { version_min: PROTOCOL_VERSION, version_max: PROTOCOL_VERSION, client_name: "raw" };
    h.encode(&mut hello, 1);
    assert_eq!(s.write_some(&hello), hello.len());
    let frames = read_frames(&mut s, 1);
    assert_eq!(frames[0].0.opcode, Opcode::Welcome as u8);
    s
}

/// Reads until `want` frames arrived, or (with `want == usize::MAX`) until the server closes.
fn read_frames(s: &mut ShmStream, want: usize) -> Vec<(FrameHeader, Vec<u8>)> {
    let deadline = Instant::now() + RECV_TIMEOUT;
    let (mut buf, mut frames) = (Vec::new(), Vec::new());
    let mut chunk = vec![0u8; 1 << 16];
    while frames.len() < want {
        let n = match s.read_until(&mut chunk, Some(deadline)) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => panic!("read from the shm ring: {e} (frames so far {frames:?})"),
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some((h, body)) = wire::split_frame(&buf, usize::MAX).expect("valid frame") {
            let len = FRAME_HEADER_LEN + body.len();
            frames.push((h, body.to_vec()));
            buf.drain(..len);
        }
    }
    frames
}

/// The single ERROR the server sent before closing, as (code, message).
fn fatal_error(s: &mut ShmStream) -> (u16, String) {
    let frames = read_frames(s, usize::MAX);
    let errs = errors(&frames);
    assert_eq!(errs.len(), 1, "want one ERROR then close, got {frames:?}");
    errs[0].clone()
}

#[test]
fn malformed_bytes_in_the_ring_close_only_that_connection() {
    let mut server = Server::start(2);
    let conn = server.connect_url(&server.shm_url);
    let mut p = conn.queue_producer("shm.confirmed");
    p.send(b"kept").unwrap();
    p.flush().unwrap();

    // A frame with an opcode that means nothing.
    let mut s = raw_shm(&server);
    let mut h = Vec::new();
    FrameHeader { length: 8, opcode: 0xEE, flags: 0, reserved: 0, request_id: 2 }.put(&mut h);
    h.extend_from_slice(&[0; 8]);
    s.write_some(&h);
    let (c, msg) = fatal_error(&mut s);
    assert_eq!(c, code::PROTOCOL_ERROR, "{msg}");

    // A frame longer than the ring can ever hold: refused at the header, not waited for.
    let mut s = raw_shm(&server);
    let mut h = Vec::new();
    FrameHeader {
        length: 8 << 20,
        opcode: Opcode::Ping as u8,
        flags: 0,
        reserved: 0,
        request_id: 2,
    }
    .put(&mut h);
    s.write_some(&h);
    let (c, msg) = fatal_error(&mut s);
    assert_eq!(c, code::FRAME_TOO_LARGE, "{msg}");

    // Seeded fuzz through the ring: valid PUBLISH frames with random bytes changed, random
    // bytes, and truncations, after a good HELLO. Each connection either gets ERROR and a close
    // or keeps going; the server must live through all of it (proven below).
    let mut rng = XorShift(0x5eed_5111);
    let mut good = Vec::new();
    for i in 0..4u64 {
        let mut w = PublishWriter::begin(&mut good, DestKind::Queue, "shm.fuzz", 10 + i);
        w.push(&mut good, &RecordMeta::default(), &rng.bytes(40));
        w.finish(&mut good);
    }
    let mut closed = 0;
    for _ in 0..150 {
        let mut s = raw_shm(&server);
        let mut m = good.clone();
        match rng.below(3) {
            0 => {
                for _ in 0..1 + rng.below(6) {
                    let i = rng.below(m.len());
                    m[i] = rng.next() as u8;
                }
            }
            1 => {
                let n = 16 + rng.below(2_000);
                m = rng.bytes(n);
            }
            _ => m.truncate(rng.below(m.len())),
        }
        s.write_some(&m);
        let deadline = Instant::now() + Duration::from_millis(100);
        let mut chunk = vec![0u8; 1 << 16];
        while let Ok(n) = s.read_until(&mut chunk, Some(deadline)) {
            if n == 0 {
                closed += 1;
                break;
            }
        }
    }
    assert!(closed > 0, "no mutated stream was refused: the fuzzer is not reaching the decoder");

    // Impossible ring positions: a tail far past the head.
    let mut s = raw_shm(&server);
    s.region().ctrl().c2s_tail.0.store(u64::MAX / 2, std::sync::atomic::Ordering::Release);
    // Nothing is written (the ring looks full) and no wake-up is sent: the shard finds the
    // positions on its next look at the ring (every pass, or its housekeeping tick asleep).
    s.write_some(b"x");
    let (c, msg) = fatal_error(&mut s);
    assert_eq!(c, code::PROTOCOL_ERROR, "{msg}");
    assert!(msg.contains("ring positions"), "{msg}");

    // Bytes on the socket itself (it carries only the handshake).
    let mut s = raw_shm(&server);
    use std::io::Write as _;
    s.socket().write_all(b"hello?").unwrap();
    let (c, _) = fatal_error(&mut s);
    assert_eq!(c, code::PROTOCOL_ERROR);

    // The neighbour connection and the confirmed message are untouched.
    let mut cons = conn.consume("shm.confirmed", 4).unwrap();
    let d = cons.receive(Some(RECV_TIMEOUT)).unwrap().expect("confirmed message kept");
    assert_eq!(d.payload(), b"kept");
    server.assert_serves();
    let log = server.stop();
    assert!(Server::counter(&log, "protocol_errors") >= 3, "{log}");
}

#[test]
fn a_client_sees_the_server_die() {
    let mut server = Server::start(1);
    let conn = server.connect_url(&server.shm_url);
    let mut sub = conn.subscribe("shm.nothing").unwrap();
    let pid = server.pid() as libc::pid_t;
    let killer = std::thread::spawn(move || {
        std::thread::sleep(QUIET);
        // SAFETY: kill(2) on the test's own child, not yet reaped, so the pid is not reused.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    });
    let t = Instant::now();
    let r = sub.receive(Some(Duration::from_secs(30))).map(|d| d.is_some());
    let waited = t.elapsed();
    killer.join().unwrap();
    server.kill9();
    assert!(r.is_err(), "the wait ends with an error, not a message or a timeout: {r:?}");
    assert!(waited < Duration::from_secs(25), "noticed the dead server only after {waited:?}");
}

/// Runs `rdmq publish` over shm as another user; returns (success, stderr).
fn publish_as(uid: u32, url: &str) -> (bool, String) {
    let mut child = Command::new(rdmq_bin())
        .args(["publish", "--url", url, "--queue", "shm.perm", "--confirm"])
        .uid(uid)
        .gid(uid)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn as another user");
    // A refused client exits before reading its input: a broken pipe here is expected.
    let mut stdin = child.stdin.take().expect("piped");
    let _ = std::io::Write::write_all(&mut stdin, b"from another user\n");
    drop(stdin);
    let out = child.wait_with_output().expect("wait");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Whether this test can run processes as another user at all; prints why not.
fn can_switch_users() -> bool {
    if rdmq_client::shm::effective_uid() != 0 {
        eprintln!("SKIPPED: the permission test needs root to run a client as uid {OTHER_UID}");
        return false;
    }
    let ok = Command::new(rdmq_bin())
        .arg("--version")
        .uid(OTHER_UID)
        .gid(OTHER_UID)
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIPPED: uid {OTHER_UID} cannot execute {} (directory permissions)", rdmq_bin());
    }
    ok
}

#[test]
fn other_users_are_refused_unless_allowed() {
    if !can_switch_users() {
        return;
    }
    // Mode 0600: the socket file itself keeps other users out.
    let server = Server::start_with(1, "shm_socket_mode = 0o600\n");
    let (ok, err) = publish_as(OTHER_UID, &server.shm_url);
    assert!(!ok && err.contains("ermission denied"), "{err}");
    drop(server);

    // Mode 0666 lets anyone connect, but the server checks the peer's uid.
    let server = Server::start_with(1, "shm_socket_mode = 0o666\n");
    let (ok, err) = publish_as(OTHER_UID, &server.shm_url);
    assert!(!ok && err.contains("uid 65534 may not use"), "{err}");
    assert!(server.log().contains("shm connection refused"), "{}", server.log());
    server.assert_serves();
    drop(server);

    // Listed in shm_allow_uids: served.
    let cfg = format!("shm_socket_mode = 0o666\nshm_allow_uids = [{OTHER_UID}]\n");
    let server = Server::start_with(1, &cfg);
    let (ok, err) = publish_as(OTHER_UID, &server.shm_url);
    assert!(ok, "{err}");
    let conn = server.connect();
    let mut c = conn.consume("shm.perm", 4).unwrap();
    let d = c.receive(Some(RECV_TIMEOUT)).unwrap().expect("published by the other user");
    assert_eq!(d.payload(), b"from another user");
}

/// The copies the server makes of a message over shared memory, from its own counters: the
/// batch once into the shard's message memory (no reassembly buffer), each record once
/// straight into the consumer's ring (nothing through the output buffer), and none into the
/// journal, for a memory queue and for an `fsync` one alike: the journal writes the segment
/// file from the same memory. Over TCP the same run copies every byte in twice (reassembly,
/// then the batch).
#[test]
fn payload_copies_over_shm_are_one_in_and_one_out() {
    use common::transport::{copies, copies_n, COPIES_MESSAGES as N, COPIES_RECORD as RECORD};
    use rdmq_client::Durability;
    for durability in [Durability::Memory, Durability::Fsync] {
        let server = Server::start(1);
        let url = server.shm_url.clone();
        let c = copies(server, &url, &url, durability);
        assert!(
            (N * RECORD..=N * (RECORD + 24)).contains(&c.copy_in),
            "{durability:?} in: {} for {N} records of {RECORD} B",
            c.copy_in
        );
        assert_eq!(c.copy_deliver, N * RECORD, "each record copied once on the way out");
        assert!(c.ring_out < 4096, "deliveries went through the output buffer: {} B", c.ring_out);
        assert_eq!(c.copy_journal, 0, "{durability:?}: the journal copied {} B", c.copy_journal);
    }
    // A consumer on its own connection that reads nothing until all 30,000 (7 MB) are
    // published: its 4 MiB ring fills, and the deliveries that wait are still written
    // straight into it once it drains (not copied into the output buffer first).
    let server = Server::start(1);
    let url = server.shm_url.clone();
    let tcp_url = server.url.clone();
    let c = copies_n(server, &tcp_url, &url, Durability::Memory, 30_000);
    assert_eq!(c.copy_deliver, 30_000 * RECORD, "slow consumer: {c:?}");
    assert!(c.ring_out < 4096, "slow consumer: deliveries through the output buffer: {c:?}");
    let server = Server::start(1);
    let url = server.url.clone();
    let tcp = copies(server, &url, &url, Durability::Memory);
    assert!(
        tcp.copy_in >= 2 * N * RECORD,
        "TCP copies in twice (inbuf, then the batch): {}",
        tcp.copy_in
    );
    assert_eq!(tcp.copy_deliver, N * RECORD);
}
