//! `mxpolicy:policy/state`: per-plugin key-value state, read through the call's own writes.
//!
//! Every write is charged against the call's budget (key, value and a per-entry overhead);
//! the plugin's persistent quota is enforced when the call's writes are committed.

use std::collections::BTreeSet;

use crate::{
    bindings::mxpolicy::policy::state::Host,
    context::{CallCtx, MAX_KEYS_ANSWER},
    storage::ListRead,
};

impl Host for CallCtx {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        // The call's own writes first; they depend on nothing in the store.
        if let Some(value) = self.txn.changes.kv.get(&key) {
            return Ok(value.clone());
        }
        let result = self.store.get(&self.plugin, &key);
        let entry = result.map_err(|e| self.store_error(e))?;
        // Recorded for validation at commit (the first version seen counts).
        self.txn
            .reads
            .entry(key)
            .or_insert(entry.as_ref().map_or(0, |e| e.version));
        Ok(entry.map(|e| e.value))
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<()> {
        self.check_key("state key", &key)?;
        self.charge(key.len(), value.len())?;
        self.txn.changes.kv.insert(key, Some(value));
        Ok(())
    }

    fn delete(&mut self, key: String) -> wasmtime::Result<()> {
        self.check_key("state key", &key)?;
        self.charge(key.len(), 0)?;
        self.txn.changes.kv.insert(key, None);
        Ok(())
    }

    fn keys(&mut self, prefix: String) -> wasmtime::Result<Vec<String>> {
        // Ask for one more than the cap (plus the keys this call deleted, which the merge
        // removes), so an answer over the cap is detected rather than silently cut: a policy
        // that saw a truncated list would decide on partial data.
        let deleted = self.txn.changes.kv.values().filter(|v| v.is_none()).count();
        let stored = self
            .store
            .list(&self.plugin, &prefix, MAX_KEYS_ANSWER + 1 + deleted);
        let stored = stored.map_err(|e| self.store_error(e))?;
        let mut keys: BTreeSet<String> = stored.iter().cloned().collect();
        self.txn.lists.push(ListRead {
            prefix: prefix.clone(),
            limit: MAX_KEYS_ANSWER + 1 + deleted,
            keys: stored,
        });
        for (key, value) in self.txn.changes.kv.range(prefix.clone()..) {
            if !key.starts_with(&prefix) {
                break;
            }
            if value.is_some() {
                keys.insert(key.clone());
            } else {
                keys.remove(key);
            }
        }
        if keys.len() > MAX_KEYS_ANSWER {
            return Err(self.exceed(format!(
                "`keys` under prefix {prefix:?} matches more than {MAX_KEYS_ANSWER} keys; \
                 use a narrower prefix"
            )));
        }
        Ok(keys.into_iter().collect())
    }
}
