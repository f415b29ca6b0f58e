//! CONNECT / STOMP (client) and CONNECTED (server): version negotiation and heart-beats.
//!
//! ```text
//! CONNECT                          CONNECTED
//! accept-version:1.0,1.1,1.2       version:1.2
//! host:<virtual host>              heart-beat:<sx>,<sy>
//! login:<user>   passcode:<pw>     server:rdmq/<version>
//! heart-beat:<cx>,<cy>             session:<id>
//! ```
//! No `accept-version` means STOMP 1.0. The server picks the highest version both speak.
//! Heart-beats (ms): the client sends every `cx` and wants one every `cy`; the server, able to
//! send every `sx` and wanting one every `sy`, settles on max(cx, sy) client→server and
//! max(cy, sx) server→client, 0 meaning none (STOMP 1.2, "Heart-beating").

use super::{Command, Frame, StompError};

/// Versions this server speaks, lowest first.
pub const VERSIONS: [&str; 3] = ["1.0", "1.1", "1.2"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub version: &'static str,
    pub host: Option<String>,
    pub login: Option<String>,
    pub passcode: Option<String>,
    /// (client sends every, client wants every), in ms.
    pub heart_beat: (u64, u64),
}

impl Connect {
    pub fn from_frame(f: &Frame) -> Result<Connect, StompError> {
        if !matches!(f.command, Command::Connect | Command::Stomp) {
            return Err(StompError::Invalid("expected CONNECT or STOMP".into()));
        }
        let offered: Vec<&str> = f.get("accept-version").unwrap_or("1.0").split(',').collect();
        let version =
            VERSIONS.iter().rev().find(|v| offered.iter().any(|o| o.trim() == **v)).ok_or_else(
                || {
                    StompError::Invalid(format!(
                        "no common version: client accepts {}, server speaks {}",
                        offered.join(","),
                        VERSIONS.join(",")
                    ))
                },
            )?;
        // The spec requires `host` from 1.1 on, but stomp.py's default connection omits it and
        // RabbitMQ and ActiveMQ accept that; rdmq has no virtual hosts, so it accepts it too.
        Ok(Connect {
            version,
            host: f.get("host").map(str::to_string),
            login: f.get("login").map(str::to_string),
            passcode: f.get("passcode").map(str::to_string),
            heart_beat: parse_heart_beat(f.get("heart-beat").unwrap_or("0,0"))?,
        })
    }
}

pub fn parse_heart_beat(v: &str) -> Result<(u64, u64), StompError> {
    let bad = || StompError::Invalid(format!("bad heart-beat header {v:?}"));
    let (a, b) = v.split_once(',').ok_or_else(bad)?;
    Ok((a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?))
}

/// The agreed intervals in ms: (client→server, server→client); 0 = none.
pub fn negotiate_heart_beat(client: (u64, u64), server: (u64, u64)) -> (u64, u64) {
    let one = |sender: u64, receiver: u64| {
        if sender == 0 || receiver == 0 {
            0
        } else {
            sender.max(receiver)
        }
    };
    (one(client.0, server.1), one(server.0, client.1))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connected {
    pub version: &'static str,
    pub heart_beat: (u64, u64),
    pub session: String,
}

impl Connected {
    pub fn to_frame(&self) -> Frame {
        Frame::new(Command::Connected)
            .header("version", self.version)
            .header("heart-beat", format!("{},{}", self.heart_beat.0, self.heart_beat.1))
            .header("server", concat!("rdmq/", env!("CARGO_PKG_VERSION")))
            .header("session", self.session.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::super::round_trip;
    use super::*;

    #[test]
    fn negotiates_the_highest_common_version() {
        let f =
            Frame::new(Command::Connect).header("accept-version", "1.0,1.1").header("host", "h");
        assert_eq!(Connect::from_frame(&round_trip(&f)).unwrap().version, "1.1");
        let f = Frame::new(Command::Connect);
        assert_eq!(Connect::from_frame(&f).unwrap().version, "1.0", "no header: 1.0");
        let f = Frame::new(Command::Connect).header("accept-version", "2.0");
        assert!(Connect::from_frame(&f).is_err());
        let f = Frame::new(Command::Stomp).header("accept-version", "1.2");
        assert_eq!(Connect::from_frame(&f).unwrap().version, "1.2", "no host: accepted");
    }

    #[test]
    fn heart_beats() {
        assert_eq!(parse_heart_beat("100, 200").unwrap(), (100, 200));
        assert!(parse_heart_beat("x,1").is_err() && parse_heart_beat("1").is_err());
        assert_eq!(negotiate_heart_beat((100, 200), (500, 50)), (100, 500));
        assert_eq!(negotiate_heart_beat((0, 200), (500, 50)), (0, 500));
        assert_eq!(negotiate_heart_beat((100, 0), (0, 50)), (100, 0));
        let c = Connected { version: "1.2", heart_beat: (0, 1000), session: "s1".into() };
        let f = round_trip(&c.to_frame());
        assert_eq!(f.get("heart-beat"), Some("0,1000"));
        assert_eq!(f.get("version"), Some("1.2"));
    }
}
