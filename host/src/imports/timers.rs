//! `mxpolicy:policy/timers`: durable timers, buffered with the call's other writes. Ids and
//! payloads are bounded and charged like state writes; the number of timers a plugin may
//! have scheduled is its quota, enforced at commit.

use crate::{
    bindings::mxpolicy::policy::timers::Host,
    context::{CallCtx, MAX_TIMER_PAYLOAD_BYTES},
    storage::ScheduledTimer,
};

impl Host for CallCtx {
    fn schedule(&mut self, id: String, at_ms: u64, payload: Vec<u8>) -> wasmtime::Result<()> {
        self.check_key("timer id", &id)?;
        if payload.len() > MAX_TIMER_PAYLOAD_BYTES {
            return Err(self.exceed(format!(
                "timer payload of {} bytes exceeds {MAX_TIMER_PAYLOAD_BYTES} bytes",
                payload.len()
            )));
        }
        self.charge(id.len(), payload.len())?;
        self.txn.changes.timers.insert(
            id,
            Some(ScheduledTimer {
                due_ms: at_ms,
                payload,
                attempts: 0,
            }),
        );
        Ok(())
    }

    fn cancel(&mut self, id: String) -> wasmtime::Result<bool> {
        self.check_key("timer id", &id)?;
        self.charge(id.len(), 0)?;
        let was_scheduled = match self.txn.changes.timers.get(&id) {
            Some(pending) => pending.is_some(),
            None => {
                let found = self.store.timer(&self.plugin, &id);
                found.map_err(|e| self.store_error(e))?.is_some()
            }
        };
        self.txn.changes.timers.insert(id, None);
        Ok(was_scheduled)
    }
}
