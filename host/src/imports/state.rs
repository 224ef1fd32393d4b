//! `mxpolicy:policy/state`: per-plugin key-value state, read through the call's own writes.
//!
//! Every write is charged against the call's budget (key, value and a per-entry overhead);
//! the plugin's persistent quota is enforced when the call's writes are committed.

use std::collections::BTreeSet;

use crate::{
    bindings::mxpolicy::policy::state::Host,
    context::{CallCtx, MAX_KEYS_ANSWER, MAX_LISTED_KEYS_PER_CALL},
    storage::ListRead,
};

impl Host for CallCtx {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        self.check_key("state key", &key)?;
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
        self.check_key("key prefix", &prefix)?;
        // Ask for one more than the cap, so an answer over the cap is detected rather than
        // silently cut: a policy that saw a truncated list would decide on partial data.
        let keys = self.list_merged(&prefix, None, MAX_KEYS_ANSWER + 1)?;
        if keys.len() > MAX_KEYS_ANSWER {
            return Err(self.exceed(format!(
                "`keys` under prefix {prefix:?} matches more than {MAX_KEYS_ANSWER} keys; \
                 use a narrower prefix or `keys-page`"
            )));
        }
        Ok(keys)
    }

    fn keys_page(
        &mut self,
        prefix: String,
        after: Option<String>,
        limit: u32,
    ) -> wasmtime::Result<Vec<String>> {
        self.check_key("key prefix", &prefix)?;
        if let Some(after) = &after {
            self.check_key("page start", after)?;
        }
        let limit = (limit as usize).min(MAX_KEYS_ANSWER);
        self.list_merged(&prefix, after.as_deref(), limit)
    }
}

impl CallCtx {
    /// The first `limit` keys under `prefix` after `after`, as this call sees them: the
    /// store's, with the call's own writes and deletes applied. The store's listing is
    /// recorded for validation at commit.
    fn list_merged(
        &mut self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> wasmtime::Result<Vec<String>> {
        let in_range = |key: &str| key.starts_with(prefix) && after.is_none_or(|a| key > a);
        // The call's deletes may remove stored keys from the page: fetch that many more.
        let deleted = self
            .txn
            .changes
            .kv
            .iter()
            .filter(|(k, v)| v.is_none() && in_range(k))
            .count();
        let fetch = limit.saturating_add(deleted);
        let stored = self.store.list(&self.plugin, prefix, after, fetch);
        let stored = stored.map_err(|e| self.store_error(e))?;
        // A full page may stop before keys this call wrote: those after its last key wait for
        // the next page, where the store's own keys in between come first.
        let bound = (stored.len() == fetch)
            .then(|| stored.last().cloned())
            .flatten();
        let mut keys: BTreeSet<String> = stored.iter().cloned().collect();
        let read = ListRead {
            prefix: prefix.to_owned(),
            after: after.map(str::to_owned),
            limit: fetch,
            keys: stored,
        };
        // The same listing twice is validated once; the keys a call may have listed in all
        // are bounded, so a plugin cannot grow host memory or commit-time work without end.
        if !self.txn.lists.contains(&read) {
            self.listed_keys = self.listed_keys.saturating_add(read.keys.len());
            if self.listed_keys > MAX_LISTED_KEYS_PER_CALL {
                return Err(self.exceed(format!(
                    "more than {MAX_LISTED_KEYS_PER_CALL} keys listed in one call"
                )));
            }
            self.txn.lists.push(read);
        }
        for (key, value) in self.txn.changes.kv.range(prefix.to_owned()..) {
            if !key.starts_with(prefix) {
                break;
            }
            if !in_range(key) {
                continue;
            }
            if value.is_some() {
                if bound.as_ref().is_none_or(|b| key <= b) {
                    keys.insert(key.clone());
                }
            } else {
                keys.remove(key);
            }
        }
        Ok(keys.into_iter().take(limit).collect())
    }
}
