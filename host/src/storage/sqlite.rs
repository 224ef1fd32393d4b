//! [`SqliteStore`]: the embedded durable [`StateStore`]. One file, WAL mode, rusqlite with the
//! bundled SQLite (nothing to install).
//!
//! Every commit is one `BEGIN IMMEDIATE` transaction: it validates the call's reads against the
//! stored versions, checks the quota against the usage table, and applies the writes, or does
//! nothing at all. With `synchronous = FULL` a commit that returned survives a crash of the
//! process or the machine. Several processes may open the same file (SQLite serializes their
//! writers); for many homeserver workers, use PostgreSQL.

use std::{
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{
    Conflict, Entry, OutboxEntry, Quota, ScheduledTimer, StateStore, Timer, Transaction, Usage,
    cache::ReadCache,
};
use crate::error::StoreError;

/// The schema version this build creates and reads.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS mxpolicy_schema (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS mxpolicy_kv (
    plugin TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (plugin, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS mxpolicy_timers (
    plugin TEXT NOT NULL,
    id TEXT NOT NULL,
    due_ms INTEGER NOT NULL,
    payload BLOB NOT NULL,
    attempts INTEGER NOT NULL,
    lease_until INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (plugin, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS mxpolicy_timers_due ON mxpolicy_timers (plugin, due_ms, id);
CREATE TABLE IF NOT EXISTS mxpolicy_usage (
    plugin TEXT PRIMARY KEY,
    keys INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    timers INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS mxpolicy_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    plugin TEXT NOT NULL,
    action TEXT NOT NULL,
    lease_until INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS mxpolicy_versions (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    last INTEGER NOT NULL
);
INSERT OR IGNORE INTO mxpolicy_versions (id, last) VALUES (0, 0);
";

/// A [`StateStore`] in one SQLite file.
///
/// ```
/// use mxpolicy_host::{SqliteStore, StateStore};
/// let dir = std::env::temp_dir().join(format!("mxpolicy-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let store = SqliteStore::open(dir.join("state.db")).unwrap();
/// assert_eq!(store.get("consent", "user/@a:hs").unwrap(), None);
/// # std::fs::remove_dir_all(&dir).ok();
/// ```
pub struct SqliteStore {
    path: PathBuf,
    /// Open connections, taken one per operation (SQLite connections are not `Sync`).
    pool: Mutex<Vec<Connection>>,
    /// A connection that never writes: its `PRAGMA data_version` changes when any other
    /// connection (of this process or another) commits, which is what empties the cache.
    watch: Mutex<Connection>,
    cache: ReadCache,
}

fn err(e: rusqlite::Error) -> StoreError {
    StoreError::new(e)
}

/// A u64 as SQLite's i64 (versions, times and sizes never reach 2^63 in practice; larger
/// values saturate rather than wrap).
fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn uint(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl SqliteStore {
    /// Open (or create) the store at `path`, creating or checking its schema.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_owned();
        let watch = Self::connect_to(&path)?;
        let store = Self {
            path,
            pool: Mutex::new(Vec::new()),
            watch: Mutex::new(watch),
            cache: ReadCache::new(),
        };
        let conn = store.connect()?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        let version: Option<i64> = conn
            .query_row("SELECT version FROM mxpolicy_schema", [], |r| r.get(0))
            .optional()
            .map_err(err)?;
        match version {
            None => {
                conn.execute(
                    "INSERT INTO mxpolicy_schema (version) VALUES (?1)",
                    [SCHEMA_VERSION],
                )
                .map_err(err)?;
            }
            Some(SCHEMA_VERSION) => {}
            Some(other) => {
                return Err(StoreError::new(format!(
                    "{}: schema version {other}, this build reads version {SCHEMA_VERSION}",
                    store.path.display()
                )));
            }
        }
        store.put(conn);
        Ok(store)
    }

    fn connect(&self) -> Result<Connection, StoreError> {
        Self::connect_to(&self.path)
    }

    fn connect_to(path: &Path) -> Result<Connection, StoreError> {
        let conn = Connection::open(path)
            .map_err(|e| StoreError::new(format!("cannot open {}: {e}", path.display())))?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        Ok(conn)
    }

    fn pool(&self) -> MutexGuard<'_, Vec<Connection>> {
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take(&self) -> Result<Connection, StoreError> {
        let pooled = self.pool().pop();
        match pooled {
            Some(conn) => Ok(conn),
            None => self.connect(),
        }
    }

    fn put(&self, conn: Connection) {
        let mut pool = self.pool();
        if pool.len() < 8 {
            pool.push(conn);
        }
    }

    /// Run `f` on a pooled connection.
    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.take()?;
        let result = f(&mut conn);
        self.put(conn);
        result
    }
}

fn list(
    conn: &Connection,
    plugin: &str,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<String>, StoreError> {
    // `key >= prefix` walks the primary key in order; the prefix test stops the walk.
    let mut stmt = conn
        .prepare_cached(
            "SELECT key FROM mxpolicy_kv WHERE plugin = ?1 AND key >= ?2 \
             AND (?4 IS NULL OR key > ?4) ORDER BY key LIMIT ?3",
        )
        .map_err(err)?;
    let mut keys = Vec::new();
    let mut rows = stmt
        .query(params![plugin, prefix, int(limit as u64), after])
        .map_err(err)?;
    while let Some(row) = rows.next().map_err(err)? {
        let key: String = row.get(0).map_err(err)?;
        if !key.starts_with(prefix) {
            break;
        }
        keys.push(key);
    }
    Ok(keys)
}

fn timer_row(plugin: &str, row: &rusqlite::Row<'_>) -> rusqlite::Result<Timer> {
    Ok(Timer {
        plugin: plugin.to_owned(),
        id: row.get(0)?,
        due_ms: uint(row.get(1)?),
        payload: row.get(2)?,
        attempts: u32::try_from(row.get::<_, i64>(3)?).unwrap_or(u32::MAX),
    })
}

impl StateStore for SqliteStore {
    fn get(&self, plugin: &str, key: &str) -> Result<Option<Entry>, StoreError> {
        let data_version = || {
            self.watch
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .query_row("PRAGMA data_version", [], |r| r.get::<_, i64>(0))
                .ok()
        };
        let miss = match self.cache.get(plugin, key, data_version) {
            Ok(row) => return Ok(row),
            Err(miss) => miss,
        };
        let row = self.with(|conn| {
            conn.prepare_cached(
                "SELECT value, version FROM mxpolicy_kv WHERE plugin = ?1 AND key = ?2",
            )
            .map_err(err)?
            .query_row(params![plugin, key], |r| {
                Ok(Entry {
                    value: r.get(0)?,
                    version: uint(r.get(1)?),
                })
            })
            .optional()
            .map_err(err)
        })?;
        self.cache.put(miss, plugin, key, row.clone());
        Ok(row)
    }

    fn plugins(&self) -> Result<Vec<String>, StoreError> {
        self.with(|conn| {
            let mut stmt = conn
                .prepare_cached("SELECT DISTINCT plugin FROM mxpolicy_kv ORDER BY plugin")
                .map_err(err)?;
            let rows = stmt.query_map([], |r| r.get(0)).map_err(err)?;
            rows.collect::<Result<Vec<String>, _>>().map_err(err)
        })
    }

    fn list(
        &self,
        plugin: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        self.with(|conn| list(conn, plugin, prefix, after, limit))
    }

    fn timer(&self, plugin: &str, id: &str) -> Result<Option<Timer>, StoreError> {
        self.with(|conn| {
            conn.prepare_cached(
                "SELECT id, due_ms, payload, attempts FROM mxpolicy_timers \
                 WHERE plugin = ?1 AND id = ?2",
            )
            .map_err(err)?
            .query_row(params![plugin, id], |r| timer_row(plugin, r))
            .optional()
            .map_err(err)
        })
    }

    fn claim_timers(
        &self,
        now_ms: u64,
        plugins: &[&str],
        limit: usize,
        lease_until_ms: u64,
    ) -> Result<Vec<Timer>, StoreError> {
        self.with(|conn| {
            // One writer transaction: select and lease together, so two processes sharing the
            // file never claim the same timer.
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(err)?;
            let mut due = Vec::new();
            {
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT id, due_ms, payload, attempts FROM mxpolicy_timers \
                         WHERE plugin = ?1 AND due_ms <= ?2 AND lease_until <= ?2 \
                         ORDER BY due_ms, id LIMIT ?3",
                    )
                    .map_err(err)?;
                for plugin in plugins {
                    let rows = stmt
                        .query_map(params![plugin, int(now_ms), int(limit as u64)], |r| {
                            timer_row(plugin, r)
                        })
                        .map_err(err)?;
                    for timer in rows {
                        due.push(timer.map_err(err)?);
                    }
                }
            }
            due.sort_by(|a, b| (a.due_ms, &a.plugin, &a.id).cmp(&(b.due_ms, &b.plugin, &b.id)));
            due.truncate(limit);
            {
                let mut lease = tx
                    .prepare_cached(
                        "UPDATE mxpolicy_timers SET lease_until = ?3 WHERE plugin = ?1 AND id = ?2",
                    )
                    .map_err(err)?;
                for t in &due {
                    lease
                        .execute(params![t.plugin, t.id, int(lease_until_ms)])
                        .map_err(err)?;
                }
            }
            tx.commit().map_err(err)?;
            Ok(due)
        })
    }

    fn claim_actions(
        &self,
        now_ms: u64,
        limit: usize,
        lease_until_ms: u64,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        self.with(|conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(err)?;
            let claimed = {
                let mut stmt = tx
                    .prepare_cached(
                        "UPDATE mxpolicy_outbox SET lease_until = ?3 WHERE id IN ( \
                         SELECT id FROM mxpolicy_outbox WHERE lease_until <= ?1 \
                         ORDER BY id LIMIT ?2) RETURNING id, plugin, action",
                    )
                    .map_err(err)?;
                let rows = stmt
                    .query_map(
                        params![int(now_ms), int(limit as u64), int(lease_until_ms)],
                        |r| {
                            Ok(OutboxEntry {
                                id: uint(r.get(0)?),
                                plugin: r.get(1)?,
                                action: r.get(2)?,
                            })
                        },
                    )
                    .map_err(err)?;
                let mut claimed = rows.collect::<Result<Vec<_>, _>>().map_err(err)?;
                claimed.sort_by_key(|e| e.id);
                claimed
            };
            tx.commit().map_err(err)?;
            Ok(claimed)
        })
    }

    fn ack_actions(&self, ids: &[u64]) -> Result<(), StoreError> {
        self.with(|conn| {
            let tx = conn.transaction().map_err(err)?;
            {
                let mut del = tx
                    .prepare_cached("DELETE FROM mxpolicy_outbox WHERE id = ?1")
                    .map_err(err)?;
                for id in ids {
                    del.execute([int(*id)]).map_err(err)?;
                }
            }
            tx.commit().map_err(err)
        })
    }

    fn commit(
        &self,
        plugin: &str,
        txn: &Transaction,
        quota: &Quota,
    ) -> Result<Vec<u64>, StoreError> {
        // Whatever the outcome, the keys it meant to write are not trusted from the cache any
        // more; after a failure nothing is (a conflict's re-run must read fresh rows).
        self.cache.forget(plugin, txn.changes.kv.keys());
        let result = self.commit_rows(plugin, txn, quota);
        match &result {
            Ok(_) => self.cache.forget(plugin, txn.changes.kv.keys()),
            Err(_) => self.cache.clear(),
        }
        result
    }
}

impl SqliteStore {
    fn commit_rows(
        &self,
        plugin: &str,
        txn: &Transaction,
        quota: &Quota,
    ) -> Result<Vec<u64>, StoreError> {
        self.with(|conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(err)?;
            // Validate the reads.
            {
                let mut version = tx
                    .prepare_cached(
                        "SELECT version FROM mxpolicy_kv WHERE plugin = ?1 AND key = ?2",
                    )
                    .map_err(err)?;
                for (key, seen) in &txn.reads {
                    let now: Option<i64> = version
                        .query_row(params![plugin, key], |r| r.get(0))
                        .optional()
                        .map_err(err)?;
                    if now.map_or(0, uint) != *seen {
                        return Err(StoreError::new(Conflict { key: key.clone() }));
                    }
                }
            }
            for read in &txn.lists {
                if list(&tx, plugin, &read.prefix, read.after.as_deref(), read.limit)? != read.keys
                {
                    return Err(StoreError::new(Conflict {
                        key: format!("{}*", read.prefix),
                    }));
                }
            }
            let timer_writes = txn.changes.effective_timers(|id| {
                tx.query_row(
                    "SELECT lease_until FROM mxpolicy_timers WHERE plugin = ?1 AND id = ?2",
                    params![plugin, id],
                    |r| r.get::<_, i64>(0),
                )
                .optional()
                .map(|lease| lease.map(uint))
                .map_err(err)
            })?;
            // Usage after the commit, checked before anything is written.
            let (keys, bytes, timers): (i64, i64, i64) = tx
                .query_row(
                    "SELECT keys, bytes, timers FROM mxpolicy_usage WHERE plugin = ?1",
                    [plugin],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
                .map_err(err)?
                .unwrap_or((0, 0, 0));
            let before = Usage {
                keys: uint(keys),
                bytes: uint(bytes),
                timers: uint(timers),
            };
            let after = {
                let mut old_value = tx
                    .prepare_cached(
                        "SELECT length(value) FROM mxpolicy_kv WHERE plugin = ?1 AND key = ?2",
                    )
                    .map_err(err)?;
                let mut old_timer = tx
                    .prepare_cached("SELECT 1 FROM mxpolicy_timers WHERE plugin = ?1 AND id = ?2")
                    .map_err(err)?;
                before.after(
                    &txn.changes.kv,
                    &timer_writes,
                    |key| {
                        old_value
                            .query_row(params![plugin, key], |r| r.get::<_, i64>(0))
                            .optional()
                            .map(|len| len.map(uint))
                            .map_err(err)
                    },
                    |id| old_timer.exists(params![plugin, id]).map_err(err),
                )?
            };
            after.check(&before, quota).map_err(StoreError::new)?;
            // Apply.
            let mut version: i64 = tx
                .query_row("SELECT last FROM mxpolicy_versions WHERE id = 0", [], |r| {
                    r.get(0)
                })
                .map_err(err)?;
            for (key, value) in &txn.changes.kv {
                match value {
                    Some(v) => {
                        version += 1;
                        tx.prepare_cached(
                            "INSERT INTO mxpolicy_kv (plugin, key, value, version) \
                             VALUES (?1, ?2, ?3, ?4) ON CONFLICT (plugin, key) \
                             DO UPDATE SET value = excluded.value, version = excluded.version",
                        )
                        .map_err(err)?
                        .execute(params![plugin, key, v, version])
                        .map_err(err)?;
                    }
                    None => {
                        tx.prepare_cached("DELETE FROM mxpolicy_kv WHERE plugin = ?1 AND key = ?2")
                            .map_err(err)?
                            .execute(params![plugin, key])
                            .map_err(err)?;
                    }
                }
            }
            for (id, timer) in &timer_writes {
                match timer {
                    Some(ScheduledTimer {
                        due_ms,
                        payload,
                        attempts,
                    }) => {
                        tx.prepare_cached(
                            "INSERT INTO mxpolicy_timers (plugin, id, due_ms, payload, attempts) \
                             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (plugin, id) DO UPDATE SET \
                             due_ms = excluded.due_ms, payload = excluded.payload, \
                             attempts = excluded.attempts, lease_until = 0",
                        )
                        .map_err(err)?
                        .execute(params![
                            plugin,
                            id,
                            int(*due_ms),
                            payload,
                            i64::from(*attempts)
                        ])
                        .map_err(err)?;
                    }
                    None => {
                        tx.prepare_cached(
                            "DELETE FROM mxpolicy_timers WHERE plugin = ?1 AND id = ?2",
                        )
                        .map_err(err)?
                        .execute(params![plugin, id])
                        .map_err(err)?;
                    }
                }
            }
            tx.execute(
                "UPDATE mxpolicy_versions SET last = ?1 WHERE id = 0",
                [version],
            )
            .map_err(err)?;
            tx.execute(
                "INSERT INTO mxpolicy_usage (plugin, keys, bytes, timers) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (plugin) DO UPDATE SET keys = excluded.keys, \
                 bytes = excluded.bytes, timers = excluded.timers",
                params![plugin, int(after.keys), int(after.bytes), int(after.timers)],
            )
            .map_err(err)?;
            let mut ids = Vec::with_capacity(txn.actions.len());
            for action in &txn.actions {
                tx.prepare_cached(
                    "INSERT INTO mxpolicy_outbox (plugin, action, lease_until) VALUES (?1, ?2, ?3)",
                )
                .map_err(err)?
                .execute(params![plugin, action, int(txn.actions_lease_until_ms)])
                .map_err(err)?;
                ids.push(uint(tx.last_insert_rowid()));
            }
            tx.commit().map_err(err)?;
            Ok(ids)
        })
    }
}
