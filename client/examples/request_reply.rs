//! Request/reply over two queues with correlation ids: a worker thread answers requests that
//! carry a reply-to queue. Run a server first (`cargo run --release -- serve`), then
//! `cargo run -p rdmq-client --example request_reply [-- tcp://127.0.0.1:7420]`.

use rdmq_client::{Connection, Error, Message, QueueOptions};
use std::time::Duration;

fn main() -> Result<(), Error> {
    let url = std::env::args().nth(1).unwrap_or_else(|| "tcp://127.0.0.1:7420".into());
    let setup = Connection::connect(&url)?;
    setup.declare_queue("example.requests", &QueueOptions::default())?;
    setup.declare_queue("example.replies", &QueueOptions::default())?;

    let worker_url = url.clone();
    let worker = std::thread::spawn(move || -> Result<(), Error> {
        let conn = Connection::connect(&worker_url)?;
        let mut requests = conn.consume("example.requests", 16)?;
        for _ in 0..3 {
            let req = requests.receive(Some(Duration::from_secs(10)))?.expect("a request");
            let rec = req.record();
            let answer = format!("{} bytes", rec.payload().len());
            let reply_to = String::from_utf8_lossy(rec.reply_to()).into_owned();
            let mut replies = conn.queue_producer(&reply_to);
            replies.send_message(&Message::new(answer).correlation_id(rec.correlation_id()))?;
            replies.flush()?;
            requests.ack(&req)?;
        }
        Ok(())
    });

    let conn = Connection::connect(&url)?;
    let mut requests = conn.queue_producer("example.requests");
    let mut replies = conn.consume("example.replies", 16)?;
    for (i, text) in ["a", "bb", "ccc"].iter().enumerate() {
        let msg =
            Message::new(*text).correlation_id(format!("req-{i}")).reply_to("example.replies");
        requests.send_message(&msg)?;
    }
    requests.flush()?;
    for _ in 0..3 {
        let reply = replies.receive(Some(Duration::from_secs(10)))?.expect("a reply");
        let rec = reply.record();
        println!(
            "{} -> {}",
            String::from_utf8_lossy(rec.correlation_id()),
            String::from_utf8_lossy(reply.payload())
        );
        replies.ack(&reply)?;
    }
    worker.join().expect("worker thread")?;
    Ok(())
}
