//! The `rdmq` command: the server (`serve`), the first tools a user reaches for (`publish`,
//! `consume`, `subscribe`, `browse`) and the benchmark (`bench`).
#![deny(unsafe_code)]

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "rdmq", version, about = "rdmq: a thread-per-core message queue server")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server (loopback, port 7420 and ./rdmq-data unless told otherwise).
    Serve(ServeArgs),
    /// Publish one message per line of standard input.
    Publish(cli::tools::PublishArgs),
    /// Receive messages from a queue and print one payload per line.
    Consume(cli::tools::ConsumeArgs),
    /// Print a queue's messages, one payload per line, without consuming them.
    Browse(cli::tools::BrowseArgs),
    /// Receive messages from topics matching a pattern and print one payload per line.
    Subscribe(cli::tools::SubscribeArgs),
    /// Run a benchmark workload beside its raw baseline (no broker) on the same transport.
    Bench(cli::bench::BenchArgs),
    /// The other process of a benchmark (started by `rdmq bench`).
    #[command(hide = true)]
    BenchPeer(cli::peer::PeerArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Directory for durable state (created if missing). Default: ./rdmq-data
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Native protocol listen address. Default: 127.0.0.1:7420 (port 0 picks a free port)
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// STOMP 1.0-1.2 gateway listen address, or "off". Default: 127.0.0.1:61613
    #[arg(long, value_name = "ADDR|off")]
    stomp_listen: Option<String>,
    /// MQTT 3.1.1/5.0 gateway listen address, or "off". Default: 127.0.0.1:1883
    #[arg(long, value_name = "ADDR|off")]
    mqtt_listen: Option<String>,
    /// RDMA listen address (IPv4:PORT), or "off". Default: the --listen IP, port 7421
    #[arg(long, value_name = "ADDR|off")]
    rdma_listen: Option<String>,
    /// Shared-memory transport socket, or "off". Default: <data dir>/rdmq.sock
    #[arg(long, value_name = "PATH|off")]
    shm_listen: Option<String>,
    /// Shard threads, one per core. Default: one per CPU this process may use
    #[arg(long)]
    shards: Option<usize>,
    /// TOML config file; its keys are the fields documented in docs/CONFIG.md.
    /// Command-line flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Microseconds a shard spins without work before sleeping. Default: 50
    #[arg(long)]
    idle_spin_us: Option<u64>,
    /// Do not pin shard threads to CPUs.
    #[arg(long)]
    no_pin: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Serve(a) => serve(a),
        Cmd::Publish(a) => cli::tools::publish(a),
        Cmd::Consume(a) => cli::tools::consume(a),
        Cmd::Subscribe(a) => cli::tools::subscribe(a),
        Cmd::Browse(a) => cli::tools::browse(a),
        Cmd::Bench(a) => cli::bench::run(a),
        Cmd::BenchPeer(a) => cli::peer::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rdmq: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(a: ServeArgs) -> Result<(), String> {
    let mut cfg = match &a.config {
        Some(path) => rdmq::Config::load(path)?,
        None => rdmq::Config::default(),
    };
    if let Some(d) = a.data_dir {
        cfg.data_dir = d;
    }
    if let Some(l) = a.listen {
        cfg.listen = l;
    }
    if let Some(l) = a.stomp_listen {
        cfg.stomp_listen = l;
    }
    if let Some(l) = a.mqtt_listen {
        cfg.mqtt_listen = l;
    }
    if let Some(l) = a.rdma_listen {
        cfg.rdma_listen = l;
    }
    if let Some(l) = a.shm_listen {
        cfg.shm_listen = l;
    }
    if let Some(s) = a.shards {
        cfg.shards = s;
    }
    if let Some(s) = a.idle_spin_us {
        cfg.idle_spin_us = s;
    }
    if a.no_pin {
        cfg.pin_threads = false;
    }
    rdmq::install_signal_handlers();
    // A panicking shard (a broken invariant) takes the whole server down, not just its thread.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        rdmq::request_shutdown();
    }));
    let data_dir = cfg.data_dir.clone();
    let server = rdmq::Server::start(cfg)?;
    eprintln!(
        "rdmq {}: serving native protocol on tcp://{} with data dir {}",
        env!("CARGO_PKG_VERSION"),
        server.addr,
        data_dir.display()
    );
    // Scripts and tests read these lines to learn the ports when they asked for port 0. A
    // reader that stopped listening (closed the pipe) is not a reason to stop serving.
    use std::io::Write;
    let mut stdout = std::io::stdout();
    let mut announce = |line: String| {
        let _ = writeln!(stdout, "{line}").and_then(|_| stdout.flush());
    };
    announce(format!("listening tcp://{}", server.addr));
    if let Some(addr) = server.stomp_addr {
        eprintln!("rdmq: serving STOMP 1.0-1.2 on {addr}");
        announce(format!("listening stomp://{addr}"));
    }
    if let Some(addr) = server.mqtt_addr {
        eprintln!("rdmq: serving MQTT 3.1.1/5.0 on {addr}");
        announce(format!("listening mqtt://{addr}"));
    }
    match &server.rdma {
        Some(Ok(addr)) => {
            eprintln!("rdmq: serving the native protocol over RDMA on rdma://{addr}");
            announce(format!("listening rdma://{addr}"));
        }
        Some(Err(why)) => {
            let rest = if server.shm_path.is_some() { "TCP and shared memory" } else { "TCP" };
            eprintln!("rdmq: RDMA unavailable, serving {rest}: {why}");
        }
        None => {}
    }
    if let Some(why) = &server.shm_note {
        eprintln!("rdmq: shared memory unavailable: {why}");
    }
    if let Some(path) = &server.shm_path {
        eprintln!(
            "rdmq: serving the native protocol over shared memory on shm://{}",
            path.display()
        );
        announce(format!("listening shm://{}", path.display()));
    }
    let metrics = server.metrics.clone();
    let result = server.join();
    let summary: Vec<String> = metrics.snapshot().iter().map(|(k, v)| format!("{k}={v}")).collect();
    eprintln!("rdmq: stopped; {}", summary.join(" "));
    result
}
