//! What the MQTT gateway keeps for all connections, on one shard (the "home" shard, the owner
//! of the name `$mqtt`): which connection holds each client id, persistent sessions (their
//! subscriptions and expiry), retained messages, and wills waiting for their delay.
//!
//! All of it is control-plane state, touched on CONNECT, SUBSCRIBE, disconnect and retained
//! publishes, so one shard owning it costs a mailbox hop on those only. Persistent sessions
//! and retained messages are written to `<data_dir>/mqtt/` (written whole to a temporary file,
//! synced, renamed) on every change, and loaded when the home shard starts. A session's queued
//! messages live in its durable queue, not here.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use super::session::WillMsg;
use crate::event::ReplyTo;

/// A subscription of a persistent session, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSub {
    pub filter: String,
    pub qos: u8,
    #[serde(default)]
    pub no_local: bool,
    #[serde(default)]
    pub retain_as_published: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredSession {
    pub client_id: String,
    /// Seconds the session outlives its connection; `u32::MAX` = forever.
    pub expiry_s: u32,
    pub subs: Vec<StoredSub>,
    /// QoS 2 messages released (PUBREL sent) but not completed when the connection closed:
    /// PUBREL is sent again on the next connection (MQTT-4.4.0-1).
    #[serde(default)]
    pub pubrel: Vec<u16>,
    /// The durable queue holding its messages (a new name for every new session, so a
    /// discarded session's queue can be deleted while its successor's is being created).
    #[serde(default)]
    pub queue: Option<String>,
}

#[derive(Default)]
pub struct Client {
    /// The connection that holds the client id now.
    pub holder: Option<ReplyTo>,
    pub session: Option<StoredSession>,
    /// Shard clock at which the stored session ends, while nobody holds it.
    pub expires_at_ms: Option<u64>,
}

#[derive(Default)]
pub struct Registry {
    pub loaded: bool,
    pub dir: PathBuf,
    pub clients: FxHashMap<Arc<str>, Client>,
    /// Native topic → one record batch.
    pub retained: BTreeMap<String, Arc<[u8]>>,
    /// (due at, client id, will).
    pub wills: Vec<(u64, Arc<str>, WillMsg)>,
}

const SESSIONS_FILE: &str = "sessions.json";
const RETAINED_FILE: &str = "retained.bin";

impl Registry {
    /// Loads persistent sessions and retained messages from `dir` (created if missing).
    pub fn load(dir: &Path) -> Result<Registry, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut r = Registry { loaded: true, dir: dir.to_path_buf(), ..Registry::default() };
        match std::fs::read(dir.join(SESSIONS_FILE)) {
            Ok(bytes) => {
                let sessions: Vec<StoredSession> = serde_json::from_slice(&bytes)
                    .map_err(|e| format!("{}: {e}", dir.join(SESSIONS_FILE).display()))?;
                for s in sessions {
                    let id: Arc<str> = s.client_id.as_str().into();
                    // Restarted: nobody holds it; a finite expiry starts counting again.
                    r.clients.insert(id, Client { session: Some(s), ..Client::default() });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", dir.join(SESSIONS_FILE).display())),
        }
        match std::fs::read(dir.join(RETAINED_FILE)) {
            Ok(bytes) => r.retained = decode_retained(&bytes)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", dir.join(RETAINED_FILE).display())),
        }
        Ok(r)
    }

    pub fn save_sessions(&self) -> Result<(), String> {
        let sessions: Vec<&StoredSession> =
            self.clients.values().filter_map(|c| c.session.as_ref()).collect();
        let bytes = serde_json::to_vec(&sessions).map_err(|e| e.to_string())?;
        write_atomically(&self.dir.join(SESSIONS_FILE), &bytes)
    }

    pub fn save_retained(&self) -> Result<(), String> {
        write_atomically(&self.dir.join(RETAINED_FILE), &encode_retained(&self.retained))
    }
}

/// `[u16 topic length][topic][u32 batch length][batch]...`; each batch is checked again on load.
fn encode_retained(m: &BTreeMap<String, Arc<[u8]>>) -> Vec<u8> {
    let mut out = Vec::new();
    for (topic, batch) in m {
        out.extend_from_slice(&(topic.len() as u16).to_le_bytes());
        out.extend_from_slice(topic.as_bytes());
        out.extend_from_slice(&(batch.len() as u32).to_le_bytes());
        out.extend_from_slice(batch);
    }
    out
}

fn decode_retained(mut b: &[u8]) -> Result<BTreeMap<String, Arc<[u8]>>, String> {
    let bad = || format!("{RETAINED_FILE} is corrupt");
    let mut m = BTreeMap::new();
    while !b.is_empty() {
        let tl = u16::from_le_bytes(b.get(..2).ok_or_else(bad)?.try_into().expect("2")) as usize;
        let topic = std::str::from_utf8(b.get(2..2 + tl).ok_or_else(bad)?).map_err(|_| bad())?;
        b = &b[2 + tl..];
        let bl = u32::from_le_bytes(b.get(..4).ok_or_else(bad)?.try_into().expect("4")) as usize;
        let batch = b.get(4..4 + bl).ok_or_else(bad)?;
        rdmq_client::wire::record::BatchView::decode(batch)
            .map_err(|e| format!("{}: {e}", bad()))?;
        m.insert(topic.to_string(), Arc::from(batch));
        b = &b[4 + bl..];
    }
    Ok(m)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_data())
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))?;
    if let Some(dir) = path.parent() {
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdmq_client::wire::record::{BatchBuilder, RecordMeta};

    #[test]
    fn sessions_and_retained_survive_a_reload() {
        let dir = std::env::temp_dir().join(format!("rdmq-mqtt-reg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut r = Registry::load(&dir).unwrap();
        let s = StoredSession {
            client_id: "c1".into(),
            expiry_s: 60,
            subs: vec![StoredSub {
                filter: "a/+".into(),
                qos: 1,
                no_local: false,
                retain_as_published: false,
            }],
            pubrel: vec![],
            queue: Some("mqtt.session.c1.1".into()),
        };
        r.clients.insert("c1".into(), Client { session: Some(s), ..Client::default() });
        let mut batch = Vec::new();
        let mut b = BatchBuilder::begin(&mut batch);
        b.push(&mut batch, &RecordMeta::default(), b"on");
        b.finish(&mut batch);
        r.retained.insert("lights.hall".into(), batch.clone().into());
        r.save_sessions().unwrap();
        r.save_retained().unwrap();
        let again = Registry::load(&dir).unwrap();
        let c = again.clients.get("c1").unwrap().session.as_ref().unwrap();
        assert_eq!((c.expiry_s, c.subs[0].filter.as_str()), (60, "a/+"));
        assert_eq!(&*again.retained["lights.hall"], batch.as_slice());
        // A flipped byte in the retained file is reported, not loaded.
        let path = dir.join(RETAINED_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        assert!(Registry::load(&dir).err().unwrap().contains("corrupt"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
