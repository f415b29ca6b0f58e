//! DISCONNECT (client): a graceful close. With `receipt`, the server answers RECEIPT once
//! everything before it has been processed, then closes.
//!
//! ```text
//! DISCONNECT
//! [receipt:<id>]
//! ```

use super::{Command, Frame, StompError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    pub receipt: Option<String>,
}

impl Disconnect {
    pub fn from_frame(f: &Frame) -> Result<Disconnect, StompError> {
        if f.command != Command::Disconnect {
            return Err(StompError::Invalid("expected DISCONNECT".into()));
        }
        Ok(Disconnect { receipt: f.get("receipt").map(str::to_string) })
    }
}

#[cfg(test)]
mod tests {
    use super::super::round_trip;
    use super::*;

    #[test]
    fn receipt_is_optional() {
        let f = Frame::new(Command::Disconnect).header("receipt", "77");
        assert_eq!(Disconnect::from_frame(&round_trip(&f)).unwrap().receipt.as_deref(), Some("77"));
        assert_eq!(Disconnect::from_frame(&Frame::new(Command::Disconnect)).unwrap().receipt, None);
        assert!(Disconnect::from_frame(&Frame::new(Command::Send)).is_err());
    }
}
