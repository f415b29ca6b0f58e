//! RECEIPT (server): the frame that carried `receipt:<id>` was processed.
//!
//! ```text
//! RECEIPT
//! receipt-id:<id>
//! ```

use super::{Command, Frame};

pub fn receipt(id: &str) -> Frame {
    Frame::new(Command::Receipt).header("receipt-id", id)
}

#[cfg(test)]
mod tests {
    use super::super::round_trip;
    use super::*;

    #[test]
    fn round_trip_has_no_body() {
        let f = round_trip(&receipt("r:1"));
        assert_eq!(f.get("receipt-id"), Some("r:1"));
        assert!(f.body.is_empty());
    }
}
