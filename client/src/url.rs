//! Endpoint URLs: `tcp://host:port`, `rdma://host:port`, `shm:///path`.

use crate::Error;

/// The native protocol's default TCP port.
pub const DEFAULT_PORT: u16 = 7420;
/// The RDMA transport's default rdma_cm port (the server's `rdma_listen` default).
pub const DEFAULT_RDMA_PORT: u16 = 7421;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `host:port`, resolved at connect time.
    Tcp(String),
    Rdma(String),
    Shm(String),
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Endpoint, Error> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| Error::Url(format!("{url:?}: missing scheme://")))?;
        if rest.is_empty() {
            return Err(Error::Url(format!("{url:?}: missing address")));
        }
        let with_port = |r: &str, port: u16| {
            let r = r.trim_end_matches('/');
            if r.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
                r.to_string()
            } else {
                format!("{r}:{port}")
            }
        };
        match scheme {
            "tcp" => Ok(Endpoint::Tcp(with_port(rest, DEFAULT_PORT))),
            "rdma" => Ok(Endpoint::Rdma(with_port(rest, DEFAULT_RDMA_PORT))),
            "shm" => Ok(Endpoint::Shm(rest.to_string())),
            other => Err(Error::Url(format!("{url:?}: unknown scheme {other:?} (tcp, rdma, shm)"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        assert_eq!(Endpoint::parse("tcp://h:1").unwrap(), Endpoint::Tcp("h:1".into()));
        assert_eq!(Endpoint::parse("tcp://h").unwrap(), Endpoint::Tcp("h:7420".into()));
        assert_eq!(Endpoint::parse("tcp://[::1]:9").unwrap(), Endpoint::Tcp("[::1]:9".into()));
        assert_eq!(Endpoint::parse("rdma://h").unwrap(), Endpoint::Rdma("h:7421".into()));
        assert_eq!(Endpoint::parse("shm:///tmp/x").unwrap(), Endpoint::Shm("/tmp/x".into()));
        assert!(Endpoint::parse("h:1").is_err());
        assert!(Endpoint::parse("udp://h:1").is_err());
        assert!(Endpoint::parse("tcp://").is_err());
    }
}
