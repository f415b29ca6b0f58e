//! ACK and NACK (client): settle a MESSAGE.
//!
//! ```text
//! ACK | NACK
//! id:<the MESSAGE's ack header>      (1.2; 1.1 and 1.0 use message-id and subscription)
//! [transaction:<tx>] [receipt:<id>]
//! ```
//! NACK returns the message for redelivery (rdmq's nack; dead-lettered after `max_deliveries`).

use super::{Command, Frame, StompError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub nack: bool,
    /// The value the MESSAGE carried in `ack` (1.2) or `message-id` (1.0/1.1).
    pub id: String,
    pub subscription: Option<String>,
    pub transaction: Option<String>,
    pub receipt: Option<String>,
}

impl Ack {
    pub fn from_frame(f: &Frame) -> Result<Ack, StompError> {
        let nack = match f.command {
            Command::Ack => false,
            Command::Nack => true,
            _ => return Err(StompError::Invalid("expected ACK or NACK".into())),
        };
        let id = f.get("id").or_else(|| f.get("message-id")).ok_or_else(|| {
            StompError::Invalid(format!("{} frame needs an \"id\" header", f.command.as_str()))
        })?;
        Ok(Ack {
            nack,
            id: id.to_string(),
            subscription: f.get("subscription").map(str::to_string),
            transaction: f.get("transaction").map(str::to_string),
            receipt: f.get("receipt").map(str::to_string),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::round_trip;
    use super::*;

    #[test]
    fn ack_and_nack() {
        let f = Frame::new(Command::Ack).header("id", "m-7").header("transaction", "tx1");
        let a = Ack::from_frame(&round_trip(&f)).unwrap();
        assert_eq!((a.nack, a.id.as_str(), a.transaction.as_deref()), (false, "m-7", Some("tx1")));
        let f = Frame::new(Command::Nack).header("message-id", "m-8").header("subscription", "s");
        let a = Ack::from_frame(&f).unwrap();
        assert_eq!((a.nack, a.id.as_str()), (true, "m-8"), "1.1 style");
        assert!(Ack::from_frame(&Frame::new(Command::Ack)).is_err());
    }
}
