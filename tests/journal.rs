//! Durable queues against the real binary: `kill -9` at random moments while publishing and while
//! consuming, corrupted and missing segment files, and a full disk. Every check is about what a
//! client was told: a confirmed message is there exactly once after a crash, an acknowledged one
//! never comes back, nothing that was never published appears, and damage is reported, not served.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use rdmq_client::error_code as code;
use rdmq_client::{Connection, Durability, Error, QueueOptions};

/// Iterations of each crash loop; `RDMQ_CRASH_ITERS` asks for more.
fn crash_iterations(default: u64) -> u64 {
    std::env::var("RDMQ_CRASH_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn seed() -> u64 {
    let s =
        std::env::var("RDMQ_CRASH_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
                as u64
                | 1
        });
    eprintln!("crash seed {s} (RDMQ_CRASH_SEED={s} repeats this run)");
    s
}

/// Everything in `queue` now, read until it stays quiet: payload → (count, redelivered).
fn drain(conn: &Connection, queue: &str) -> HashMap<String, (u32, bool)> {
    let mut c = conn.consume(queue, 256).expect("consume");
    let mut got: HashMap<String, (u32, bool)> = HashMap::new();
    while let Some(d) = c.receive(Some(Duration::from_millis(700))).expect("receive") {
        let e = got.entry(text(&d)).or_insert((0, d.redelivered));
        e.0 += 1;
        c.ack(&d).expect("ack");
    }
    c.close().expect("close");
    got
}

#[test]
fn confirmed_publishes_survive_kill_9_exactly_once() {
    let mut rng = XorShift(seed());
    let mut server = Server::start(2);
    for iter in 0..crash_iterations(20) {
        let queue = format!("crash.{iter}");
        let mut publisher = server
            .cli("publish")
            .args(["--queue", &queue, "--confirm"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn rdmq publish");
        let mut stdin = publisher.stdin.take().expect("stdin");
        let writer = std::thread::spawn(move || {
            let mut sent = 0u64;
            // Bounded: a publisher that outlives the server stops at the broken pipe anyway.
            while sent < 500_000 {
                let chunk: String = (sent..sent + 100).map(|n| format!("{n}\n")).collect();
                if stdin.write_all(chunk.as_bytes()).is_err() {
                    break;
                }
                sent += 100;
            }
            sent
        });
        let stdout = publisher.stdout.take().expect("stdout");
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout).lines().map_while(Result::ok).collect::<Vec<String>>()
        });
        std::thread::sleep(Duration::from_millis(30 + rng.next() % 300));
        server.kill9();
        wait_child(&mut publisher, Duration::from_secs(20), "publisher after the crash");
        let confirmed = reader.join().expect("reader");
        let sent = writer.join().expect("writer");
        server.restart();
        let got = drain(&server.connect(), &queue);
        for line in &confirmed {
            let n = got.get(line).map_or(0, |e| e.0);
            assert_eq!(n, 1, "iteration {iter}: confirmed message {line} found {n} times");
        }
        for (line, (n, _)) in &got {
            let seq: u64 = line.parse().unwrap_or_else(|_| panic!("garbage message {line:?}"));
            assert!(seq < sent, "iteration {iter}: message {seq} was never published");
            assert_eq!(*n, 1, "iteration {iter}: message {seq} present {n} times");
        }
        eprintln!(
            "iteration {iter}: {} written, {} confirmed, {} recovered",
            sent,
            confirmed.len(),
            got.len()
        );
    }
}

#[test]
fn acknowledged_messages_never_come_back_after_kill_9() {
    let mut rng = XorShift(seed());
    let mut server = Server::start(2);
    for iter in 0..crash_iterations(5) {
        let queue = format!("acks.{iter}");
        let total = 20_000u64;
        {
            let conn = server.connect();
            conn.declare_queue(&queue, &QueueOptions::default()).unwrap();
            let mut p = conn.queue_producer(&queue);
            for n in 0..total {
                p.send(n.to_string().as_bytes()).unwrap();
            }
            p.flush().unwrap();
        }
        // The consumer acks in small groups; after each group it makes a request the queue's
        // owner answers (a redeclaration), and only then counts the group as acknowledged.
        let url = server.url.clone();
        let q = queue.clone();
        let progress = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = progress.clone();
        let consumer = std::thread::spawn(move || {
            // (acknowledged and confirmed by a later reply, acknowledged at all)
            let mut synced: HashSet<String> = HashSet::new();
            let mut acked: HashSet<String> = HashSet::new();
            let Ok(conn) = Connection::connect(&url) else { return (synced, acked) };
            let Ok(mut c) = conn.consume(&q, 32) else { return (synced, acked) };
            let mut group = Vec::new();
            while let Ok(Some(d)) = c.receive(Some(Duration::from_secs(5))) {
                // Counted as acknowledged before the ack is sent: if the server saw it, it may
                // legitimately be gone after the crash.
                acked.insert(text(&d));
                if c.ack(&d).is_err() {
                    break;
                }
                group.push(text(&d));
                if group.len() == 25 {
                    if conn.declare_queue(&q, &QueueOptions::default()).is_err() {
                        break;
                    }
                    synced.extend(group.drain(..));
                    seen.store(synced.len(), std::sync::atomic::Ordering::Relaxed);
                }
            }
            (synced, acked)
        });
        // Crash mid-stream: once a random share of the messages is acknowledged, plus a jitter.
        let target = 200 + (rng.next() % (total / 2)) as usize;
        let give_up = std::time::Instant::now() + Duration::from_secs(60);
        while progress.load(std::sync::atomic::Ordering::Relaxed) < target {
            assert!(std::time::Instant::now() < give_up, "consumer made no progress");
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_micros(rng.next() % 3000));
        server.kill9();
        let (synced, acked) = consumer.join().expect("consumer thread");
        server.restart();
        let got = drain(&server.connect(), &queue);
        for line in &synced {
            assert!(!got.contains_key(line), "iteration {iter}: acknowledged {line} came back");
        }
        for n in 0..total {
            let line = n.to_string();
            assert!(
                acked.contains(&line) || got.contains_key(&line),
                "iteration {iter}: unacknowledged message {n} was lost"
            );
        }
        assert!(got.values().all(|(n, redelivered)| *n == 1 && *redelivered));
        assert!(synced.len() < total as usize, "iteration {iter}: the crash came after the end");
        eprintln!(
            "iteration {iter}: {} acknowledged and synced before the crash, {} back",
            synced.len(),
            got.len()
        );
    }
}

/// The one queue directory under a server's data dir.
fn queue_dir(server: &Server, queue: &str) -> PathBuf {
    let hex: String = queue.bytes().map(|b| format!("{b:02x}")).collect();
    server.dir.join("data/queues").join(hex)
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

/// Publishes `batches` batches of `per` messages `b<batch>-<n>` of `size` bytes to a fsync queue.
fn publish_batches(server: &Server, queue: &str, batches: u32, per: u32, size: usize) {
    let conn = server.connect();
    conn.declare_queue(
        queue,
        &QueueOptions { durability: Durability::Fsync, ..Default::default() },
    )
    .unwrap();
    let mut p = conn.queue_producer(queue);
    for b in 0..batches {
        for n in 0..per {
            let mut m = format!("b{b}-{n}").into_bytes();
            m.resize(size.max(m.len()), b'.');
            p.send(&m).unwrap();
        }
        p.flush().unwrap(); // one PUBLISH frame, one journal batch
    }
}

fn prefixes(got: &HashMap<String, (u32, bool)>) -> Vec<String> {
    let mut v: Vec<String> = got.keys().map(|k| k.split('-').next().unwrap().to_string()).collect();
    v.sort();
    v.dedup();
    v
}

fn publish_error(server: &Server, queue: &str) -> (u16, String) {
    let conn = server.connect();
    let mut p = conn.queue_producer(queue);
    p.send(b"after").unwrap();
    match p.flush() {
        Err(Error::Server { code, message }) => (code, message),
        other => panic!("publish to a damaged queue should fail, got {other:?}"),
    }
}

#[test]
fn a_flipped_byte_mid_segment_is_reported_and_never_served() {
    let mut server = Server::start(1);
    publish_batches(&server, "flip", 3, 20, 100);
    server.stop();
    let seg = &segments(&queue_dir(&server, "flip"))[0];
    let mut bytes = std::fs::read(seg).unwrap();
    let (batches, _) = rdmq::journal::format::scan_segment(&bytes, 0);
    assert_eq!(batches.len(), 3);
    let victim = batches[1].offset + batches[1].len / 2;
    bytes[victim] ^= 0x20;
    std::fs::write(seg, &bytes).unwrap();
    server.restart();
    let got = drain(&server.connect(), "flip");
    assert_eq!(prefixes(&got), vec!["b0"], "only the batch before the damage is served");
    assert_eq!(got.len(), 20);
    let log = server.log();
    assert!(log.contains("is corrupt at offset"), "log names the damage:\n{log}");
    assert!(log.contains("\"flip\"") && log.contains(".seg"), "with queue and segment:\n{log}");
    assert_eq!(publish_error(&server, "flip").0, code::STORAGE_FAILED);
    server.assert_serves();
}

#[test]
fn a_truncated_last_record_is_cut_off_and_logged() {
    let mut server = Server::start(1);
    publish_batches(&server, "torn", 3, 20, 100);
    server.stop();
    let seg = &segments(&queue_dir(&server, "torn"))[0];
    let len = std::fs::metadata(seg).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(seg).unwrap().set_len(len - 5).unwrap();
    server.restart();
    let log = server.log();
    assert!(log.contains("truncated a torn tail"), "log says what was cut:\n{log}");
    let conn = server.connect();
    let got = drain(&conn, "torn");
    assert_eq!(prefixes(&got), vec!["b0", "b1"]);
    assert_eq!(got.len(), 40);
    // The queue goes on: new publishes land after the cut and survive another restart.
    let mut p = conn.queue_producer("torn");
    p.send(b"new-0").unwrap();
    p.flush().unwrap();
    drop(conn);
    server.stop();
    server.restart();
    assert_eq!(drain(&server.connect(), "torn").keys().collect::<Vec<_>>(), vec!["new-0"]);
}

#[test]
fn a_missing_segment_is_reported_and_nothing_past_it_is_served() {
    let mut server = Server::start_with(1, "segment_bytes = 1048576\n");
    // Each batch is ~600 KB, so each lands in a segment of its own.
    publish_batches(&server, "gap", 3, 1, 600_000);
    server.stop();
    let segs = segments(&queue_dir(&server, "gap"));
    assert_eq!(segs.len(), 3, "{segs:?}");
    std::fs::remove_file(&segs[1]).unwrap();
    server.restart();
    let got = drain(&server.connect(), "gap");
    assert_eq!(prefixes(&got), vec!["b0"]);
    let log = server.log();
    assert!(log.contains("a segment is missing"), "log says a segment is missing:\n{log}");
    assert_eq!(publish_error(&server, "gap").0, code::STORAGE_FAILED);
    server.assert_serves();
}

/// A small tmpfs mounted for one test, unmounted on drop.
struct SmallDisk(PathBuf);

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        // The server's own cleanup ran while the mount was still there.
        if let Some(parent) = self.0.parent() {
            let _ = std::fs::remove_dir_all(parent);
        }
    }
}

#[test]
fn a_full_disk_refuses_durable_publishes_and_keeps_what_was_confirmed() {
    let dir = temp_dir("diskfull");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=6m", "tmpfs"])
        .arg(&data)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!(
            "SKIPPED: cannot mount a small tmpfs here (needs root); the disk-full test did not run"
        );
        return;
    }
    let _disk = SmallDisk(data.clone());
    let mut server = Server::start_in(dir, 1, "");
    let conn = server.connect();
    conn.declare_queue(
        "full",
        &QueueOptions { durability: Durability::Fsync, ..Default::default() },
    )
    .unwrap();
    let mut p = conn.queue_producer("full");
    let mut confirmed = 0u32;
    let failure = 'fill: {
        for round in 0..400u32 {
            for n in 0..32u32 {
                let mut m = format!("m{}", round * 32 + n).into_bytes();
                m.resize(1024, b'.');
                p.send(&m).unwrap();
            }
            match p.flush() {
                Ok(()) => confirmed = (round + 1) * 32,
                Err(e) => break 'fill e,
            }
        }
        panic!("6 MiB took 12 MiB of messages without an error");
    };
    let Error::Server { code: c, message } = &failure else { panic!("{failure:?}") };
    assert_eq!(*c, code::STORAGE_FAILED, "{message}");
    assert!(message.contains("No space") || message.contains("disk full"), "{message}");
    // Sticky: later publishes fail too, the connection and the server stay up.
    let mut p2 = conn.queue_producer("full");
    p2.send(b"later").unwrap();
    assert!(p2.flush().is_err());
    conn.ping().unwrap();
    conn.declare_queue(
        "mem",
        &QueueOptions { durability: Durability::Memory, ..Default::default() },
    )
    .unwrap();
    // Every confirmed message is still readable.
    let got = drain(&conn, "full");
    for i in 0..confirmed {
        let mut m = format!("m{i}").into_bytes();
        m.resize(1024, b'.');
        let key = String::from_utf8(m).unwrap();
        assert_eq!(got.get(&key).map(|e| e.0), Some(1), "confirmed m{i} missing");
    }
    eprintln!("disk full after {confirmed} confirmed messages: {message}");
    drop(conn);
    server.kill9();
}

/// Drains `queue` with acks on a fresh connection; payloads in arrival order.
fn consume_all(server: &Server, queue: &str) -> Vec<String> {
    let conn = server.connect();
    let mut c = conn.consume(queue, 64).unwrap();
    let mut got = Vec::new();
    while let Some(d) = c.receive(Some(Duration::from_millis(500))).unwrap() {
        got.push(text(&d));
        c.ack(&d).unwrap();
    }
    c.close().unwrap();
    got
}

#[test]
fn seek_goes_back_by_position_and_timestamp_across_a_restart() {
    let mut server = Server::start(2);
    let q = name_on_shard("replay", 1, 2);
    let opts = QueueOptions { max_age_ms: 3_600_000, ..Default::default() };
    let conn = server.connect();
    conn.declare_queue(&q, &opts).unwrap();
    let mut p = conn.queue_producer(&q);
    for n in 0..5 {
        p.send(format!("m{n}").as_bytes()).unwrap();
    }
    p.flush().unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let middle_us =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros()
            as u64;
    std::thread::sleep(Duration::from_millis(20));
    for n in 5..10 {
        p.send(format!("m{n}").as_bytes()).unwrap();
    }
    p.flush().unwrap();
    let all: Vec<String> = (0..10).map(|n| format!("m{n}")).collect();
    assert_eq!(consume_all(&server, &q), all);
    conn.seek(&q, rdmq_client::SeekTarget::Position(3)).unwrap();
    assert_eq!(consume_all(&server, &q), all[3..]);
    drop(conn);
    server.stop();
    server.restart();
    let conn = server.connect();
    assert!(consume_all(&server, &q).is_empty(), "everything was acknowledged before the restart");
    conn.seek(&q, rdmq_client::SeekTarget::TimestampUs(middle_us)).unwrap();
    assert_eq!(consume_all(&server, &q), all[5..]);
    // Forward: skipping over waiting messages consumes them.
    conn.seek(&q, rdmq_client::SeekTarget::Position(0)).unwrap();
    conn.seek(&q, rdmq_client::SeekTarget::Position(8)).unwrap();
    assert_eq!(consume_all(&server, &q), all[8..]);
}

#[test]
fn consumed_segments_are_deleted() {
    let server = Server::start_with(1, "segment_bytes = 1048576\n");
    publish_batches(&server, "retire", 4, 1, 600_000);
    let dir = queue_dir(&server, "retire");
    assert_eq!(segments(&dir).len(), 4);
    assert_eq!(consume_all(&server, "retire").len(), 4);
    // Housekeeping (every 100 ms) deletes every segment below the floor; the current one stays.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while segments(&dir).len() > 1 {
        assert!(std::time::Instant::now() < deadline, "settled segments were never deleted");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(dir.join("checkpoint").exists(), "the floor is checkpointed before deleting");
}

#[test]
fn a_deleted_durable_queue_can_be_declared_again_at_once_and_starts_empty() {
    let mut server = Server::start(1);
    let conn = server.connect();
    for round in 0..3 {
        conn.declare_queue("again", &QueueOptions::default()).unwrap();
        let mut p = conn.queue_producer("again");
        p.send(format!("round {round}").as_bytes()).unwrap();
        p.flush().unwrap();
        let got: Vec<String> = conn.browse("again", 0, 10).unwrap().iter().map(text).collect();
        assert_eq!(got, vec![format!("round {round}")], "only this round's message");
        conn.delete_queue("again").unwrap();
    }
    drop(conn);
    server.stop();
    server.restart();
    assert_eq!(server.connect().browse("again", 0, 10).unwrap_err().code(), Some(code::NOT_FOUND));
    let queues = server.dir.join("data/queues");
    let left: Vec<_> = std::fs::read_dir(&queues).unwrap().collect();
    assert!(left.is_empty(), "deleted queues leave nothing behind: {left:?}");
}

#[test]
fn a_crash_right_after_a_segment_roll_is_a_torn_tail_not_corruption() {
    let mut server = Server::start_with(1, "segment_bytes = 1048576\n");
    publish_batches(&server, "roll", 2, 1, 600_000);
    server.stop();
    let dir = queue_dir(&server, "roll");
    let segs = segments(&dir);
    assert_eq!(segs.len(), 2);
    // As if the second segment's write was cut short and the next roll had created its file.
    let len = std::fs::metadata(&segs[1]).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&segs[1]).unwrap().set_len(len / 2).unwrap();
    std::fs::write(dir.join("00000000000000000002.seg"), b"").unwrap();
    server.restart();
    let log = server.log();
    assert!(log.contains("truncated a torn tail"), "{log}");
    assert!(!log.contains("corrupt"), "{log}");
    assert_eq!(prefixes(&drain(&server.connect(), "roll")), vec!["b0"]);
    // Publishing goes on where the data ends.
    publish_batches(&server, "roll", 1, 1, 10);
    assert_eq!(prefixes(&drain(&server.connect(), "roll")), vec!["b0"]);
}

#[test]
fn the_ack_log_is_compacted_at_restart() {
    let mut server = Server::start(1);
    publish_batches(&server, "compact", 1, 500, 10);
    assert_eq!(drain(&server.connect(), "compact").len(), 500);
    let log = queue_dir(&server, "compact").join("acks.log");
    let before = std::fs::metadata(&log).unwrap().len();
    assert_eq!(before, 500 * 16, "one entry per acknowledgement");
    server.stop();
    server.restart();
    server.connect().ping().unwrap();
    let after = std::fs::metadata(&log).unwrap().len();
    assert!(after < before, "settled entries below the floor are dropped: {before} -> {after}");
    assert!(drain(&server.connect(), "compact").is_empty(), "and nothing comes back");
}
