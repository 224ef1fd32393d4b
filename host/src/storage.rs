//! Where plugin state and timers live: the [`StateStore`] trait the homeserver implements, and
//! [`MemoryStore`], the in-memory implementation for tests and the replay tool.
//!
//! Every plugin's keys and timers are namespaced by the plugin's name, so state carries over
//! when a plugin is replaced by a new build of the same name. Writes made during one hook call
//! are buffered by the host and handed to [`StateStore::commit`] in one batch when the call
//! returns successfully; a call that fails commits nothing.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Mutex, MutexGuard},
};

use serde::{Deserialize, Serialize};

use crate::error::StoreError;

/// A durable timer, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timer {
    /// The plugin that scheduled it.
    pub plugin: String,
    /// The plugin's id for it.
    pub id: String,
    /// When it is due.
    pub due_ms: u64,
    /// The plugin's payload.
    pub payload: Vec<u8>,
}

/// The writes of one successful hook call, for one plugin.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Key → new value, or `None` to delete.
    pub kv: BTreeMap<String, Option<Vec<u8>>>,
    /// Timer id → `(due_ms, payload)`, or `None` to cancel.
    pub timers: BTreeMap<String, Option<(u64, Vec<u8>)>>,
}

impl Changes {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.kv.is_empty() && self.timers.is_empty()
    }
}

/// Storage of plugin state and timers, implemented by the homeserver (a durable store) or by
/// [`MemoryStore`]. Implementations must be safe to call from many threads; `commit` must apply
/// a batch atomically.
pub trait StateStore: Send + Sync {
    /// The value of `key` for `plugin`.
    fn get(&self, plugin: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// The keys of `plugin` starting with `prefix`, ascending.
    fn list(&self, plugin: &str, prefix: &str) -> Result<Vec<String>, StoreError>;
    /// The timer `id` of `plugin`, if scheduled.
    fn timer(&self, plugin: &str, id: &str) -> Result<Option<Timer>, StoreError>;
    /// Every timer due at `now_ms` (due time at or before it), ordered by due time, then
    /// plugin, then id.
    fn due_timers(&self, now_ms: u64) -> Result<Vec<Timer>, StoreError>;
    /// Apply one call's writes atomically.
    fn commit(&self, plugin: &str, changes: &Changes) -> Result<(), StoreError>;
}

#[derive(Default)]
struct Inner {
    kv: BTreeMap<(String, String), Vec<u8>>,
    timers: BTreeMap<(String, String), (u64, Vec<u8>)>,
    by_due: BTreeSet<(u64, String, String)>,
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

    /// Every key of every plugin, for inspection in tests: `(plugin, key, value)`.
    pub fn dump(&self) -> Vec<(String, String, Vec<u8>)> {
        self.lock()
            .kv
            .iter()
            .map(|((p, k), v)| (p.clone(), k.clone(), v.clone()))
            .collect()
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

    fn list(&self, plugin: &str, prefix: &str) -> Result<Vec<String>, StoreError> {
        let inner = self.lock();
        let start = (plugin.to_owned(), prefix.to_owned());
        Ok(inner
            .kv
            .range(start..)
            .take_while(|((p, k), _)| p == plugin && k.starts_with(prefix))
            .map(|((_, k), _)| k.clone())
            .collect())
    }

    fn timer(&self, plugin: &str, id: &str) -> Result<Option<Timer>, StoreError> {
        Ok(self
            .lock()
            .timers
            .get(&(plugin.to_owned(), id.to_owned()))
            .map(|(due_ms, payload)| Timer {
                plugin: plugin.to_owned(),
                id: id.to_owned(),
                due_ms: *due_ms,
                payload: payload.clone(),
            }))
    }

    fn due_timers(&self, now_ms: u64) -> Result<Vec<Timer>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .by_due
            .iter()
            .take_while(|(due, _, _)| *due <= now_ms)
            .filter_map(|(due, p, id)| {
                inner
                    .timers
                    .get(&(p.clone(), id.clone()))
                    .map(|(_, payload)| Timer {
                        plugin: p.clone(),
                        id: id.clone(),
                        due_ms: *due,
                        payload: payload.clone(),
                    })
            })
            .collect())
    }

    fn commit(&self, plugin: &str, changes: &Changes) -> Result<(), StoreError> {
        let mut inner = self.lock();
        for (key, value) in &changes.kv {
            let k = (plugin.to_owned(), key.clone());
            match value {
                Some(v) => inner.kv.insert(k, v.clone()),
                None => inner.kv.remove(&k),
            };
        }
        for (id, timer) in &changes.timers {
            let k = (plugin.to_owned(), id.clone());
            if let Some((old_due, _)) = inner.timers.remove(&k) {
                inner
                    .by_due
                    .remove(&(old_due, plugin.to_owned(), id.clone()));
            }
            if let Some((due, payload)) = timer {
                inner.by_due.insert((*due, plugin.to_owned(), id.clone()));
                inner.timers.insert(k, (*due, payload.clone()));
            }
        }
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
        c.timers.insert("t".into(), Some((10, b"p".to_vec())));
        s.commit("p1", &c).unwrap();
        s.commit("p2", &c).unwrap();
        assert_eq!(s.list("p1", "a/").unwrap(), vec!["a/1", "a/2"]);
        assert_eq!(s.get("p2", "b").unwrap(), Some(b"z".to_vec()));
        assert_eq!(s.due_timers(9).unwrap(), vec![]);
        assert_eq!(s.due_timers(10).unwrap().len(), 2);
        let mut d = Changes::default();
        d.kv.insert("a/1".into(), None);
        d.timers.insert("t".into(), Some((20, vec![])));
        s.commit("p1", &d).unwrap();
        assert_eq!(s.list("p1", "").unwrap(), vec!["a/2", "b"]);
        let due: Vec<_> = s
            .due_timers(15)
            .unwrap()
            .into_iter()
            .map(|t| t.plugin)
            .collect();
        assert_eq!(due, vec!["p2"]);
    }
}
