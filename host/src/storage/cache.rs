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
}

impl ReadCache {
    pub(crate) fn new() -> Self {
        Self {
            inner: Mutex::new(Inner {
                rows: HashMap::new(),
                data_version: i64::MIN,
                checked: Instant::now(),
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
    ) -> Option<Option<Entry>> {
        let mut inner = self.lock();
        if inner.checked.elapsed() >= RECHECK {
            match data_version() {
                Some(v) if v == inner.data_version => {}
                Some(v) => {
                    inner.rows.clear();
                    inner.data_version = v;
                }
                None => inner.rows.clear(),
            }
            inner.checked = Instant::now();
        }
        inner
            .rows
            .get(&(plugin.to_owned(), key.to_owned()))
            .cloned()
    }

    pub(crate) fn put(&self, plugin: &str, key: &str, row: Option<Entry>) {
        let mut inner = self.lock();
        if inner.rows.len() >= MAX_ENTRIES {
            inner.rows.clear();
        }
        inner.rows.insert((plugin.to_owned(), key.to_owned()), row);
    }

    /// Forget the keys a commit wrote.
    pub(crate) fn forget<'a>(&self, plugin: &str, keys: impl Iterator<Item = &'a String>) {
        let mut inner = self.lock();
        for key in keys {
            inner.rows.remove(&(plugin.to_owned(), key.clone()));
        }
    }

    /// Forget everything (after a conflict).
    pub(crate) fn clear(&self) {
        self.lock().rows.clear();
    }
}
