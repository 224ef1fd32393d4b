//! `mxpolicy:policy/state`: per-plugin key-value state, read through the call's own writes.

use std::collections::BTreeSet;

use crate::{
    bindings::mxpolicy::policy::state::Host,
    context::{CallCtx, MAX_KEY_BYTES},
};

fn check_key(key: &str) -> wasmtime::Result<()> {
    if key.len() > MAX_KEY_BYTES {
        wasmtime::bail!("state key of {} bytes exceeds {MAX_KEY_BYTES}", key.len());
    }
    Ok(())
}

impl Host for CallCtx {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        if let Some(value) = self.changes.kv.get(&key) {
            return Ok(value.clone());
        }
        self.store.get(&self.plugin, &key).map_err(|e| {
            self.store_failed = Some(e.to_string());
            wasmtime::format_err!("state store: {e}")
        })
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<()> {
        check_key(&key)?;
        self.charge(key.len() + value.len())?;
        self.changes.kv.insert(key, Some(value));
        Ok(())
    }

    fn delete(&mut self, key: String) -> wasmtime::Result<()> {
        check_key(&key)?;
        self.charge(key.len())?;
        self.changes.kv.insert(key, None);
        Ok(())
    }

    fn keys(&mut self, prefix: String) -> wasmtime::Result<Vec<String>> {
        let stored = self.store.list(&self.plugin, &prefix).map_err(|e| {
            self.store_failed = Some(e.to_string());
            wasmtime::format_err!("state store: {e}")
        })?;
        let mut keys: BTreeSet<String> = stored.into_iter().collect();
        for (key, value) in self.changes.kv.range(prefix.clone()..) {
            if !key.starts_with(&prefix) {
                break;
            }
            if value.is_some() {
                keys.insert(key.clone());
            } else {
                keys.remove(key);
            }
        }
        Ok(keys.into_iter().collect())
    }
}
