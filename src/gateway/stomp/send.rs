//! SEND (client): a message to a destination.
//!
//! ```text
//! SEND
//! destination:/queue/<name> | /topic/<name>
//! [transaction:<tx>] [receipt:<id>] [content-type:…] [content-length:n] [user headers…]
//!
//! <body>NUL
//! ```
//! `/queue/x` is the rdmq queue `x` (competing consumers); `/topic/x` the topic `x` (every
//! subscriber). Headers other than the STOMP ones travel with the message as its headers.

use super::{Frame, StompError};

/// Where a STOMP destination points in rdmq.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Queue(String),
    Topic(String),
}

impl Destination {
    pub fn parse(d: &str) -> Result<Destination, StompError> {
        let bad = || {
            StompError::Invalid(format!(
                "unknown destination {d:?}: use /queue/<name> or /topic/<name>"
            ))
        };
        let (kind, name) = d.strip_prefix('/').and_then(|r| r.split_once('/')).ok_or_else(bad)?;
        if name.is_empty() || name.len() > 255 {
            return Err(bad());
        }
        match kind {
            "queue" => Ok(Destination::Queue(name.to_string())),
            "topic" => Ok(Destination::Topic(name.to_string())),
            _ => Err(bad()),
        }
    }

    pub fn to_header(&self) -> String {
        match self {
            Destination::Queue(n) => format!("/queue/{n}"),
            Destination::Topic(n) => format!("/topic/{n}"),
        }
    }
}

/// Headers STOMP defines for SEND; everything else is the application's.
const PROTOCOL_HEADERS: [&str; 4] = ["destination", "transaction", "receipt", "content-length"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Send {
    pub destination: Destination,
    pub transaction: Option<String>,
    pub receipt: Option<String>,
    /// Application headers in order (content-type included), the first of each name only.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Send {
    pub fn from_frame(f: Frame) -> Result<Send, StompError> {
        let destination = Destination::parse(f.require("destination")?)?;
        let transaction = f.get("transaction").map(str::to_string);
        let receipt = f.get("receipt").map(str::to_string);
        let mut headers: Vec<(String, String)> = Vec::new();
        for (k, v) in f.headers {
            if !PROTOCOL_HEADERS.contains(&k.as_str()) && !headers.iter().any(|(h, _)| *h == k) {
                headers.push((k, v));
            }
        }
        Ok(Send { destination, transaction, receipt, headers, body: f.body })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{round_trip, Command};
    use super::*;

    #[test]
    fn round_trip_keeps_user_headers_and_binary_body() {
        let f = Frame::new(Command::Send)
            .header("destination", "/queue/jobs")
            .header("receipt", "r1")
            .header("tenant", "acme")
            .header("tenant", "ignored")
            .header("content-type", "application/octet-stream")
            .body(vec![0u8, 1, 0, 2]);
        let s = Send::from_frame(round_trip(&f)).unwrap();
        assert_eq!(s.destination, Destination::Queue("jobs".into()));
        assert_eq!(s.receipt.as_deref(), Some("r1"));
        assert_eq!(
            s.headers,
            vec![
                ("tenant".into(), "acme".into()),
                ("content-type".into(), "application/octet-stream".into())
            ]
        );
        assert_eq!(s.body, vec![0, 1, 0, 2]);
    }

    #[test]
    fn destinations() {
        assert_eq!(Destination::parse("/topic/a.b").unwrap(), Destination::Topic("a.b".into()));
        for bad in ["queue/x", "/queue/", "/exchange/x", "", "/queue"] {
            assert!(Destination::parse(bad).is_err(), "{bad}");
        }
        assert!(Send::from_frame(Frame::new(Command::Send)).is_err(), "destination required");
    }
}
