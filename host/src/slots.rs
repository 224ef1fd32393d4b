//! Per-plugin concurrency: a counting semaphore with a bounded wait, and the instance's
//! commit lock.
//!
//! Each plugin instance name owns one [`Slots`], shared by every build of it that a hot swap
//! puts in the chain, so calls in flight on the old build count against the same limit as
//! calls on the new one. The host reserves the instance pool per plugin (the sum of the
//! limits must fit the pool), so a plugin under load queues and then refuses its own calls and
//! never takes pool slots its neighbours need. `std` has no semaphore and the host is
//! synchronous (tokio's is async), hence these few lines on `Mutex` + `Condvar`.

use std::{
    sync::{Condvar, Mutex, MutexGuard},
    time::{Duration, Instant},
};

/// A plugin's concurrency limit and the calls currently holding a slot.
pub(crate) struct Slots {
    state: Mutex<State>,
    freed: Condvar,
    /// Held by every commit of the instance, briefly, and for a whole call by a call that
    /// conflicted too often: such a call then cannot conflict with this process's calls.
    commit: Mutex<()>,
}

struct State {
    limit: u32,
    in_use: u32,
}

/// A held slot; dropping it frees the slot.
pub(crate) struct Permit<'a>(&'a Slots);

impl Slots {
    pub(crate) fn new(limit: u32) -> Self {
        Self {
            state: Mutex::new(State { limit, in_use: 0 }),
            freed: Condvar::new(),
            commit: Mutex::new(()),
        }
    }

    /// The instance's commit lock.
    pub(crate) fn commit_lock(&self) -> MutexGuard<'_, ()> {
        self.commit.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current limit.
    pub(crate) fn limit(&self) -> u32 {
        self.lock().limit
    }

    /// Change the limit (a hot swap with a new `max_concurrency`). Calls over a lowered limit
    /// finish; new ones wait until the count is under it.
    pub(crate) fn set_limit(&self, limit: u32) {
        self.lock().limit = limit;
        self.freed.notify_all();
    }

    /// Take a slot, waiting at most `wait` for one to free up.
    pub(crate) fn acquire(&self, wait: Duration) -> Option<Permit<'_>> {
        let deadline = Instant::now() + wait;
        let mut state = self.lock();
        while state.in_use >= state.limit {
            let left = deadline.checked_duration_since(Instant::now())?;
            state = self
                .freed
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        state.in_use += 1;
        Some(Permit(self))
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.in_use -= 1;
        drop(state);
        self.0.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_frees() {
        let slots = Slots::new(2);
        let a = slots.acquire(Duration::ZERO).unwrap();
        let _b = slots.acquire(Duration::ZERO).unwrap();
        assert!(slots.acquire(Duration::from_millis(5)).is_none());
        drop(a);
        assert!(slots.acquire(Duration::ZERO).is_some());
        slots.set_limit(1);
        assert!(slots.acquire(Duration::from_millis(1)).is_none());
    }
}
