//! The topic subscription table. Every shard holds a full replica (subscriptions are broadcast),
//! so a publish is matched on the shard that received it and never waits for another core.

use rustc_hash::FxHashMap;

use super::pattern;
use super::SubKey;

#[derive(Default)]
pub struct SubscriptionTable {
    /// Exact-name subscriptions, found by one hash lookup.
    exact: FxHashMap<String, Vec<SubKey>>,
    /// Wildcard subscriptions, matched one by one.
    wildcard: Vec<(String, SubKey)>,
}

impl SubscriptionTable {
    /// `pattern` must be valid (see [`pattern::validate_pattern`]).
    pub fn add(&mut self, pattern: &str, key: SubKey) {
        if pattern::is_wildcard(pattern) {
            self.wildcard.push((pattern.to_string(), key));
        } else {
            self.exact.entry(pattern.to_string()).or_default().push(key);
        }
    }

    pub fn remove(&mut self, key: SubKey) {
        self.wildcard.retain(|(_, k)| *k != key);
        self.exact.retain(|_, keys| {
            keys.retain(|k| *k != key);
            !keys.is_empty()
        });
    }

    /// Removes every subscription of one connection.
    pub fn remove_connection(&mut self, shard: u16, slot: u32, generation: u32) {
        let gone = |k: &SubKey| k.shard == shard && k.slot == slot && k.generation == generation;
        self.wildcard.retain(|(_, k)| !gone(k));
        self.exact.retain(|_, keys| {
            keys.retain(|k| !gone(k));
            !keys.is_empty()
        });
    }

    /// Calls `f` once per subscription matching `topic`. A connection subscribed twice with
    /// overlapping patterns gets the message once per subscription, as its ids differ.
    pub fn for_each_match(&self, topic: &str, mut f: impl FnMut(SubKey)) {
        if let Some(keys) = self.exact.get(topic) {
            keys.iter().copied().for_each(&mut f);
        }
        for (p, k) in &self.wildcard {
            if pattern::matches(p, topic) {
                f(*k);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.exact.values().map(Vec::len).sum::<usize>() + self.wildcard.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(slot: u32, id: u32) -> SubKey {
        SubKey { shard: 0, slot, generation: 0, id }
    }

    #[test]
    fn exact_and_wildcards() {
        let mut t = SubscriptionTable::default();
        t.add("a.b", k(1, 1));
        t.add("a.*", k(2, 1));
        t.add("#", k(3, 1));
        t.add("x.#", k(4, 1));
        let mut got = Vec::new();
        t.for_each_match("a.b", |s| got.push(s.slot));
        got.sort();
        assert_eq!(got, vec![1, 2, 3]);
        t.remove_connection(0, 3, 0);
        t.remove(k(1, 1));
        let mut got = Vec::new();
        t.for_each_match("a.b", |s| got.push(s.slot));
        assert_eq!(got, vec![2]);
        assert_eq!(t.len(), 2);
    }
}
