//! rdmq: a thread-per-core message queue server.
//!
//! Layers, from the wire inwards: `uring` and `sys` (the kernel), `shard` and `conn` (the loop
//! and its connections), `handlers` (frames and events), `broker` (the pure state machine),
//! `mailbox` (between shards). The codec lives in the `rdmq-client` crate. See
//! `docs/ARCHITECTURE.md` for the glossary and the threads each part runs on.
#![deny(unsafe_code)]

pub mod arena;
pub mod broker;
pub mod config;
mod conn;
mod durable;
mod event;
pub mod gateway;
mod handlers;
pub mod journal;
pub mod mailbox;
pub mod metrics;
mod rdma;
pub mod server;
mod shard;
mod shm;
mod sys;
mod uring;

pub use config::Config;
pub use server::Server;

/// Installs the SIGINT/SIGTERM handlers that stop the shard loops.
pub fn install_signal_handlers() {
    sys::install_termination_handler();
}

/// Asks every shard loop to stop, as SIGTERM does.
pub fn request_shutdown() {
    sys::request_termination();
}
