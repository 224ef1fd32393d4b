//! Where plugin state and timers live: the [`StateStore`] trait, and `MemoryStore`, the
//! in-memory implementation for tests and the replay tool (feature `testing`).
//!
//! Every plugin's keys and timers are namespaced by its instance name (the operator's name for
//! the load, never the name the component reports), so state carries over when a plugin is
//! replaced by a new build under the same instance name.
//!
//! # Transactions
//! A hook call is one transaction. Its writes are buffered by the host; its reads record the
//! version of every key it read from the store (and every `keys` listing it made). When the
//! call succeeds the host hands the whole [`Transaction`] to [`StateStore::commit`], which
//! applies the writes only if every key read still has the version the call saw and every
//! listing would still give the same keys; otherwise it refuses with [`Conflict`] and the host
//! runs the call again on fresh state. Calls are therefore serializable with respect to the
//! keys they touched (optimistic concurrency control): two concurrent read-modify-writes of a
//! counter both count. A call that fails commits nothing.
//!
//! # Outbox
//! With the outbox on, the actions a call returns are recorded in the same transaction as its
//! state, leased to the caller (who carries them out from the `Decision`) and removed when
//! acknowledged. Actions not acknowledged when their lease ends (the process died between the
//! commit and carrying them out) are handed out again by
//! [`StateStore::claim_actions`]: a crash between "the grace period ended" and "the room was
//! purged" loses no purge. Actions are therefore carried out at least once.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{QuotaExceeded, StoreError};

mod cache;
#[cfg(feature = "testing")]
mod memory;
mod pg;
mod sqlite;

#[cfg(feature = "testing")]
pub use memory::MemoryStore;
pub use pg::PostgresStore;
pub use sqlite::SqliteStore;

/// A durable timer, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timer {
    /// The plugin instance that scheduled it.
    pub plugin: String,
    /// The plugin's id for it.
    pub id: String,
    /// When it is due.
    pub due_ms: u64,
    /// The plugin's payload.
    pub payload: Vec<u8>,
    /// How many times its `on-timer` call has failed so far (the host backs off and finally
    /// gives up; see [`Host::run_timers`](crate::Host::run_timers)).
    pub attempts: u32,
}

/// A timer as written by one call: scheduled by the plugin (`attempts` 0) or rescheduled by
/// the host after a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledTimer {
    /// When it is due.
    pub due_ms: u64,
    /// The plugin's payload.
    pub payload: Vec<u8>,
    /// Failed attempts so far.
    pub attempts: u32,
}

impl ScheduledTimer {
    /// This timer as stored for `plugin` under `id`.
    pub fn stored(&self, plugin: &str, id: &str) -> Timer {
        Timer {
            plugin: plugin.to_owned(),
            id: id.to_owned(),
            due_ms: self.due_ms,
            payload: self.payload.clone(),
            attempts: self.attempts,
        }
    }
}

/// A stored value and its version: a number the store changes on every write of the key
/// (unique across the store, so a key deleted and written again never repeats a version).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The value.
    pub value: Vec<u8>,
    /// Its version; never 0 (0 stands for "absent" in [`Transaction::reads`]).
    pub version: u64,
}

/// One `keys` listing a call read from the store, validated at commit like a key read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListRead {
    /// The prefix listed.
    pub prefix: String,
    /// The key the listing started after (a page), if any.
    pub after: Option<String>,
    /// The limit asked for.
    pub limit: usize,
    /// The keys the store answered.
    pub keys: Vec<String>,
}

/// One hook call's transaction: what it read (to validate) and what it writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transaction {
    /// Each key read from the store, with the version seen (0: the key was absent).
    pub reads: BTreeMap<String, u64>,
    /// Each `keys` listing read from the store.
    pub lists: Vec<ListRead>,
    /// The writes.
    pub changes: Changes,
    /// Actions to record in the outbox with the writes, as JSON (the host's `Action`).
    pub actions: Vec<String>,
    /// Until when the recorded actions are leased to the caller, who carries them out inline
    /// from the call's `Decision`; not acknowledged by then, they are handed out again.
    pub actions_lease_until_ms: u64,
}

impl Transaction {
    /// Whether committing it would write nothing.
    pub fn writes_nothing(&self) -> bool {
        self.changes.is_empty() && self.actions.is_empty()
    }
}

/// One action recorded in the outbox and not yet acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Its id, for [`StateStore::ack_actions`].
    pub id: u64,
    /// The plugin instance whose call returned it.
    pub plugin: String,
    /// The action, as JSON (the host's `Action`).
    pub action: String,
}

impl Transaction {
    /// A transaction that only writes, validating nothing (the host's own bookkeeping).
    pub fn writes(changes: Changes) -> Self {
        Self {
            changes,
            ..Self::default()
        }
    }
}

/// The error a [`StateStore`] returns (inside a [`StoreError`]) when a transaction's reads are
/// stale: another transaction wrote a key it read since it read it. The host re-runs the call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("conflict on key {key:?}: it changed after the call read it")]
pub struct Conflict {
    /// The first stale key (or listing prefix).
    pub key: String,
}

/// The writes of one hook call, for one plugin.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Key → new value, or `None` to delete.
    pub kv: BTreeMap<String, Option<Vec<u8>>>,
    /// Timer id → the timer, or `None` to cancel.
    pub timers: BTreeMap<String, Option<ScheduledTimer>>,
    /// The host's own end of a claimed timer: applied only if the timer is still under the
    /// claim (its lease is the one given), so a timer another call rescheduled while this one
    /// was being handled is left alone. An entry in `timers` for the same id wins.
    pub claimed: BTreeMap<String, Claimed>,
}

/// What to do with a claimed timer once handled, if nothing else rescheduled it meanwhile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// The lease the claim set (see [`StateStore::claim_timers`]).
    pub lease_until_ms: u64,
    /// The timer's new schedule (a retry), or `None` to remove it (it fired).
    pub then: Option<ScheduledTimer>,
}

impl Changes {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.kv.is_empty() && self.timers.is_empty() && self.claimed.is_empty()
    }

    /// The timer writes to apply, given each claimed timer's current lease (`None`: gone):
    /// `timers`, plus the claimed ends whose claim still holds.
    pub fn effective_timers(
        &self,
        mut lease_of: impl FnMut(&str) -> Result<Option<u64>, StoreError>,
    ) -> Result<BTreeMap<String, Option<ScheduledTimer>>, StoreError> {
        let mut timers = self.timers.clone();
        for (id, claimed) in &self.claimed {
            if timers.contains_key(id) {
                continue;
            }
            if lease_of(id)? == Some(claimed.lease_until_ms) {
                timers.insert(id.clone(), claimed.then.clone());
            }
        }
        Ok(timers)
    }
}

/// What one stored entry costs against a plugin's byte quota beyond its key and value: the
/// bookkeeping every store pays per row (index entries, map nodes). Charging it means a
/// million one-byte keys cost what they really cost, not a million bytes.
pub const ENTRY_OVERHEAD_BYTES: u64 = 64;

/// The bytes one key-value entry is charged.
pub fn entry_bytes(key: &str, value: &[u8]) -> u64 {
    key.len() as u64 + value.len() as u64 + ENTRY_OVERHEAD_BYTES
}

/// A plugin's persistent state quota, enforced by [`StateStore::commit`]. A commit that
/// would take a plugin past a quota is refused with [`QuotaExceeded`] and nothing of it is
/// applied; a commit that lowers usage is always allowed, so a plugin over a lowered quota
/// can still delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Most keys the plugin may hold.
    pub max_keys: u64,
    /// Most bytes its keys and values may take, [`ENTRY_OVERHEAD_BYTES`] per entry included.
    pub max_bytes: u64,
    /// Most timers it may have scheduled.
    pub max_timers: u64,
}

impl Quota {
    /// No limits: for writes the host makes itself (rescheduling a failed timer).
    pub const UNLIMITED: Quota = Quota {
        max_keys: u64::MAX,
        max_bytes: u64::MAX,
        max_timers: u64::MAX,
    };
}

/// Storage of plugin state and timers, implemented by the homeserver (a durable store) or by
/// [`MemoryStore`]. Implementations must be safe to call from many threads; `commit` must apply
/// a batch atomically and enforce the [`Quota`] it is given.
pub trait StateStore: Send + Sync {
    /// The value of `key` for `plugin`, with its version.
    fn get(&self, plugin: &str, key: &str) -> Result<Option<Entry>, StoreError>;
    /// The plugin instances that have state, ascending (for audits and exports).
    fn plugins(&self) -> Result<Vec<String>, StoreError>;
    /// The first `limit` keys of `plugin` starting with `prefix` and, with `after`, sorting
    /// after it (byte order), ascending.
    fn list(
        &self,
        plugin: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError>;
    /// The timer `id` of `plugin`, if scheduled.
    fn timer(&self, plugin: &str, id: &str) -> Result<Option<Timer>, StoreError>;
    /// Claim at most `limit` timers of the given plugins that are due at `now_ms` (due time
    /// at or before it) and not leased, ordered by due time, then plugin, then id; timers of
    /// other plugins are skipped without counting against `limit`. Each claimed timer is
    /// leased until `lease_until_ms`: no other caller, in this process or another sharing the
    /// store, claims it before then. The lease ends when a commit writes or cancels the timer
    /// (the normal end of its handling), or when it expires because the process handling it
    /// died: the timer is then claimed again. Timers fire at least once, exactly once unless
    /// a process dies mid-way.
    fn claim_timers(
        &self,
        now_ms: u64,
        plugins: &[&str],
        limit: usize,
        lease_until_ms: u64,
    ) -> Result<Vec<Timer>, StoreError>;
    /// Apply one call's transaction atomically: nothing of it if a key it read has another
    /// version now or a listing would answer differently (a [`StoreError`] wrapping
    /// [`Conflict`]), or if its writes would take `plugin` past `quota` (wrapping
    /// [`QuotaExceeded`](crate::QuotaExceeded)).
    /// Return the ids the transaction's actions got in the outbox, in order.
    fn commit(
        &self,
        plugin: &str,
        txn: &Transaction,
        quota: &Quota,
    ) -> Result<Vec<u64>, StoreError>;
    /// Claim at most `limit` outbox actions not acknowledged and not leased at `now_ms`, oldest
    /// first, and lease them until `lease_until_ms` (claimed once across processes).
    fn claim_actions(
        &self,
        now_ms: u64,
        limit: usize,
        lease_until_ms: u64,
    ) -> Result<Vec<OutboxEntry>, StoreError>;
    /// Acknowledge actions carried out: they leave the outbox. Unknown ids are ignored.
    fn ack_actions(&self, ids: &[u64]) -> Result<(), StoreError>;
}

/// A plugin's usage (keys, bytes with the per-entry overhead, timers), kept by every store
/// and checked against the quota at commit.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Usage {
    pub(crate) keys: u64,
    pub(crate) bytes: u64,
    pub(crate) timers: u64,
}

impl Usage {
    /// The usage after writing `kv` and `timers`, given each key's stored value length and
    /// whether each timer exists now (every store asks its own rows).
    pub(crate) fn after(
        &self,
        kv: &BTreeMap<String, Option<Vec<u8>>>,
        timers: &BTreeMap<String, Option<ScheduledTimer>>,
        mut stored_len: impl FnMut(&str) -> Result<Option<u64>, StoreError>,
        mut timer_exists: impl FnMut(&str) -> Result<bool, StoreError>,
    ) -> Result<Usage, StoreError> {
        let mut after = *self;
        for (key, value) in kv {
            if let Some(len) = stored_len(key)? {
                after.keys = after.keys.saturating_sub(1);
                after.bytes = after
                    .bytes
                    .saturating_sub(entry_bytes(key, &[]).saturating_add(len));
            }
            if let Some(new) = value {
                after.keys += 1;
                after.bytes += entry_bytes(key, new);
            }
        }
        for (id, timer) in timers {
            if timer_exists(id)? {
                after.timers = after.timers.saturating_sub(1);
            }
            if timer.is_some() {
                after.timers += 1;
            }
        }
        Ok(after)
    }

    /// Refuse usage `self` (after a commit) that passes `quota` and grew from `before`.
    pub(crate) fn check(&self, before: &Usage, quota: &Quota) -> Result<(), QuotaExceeded> {
        for (what, used, was, limit) in [
            ("keys", self.keys, before.keys, quota.max_keys),
            ("bytes", self.bytes, before.bytes, quota.max_bytes),
            ("timers", self.timers, before.timers, quota.max_timers),
        ] {
            if used > limit && used > was {
                return Err(QuotaExceeded { what, used, limit });
            }
        }
        Ok(())
    }
}

/// Open the store a URL names: `sqlite:PATH` (or a path ending in `.db`/`.sqlite`) for
/// [`SqliteStore`], `postgresql://...` or `postgres://...` for [`PostgresStore`]. The one
/// spelling operators use everywhere a store is named (the CLI, the policy-set file).
///
/// ```
/// let dir = std::env::temp_dir().join(format!("mxpolicy-open-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let url = format!("sqlite:{}", dir.join("state.db").display());
/// assert!(mxpolicy_host::open_store(&url).is_ok());
/// assert!(mxpolicy_host::open_store("redis://localhost").is_err());
/// # std::fs::remove_dir_all(&dir).ok();
/// ```
pub fn open_store(url: &str) -> Result<std::sync::Arc<dyn StateStore>, StoreError> {
    if url.starts_with("postgresql://") || url.starts_with("postgres://") {
        return Ok(std::sync::Arc::new(PostgresStore::connect(url)?));
    }
    let path = url
        .strip_prefix("sqlite:")
        .or_else(|| (url.ends_with(".db") || url.ends_with(".sqlite")).then_some(url));
    match path {
        Some(path) if !path.is_empty() => Ok(std::sync::Arc::new(SqliteStore::open(path)?)),
        _ => Err(StoreError::new(format!(
            "unknown store {url:?}: use sqlite:PATH or postgresql://USER@HOST/DB"
        ))),
    }
}
