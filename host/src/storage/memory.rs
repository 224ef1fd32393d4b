//! [`MemoryStore`]: the in-memory [`StateStore`], for tests, examples and `mxpolicy replay`.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Mutex, MutexGuard},
};

use super::{
    Conflict, Entry, OutboxEntry, Quota, ScheduledTimer, StateStore, Timer, Transaction, Usage,
};
use crate::error::StoreError;

#[derive(Default)]
struct Inner {
    kv: BTreeMap<(String, String), Entry>,
    /// The last version handed out; every write takes the next.
    version: u64,
    timers: BTreeMap<(String, String), ScheduledTimer>,
    /// Per plugin: `(due, id)` of each timer, to page through due timers by plugin.
    by_due: BTreeMap<String, BTreeSet<(u64, String)>>,
    usage: BTreeMap<String, Usage>,
    /// Leases of claimed timers: until when.
    leases: BTreeMap<(String, String), u64>,
    /// The outbox: id -> (plugin, action, leased until).
    outbox: BTreeMap<u64, (String, String, u64)>,
    next_action: u64,
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

    fn plugins(&self) -> Result<Vec<String>, StoreError> {
        let inner = self.lock();
        let mut plugins: Vec<String> = inner.kv.keys().map(|(p, _)| p.clone()).collect();
        plugins.dedup();
        Ok(plugins)
    }

    fn list(
        &self,
        plugin: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        Ok(self.lock().list(plugin, prefix, after, limit))
    }

    fn timer(&self, plugin: &str, id: &str) -> Result<Option<Timer>, StoreError> {
        Ok(self
            .lock()
            .timers
            .get(&(plugin.to_owned(), id.to_owned()))
            .map(|t| t.stored(plugin, id)))
    }

    fn claim_timers(
        &self,
        now_ms: u64,
        plugins: &[&str],
        limit: usize,
        lease_until_ms: u64,
    ) -> Result<Vec<Timer>, StoreError> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        // The first `limit` claimable timers of each plugin, merged: at most plugins x limit
        // entries are taken, however many timers are due.
        let mut due: Vec<(u64, String, String)> = Vec::new();
        for plugin in plugins {
            if let Some(index) = inner.by_due.get(*plugin) {
                due.extend(
                    index
                        .iter()
                        .take_while(|(d, _)| *d <= now_ms)
                        .filter(|(_, id)| {
                            inner
                                .leases
                                .get(&((*plugin).to_owned(), id.clone()))
                                .is_none_or(|until| *until <= now_ms)
                        })
                        .take(limit)
                        .map(|(d, id)| (*d, (*plugin).to_owned(), id.clone())),
                );
            }
        }
        due.sort_unstable();
        due.truncate(limit);
        let mut claimed = Vec::with_capacity(due.len());
        for (_, plugin, id) in due {
            if let Some(t) = inner.timers.get(&(plugin.clone(), id.clone())) {
                claimed.push(t.stored(&plugin, &id));
                inner.leases.insert((plugin, id), lease_until_ms);
            }
        }
        Ok(claimed)
    }

    fn claim_actions(
        &self,
        now_ms: u64,
        limit: usize,
        lease_until_ms: u64,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        let mut inner = self.lock();
        let mut claimed = Vec::new();
        for (id, (plugin, action, lease)) in inner.outbox.iter_mut() {
            if claimed.len() == limit {
                break;
            }
            if *lease <= now_ms {
                *lease = lease_until_ms;
                claimed.push(OutboxEntry {
                    id: *id,
                    plugin: plugin.clone(),
                    action: action.clone(),
                });
            }
        }
        Ok(claimed)
    }

    fn ack_actions(&self, ids: &[u64]) -> Result<(), StoreError> {
        let mut inner = self.lock();
        for id in ids {
            inner.outbox.remove(id);
        }
        Ok(())
    }

    fn commit(
        &self,
        plugin: &str,
        txn: &Transaction,
        quota: &Quota,
    ) -> Result<Vec<u64>, StoreError> {
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
            if inner.list(plugin, &list.prefix, list.after.as_deref(), list.limit) != list.keys {
                return Err(StoreError::new(Conflict {
                    key: format!("{}*", list.prefix),
                }));
            }
        }
        let changes = &txn.changes;
        let timer_writes = changes.effective_timers(|id| {
            let k = (plugin.to_owned(), id.to_owned());
            Ok(inner
                .timers
                .contains_key(&k)
                .then(|| inner.leases.get(&k).copied().unwrap_or(0)))
        })?;
        let before = inner.usage.get(plugin).copied().unwrap_or_default();
        // Usage after the commit, computed before anything is applied.
        let after = before.after(
            &changes.kv,
            &timer_writes,
            |key| {
                Ok(inner
                    .kv
                    .get(&(plugin.to_owned(), key.to_owned()))
                    .map(|e| e.value.len() as u64))
            },
            |id| {
                Ok(inner
                    .timers
                    .contains_key(&(plugin.to_owned(), id.to_owned())))
            },
        )?;
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
        for (id, timer) in &timer_writes {
            let k = (plugin.to_owned(), id.clone());
            inner.leases.remove(&k);
            if let Some(old) = inner.timers.remove(&k) {
                index.remove(&(old.due_ms, id.clone()));
            }
            if let Some(timer) = timer {
                index.insert((timer.due_ms, id.clone()));
                inner.timers.insert(k, timer.clone());
            }
        }
        inner.usage.insert(plugin.to_owned(), after);
        let mut ids = Vec::with_capacity(txn.actions.len());
        for action in &txn.actions {
            inner.next_action += 1;
            let id = inner.next_action;
            inner.outbox.insert(
                id,
                (
                    plugin.to_owned(),
                    action.clone(),
                    txn.actions_lease_until_ms,
                ),
            );
            ids.push(id);
        }
        Ok(ids)
    }
}

impl Inner {
    fn list(&self, plugin: &str, prefix: &str, after: Option<&str>, limit: usize) -> Vec<String> {
        use std::ops::Bound;
        let start = match after {
            Some(a) if a >= prefix => Bound::Excluded((plugin.to_owned(), a.to_owned())),
            _ => Bound::Included((plugin.to_owned(), prefix.to_owned())),
        };
        self.kv
            .range((start, Bound::Unbounded))
            .take_while(|((p, k), _)| p == plugin && k.starts_with(prefix))
            .take(limit)
            .map(|((_, k), _)| k.clone())
            .collect()
    }
}
