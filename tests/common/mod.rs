//! The integration-test harness: starts the real `rdmq` binary on a free port with its own data
//! directory, hands out client connections and raw sockets, and kills the server on drop.
//!
//! Every wait here is bounded, so a broken server fails a test instead of hanging it. Timeouts
//! are generous (the build machine has two noisy cores) and no test asserts on a duration.
#![allow(dead_code)]

pub mod transport;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdmq_client::wire::hello::Hello;
use rdmq_client::wire::{self, Command as Wire, FrameHeader, PROTOCOL_VERSION};
use rdmq_client::{Connection, ConnectionOptions, Consumer, Delivery, Subscription};

/// How long the server may take to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a stopped server may take to exit before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on any single wait for a message that should arrive.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to watch for a message that must not arrive. A bug shows up as an arrival; a slow
/// machine can only make this check weaker, never make it fail.
pub const QUIET: Duration = Duration::from_millis(400);

/// A running `rdmq serve` child process. Killed (and its data dir removed) on drop.
pub struct Server {
    child: Option<Child>,
    _stdout: ChildStdout,
    pub addr: SocketAddr,
    /// The STOMP gateway's address (every test server runs one on a free port).
    pub stomp: SocketAddr,
    /// The MQTT gateway's address (likewise).
    pub mqtt: SocketAddr,
    pub url: String,
    /// The shared-memory transport's URL (`shm://<data dir>/rdmq.sock`).
    pub shm_url: String,
    /// The RDMA transport's URL, when the server could listen for RDMA.
    pub rdma_url: Option<String>,
    pub shards: usize,
    pub dir: PathBuf,
    log: PathBuf,
    config: String,
}

/// A fresh directory under the system temp dir, unique per process and call.
pub fn temp_dir(tag: &str) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir =
        std::env::temp_dir().join(format!("rdmq-test-{tag}-{}-{n}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

pub fn rdmq_bin() -> &'static str {
    env!("CARGO_BIN_EXE_rdmq")
}

impl Server {
    /// Starts a server with `shards` shard threads and the default configuration.
    pub fn start(shards: usize) -> Server {
        Server::start_with(shards, "")
    }

    /// Starts a server with `shards` shard threads and `config` as its TOML config file.
    pub fn start_with(shards: usize, config: &str) -> Server {
        Server::start_in(temp_dir("server"), shards, config)
    }

    /// Kills the server with SIGKILL (no chance to flush anything) and starts a new one on the
    /// same data directory, as after a crash.
    pub fn crash_and_restart(&mut self) {
        self.kill9();
        self.restart();
    }

    /// The server process's id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server running").id()
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a new server process on this one's data directory (the old one must be stopped).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill the server first");
        let next = Server::start_in(self.dir.clone(), self.shards, &self.config.clone());
        let mut old = std::mem::replace(self, next);
        old.dir = PathBuf::new(); // the directory now belongs to the new server
    }

    /// Starts a server whose data directory is `dir/data` (kept across restarts).
    pub fn start_in(dir: PathBuf, shards: usize, config: &str) -> Server {
        let data = dir.join("data");
        let log = dir.join("server.log");
        let mut cmd = Command::new(rdmq_bin());
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--stomp-listen", "127.0.0.1:0"])
            .args(["--mqtt-listen", "127.0.0.1:0"])
            .args(["--shards", &shards.to_string()])
            .arg("--data-dir")
            .arg(&data);
        if !config.is_empty() {
            let path = dir.join("rdmq.toml");
            std::fs::write(&path, config).expect("write config");
            cmd.arg("--config").arg(&path);
        }
        // Appended, so a restarted server's log follows its predecessor's.
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open server log");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn rdmq serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        // The reader hands the pipe back with the line, so the server never writes to a closed pipe.
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            // The native listener, the STOMP and MQTT gateways', RDMA when it is up, and the
            // shm socket last.
            let mut line = String::new();
            let res = loop {
                let before = line.len();
                match r.read_line(&mut line) {
                    Ok(0) => break Ok(line),
                    Ok(_) if line[before..].starts_with("listening shm://") => break Ok(line),
                    Ok(_) => {}
                    Err(e) => break Err(e),
                }
            };
            let _ = tx.send((res, r.into_inner()));
        });
        let (line, stdout) = match rx.recv_timeout(START_TIMEOUT) {
            Ok((Ok(line), stdout)) => (line, stdout),
            other => {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("server did not start ({:?}); log:\n{log}", other.map(|(r, _)| r));
            }
        };
        let mut lines = line.lines().peekable();
        let (addr, stomp, mqtt) = (
            lines.next().and_then(|l| l.strip_prefix("listening tcp://")),
            lines.next().and_then(|l| l.strip_prefix("listening stomp://")),
            lines.next().and_then(|l| l.strip_prefix("listening mqtt://")),
        );
        let rdma_url = lines
            .next_if(|l| l.starts_with("listening rdma://"))
            .map(|l| l.strip_prefix("listening ").expect("checked").to_string());
        let shm = lines.next().filter(|l| l.starts_with("listening shm://"));
        let (Some(addr), Some(stomp), Some(mqtt), Some(shm)) = (addr, stomp, mqtt, shm) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("unexpected first lines from server: {line:?}");
        };
        let addr: SocketAddr = addr.parse().expect("listening address");
        let stomp: SocketAddr = stomp.parse().expect("STOMP listening address");
        let mqtt: SocketAddr = mqtt.parse().expect("MQTT listening address");
        Server {
            child: Some(child),
            _stdout: stdout,
            url: format!("tcp://{addr}"),
            shm_url: shm.strip_prefix("listening ").expect("checked").to_string(),
            rdma_url,
            addr,
            stomp,
            mqtt,
            shards,
            dir,
            log,
            config: config.to_string(),
        }
    }

    /// A client connection with waits bounded well below the test's own patience.
    pub fn connect(&self) -> Connection {
        self.connect_url(&self.url)
    }

    /// A client connection to `url` (another transport of this server) with the same bounds.
    pub fn connect_url(&self, url: &str) -> Connection {
        let opts = ConnectionOptions {
            request_timeout: Duration::from_secs(20),
            client_name: "rdmq-it".into(),
            ..Default::default()
        };
        Connection::connect_with(url, opts).unwrap_or_else(|e| panic!("connect to {url}: {e}"))
    }

    /// A connection accepted by shard `shard` (the kernel spreads connections between the
    /// shards' listeners; retried until one lands there).
    pub fn connect_on_shard(&self, shard: u16) -> Connection {
        for _ in 0..200 {
            let c = self.connect();
            if c.shard().0 == shard {
                return c;
            }
        }
        panic!("no connection landed on shard {shard} in 200 attempts");
    }

    /// The `rdmq` binary, ready for a tool subcommand; add `--url` with [`Server::url`].
    pub fn cli(&self, sub: &str) -> Command {
        let mut c = Command::new(rdmq_bin());
        c.arg(sub).args(["--url", &self.url]);
        c
    }

    pub fn raw(&self) -> RawConn {
        RawConn::connect(self.addr)
    }

    /// The server's stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the server with SIGTERM and returns its stderr, which ends with its counters.
    /// Panics if it does not exit cleanly.
    pub fn stop(&mut self) -> String {
        let mut child = self.child.take().expect("server still running");
        let pid = child.id() as libc::pid_t;
        // SAFETY: kill(2) on our own child, which has not been waited for, so its pid is not reused.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            if let Some(s) = child.try_wait().expect("try_wait") {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("server ignored SIGTERM; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let log = self.log();
        assert!(status.success(), "server exited with {status}; log:\n{log}");
        log
    }

    /// A counter from the summary line the server prints when stopped.
    pub fn counter(log: &str, name: &str) -> u64 {
        let line =
            log.lines().rev().find(|l| l.starts_with("rdmq: stopped;")).expect("summary line");
        let key = format!("{name}=");
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&key))
            .unwrap_or_else(|| panic!("no counter {name} in {line:?}"))
            .parse()
            .expect("numeric counter")
    }

    /// Proves the server still serves a normal client: declare, publish, consume, ack, on a new
    /// connection and a queue of its own.
    pub fn assert_serves(&self) {
        static N: AtomicU32 = AtomicU32::new(0);
        let q = format!("health.{}", N.fetch_add(1, Ordering::Relaxed));
        let conn = self.connect();
        conn.ping().expect("ping");
        conn.declare_queue(&q, &Default::default()).expect("declare");
        let mut p = conn.queue_producer(&q);
        p.send(b"still alive").expect("send");
        p.flush().expect("flush");
        let mut c = conn.consume(&q, 4).expect("consume");
        let d = c.receive(Some(RECV_TIMEOUT)).expect("receive").expect("a message");
        assert_eq!(d.payload(), b"still alive");
        c.ack(&d).expect("ack");
        c.close().expect("close");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.dir.as_os_str().is_empty() {
            return; // handed over to a restarted server
        }
        if std::thread::panicking() {
            eprintln!("---- server log ({}) ----\n{}", self.url, self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A queue name with `prefix` that the server's hash places on shard `shard` of `shards`.
pub fn name_on_shard(prefix: &str, shard: usize, shards: usize) -> String {
    (0..10_000)
        .map(|i| format!("{prefix}-{i}"))
        .find(|n| rdmq::broker::owner_shard(n, shards) == shard)
        .expect("some name hashes to every shard")
}

/// Receives exactly `n` messages (each within [`RECV_TIMEOUT`]), panicking if one is missing.
pub fn recv_n(c: &mut Consumer, n: usize) -> Vec<Delivery> {
    (0..n)
        .map(|i| {
            c.receive(Some(RECV_TIMEOUT))
                .expect("receive")
                .unwrap_or_else(|| panic!("message {i} of {n} did not arrive"))
        })
        .collect()
}

/// As [`recv_n`] for a topic subscription.
pub fn recv_n_sub(s: &mut Subscription, n: usize) -> Vec<Delivery> {
    (0..n)
        .map(|i| {
            s.receive(Some(RECV_TIMEOUT))
                .expect("receive")
                .unwrap_or_else(|| panic!("message {i} of {n} did not arrive"))
        })
        .collect()
}

pub fn text(d: &Delivery) -> String {
    String::from_utf8(d.payload().to_vec()).expect("utf-8 payload")
}

/// A deterministic xorshift64 generator for seeded test data.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Reads what arrives on `s` into `buf` until `deadline`: `Some(true)` if bytes came,
/// `Some(false)` on timeout, `None` when the peer closed. For the gateway tests' packet readers.
pub fn read_some(s: &mut TcpStream, buf: &mut Vec<u8>, deadline: Instant) -> Option<bool> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Some(false);
    }
    s.set_read_timeout(Some(left)).unwrap();
    let mut tmp = [0u8; 64 << 10];
    match s.read(&mut tmp) {
        Ok(0) => None,
        Ok(n) => {
            buf.extend_from_slice(&tmp[..n]);
            Some(true)
        }
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Some(false),
        Err(_) => None,
    }
}

/// A raw TCP connection speaking bytes, for malformed-input tests.
pub struct RawConn {
    pub sock: TcpStream,
}

/// How a raw connection ended when read to the end.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The server closed it (EOF or reset).
    Closed,
    /// Nothing more arrived within the wait and the connection is still open.
    Open,
}

impl RawConn {
    pub fn connect(addr: SocketAddr) -> RawConn {
        let sock = TcpStream::connect(addr).expect("raw connect");
        sock.set_nodelay(true).expect("nodelay");
        RawConn { sock }
    }

    /// Writes bytes, ignoring a peer that already closed (it may close on the first bad byte).
    pub fn send(&mut self, bytes: &[u8]) {
        match self.sock.write_all(bytes) {
            Ok(()) => {}
            Err(e) if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) => {}
            Err(e) => panic!("raw send: {e}"),
        }
    }

    /// Sends HELLO and checks the WELCOME.
    pub fn hello(&mut self) {
        let mut out = Vec::new();
        Hello { version_min: PROTOCOL_VERSION, version_max: PROTOCOL_VERSION, client_name: "raw" }
            .encode(&mut out, 1);
        self.send(&out);
        let (h, body) = self.read_frame(RECV_TIMEOUT).expect("WELCOME");
        match wire::decode(&h, &body).expect("decodable reply") {
            Wire::Welcome(_) => {}
            other => panic!("expected WELCOME, got {other:?}"),
        }
    }

    /// Reads one whole frame, or `None` if the connection ended or `wait` passed first.
    pub fn read_frame(&mut self, wait: Duration) -> Option<(FrameHeader, Vec<u8>)> {
        let mut header = [0u8; wire::FRAME_HEADER_LEN];
        if !self.read_exact_within(&mut header, wait) {
            return None;
        }
        let h = FrameHeader::decode(&header, wire::frame::FRAME_BODY_MAX).expect("server header");
        let mut body = vec![0u8; h.length as usize];
        assert!(self.read_exact_within(&mut body, wait), "server frame cut short");
        Some((h, body))
    }

    fn read_exact_within(&mut self, buf: &mut [u8], wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        let mut at = 0;
        while at < buf.len() {
            let left =
                deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
            self.sock.set_read_timeout(Some(left)).expect("read timeout");
            match self.sock.read(&mut buf[at..]) {
                Ok(0) => return false,
                Ok(n) => at += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if Instant::now() >= deadline {
                        assert_eq!(at, 0, "server stopped mid-frame");
                        return false;
                    }
                }
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return false,
                Err(e) => panic!("raw read: {e}"),
            }
        }
        true
    }

    /// Reads every frame until the server closes the connection or nothing arrives for `wait`.
    /// Every frame must decode: the server never sends malformed bytes, even when refusing some.
    pub fn read_to_end(&mut self, wait: Duration) -> (Vec<(FrameHeader, Vec<u8>)>, End) {
        let mut frames = Vec::new();
        let deadline = Instant::now() + wait;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 64 << 10];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return (frames, End::Open);
            }
            self.sock.set_read_timeout(Some(left)).expect("read timeout");
            let ended = match self.sock.read(&mut chunk) {
                Ok(0) => true,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    false
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => false,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
                Err(e) if e.kind() == ErrorKind::ConnectionReset => true,
                Err(e) => panic!("raw read: {e}"),
            };
            let mut at = 0;
            while let Some((h, body)) =
                wire::split_frame(&buf[at..], wire::frame::FRAME_BODY_MAX).expect("server header")
            {
                wire::decode(&h, body).expect("server frames decode");
                at += wire::FRAME_HEADER_LEN + body.len();
                frames.push((h, body.to_vec()));
            }
            buf.drain(..at);
            if ended {
                assert!(buf.is_empty(), "server closed mid-frame: {} bytes left", buf.len());
                return (frames, End::Closed);
            }
        }
    }
}

/// The (code, message) of every ERROR frame among `frames`.
pub fn errors(frames: &[(FrameHeader, Vec<u8>)]) -> Vec<(u16, String)> {
    frames
        .iter()
        .filter_map(|(h, body)| match wire::decode(h, body).expect("decodes") {
            Wire::Error(e) => Some((e.code, e.message.to_string())),
            _ => None,
        })
        .collect()
}

/// Writes `lines` to a child's stdin and closes it.
pub fn feed(child: &mut Child, input: &[u8]) {
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin.write_all(input).expect("write child stdin");
}

/// Waits for a child to exit within `wait`, killing it (and failing) otherwise.
pub fn wait_child(child: &mut Child, wait: Duration, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + wait;
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {wait:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads a child's whole stdout/stderr pipe into a string on a thread.
pub fn drain_pipe(pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let mut r = BufReader::new(pipe);
        let _ = r.read_to_string(&mut s);
        s
    })
}
