//! SUBSCRIBE and UNSUBSCRIBE (client).
//!
//! ```text
//! SUBSCRIBE                              UNSUBSCRIBE
//! id:<sub id>                            id:<sub id>
//! destination:/queue/x | /topic/x        [receipt:<id>]
//! [ack:auto | client | client-individual]
//! [receipt:<id>]
//! ```
//! `ack:auto` (the default) settles a message when it is sent; `client` acknowledges it and
//! every earlier one of the subscription; `client-individual` only the one named. In 1.0 `id`
//! may be omitted (the destination then names the subscription).

use super::send::Destination;
use super::{Frame, StompError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    Auto,
    Client,
    ClientIndividual,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub id: String,
    pub destination: Destination,
    pub ack: AckMode,
    pub receipt: Option<String>,
}

impl Subscribe {
    pub fn from_frame(f: &Frame) -> Result<Subscribe, StompError> {
        let dest = f.require("destination")?;
        let destination = Destination::parse(dest)?;
        let id = f.get("id").unwrap_or(dest).to_string();
        let ack = match f.get("ack").unwrap_or("auto") {
            "auto" => AckMode::Auto,
            "client" => AckMode::Client,
            "client-individual" => AckMode::ClientIndividual,
            other => return Err(StompError::Invalid(format!("unknown ack mode {other:?}"))),
        };
        Ok(Subscribe { id, destination, ack, receipt: f.get("receipt").map(str::to_string) })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub id: String,
    pub receipt: Option<String>,
}

impl Unsubscribe {
    pub fn from_frame(f: &Frame) -> Result<Unsubscribe, StompError> {
        let id = f.get("id").or_else(|| f.get("destination")).ok_or_else(|| {
            StompError::Invalid("UNSUBSCRIBE frame needs an \"id\" header".into())
        })?;
        Ok(Unsubscribe { id: id.to_string(), receipt: f.get("receipt").map(str::to_string) })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{round_trip, Command};
    use super::*;

    #[test]
    fn subscribe_round_trip_and_ack_modes() {
        let f = Frame::new(Command::Subscribe)
            .header("id", "s1")
            .header("destination", "/topic/news.#")
            .header("ack", "client-individual");
        let s = Subscribe::from_frame(&round_trip(&f)).unwrap();
        assert_eq!((s.id.as_str(), s.ack), ("s1", AckMode::ClientIndividual));
        let f = Frame::new(Command::Subscribe).header("destination", "/queue/q");
        assert_eq!(Subscribe::from_frame(&f).unwrap().ack, AckMode::Auto);
        let f = Frame::new(Command::Subscribe)
            .header("destination", "/queue/q")
            .header("ack", "sometimes");
        assert!(Subscribe::from_frame(&f).is_err());
        assert!(Subscribe::from_frame(&Frame::new(Command::Subscribe)).is_err());
    }

    #[test]
    fn unsubscribe() {
        let f = Frame::new(Command::Unsubscribe).header("id", "s1").header("receipt", "r");
        let u = Unsubscribe::from_frame(&round_trip(&f)).unwrap();
        assert_eq!((u.id.as_str(), u.receipt.as_deref()), ("s1", Some("r")));
        assert!(Unsubscribe::from_frame(&Frame::new(Command::Unsubscribe)).is_err());
    }
}
