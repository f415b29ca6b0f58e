//! The line tools against a real server: `rdmq publish`, `rdmq consume`, `rdmq subscribe`,
//! their exit codes and what they print.

mod common;

use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Bound on any one tool run.
const TOOL_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs a tool with `input` on stdin and returns its output, bounded by [`TOOL_TIMEOUT`].
fn run(mut cmd: std::process::Command, input: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rdmq");
    let out = drain_pipe(child.stdout.take().unwrap());
    let err = drain_pipe(child.stderr.take().unwrap());
    feed(&mut child, input);
    let status = wait_child(&mut child, TOOL_TIMEOUT, "rdmq tool");
    Output {
        status,
        stdout: out.join().unwrap().into_bytes(),
        stderr: err.join().unwrap().into_bytes(),
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

#[test]
fn publish_confirm_then_consume_ack_prints_the_same_lines() {
    let server = Server::start(2);
    let q = name_on_shard("lines", 1, 2);
    let mut lines: Vec<String> = vec![
        "alpha".into(),
        "beta gamma\tdelta".into(),
        String::new(),
        "ünïcode ✓".into(),
        "x".repeat(5000),
    ];
    lines.extend((0..1000).map(|i| format!("line-{i}")));
    // The last line has no newline: it is still one message.
    let input = lines.join("\n");
    let expected = format!("{input}\n");

    let mut publish = server.cli("publish");
    publish.args(["--queue", &q, "--confirm"]);
    let o = run(publish, input.as_bytes());
    assert!(o.status.success(), "publish failed: {}", stderr(&o));
    assert_eq!(stdout(&o), expected, "publish --confirm prints each confirmed line");

    let mut consume = server.cli("consume");
    let n = lines.len().to_string();
    consume.args(["--queue", &q, "--ack", "--count", &n, "--timeout-ms", "20000"]);
    let o = run(consume, b"");
    assert!(o.status.success(), "consume failed: {}", stderr(&o));
    assert_eq!(stdout(&o), expected, "consume prints the lines in order");

    // Acked: the queue is empty now, so a bounded consume that wants one message fails.
    let mut short = server.cli("consume");
    short.args(["--queue", &q, "--ack", "--count", "1", "--timeout-ms", "300"]);
    let o = run(short, b"");
    assert!(!o.status.success(), "consume of an empty queue succeeded: {}", stdout(&o));
    assert!(stderr(&o).contains("timed out after 0 of 1"), "stderr: {}", stderr(&o));
    assert_eq!(stdout(&o), "");
}

#[test]
fn consume_exit_codes_and_unacked_return() {
    let server = Server::start(1);
    let publish = |lines: &str| {
        let mut c = server.cli("publish");
        c.args(["--queue", "jobs", "--confirm"]);
        let o = run(c, lines.as_bytes());
        assert!(o.status.success(), "{}", stderr(&o));
    };
    publish("one\ntwo\n");

    // Short of its count: prints what it got, exits non-zero and says so.
    let mut c = server.cli("consume");
    c.args(["--queue", "jobs", "--count", "5", "--timeout-ms", "300"]);
    let o = run(c, b"");
    assert!(!o.status.success());
    assert_eq!(stdout(&o), "one\ntwo\n");
    assert!(stderr(&o).contains("timed out after 2 of 5"), "stderr: {}", stderr(&o));

    // Without --ack the messages went back to the queue when it exited.
    let mut c = server.cli("consume");
    c.args(["--queue", "jobs", "--ack", "--count", "2", "--timeout-ms", "10000"]);
    let o = run(c, b"");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "one\ntwo\n");

    // With a timeout and no count, running dry is success.
    publish("three\n");
    let mut c = server.cli("consume");
    c.args(["--queue", "jobs", "--ack", "--timeout-ms", "300"]);
    let o = run(c, b"");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "three\n");

    // A server that is not there: a clear error and a non-zero exit.
    let mut c = std::process::Command::new(rdmq_bin());
    c.args(["consume", "--url", "tcp://127.0.0.1:1", "--queue", "jobs", "--timeout-ms", "100"]);
    let o = run(c, b"");
    assert!(!o.status.success());
    assert!(stderr(&o).contains("127.0.0.1:1"), "stderr: {}", stderr(&o));
}

#[test]
fn subscribe_count_gets_topic_messages() {
    let server = Server::start(2);
    let mut child = server
        .cli("subscribe")
        .args(["--topic", "cli.*", "--count", "3", "--timeout-ms", "20000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = drain_pipe(child.stdout.take().unwrap());
    let err = drain_pipe(child.stderr.take().unwrap());
    // The tool says nothing when its subscription is in place, so publish until it has its
    // three messages and exits. Non-matching topics are interleaved.
    let conn = server.connect();
    let mut news = conn.topic_producer("cli.news");
    let mut deep = conn.topic_producer("cli.deep.news");
    let mut other = conn.topic_producer("other.news");
    let deadline = Instant::now() + TOOL_TIMEOUT;
    let mut k = 0;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("subscribe --count 3 did not finish");
        }
        other.send(format!("skip-{k}").as_bytes()).unwrap();
        other.flush().unwrap();
        deep.send(format!("deep-{k}").as_bytes()).unwrap();
        deep.flush().unwrap();
        news.send(format!("tick-{k}").as_bytes()).unwrap();
        news.flush().unwrap();
        k += 1;
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = out.join().unwrap();
    assert!(status.success(), "subscribe failed: {}", err.join().unwrap());
    let got: Vec<&str> = out.lines().collect();
    assert_eq!(got.len(), 3, "{out:?}");
    // Only the matching topic, and consecutive: once subscribed, nothing is skipped.
    let ks: Vec<u32> = got
        .iter()
        .map(|l| {
            l.strip_prefix("tick-").unwrap_or_else(|| panic!("non-matching {l:?}")).parse().unwrap()
        })
        .collect();
    assert_eq!(ks, vec![ks[0], ks[0] + 1, ks[0] + 2], "{got:?}");
}

#[test]
fn publish_to_topic_reaches_subscriber_and_subscribe_timeout() {
    let server = Server::start(2);
    let conn = server.connect();
    let mut sub = conn.subscribe("alerts.#").unwrap();
    let mut c = server.cli("publish");
    c.args(["--topic", "alerts.disk", "--confirm"]);
    let o = run(c, b"disk full\ndisk ok\n");
    assert!(o.status.success(), "{}", stderr(&o));
    let got: Vec<String> = recv_n_sub(&mut sub, 2).iter().map(text).collect();
    assert_eq!(got, ["disk full", "disk ok"]);

    // subscribe with a count it cannot reach fails after its timeout; without one it succeeds.
    let mut c = server.cli("subscribe");
    c.args(["--topic", "quiet.#", "--count", "1", "--timeout-ms", "300"]);
    let o = run(c, b"");
    assert!(!o.status.success());
    assert!(stderr(&o).contains("timed out after 0 of 1"), "stderr: {}", stderr(&o));
    let mut c = server.cli("subscribe");
    c.args(["--topic", "quiet.#", "--timeout-ms", "300"]);
    assert!(run(c, b"").status.success());
}

/// `rdmq publish` without --confirm still delivers everything before it exits.
#[test]
fn publish_without_confirm_delivers_all() {
    let server = Server::start(2);
    let input: String = (0..500).map(|i| format!("fire-{i}\n")).collect();
    let mut c = server.cli("publish");
    c.args(["--queue", "fire"]);
    let o = run(c, input.as_bytes());
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "", "nothing is printed without --confirm");
    let conn = server.connect();
    let mut consumer = conn.consume("fire", 64).unwrap();
    let mut got = String::new();
    for _ in 0..500 {
        let d = consumer.receive(Some(RECV_TIMEOUT)).unwrap().expect("a message");
        got.push_str(&format!("{}\n", text(&d)));
        consumer.ack(&d).unwrap();
    }
    assert_eq!(got, input);
    assert!(consumer.receive(Some(QUIET)).unwrap().is_none(), "more than was published");
}
