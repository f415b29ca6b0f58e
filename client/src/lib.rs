//! rdmq-client: the rdmq native protocol codec and a blocking client.
//!
//! The codec (`wire`) is pure and shared with the server. The client is in the JMS spirit:
//! a [`Connection`] creates [`Producer`]s and [`Consumer`]s; publishing is pipelined with
//! confirms (a send never waits for a round trip; [`Producer::flush`] waits for the confirms);
//! consumption is credit-based. One connection belongs to one thread.
//!
//! ```no_run
//! use rdmq_client::{Connection, QueueOptions};
//! let conn = Connection::connect("tcp://127.0.0.1:7420")?;
//! conn.declare_queue("jobs", &QueueOptions::default())?;
//! let mut producer = conn.queue_producer("jobs");
//! producer.send(b"hello")?;
//! producer.flush()?; // waits until the server confirmed every send
//! let mut consumer = conn.consume("jobs", 64)?;
//! let msg = consumer.receive(None)?.expect("a message");
//! assert_eq!(msg.payload(), b"hello");
//! consumer.ack(&msg)?;
//! # Ok::<(), rdmq_client::Error>(())
//! ```
#![deny(unsafe_code)]

#[cfg(feature = "rdma")]
pub mod rdma;
pub mod shm;
pub mod wire;

mod client;
mod error;
#[cfg(test)]
mod mutate;
mod url;

/// The RDMA ring size a client asks for.
#[cfg(feature = "rdma")]
pub use client::RDMA_RING_BYTES;
pub use client::{
    Connection, ConnectionOptions, Consumer, Delivery, Message, Producer, QueueOptions, Receipt,
    Subscription,
};
pub use error::Error;
pub use url::{Endpoint, DEFAULT_RDMA_PORT};
pub use wire::declare::Durability;
/// Error codes, for matching on [`Error::code`].
pub use wire::error::code as error_code;
pub use wire::seek::SeekTarget;
