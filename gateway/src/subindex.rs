//! Per-core subscriber index: which sessions take a (channel, symbol).
//!
//! The dispatcher used to offer every record to every session of the core and let each
//! session say no: O(sessions) per record, whatever the subscriptions. With thousands of
//! connections spread over hundreds of symbols that scan is most of the gateway's CPU. The
//! index keeps, per channel, the sessions of each exact symbol and of each prefix pattern
//! (`"*"` is the empty prefix), so a record costs work only for its own subscribers.
//!
//! Lookups return sorted, de-duplicated session ids (a session holding both `AAPL` and
//! `AA*` appears once). The core caches the answer per (channel, symbol) and drops the cache
//! whenever any session's subscriptions change, which happens at request rate, not record
//! rate. Sans-I/O: no sessions here, only ids, so it is tested on its own.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::protocol::{Subscriptions, SymbolEntry};

/// One index key of a session, kept so the session can be removed without a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Key {
    Exact(&'static str, String),
    Prefix(&'static str, String),
}

/// Sessions per (channel, symbol) and per (channel, prefix).
#[derive(Debug, Default)]
pub(crate) struct SubIndex {
    exact: HashMap<&'static str, HashMap<String, BTreeSet<u64>>>,
    prefixes: HashMap<&'static str, BTreeMap<String, BTreeSet<u64>>>,
    of_session: HashMap<u64, Vec<Key>>,
}

impl SubIndex {
    /// Replaces what session `id` is indexed under with its current `subs`.
    pub(crate) fn set(&mut self, id: u64, subs: &Subscriptions) {
        self.remove(id);
        let mut keys = Vec::new();
        for (channel, set) in subs.channels() {
            for entry in set.entries() {
                match entry {
                    SymbolEntry::Exact(s) => {
                        self.exact.entry(channel).or_default().entry(s.to_owned()).or_default().insert(id);
                        keys.push(Key::Exact(channel, s.to_owned()));
                    }
                    SymbolEntry::Prefix(p) => {
                        self.prefixes.entry(channel).or_default().entry(p.to_owned()).or_default().insert(id);
                        keys.push(Key::Prefix(channel, p.to_owned()));
                    }
                }
            }
        }
        if !keys.is_empty() {
            self.of_session.insert(id, keys);
        }
    }

    /// Forgets session `id`.
    pub(crate) fn remove(&mut self, id: u64) {
        let Some(keys) = self.of_session.remove(&id) else { return };
        for k in keys {
            match k {
                Key::Exact(c, s) => {
                    if let Some(m) = self.exact.get_mut(c) {
                        if let Some(ids) = m.get_mut(&s) {
                            ids.remove(&id);
                            if ids.is_empty() {
                                m.remove(&s);
                            }
                        }
                    }
                }
                Key::Prefix(c, p) => {
                    if let Some(m) = self.prefixes.get_mut(c) {
                        if let Some(ids) = m.get_mut(&p) {
                            ids.remove(&id);
                            if ids.is_empty() {
                                m.remove(&p);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Sessions subscribed to `sym` on `channel`, or on any channel when `channel` is None
    /// (a venue gap reaches every subscriber of the symbol). Sorted, no duplicates.
    pub(crate) fn subscribers(&self, channel: Option<&str>, sym: &str) -> Vec<u64> {
        let mut out = Vec::new();
        let mut one = |c: &str| {
            if let Some(ids) = self.exact.get(c).and_then(|m| m.get(sym)) {
                out.extend(ids.iter().copied());
            }
            if let Some(m) = self.prefixes.get(c) {
                for (p, ids) in m {
                    if sym.starts_with(p.as_str()) {
                        out.extend(ids.iter().copied());
                    }
                }
            }
        };
        match channel {
            Some(c) => one(c),
            None => {
                let channels: BTreeSet<&str> = self.exact.keys().chain(self.prefixes.keys()).copied().collect();
                for c in channels {
                    one(c);
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Sessions indexed (for tests and metrics).
    #[cfg(test)]
    pub(crate) fn sessions(&self) -> usize {
        self.of_session.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subs(channels: &[&'static str], symbols: &[&str]) -> Subscriptions {
        let mut s = Subscriptions::default();
        s.add(channels, &symbols.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        s
    }

    #[test]
    fn exact_prefix_and_star_each_match_once() {
        let mut ix = SubIndex::default();
        ix.set(1, &subs(&["trades"], &["AAPL"]));
        ix.set(2, &subs(&["trades", "quotes"], &["AA*", "AAPL"]));
        ix.set(3, &subs(&["quotes"], &["*"]));
        ix.set(4, &subs(&["book"], &["MSFT"]));
        assert_eq!(ix.subscribers(Some("trades"), "AAPL"), vec![1, 2]);
        assert_eq!(ix.subscribers(Some("quotes"), "AAPL"), vec![2, 3]);
        assert_eq!(ix.subscribers(Some("quotes"), "MSFT"), vec![3]);
        assert_eq!(ix.subscribers(Some("trades"), "MSFT"), Vec::<u64>::new());
        assert_eq!(ix.subscribers(Some("book"), "MSFT"), vec![4]);
        assert_eq!(ix.subscribers(None, "AAPL"), vec![1, 2, 3]);
        assert_eq!(ix.subscribers(None, "MSFT"), vec![3, 4]);
    }

    #[test]
    fn set_replaces_and_remove_forgets() {
        let mut ix = SubIndex::default();
        ix.set(1, &subs(&["trades"], &["AAPL", "BTC-*"]));
        ix.set(1, &subs(&["trades"], &["MSFT"]));
        assert!(ix.subscribers(Some("trades"), "AAPL").is_empty());
        assert!(ix.subscribers(Some("trades"), "BTC-USD").is_empty());
        assert_eq!(ix.subscribers(Some("trades"), "MSFT"), vec![1]);
        ix.set(2, &subs(&["trades"], &["MSFT"]));
        ix.remove(1);
        assert_eq!(ix.subscribers(Some("trades"), "MSFT"), vec![2]);
        ix.set(2, &Subscriptions::default());
        assert!(ix.subscribers(None, "MSFT").is_empty());
        assert_eq!(ix.sessions(), 0);
        assert!(ix.exact.values().all(HashMap::is_empty), "empty sets are dropped: {:?}", ix.exact);
    }

    #[test]
    fn index_agrees_with_subscriptions_matches() {
        // Whatever the subscriptions, the index returns exactly the sessions whose
        // Subscriptions::matches says yes (the rule the dispatcher used to apply to all).
        let patterns = ["AAPL", "AA*", "*", "BTC-USD", "BTC-*", "B*", "MSFT", "ETH-USD"];
        let channels: [&'static str; 4] = ["trades", "quotes", "book", "status"];
        let mut ix = SubIndex::default();
        let mut all: Vec<(u64, Subscriptions)> = Vec::new();
        for id in 0..64u64 {
            let mut s = Subscriptions::default();
            for (i, p) in patterns.iter().enumerate() {
                for (j, c) in channels.iter().enumerate() {
                    if (id.wrapping_mul(2654435761) >> (i * 4 + j)) & 1 == 1
                        && (id + i as u64 + j as u64).is_multiple_of(3)
                    {
                        s.add(&[c], &[p.to_string()]);
                    }
                }
            }
            ix.set(id, &s);
            all.push((id, s));
        }
        for sym in ["AAPL", "AAL", "BTC-USD", "BTC-EUR", "BNB", "MSFT", "ETH-USD", "X"] {
            for c in channels {
                let want: Vec<u64> = all.iter().filter(|(_, s)| s.matches(c, sym)).map(|(id, _)| *id).collect();
                assert_eq!(ix.subscribers(Some(c), sym), want, "{c} {sym}");
            }
            let want: Vec<u64> = all.iter().filter(|(_, s)| s.matches_any(sym)).map(|(id, _)| *id).collect();
            assert_eq!(ix.subscribers(None, sym), want, "any {sym}");
        }
    }
}
