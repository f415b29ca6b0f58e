//! Streams 100,000 small messages through a queue and reads them back, in order, with acks.
//! `cargo run -p rdmq-client --release --example stream [-- tcp://127.0.0.1:7420]` against a running server.

use rdmq_client::{Connection, Error, QueueOptions};
use std::time::{Duration, Instant};

fn main() -> Result<(), Error> {
    let url = std::env::args().nth(1).unwrap_or_else(|| "tcp://127.0.0.1:7420".into());
    let conn = Connection::connect(&url)?;
    conn.declare_queue("example.stream", &QueueOptions::default())?;
    const N: u64 = 100_000;
    let start = Instant::now();
    let mut producer = conn.queue_producer("example.stream");
    for i in 0..N {
        producer.send(&i.to_le_bytes())?; // buffered into batches; no round trip per send
    }
    producer.flush()?;
    let mut consumer = conn.consume("example.stream", 1024)?;
    for i in 0..N {
        let d = consumer.receive(Some(Duration::from_secs(10)))?.expect("a message");
        assert_eq!(d.payload(), i.to_le_bytes());
        consumer.ack(&d)?;
    }
    println!("{N} messages there and back in {:?}", start.elapsed());
    Ok(())
}
