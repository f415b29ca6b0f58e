//! `rdmq publish`, `rdmq consume`, `rdmq subscribe`, `rdmq browse`: line-oriented tools in the manner of
//! `mosquitto_pub`/`mosquitto_sub` and `nats pub`/`nats sub`.

use std::io::{BufRead, Write};
use std::time::Duration;

use clap::Args;
use rdmq_client::{Connection, Consumer, Delivery, Error, Subscription};

const DEFAULT_URL: &str = "tcp://127.0.0.1:7420";
/// With `--confirm`, lines between confirm waits when input never pauses: big enough to batch,
/// small enough that confirmed lines appear steadily.
const CONFIRM_EVERY: usize = 4096;

#[derive(Args)]
#[command(group(clap::ArgGroup::new("dest").required(true).args(["queue", "topic"])))]
pub struct PublishArgs {
    /// Server URL.
    #[arg(long, default_value = DEFAULT_URL)]
    url: String,
    /// Publish to this queue.
    #[arg(long)]
    queue: Option<String>,
    /// Publish to this topic.
    #[arg(long)]
    topic: Option<String>,
    /// Wait for the server's confirm of every message; print each confirmed line.
    #[arg(long)]
    confirm: bool,
}

#[derive(Args)]
pub struct ConsumeArgs {
    /// Server URL.
    #[arg(long, default_value = DEFAULT_URL)]
    url: String,
    /// Queue to consume from.
    #[arg(long)]
    queue: String,
    /// Acknowledge each message after printing it. Without it messages return to the queue on
    /// exit, and a message returned `queue_max_deliveries` times (default 10) is dead-lettered.
    #[arg(long)]
    ack: bool,
    /// Stop after this many messages.
    #[arg(long)]
    count: Option<u64>,
    /// Stop when no message arrives for this many milliseconds.
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Unacknowledged messages in flight at most (prefetch).
    #[arg(long, default_value_t = 256)]
    credit: u32,
}

#[derive(Args)]
pub struct SubscribeArgs {
    /// Server URL.
    #[arg(long, default_value = DEFAULT_URL)]
    url: String,
    /// Topic pattern: dot-separated words, `*` matches one word, `#` zero or more.
    #[arg(long)]
    topic: String,
    /// Stop after this many messages.
    #[arg(long)]
    count: Option<u64>,
    /// Stop when no message arrives for this many milliseconds.
    #[arg(long)]
    timeout_ms: Option<u64>,
}

pub fn publish(a: PublishArgs) -> Result<(), String> {
    let conn = Connection::connect(&a.url).map_err(|e| format!("{}: {e}", a.url))?;
    let mut producer = match (&a.queue, &a.topic) {
        (Some(q), None) => conn.queue_producer(q),
        (None, Some(t)) => conn.topic_producer(t),
        _ => unreachable!("clap enforces exactly one of --queue and --topic"),
    };
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut batch: Vec<Vec<u8>> = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = input.read_until(b'\n', &mut line).map_err(|e| format!("stdin: {e}"))?;
        if n > 0 {
            if line.last() == Some(&b'\n') {
                line.pop();
            }
            producer.send(&line).map_err(|e| e.to_string())?;
            if a.confirm {
                batch.push(line.clone());
            }
        }
        // Flush when input pauses (interactive use) or ends, or every CONFIRM_EVERY lines of a
        // stream that never pauses; piped input is sent in batches.
        let paused = n == 0 || input.fill_buf().map(|b| b.is_empty()).unwrap_or(true);
        if paused || (a.confirm && batch.len() >= CONFIRM_EVERY) {
            if a.confirm {
                producer.flush().map_err(|e| e.to_string())?;
                for l in batch.drain(..) {
                    out.write_all(&l)
                        .and_then(|_| out.write_all(b"\n"))
                        .map_err(|e| e.to_string())?;
                }
                out.flush().map_err(|e| e.to_string())?;
            } else if n == 0 {
                // Even without --confirm, wait at the end so a refused publish is reported.
                producer.flush().map_err(|e| e.to_string())?;
            } else {
                producer.push().map_err(|e| e.to_string())?;
            }
        }
        if n == 0 {
            return Ok(());
        }
    }
}

#[derive(Args)]
pub struct BrowseArgs {
    /// Server URL.
    #[arg(long, default_value = DEFAULT_URL)]
    url: String,
    /// Queue to read without consuming.
    #[arg(long)]
    queue: String,
    /// First position to show.
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Messages to show at most.
    #[arg(long, default_value_t = 1000)]
    max: u32,
    /// Prefix each payload with its position and a tab.
    #[arg(long)]
    positions: bool,
}

/// Prints a queue's messages without consuming them.
pub fn browse(a: BrowseArgs) -> Result<(), String> {
    let conn = Connection::connect(&a.url).map_err(|e| format!("{}: {e}", a.url))?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let (mut from, mut left) = (a.from, a.max);
    // Pages of at most the protocol's bound until `max` are shown or the queue ends.
    while left > 0 {
        let page = left.min(rdmq_client::wire::browse::BROWSE_MAX);
        let got = conn.browse(&a.queue, from, page).map_err(|e| e.to_string())?;
        for d in &got {
            if a.positions {
                write!(out, "{}\t", d.tag).map_err(|e| e.to_string())?;
            }
            out.write_all(d.payload())
                .and_then(|_| out.write_all(b"\n"))
                .map_err(|e| e.to_string())?;
        }
        let Some(last) = got.last() else { break };
        from = last.tag + 1;
        left -= got.len() as u32;
        if (got.len() as u32) < page {
            break;
        }
    }
    out.flush().map_err(|e| e.to_string())
}

pub fn consume(a: ConsumeArgs) -> Result<(), String> {
    let conn = Connection::connect(&a.url).map_err(|e| format!("{}: {e}", a.url))?;
    let consumer = conn.consume(&a.queue, a.credit).map_err(|e| e.to_string())?;
    let mut source = QueueSource { consumer, ack: a.ack };
    print_payloads(a.count, a.timeout_ms, &mut source)?;
    source.consumer.close().map_err(|e| e.to_string())
}

pub fn subscribe(a: SubscribeArgs) -> Result<(), String> {
    let conn = Connection::connect(&a.url).map_err(|e| format!("{}: {e}", a.url))?;
    let mut sub = conn.subscribe(&a.topic).map_err(|e| e.to_string())?;
    print_payloads(a.count, a.timeout_ms, &mut sub)
}

/// Where `print_payloads` gets messages, and what it does once one is printed.
trait Source {
    fn next(&mut self, timeout: Option<Duration>) -> Result<Option<Delivery>, Error>;
    fn printed(&mut self, _d: &Delivery) -> Result<(), Error> {
        Ok(())
    }
}

impl Source for Subscription {
    fn next(&mut self, timeout: Option<Duration>) -> Result<Option<Delivery>, Error> {
        self.receive(timeout)
    }
}

struct QueueSource {
    consumer: Consumer,
    ack: bool,
}

impl Source for QueueSource {
    fn next(&mut self, timeout: Option<Duration>) -> Result<Option<Delivery>, Error> {
        self.consumer.receive(timeout)
    }

    /// Acknowledged only once printed: a crash in between redelivers, never loses.
    fn printed(&mut self, d: &Delivery) -> Result<(), Error> {
        if self.ack {
            self.consumer.ack(d)?;
        }
        Ok(())
    }
}

/// Prints one payload per line as messages arrive, until `count` or a quiet `timeout_ms`.
fn print_payloads(
    count: Option<u64>,
    timeout_ms: Option<u64>,
    source: &mut dyn Source,
) -> Result<(), String> {
    let timeout = timeout_ms.map(Duration::from_millis);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut got = 0u64;
    while count.is_none_or(|c| got < c) {
        let Some(d) = source.next(timeout).map_err(|e| e.to_string())? else {
            return finish_on_timeout(got, count);
        };
        out.write_all(d.payload()).and_then(|_| out.write_all(b"\n")).map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())?;
        source.printed(&d).map_err(|e| e.to_string())?;
        got += 1;
    }
    Ok(())
}

/// A timeout is success when no count was asked for, and a failure when the count fell short.
fn finish_on_timeout(got: u64, count: Option<u64>) -> Result<(), String> {
    match count {
        Some(c) if got < c => Err(format!("timed out after {got} of {c} messages")),
        _ => Ok(()),
    }
}
