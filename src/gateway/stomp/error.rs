//! ERROR (server): what went wrong, then the server closes the connection.
//!
//! ```text
//! ERROR
//! message:<one line>
//! [receipt-id:<id of the frame that failed>]
//! content-type:text/plain
//!
//! <explanation>NUL
//! ```

use super::{Command, Frame};

pub fn error(message: &str, detail: &str, receipt_id: Option<&str>) -> Frame {
    let mut f = Frame::new(Command::Error).header("message", message);
    if let Some(r) = receipt_id {
        f = f.header("receipt-id", r);
    }
    f.header("content-type", "text/plain").body(detail.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::super::round_trip;
    use super::*;

    #[test]
    fn message_header_escaped_and_body_explains() {
        let f = round_trip(&error("bad frame: x:y", "the header line had no colon", Some("r")));
        assert_eq!(f.get("message"), Some("bad frame: x:y"));
        assert_eq!(f.get("receipt-id"), Some("r"));
        assert_eq!(f.body, b"the header line had no colon");
    }
}
