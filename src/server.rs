//! Start-up and shutdown: validates the config, binds one `SO_REUSEPORT` listener per shard,
//! builds the mailbox matrix, and runs one pinned shard thread per core.
//!
//! Runs on the main thread; after start-up it only waits for the shards to finish.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::config::Config;
use crate::event::Event;
use crate::mailbox::{mailbox, Receiver, Sender};
use crate::metrics::Metrics;
use crate::shard::{RdmaShared, Shard, ShardCtl, ShardInit};
use crate::sys;

/// A started server: its bound address and its shard threads.
pub struct Server {
    pub addr: SocketAddr,
    /// The STOMP gateway's bound address, when it is on.
    pub stomp_addr: Option<SocketAddr>,
    /// The MQTT gateway's bound address, when it is on.
    pub mqtt_addr: Option<SocketAddr>,
    /// The shared-memory transport's socket (absolute), when it is on.
    pub shm_path: Option<std::path::PathBuf>,
    /// The RDMA listener's address, when it is up; else why not (`None`: turned off).
    pub rdma: Option<Result<SocketAddr, String>>,
    /// Why the default shared-memory socket could not be made, if it could not.
    pub shm_note: Option<String>,
    /// Held for the server's life: the data directory's exclusive lock.
    _lock: std::fs::File,
    pub metrics: Arc<Metrics>,
    threads: Vec<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl Server {
    pub fn start(mut cfg: Config) -> Result<Server, String> {
        cfg.validate()?;
        sys::tune_allocator();
        std::fs::create_dir_all(&cfg.data_dir)
            .map_err(|e| format!("cannot create data dir {}: {e}", cfg.data_dir.display()))?;
        let lock = sys::lock_file(&cfg.data_dir.join("LOCK")).map_err(|e| {
            format!("data dir {} is in use by another rdmq server ({e})", cfg.data_dir.display())
        })?;
        // SO_REUSEPORT would let a second server join this address and split its clients with
        // the first; refuse if something already answers there.
        for addr in std::iter::once(cfg.listen).chain(cfg.stomp_addr).chain(cfg.mqtt_addr) {
            if addr.port() != 0
                && std::net::TcpStream::connect_timeout(
                    &addr,
                    std::time::Duration::from_millis(200),
                )
                .is_ok()
            {
                return Err(format!("cannot listen on {addr}: address already in use"));
            }
        }
        let n = cfg.shards;
        // Probe the kernel once, before anything listens: a ring with the flags and buffer ring
        // every shard will use (Linux 6.0 or newer), so a missing feature is one clear error.
        crate::uring::Uring::new(8, 2, 4096).map_err(|e| {
            format!("io_uring is unavailable or too old here (rdmq needs Linux 6.0+): {e}")
        })?;
        let (listeners, addr) = bind_per_shard(cfg.listen, n)?;
        let (mut stomp_listeners, stomp_addr) = match cfg.stomp_addr {
            Some(a) => {
                let (l, addr) = bind_per_shard(a, n)?;
                (l.into_iter().map(Some).collect(), Some(addr))
            }
            None => (none_per_shard(n), None),
        };
        let (mut mqtt_listeners, mqtt_addr) = match cfg.mqtt_addr {
            Some(a) => {
                let (l, addr) = bind_per_shard(a, n)?;
                (l.into_iter().map(Some).collect(), Some(addr))
            }
            None => (none_per_shard(n), None),
        };
        let mut shm_note = None;
        let (mut shm_listeners, shm_path) = match &cfg.shm_path {
            Some(p) => match bind_shm(p, cfg.shm_socket_mode, n) {
                Ok((l, path)) => (l.into_iter().map(Some).collect(), Some(path)),
                // The default socket is a convenience: if it cannot be made (a data directory
                // path too long for a Unix socket, a file system without sockets), say so and
                // serve the rest. A socket asked for by name must work.
                Err(e) if cfg.shm_listen.trim().is_empty() => {
                    shm_note = Some(format!("{e} (set shm_listen to another path, or \"off\")"));
                    (none_per_shard(n), None)
                }
                Err(e) => return Err(format!("{e} (--shm-listen off disables shared memory)")),
            },
            None => (none_per_shard(n), None),
        };
        let ctls: Vec<ShardCtl> = (0..n)
            .map(|_| {
                let eventfd = rdmq_client::shm::eventfd().map_err(|e| format!("eventfd: {e}"))?;
                Ok(ShardCtl { sleeping: AtomicBool::new(false), eventfd })
            })
            .collect::<Result<_, String>>()?;
        let ctls = Arc::new(ctls);
        // senders[from][to], receivers[to][from]
        let mut senders: Vec<Vec<Option<Sender<Vec<Event>>>>> =
            (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
        let mut receivers: Vec<Vec<Receiver<Vec<Event>>>> = (0..n).map(|_| Vec::new()).collect();
        for (from, outboxes) in senders.iter_mut().enumerate() {
            for (to, inbox) in receivers.iter_mut().enumerate() {
                if from != to {
                    let (tx, rx) = mailbox(cfg.mailbox_slots);
                    outboxes[to] = Some(tx);
                    inbox.push(rx);
                }
            }
        }
        let cpus = sys::allowed_cpus();
        let cfg = Arc::new(cfg);
        let metrics = Arc::new(Metrics::default());
        let mut threads = Vec::new();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (rdma_tx, rdma_rx) = std::sync::mpsc::channel();
        let mut rdma_init = cfg.rdma_addr.map(|a| (a, rdma_tx));
        // Every shard's message memory, for shard 0 to register when RDMA starts being used:
        // a delivery over RDMA is then written from wherever its record was received.
        let rdma_shared = (cfg!(feature = "rdma") && cfg.rdma_addr.is_some())
            .then(|| Arc::new(std::sync::Mutex::new(RdmaShared::default())));
        for (id, (listener, outbox)) in listeners.into_iter().zip(senders).enumerate().rev() {
            let init = ShardInit {
                ready: ready_tx.clone(),
                id: id as u16,
                cfg: cfg.clone(),
                metrics: metrics.clone(),
                listener,
                stomp_listener: stomp_listeners.pop().expect("one per shard"),
                mqtt_listener: mqtt_listeners.pop().expect("one per shard"),
                shm_listener: shm_listeners.pop().expect("one per shard"),
                ctls: ctls.clone(),
                inbox: receivers.pop().expect("one inbox per shard"),
                outbox,
                rdma: if id == 0 { rdma_init.take() } else { None },
                rdma_shared: rdma_shared.clone(),
            };
            let cpu = (cfg.pin_threads && !cpus.is_empty()).then(|| cpus[id % cpus.len()]);
            let t = std::thread::Builder::new()
                .name(format!("rdmq-shard-{id}"))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        if let Err(e) = sys::pin_to_cpu(cpu) {
                            eprintln!("rdmq: shard {id}: cannot pin to cpu {cpu}: {e}");
                        }
                    }
                    let result = Shard::new(init).and_then(Shard::run);
                    if let Err(e) = &result {
                        // One shard down means the server is down: stop the others now rather
                        // than let their mailboxes to it fill.
                        eprintln!("rdmq: shard {id} failed: {e}");
                        sys::request_termination();
                    }
                    result
                })
                .map_err(|e| format!("cannot spawn shard thread: {e}"))?;
            threads.push(t);
        }
        drop(ready_tx);
        // "Listening" means serving: wait until every shard has recovered its queues. A shard
        // that fails first drops its sender, and its error surfaces in `join`.
        for _ in 0..n {
            if ready_rx.recv().is_err() {
                break;
            }
        }
        let rdma = cfg.rdma_addr.map(|_| {
            rdma_rx.recv().unwrap_or_else(|_| Err("shard 0 stopped before starting RDMA".into()))
        });
        Ok(Server {
            addr,
            stomp_addr,
            mqtt_addr,
            shm_path,
            rdma,
            shm_note,
            _lock: lock,
            metrics,
            threads,
        })
    }

    /// Waits for every shard to stop (after SIGINT/SIGTERM). Returns the first shard error.
    pub fn join(self) -> Result<(), String> {
        let mut first = Ok(());
        for t in self.threads {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    sys::request_termination();
                    if first.is_ok() {
                        first = Err(format!("shard failed: {e}"));
                    }
                }
                Err(_) => {
                    sys::request_termination();
                    first = Err("a shard thread panicked".to_string());
                }
            }
        }
        first
    }
}

/// No listener on any of `n` shards (the transport or gateway is off).
fn none_per_shard(n: usize) -> Vec<Option<OwnedFd>> {
    (0..n).map(|_| None).collect()
}

/// One `SO_REUSEPORT` listener per shard on `addr`: the first is bound, the rest join the port
/// it got (the config may say port 0). Returns them and the bound address.
fn bind_per_shard(addr: SocketAddr, n: usize) -> Result<(Vec<OwnedFd>, SocketAddr), String> {
    let first =
        sys::reuseport_listener(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let bound = sys::local_addr(first.as_raw_fd()).map_err(|e| e.to_string())?;
    let mut listeners = vec![first];
    for _ in 1..n {
        listeners.push(
            sys::reuseport_listener(bound).map_err(|e| format!("cannot listen on {bound}: {e}"))?,
        );
    }
    Ok((listeners, bound))
}

/// The shm transport's Unix socket at `path` with permission bits `mode`, and one descriptor of
/// it per shard (each shard arms its own accept on it; the kernel hands every connection to
/// one of them). A socket file left by a server that died is replaced; one where a server
/// answers is not (see `shm_socket_in_use`).
fn bind_shm(
    path: &std::path::Path,
    mode: u32,
    n: usize,
) -> Result<(Vec<OwnedFd>, std::path::PathBuf), String> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(format!(
                "cannot listen on shm socket {shown}: a file that is not a socket is there"
            ));
        }
        if shm_socket_in_use(path) {
            return Err(format!(
                "cannot listen on shm socket {shown}: another server answers there"
            ));
        }
        std::fs::remove_file(path).map_err(|e| format!("cannot replace stale {shown}: {e}"))?;
    }
    let listener = std::os::unix::net::UnixListener::bind(path)
        .map_err(|e| format!("cannot listen on shm socket {shown}: {e}"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("cannot set mode {mode:o} on {shown}: {e}"))?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let first: OwnedFd = listener.into();
    let mut fds = Vec::with_capacity(n);
    for _ in 1..n {
        fds.push(first.try_clone().map_err(|e| format!("dup shm listener: {e}"))?);
    }
    fds.push(first);
    let abs = std::path::absolute(path).map_err(|e| format!("{shown}: {e}"))?;
    Ok((fds, abs))
}

/// How long a live server has to answer a probe of its shm socket with its handshake.
const SHM_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether a server answers on the shm socket at `path`. A connect alone proves nothing: a
/// server killed a moment ago can leave its listener open while the kernel tears down its
/// io_uring (pending accepts hold it), queueing connections nobody will take. A live server
/// answers at once, with its handshake or a refusal.
fn shm_socket_in_use(path: &std::path::Path) -> bool {
    use std::io::Read;
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(path) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(SHM_PROBE_TIMEOUT));
    let mut b = [0u8; 1];
    matches!(s.read(&mut b), Ok(n) if n > 0)
}
