//! The data of one plugin call's `Store`: which plugin is running, the buffered state and timer
//! writes of the call, the memory limiter, and the services the imports use.

use std::sync::Arc;

use wasmtime::ResourceLimiter;

use crate::{homeserver::Homeserver, storage::Changes, storage::StateStore};

/// Largest state key a plugin may use, in bytes.
pub(crate) const MAX_KEY_BYTES: usize = 1024;
/// Largest total of values one call may write, in bytes.
pub(crate) const MAX_WRITE_BYTES_PER_CALL: usize = 8 << 20;

/// What a `Store` carries for the imports.
pub(crate) struct CallCtx {
    pub(crate) plugin: Arc<str>,
    pub(crate) store: Arc<dyn StateStore>,
    pub(crate) homeserver: Arc<dyn Homeserver>,
    /// Writes of the current call, committed by the host only if the call succeeds.
    pub(crate) changes: Changes,
    pub(crate) written_bytes: usize,
    /// Set when a state-store read failed, so the failure is reported as a store failure.
    pub(crate) store_failed: Option<String>,
    /// The last error-level line the plugin logged (the SDK logs panics this way), quoted in
    /// trap reports.
    pub(crate) last_error_log: Option<String>,
    pub(crate) limiter: MemoryLimiter,
}

impl CallCtx {
    pub(crate) fn new(
        plugin: Arc<str>,
        store: Arc<dyn StateStore>,
        homeserver: Arc<dyn Homeserver>,
        memory_cap: usize,
    ) -> Self {
        Self {
            plugin,
            store,
            homeserver,
            changes: Changes::default(),
            written_bytes: 0,
            store_failed: None,
            last_error_log: None,
            limiter: MemoryLimiter {
                cap: memory_cap,
                hit: false,
            },
        }
    }

    /// Forget the writes of a previous call on a reused instance.
    pub(crate) fn reset(&mut self) {
        self.changes = Changes::default();
        self.written_bytes = 0;
        self.store_failed = None;
        self.last_error_log = None;
        self.limiter.hit = false;
    }

    /// Count bytes written in this call; trap past the per-call budget.
    pub(crate) fn charge(&mut self, bytes: usize) -> wasmtime::Result<()> {
        self.written_bytes = self.written_bytes.saturating_add(bytes);
        if self.written_bytes > MAX_WRITE_BYTES_PER_CALL {
            wasmtime::bail!(
                "plugin wrote more than {MAX_WRITE_BYTES_PER_CALL} bytes of state in one call"
            );
        }
        Ok(())
    }
}

/// Caps a plugin's linear memory and records when the cap was hit, so an out-of-memory trap
/// is reported as such.
pub(crate) struct MemoryLimiter {
    pub(crate) cap: usize,
    pub(crate) hit: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.cap {
            self.hit = true;
            wasmtime::bail!(
                "memory cap of {} bytes reached (wanted {desired})",
                self.cap
            );
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > 100_000 {
            self.hit = true;
            wasmtime::bail!("table cap of 100000 elements reached (wanted {desired})");
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        64
    }

    fn tables(&self) -> usize {
        64
    }

    fn memories(&self) -> usize {
        16
    }
}
