//! Where plugin state and timers live: the [`StateStore`] trait the homeserver implements, and
//! [`MemoryStore`], the in-memory implementation for tests and the replay tool.
//!
//! Every plugin's keys and timers are namespaced by its instance name (the operator's name for
//! the load, never the name the component reports), so state carries over when a plugin is
//! replaced by a new build under the same instance name. Writes made during one hook call
//! are buffered by the host and handed to [`StateStore::commit`] in one batch when the call
//! returns successfully; a call that fails commits nothing.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Mutex, MutexGuard},
};

use serde::{Deserialize, Serialize};

use crate::error::{QuotaExceeded, StoreError};

/// A durable timer, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timer {
    /// The plugin instance that scheduled it.
    pub plugin: String,
    /// The plugin's id for it.
    pub id: String,
    /// When it is due.
    pub due_ms: u64,
    /// The plugin's payload.
    pub payload: Vec<u8>,
    /// How many times its `on-timer` call has failed so far (the host backs off and finally
    /// gives up; see [`Host::run_timers`](crate::Host::run_timers)).
    pub attempts: u32,
}

/// A timer as written by one call: scheduled by the plugin (`attempts` 0) or rescheduled by
/// the host after a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledTimer {
    /// When it is due.
    pub due_ms: u64,
    /// The plugin's payload.
    pub payload: Vec<u8>,
    /// Failed attempts so far.
    pub attempts: u32,
}

impl ScheduledTimer {
    /// This timer as stored for `plugin` under `id`.
    pub fn stored(&self, plugin: &str, id: &str) -> Timer {
        Timer {
            plugin: plugin.to_owned(),
            id: id.to_owned(),
            due_ms: self.due_ms,
            payload: self.payload.clone(),
            attempts: self.attempts,
        }
    }
}

/// The writes of one successful hook call, for one plugin.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Key → new value, or `None` to delete.
    pub kv: BTreeMap<String, Option<Vec<u8>>>,
    /// Timer id → the timer, or `None` to cancel.
    pub timers: BTreeMap<String, Option<ScheduledTimer>>,
}

impl Changes {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.kv.is_empty() && self.timers.is_empty()
    }
}

/// What one stored entry costs against a plugin's byte quota beyond its key and value: the
/// bookkeeping every store pays per row (index entries, map nodes). Charging it means a
/// million one-byte keys cost what they really cost, not a million bytes.
pub const ENTRY_OVERHEAD_BYTES: u64 = 64;

/// The bytes one key-value entry is charged.
pub fn entry_bytes(key: &str, value: &[u8]) -> u64 {
    key.len() as u64 + value.len() as u64 + ENTRY_OVERHEAD_BYTES
}

/// A plugin's persistent state quota, enforced by [`StateStore::commit`]. A commit that
/// would take a plugin past a quota is refused with [`QuotaExceeded`] and nothing of it is
/// applied; a commit that lowers usage is always allowed, so a plugin over a lowered quota
/// can still delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Most keys the plugin may hold.
    pub max_keys: u64,
    /// Most bytes its keys and values may take, [`ENTRY_OVERHEAD_BYTES`] per entry included.
    pub max_bytes: u64,
    /// Most timers it may have scheduled.
    pub max_timers: u64,
}

impl Quota {
    /// No limits: for writes the host makes itself (rescheduling a failed timer).
    pub const UNLIMITED: Quota = Quota {
        max_keys: u64::MAX,
        max_bytes: u64::MAX,
        max_timers: u64::MAX,
    };
}

/// Storage of plugin state and timers, implemented by the homeserver (a durable store) or by
/// [`MemoryStore`]. Implementations must be safe to call from many threads; `commit` must apply
/// a batch atomically and enforce the [`Quota`] it is given.
pub trait StateStore: Send + Sync {
    /// The value of `key` for `plugin`.
    fn get(&self, plugin: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// The first `limit` keys of `plugin` starting with `prefix`, ascending.
    fn list(&self, plugin: &str, prefix: &str, limit: usize) -> Result<Vec<String>, StoreError>;
    /// The timer `id` of `plugin`, if scheduled.
    fn timer(&self, plugin: &str, id: &str) -> Result<Option<Timer>, StoreError>;
    /// At most `limit` timers of the given plugins due at `now_ms` (due time at or before
    /// it), ordered by due time, then plugin, then id. Timers of other plugins are skipped
    /// without counting against `limit`.
    fn due_timers(
        &self,
        now_ms: u64,
        plugins: &[&str],
        limit: usize,
    ) -> Result<Vec<Timer>, StoreError>;
    /// Apply one call's writes atomically, unless they would take `plugin` past `quota`: then
    /// apply nothing and return a [`StoreError`] wrapping [`QuotaExceeded`].
    fn commit(&self, plugin: &str, changes: &Changes, quota: &Quota) -> Result<(), StoreError>;
}

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
    kv: BTreeMap<(String, String), Vec<u8>>,
    timers: BTreeMap<(String, String), ScheduledTimer>,
    /// Per plugin: `(due, id)` of each timer, to page through due timers by plugin.
    by_due: BTreeMap<String, BTreeSet<(u64, String)>>,
    usage: BTreeMap<String, Usage>,
}

/// An in-memory [`StateStore`]: for tests, examples and `mxpolicy replay`. Everything is lost
/// when it is dropped.
#[derive(Default)]
// Public with the `testing` feature; without it, the host's default store only.
#[cfg_attr(not(feature = "testing"), allow(unreachable_pub))]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[cfg_attr(not(feature = "testing"), allow(unreachable_pub))]
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
    fn get(&self, plugin: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .lock()
            .kv
            .get(&(plugin.to_owned(), key.to_owned()))
            .cloned())
    }

    fn list(&self, plugin: &str, prefix: &str, limit: usize) -> Result<Vec<String>, StoreError> {
        let inner = self.lock();
        let start = (plugin.to_owned(), prefix.to_owned());
        Ok(inner
            .kv
            .range(start..)
            .take_while(|((p, k), _)| p == plugin && k.starts_with(prefix))
            .take(limit)
            .map(|((_, k), _)| k.clone())
            .collect())
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

    fn commit(&self, plugin: &str, changes: &Changes, quota: &Quota) -> Result<(), StoreError> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let before = inner.usage.get(plugin).copied().unwrap_or_default();
        // Usage after the commit, computed before anything is applied.
        let mut after = before;
        for (key, value) in &changes.kv {
            if let Some(old) = inner.kv.get(&(plugin.to_owned(), key.clone())) {
                after.keys -= 1;
                after.bytes -= entry_bytes(key, old);
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
                Some(v) => inner.kv.insert(k, v.clone()),
                None => inner.kv.remove(&k),
            };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_list_and_timers() {
        let s = MemoryStore::new();
        let mut c = Changes::default();
        c.kv.insert("a/1".into(), Some(b"x".to_vec()));
        c.kv.insert("a/2".into(), Some(b"y".to_vec()));
        c.kv.insert("b".into(), Some(b"z".to_vec()));
        c.timers.insert("t".into(), Some(timer(10, b"p")));
        s.commit("p1", &c, &Quota::UNLIMITED).unwrap();
        s.commit("p2", &c, &Quota::UNLIMITED).unwrap();
        assert_eq!(s.list("p1", "a/", 10).unwrap(), vec!["a/1", "a/2"]);
        assert_eq!(s.list("p1", "a/", 1).unwrap(), vec!["a/1"]);
        assert_eq!(s.get("p2", "b").unwrap(), Some(b"z".to_vec()));
        assert_eq!(s.due_timers(9, &["p1", "p2"], 10).unwrap(), vec![]);
        assert_eq!(s.due_timers(10, &["p1", "p2"], 10).unwrap().len(), 2);
        assert_eq!(s.due_timers(10, &["p1", "p2"], 1).unwrap().len(), 1);
        assert_eq!(s.due_timers(10, &["p2"], 10).unwrap()[0].plugin, "p2");
        let mut d = Changes::default();
        d.kv.insert("a/1".into(), None);
        d.timers.insert("t".into(), Some(timer(20, b"")));
        s.commit("p1", &d, &Quota::UNLIMITED).unwrap();
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
        s.commit("p", &c, &quota).unwrap();
        let mut more = Changes::default();
        more.kv.insert("c".into(), Some(vec![]));
        let err = s.commit("p", &more, &quota).unwrap_err();
        assert_eq!(err.quota_exceeded().unwrap().what, "keys");
        assert_eq!(
            s.get("p", "c").unwrap(),
            None,
            "nothing of a refused commit is applied"
        );
        // Overwriting an existing key does not add a key.
        let mut same = Changes::default();
        same.kv.insert("a".into(), Some(vec![1; 20]));
        s.commit("p", &same, &quota).unwrap();
        let mut big = Changes::default();
        big.kv.insert("a".into(), Some(vec![1; 2000]));
        assert_eq!(
            s.commit("p", &big, &quota)
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
            s.commit("p", &timers, &quota)
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
        s.commit("p", &delete, &tight).unwrap();
    }
}
