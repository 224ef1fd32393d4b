//! [`MemoryStore`]: the in-memory [`StateStore`], for tests, examples and `mxpolicy replay`.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Mutex, MutexGuard},
};

use super::{Conflict, Entry, Quota, ScheduledTimer, StateStore, Timer, Transaction, entry_bytes};
use crate::error::{QuotaExceeded, StoreError};

/// Per-plugin usage, kept up to date by every commit.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    keys: u64,
    bytes: u64,
    timers: u64,
}

impl Usage {
    fn check(&self, before: &Usage, quota: &Quota) -> Result<(), QuotaExceeded> {
        for (what, used, was, limit) in [
            ("keys", self.keys, before.keys, quota.max_keys),
            ("bytes", self.bytes, before.bytes, quota.max_bytes),
            ("timers", self.timers, before.timers, quota.max_timers),
        ] {
            if used > limit && used > was {
                return Err(QuotaExceeded { what, used, limit });
            }
        }
        Ok(())
    }
}

#[derive(Default)]
struct Inner {
    kv: BTreeMap<(String, String), Entry>,
    /// The last version handed out; every write takes the next.
    version: u64,
    timers: BTreeMap<(String, String), ScheduledTimer>,
    /// Per plugin: `(due, id)` of each timer, to page through due timers by plugin.
    by_due: BTreeMap<String, BTreeSet<(u64, String)>>,
    usage: BTreeMap<String, Usage>,
}

/// An in-memory [`StateStore`]: for tests, examples and `mxpolicy replay`. Everything is lost
/// when it is dropped.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock only means another thread panicked mid-way; the maps themselves are
        // always consistent because every mutation happens in `commit` without panicking.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl StateStore for MemoryStore {
    fn get(&self, plugin: &str, key: &str) -> Result<Option<Entry>, StoreError> {
        Ok(self
            .lock()
            .kv
            .get(&(plugin.to_owned(), key.to_owned()))
            .cloned())
    }

    fn list(&self, plugin: &str, prefix: &str, limit: usize) -> Result<Vec<String>, StoreError> {
        Ok(self.lock().list(plugin, prefix, limit))
    }

    fn timer(&self, plugin: &str, id: &str) -> Result<Option<Timer>, StoreError> {
        Ok(self
            .lock()
            .timers
            .get(&(plugin.to_owned(), id.to_owned()))
            .map(|t| t.stored(plugin, id)))
    }

    fn due_timers(
        &self,
        now_ms: u64,
        plugins: &[&str],
        limit: usize,
    ) -> Result<Vec<Timer>, StoreError> {
        let inner = self.lock();
        // The first `limit` due timers of each plugin, merged: at most plugins x limit entries
        // are looked at, however many timers are due.
        let mut due: Vec<(u64, &str, &str)> = Vec::new();
        for plugin in plugins {
            if let Some(index) = inner.by_due.get(*plugin) {
                due.extend(
                    index
                        .iter()
                        .take_while(|(d, _)| *d <= now_ms)
                        .take(limit)
                        .map(|(d, id)| (*d, *plugin, id.as_str())),
                );
            }
        }
        due.sort_unstable();
        due.truncate(limit);
        Ok(due
            .into_iter()
            .filter_map(|(_, plugin, id)| {
                inner
                    .timers
                    .get(&(plugin.to_owned(), id.to_owned()))
                    .map(|t| t.stored(plugin, id))
            })
            .collect())
    }

    fn commit(&self, plugin: &str, txn: &Transaction, quota: &Quota) -> Result<(), StoreError> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        // Validate: every key read still has the version the call saw, every listing answers
        // the same keys.
        for (key, seen) in &txn.reads {
            let now = inner
                .kv
                .get(&(plugin.to_owned(), key.clone()))
                .map_or(0, |e| e.version);
            if now != *seen {
                return Err(StoreError::new(Conflict { key: key.clone() }));
            }
        }
        for list in &txn.lists {
            if inner.list(plugin, &list.prefix, list.limit) != list.keys {
                return Err(StoreError::new(Conflict {
                    key: format!("{}*", list.prefix),
                }));
            }
        }
        let changes = &txn.changes;
        let before = inner.usage.get(plugin).copied().unwrap_or_default();
        // Usage after the commit, computed before anything is applied.
        let mut after = before;
        for (key, value) in &changes.kv {
            if let Some(old) = inner.kv.get(&(plugin.to_owned(), key.clone())) {
                after.keys -= 1;
                after.bytes -= entry_bytes(key, &old.value);
            }
            if let Some(new) = value {
                after.keys += 1;
                after.bytes += entry_bytes(key, new);
            }
        }
        for (id, timer) in &changes.timers {
            if inner.timers.contains_key(&(plugin.to_owned(), id.clone())) {
                after.timers -= 1;
            }
            if timer.is_some() {
                after.timers += 1;
            }
        }
        after.check(&before, quota).map_err(StoreError::new)?;

        for (key, value) in &changes.kv {
            let k = (plugin.to_owned(), key.clone());
            match value {
                Some(v) => {
                    inner.version += 1;
                    inner.kv.insert(
                        k,
                        Entry {
                            value: v.clone(),
                            version: inner.version,
                        },
                    );
                }
                None => {
                    inner.kv.remove(&k);
                }
            }
        }
        let index = inner.by_due.entry(plugin.to_owned()).or_default();
        for (id, timer) in &changes.timers {
            let k = (plugin.to_owned(), id.clone());
            if let Some(old) = inner.timers.remove(&k) {
                index.remove(&(old.due_ms, id.clone()));
            }
            if let Some(timer) = timer {
                index.insert((timer.due_ms, id.clone()));
                inner.timers.insert(k, timer.clone());
            }
        }
        inner.usage.insert(plugin.to_owned(), after);
        Ok(())
    }
}

impl Inner {
    fn list(&self, plugin: &str, prefix: &str, limit: usize) -> Vec<String> {
        let start = (plugin.to_owned(), prefix.to_owned());
        self.kv
            .range(start..)
            .take_while(|((p, k), _)| p == plugin && k.starts_with(prefix))
            .take(limit)
            .map(|((_, k), _)| k.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Changes;

    fn commit(s: &MemoryStore, plugin: &str, c: &Changes, q: &Quota) -> Result<(), StoreError> {
        s.commit(plugin, &Transaction::writes(c.clone()), q)
    }

    #[test]
    fn commit_list_and_timers() {
        let s = MemoryStore::new();
        let mut c = Changes::default();
        c.kv.insert("a/1".into(), Some(b"x".to_vec()));
        c.kv.insert("a/2".into(), Some(b"y".to_vec()));
        c.kv.insert("b".into(), Some(b"z".to_vec()));
        c.timers.insert("t".into(), Some(timer(10, b"p")));
        commit(&s, "p1", &c, &Quota::UNLIMITED).unwrap();
        commit(&s, "p2", &c, &Quota::UNLIMITED).unwrap();
        assert_eq!(s.list("p1", "a/", 10).unwrap(), vec!["a/1", "a/2"]);
        assert_eq!(s.list("p1", "a/", 1).unwrap(), vec!["a/1"]);
        assert_eq!(s.get("p2", "b").unwrap().unwrap().value, b"z".to_vec());
        assert_eq!(s.due_timers(9, &["p1", "p2"], 10).unwrap(), vec![]);
        assert_eq!(s.due_timers(10, &["p1", "p2"], 10).unwrap().len(), 2);
        assert_eq!(s.due_timers(10, &["p1", "p2"], 1).unwrap().len(), 1);
        assert_eq!(s.due_timers(10, &["p2"], 10).unwrap()[0].plugin, "p2");
        let mut d = Changes::default();
        d.kv.insert("a/1".into(), None);
        d.timers.insert("t".into(), Some(timer(20, b"")));
        commit(&s, "p1", &d, &Quota::UNLIMITED).unwrap();
        assert_eq!(s.list("p1", "", 10).unwrap(), vec!["a/2", "b"]);
        let due: Vec<_> = s
            .due_timers(15, &["p1", "p2"], 10)
            .unwrap()
            .into_iter()
            .map(|t| t.plugin)
            .collect();
        assert_eq!(due, vec!["p2"]);
    }

    fn timer(due_ms: u64, payload: &[u8]) -> ScheduledTimer {
        ScheduledTimer {
            due_ms,
            payload: payload.to_vec(),
            attempts: 0,
        }
    }

    #[test]
    fn stale_reads_and_listings_conflict() {
        let s = MemoryStore::new();
        let mut c = Changes::default();
        c.kv.insert("n".into(), Some(vec![1]));
        commit(&s, "p", &c, &Quota::UNLIMITED).unwrap();
        let seen = s.get("p", "n").unwrap().unwrap().version;
        let mut txn = Transaction::default();
        txn.reads.insert("n".into(), seen);
        txn.changes.kv.insert("n".into(), Some(vec![2]));
        // Someone else writes `n` first: the transaction that read the old version conflicts.
        commit(&s, "p", &c, &Quota::UNLIMITED).unwrap();
        let err = s.commit("p", &txn, &Quota::UNLIMITED).unwrap_err();
        assert!(err.0.downcast_ref::<Conflict>().is_some(), "{err}");
        // A key read as absent conflicts once it exists.
        let mut absent = Transaction::default();
        absent.reads.insert("m".into(), 0);
        let mut m = Changes::default();
        m.kv.insert("m".into(), Some(vec![]));
        commit(&s, "p", &m, &Quota::UNLIMITED).unwrap();
        assert!(s.commit("p", &absent, &Quota::UNLIMITED).is_err());
        // A listing that would answer differently conflicts too.
        let mut listed = Transaction::default();
        listed.lists.push(crate::storage::ListRead {
            prefix: "".into(),
            limit: 10,
            keys: vec!["n".into()],
        });
        assert!(s.commit("p", &listed, &Quota::UNLIMITED).is_err());
        // Versions never repeat: delete and write again.
        let before = s.get("p", "m").unwrap().unwrap().version;
        let mut del = Changes::default();
        del.kv.insert("m".into(), None);
        commit(&s, "p", &del, &Quota::UNLIMITED).unwrap();
        commit(&s, "p", &m, &Quota::UNLIMITED).unwrap();
        assert_ne!(s.get("p", "m").unwrap().unwrap().version, before);
    }

    #[test]
    fn quota_refuses_growth_but_allows_shrinking() {
        let s = MemoryStore::new();
        let quota = Quota {
            max_keys: 2,
            max_bytes: 1000,
            max_timers: 1,
        };
        let mut c = Changes::default();
        c.kv.insert("a".into(), Some(vec![0; 10]));
        c.kv.insert("b".into(), Some(vec![0; 10]));
        commit(&s, "p", &c, &quota).unwrap();
        let mut more = Changes::default();
        more.kv.insert("c".into(), Some(vec![]));
        let err = commit(&s, "p", &more, &quota).unwrap_err();
        assert_eq!(err.quota_exceeded().unwrap().what, "keys");
        assert_eq!(
            s.get("p", "c").unwrap(),
            None,
            "nothing of a refused commit is applied"
        );
        // Overwriting an existing key does not add a key.
        let mut same = Changes::default();
        same.kv.insert("a".into(), Some(vec![1; 20]));
        commit(&s, "p", &same, &quota).unwrap();
        let mut big = Changes::default();
        big.kv.insert("a".into(), Some(vec![1; 2000]));
        assert_eq!(
            commit(&s, "p", &big, &quota)
                .unwrap_err()
                .quota_exceeded()
                .unwrap()
                .what,
            "bytes"
        );
        let mut timers = Changes::default();
        timers.timers.insert("t1".into(), Some(timer(1, b"")));
        timers.timers.insert("t2".into(), Some(timer(1, b"")));
        assert_eq!(
            commit(&s, "p", &timers, &quota)
                .unwrap_err()
                .quota_exceeded()
                .unwrap()
                .what,
            "timers"
        );
        // Under a lowered quota, deleting still works.
        let tight = Quota {
            max_keys: 0,
            ..quota
        };
        let mut delete = Changes::default();
        delete.kv.insert("a".into(), None);
        commit(&s, "p", &delete, &tight).unwrap();
    }
}
