//! The shard's side of durable queues: creating them with a journal, recovering them at start,
//! driving their journals' I/O each pass, and holding publish confirms until the journal's
//! durable position covers them.
//!
//! Runs on the shard that owns the queue. See `journal/` for the journal itself.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use rdmq_client::error_code as code;
use rdmq_client::Durability;

use crate::broker::owner_shard;
use crate::broker::queue::{Queue, QueueOptions};
use crate::broker::store::{MemoryStore, Store};
use crate::event::{ReplyKind, ReplyTo};
use crate::journal::format::{queue_dir_name, queue_name_from_dir, QueueMeta};
use crate::journal::{self, Journal, JournalStore};
use crate::metrics;
use crate::shard::Shard;

/// A confirm waiting for its messages to become durable.
pub struct Held {
    pub end_seq: u64,
    pub reply: ReplyTo,
    pub position: u64,
    pub count: u32,
}

/// A journal registered with its shard: the queue it belongs to, and whether the queue was
/// deleted (its directory goes once its last I/O completes).
pub struct JournalEntry {
    pub queue: Arc<str>,
    pub journal: Rc<RefCell<Journal>>,
    pub deleted: bool,
    /// Where a deleted queue's directory was moved, to remove once its I/O is done.
    pub moved_to: Option<PathBuf>,
}

impl Shard {
    fn queues_root(&self) -> PathBuf {
        self.cfg.data_dir.join("queues")
    }

    /// Creates queue `name`: in memory, or with a directory, metadata and a journal.
    pub fn create_queue(&mut self, name: &Arc<str>, opts: QueueOptions) -> Result<(), String> {
        let store: Box<dyn Store> = match opts.durability {
            Durability::Memory => Box::new(MemoryStore::default()),
            durability => {
                let root = self.queues_root();
                if !root.exists() {
                    std::fs::create_dir_all(&root)
                        .map_err(|e| format!("{}: {e}", root.display()))?;
                    journal::sync_dir(&self.cfg.data_dir).map_err(|e| e.to_string())?;
                }
                let dir = root.join(queue_dir_name(name));
                if dir.exists() {
                    // Never overwrite what is there: a queue that failed to load at start.
                    return Err(format!(
                        "{} exists but was not loaded at start (see the log); move it away to \
                         reuse the name",
                        dir.display()
                    ));
                }
                std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                write_meta(&dir, &meta_of(name, &opts, &[]))?;
                journal::sync_dir(&self.queues_root()).map_err(|e| e.to_string())?;
                let backlog = self.journal_backlog.clone();
                let seg = self.cfg.segment_bytes;
                let mut j = Journal::open(&dir, durability, seg, backlog, Vec::new(), 0)
                    .map_err(|e| e.0)?;
                j.set_group_commit(self.group_commit());
                Box::new(JournalStore(self.register_journal(name, j)))
            }
        };
        self.queues.insert(name.clone(), Queue::new(name.clone(), opts, store));
        Ok(())
    }

    fn group_commit(&self) -> journal::GroupCommit {
        journal::GroupCommit {
            max_delay_us: self.cfg.group_commit_max_delay_us,
            max_bytes: self.cfg.group_commit_max_bytes,
        }
    }

    fn register_journal(&mut self, name: &Arc<str>, j: Journal) -> Rc<RefCell<Journal>> {
        let rc = Rc::new(RefCell::new(j));
        let entry = JournalEntry {
            queue: name.clone(),
            journal: rc.clone(),
            deleted: false,
            moved_to: None,
        };
        match self.journals.iter().position(Option::is_none) {
            Some(i) => self.journals[i] = Some(entry),
            None => self.journals.push(Some(entry)),
        }
        rc
    }

    /// Loads every durable queue this shard owns from the data directory.
    pub fn recover_queues(&mut self) {
        let root = self.queues_root();
        let Ok(entries) = std::fs::read_dir(&root) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            let file_name = entry.file_name().to_string_lossy().into_owned();
            if file_name.ends_with(DELETED_SUFFIX) {
                // A deleted queue whose removal a crash interrupted: finish it (shard 0 only).
                if self.id == 0 {
                    let _ = std::fs::remove_dir_all(&path);
                }
                continue;
            }
            // The queue's name is in its metadata; the directory name may be a hash.
            let name = match std::fs::read(path.join("meta.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<QueueMeta>(&b).ok())
            {
                Some(meta) => meta.name,
                None => match queue_name_from_dir(&file_name) {
                    Some(n) => n,
                    None => continue,
                },
            };
            if owner_shard(&name, self.shards) != self.id as usize {
                continue;
            }
            if let Err(e) = self.recover_queue(&name, path) {
                eprintln!("rdmq: recovery: queue {name:?} not loaded: {e}");
            }
        }
    }

    fn recover_queue(&mut self, name: &str, dir: PathBuf) -> Result<(), String> {
        let r = journal::recover(&dir)?;
        let opts = options_of(&r.meta)?;
        let durability = opts.durability;
        let backlog = self.journal_backlog.clone();
        let seg = self.cfg.segment_bytes;
        let mut j = Journal::open(&dir, durability, seg, backlog, r.segments, r.next_seq)
            .map_err(|e| e.0)?;
        if let Some(why) = r.corrupt {
            j.refuse(why);
        }
        j.set_group_commit(self.group_commit());
        let name: Arc<str> = name.into();
        let rc = self.register_journal(&name, j);
        let mut q = Queue::new(name.clone(), opts, Box::new(JournalStore(rc)));
        q.bindings = r.meta.bindings.clone();
        for pattern in &r.meta.bindings {
            let (pattern, queue): (Arc<str>, Arc<str>) = (pattern.as_str().into(), name.clone());
            self.broadcast(|| crate::event::Event::BindAdd {
                pattern: pattern.clone(),
                queue: queue.clone(),
            });
        }
        let wall_ms = crate::broker::wall_clock_ms();
        let now = self.now_ms;
        let count = r.messages.iter().filter(|m| !m.settled).count();
        q.restore(
            r.messages.into_iter().map(|m| {
                // The earlier of the message's TTL and the queue's max age, from its timestamp.
                // No producer timestamp: count from now rather than expire at once.
                let published_ms =
                    if m.timestamp_us == 0 { wall_ms } else { m.timestamp_us / 1000 };
                let ttl = (m.ttl_ms > 0).then(|| published_ms + m.ttl_ms as u64);
                let age = (r.meta.max_age_ms > 0).then(|| published_ms + r.meta.max_age_ms);
                let expires = match ttl.into_iter().chain(age).min() {
                    None => 0,
                    Some(deadline) => now + deadline.saturating_sub(wall_ms).max(1),
                };
                (m.seq, m.rec, expires, m.settled)
            }),
            r.next_seq,
        );
        eprintln!(
            "rdmq: recovered queue {name:?} ({}): {count} messages, {} settled skipped",
            durability.as_str(),
            r.settled
        );
        self.queues.insert(name, q);
        Ok(())
    }

    /// Drives every journal: acknowledgements to disk, queued writes and group syncs into the
    /// ring, held confirms out once durable (or failed).
    pub fn drive_journals(&mut self) -> usize {
        let now_us = self.now_us();
        let mut waiting = 0;
        for id in 0..self.journals.len() {
            let Some(entry) = &self.journals[id] else { continue };
            let j = entry.journal.clone();
            {
                let mut jb = j.borrow_mut();
                jb.flush_acks();
                metrics::add(&self.metrics.copy_journal_bytes, std::mem::take(&mut jb.copied));
                while let Some(w) = jb.next_write() {
                    self.submit_journal_write(w, id as u32);
                }
                for fd in jb.next_syncs(now_us) {
                    self.submit_journal_sync(fd, id as u32);
                }
                waiting += jb.sync_waiting() as usize;
            }
            let entry = self.journals[id].as_ref().expect("still registered");
            if entry.deleted {
                // The name may already belong to a new queue: hold nothing for the old one.
                if !j.borrow().has_io() {
                    let dir =
                        entry.moved_to.clone().unwrap_or_else(|| j.borrow().dir().to_path_buf());
                    self.journals[id] = None;
                    if let Err(e) = std::fs::remove_dir_all(&dir) {
                        eprintln!("rdmq: cannot remove deleted queue {}: {e}", dir.display());
                    }
                }
                continue;
            }
            if self.held.contains_key(&entry.queue) {
                let queue = entry.queue.clone();
                self.release_held(&queue, &j.borrow());
            }
        }
        // A group waiting out its delay is work: keep the loop turning until it closes.
        waiting
    }

    pub fn on_journal_completion(&mut self, write: Option<u32>, id: u32, result: i32) {
        let Some(entry) = self.journals.get(id as usize).and_then(Option::as_ref) else {
            panic!("completion for unknown journal {id}");
        };
        let mut j = entry.journal.borrow_mut();
        if let Some(tag) = write {
            j.write_done(tag, result);
        } else {
            j.sync_done(result);
        }
    }

    /// Holds a confirm until sequence `end_seq` is durable.
    pub fn hold_confirm(&mut self, queue: &Arc<str>, held: Held) {
        self.held.entry(queue.clone()).or_default().push_back(held);
    }

    fn release_held(&mut self, queue: &Arc<str>, journal: &Journal) {
        let (durable, failed) = (journal.durable_position(), journal.failure());
        let Some(list) = self.held.get_mut(queue) else { return };
        let mut ready: VecDeque<Held> = VecDeque::new();
        while list.front().is_some_and(|h| h.end_seq <= durable || failed.is_some()) {
            ready.push_back(list.pop_front().expect("checked"));
        }
        if list.is_empty() {
            self.held.remove(queue);
        }
        for h in ready {
            let kind = match (failed, h.end_seq <= durable) {
                (_, true) => ReplyKind::Confirm { position: h.position, count: h.count },
                (Some(why), false) => ReplyKind::Error {
                    code: code::STORAGE_FAILED,
                    message: format!("{queue}: not stored: {why}"),
                },
                (None, false) => unreachable!("only durable or failed holds are released"),
            };
            self.reply(h.reply, kind);
        }
    }

    /// Deletes settled segments of every durable queue (housekeeping).
    pub fn retire_segments(&mut self) {
        for entry in self.journals.iter().flatten().filter(|e| !e.deleted) {
            if let Some(q) = self.queues.get(&entry.queue) {
                let floor = q.floor();
                entry.journal.borrow_mut().retire_below(floor);
            }
        }
    }

    /// Rewrites a durable queue's metadata with its current bindings (memory queues keep theirs
    /// in memory only).
    pub fn persist_bindings(&mut self, name: &Arc<str>) -> Result<(), String> {
        let Some(q) = self.queues.get(name) else { return Ok(()) };
        if q.opts.durability == Durability::Memory {
            return Ok(());
        }
        let dir = self.queues_root().join(queue_dir_name(name));
        write_meta(&dir, &meta_of(name, &q.opts, &q.bindings))
    }

    /// A durable queue was deleted: its directory is renamed out of the way at once (so the
    /// name can be declared again), its journal finishes its I/O, then the directory goes.
    /// Confirms still held for it are answered: the queue is gone.
    pub fn drop_queue_storage(&mut self, name: &Arc<str>) {
        for entry in self.journals.iter_mut().flatten() {
            if &entry.queue == name && !entry.deleted {
                entry.deleted = true;
                let dir = entry.journal.borrow().dir().to_path_buf();
                let to = deleted_dir(&dir);
                match std::fs::rename(&dir, &to) {
                    Ok(()) => entry.moved_to = Some(to),
                    Err(e) => eprintln!("rdmq: cannot move deleted queue {}: {e}", dir.display()),
                }
                let _ = journal::sync_dir(&self.cfg.data_dir.join("queues"));
            }
        }
        for h in self.held.remove(name).unwrap_or_default() {
            let message = format!("{name}: queue deleted before the publish was stored");
            self.reply(h.reply, ReplyKind::Error { code: code::NOT_FOUND, message });
        }
    }
}

/// Suffix of a deleted queue's directory until its removal.
const DELETED_SUFFIX: &str = ".deleted";

/// A name for a deleted queue's directory, unique so the same name can be deleted again
/// while an earlier deletion is still finishing.
fn deleted_dir(dir: &std::path::Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = dir.file_name().expect("queue dir has a name").to_os_string();
    name.push(format!(".{}.{n}{DELETED_SUFFIX}", std::process::id()));
    dir.with_file_name(name)
}

/// What `meta.json` records of a queue; [`options_of`] reads it back.
fn meta_of(name: &str, opts: &QueueOptions, bindings: &[String]) -> QueueMeta {
    QueueMeta {
        name: name.to_string(),
        durability: opts.durability.as_str().to_string(),
        max_deliveries: opts.max_deliveries,
        max_length: opts.max_length,
        dead_letter: opts.dead_letter.clone(),
        max_bytes: opts.max_bytes,
        max_age_ms: opts.max_age_ms,
        bindings: bindings.to_vec(),
    }
}

fn options_of(meta: &QueueMeta) -> Result<QueueOptions, String> {
    Ok(QueueOptions {
        durability: meta.durability.parse()?,
        max_deliveries: meta.max_deliveries,
        max_length: meta.max_length,
        dead_letter: meta.dead_letter.clone(),
        max_bytes: meta.max_bytes,
        max_age_ms: meta.max_age_ms,
    })
}

/// Replaces `meta.json` atomically: temp file, sync, rename, directory sync.
fn write_meta(dir: &std::path::Path, meta: &QueueMeta) -> Result<(), String> {
    let text = serde_json::to_vec_pretty(meta).expect("serialisable");
    journal::replace_file(dir, "meta.json", &text)
        .map_err(|e| format!("{}: meta.json: {e}", dir.display()))
}
