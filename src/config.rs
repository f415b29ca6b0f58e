//! Server configuration: defaults, the TOML file (`--config FILE`) and command-line overrides,
//! validated once at start. Every bound the server enforces is a field here with its reason.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// What happens to a topic subscriber whose bounded buffer is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SlowSubscriberPolicy {
    /// Discard the oldest buffered messages (counted in `topic_dropped`).
    #[default]
    DropOldest,
    /// Close the subscriber's connection with error 503 (counted in `slow_disconnects`).
    Disconnect,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where durable state lives (used by the journal; created at start).
    pub data_dir: PathBuf,
    /// Native protocol listener.
    pub listen: SocketAddr,
    /// STOMP 1.0–1.2 gateway listener: an address, or "off".
    pub stomp_listen: String,
    /// The same, parsed (filled in by `validate`; `None` when off).
    #[serde(skip)]
    pub stomp_addr: Option<SocketAddr>,
    /// MQTT 3.1.1/5.0 gateway listener: an address, or "off".
    pub mqtt_listen: String,
    #[serde(skip)]
    pub mqtt_addr: Option<SocketAddr>,
    /// Shared-memory transport: the Unix socket clients connect to (`shm://PATH`), "off", or
    /// empty for `<data_dir>/rdmq.sock`.
    pub shm_listen: String,
    /// The same, resolved (filled in by `validate`; `None` when off).
    #[serde(skip)]
    pub shm_path: Option<PathBuf>,
    /// Permission bits of the shm socket file: who may connect at all (owner and group).
    pub shm_socket_mode: u32,
    /// Users, besides the server's own and root, whose processes may use the shm transport
    /// (checked with SO_PEERCRED on every connection).
    pub shm_allow_uids: Vec<u32>,
    /// Bytes of each direction's ring per shm connection (power of two, 64 KiB to 1 GiB): a
    /// frame from the client must fit the ring whole; 2 MiB or more uses huge pages when free.
    pub shm_ring_bytes: usize,
    /// RDMA transport: the rdma_cm listen address (`IP:PORT`, IPv4), "off", or empty for the
    /// native listener's IP and port 7421.
    pub rdma_listen: String,
    /// The same, resolved (filled in by `validate`; `None` when off).
    #[serde(skip)]
    pub rdma_addr: Option<std::net::SocketAddrV4>,
    /// Largest ring (per direction) an RDMA client may ask for; the client proposes its size.
    pub rdma_ring_bytes_max: usize,
    /// RDMA connections each shard serves at once; sizes each shard's completion queue.
    pub rdma_connections_max: usize,
    /// Records at least this long are written to RDMA consumers by the NIC straight from
    /// message memory; shorter ones are copied into the link's staging ring (a scatter entry
    /// per record can cost more than copying a few bytes). 0: every record.
    pub rdma_gather_min_bytes: u32,
    /// Shard threads; 0 = one per CPU this process may use.
    pub shards: usize,
    /// Pin each shard to its own CPU.
    pub pin_threads: bool,
    /// Create queues and topics on first use instead of answering 404.
    pub auto_create: bool,
    /// Default deliveries after which a returned message is dead-lettered.
    pub queue_max_deliveries: u32,
    /// Default bound on messages held by one queue (memory bound: ~100 bytes of overhead each).
    pub queue_max_length: u32,
    /// Messages buffered per topic subscriber before the slow-subscriber policy applies.
    pub subscriber_buffer_max: usize,
    pub slow_subscriber_policy: SlowSubscriberPolicy,
    /// Largest frame body accepted: bounds what one connection can make the server hold.
    pub frame_body_max: usize,
    /// Connections per shard: the connection table is sized once at start.
    pub connections_per_shard: usize,
    /// Bytes of output queued for one connection before topic deliveries wait for it to drain.
    pub conn_output_high_water: usize,
    /// Microseconds a shard spins without work before sleeping in its ring.
    pub idle_spin_us: u64,
    /// Slots per inter-shard mailbox (power of two); each slot carries a batch of events.
    pub mailbox_slots: usize,
    /// Provided receive buffers per shard (power of two) and their size in bytes.
    pub recv_buffers: u16,
    pub recv_buffer_bytes: usize,
    /// Durability of queues created on first use: memory, flush or fsync.
    pub default_queue_durability: String,
    /// The same, parsed (filled in by `validate`).
    #[serde(skip)]
    pub default_durability: rdmq_client::Durability,
    /// Bytes per journal segment file before a new one starts; settled segments are deleted
    /// whole, so smaller segments return disk space sooner, larger ones mean fewer files.
    pub segment_bytes: u64,
    /// Bytes of each shard's message memory (2 MiB chunks, huge pages when reserved), which
    /// received batches are copied into once, kept in, written to journals from and delivered
    /// from; also the bound on journal bytes not yet written (a publish past it is refused).
    pub journal_ring_bytes: usize,
    /// A group commit waits at most this long after its first write before syncing, to gather
    /// more writes into one fdatasync (0: sync as soon as no other sync is in flight, which
    /// already groups whatever arrives during a sync).
    pub group_commit_max_delay_us: u64,
    /// ... and syncs early once this many bytes are written into it (0: no byte bound).
    pub group_commit_max_bytes: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("rdmq-data"),
            listen: "127.0.0.1:7420".parse().expect("constant address"),
            stomp_listen: "127.0.0.1:61613".to_string(),
            stomp_addr: None,
            mqtt_listen: "127.0.0.1:1883".to_string(),
            mqtt_addr: None,
            shm_listen: String::new(),
            shm_path: None,
            shm_socket_mode: 0o660,
            shm_allow_uids: Vec::new(),
            shm_ring_bytes: 4 << 20,
            rdma_listen: String::new(),
            rdma_addr: None,
            rdma_ring_bytes_max: 4 << 20,
            rdma_connections_max: 32,
            rdma_gather_min_bytes: 0,
            shards: 0,
            pin_threads: true,
            auto_create: true,
            queue_max_deliveries: 10,
            queue_max_length: 4 << 20,
            subscriber_buffer_max: 64 << 10,
            slow_subscriber_policy: SlowSubscriberPolicy::DropOldest,
            frame_body_max: rdmq_client::wire::frame::FRAME_BODY_MAX,
            connections_per_shard: 4096,
            conn_output_high_water: 4 << 20,
            idle_spin_us: 50,
            mailbox_slots: 1024,
            recv_buffers: 512,
            recv_buffer_bytes: 64 << 10,
            default_queue_durability: "fsync".to_string(),
            default_durability: rdmq_client::Durability::Fsync,
            segment_bytes: 64 << 20,
            journal_ring_bytes: 64 << 20,
            group_commit_max_delay_us: 0,
            group_commit_max_bytes: 0,
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("config {}: {e}", path.display()))
    }

    /// Checks relationships between fields; returns the first problem in words.
    pub fn validate(&mut self) -> Result<(), String> {
        if self.shards == 0 {
            self.shards = crate::sys::allowed_cpus().len().max(1);
        }
        if self.shards > 256 {
            return Err(format!("shards = {}: at most 256", self.shards));
        }
        if !self.mailbox_slots.is_power_of_two() || self.mailbox_slots < 2 {
            return Err("mailbox_slots must be a power of two, at least 2".into());
        }
        if !self.recv_buffers.is_power_of_two() {
            return Err("recv_buffers must be a power of two".into());
        }
        if self.recv_buffer_bytes < 4096 {
            return Err("recv_buffer_bytes must be at least 4096".into());
        }
        if self.frame_body_max < 4096 || self.frame_body_max > (256 << 20) {
            return Err("frame_body_max must be between 4 KiB and 256 MiB".into());
        }
        if self.queue_max_deliveries == 0 || self.queue_max_length == 0 {
            return Err("queue_max_deliveries and queue_max_length must be positive".into());
        }
        self.default_durability = self.default_queue_durability.parse()?;
        self.stomp_addr = parse_listen(&self.stomp_listen)
            .map_err(|e| format!("stomp_listen = {:?}: {e}", self.stomp_listen))?;
        self.mqtt_addr = parse_listen(&self.mqtt_listen)
            .map_err(|e| format!("mqtt_listen = {:?}: {e}", self.mqtt_listen))?;
        self.shm_path = match self.shm_listen.trim() {
            "off" => None,
            "" => Some(self.data_dir.join("rdmq.sock")),
            p => Some(PathBuf::from(p)),
        };
        if !rdmq_client::shm::ring_bytes_ok(self.shm_ring_bytes) {
            return Err("shm_ring_bytes must be a power of two from 64 KiB to 1 GiB".into());
        }
        self.rdma_addr = match self.rdma_listen.trim() {
            "off" => None,
            "" => match self.listen {
                SocketAddr::V4(a) => {
                    let port = if a.port() == 0 { 0 } else { RDMA_DEFAULT_PORT };
                    Some(std::net::SocketAddrV4::new(*a.ip(), port))
                }
                SocketAddr::V6(_) => None,
            },
            a => match a.parse() {
                Ok(SocketAddr::V4(v4)) => Some(v4),
                _ => return Err(format!("rdma_listen = {a:?}: expected IPv4:PORT or \"off\"")),
            },
        };
        let max = self.rdma_ring_bytes_max;
        if !rdmq_client::shm::ring_bytes_ok(max) {
            return Err("rdma_ring_bytes_max must be a power of two from 64 KiB to 1 GiB".into());
        }
        if self.rdma_connections_max == 0 || self.rdma_connections_max > 1024 {
            return Err("rdma_connections_max must be 1 ..= 1024".into());
        }
        if self.shm_socket_mode > 0o777 {
            return Err("shm_socket_mode must be permission bits (at most 0o777)".into());
        }
        if self.segment_bytes < (1 << 20) {
            return Err("segment_bytes must be at least 1 MiB".into());
        }
        let ring = self.journal_ring_bytes;
        if !ring.is_power_of_two() || ring < (4 << 20) || ring < 2 * self.frame_body_max {
            return Err(
                "journal_ring_bytes must be a power of two, at least 4 MiB and twice frame_body_max"
                    .into(),
            );
        }
        if self.subscriber_buffer_max == 0 || self.connections_per_shard == 0 {
            return Err("subscriber_buffer_max and connections_per_shard must be positive".into());
        }
        Ok(())
    }
}

/// The RDMA listener's port when `rdma_listen` is empty: the one after the native port.
pub use rdmq_client::DEFAULT_RDMA_PORT as RDMA_DEFAULT_PORT;

/// A gateway listener setting: `off` (or an empty string) disables it, else an address.
pub fn parse_listen(v: &str) -> Result<Option<SocketAddr>, String> {
    match v.trim() {
        "off" | "" => Ok(None),
        a => a
            .parse()
            .map(Some)
            .map_err(|_| "expected IP:PORT (host names are not resolved) or \"off\"".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_overrides_defaults_and_rejects_unknown_keys() {
        let c: Config =
            toml::from_str("shards = 3\nslow_subscriber_policy = \"disconnect\"").unwrap();
        assert_eq!(c.shards, 3);
        assert_eq!(c.slow_subscriber_policy, SlowSubscriberPolicy::Disconnect);
        assert_eq!(c.queue_max_deliveries, Config::default().queue_max_deliveries);
        assert!(toml::from_str::<Config>("shardz = 3").is_err());
    }

    #[test]
    fn validation() {
        let mut c = Config { mailbox_slots: 3, ..Config::default() };
        assert!(c.validate().is_err());
        let mut c = Config::default();
        c.validate().unwrap();
        assert!(c.shards >= 1);
        assert_eq!(c.stomp_addr, Some("127.0.0.1:61613".parse().unwrap()));
        let mut c = Config { stomp_listen: "off".into(), ..Config::default() };
        c.validate().unwrap();
        assert_eq!(c.stomp_addr, None);
        let mut c = Config { stomp_listen: "localhost".into(), ..Config::default() };
        assert!(c.validate().unwrap_err().contains("stomp_listen"));
    }
}
