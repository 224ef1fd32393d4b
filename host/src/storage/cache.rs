//! The read cache of [`SqliteStore`](super::SqliteStore): decisions read the same few records
//! again and again (a user's consent), and a cached read costs a hash lookup instead of a
//! statement.
//!
//! How it stays true:
//! - a commit of this store removes the keys it wrote, and a refused commit (a conflict)
//!   empties the cache, so the call that re-runs reads fresh rows;
//! - commits of other connections (another process sharing the file) are noticed through
//!   SQLite's `PRAGMA data_version`, checked at most every [`RECHECK`]: a read may be that
//!   much older than another process's commit, never older. A call that writes is not
//!   affected even then: its commit validates versions against the file itself.

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use super::Entry;

/// How long a cached read may lag behind a commit of another process.
pub(crate) const RECHECK: Duration = Duration::from_millis(50);
/// Entries kept; past it the cache starts over (simple, and bounded).
const MAX_ENTRIES: usize = 100_000;

/// Cached rows: `(plugin, key)` to the row, or to `None` for a known-absent key.
pub(crate) struct ReadCache {
    inner: Mutex<Inner>,
}

struct Inner {
    rows: HashMap<(String, String), Option<Entry>>,
    data_version: i64,
    checked: Instant,
    /// Bumped by every invalidation: a row read from the file before an invalidation is not
    /// put in the cache after it (it may be older than the commit that invalidated).
    generation: u64,
}

/// What a cache miss hands back to [`ReadCache::put`]: the generation the read started in.
#[derive(Clone, Copy)]
pub(crate) struct Miss(u64);

impl ReadCache {
    pub(crate) fn new() -> Self {
        Self {
            inner: Mutex::new(Inner {
                rows: HashMap::new(),
                data_version: i64::MIN,
                checked: Instant::now(),
                generation: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached row, after emptying the cache if `data_version` (called at most every
    /// [`RECHECK`]) says another connection committed.
    pub(crate) fn get(
        &self,
        plugin: &str,
        key: &str,
        data_version: impl FnOnce() -> Option<i64>,
    ) -> Result<Option<Entry>, Miss> {
        let mut inner = self.lock();
        if inner.checked.elapsed() >= RECHECK {
            match data_version() {
                Some(v) if v == inner.data_version => {}
                Some(v) => {
                    inner.rows.clear();
                    inner.generation += 1;
                    inner.data_version = v;
                }
                None => {
                    inner.rows.clear();
                    inner.generation += 1;
                }
            }
            inner.checked = Instant::now();
        }
        match inner.rows.get(&(plugin.to_owned(), key.to_owned())) {
            Some(row) => Ok(row.clone()),
            None => Err(Miss(inner.generation)),
        }
    }

    /// Cache a row read after `miss`, unless the cache was invalidated since: such a row may
    /// be older than the commit that invalidated it.
    pub(crate) fn put(&self, miss: Miss, plugin: &str, key: &str, row: Option<Entry>) {
        let mut inner = self.lock();
        if inner.generation != miss.0 {
            return;
        }
        if inner.rows.len() >= MAX_ENTRIES {
            inner.rows.clear();
        }
        inner.rows.insert((plugin.to_owned(), key.to_owned()), row);
    }

    /// Forget the keys a commit wrote.
    pub(crate) fn forget<'a>(&self, plugin: &str, keys: impl Iterator<Item = &'a String>) {
        let mut inner = self.lock();
        inner.generation += 1;
        for key in keys {
            inner.rows.remove(&(plugin.to_owned(), key.clone()));
        }
    }

    /// Forget everything (after a conflict).
    pub(crate) fn clear(&self) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.rows.clear();
    }
}
