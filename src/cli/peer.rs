//! `rdmq bench-peer`: the other process of each benchmark. The parent starts one (or several)
//! per run; each prints `ready [PORT]` once it can receive, then one `result JSON` line.
//!
//! Broker roles connect to the server as ordinary clients. Raw roles listen on a loopback port
//! and receive the same frames straight from the parent, with no broker between: the floor.

use std::io::{BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixListener;

use rdmq_client::shm::ShmStream;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use rdmq_client::wire::record::BatchView;
use rdmq_client::wire::{self, Command};
use rdmq_client::{Connection, ConnectionOptions};
use serde::{Deserialize, Serialize};

/// A peer that hears nothing for this long reports what it has and stops: loss is reported,
/// never waited on forever.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(20);
/// Payload sequence marking the end of a competing-consumers run.
pub const SENTINEL: u64 = u64::MAX;
/// Bytes at the start of every bench payload: sequence and send timestamp.
pub const PAYLOAD_HEADER: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// Ping-pong through the broker: answer each message on the ping topic on the pong topic.
    Responder,
    /// Raw ping-pong: echo each frame back.
    Echo,
    /// Receive `count` messages in order from a queue (acking) and verify them.
    Consumer,
    /// Receive `count` messages in order from a topic and verify them.
    Subscriber,
    /// Compete on a queue until a sentinel arrives; write received sequences to `--ids-file`.
    Competitor,
    /// Raw receiver of `count` in-order messages (stream, fanout, rate).
    RawReceiver,
    /// Raw receiver for compete: until a sentinel, writing sequences to `--ids-file`.
    RawCompetitor,
}

#[derive(Args, Debug)]
pub struct PeerArgs {
    #[arg(long, value_enum)]
    role: Role,
    #[arg(long, default_value = "")]
    url: String,
    /// Destination (queue, topic, or ping topic; the pong topic is `<dest>.pong`).
    #[arg(long, default_value = "")]
    dest: String,
    #[arg(long, default_value_t = 0)]
    count: u64,
    #[arg(long, default_value_t = 64)]
    size: usize,
    #[arg(long, default_value_t = 1024)]
    credit: u32,
    #[arg(long)]
    ids_file: Option<std::path::PathBuf>,
    #[arg(long)]
    busy_poll: bool,
    /// Record end-to-end latency from the payload's timestamp (rate workload).
    #[arg(long)]
    latency: bool,
    /// Transport of the raw roles: tcp (a loopback port), shm (a socket in the temp dir) or
    /// rdma (rdma_cm on --rdma-addr).
    #[arg(long, default_value = "tcp")]
    transport: String,
    /// The RDMA device's IPv4 address, for raw rdma roles.
    #[arg(long, default_value = "")]
    rdma_addr: String,
}

/// Ring bytes of a raw RDMA baseline: the client crate's own RDMA ring size.
#[cfg(feature = "rdma")]
pub const RAW_RDMA_RING_BYTES: usize = rdmq_client::RDMA_RING_BYTES;

/// Ring bytes of a raw shm baseline: the server's default `shm_ring_bytes`, so both sides
/// move the same amount per wake-up.
pub const RAW_SHM_RING_BYTES: usize = 4 << 20;

/// A raw baseline's byte stream: a loopback TCP socket or a shared-memory ring pair, driven
/// exactly as the broker's client drives its own transport.
pub enum RawStream {
    Tcp(TcpStream),
    Shm(Box<ShmStream>),
    #[cfg(feature = "rdma")]
    Rdma(Box<rdmq_client::rdma::RdmaStream>),
}

impl RawStream {
    /// Connects to a raw peer's announced address: a port, or an shm socket path.
    pub fn connect(transport: &str, addr: &str, busy_poll: bool) -> Result<RawStream, String> {
        if transport == "shm" {
            let mut s =
                ShmStream::connect(std::path::Path::new(addr)).map_err(|e| e.to_string())?;
            s.set_busy_poll(busy_poll);
            return Ok(RawStream::Shm(Box::new(s)));
        }
        #[cfg(feature = "rdma")]
        if transport == "rdma" {
            let mut s = rdmq_client::rdma::RdmaStream::connect(addr, RAW_RDMA_RING_BYTES)
                .map_err(|e| e.to_string())?;
            s.set_busy_poll(busy_poll);
            return Ok(RawStream::Rdma(Box::new(s)));
        }
        let port: u16 = addr.parse().map_err(|_| format!("raw peer announced {addr:?}"))?;
        let s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        Ok(RawStream::Tcp(s))
    }
}

impl Read for RawStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            RawStream::Tcp(s) => s.read(buf),
            RawStream::Shm(s) => s.read(buf),
            #[cfg(feature = "rdma")]
            RawStream::Rdma(s) => s.read(buf),
        }
    }
}

impl Write for RawStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            RawStream::Tcp(s) => s.write(buf),
            RawStream::Shm(s) => s.write(buf),
            #[cfg(feature = "rdma")]
            RawStream::Rdma(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            #[cfg(feature = "rdma")]
            RawStream::Rdma(s) => s.flush(),
            _ => Ok(()),
        }
    }
}

/// What a peer reports.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct PeerResult {
    pub received: u64,
    pub verified: bool,
    pub error: Option<String>,
    /// Wall clock (ns since the epoch) when the last message arrived.
    pub finished_ns: u64,
    /// End-to-end latency percentiles in µs, when asked for.
    pub latency_us: Option<[f64; 4]>,
}

pub fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// Writes the bench payload for `seq`: sequence, timestamp, then a pattern derived from both.
pub fn fill_payload(seq: u64, stamp_ns: u64, size: usize, buf: &mut Vec<u8>) {
    buf.clear();
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&stamp_ns.to_le_bytes());
    let base = seq as u8;
    buf.extend((PAYLOAD_HEADER..size.max(PAYLOAD_HEADER)).map(|i| base.wrapping_add(i as u8)));
}

/// Checks a payload's size and pattern; returns (sequence, timestamp).
pub fn check_payload(p: &[u8], size: usize) -> Result<(u64, u64), String> {
    if p.len() != size.max(PAYLOAD_HEADER) {
        return Err(format!("payload of {} bytes, expected {}", p.len(), size));
    }
    let seq = u64::from_le_bytes(p[0..8].try_into().expect("8 bytes"));
    let stamp = u64::from_le_bytes(p[8..16].try_into().expect("8 bytes"));
    let base = seq as u8;
    if p[PAYLOAD_HEADER..]
        .iter()
        .enumerate()
        .any(|(i, &b)| b != base.wrapping_add((i + PAYLOAD_HEADER) as u8))
    {
        return Err(format!("payload of message {seq} is corrupt"));
    }
    Ok((seq, stamp))
}

/// In-order verification shared by every receiving role.
struct Checker {
    size: usize,
    next: u64,
    error: Option<String>,
    hist: Option<Histogram<u64>>,
}

impl Checker {
    fn new(size: usize, latency: bool) -> Checker {
        let hist = latency.then(latency_histogram);
        Checker { size, next: 0, error: None, hist }
    }

    fn see(&mut self, payload: &[u8]) {
        match check_payload(payload, self.size) {
            Ok((seq, stamp)) => {
                if seq != self.next && self.error.is_none() {
                    self.error = Some(format!("expected message {}, got {seq}", self.next));
                }
                if let Some(h) = &mut self.hist {
                    h.saturating_record(now_ns().saturating_sub(stamp));
                }
            }
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
        self.next += 1;
    }

    fn result(self, count: u64) -> PeerResult {
        let mut error = self.error;
        if error.is_none() && self.next != count {
            error = Some(format!("received {} of {count} messages", self.next));
        }
        PeerResult {
            received: self.next,
            verified: error.is_none(),
            error,
            finished_ns: now_ns(),
            latency_us: self.hist.map(|h| percentiles_us(&h)),
        }
    }
}

/// A histogram of nanoseconds from 1 ns to an hour, 3 significant figures. Recording saturates
/// at the top rather than growing.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid bounds")
}

/// p50, p99, p99.9 and max of a nanosecond histogram, in µs.
pub fn percentiles_us(h: &Histogram<u64>) -> [f64; 4] {
    let us = |v: u64| v as f64 / 1000.0;
    [
        us(h.value_at_quantile(0.5)),
        us(h.value_at_quantile(0.99)),
        us(h.value_at_quantile(0.999)),
        us(h.max()),
    ]
}

/// One line to the parent. A parent that already gave up (closed the pipe) is not an error
/// worth a panic trace on top of its own report.
fn announce(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|_| out.flush());
}

pub fn run(a: PeerArgs) -> Result<(), String> {
    let result = match a.role {
        Role::Responder => responder(&a),
        Role::Echo => echo(&a),
        Role::Consumer | Role::Subscriber => receiver(&a),
        Role::Competitor => competitor(&a),
        Role::RawReceiver | Role::RawCompetitor => raw_receiver(&a),
    };
    let r = result.unwrap_or_else(|e| PeerResult {
        error: Some(e),
        finished_ns: now_ns(),
        ..Default::default()
    });
    announce(&format!("result {}", serde_json::to_string(&r).expect("serialisable")));
    Ok(())
}

fn connect(a: &PeerArgs) -> Result<Connection, String> {
    let opts = ConnectionOptions {
        busy_poll: a.busy_poll,
        client_name: "rdmq-bench".into(),
        ..Default::default()
    };
    Connection::connect_with(&a.url, opts).map_err(|e| format!("{}: {e}", a.url))
}

fn responder(a: &PeerArgs) -> Result<PeerResult, String> {
    let conn = connect(a)?;
    let mut sub = conn.subscribe(&a.dest).map_err(|e| e.to_string())?;
    let mut producer = conn.topic_producer(&format!("{}.pong", a.dest));
    producer.set_confirms(false);
    announce("ready");
    let mut n = 0;
    while n < a.count {
        let Some(d) = sub.receive(Some(IDLE_TIMEOUT)).map_err(|e| e.to_string())? else {
            return Err(format!("responder timed out after {n} of {}", a.count));
        };
        producer.send(d.payload()).map_err(|e| e.to_string())?;
        producer.push().map_err(|e| e.to_string())?;
        n += 1;
    }
    Ok(PeerResult { received: n, verified: true, finished_ns: now_ns(), ..Default::default() })
}

fn receiver(a: &PeerArgs) -> Result<PeerResult, String> {
    let conn = connect(a)?;
    let mut check = Checker::new(a.size, a.latency);
    if a.role == Role::Consumer {
        let mut c = conn.consume(&a.dest, a.credit).map_err(|e| e.to_string())?;
        announce("ready");
        for _ in 0..a.count {
            let Some(d) = c.receive(Some(IDLE_TIMEOUT)).map_err(|e| e.to_string())? else {
                break;
            };
            check.see(d.payload());
            c.ack(&d).map_err(|e| e.to_string())?;
        }
        c.close().map_err(|e| e.to_string())?;
    } else {
        let mut s = conn.subscribe(&a.dest).map_err(|e| e.to_string())?;
        announce("ready");
        for _ in 0..a.count {
            let Some(d) = s.receive(Some(IDLE_TIMEOUT)).map_err(|e| e.to_string())? else {
                break;
            };
            check.see(d.payload());
        }
    }
    Ok(check.result(a.count))
}

/// Writes received sequences as little-endian u64s for the parent's exactly-once check.
fn ids_writer(a: &PeerArgs) -> Result<BufWriter<std::fs::File>, String> {
    let path = a.ids_file.as_ref().ok_or("--ids-file is required for this role")?;
    let f = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(BufWriter::new(f))
}

fn competitor(a: &PeerArgs) -> Result<PeerResult, String> {
    let conn = connect(a)?;
    let mut ids = ids_writer(a)?;
    let mut c = conn.consume(&a.dest, a.credit).map_err(|e| e.to_string())?;
    announce("ready");
    let mut r = PeerResult { verified: true, ..Default::default() };
    let mut last: Option<u64> = None;
    loop {
        let Some(d) = c.receive(Some(IDLE_TIMEOUT)).map_err(|e| e.to_string())? else {
            r.verified = false;
            r.error = Some(format!("no sentinel after {} messages", r.received));
            break;
        };
        let (seq, _) = check_payload(d.payload(), a.size)?;
        c.ack(&d).map_err(|e| e.to_string())?;
        if seq == SENTINEL {
            break;
        }
        if last.is_some_and(|l| seq <= l) && !d.redelivered && r.error.is_none() {
            r.verified = false;
            r.error = Some(format!("message {seq} after {}", last.unwrap_or(0)));
        }
        last = Some(seq);
        ids.write_all(&seq.to_le_bytes()).map_err(|e| e.to_string())?;
        r.received += 1;
    }
    c.close().map_err(|e| e.to_string())?;
    ids.flush().map_err(|e| e.to_string())?;
    r.finished_ns = now_ns();
    Ok(r)
}

/// Accepts one connection on a fresh loopback port (or shm socket), announcing where.
fn accept_one(a: &PeerArgs) -> Result<RawStream, String> {
    if a.transport == "shm" {
        let dir = std::env::temp_dir().join(format!("rdmq-raw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let path = dir.join("raw.sock");
        let _ = std::fs::remove_file(&path);
        let l = UnixListener::bind(&path).map_err(|e| e.to_string())?;
        announce(&format!("ready {}", path.display()));
        let s = ShmStream::accept(&l, RAW_SHM_RING_BYTES).map_err(|e| e.to_string());
        let _ = std::fs::remove_dir_all(&dir);
        let mut s = s?;
        s.set_busy_poll(a.busy_poll);
        return Ok(RawStream::Shm(Box::new(s)));
    }
    #[cfg(feature = "rdma")]
    if a.transport == "rdma" {
        use rdmq_client::rdma::{resolve_v4, RdmaListener, RdmaStream};
        let bind = resolve_v4(&format!("{}:0", a.rdma_addr)).map_err(|e| e.to_string())?;
        let l = RdmaListener::bind(bind).map_err(|e| e.to_string())?;
        announce(&format!("ready {}:{}", a.rdma_addr, l.port));
        let mut s = RdmaStream::accept(l).map_err(|e| e.to_string())?;
        s.set_busy_poll(a.busy_poll);
        return Ok(RawStream::Rdma(Box::new(s)));
    }
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let port = l.local_addr().map_err(|e| e.to_string())?.port();
    announce(&format!("ready {port}"));
    let (s, _) = l.accept().map_err(|e| e.to_string())?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(IDLE_TIMEOUT)).map_err(|e| e.to_string())?;
    Ok(RawStream::Tcp(s))
}

/// Reads whole frames from a raw stream and hands each PUBLISH batch to `f`, which returns
/// false to stop.
pub fn read_batches(
    s: &mut RawStream,
    mut f: impl FnMut(&mut RawStream, &BatchView<'_>, &[u8]) -> bool,
) -> Result<(), String> {
    let mut buf = vec![0u8; 1 << 20];
    let (mut start, mut end) = (0usize, 0usize);
    loop {
        while let Some((h, body)) =
            wire::split_frame(&buf[start..end], usize::MAX).map_err(|e| e.to_string())?
        {
            let len = wire::FRAME_HEADER_LEN + body.len();
            let frame = &buf[start..start + len];
            let Command::Publish(p) = wire::decode(&h, body).map_err(|e| e.to_string())? else {
                return Err("raw peer expected PUBLISH frames".into());
            };
            if !f(s, &p.batch, frame) {
                return Ok(());
            }
            start += len;
        }
        if start == end {
            start = 0;
            end = 0;
        } else if end == buf.len() {
            buf.copy_within(start..end, 0);
            end -= start;
            start = 0;
            if end == buf.len() {
                buf.resize(buf.len() * 2, 0);
            }
        }
        let n = s.read(&mut buf[end..]).map_err(|e| format!("raw read: {e}"))?;
        if n == 0 {
            return Err("raw sender closed early".into());
        }
        end += n;
    }
}

fn echo(a: &PeerArgs) -> Result<PeerResult, String> {
    let mut s = accept_one(a)?;
    let mut n = 0;
    let mut failed = None;
    read_batches(&mut s, |out, _, frame| {
        if let Err(e) = out.write_all(frame) {
            failed = Some(e.to_string());
            return false;
        }
        n += 1;
        n < a.count
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    Ok(PeerResult { received: n, verified: true, finished_ns: now_ns(), ..Default::default() })
}

fn raw_receiver(a: &PeerArgs) -> Result<PeerResult, String> {
    let mut s = accept_one(a)?;
    let mut check = Checker::new(a.size, a.latency);
    let mut ids = if a.role == Role::RawCompetitor { Some(ids_writer(a)?) } else { None };
    let mut received = 0u64;
    let mut io_error = None;
    read_batches(&mut s, |_, batch, _| {
        for (_, rec) in batch.records() {
            match &mut ids {
                None => {
                    check.see(rec.payload());
                    if check.next == a.count {
                        return false;
                    }
                }
                Some(w) => {
                    let Ok((seq, _)) = check_payload(rec.payload(), a.size) else {
                        io_error = Some("corrupt payload".to_string());
                        return false;
                    };
                    if seq == SENTINEL {
                        return false;
                    }
                    received += 1;
                    if let Err(e) = w.write_all(&seq.to_le_bytes()) {
                        io_error = Some(e.to_string());
                        return false;
                    }
                }
            }
        }
        true
    })?;
    if let Some(e) = io_error {
        return Err(e);
    }
    match ids {
        None => Ok(check.result(a.count)),
        Some(mut w) => {
            w.flush().map_err(|e| e.to_string())?;
            Ok(PeerResult { received, verified: true, finished_ns: now_ns(), ..Default::default() })
        }
    }
}
