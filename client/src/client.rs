//! The blocking client: connection, producers, consumers and topic subscriptions.
//!
//! One [`Connection`] owns one socket and is used from one thread (handles share it through
//! `Rc`). Nothing runs in the background: every call that waits first writes what is buffered,
//! then reads and dispatches frames until its condition holds. Sends are buffered into a PUBLISH
//! batch and leave when the batch is full or when something waits, so a stream of sends costs one
//! syscall per batch, and a request/response loop costs one per message.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::shm::ShmStream;
use crate::wire::deliver::FLAG_REDELIVERED;
use crate::wire::frame::{FLAG_MULTIPLE, FLAG_NO_CONFIRM, FRAME_BODY_MAX};
use crate::wire::publish::{DestKind, PublishWriter};
use crate::wire::record::{RecordMeta, RecordView};
use crate::wire::{self, Command, Opcode, PROTOCOL_VERSION};
use crate::{Durability, Endpoint, Error};

/// Tuning for one connection. The defaults suit both streaming and request/response.
#[derive(Debug, Clone)]
pub struct ConnectionOptions {
    /// Spin on a non-blocking socket instead of sleeping in `read`: lowest latency, one busy core.
    pub busy_poll: bool,
    /// A PUBLISH batch is closed and sent once it reaches this many bytes.
    pub batch_bytes: usize,
    /// Publish frames awaiting their confirm before `send` waits: bounds the server's memory
    /// and the client's exposure on a failure.
    pub max_unconfirmed: usize,
    /// Bound on every wait that has no timeout of its own (handshake, declare, flush).
    pub request_timeout: Duration,
    pub client_name: String,
}

impl Default for ConnectionOptions {
    fn default() -> Self {
        ConnectionOptions {
            busy_poll: false,
            batch_bytes: 64 << 10,
            max_unconfirmed: 256,
            request_timeout: Duration::from_secs(30),
            client_name: "rdmq-client".to_string(),
        }
    }
}

/// Options of a queue declaration; zero means the server's default.
#[derive(Debug, Clone, Default)]
pub struct QueueOptions {
    pub durability: Durability,
    pub max_deliveries: u32,
    pub max_length: u32,
    /// Retention bounds (0 = none): with either set, acknowledged messages are kept within the
    /// bounds so [`Connection::seek`] can go back to them; unconsumed ones past `max_age_ms`
    /// are discarded, and a publish that would pass `max_bytes` with unconsumed messages alone
    /// is refused.
    pub max_bytes: u64,
    pub max_age_ms: u64,
    /// Empty: `<queue>.dlq`.
    pub dead_letter: String,
}

/// A message with its optional parts, for [`Producer::send_message`].
#[derive(Debug, Clone, Default)]
pub struct Message {
    pub payload: Vec<u8>,
    pub id: u64,
    pub ttl_ms: u32,
    pub correlation_id: Vec<u8>,
    pub reply_to: String,
    pub headers: Vec<(String, String)>,
}

impl Message {
    pub fn new(payload: impl Into<Vec<u8>>) -> Message {
        Message { payload: payload.into(), ..Default::default() }
    }
    pub fn id(mut self, id: u64) -> Self {
        self.id = id;
        self
    }
    pub fn ttl_ms(mut self, ttl_ms: u32) -> Self {
        self.ttl_ms = ttl_ms;
        self
    }
    pub fn correlation_id(mut self, c: impl Into<Vec<u8>>) -> Self {
        self.correlation_id = c.into();
        self
    }
    pub fn reply_to(mut self, r: impl Into<String>) -> Self {
        self.reply_to = r.into();
        self
    }
    pub fn header(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }
}

/// A received message. Cheap to clone: it shares the frame it arrived in.
#[derive(Debug, Clone)]
pub struct Delivery {
    frame: Rc<Vec<u8>>,
    record_at: u32,
    record_len: u32,
    payload_at: u32,
    pub consumer: u32,
    /// Tag to settle this delivery with; 0 for topic subscriptions.
    pub tag: u64,
    /// How many times the message has been delivered, this time included.
    pub delivery_count: u32,
    pub redelivered: bool,
}

impl Delivery {
    pub fn payload(&self) -> &[u8] {
        &self.frame[self.payload_at as usize..(self.record_at + self.record_len) as usize]
    }

    /// The whole record: id, timestamp, TTL, correlation id, reply-to and headers.
    pub fn record(&self) -> RecordView<'_> {
        let at = self.record_at as usize;
        RecordView::decode(&self.frame[at..at + self.record_len as usize])
            .expect("validated on receipt")
    }
}

/// Identifies one send; [`Producer::wait`] returns once it is confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    request_id: u64,
}

enum Reply {
    Ok,
    Pong,
    Error(u16, String),
}

struct OpenBatch {
    /// Microseconds since the epoch when the batch was opened: the timestamp of its messages
    /// (one clock read per batch, not per message).
    timestamp_us: u64,
    confirm: bool,
    kind: DestKind,
    name: String,
    request_id: u64,
    writer: PublishWriter,
}

/// The byte stream a connection speaks the protocol over.
enum Transport {
    Tcp(TcpStream),
    /// Shared memory or RDMA: frames are written into and read from a pair of rings (mapped in
    /// both processes, or each in its receiver's registered memory, filled by RDMA WRITEs).
    Ring(Box<dyn RingStream>),
}

/// What the client needs of a ring transport's blocking end ([`ShmStream`], and
/// `rdma::RdmaStream`): both mirror each other, so one code path drives them.
pub(crate) trait RingStream {
    /// Bytes per ring.
    fn ring_bytes(&self) -> usize;
    /// Spin instead of sleeping while waiting.
    fn set_busy_poll(&mut self, on: bool);
    /// Writes what fits without waiting (0: the ring is full).
    fn write_some(&mut self, src: &[u8]) -> std::io::Result<usize>;
    /// Waits for room (`TimedOut` at the deadline).
    fn wait_writable(&mut self, deadline: Option<Instant>) -> std::io::Result<()>;
    /// Reads at least one byte (0: the peer is gone), waiting until the deadline.
    fn read_until(&mut self, dst: &mut [u8], deadline: Option<Instant>) -> std::io::Result<usize>;
}

impl RingStream for ShmStream {
    fn ring_bytes(&self) -> usize {
        ShmStream::ring_bytes(self)
    }
    fn set_busy_poll(&mut self, on: bool) {
        ShmStream::set_busy_poll(self, on)
    }
    fn write_some(&mut self, src: &[u8]) -> std::io::Result<usize> {
        Ok(ShmStream::write_some(self, src))
    }
    fn wait_writable(&mut self, deadline: Option<Instant>) -> std::io::Result<()> {
        ShmStream::wait_writable(self, deadline)
    }
    fn read_until(&mut self, dst: &mut [u8], d: Option<Instant>) -> std::io::Result<usize> {
        ShmStream::read_until(self, dst, d)
    }
}

#[cfg(feature = "rdma")]
impl RingStream for crate::rdma::RdmaStream {
    fn ring_bytes(&self) -> usize {
        crate::rdma::RdmaStream::ring_bytes(self)
    }
    fn set_busy_poll(&mut self, on: bool) {
        crate::rdma::RdmaStream::set_busy_poll(self, on)
    }
    fn write_some(&mut self, src: &[u8]) -> std::io::Result<usize> {
        crate::rdma::RdmaStream::write_some(self, src)
    }
    fn wait_writable(&mut self, deadline: Option<Instant>) -> std::io::Result<()> {
        crate::rdma::RdmaStream::wait_writable(self, deadline)
    }
    fn read_until(&mut self, dst: &mut [u8], d: Option<Instant>) -> std::io::Result<usize> {
        crate::rdma::RdmaStream::read_until(self, dst, d)
    }
}

/// A ring transport set up for a connection: busy polling as asked, batches closed at a
/// quarter of the ring (so a frame always fits the server's receive ring whole), and records
/// limited to half of it. Returns the transport and that record limit.
fn ring_transport(mut s: Box<dyn RingStream>, opts: &mut ConnectionOptions) -> (Transport, usize) {
    s.set_busy_poll(opts.busy_poll);
    let ring = s.ring_bytes();
    opts.batch_bytes = opts.batch_bytes.min(ring / 4);
    (Transport::Ring(s), ring / 2)
}

/// Ring bytes per direction an RDMA client asks for (the server caps it with
/// `rdma_ring_bytes_max`, 4 MiB by default).
#[cfg(feature = "rdma")]
pub const RDMA_RING_BYTES: usize = 1 << 20;

struct Inner {
    sock: Transport,
    /// Largest record (payload plus its optional parts) one send may carry: unbounded over
    /// TCP (the server's `frame_body_max` applies), half a ring over shared memory and RDMA,
    /// where a whole frame must fit the server's receive ring.
    record_max: usize,
    opts: ConnectionOptions,
    /// Read buffer: bytes `[rpos, rend)` are received and not yet dispatched. Its length is its
    /// capacity, zeroed once, so a read never pays for initialising memory.
    rbuf: Vec<u8>,
    rpos: usize,
    rend: usize,
    wbuf: Vec<u8>,
    next_request: u64,
    next_sub_id: u32,
    open: Option<OpenBatch>,
    /// Publish request id → messages in it, until confirmed.
    unconfirmed: HashMap<u64, u32>,
    replies: HashMap<u64, Reply>,
    /// Publish failures not yet reported to the caller.
    publish_errors: Vec<Error>,
    deliveries: IdMap<VecDeque<Delivery>>,
    pending_acks: IdMap<Vec<u64>>,
    closed: Option<String>,
    welcome_shard: (u16, u16),
    /// Largest frame body accepted from the server (from its WELCOME).
    frame_body_max: usize,
    /// Largest frame body the server accepts (its WELCOME's `frame_body_max`).
    server_frame_max: usize,
    /// DELIVER frame buffers, reused once the application dropped their deliveries.
    frame_pool: Vec<Rc<Vec<u8>>>,
    /// The socket's current read timeout, to skip redundant setsockopt calls.
    read_timeout: Option<Duration>,
    /// The request a blocking call is waiting for (requests are issued one at a time).
    awaiting: u64,
}

/// A connection to an rdmq server. Clones share the socket.
#[derive(Clone)]
pub struct Connection {
    inner: Rc<RefCell<Inner>>,
}

/// A map from consumer/subscription id to `V` for the handful of ids one connection has: a
/// linear scan beats hashing at this size and keeps the per-message path cheap.
struct IdMap<V> {
    items: Vec<(u32, V)>,
}

impl<V> Default for IdMap<V> {
    fn default() -> Self {
        IdMap { items: Vec::new() }
    }
}

impl<V: Default> IdMap<V> {
    fn get_mut(&mut self, id: &u32) -> Option<&mut V> {
        self.items.iter_mut().find(|(k, _)| k == id).map(|(_, v)| v)
    }

    fn entry(&mut self, id: u32) -> &mut V {
        match self.items.iter().position(|(k, _)| *k == id) {
            Some(i) => &mut self.items[i].1,
            None => {
                self.items.push((id, V::default()));
                &mut self.items.last_mut().expect("just pushed").1
            }
        }
    }

    fn remove(&mut self, id: &u32) {
        self.items.retain(|(k, _)| k != id);
    }

    fn take(&mut self, id: &u32) -> Option<V> {
        let i = self.items.iter().position(|(k, _)| k == id)?;
        Some(self.items.swap_remove(i).1)
    }
}

/// DELIVER frame buffers kept for reuse: enough for a consumer holding a full credit window
/// spread over many frames, small enough to scan per frame.
const FRAME_POOL_MAX: usize = 64;
/// Bytes a PUBLISH frame adds around one message at most: frame header, kind and destination
/// name, batch header, record header. Messages are checked against the frame limit less this.
const FRAME_OVERHEAD_MAX: usize = crate::wire::FRAME_HEADER_LEN
    + crate::wire::publish::PREFIX_MAX
    + crate::wire::record::BATCH_HEADER_LEN
    + crate::wire::record::RECORD_HEADER_LEN;
/// How long a writer facing a full ring sleeps before looking at its input again.
const RING_WRITE_WAIT: Duration = Duration::from_millis(1);
/// Read buffer growth step: one read syscall takes up to this much.
const READ_CHUNK: usize = 256 << 10;

impl Connection {
    pub fn connect(url: &str) -> Result<Connection, Error> {
        Self::connect_with(url, ConnectionOptions::default())
    }

    pub fn connect_with(url: &str, opts: ConnectionOptions) -> Result<Connection, Error> {
        let mut opts = opts;
        let (sock, record_max) = match Endpoint::parse(url)? {
            Endpoint::Tcp(addr) => {
                let sock = TcpStream::connect(&addr)?;
                sock.set_nodelay(true)?;
                sock.set_nonblocking(opts.busy_poll)?;
                (Transport::Tcp(sock), usize::MAX)
            }
            #[cfg(feature = "rdma")]
            Endpoint::Rdma(addr) => {
                let s = crate::rdma::RdmaStream::connect(&addr, RDMA_RING_BYTES)?;
                ring_transport(Box::new(s), &mut opts)
            }
            #[cfg(not(feature = "rdma"))]
            Endpoint::Rdma(_) => {
                return Err(Error::Url(
                    "this build has no RDMA support (rebuild with --features rdma after \
                     installing rdma-core and clang; see rxe-setup/README.md); use tcp:// or shm://"
                        .into(),
                ))
            }
            Endpoint::Shm(path) => {
                let s = ShmStream::connect(std::path::Path::new(&path)).map_err(|e| {
                    let refused = e.get_ref().is_some_and(|i| i.is::<crate::shm::Refused>());
                    if refused {
                        Error::Closed(format!("refused by the server: {e}"))
                    } else {
                        Error::Io(e)
                    }
                })?;
                ring_transport(Box::new(s), &mut opts)
            }
        };
        let mut inner = Inner {
            sock,
            record_max,
            opts,
            rbuf: vec![0; READ_CHUNK],
            rpos: 0,
            rend: 0,
            wbuf: Vec::with_capacity(READ_CHUNK),
            next_request: 1,
            next_sub_id: 1,
            open: None,
            unconfirmed: HashMap::new(),
            replies: HashMap::new(),
            publish_errors: Vec::new(),
            deliveries: IdMap::default(),
            pending_acks: IdMap::default(),
            closed: None,
            welcome_shard: (0, 0),
            awaiting: 0,
            read_timeout: None,
            frame_body_max: FRAME_BODY_MAX,
            server_frame_max: FRAME_BODY_MAX,
            frame_pool: Vec::new(),
        };
        let req = inner.request_id();
        let name = inner.opts.client_name.clone();
        wire::hello::Hello {
            version_min: PROTOCOL_VERSION,
            version_max: PROTOCOL_VERSION,
            client_name: &name,
        }
        .encode(&mut inner.wbuf, req);
        inner.wait_reply(req)?;
        Ok(Connection { inner: Rc::new(RefCell::new(inner)) })
    }

    /// (shard that accepted this connection, shard count), from the handshake.
    pub fn shard(&self) -> (u16, u16) {
        self.inner.borrow().welcome_shard
    }

    pub fn declare_queue(&self, name: &str, opts: &QueueOptions) -> Result<(), Error> {
        check_name("queue", name)?;
        if !opts.dead_letter.is_empty() {
            check_name("dead-letter queue", &opts.dead_letter)?;
        }
        self.request(|out, req| {
            wire::declare::DeclareQueue {
                name,
                durability: opts.durability,
                max_deliveries: opts.max_deliveries,
                max_length: opts.max_length,
                max_bytes: opts.max_bytes,
                max_age_ms: opts.max_age_ms,
                dead_letter: &opts.dead_letter,
            }
            .encode(out, req)
        })
    }

    pub fn delete_queue(&self, name: &str) -> Result<(), Error> {
        check_name("queue", name)?;
        self.request(|out, req| wire::declare::Named { name }.encode(out, Opcode::DeleteQueue, req))
    }

    pub fn declare_topic(&self, name: &str) -> Result<(), Error> {
        check_name("topic", name)?;
        self.request(|out, req| {
            wire::declare::Named { name }.encode(out, Opcode::DeclareTopic, req)
        })
    }

    pub fn delete_topic(&self, name: &str) -> Result<(), Error> {
        check_name("topic", name)?;
        self.request(|out, req| wire::declare::Named { name }.encode(out, Opcode::DeleteTopic, req))
    }

    /// One PING/PONG round trip; returns its duration.
    pub fn ping(&self) -> Result<Duration, Error> {
        let start = Instant::now();
        let mut inner = self.inner.borrow_mut();
        let req = inner.begin_request();
        wire::ping::Ping { token: req }.encode(&mut inner.wbuf, req, false);
        inner.wait_reply(req)?;
        Ok(start.elapsed())
    }

    pub fn queue_producer(&self, queue: &str) -> Producer {
        Producer {
            inner: self.inner.clone(),
            kind: DestKind::Queue,
            name: queue.to_string(),
            confirm: true,
        }
    }

    pub fn topic_producer(&self, topic: &str) -> Producer {
        Producer {
            inner: self.inner.clone(),
            kind: DestKind::Topic,
            name: topic.to_string(),
            confirm: true,
        }
    }

    /// Starts consuming `queue` with at most `credit` unacknowledged messages at a time.
    pub fn consume(&self, queue: &str, credit: u32) -> Result<Consumer, Error> {
        check_name("queue", queue)?;
        if credit == 0 {
            return Err(Error::InvalidArgument("credit must be at least 1".into()));
        }
        let id = self.inner.borrow_mut().sub_id();
        self.request(|out, req| wire::subscribe::Consume { id, credit, queue }.encode(out, req))?;
        let ack_batch = (credit as usize / 4).max(1);
        Ok(Consumer { inner: self.inner.clone(), id, ack_batch, open: true })
    }

    /// Subscribes to topics matching `pattern` (`*` one word, `#` zero or more).
    pub fn subscribe(&self, pattern: &str) -> Result<Subscription, Error> {
        check_name("topic pattern", pattern)?;
        let id = self.inner.borrow_mut().sub_id();
        self.request(|out, req| wire::subscribe::Subscribe { id, pattern }.encode(out, req))?;
        Ok(Subscription { inner: self.inner.clone(), id, open: true })
    }

    /// Routes messages published on topics matching `pattern` into `queue` as well.
    pub fn bind(&self, queue: &str, pattern: &str) -> Result<(), Error> {
        check_name("queue", queue)?;
        check_name("topic pattern", pattern)?;
        self.request(|out, req| wire::bind::Bind { queue, pattern }.encode(out, Opcode::Bind, req))
    }

    pub fn unbind(&self, queue: &str, pattern: &str) -> Result<(), Error> {
        check_name("queue", queue)?;
        check_name("topic pattern", pattern)?;
        self.request(|out, req| {
            wire::bind::Bind { queue, pattern }.encode(out, Opcode::Unbind, req)
        })
    }

    /// A durable subscription named `name`: a queue bound to `pattern` (created `fsync` if
    /// new), consumed with `credit`. Messages published while the subscriber is away wait for it;
    /// what it acknowledges is its cursor. End it with `delete_queue(name)`.
    pub fn durable_subscribe(
        &self,
        name: &str,
        pattern: &str,
        credit: u32,
    ) -> Result<Consumer, Error> {
        match self.declare_queue(name, &QueueOptions::default()) {
            Ok(()) => {}
            // Already there with other options: subscribe to it as it is.
            Err(e) if e.code() == Some(wire::error::code::PRECONDITION_FAILED) => {}
            Err(e) => return Err(e),
        }
        self.bind(name, pattern)?;
        self.consume(name, credit)
    }

    /// Moves `queue`'s cursor (for a durable subscription: its subscriber's place): waiting
    /// messages before the target count as consumed, kept acknowledged ones at or after it are
    /// delivered again. See [`wire::seek`].
    pub fn seek(&self, queue: &str, target: wire::seek::SeekTarget) -> Result<(), Error> {
        check_name("queue", queue)?;
        self.request(|out, req| wire::seek::Seek { queue, target }.encode(out, req))
    }

    /// Reads up to `max` messages of `queue` from position `from` without consuming them: those
    /// waiting and those delivered but unacknowledged, in position order. Each delivery's
    /// `tag` is its position; browse again from the last position + 1 to page on.
    pub fn browse(&self, queue: &str, from: u64, max: u32) -> Result<Vec<Delivery>, Error> {
        check_name("queue", queue)?;
        if max == 0 || max > wire::browse::BROWSE_MAX {
            let m = format!("browse max must be 1 to {}", wire::browse::BROWSE_MAX);
            return Err(Error::InvalidArgument(m));
        }
        let id = self.inner.borrow_mut().sub_id();
        let result =
            self.request(|out, req| wire::browse::Browse { id, max, from, queue }.encode(out, req));
        // The DELIVER frames arrive before the OK, so they are all here now.
        let got = self.inner.borrow_mut().deliveries.take(&id).unwrap_or_default();
        result.map(|()| got.into_iter().collect())
    }

    fn request(&self, encode: impl FnOnce(&mut Vec<u8>, u64)) -> Result<(), Error> {
        let mut inner = self.inner.borrow_mut();
        let req = inner.begin_request();
        encode(&mut inner.wbuf, req);
        inner.wait_reply(req)
    }
}

impl Inner {
    fn request_id(&mut self) -> u64 {
        let r = self.next_request;
        self.next_request += 1;
        r
    }

    /// Starts a request: buffered acks go out first, ahead of it on the wire, so the request's
    /// reply also means the server has seen them (an UNSUBSCRIBE after them does not requeue
    /// what they settle).
    fn begin_request(&mut self) -> u64 {
        self.flush_all_acks();
        self.request_id()
    }

    fn sub_id(&mut self) -> u32 {
        let r = self.next_sub_id;
        self.next_sub_id += 1;
        r
    }

    fn check_open(&self) -> Result<(), Error> {
        match &self.closed {
            Some(why) => Err(Error::Closed(why.clone())),
            None => Ok(()),
        }
    }

    fn close_batch(&mut self) {
        if let Some(open) = self.open.take() {
            let count = open.writer.count();
            open.writer.finish(&mut self.wbuf);
            if open.confirm {
                self.unconfirmed.insert(open.request_id, count);
            }
        }
    }

    /// Writes everything buffered, reading meanwhile so neither side can stall the other.
    fn write_all(&mut self) -> Result<(), Error> {
        self.close_batch();
        let mut at = 0;
        while at < self.wbuf.len() {
            let written = match &mut self.sock {
                Transport::Tcp(s) => s.write(&self.wbuf[at..]),
                Transport::Ring(s) => match s.write_some(&self.wbuf[at..]) {
                    Ok(0) => {
                        // The server's ring is full: take in what it sent meanwhile (it stops
                        // reading a client whose answers pile up, so not reading here could
                        // stall both sides), then sleep until it frees space.
                        self.read_some(Some(Instant::now()))?;
                        let Transport::Ring(s) = &mut self.sock else { unreachable!() };
                        let soon = Instant::now() + RING_WRITE_WAIT;
                        match s.wait_writable(Some(soon)) {
                            Ok(()) => continue,
                            Err(e) if e.kind() == ErrorKind::TimedOut => continue,
                            Err(_) => return Err(self.fail("server closed the connection")),
                        }
                    }
                    other => other,
                },
            };
            match written {
                Ok(0) => return Err(self.fail("server closed the connection")),
                Ok(n) => at += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.read_some(Some(Instant::now()))?;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    self.closed = Some(e.to_string());
                    return Err(Error::Io(e));
                }
            }
        }
        self.wbuf.clear();
        Ok(())
    }

    fn fail(&mut self, why: &str) -> Error {
        self.closed = Some(why.to_string());
        Error::Closed(why.to_string())
    }

    /// Reads once (waiting until `deadline`, or forever if `None`) and dispatches whole frames.
    /// Returns whether any bytes arrived.
    fn read_some(&mut self, deadline: Option<Instant>) -> Result<bool, Error> {
        self.check_open()?;
        if self.rpos == self.rend {
            (self.rpos, self.rend) = (0, 0);
        } else if self.rend == self.rbuf.len() {
            // Make room: move the partial frame to the front, and grow if it fills the buffer.
            self.rbuf.copy_within(self.rpos..self.rend, 0);
            (self.rpos, self.rend) = (0, self.rend - self.rpos);
            if self.rend == self.rbuf.len() {
                self.rbuf.resize(self.rbuf.len() * 2, 0);
            }
        }
        let len = self.rend;
        let got = loop {
            if !self.opts.busy_poll && matches!(self.sock, Transport::Tcp(_)) {
                // set_read_timeout rejects zero; one microsecond is "now".
                let wait = deadline.map(|d| {
                    d.saturating_duration_since(Instant::now()).max(Duration::from_micros(1))
                });
                // One setsockopt only when the timeout must shrink or has grown stale: waking
                // early is harmless (the loop re-checks the deadline), sleeping late is not.
                let stale = match (wait, self.read_timeout) {
                    (None, None) => false,
                    (Some(w), Some(cur)) => w < cur || w > cur * 2,
                    _ => true,
                };
                if stale {
                    let Transport::Tcp(sock) = &self.sock else { unreachable!() };
                    sock.set_read_timeout(wait)?;
                    self.read_timeout = wait;
                }
            }
            let sock = match &mut self.sock {
                Transport::Tcp(s) => s,
                Transport::Ring(s) => match s.read_until(&mut self.rbuf[len..], deadline) {
                    Ok(0) => return Err(self.fail("server closed the connection")),
                    Ok(n) => break n,
                    Err(e) if e.kind() == ErrorKind::TimedOut => return Ok(false),
                    Err(e) => {
                        self.closed = Some(e.to_string());
                        return Err(Error::Io(e));
                    }
                },
            };
            match sock.read(&mut self.rbuf[len..]) {
                Ok(0) => {
                    return Err(self.fail("server closed the connection"));
                }
                Ok(n) => break n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Ok(false);
                    }
                    if self.opts.busy_poll {
                        // Yield rather than pause: with a core to itself this returns at once, and on a
                        // shared machine it lets the peer (or the server) run instead of starving it.
                        std::thread::yield_now();
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    self.closed = Some(e.to_string());
                    return Err(Error::Io(e));
                }
            }
        };
        self.rend = len + got;
        self.dispatch()?;
        Ok(true)
    }

    fn dispatch(&mut self) -> Result<(), Error> {
        loop {
            let buf = &self.rbuf[self.rpos..self.rend];
            let parsed = wire::split_frame(buf, self.frame_body_max).and_then(|f| {
                f.map(|(h, body)| wire::decode(&h, body).map(|c| (h, body.len(), c))).transpose()
            });
            let (h, body_len, cmd) = match parsed {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(()),
                Err(e) => {
                    // The stream cannot be resynchronised after a bad frame: the connection is done.
                    self.closed = Some(format!("malformed frame from server: {e}"));
                    return Err(Error::Protocol(e));
                }
            };
            let frame_len = wire::FRAME_HEADER_LEN + body_len;
            let deliver = match cmd {
                Command::Confirm(_) => {
                    self.unconfirmed.remove(&h.request_id);
                    None
                }
                Command::Welcome(w) => {
                    self.welcome_shard = (w.shard, w.shard_count);
                    // Accept frames as large as the server may send, never less than the default.
                    self.frame_body_max = (w.frame_body_max as usize).max(FRAME_BODY_MAX);
                    self.server_frame_max = w.frame_body_max as usize;
                    self.replies.insert(h.request_id, Reply::Ok);
                    None
                }
                Command::Ok => {
                    self.replies.insert(h.request_id, Reply::Ok);
                    None
                }
                Command::Pong(_) => {
                    self.replies.insert(h.request_id, Reply::Pong);
                    None
                }
                Command::Error(e) => {
                    let (code, msg) = (e.code, e.message.to_string());
                    if e.is_fatal(h.request_id) {
                        self.closed = Some(format!("server error {code}: {msg}"));
                    }
                    if h.request_id == self.awaiting {
                        self.replies.insert(h.request_id, Reply::Error(code, msg));
                    } else if h.request_id != 0 {
                        // A publish, confirmed or not: report it at the next send or flush.
                        self.unconfirmed.remove(&h.request_id);
                        self.publish_errors.push(Error::Server { code, message: msg });
                    }
                    None
                }
                Command::Deliver(d) => Some((d.id, d.count)),
                other => {
                    let what = format!("unexpected frame from server: {other:?}");
                    return Err(self.fail(&what));
                }
            };
            if let Some((id, count)) = deliver {
                self.take_deliveries(id, count, frame_len);
            }
            self.rpos += frame_len;
        }
    }

    /// Copies one DELIVER frame into shared memory once and queues a view per entry.
    fn take_deliveries(&mut self, id: u32, count: u32, frame_len: usize) {
        let frame = self.frame_buffer(frame_len);
        let body_at = wire::FRAME_HEADER_LEN + 8;
        // Validated in `dispatch`; walk it again without repeating the checks.
        let d = wire::deliver::Deliver { id, count, entries: &frame[body_at..] };
        let q = self.deliveries.entry(id);
        q.reserve(count as usize);
        for e in d.entries() {
            let record_at = body_at + e.offset + wire::deliver::ENTRY_HEADER_LEN;
            let record_len = e.record.bytes.len() as u32;
            q.push_back(Delivery {
                frame: frame.clone(),
                record_at: record_at as u32,
                record_len,
                payload_at: (record_at + e.record.bytes.len() - e.record.payload().len()) as u32,
                consumer: id,
                tag: e.tag,
                delivery_count: e.delivery_count,
                redelivered: e.flags & FLAG_REDELIVERED != 0,
            });
        }
    }

    /// A copy of the frame at `rpos`, in a pooled buffer whose earlier deliveries were all
    /// dropped, so a steady stream allocates nothing (and faults in no fresh pages) per frame.
    fn frame_buffer(&mut self, frame_len: usize) -> Rc<Vec<u8>> {
        let src = &self.rbuf[self.rpos..self.rpos + frame_len];
        let free = self.frame_pool.iter().position(|b| Rc::strong_count(b) == 1);
        let mut buf = match free {
            Some(i) => self.frame_pool.swap_remove(i),
            None => Rc::new(Vec::with_capacity(frame_len)),
        };
        let v = Rc::get_mut(&mut buf).expect("only the pool held it");
        v.clear();
        v.extend_from_slice(src);
        if self.frame_pool.len() < FRAME_POOL_MAX {
            self.frame_pool.push(buf.clone());
        }
        buf
    }

    fn wait_reply(&mut self, req: u64) -> Result<(), Error> {
        self.awaiting = req;
        let result = self.wait_reply_inner(req);
        self.awaiting = 0;
        result
    }

    fn wait_reply_inner(&mut self, req: u64) -> Result<(), Error> {
        self.write_all()?;
        let deadline = Instant::now() + self.opts.request_timeout;
        loop {
            match self.replies.remove(&req) {
                Some(Reply::Ok) | Some(Reply::Pong) => return Ok(()),
                Some(Reply::Error(code, message)) => return Err(Error::Server { code, message }),
                None => {}
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout);
            }
            self.read_some(Some(deadline))?;
        }
    }

    fn take_publish_error(&mut self) -> Result<(), Error> {
        if self.publish_errors.is_empty() {
            return Ok(());
        }
        Err(self.publish_errors.remove(0))
    }

    fn flush_acks(&mut self, consumer: u32) {
        if let Some(tags) = self.pending_acks.get_mut(&consumer) {
            encode_acks(&mut self.wbuf, consumer, tags);
        }
    }

    fn flush_all_acks(&mut self) {
        for (consumer, tags) in &mut self.pending_acks.items {
            encode_acks(&mut self.wbuf, *consumer, tags);
        }
    }

    /// Cancels consumer or subscription `id`: its undelivered local messages are dropped and
    /// the server requeues what a consumer had not acknowledged (pending acks go first).
    fn unsubscribe(&mut self, id: u32) -> Result<(), Error> {
        self.deliveries.remove(&id);
        let req = self.begin_request();
        wire::subscribe::Unsubscribe { id }.encode(&mut self.wbuf, req);
        self.wait_reply(req)
    }

    /// Waits for the next delivery to `id`, writing buffered frames and acks first.
    fn receive(&mut self, id: u32, timeout: Option<Duration>) -> Result<Option<Delivery>, Error> {
        if let Some(d) = self.deliveries.get_mut(&id).and_then(|q| q.pop_front()) {
            return Ok(Some(d));
        }
        self.flush_all_acks();
        self.write_all()?;
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(d) = self.deliveries.get_mut(&id).and_then(|q| q.pop_front()) {
                return Ok(Some(d));
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(None);
            }
            self.read_some(deadline)?;
        }
    }
}

/// Publishes to one queue or topic. Sends are pipelined: see [`Producer::flush`].
pub struct Producer {
    inner: Rc<RefCell<Inner>>,
    kind: DestKind,
    name: String,
    confirm: bool,
}

impl Producer {
    /// Turns confirms off (or back on) for later sends. Without confirms the server answers
    /// only failures, and [`Producer::flush`] waits for nothing: for request/response, where
    /// the response is the confirmation, and for fire-and-forget telemetry.
    pub fn set_confirms(&mut self, on: bool) {
        self.confirm = on;
    }

    /// Buffers one message with just a payload. Does not wait for the server.
    pub fn send(&mut self, payload: &[u8]) -> Result<Receipt, Error> {
        self.send_with(&RecordMeta::default(), payload)
    }

    /// Buffers one message with its optional parts.
    pub fn send_message(&mut self, m: &Message) -> Result<Receipt, Error> {
        let meta = RecordMeta {
            id: m.id,
            timestamp_us: 0,
            ttl_ms: m.ttl_ms,
            correlation_id: &m.correlation_id,
            reply_to: m.reply_to.as_bytes(),
            headers: &m.headers,
        };
        self.send_with(&meta, &m.payload)
    }

    fn send_with(&mut self, meta: &RecordMeta<'_>, payload: &[u8]) -> Result<Receipt, Error> {
        let mut inner = self.inner.borrow_mut();
        inner.check_open()?;
        inner.take_publish_error()?;
        let size = crate::wire::record::record_body_len(meta, payload);
        // Over TCP the bound is the server's frame limit (from WELCOME), less room for the
        // frame's own fields; over shm and RDMA, half the ring.
        let max = inner.record_max.min(inner.server_frame_max.saturating_sub(FRAME_OVERHEAD_MAX));
        if size > max {
            let what = if inner.record_max < usize::MAX {
                "half the ring"
            } else {
                "the server's frame limit"
            };
            return Err(Error::InvalidArgument(format!(
                "a message of {size} bytes does not fit this connection (at most {max} bytes: \
                 {what})"
            )));
        }
        let same = inner.open.as_ref().is_some_and(|o| {
            o.kind == self.kind && o.name == self.name && o.confirm == self.confirm
        });
        if !same {
            // Checked when a batch opens, not per message: the name never changes.
            check_name(if self.kind == DestKind::Queue { "queue" } else { "topic" }, &self.name)?;
            inner.close_batch();
            while inner.unconfirmed.len() >= inner.opts.max_unconfirmed {
                inner.write_all()?;
                inner.read_some(None)?;
            }
            let req = inner.request_id();
            let flags = if self.confirm { 0 } else { FLAG_NO_CONFIRM };
            let w =
                PublishWriter::begin_with_flags(&mut inner.wbuf, self.kind, &self.name, req, flags);
            let name = self.name.clone();
            let confirm = self.confirm;
            let timestamp_us = now_us();
            let (kind, request_id) = (self.kind, req);
            inner.open =
                Some(OpenBatch { timestamp_us, confirm, kind, name, request_id, writer: w });
        }
        let Inner { open, wbuf, .. } = &mut *inner;
        let open = open.as_mut().expect("opened above");
        let mut meta = *meta;
        if meta.timestamp_us == 0 {
            meta.timestamp_us = open.timestamp_us;
        }
        open.writer.push(wbuf, &meta, payload);
        let receipt = Receipt { request_id: open.request_id };
        if open.writer.len(wbuf) >= inner.opts.batch_bytes {
            inner.close_batch();
            if inner.wbuf.len() >= inner.opts.batch_bytes {
                inner.write_all()?;
            }
        }
        Ok(receipt)
    }

    /// Sends everything buffered now, without waiting for confirms.
    pub fn push(&mut self) -> Result<(), Error> {
        self.inner.borrow_mut().write_all()
    }

    /// Sends everything buffered and waits until the server confirmed all of it. Returns the
    /// first publish the server refused, if any.
    pub fn flush(&mut self) -> Result<(), Error> {
        let mut inner = self.inner.borrow_mut();
        inner.write_all()?;
        let deadline = Instant::now() + inner.opts.request_timeout;
        while !inner.unconfirmed.is_empty() {
            if Instant::now() >= deadline {
                return Err(Error::Timeout);
            }
            inner.read_some(Some(deadline))?;
        }
        inner.take_publish_error()
    }

    /// Waits until the send behind `receipt` is confirmed.
    pub fn wait(&mut self, receipt: Receipt) -> Result<(), Error> {
        let mut inner = self.inner.borrow_mut();
        if inner.open.as_ref().is_some_and(|o| o.request_id == receipt.request_id) {
            inner.close_batch();
        }
        inner.write_all()?;
        let deadline = Instant::now() + inner.opts.request_timeout;
        while inner.unconfirmed.contains_key(&receipt.request_id) {
            if Instant::now() >= deadline {
                return Err(Error::Timeout);
            }
            inner.read_some(Some(deadline))?;
        }
        inner.take_publish_error()
    }

    /// Messages sent but not yet confirmed, counted in publish frames.
    pub fn unconfirmed(&self) -> usize {
        self.inner.borrow().unconfirmed.len()
    }
}

/// Receives from one queue with credit; every delivery must be settled (ack, nack or reject).
pub struct Consumer {
    inner: Rc<RefCell<Inner>>,
    id: u32,
    ack_batch: usize,
    open: bool,
}

impl Consumer {
    /// The next message, waiting at most `timeout` (`None`: forever). `Ok(None)` on timeout.
    pub fn receive(&mut self, timeout: Option<Duration>) -> Result<Option<Delivery>, Error> {
        self.inner.borrow_mut().receive(self.id, timeout)
    }

    /// Acknowledges one delivery: the server removes it. Acks are sent in small batches.
    pub fn ack(&mut self, d: &Delivery) -> Result<(), Error> {
        let mut inner = self.inner.borrow_mut();
        inner.check_open()?;
        let tags = inner.pending_acks.entry(self.id);
        tags.push(d.tag);
        if tags.len() >= self.ack_batch {
            inner.flush_acks(self.id);
            inner.write_all()?;
        }
        Ok(())
    }

    /// Acknowledges every delivery of this consumer up to and including `d`.
    pub fn ack_up_to(&mut self, d: &Delivery) -> Result<(), Error> {
        self.settle(Opcode::Ack, FLAG_MULTIPLE, d)
    }

    /// Returns the message to the queue for redelivery.
    pub fn nack(&mut self, d: &Delivery) -> Result<(), Error> {
        self.settle(Opcode::Nack, 0, d)
    }

    /// Sends the message to the queue's dead-letter queue.
    pub fn reject(&mut self, d: &Delivery) -> Result<(), Error> {
        self.settle(Opcode::Reject, 0, d)
    }

    fn settle(&mut self, op: Opcode, flags: u8, d: &Delivery) -> Result<(), Error> {
        let mut inner = self.inner.borrow_mut();
        inner.check_open()?;
        inner.flush_acks(self.id);
        wire::ack::Acks::encode(&mut inner.wbuf, op, flags, self.id, &[d.tag]);
        inner.write_all()
    }

    /// Stops consuming; the server requeues whatever this consumer has not acknowledged.
    pub fn close(mut self) -> Result<(), Error> {
        self.unsubscribe()
    }

    fn unsubscribe(&mut self) -> Result<(), Error> {
        if !std::mem::replace(&mut self.open, false) {
            return Ok(());
        }
        self.inner.borrow_mut().unsubscribe(self.id)
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let _ = self.unsubscribe();
    }
}

/// Receives every message published on matching topics while subscribed.
pub struct Subscription {
    inner: Rc<RefCell<Inner>>,
    id: u32,
    open: bool,
}

impl Subscription {
    pub fn receive(&mut self, timeout: Option<Duration>) -> Result<Option<Delivery>, Error> {
        self.inner.borrow_mut().receive(self.id, timeout)
    }

    pub fn close(mut self) -> Result<(), Error> {
        self.unsubscribe()
    }

    fn unsubscribe(&mut self) -> Result<(), Error> {
        if !std::mem::replace(&mut self.open, false) {
            return Ok(());
        }
        self.inner.borrow_mut().unsubscribe(self.id)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let _ = self.unsubscribe();
    }
}

/// Destination names are 1 to 255 bytes on the wire; say so here rather than have the server
/// close the connection over a malformed frame.
fn check_name(what: &str, name: &str) -> Result<(), Error> {
    if name.is_empty() || name.len() > wire::NAME_LEN_MAX {
        return Err(Error::InvalidArgument(format!(
            "{what} name must be 1 to {} bytes, got {}",
            wire::NAME_LEN_MAX,
            name.len()
        )));
    }
    Ok(())
}

/// Moves buffered acks of one consumer into an ACK frame.
fn encode_acks(out: &mut Vec<u8>, consumer: u32, tags: &mut Vec<u64>) {
    if !tags.is_empty() {
        wire::ack::Acks::encode(out, Opcode::Ack, 0, consumer, tags);
        tags.clear();
    }
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}
