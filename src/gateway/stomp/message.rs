//! MESSAGE (server): a message for a subscription.
//!
//! ```text
//! MESSAGE
//! subscription:<sub id>
//! message-id:<id>
//! destination:/queue/x | /topic/x
//! [ack:<id to ACK/NACK with>]          (when the subscription is not ack:auto)
//! [user headers…] content-length:n
//!
//! <body>NUL
//! ```

use super::send::Destination;
use super::{Command, Frame};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub subscription: String,
    pub message_id: String,
    pub destination: Destination,
    pub ack: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Message {
    pub fn to_frame(&self) -> Frame {
        let mut f = Frame::new(Command::Message)
            .header("subscription", self.subscription.clone())
            .header("message-id", self.message_id.clone())
            .header("destination", self.destination.to_header());
        if let Some(a) = &self.ack {
            f = f.header("ack", a.clone());
        }
        for (k, v) in &self.headers {
            f = f.header(k, v.clone());
        }
        f.body(self.body.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::super::round_trip;
    use super::*;

    #[test]
    fn carries_user_headers_escaped_and_binary_bodies() {
        let m = Message {
            subscription: "s".into(),
            message_id: "q:12".into(),
            destination: Destination::Queue("jobs".into()),
            ack: Some("q:12:7".into()),
            headers: vec![("note".into(), "a:b\nc".into())],
            body: vec![1, 0, 2],
        };
        let f = round_trip(&m.to_frame());
        assert_eq!(f.get("destination"), Some("/queue/jobs"));
        assert_eq!(f.get("ack"), Some("q:12:7"));
        assert_eq!(f.get("note"), Some("a:b\nc"));
        assert_eq!(f.get("content-length"), Some("3"));
        assert_eq!(f.body, vec![1, 0, 2]);
    }
}
