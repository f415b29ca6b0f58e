//! `rdmq bench`: the workloads of docs/ARCHITECTURE.md (Benchmarks), each run through the broker and then
//! against a raw baseline on the same transport (the same frames between two processes with no
//! broker), in one invocation, so figures can be quoted as ratios to the floor.
//!
//! The parent process produces; `rdmq bench-peer` children receive (see `peer.rs`). Every run
//! verifies what arrived (count, order, content) and the command fails loudly on loss.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command as Process, Stdio};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use rdmq_client::wire::publish::{DestKind, PublishWriter};
use rdmq_client::wire::record::RecordMeta;
use rdmq_client::{Connection, ConnectionOptions, Durability, QueueOptions};
use serde::Serialize;

use super::peer::{
    self, check_payload, fill_payload, now_ns, percentiles_us, PeerResult, RawStream, SENTINEL,
};

/// Messages per raw PUBLISH frame: the client's default batch, so both sides batch alike.
const RAW_BATCH_BYTES: usize = 64 << 10;
/// Ping-pong warm-up round trips, not measured.
const PINGPONG_WARMUP: u64 = 2_000;
/// With --busy-poll, a spawned server spins this long without work before sleeping, as the
/// clients never sleep: the measurement is then of the data path, not of wake-ups.
const BUSY_SERVER_SPIN_US: u64 = 20_000;
/// How often the progress line is refreshed.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);
/// How long a spawned server (fresh data directory, nothing to recover) may take to say where
/// it listens.
const SPAWN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// 20,000 x 1 KiB enqueued into a queue, then dequeued with acks.
    Shootout,
    /// 64-byte request/response through the broker; RTT percentiles.
    Pingpong,
    /// One producer, one consumer, 1,000,000 x 64 B, every message checked.
    Stream,
    /// One producer, N subscribers on a topic.
    Fanout,
    /// One producer, N competing consumers on a queue with acks; exactly-once check.
    Compete,
    /// Constant-rate publishing; coordinated-omission-corrected end-to-end latency.
    Rate,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Workload to run.
    #[arg(value_enum)]
    workload: Workload,
    /// Server to measure. Default: tcp://127.0.0.1:7420
    #[arg(long, conflicts_with = "spawn")]
    url: Option<String>,
    /// Start `rdmq serve` on a free port with a temporary data directory, stop it afterwards.
    #[arg(long)]
    spawn: bool,
    /// Shards for the spawned server. Default: the server's default (one per CPU)
    #[arg(long, requires = "spawn")]
    shards: Option<usize>,
    /// Messages (round trips for pingpong). Default: shootout 20,000; pingpong 20,000;
    /// stream, fanout, compete 1,000,000; rate 5 seconds' worth
    #[arg(long)]
    count: Option<u64>,
    /// Payload bytes (at least 16: sequence and timestamp). Default: 64; 1024 for shootout
    #[arg(long)]
    size: Option<usize>,
    /// Queue durability: memory, flush or fsync.
    #[arg(long, default_value = "memory")]
    durability: Durability,
    /// Transport of both the broker run and the raw baseline: tcp, shm or rdma (rdma needs the
    /// rdma build and a device). With --url, the URL's scheme decides.
    #[arg(long, default_value = "tcp")]
    transport: String,
    /// The RDMA device's IPv4 address (for --spawn and the raw baseline over rdma).
    /// Default: $RDMQ_RDMA_ADDR (set inside the rxe-setup VM)
    #[arg(long)]
    rdma_addr: Option<String>,
    /// Also run this perftest script (rxe-setup/perftest.sh) and report its ib_send_lat and
    /// ib_write_bw figures beside the broker's: the verbs floor, measured in the same run.
    #[arg(long, value_name = "SCRIPT")]
    perftest: Option<PathBuf>,
    /// Subscribers for fanout.
    #[arg(long, default_value_t = 4)]
    subscribers: usize,
    /// Competing consumers for compete.
    #[arg(long, default_value_t = 4)]
    consumers: usize,
    /// Messages per second for rate.
    #[arg(long, default_value_t = 100_000)]
    rate: u64,
    /// Consumer credit (prefetch).
    #[arg(long, default_value_t = 1024)]
    credit: u32,
    /// Spin in the clients instead of sleeping: on non-blocking sockets over TCP, on the rings
    /// over shm and RDMA. With --spawn the server also spins 20 ms before sleeping.
    #[arg(long)]
    busy_poll: bool,
    /// Also write the result as one JSON object to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// One side's figures (broker or raw baseline).
#[derive(Debug, Default, Clone, Serialize)]
pub struct Figures {
    pub msgs_per_s: f64,
    pub mb_per_s: f64,
    pub seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtt_us: Option<Pcts>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<Pcts>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enqueue_msgs_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dequeue_msgs_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slowest_lag_ms: Option<f64>,
    pub verified: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Pcts {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl From<[f64; 4]> for Pcts {
    fn from(v: [f64; 4]) -> Pcts {
        Pcts { p50: v[0], p99: v[1], p999: v[2], max: v[3] }
    }
}

#[derive(Debug, Serialize)]
struct Report {
    workload: Workload,
    transport: String,
    durability: &'static str,
    count: u64,
    size: usize,
    #[serde(flatten)]
    broker: Figures,
    baseline: Figures,
    /// perftest's figures from the same run (`--perftest`), by name.
    #[serde(skip_serializing_if = "Option::is_none")]
    perftest: Option<std::collections::BTreeMap<String, f64>>,
    /// The spawned server's copies per message (`--spawn` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    server_copies: Option<ServerCopies>,
    notes: Vec<String>,
}

struct Ctx {
    url: String,
    count: u64,
    size: usize,
    args: BenchArgs,
    run_id: String,
}

pub fn run(mut args: BenchArgs) -> Result<(), String> {
    if let Some(url) = &args.url {
        args.transport = url.split_once("://").map_or("tcp", |(s, _)| s).to_string();
    }
    match args.transport.as_str() {
        "tcp" | "shm" => {}
        "rdma" if !cfg!(feature = "rdma") => {
            return Err("this build has no RDMA support (build with --features rdma)".into())
        }
        "rdma" => {
            if args.rdma_addr.is_none() {
                args.rdma_addr = std::env::var("RDMQ_RDMA_ADDR").ok();
            }
            if args.rdma_addr.is_none() {
                return Err("--transport rdma needs --rdma-addr (or RDMQ_RDMA_ADDR): the \
                            IPv4 address of an RDMA device"
                    .into());
            }
        }
        other => return Err(format!("unknown transport {other:?} (tcp, shm, rdma)")),
    }
    let size = args.size.unwrap_or(if args.workload == Workload::Shootout { 1024 } else { 64 });
    if args.count == Some(0) {
        return Err("--count must be at least 1".into());
    }
    if size < peer::PAYLOAD_HEADER {
        return Err(format!("--size must be at least {} bytes", peer::PAYLOAD_HEADER));
    }
    let count = args.count.unwrap_or(match args.workload {
        Workload::Shootout => 20_000,
        Workload::Pingpong => 20_000,
        Workload::Stream | Workload::Fanout | Workload::Compete => 1_000_000,
        Workload::Rate => args.rate * 5,
    });
    let mut notes = Vec::new();
    // A topic subscriber buffer holds what a subscriber has not read yet; the fanout producer has
    // no flow control from subscribers, so a spawned server gets room for the whole run and the
    // run measures delivery, not the drop_oldest policy (a --url server reports loss instead).
    let config = (args.workload == Workload::Fanout).then(|| {
        notes.push(format!("spawned server: subscriber_buffer_max = {}", count + 16));
        format!("subscriber_buffer_max = {}\n", count + 16)
    });
    let spawned = if args.spawn {
        let rdma = args.rdma_addr.clone().filter(|_| args.transport == "rdma");
        if args.busy_poll {
            notes.push(format!(
                "--busy-poll: the spawned server spins {BUSY_SERVER_SPIN_US} us before sleeping \
                 and its shards are not pinned"
            ));
        }
        let spin = args.busy_poll.then_some(BUSY_SERVER_SPIN_US);
        Some(SpawnedServer::start(args.shards, config, &args.transport, rdma, spin)?)
    } else {
        None
    };
    let url = match (&spawned, &args.url) {
        (Some(s), _) => s.url.clone(),
        (None, Some(u)) => u.clone(),
        (None, None) => "tcp://127.0.0.1:7420".to_string(),
    };
    let run_id = format!("bench.{}.{}", std::process::id(), now_ns() % 1_000_000);
    let ctx = Ctx { url, count, size, run_id, args };
    let (broker, baseline) = match ctx.args.workload {
        Workload::Pingpong => {
            notes.push(format!(
                "{PINGPONG_ROUNDS} interleaved rounds (broker, raw, ...), fresh processes each; \
                 {PINGPONG_WARMUP} warm-up round trips first; publishes without confirms \
                 (the reply confirms)"
            ));
            pingpong(&ctx)?
        }
        Workload::Stream => (stream_broker(&ctx)?, stream_raw(&ctx)?),
        Workload::Fanout => {
            notes.push(format!(
                "{} subscribers; msgs/s counts deliveries (count x subscribers)",
                ctx.args.subscribers
            ));
            (fanout_broker(&ctx)?, fanout_raw(&ctx)?)
        }
        Workload::Compete => {
            notes.push(format!(
                "{} competing consumers, credit {}",
                ctx.args.consumers, ctx.args.credit
            ));
            (compete_broker(&ctx)?, compete_raw(&ctx)?)
        }
        Workload::Rate => {
            notes.push(format!(
                "target {} msgs/s; latency from each message's scheduled send time",
                ctx.args.rate
            ));
            (rate_broker(&ctx)?, rate_raw(&ctx)?)
        }
        Workload::Shootout => {
            if ctx.args.durability == Durability::Fsync {
                notes.push("baseline: 1 KiB appends to a file, one fdatasync each".into());
            }
            let b = shootout_broker(&ctx)?;
            (b, shootout_raw(&ctx, spawned.as_ref().map(|s| s.dir.clone()))?)
        }
    };
    let server_copies = match spawned {
        Some(s) => Some(ServerCopies::from(&s.stop()?)),
        None => None,
    };
    let perftest = match &ctx.args.perftest {
        Some(script) => Some(run_perftest(script, size)?),
        None => None,
    };
    let report = Report {
        workload: ctx.args.workload,
        transport: ctx.args.transport.clone(),
        durability: ctx.args.durability.as_str(),
        count,
        size,
        broker,
        baseline,
        perftest,
        server_copies,
        notes,
    };
    print_table(&report);
    if let Some(path) = &ctx.args.json {
        let text = serde_json::to_string_pretty(&report).expect("serialisable");
        std::fs::write(path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if !report.broker.verified || !report.baseline.verified {
        return Err(
            "verification failed: messages were lost, duplicated, reordered or corrupted".into()
        );
    }
    Ok(())
}

/// A server started for one bench run; killed and its directory removed on drop.
struct SpawnedServer {
    child: Child,
    url: String,
    dir: PathBuf,
}

impl SpawnedServer {
    fn start(
        shards: Option<usize>,
        config: Option<String>,
        transport: &str,
        rdma_addr: Option<String>,
        idle_spin_us: Option<u64>,
    ) -> Result<SpawnedServer, String> {
        let dir = std::env::temp_dir().join(format!("rdmq-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut cmd = Process::new(exe);
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--stomp-listen",
            "off",
            "--mqtt-listen",
            "off",
            "--data-dir",
        ])
        .arg(&dir);
        if let Some(text) = config {
            let path = dir.join("bench.toml");
            std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
            cmd.arg("--config").arg(path);
        }
        if let Some(n) = shards {
            cmd.args(["--shards", &n.to_string()]);
        }
        let rdma = rdma_addr.map_or("off".to_string(), |a| format!("{a}:0"));
        cmd.args(["--rdma-listen", &rdma]);
        if let Some(us) = idle_spin_us {
            // Spinning clients share the cores with the shards: a shard pinned to a core that a
            // spinning client also lands on gets half of it (measured on the 2-core bench
            // machine, shm ping-pong p50: 5.0 µs pinned, 4.2 µs not, with one shard).
            cmd.args(["--idle-spin-us", &us.to_string(), "--no-pin"]);
        }
        // Its stderr goes to a file: the counters it prints when stopped are read back.
        let log = std::fs::File::create(dir.join("server.log")).map_err(|e| e.to_string())?;
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn rdmq serve: {e}"))?;
        // One `listening URL` line per listener (tcp first, shm last): take the transport's.
        // Read on a thread, so a server that never names it (RDMA or shm unavailable: it says
        // why on stderr and keeps running) is noticed instead of waited for.
        let out = BufReader::new(child.stdout.take().expect("piped"));
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let prefix = format!("listening {transport}://");
        let url = loop {
            let line = lines.recv_timeout(SPAWN_TIMEOUT).unwrap_or_default();
            if let Some(url) = line.strip_prefix("listening ").filter(|_| line.starts_with(&prefix))
            {
                break url.to_string();
            }
            if !line.starts_with("listening ") || line.starts_with("listening shm://") {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
                return Err(format!("spawned server does not serve {transport}: {line:?}\n{log}"));
            }
        };
        Ok(SpawnedServer { url, child, dir })
    }

    /// Stops the server with SIGTERM and returns the counters it prints when it stops.
    fn stop(mut self) -> Result<std::collections::BTreeMap<String, u64>, String> {
        let pid = self.child.id().to_string();
        let _ = Process::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().map_err(|e| e.to_string())?.is_none() {
            if Instant::now() >= deadline {
                return Err("spawned server ignored SIGTERM".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let line = log.lines().rev().find(|l| l.starts_with("rdmq: stopped;")).unwrap_or("");
        Ok(line
            .split_whitespace()
            .filter_map(|w| w.split_once('='))
            .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
            .collect())
    }
}

/// What the server copied, per message, in one run (from its counters).
#[derive(Debug, Serialize)]
struct ServerCopies {
    /// Bytes copied out of received data into memory the server keeps, per message published.
    in_per_msg: f64,
    /// Bytes a journal copied to write them, per message published.
    journal_per_msg: f64,
    /// Record bytes copied into DELIVER frames in an output buffer, per message delivered.
    deliver_per_msg: f64,
    /// Output bytes copied into clients' rings (shm, rdma), per message delivered.
    ring_out_per_msg: f64,
    published: u64,
    delivered: u64,
}

impl ServerCopies {
    fn from(c: &std::collections::BTreeMap<String, u64>) -> ServerCopies {
        let get = |k: &str| c.get(k).copied().unwrap_or(0);
        let (published, delivered) = (get("published"), get("delivered"));
        let per = |k: &str, n: u64| get(k) as f64 / n.max(1) as f64;
        ServerCopies {
            in_per_msg: per("copy_in_bytes", published),
            journal_per_msg: per("copy_journal_bytes", published),
            deliver_per_msg: per("copy_deliver_bytes", delivered),
            ring_out_per_msg: per("ring_bytes_out", delivered),
            published,
            delivered,
        }
    }
}

impl Drop for SpawnedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `bench-peer` child: started, announced ready, then its one result line.
struct Peer {
    child: Child,
    out: BufReader<ChildStdout>,
    /// Where a raw role listens: a loopback port or an shm socket path.
    addr: Option<String>,
}

impl Peer {
    fn start(ctx: &Ctx, role: &str, dest: &str, extra: &[String]) -> Result<Peer, String> {
        Self::start_n(ctx, role, dest, ctx.count, extra)
    }

    fn start_n(
        ctx: &Ctx,
        role: &str,
        dest: &str,
        count: u64,
        extra: &[String],
    ) -> Result<Peer, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut cmd = Process::new(exe);
        cmd.args(["bench-peer", "--role", role, "--url", &ctx.url, "--dest", dest])
            .args(["--count", &count.to_string(), "--size", &ctx.size.to_string()])
            .args(["--credit", &ctx.args.credit.to_string()])
            .args(["--transport", &ctx.args.transport])
            .args(["--rdma-addr", ctx.args.rdma_addr.as_deref().unwrap_or("")])
            .args(extra);
        if ctx.args.busy_poll {
            cmd.arg("--busy-poll");
        }
        let mut child =
            cmd.stdout(Stdio::piped()).spawn().map_err(|e| format!("spawn bench-peer: {e}"))?;
        let mut out = BufReader::new(child.stdout.take().expect("piped"));
        let mut line = String::new();
        out.read_line(&mut line).map_err(|e| e.to_string())?;
        let line = line.trim();
        if !line.starts_with("ready") {
            let _ = child.kill();
            return Err(format!("bench peer ({role}) failed to start: {line:?}"));
        }
        let addr = line.strip_prefix("ready ").map(str::to_string);
        Ok(Peer { child, out, addr })
    }

    fn connect(&self, ctx: &Ctx) -> Result<RawStream, String> {
        let addr = self.addr.as_deref().ok_or("raw peer announced no address")?;
        RawStream::connect(&ctx.args.transport, addr, ctx.args.busy_poll)
    }

    fn result(mut self) -> Result<PeerResult, String> {
        let mut line = String::new();
        self.out.read_line(&mut line).map_err(|e| e.to_string())?;
        let _ = self.child.wait();
        let json = line
            .trim()
            .strip_prefix("result ")
            .ok_or_else(|| format!("bench peer said {line:?}"))?;
        serde_json::from_str(json).map_err(|e| format!("bench peer result {json:?}: {e}"))
    }
}

/// A progress line on a terminal; silent when stderr is a file or pipe (CI logs).
struct Progress {
    label: &'static str,
    last: Instant,
    tty: bool,
}

impl Progress {
    fn new(label: &'static str) -> Progress {
        use std::io::IsTerminal;
        Progress { label, last: Instant::now(), tty: std::io::stderr().is_terminal() }
    }

    fn tick(&mut self, done: u64, total: u64) {
        if done & 0x3FF == 0 && self.last.elapsed() >= PROGRESS_EVERY && self.tty {
            self.last = Instant::now();
            eprint!("\r{}: {done}/{total}   ", self.label);
            let _ = std::io::stderr().flush();
        }
    }

    fn done(&self) {
        if self.tty {
            eprint!("\r{}\r", " ".repeat(60));
        }
    }
}

fn connect(ctx: &Ctx) -> Result<Connection, String> {
    let opts = ConnectionOptions {
        busy_poll: ctx.args.busy_poll,
        client_name: "rdmq-bench".into(),
        ..Default::default()
    };
    Connection::connect_with(&ctx.url, opts).map_err(|e| format!("{}: {e}", ctx.url))
}

fn declare(conn: &Connection, ctx: &Ctx, queue: &str) -> Result<(), String> {
    let opts = QueueOptions { durability: ctx.args.durability, ..Default::default() };
    conn.declare_queue(queue, &opts).map_err(|e| format!("declare {queue}: {e}"))
}

fn throughput(ctx: &Ctx, msgs: u64, secs: f64) -> Figures {
    Figures {
        msgs_per_s: msgs as f64 / secs,
        mb_per_s: msgs as f64 * ctx.size as f64 / secs / 1e6,
        seconds: secs,
        verified: true,
        ..Default::default()
    }
}

fn merge_peer(f: &mut Figures, r: &PeerResult) {
    if !r.verified {
        f.verified = false;
        f.error = f.error.take().or_else(|| r.error.clone());
    }
}

// ---- pingpong ----

/// Ping-pong runs in interleaved rounds (broker, raw, broker, raw, ...), each with fresh peer
/// processes: on a small shared machine the RTT depends on where the scheduler puts the two
/// processes, and alternating gives both sides the same lottery.
const PINGPONG_ROUNDS: u64 = 5;

/// One side's measurements, merged over rounds.
struct RttRuns {
    hist: Histogram<u64>,
    round_trips: u64,
    secs: f64,
    verified: bool,
    error: Option<String>,
}

impl RttRuns {
    fn new() -> RttRuns {
        let hist = peer::latency_histogram();
        RttRuns { hist, round_trips: 0, secs: 0.0, verified: true, error: None }
    }

    fn fail(&mut self, e: String) {
        self.verified = false;
        self.error.get_or_insert(e);
    }

    fn figures(&self, ctx: &Ctx) -> Figures {
        let msgs_per_s = self.round_trips as f64 / self.secs;
        Figures {
            msgs_per_s,
            mb_per_s: msgs_per_s * ctx.size as f64 / 1e6,
            seconds: self.secs,
            rtt_us: Some(percentiles_us(&self.hist).into()),
            verified: self.verified,
            error: self.error.clone(),
            ..Default::default()
        }
    }
}

fn pingpong(ctx: &Ctx) -> Result<(Figures, Figures), String> {
    let (mut broker, mut raw) = (RttRuns::new(), RttRuns::new());
    let per_round = ctx.count.div_ceil(PINGPONG_ROUNDS);
    for round in 0..PINGPONG_ROUNDS {
        let n = per_round.min(ctx.count - round * per_round);
        let warmup = if round == 0 { PINGPONG_WARMUP } else { PINGPONG_WARMUP / PINGPONG_ROUNDS };
        pingpong_broker(ctx, round, warmup, n, &mut broker)?;
        pingpong_raw(ctx, warmup, n, &mut raw)?;
    }
    Ok((broker.figures(ctx), raw.figures(ctx)))
}

fn pingpong_broker(
    ctx: &Ctx,
    round: u64,
    warmup: u64,
    n: u64,
    runs: &mut RttRuns,
) -> Result<(), String> {
    let total = warmup + n;
    let ping = format!("{}.ping{round}", ctx.run_id);
    let conn = connect(ctx)?;
    let mut pong = conn.subscribe(&format!("{ping}.pong")).map_err(|e| e.to_string())?;
    let peer = Peer::start_n(ctx, "responder", &ping, total, &[])?;
    let mut producer = conn.topic_producer(&ping);
    producer.set_confirms(false);
    let mut buf = Vec::new();
    let mut progress = Progress::new("pingpong (broker)");
    let start = Instant::now();
    for i in 0..total {
        fill_payload(i, 0, ctx.size, &mut buf);
        let t = Instant::now();
        producer.send(&buf).map_err(|e| e.to_string())?;
        producer.push().map_err(|e| e.to_string())?;
        let Some(d) = pong.receive(Some(peer::IDLE_TIMEOUT)).map_err(|e| e.to_string())? else {
            return Err(format!("pingpong: no reply to {i}"));
        };
        let rtt = t.elapsed().as_nanos() as u64;
        if check_payload(d.payload(), ctx.size).map(|(s, _)| s) != Ok(i) {
            runs.fail(format!("reply {i} wrong"));
        }
        if i >= warmup {
            runs.hist.saturating_record(rtt);
        }
        progress.tick(i, total);
    }
    progress.done();
    runs.secs += start.elapsed().as_secs_f64();
    runs.round_trips += total;
    let r = peer.result()?;
    if !r.verified {
        runs.fail(r.error.unwrap_or_default());
    }
    Ok(())
}

/// Appends one PUBLISH frame with one record to `out`.
fn raw_frame(out: &mut Vec<u8>, dest: &str, payload: &[u8]) {
    let mut w = PublishWriter::begin(out, DestKind::Topic, dest, 0);
    w.push(out, &RecordMeta { timestamp_us: now_ns() / 1000, ..Default::default() }, payload);
    w.finish(out);
}

fn pingpong_raw(ctx: &Ctx, warmup: u64, n: u64, runs: &mut RttRuns) -> Result<(), String> {
    let total = warmup + n;
    let peer = Peer::start_n(ctx, "echo", "raw", total, &[])?;
    let mut s = peer.connect(ctx)?;
    let (mut buf, mut frame, mut back) = (Vec::new(), Vec::new(), Vec::new());
    let start = Instant::now();
    for i in 0..total {
        fill_payload(i, 0, ctx.size, &mut buf);
        frame.clear();
        let t = Instant::now();
        raw_frame(&mut frame, "raw", &buf);
        s.write_all(&frame).map_err(|e| e.to_string())?;
        back.resize(frame.len(), 0);
        s.read_exact(&mut back).map_err(|e| format!("raw pingpong: {e}"))?;
        let rtt = t.elapsed().as_nanos() as u64;
        if back != frame {
            runs.fail(format!("echo {i} differs"));
        }
        if i >= warmup {
            runs.hist.saturating_record(rtt);
        }
    }
    runs.secs += start.elapsed().as_secs_f64();
    runs.round_trips += total;
    drop(s);
    let r = peer.result()?;
    if !r.verified {
        runs.fail(r.error.unwrap_or_default());
    }
    Ok(())
}

// ---- stream, fanout, rate: one producer, receivers in order ----

/// Publishes `count` bench payloads (plus `sentinels`), paced at `rate` msgs/s if given.
fn produce(
    ctx: &Ctx,
    conn: &Connection,
    kind: DestKind,
    dest: &str,
    rate: Option<u64>,
    sentinels: usize,
) -> Result<(), String> {
    let mut p = match kind {
        DestKind::Queue => conn.queue_producer(dest),
        DestKind::Topic => conn.topic_producer(dest),
    };
    let mut buf = Vec::new();
    let mut progress = Progress::new("broker");
    let start = Instant::now();
    for i in 0..ctx.count {
        let stamp = match rate {
            Some(r) => pace(start, i, r),
            None => 0,
        };
        fill_payload(i, stamp, ctx.size, &mut buf);
        p.send(&buf).map_err(|e| e.to_string())?;
        if rate.is_some() {
            p.push().map_err(|e| e.to_string())?;
        }
        progress.tick(i, ctx.count);
    }
    for _ in 0..sentinels {
        fill_payload(SENTINEL, 0, ctx.size, &mut buf);
        p.send(&buf).map_err(|e| e.to_string())?;
    }
    p.flush().map_err(|e| e.to_string())?;
    progress.done();
    Ok(())
}

/// Waits until message `i` is due at `rate` msgs/s after `start`; returns its scheduled time in
/// ns since the epoch, so latency counts from when it should have been sent (no coordinated
/// omission: a stall delays the send, and the delay is measured).
fn pace(start: Instant, i: u64, rate: u64) -> u64 {
    let due = start + Duration::from_nanos(i * 1_000_000_000 / rate);
    loop {
        let now = Instant::now();
        if now >= due {
            let late = now - due;
            return now_ns() - late.as_nanos() as u64;
        }
        if due - now > Duration::from_micros(200) {
            std::thread::sleep(due - now - Duration::from_micros(100));
        } else {
            std::hint::spin_loop();
        }
    }
}

fn stream_broker(ctx: &Ctx) -> Result<Figures, String> {
    let queue = format!("{}.stream", ctx.run_id);
    let conn = connect(ctx)?;
    declare(&conn, ctx, &queue)?;
    let peer = Peer::start(ctx, "consumer", &queue, &[])?;
    let start = Instant::now();
    produce(ctx, &conn, DestKind::Queue, &queue, None, 0)?;
    let r = peer.result()?;
    let mut f = throughput(ctx, r.received, start.elapsed().as_secs_f64());
    merge_peer(&mut f, &r);
    let _ = conn.delete_queue(&queue);
    Ok(f)
}

/// Writes `count` bench payloads as PUBLISH frames to every stream, round-robin per message when
/// `deal` (compete), to all when not (stream, fanout); paced if `rate`.
fn produce_raw(
    ctx: &Ctx,
    streams: &mut [RawStream],
    deal: bool,
    rate: Option<u64>,
) -> Result<(), String> {
    let n = streams.len();
    let mut frames: Vec<Vec<u8>> =
        (0..n).map(|_| Vec::with_capacity(RAW_BATCH_BYTES * 2)).collect();
    let mut writers: Vec<Option<PublishWriter>> = (0..n).map(|_| None).collect();
    let mut buf = Vec::new();
    let mut progress = Progress::new("raw");
    let start = Instant::now();
    let total = ctx.count + if deal { n as u64 } else { 0 };
    for i in 0..total {
        let (seq, stamp) = match (i >= ctx.count, rate) {
            (true, _) => (SENTINEL, 0),
            (false, Some(r)) => (i, pace(start, i, r)),
            (false, None) => (i, 0),
        };
        fill_payload(seq, stamp, ctx.size, &mut buf);
        let targets = if deal { (i as usize % n)..(i as usize % n + 1) } else { 0..n };
        for t in targets {
            let w = writers[t].get_or_insert_with(|| {
                PublishWriter::begin(&mut frames[t], DestKind::Queue, "raw", 0)
            });
            w.push(
                &mut frames[t],
                &RecordMeta { timestamp_us: stamp / 1000, ..Default::default() },
                &buf,
            );
            if w.len(&frames[t]) >= RAW_BATCH_BYTES || rate.is_some() {
                writers[t].take().expect("present").finish(&mut frames[t]);
                streams[t].write_all(&frames[t]).map_err(|e| format!("raw write: {e}"))?;
                frames[t].clear();
            }
        }
        progress.tick(i, total);
    }
    for t in 0..n {
        if let Some(w) = writers[t].take() {
            w.finish(&mut frames[t]);
            streams[t].write_all(&frames[t]).map_err(|e| format!("raw write: {e}"))?;
        }
    }
    progress.done();
    Ok(())
}

fn stream_raw(ctx: &Ctx) -> Result<Figures, String> {
    let peer = Peer::start(ctx, "raw-receiver", "raw", &[])?;
    let mut s = [peer.connect(ctx)?];
    let start = Instant::now();
    produce_raw(ctx, &mut s, false, None)?;
    let r = peer.result()?;
    let mut f = throughput(ctx, r.received, start.elapsed().as_secs_f64());
    merge_peer(&mut f, &r);
    Ok(f)
}

fn fanout_broker(ctx: &Ctx) -> Result<Figures, String> {
    let topic = format!("{}.fanout", ctx.run_id);
    let peers = (0..ctx.args.subscribers)
        .map(|_| Peer::start(ctx, "subscriber", &topic, &[]))
        .collect::<Result<Vec<_>, _>>()?;
    let conn = connect(ctx)?;
    let start = Instant::now();
    produce(ctx, &conn, DestKind::Topic, &topic, None, 0)?;
    let produced_ns = now_ns();
    fanout_figures(ctx, start, produced_ns, peers)
}

fn fanout_figures(
    ctx: &Ctx,
    start: Instant,
    produced_ns: u64,
    peers: Vec<Peer>,
) -> Result<Figures, String> {
    let results = peers.into_iter().map(Peer::result).collect::<Result<Vec<_>, _>>()?;
    let secs = start.elapsed().as_secs_f64();
    let delivered: u64 = results.iter().map(|r| r.received).sum();
    let mut f = throughput(ctx, delivered, secs);
    let last = results.iter().map(|r| r.finished_ns).max().unwrap_or(produced_ns);
    f.slowest_lag_ms = Some(last.saturating_sub(produced_ns) as f64 / 1e6);
    for r in &results {
        merge_peer(&mut f, r);
    }
    Ok(f)
}

fn fanout_raw(ctx: &Ctx) -> Result<Figures, String> {
    let peers = (0..ctx.args.subscribers)
        .map(|_| Peer::start(ctx, "raw-receiver", "raw", &[]))
        .collect::<Result<Vec<_>, _>>()?;
    let mut streams = peers.iter().map(|p| p.connect(ctx)).collect::<Result<Vec<_>, _>>()?;
    let start = Instant::now();
    produce_raw(ctx, &mut streams, false, None)?;
    let produced_ns = now_ns();
    fanout_figures(ctx, start, produced_ns, peers)
}

fn rate_broker(ctx: &Ctx) -> Result<Figures, String> {
    let queue = format!("{}.rate", ctx.run_id);
    let conn = connect(ctx)?;
    declare(&conn, ctx, &queue)?;
    let peer = Peer::start(ctx, "consumer", &queue, &["--latency".into()])?;
    let start = Instant::now();
    produce(ctx, &conn, DestKind::Queue, &queue, Some(ctx.args.rate), 0)?;
    rate_figures(ctx, start, peer)
}

fn rate_figures(ctx: &Ctx, start: Instant, peer: Peer) -> Result<Figures, String> {
    let r = peer.result()?;
    let mut f = throughput(ctx, r.received, start.elapsed().as_secs_f64());
    f.latency_us = r.latency_us.map(Pcts::from);
    merge_peer(&mut f, &r);
    Ok(f)
}

fn rate_raw(ctx: &Ctx) -> Result<Figures, String> {
    let peer = Peer::start(ctx, "raw-receiver", "raw", &["--latency".into()])?;
    let mut s = [peer.connect(ctx)?];
    let start = Instant::now();
    produce_raw(ctx, &mut s, false, Some(ctx.args.rate))?;
    rate_figures(ctx, start, peer)
}

// ---- compete ----

fn ids_path(ctx: &Ctx, tag: &str, i: usize) -> PathBuf {
    std::env::temp_dir().join(format!("{}.{tag}.{i}.ids", ctx.run_id))
}

/// Reads every peer's id file and checks each sequence below `count` appears exactly once.
fn exactly_once(ctx: &Ctx, paths: &[PathBuf]) -> Result<(), String> {
    let mut seen = vec![false; ctx.count as usize];
    for p in paths {
        let bytes = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
        let _ = std::fs::remove_file(p);
        for c in bytes.chunks_exact(8) {
            let seq = u64::from_le_bytes(c.try_into().expect("8 bytes"));
            let slot = seen.get_mut(seq as usize).ok_or(format!("unknown message {seq}"))?;
            if std::mem::replace(slot, true) {
                return Err(format!("message {seq} delivered twice"));
            }
        }
    }
    match seen.iter().position(|s| !s) {
        Some(missing) => Err(format!("message {missing} never delivered")),
        None => Ok(()),
    }
}

fn compete_figures(
    ctx: &Ctx,
    start: Instant,
    peers: Vec<Peer>,
    paths: &[PathBuf],
) -> Result<Figures, String> {
    let results = peers.into_iter().map(Peer::result).collect::<Result<Vec<_>, _>>()?;
    let received: u64 = results.iter().map(|r| r.received).sum();
    let mut f = throughput(ctx, received, start.elapsed().as_secs_f64());
    for r in &results {
        merge_peer(&mut f, r);
    }
    if let Err(e) = exactly_once(ctx, paths) {
        f.verified = false;
        f.error.get_or_insert(e);
    }
    Ok(f)
}

fn compete_broker(ctx: &Ctx) -> Result<Figures, String> {
    let queue = format!("{}.compete", ctx.run_id);
    let conn = connect(ctx)?;
    declare(&conn, ctx, &queue)?;
    let paths: Vec<PathBuf> = (0..ctx.args.consumers).map(|i| ids_path(ctx, "broker", i)).collect();
    let peers = paths
        .iter()
        .map(|p| {
            Peer::start(ctx, "competitor", &queue, &["--ids-file".into(), p.display().to_string()])
        })
        .collect::<Result<Vec<_>, _>>()?;
    let start = Instant::now();
    produce(ctx, &conn, DestKind::Queue, &queue, None, ctx.args.consumers)?;
    compete_figures(ctx, start, peers, &paths)
}

fn compete_raw(ctx: &Ctx) -> Result<Figures, String> {
    let paths: Vec<PathBuf> = (0..ctx.args.consumers).map(|i| ids_path(ctx, "raw", i)).collect();
    let peers = paths
        .iter()
        .map(|p| {
            Peer::start(
                ctx,
                "raw-competitor",
                "raw",
                &["--ids-file".into(), p.display().to_string()],
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut streams = peers.iter().map(|p| p.connect(ctx)).collect::<Result<Vec<_>, _>>()?;
    let start = Instant::now();
    produce_raw(ctx, &mut streams, true, None)?;
    compete_figures(ctx, start, peers, &paths)
}

// ---- shootout ----

fn shootout_broker(ctx: &Ctx) -> Result<Figures, String> {
    let queue = format!("{}.shootout", ctx.run_id);
    let conn = connect(ctx)?;
    declare(&conn, ctx, &queue)?;
    let start = Instant::now();
    produce(ctx, &conn, DestKind::Queue, &queue, None, 0)?;
    let enqueue = start.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut c = conn.consume(&queue, ctx.args.credit).map_err(|e| e.to_string())?;
    let mut f = Figures { verified: true, ..Default::default() };
    for i in 0..ctx.count {
        let Some(d) = c.receive(Some(peer::IDLE_TIMEOUT)).map_err(|e| e.to_string())? else {
            f.verified = false;
            f.error = Some(format!("dequeued {i} of {}", ctx.count));
            break;
        };
        if check_payload(d.payload(), ctx.size).map(|(s, _)| s) != Ok(i) && f.verified {
            f.verified = false;
            f.error = Some(format!("message {i} wrong or out of order"));
        }
        c.ack(&d).map_err(|e| e.to_string())?;
    }
    c.close().map_err(|e| e.to_string())?;
    let dequeue = t.elapsed().as_secs_f64();
    let _ = conn.delete_queue(&queue);
    Ok(shootout_figures(ctx, enqueue, dequeue, f))
}

fn shootout_figures(ctx: &Ctx, enqueue: f64, dequeue: f64, mut f: Figures) -> Figures {
    let total = enqueue + dequeue;
    f.seconds = total;
    f.enqueue_msgs_per_s = Some(ctx.count as f64 / enqueue);
    f.dequeue_msgs_per_s = Some(ctx.count as f64 / dequeue);
    f.msgs_per_s = 2.0 * ctx.count as f64 / total;
    f.mb_per_s = f.msgs_per_s * ctx.size as f64 / 1e6;
    f
}

/// memory/flush: the same frames to a raw peer and back (it stores and replays them);
/// fsync: 1 KiB appends to a file with one fdatasync each, as a broker without group commit.
fn shootout_raw(ctx: &Ctx, data_dir: Option<PathBuf>) -> Result<Figures, String> {
    if ctx.args.durability == Durability::Fsync {
        let dir = data_dir.unwrap_or_else(|| PathBuf::from("rdmq-data"));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let path = dir.join(format!("{}.raw-fsync", ctx.run_id));
        let mut file = std::fs::File::create(&path).map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        let start = Instant::now();
        for i in 0..ctx.count {
            fill_payload(i, 0, ctx.size, &mut buf);
            file.write_all(&buf).and_then(|_| file.sync_data()).map_err(|e| e.to_string())?;
        }
        let enqueue = start.elapsed().as_secs_f64();
        let t = Instant::now();
        let bytes = std::fs::read(&path).map_err(|e| e.to_string())?;
        let mut f = Figures { verified: true, ..Default::default() };
        for (i, chunk) in bytes.chunks(ctx.size).enumerate() {
            if check_payload(chunk, ctx.size).map(|(s, _)| s) != Ok(i as u64) {
                f.verified = false;
            }
        }
        let dequeue = t.elapsed().as_secs_f64();
        let _ = std::fs::remove_file(&path);
        return Ok(shootout_figures(ctx, enqueue, dequeue, f));
    }
    // Enqueue: stream to a raw receiver (which verifies); dequeue: a second stream back from a
    // second raw transfer of the same bytes.
    let peer = Peer::start(ctx, "raw-receiver", "raw", &[])?;
    let mut s = [peer.connect(ctx)?];
    let start = Instant::now();
    produce_raw(ctx, &mut s, false, None)?;
    let r = peer.result()?;
    let enqueue = start.elapsed().as_secs_f64();
    let mut f = Figures { verified: true, ..Default::default() };
    merge_peer(&mut f, &r);
    let peer = Peer::start(ctx, "raw-receiver", "raw", &[])?;
    let mut s = [peer.connect(ctx)?];
    let t = Instant::now();
    produce_raw(ctx, &mut s, false, None)?;
    let r = peer.result()?;
    let dequeue = t.elapsed().as_secs_f64();
    merge_peer(&mut f, &r);
    Ok(shootout_figures(ctx, enqueue, dequeue, f))
}

// ---- output ----

/// Runs the perftest script and collects its `PERFTEST name key=value...` lines as
/// `name.key` figures (numbers only).
fn run_perftest(
    script: &std::path::Path,
    size: usize,
) -> Result<std::collections::BTreeMap<String, f64>, String> {
    let out = Process::new(script)
        .env("PERFTEST_LAT_SIZE", size.to_string())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("{}: {e}", script.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut figures = std::collections::BTreeMap::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("PERFTEST") {
            continue;
        }
        let name = words.next().unwrap_or("?");
        for kv in words {
            if let Some((k, v)) = kv.split_once('=') {
                if let Ok(v) = v.parse::<f64>() {
                    figures.insert(format!("{name}.{k}"), v);
                }
            }
        }
    }
    if !out.status.success() || figures.is_empty() {
        return Err(format!("{} failed ({}): {text}", script.display(), out.status));
    }
    Ok(figures)
}

fn print_perftest(r: &Report) {
    let Some(p) = &r.perftest else { return };
    println!("perftest (verbs floor, same run):");
    if let (Some(lat), Some(rtt)) = (p.get("ib_send_lat.t_typical_us"), r.broker.rtt_us) {
        // ib_send_lat reports one-way latency: a round trip is twice that.
        let floor = 2.0 * lat;
        println!(
            "  ib_send_lat typical {lat:.1} us one way = {floor:.1} us round trip; broker rtt p50 \
             {:.1} us = {:.2}x, raw rdma rtt p50 {:.1} us = {:.2}x",
            rtt.p50,
            rtt.p50 / floor,
            r.baseline.rtt_us.map_or(f64::NAN, |x| x.p50),
            r.baseline.rtt_us.map_or(f64::NAN, |x| x.p50 / floor)
        );
        // Through the broker a round trip crosses the network four times (publish, deliver to
        // the responder, its publish, deliver back); perftest's and the raw baseline's twice.
        println!(
            "  the broker's round trip is four one-way hops, perftest's two: broker rtt p50 = \
             {:.2}x four hops of ib_send_lat",
            rtt.p50 / (2.0 * floor)
        );
    }
    if let (Some(bw), None) = (p.get("ib_write_bw.bw_avg_MBps"), r.broker.rtt_us) {
        println!(
            "  ib_write_bw average {bw:.1} MB/s; broker {:.1} MB/s = {:.2}x, raw rdma {:.1} MB/s = \
             {:.2}x",
            r.broker.mb_per_s,
            r.broker.mb_per_s / bw,
            r.baseline.mb_per_s,
            r.baseline.mb_per_s / bw
        );
    }
}

fn print_table(r: &Report) {
    println!(
        "workload {:?}  transport {}  durability {}  count {}  size {} B",
        r.workload, r.transport, r.durability, r.count, r.size
    );
    println!("{:<22}{:>16}{:>16}{:>10}", "", "broker", "raw baseline", "ratio");
    let row = |name: &str, a: f64, b: f64| {
        let ratio = if b > 0.0 { a / b } else { f64::NAN };
        println!("{name:<22}{a:>16.1}{b:>16.1}{ratio:>10.2}");
    };
    let (b, raw) = (&r.broker, &r.baseline);
    row("msgs/s", b.msgs_per_s, raw.msgs_per_s);
    row("MB/s", b.mb_per_s, raw.mb_per_s);
    row("seconds", b.seconds, raw.seconds);
    if let (Some(x), Some(y)) = (b.enqueue_msgs_per_s, raw.enqueue_msgs_per_s) {
        row("enqueue msgs/s", x, y);
    }
    if let (Some(x), Some(y)) = (b.dequeue_msgs_per_s, raw.dequeue_msgs_per_s) {
        row("dequeue msgs/s", x, y);
    }
    if let (Some(x), Some(y)) = (b.slowest_lag_ms, raw.slowest_lag_ms) {
        row("slowest lag ms", x, y);
    }
    for (label, x, y) in [("rtt", b.rtt_us, raw.rtt_us), ("latency", b.latency_us, raw.latency_us)]
    {
        if let (Some(x), Some(y)) = (x, y) {
            row(&format!("{label} p50 us"), x.p50, y.p50);
            row(&format!("{label} p99 us"), x.p99, y.p99);
            row(&format!("{label} p99.9 us"), x.p999, y.p999);
            row(&format!("{label} max us"), x.max, y.max);
        }
    }
    let yes = |f: &Figures| {
        if f.verified {
            "yes".to_string()
        } else {
            format!("NO: {}", f.error.clone().unwrap_or_default())
        }
    };
    println!("{:<22}{:>16}{:>16}", "verified", yes(b), yes(raw));
    if let Some(c) = &r.server_copies {
        println!(
            "server copies, bytes per message (payload {} B): received -> kept {:.1}, kept -> \
             journal {:.1}, record -> DELIVER frame (output buffer or client ring) {:.1}, output \
             buffer -> client ring {:.1}",
            r.size, c.in_per_msg, c.journal_per_msg, c.deliver_per_msg, c.ring_out_per_msg
        );
    }
    print_perftest(r);
    for n in &r.notes {
        println!("note: {n}");
    }
}
