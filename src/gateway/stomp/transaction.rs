//! BEGIN, COMMIT and ABORT (client): transactions over SEND, ACK and NACK.
//!
//! ```text
//! BEGIN | COMMIT | ABORT
//! transaction:<tx>
//! [receipt:<id>]
//! ```
//! Within a transaction SENDs are held and ACK/NACKs recorded; COMMIT applies them in order,
//! ABORT discards the sends and leaves the messages unacknowledged.

use super::{Command, Frame, StompError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxOp {
    Begin,
    Commit,
    Abort,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    pub op: TxOp,
    pub id: String,
    pub receipt: Option<String>,
}

impl Transaction {
    pub fn from_frame(f: &Frame) -> Result<Transaction, StompError> {
        let op = match f.command {
            Command::Begin => TxOp::Begin,
            Command::Commit => TxOp::Commit,
            Command::Abort => TxOp::Abort,
            _ => return Err(StompError::Invalid("expected BEGIN, COMMIT or ABORT".into())),
        };
        let id = f.require("transaction")?.to_string();
        Ok(Transaction { op, id, receipt: f.get("receipt").map(str::to_string) })
    }
}

#[cfg(test)]
mod tests {
    use super::super::round_trip;
    use super::*;

    #[test]
    fn each_needs_a_transaction_id() {
        for (cmd, op) in [
            (Command::Begin, TxOp::Begin),
            (Command::Commit, TxOp::Commit),
            (Command::Abort, TxOp::Abort),
        ] {
            let f = Frame::new(cmd).header("transaction", "tx").header("receipt", "r");
            let t = Transaction::from_frame(&round_trip(&f)).unwrap();
            assert_eq!((t.op, t.id.as_str()), (op, "tx"));
            assert!(Transaction::from_frame(&Frame::new(cmd)).is_err());
        }
    }
}
