//! The data of one plugin call's `Store`: which plugin is running, the buffered state and timer
//! writes of the call, the memory limiter, and the services the imports use.

use std::sync::Arc;

use wasmtime::ResourceLimiter;

use crate::{
    error::FailureCause,
    homeserver::Homeserver,
    storage::{ENTRY_OVERHEAD_BYTES, StateStore, Transaction},
};

/// Largest state key or timer id a plugin may use, in bytes.
pub(crate) const MAX_KEY_BYTES: usize = 1024;
/// Largest total one call may write (state and timers, each entry charged its key, value
/// and [`ENTRY_OVERHEAD_BYTES`]), in bytes.
pub(crate) const MAX_WRITE_BYTES_PER_CALL: usize = 8 << 20;
/// Largest timer payload, in bytes. With [`crate::host::TIMERS_PER_PASS`] it bounds the
/// payload bytes one timer pass holds.
pub(crate) const MAX_TIMER_PAYLOAD_BYTES: usize = 64 << 10;
/// Most keys one `state.keys` call may return; a plugin that needs more must narrow its
/// prefix (a paged `keys` comes with the next WIT version).
pub(crate) const MAX_KEYS_ANSWER: usize = 10_000;
/// Keys one call may list in all (`keys` and `keys-page` together): each listing is kept to
/// be validated at commit.
pub(crate) const MAX_LISTED_KEYS_PER_CALL: usize = 100_000;
/// Log lines one call may write; later lines are dropped and counted.
pub(crate) const MAX_LOG_LINES_PER_CALL: u32 = 32;
/// Log bytes one call may write; later lines are dropped and counted.
pub(crate) const MAX_LOG_BYTES_PER_CALL: usize = 32 << 10;
/// Linear memories a plugin instance may have: the canonical ABI uses exactly one.
pub(crate) const MAX_MEMORIES: usize = 1;
/// Tables a plugin instance may have (its module's function table and the component's
/// shim tables).
pub(crate) const MAX_TABLES: usize = 4;
/// Core instances one plugin instance may create (its module and the component's shims).
pub(crate) const MAX_CORE_INSTANCES: usize = 4;
/// Elements any one table may grow to.
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// What a `Store` carries for the imports.
pub(crate) struct CallCtx {
    pub(crate) plugin: Arc<str>,
    pub(crate) store: Arc<dyn StateStore>,
    pub(crate) homeserver: Arc<dyn Homeserver>,
    /// The current call's transaction: its reads (validated at commit) and its writes,
    /// committed by the host only if the call succeeds.
    pub(crate) txn: Transaction,
    pub(crate) written_bytes: usize,
    /// Set when a state-store read failed, so the failure is reported as a store failure.
    pub(crate) store_failed: Option<String>,
    /// The last error-level line the plugin logged (the SDK logs panics this way), quoted in
    /// trap reports.
    pub(crate) last_error_log: Option<String>,
    /// Set when an import refused a call for a limit, so the trap is reported as that limit.
    pub(crate) limit_failure: Option<FailureCause>,
    /// Log lines and bytes written in this call, and lines dropped past the limits.
    pub(crate) log_lines: u32,
    pub(crate) log_bytes: usize,
    pub(crate) log_dropped: u64,
    /// Keys listed so far in this call.
    pub(crate) listed_keys: usize,
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
            txn: Transaction::default(),
            written_bytes: 0,
            store_failed: None,
            last_error_log: None,
            limit_failure: None,
            log_lines: 0,
            log_bytes: 0,
            log_dropped: 0,
            listed_keys: 0,
            limiter: MemoryLimiter {
                cap: memory_cap,
                total: 0,
                hit: None,
            },
        }
    }

    /// Forget the writes of a previous call on a reused instance.
    pub(crate) fn reset(&mut self) {
        self.txn = Transaction::default();
        self.written_bytes = 0;
        self.store_failed = None;
        self.last_error_log = None;
        self.limit_failure = None;
        self.log_lines = 0;
        self.log_bytes = 0;
        self.log_dropped = 0;
        self.listed_keys = 0;
        self.limiter.hit = None;
    }

    /// Refuse the call for a limit: recorded so the trap is reported as
    /// [`FailureCause::LimitExceeded`].
    pub(crate) fn exceed(&mut self, message: String) -> wasmtime::Error {
        let err = wasmtime::format_err!("{message}");
        self.limit_failure = Some(FailureCause::LimitExceeded(message));
        err
    }

    /// Refuse an over-long key or timer id.
    pub(crate) fn check_key(&mut self, what: &str, key: &str) -> wasmtime::Result<()> {
        // NUL is refused everywhere so that every store (PostgreSQL's TEXT cannot hold it)
        // answers the same.
        if key.contains('\0') {
            return Err(self.exceed(format!("{what} contains a NUL character")));
        }
        if key.len() > MAX_KEY_BYTES {
            return Err(self.exceed(format!(
                "{what} of {} bytes exceeds {MAX_KEY_BYTES} bytes",
                key.len()
            )));
        }
        Ok(())
    }

    /// Charge one written entry (key, value and the per-entry overhead) against the call's
    /// write budget; trap past it.
    pub(crate) fn charge(&mut self, key: usize, value: usize) -> wasmtime::Result<()> {
        let cost = key
            .saturating_add(value)
            .saturating_add(ENTRY_OVERHEAD_BYTES as usize);
        self.written_bytes = self.written_bytes.saturating_add(cost);
        if self.written_bytes > MAX_WRITE_BYTES_PER_CALL {
            return Err(self.exceed(format!(
                "more than {MAX_WRITE_BYTES_PER_CALL} bytes of state and timers written in one \
                 call ({ENTRY_OVERHEAD_BYTES} bytes charged per entry)"
            )));
        }
        Ok(())
    }

    /// A store failure seen by an import: recorded so the trap is reported as a store failure.
    pub(crate) fn store_error(&mut self, e: crate::error::StoreError) -> wasmtime::Error {
        self.store_failed = Some(e.to_string());
        wasmtime::format_err!("state store: {e}")
    }
}

/// Caps a plugin's memories (their total, not each one), tables and instances, and records
/// which cap was hit, so the trap is reported as such.
pub(crate) struct MemoryLimiter {
    pub(crate) cap: usize,
    /// Bytes of all the instance's linear memories together.
    total: usize,
    pub(crate) hit: Option<FailureCause>,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.total.saturating_add(desired.saturating_sub(current));
        if total > self.cap {
            self.hit = Some(FailureCause::OutOfMemory {
                limit_bytes: self.cap as u64,
            });
            wasmtime::bail!(
                "memory cap of {} bytes reached (all memories would take {total})",
                self.cap
            );
        }
        self.total = total;
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        Ok(())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            self.hit = Some(FailureCause::LimitExceeded(format!(
                "a table may hold {MAX_TABLE_ELEMENTS} elements (wanted {desired})"
            )));
            wasmtime::bail!("table cap of {MAX_TABLE_ELEMENTS} elements reached");
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        MAX_CORE_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}
