//! Typed client errors: what went wrong, in terms a caller can act on.

use std::fmt;

use crate::wire::DecodeError;

#[derive(Debug)]
pub enum Error {
    /// The URL is malformed or names a transport this build does not have.
    Url(String),
    /// The socket failed.
    Io(std::io::Error),
    /// The server sent bytes that are not valid protocol v1.
    Protocol(DecodeError),
    /// The server refused a request; `code` is one of `wire::error::code`.
    Server { code: u16, message: String },
    /// The connection is closed; the string says why.
    Closed(String),
    /// A bounded wait ran out.
    Timeout,
    /// An argument the protocol cannot carry (checked before anything is sent).
    InvalidArgument(String),
}

impl Error {
    /// The server's numeric error code, if the server refused the request.
    pub fn code(&self) -> Option<u16> {
        match self {
            Error::Server { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Url(m) => write!(f, "bad url: {m}"),
            Error::Io(e) => write!(f, "i/o error: {e}"),
            Error::Protocol(e) => write!(f, "protocol error from server: {e}"),
            Error::Server { code, message } => write!(f, "server error {code}: {message}"),
            Error::Closed(why) => write!(f, "connection closed: {why}"),
            Error::Timeout => write!(f, "timed out"),
            Error::InvalidArgument(m) => write!(f, "invalid argument: {m}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}

impl From<DecodeError> for Error {
    fn from(e: DecodeError) -> Self {
        Error::Protocol(e)
    }
}
