//! `mxpolicy:policy/timers`: durable timers, buffered with the call's other writes.

use crate::{
    bindings::mxpolicy::policy::timers::Host,
    context::{CallCtx, MAX_KEY_BYTES},
};

impl Host for CallCtx {
    fn schedule(&mut self, id: String, at_ms: u64, payload: Vec<u8>) -> wasmtime::Result<()> {
        if id.len() > MAX_KEY_BYTES {
            wasmtime::bail!("timer id of {} bytes exceeds {MAX_KEY_BYTES}", id.len());
        }
        self.charge(id.len() + payload.len())?;
        self.changes.timers.insert(id, Some((at_ms, payload)));
        Ok(())
    }

    fn cancel(&mut self, id: String) -> wasmtime::Result<bool> {
        let was_scheduled = match self.changes.timers.get(&id) {
            Some(pending) => pending.is_some(),
            None => self
                .store
                .timer(&self.plugin, &id)
                .map_err(|e| {
                    self.store_failed = Some(e.to_string());
                    wasmtime::format_err!("state store: {e}")
                })?
                .is_some(),
        };
        self.changes.timers.insert(id, None);
        Ok(was_scheduled)
    }
}
