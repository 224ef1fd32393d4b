//! [`PostgresStore`]: the [`StateStore`] for a homeserver with several worker processes (how
//! large Synapse deployments run): every process opens the same database and sees every
//! commit of the others at its next read (there is no cache to invalidate).
//!
//! A commit runs in one transaction holding a transaction-scoped advisory lock on the
//! plugin's name, so the commits of one plugin are serialized across processes: validation of
//! the reads (versions from one sequence, so they never repeat) and the writes happen with no
//! other commit of that plugin in between, which also covers keys that were absent when read
//! (row locks could not). Commits of different plugins run in parallel. The schema is created
//! and checked by the store itself, with a schema version table.

use std::sync::{Mutex, MutexGuard};

use postgres::{Client, GenericClient, NoTls};

use super::{
    Conflict, Entry, OutboxEntry, Quota, ScheduledTimer, StateStore, Timer, Transaction, Usage,
};
use crate::error::StoreError;

/// The schema version this build creates and reads.
const SCHEMA_VERSION: i32 = 1;

/// Serializes schema creation when several processes start at once.
const SCHEMA_LOCK: i64 = 0x6d78_706f_6c69; // "mxpoli"

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS mxpolicy_schema (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS mxpolicy_kv (
    plugin TEXT NOT NULL,
    key TEXT COLLATE "C" NOT NULL,
    value BYTEA NOT NULL,
    version BIGINT NOT NULL,
    PRIMARY KEY (plugin, key)
);
CREATE TABLE IF NOT EXISTS mxpolicy_timers (
    plugin TEXT NOT NULL,
    id TEXT COLLATE "C" NOT NULL,
    due_ms BIGINT NOT NULL,
    payload BYTEA NOT NULL,
    attempts INTEGER NOT NULL,
    lease_until BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (plugin, id)
);
CREATE INDEX IF NOT EXISTS mxpolicy_timers_due ON mxpolicy_timers (plugin, due_ms, id);
CREATE TABLE IF NOT EXISTS mxpolicy_usage (
    plugin TEXT PRIMARY KEY,
    keys BIGINT NOT NULL,
    bytes BIGINT NOT NULL,
    timers BIGINT NOT NULL
);
CREATE SEQUENCE IF NOT EXISTS mxpolicy_versions;
CREATE TABLE IF NOT EXISTS mxpolicy_outbox (
    id BIGSERIAL PRIMARY KEY,
    plugin TEXT NOT NULL,
    action TEXT NOT NULL,
    lease_until BIGINT NOT NULL
);
"#;

/// A [`StateStore`] in a PostgreSQL database, shared by any number of processes.
///
/// ```no_run
/// use mxpolicy_host::PostgresStore;
/// let store = PostgresStore::connect("postgresql://synapse@127.0.0.1/synapse")?;
/// # Ok::<(), mxpolicy_host::StoreError>(())
/// ```
pub struct PostgresStore {
    config: postgres::Config,
    /// Idle connections; a connection that saw an error is dropped, not pooled.
    pool: Mutex<Vec<Conn>>,
}

/// A pooled connection and its prepared read (the hot path: one round trip, not two).
struct Conn {
    client: Client,
    get: Option<postgres::Statement>,
}

const GET: &str = "SELECT value, version FROM mxpolicy_kv WHERE plugin = $1 AND key = $2";

fn err(e: postgres::Error) -> StoreError {
    StoreError::new(e)
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn uint(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl PostgresStore {
    /// Connect to the database at `url` (a libpq connection string or
    /// `postgresql://` URL), creating or checking the schema.
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        let config: postgres::Config = url
            .parse()
            .map_err(|e| StoreError::new(format!("invalid PostgreSQL URL: {e}")))?;
        let store = Self {
            config,
            pool: Mutex::new(Vec::new()),
        };
        let mut client = store.open()?;
        let mut tx = client.transaction().map_err(err)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
            .map_err(err)?;
        tx.batch_execute(SCHEMA).map_err(err)?;
        let version: Option<i32> = tx
            .query_opt("SELECT version FROM mxpolicy_schema", &[])
            .map_err(err)?
            .map(|r| r.get(0));
        match version {
            None => {
                tx.execute(
                    "INSERT INTO mxpolicy_schema (version) VALUES ($1)",
                    &[&SCHEMA_VERSION],
                )
                .map_err(err)?;
            }
            Some(SCHEMA_VERSION) => {}
            Some(other) => {
                return Err(StoreError::new(format!(
                    "database schema version {other}, this build reads version {SCHEMA_VERSION}"
                )));
            }
        }
        tx.commit().map_err(err)?;
        store.put(Conn { client, get: None });
        Ok(store)
    }

    fn open(&self) -> Result<Client, StoreError> {
        self.config
            .connect(NoTls)
            .map_err(|e| StoreError::new(format!("cannot connect to PostgreSQL: {e}")))
    }

    fn pool(&self) -> MutexGuard<'_, Vec<Conn>> {
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn put(&self, conn: Conn) {
        let mut pool = self.pool();
        if pool.len() < 8 && !conn.client.is_closed() {
            pool.push(conn);
        }
    }

    /// Run `f` on a pooled connection; a connection whose operation failed is reused only if
    /// it still answers.
    fn with_conn<T>(
        &self,
        f: impl FnOnce(&mut Conn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let pooled = self.pool().pop();
        let mut conn = match pooled {
            Some(c) => c,
            None => Conn {
                client: self.open()?,
                get: None,
            },
        };
        let result = f(&mut conn);
        if result.is_ok()
            || conn
                .client
                .is_valid(std::time::Duration::from_secs(1))
                .is_ok()
        {
            self.put(conn);
        }
        result
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.with_conn(|conn| f(&mut conn.client))
    }
}

fn list(
    db: &mut impl GenericClient,
    plugin: &str,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<String>, StoreError> {
    let rows = db
        .query(
            "SELECT key FROM mxpolicy_kv WHERE plugin = $1 AND key >= $2 \
             AND ($4::text IS NULL OR key > $4) ORDER BY key LIMIT $3",
            &[&plugin, &prefix, &int(limit as u64), &after],
        )
        .map_err(err)?;
    Ok(rows
        .iter()
        .map(|r| r.get::<_, String>(0))
        .take_while(|k| k.starts_with(prefix))
        .collect())
}

fn timer_from(plugin: &str, r: &postgres::Row) -> Timer {
    Timer {
        plugin: plugin.to_owned(),
        id: r.get(0),
        due_ms: uint(r.get(1)),
        payload: r.get(2),
        attempts: u32::try_from(r.get::<_, i32>(3)).unwrap_or(0),
    }
}

impl StateStore for PostgresStore {
    fn get(&self, plugin: &str, key: &str) -> Result<Option<Entry>, StoreError> {
        self.with_conn(|conn| {
            let stmt = match &conn.get {
                Some(stmt) => stmt.clone(),
                None => {
                    let stmt = conn.client.prepare(GET).map_err(err)?;
                    conn.get = Some(stmt.clone());
                    stmt
                }
            };
            Ok(conn
                .client
                .query_opt(&stmt, &[&plugin, &key])
                .map_err(err)?
                .map(|r| Entry {
                    value: r.get(0),
                    version: uint(r.get(1)),
                }))
        })
    }

    fn plugins(&self) -> Result<Vec<String>, StoreError> {
        self.with(|db| {
            Ok(db
                .query(
                    "SELECT DISTINCT plugin FROM mxpolicy_kv ORDER BY plugin",
                    &[],
                )
                .map_err(err)?
                .iter()
                .map(|r| r.get(0))
                .collect())
        })
    }

    fn list(
        &self,
        plugin: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        self.with(|db| list(db, plugin, prefix, after, limit))
    }

    fn timer(&self, plugin: &str, id: &str) -> Result<Option<Timer>, StoreError> {
        self.with(|db| {
            Ok(db
                .query_opt(
                    "SELECT id, due_ms, payload, attempts FROM mxpolicy_timers \
                     WHERE plugin = $1 AND id = $2",
                    &[&plugin, &id],
                )
                .map_err(err)?
                .map(|r| timer_from(plugin, &r)))
        })
    }

    fn claim_timers(
        &self,
        now_ms: u64,
        plugins: &[&str],
        limit: usize,
        lease_until_ms: u64,
    ) -> Result<Vec<Timer>, StoreError> {
        self.with(|db| {
            // `FOR UPDATE SKIP LOCKED`: concurrent claimers in other processes skip the rows
            // this one is leasing instead of waiting for them or taking them too.
            let rows = db
                .query(
                    "UPDATE mxpolicy_timers t SET lease_until = $4 FROM ( \
                         SELECT plugin, id FROM mxpolicy_timers \
                         WHERE plugin = ANY($1) AND due_ms <= $2 AND lease_until <= $2 \
                         ORDER BY due_ms, plugin, id LIMIT $3 FOR UPDATE SKIP LOCKED) c \
                     WHERE t.plugin = c.plugin AND t.id = c.id \
                     RETURNING t.id, t.due_ms, t.payload, t.attempts, t.plugin",
                    &[
                        &plugins,
                        &int(now_ms),
                        &int(limit as u64),
                        &int(lease_until_ms),
                    ],
                )
                .map_err(err)?;
            let mut due: Vec<Timer> = rows
                .iter()
                .map(|r| timer_from(r.get::<_, &str>(4), r))
                .collect();
            due.sort_by(|a, b| (a.due_ms, &a.plugin, &a.id).cmp(&(b.due_ms, &b.plugin, &b.id)));
            Ok(due)
        })
    }

    fn claim_actions(
        &self,
        now_ms: u64,
        limit: usize,
        lease_until_ms: u64,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        self.with(|db| {
            let rows = db
                .query(
                    "UPDATE mxpolicy_outbox o SET lease_until = $3 FROM ( \
                         SELECT id FROM mxpolicy_outbox WHERE lease_until <= $1 \
                         ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED) c \
                     WHERE o.id = c.id RETURNING o.id, o.plugin, o.action",
                    &[&int(now_ms), &int(limit as u64), &int(lease_until_ms)],
                )
                .map_err(err)?;
            let mut claimed: Vec<OutboxEntry> = rows
                .iter()
                .map(|r| OutboxEntry {
                    id: uint(r.get(0)),
                    plugin: r.get(1),
                    action: r.get(2),
                })
                .collect();
            claimed.sort_by_key(|e| e.id);
            Ok(claimed)
        })
    }

    fn ack_actions(&self, ids: &[u64]) -> Result<(), StoreError> {
        let ids: Vec<i64> = ids.iter().map(|id| int(*id)).collect();
        self.with(|db| {
            db.execute("DELETE FROM mxpolicy_outbox WHERE id = ANY($1)", &[&ids])
                .map_err(err)?;
            Ok(())
        })
    }

    fn commit(
        &self,
        plugin: &str,
        txn: &Transaction,
        quota: &Quota,
    ) -> Result<Vec<u64>, StoreError> {
        self.with(|db| {
            let mut tx = db.transaction().map_err(err)?;
            tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&plugin])
                .map_err(err)?;
            for (key, seen) in &txn.reads {
                let now: Option<i64> = tx
                    .query_opt(
                        "SELECT version FROM mxpolicy_kv WHERE plugin = $1 AND key = $2",
                        &[&plugin, key],
                    )
                    .map_err(err)?
                    .map(|r| r.get(0));
                if now.map_or(0, uint) != *seen {
                    return Err(StoreError::new(Conflict { key: key.clone() }));
                }
            }
            for read in &txn.lists {
                if list(
                    &mut tx,
                    plugin,
                    &read.prefix,
                    read.after.as_deref(),
                    read.limit,
                )? != read.keys
                {
                    return Err(StoreError::new(Conflict {
                        key: format!("{}*", read.prefix),
                    }));
                }
            }
            let timer_writes = txn.changes.effective_timers(|id| {
                Ok(tx
                    .query_opt(
                        "SELECT lease_until FROM mxpolicy_timers WHERE plugin = $1 AND id = $2",
                        &[&plugin, &id],
                    )
                    .map_err(err)?
                    .map(|r| uint(r.get(0))))
            })?;
            let before = tx
                .query_opt(
                    "SELECT keys, bytes, timers FROM mxpolicy_usage WHERE plugin = $1",
                    &[&plugin],
                )
                .map_err(err)?
                .map_or_else(Usage::default, |r| Usage {
                    keys: uint(r.get::<_, i64>(0)),
                    bytes: uint(r.get::<_, i64>(1)),
                    timers: uint(r.get::<_, i64>(2)),
                });
            // Which timers exist, asked first: the closures below cannot both hold `tx`.
            let mut existing = std::collections::BTreeSet::new();
            for id in timer_writes.keys() {
                let found = tx
                    .query_opt(
                        "SELECT 1 FROM mxpolicy_timers WHERE plugin = $1 AND id = $2",
                        &[&plugin, id],
                    )
                    .map_err(err)?
                    .is_some();
                if found {
                    existing.insert(id.clone());
                }
            }
            let after = before.after(
                &txn.changes.kv,
                &timer_writes,
                |key| {
                    Ok(tx
                        .query_opt(
                            "SELECT length(value) FROM mxpolicy_kv WHERE plugin = $1 AND key = $2",
                            &[&plugin, &key],
                        )
                        .map_err(err)?
                        .map(|r| u64::try_from(r.get::<_, i32>(0)).unwrap_or(0)))
                },
                |id| Ok(existing.contains(id)),
            )?;
            after.check(&before, quota).map_err(StoreError::new)?;
            for (key, value) in &txn.changes.kv {
                match value {
                    Some(v) => tx.execute(
                        "INSERT INTO mxpolicy_kv (plugin, key, value, version) \
                         VALUES ($1, $2, $3, nextval('mxpolicy_versions')) \
                         ON CONFLICT (plugin, key) DO UPDATE SET value = EXCLUDED.value, \
                         version = EXCLUDED.version",
                        &[&plugin, key, v],
                    ),
                    None => tx.execute(
                        "DELETE FROM mxpolicy_kv WHERE plugin = $1 AND key = $2",
                        &[&plugin, key],
                    ),
                }
                .map_err(err)?;
            }
            for (id, timer) in &timer_writes {
                match timer {
                    Some(ScheduledTimer {
                        due_ms,
                        payload,
                        attempts,
                    }) => tx.execute(
                        "INSERT INTO mxpolicy_timers (plugin, id, due_ms, payload, attempts) \
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (plugin, id) DO UPDATE SET \
                         due_ms = EXCLUDED.due_ms, payload = EXCLUDED.payload, \
                         attempts = EXCLUDED.attempts, lease_until = 0",
                        &[
                            &plugin,
                            id,
                            &int(*due_ms),
                            payload,
                            &i32::try_from(*attempts).unwrap_or(i32::MAX),
                        ],
                    ),
                    None => tx.execute(
                        "DELETE FROM mxpolicy_timers WHERE plugin = $1 AND id = $2",
                        &[&plugin, id],
                    ),
                }
                .map_err(err)?;
            }
            tx.execute(
                "INSERT INTO mxpolicy_usage (plugin, keys, bytes, timers) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (plugin) DO UPDATE SET keys = EXCLUDED.keys, \
                 bytes = EXCLUDED.bytes, timers = EXCLUDED.timers",
                &[
                    &plugin,
                    &int(after.keys),
                    &int(after.bytes),
                    &int(after.timers),
                ],
            )
            .map_err(err)?;
            let mut ids = Vec::with_capacity(txn.actions.len());
            for action in &txn.actions {
                let row = tx
                    .query_one(
                        "INSERT INTO mxpolicy_outbox (plugin, action, lease_until) \
                         VALUES ($1, $2, $3) RETURNING id",
                        &[&plugin, action, &int(txn.actions_lease_until_ms)],
                    )
                    .map_err(err)?;
                ids.push(uint(row.get(0)));
            }
            tx.commit().map_err(err)?;
            Ok(ids)
        })
    }
}
