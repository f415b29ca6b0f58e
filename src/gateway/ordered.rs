//! A gateway session's requests to destination owners, and the packets that must wait for them.
//!
//! STOMP receipts and MQTT acknowledgements must keep the order of the client's frames: a
//! RECEIPT or PUBACK is written only once every request issued before its frame has been
//! answered (owners on different shards answer in any order). So each request gets a number,
//! and each waiting packet the number of the last request issued before it.

use std::collections::{BTreeMap, VecDeque};

pub struct Requests<P> {
    next: u64,
    /// Unanswered requests by number, with what to do on the answer.
    pending: BTreeMap<u64, P>,
    /// Packets waiting for every request up to and including their number.
    waiting: VecDeque<(u64, Vec<u8>)>,
}

impl<P> Default for Requests<P> {
    fn default() -> Self {
        Requests { next: 1, pending: BTreeMap::new(), waiting: VecDeque::new() }
    }
}

impl<P> Requests<P> {
    /// Numbers a new request and remembers what to do with its answer.
    pub fn issue(&mut self, then: P) -> u64 {
        let id = self.next;
        self.next += 1;
        self.pending.insert(id, then);
        id
    }

    /// The answer to request `id` arrived: what was to be done, if it was pending.
    pub fn answer(&mut self, id: u64) -> Option<P> {
        self.pending.remove(&id)
    }

    /// Keeps request `id` pending for a further step (packets behind it keep waiting).
    pub fn reissue(&mut self, id: u64, then: P) {
        self.pending.insert(id, then);
    }

    /// Unanswered requests.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Queues `packet` behind every request issued so far.
    pub fn after_pending(&mut self, packet: Vec<u8>) {
        self.waiting.push_back((self.next - 1, packet));
    }

    /// Moves the packets whose requests are all answered into `out`; returns whether any still
    /// wait.
    pub fn flush(&mut self, out: &mut Vec<u8>) -> bool {
        let first_pending = self.pending.keys().next().copied().unwrap_or(u64::MAX);
        while self.waiting.front().is_some_and(|(after, _)| *after < first_pending) {
            let (_, p) = self.waiting.pop_front().expect("checked");
            out.extend_from_slice(&p);
        }
        !self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_wait_for_every_earlier_request() {
        let mut r: Requests<()> = Requests::default();
        let a = r.issue(());
        r.after_pending(b"1".to_vec());
        let b = r.issue(());
        r.after_pending(b"2".to_vec());
        let mut out = Vec::new();
        r.answer(b);
        assert!(r.flush(&mut out), "1 still waits for a");
        assert!(out.is_empty(), "2 must not overtake 1");
        r.reissue(a, ());
        r.answer(a);
        assert!(!r.flush(&mut out));
        assert_eq!(out, b"12");
        r.after_pending(b"3".to_vec());
        assert!(!r.flush(&mut out), "nothing pending: at once");
        assert_eq!(out, b"123");
    }
}
