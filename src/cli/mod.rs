//! Command-line tools built on the client crate.

pub mod bench;
pub mod peer;
pub mod tools;
