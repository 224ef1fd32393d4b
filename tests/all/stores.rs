//! One conformance suite for every [`StateStore`]: the same test functions run against the
//! in-memory store and SQLite (and PostgreSQL, when the durable-state issue's PostgreSQL store
//! lands). Each checks one promise of the trait's documentation.

use std::sync::atomic::{AtomicU64, Ordering};

use mxpolicy_host::{
    Changes, Conflict, ListRead, MemoryStore, PostgresStore, Quota, ScheduledTimer, SqliteStore,
    StateStore, Transaction,
};

/// The PostgreSQL server the tests use: `MXPOLICY_TEST_POSTGRES` (a URL; `scripts/test.sh`
/// starts a throwaway server and sets it when PostgreSQL is installed). Unset, the PostgreSQL
/// tests say they are skipped, except under `CI=true`, where a missing server fails them.
pub fn postgres_url() -> Option<String> {
    match std::env::var("MXPOLICY_TEST_POSTGRES") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true but MXPOLICY_TEST_POSTGRES is not set: PostgreSQL tests cannot run")
        }
        _ => {
            eprintln!("skipped: MXPOLICY_TEST_POSTGRES is not set (PostgreSQL is not installed?)");
            None
        }
    }
}

/// A fresh, empty PostgreSQL schema for one test, as a connection URL whose `search_path`
/// selects it: tests run in parallel on one server without seeing each other's rows.
pub fn postgres_schema(what: &str) -> Option<String> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let url = postgres_url()?;
    let schema = format!(
        "t_{what}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let mut admin = ::postgres::Client::connect(&url, ::postgres::NoTls).expect("connect");
    admin
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .expect("create schema");
    let sep = if url.contains('?') { '&' } else { '?' };
    Some(format!("{url}{sep}options=-c%20search_path%3D{schema}"))
}

/// A directory under the system's temp dir, removed when dropped.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(what: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("mxpolicy-{what}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

fn writes(kv: &[(&str, Option<&[u8]>)]) -> Transaction {
    let mut c = Changes::default();
    for (k, v) in kv {
        c.kv.insert((*k).into(), v.map(<[u8]>::to_vec));
    }
    Transaction::writes(c)
}

fn timer(due_ms: u64) -> Option<ScheduledTimer> {
    Some(ScheduledTimer {
        due_ms,
        payload: due_ms.to_be_bytes().to_vec(),
        attempts: 0,
    })
}

const ANY: Quota = Quota::UNLIMITED;

fn is_conflict(r: Result<Vec<u64>, mxpolicy_host::StoreError>) -> bool {
    r.is_err_and(|e| e.0.downcast_ref::<Conflict>().is_some())
}

fn reads_see_commits_and_keys_are_per_plugin(s: &dyn StateStore) {
    s.commit("a", &writes(&[("k", Some(b"1")), ("k2", Some(b""))]), &ANY)
        .unwrap();
    assert_eq!(s.get("a", "k").unwrap().unwrap().value, b"1");
    assert_eq!(s.get("a", "k2").unwrap().unwrap().value, b"");
    assert_eq!(s.get("b", "k").unwrap(), None);
    s.commit("a", &writes(&[("k", None)]), &ANY).unwrap();
    assert_eq!(s.get("a", "k").unwrap(), None);
}

fn lists_are_ordered_prefixed_and_limited(s: &dyn StateStore) {
    s.commit(
        "a",
        &writes(&[
            ("u/2", Some(b"")),
            ("u/1", Some(b"")),
            ("u/10", Some(b"")),
            ("v/1", Some(b"")),
            ("u", Some(b"")),
        ]),
        &ANY,
    )
    .unwrap();
    s.commit("b", &writes(&[("u/0", Some(b""))]), &ANY).unwrap();
    assert_eq!(s.list("a", "u/", None, 10).unwrap(), ["u/1", "u/10", "u/2"]);
    assert_eq!(s.list("a", "u/", None, 2).unwrap(), ["u/1", "u/10"]);
    assert_eq!(s.list("a", "", None, 100).unwrap().len(), 5);
    assert!(s.list("c", "", None, 10).unwrap().is_empty());
    // Pages: after a key, within the prefix.
    assert_eq!(s.list("a", "u/", Some("u/1"), 10).unwrap(), ["u/10", "u/2"]);
    assert_eq!(s.list("a", "u/", Some("u/10"), 1).unwrap(), ["u/2"]);
    assert!(s.list("a", "u/", Some("u/2"), 10).unwrap().is_empty());
    assert_eq!(
        s.list("a", "u/", Some("a"), 1).unwrap(),
        ["u/1"],
        "after before the prefix"
    );
    assert!(s.list("a", "u/", Some("zz"), 10).unwrap().is_empty());
}

fn versions_change_on_every_write_and_never_repeat(s: &dyn StateStore) {
    s.commit("a", &writes(&[("k", Some(b"1"))]), &ANY).unwrap();
    let v1 = s.get("a", "k").unwrap().unwrap().version;
    assert_ne!(v1, 0);
    s.commit("a", &writes(&[("k", Some(b"1"))]), &ANY).unwrap();
    let v2 = s.get("a", "k").unwrap().unwrap().version;
    assert_ne!(v1, v2);
    s.commit("a", &writes(&[("k", None)]), &ANY).unwrap();
    s.commit("a", &writes(&[("k", Some(b"1"))]), &ANY).unwrap();
    let v3 = s.get("a", "k").unwrap().unwrap().version;
    assert!(v3 != v1 && v3 != v2);
}

fn stale_reads_conflict_and_apply_nothing(s: &dyn StateStore) {
    s.commit("a", &writes(&[("n", Some(b"0"))]), &ANY).unwrap();
    let seen = s.get("a", "n").unwrap().unwrap().version;
    let mut txn = writes(&[("n", Some(b"1")), ("other", Some(b"x"))]);
    txn.reads.insert("n".into(), seen);
    s.commit("a", &writes(&[("n", Some(b"2"))]), &ANY).unwrap();
    assert!(is_conflict(s.commit("a", &txn, &ANY)));
    assert_eq!(s.get("a", "n").unwrap().unwrap().value, b"2");
    assert_eq!(s.get("a", "other").unwrap(), None, "nothing of it applied");
    // Fresh reads commit.
    txn.reads
        .insert("n".into(), s.get("a", "n").unwrap().unwrap().version);
    s.commit("a", &txn, &ANY).unwrap();
    assert_eq!(s.get("a", "n").unwrap().unwrap().value, b"1");
}

fn absent_reads_and_listings_are_validated(s: &dyn StateStore) {
    let mut absent = writes(&[("flag", Some(b"1"))]);
    absent.reads.insert("m".into(), 0);
    s.commit("a", &writes(&[("m", Some(b""))]), &ANY).unwrap();
    assert!(is_conflict(s.commit("a", &absent, &ANY)));

    let mut listed = writes(&[("flag", Some(b"1"))]);
    listed.lists.push(ListRead {
        prefix: "m".into(),
        after: None,
        limit: 10,
        keys: vec!["m".into()],
    });
    s.commit("a", &listed, &ANY).unwrap();
    s.commit("a", &writes(&[("m2", Some(b""))]), &ANY).unwrap();
    assert!(is_conflict(s.commit("a", &listed, &ANY)));
}

fn quotas_refuse_growth_atomically_and_allow_deletes(s: &dyn StateStore) {
    let quota = Quota {
        max_keys: 2,
        max_bytes: 10_000,
        max_timers: 1,
    };
    s.commit("a", &writes(&[("a", Some(b"")), ("b", Some(b""))]), &quota)
        .unwrap();
    let err = s
        .commit("a", &writes(&[("c", Some(b""))]), &quota)
        .unwrap_err();
    assert_eq!(err.quota_exceeded().unwrap().what, "keys");
    assert_eq!(s.get("a", "c").unwrap(), None);
    let big = vec![0u8; 20_000];
    let err = s
        .commit("a", &writes(&[("a", Some(&big))]), &quota)
        .unwrap_err();
    assert_eq!(err.quota_exceeded().unwrap().what, "bytes");
    let mut two = Changes::default();
    two.timers.insert("t1".into(), timer(1));
    two.timers.insert("t2".into(), timer(1));
    let err = s
        .commit("a", &Transaction::writes(two), &quota)
        .unwrap_err();
    assert_eq!(err.quota_exceeded().unwrap().what, "timers");
    let tight = Quota {
        max_keys: 0,
        ..quota
    };
    s.commit("a", &writes(&[("a", None)]), &tight).unwrap();
    // The usage followed the delete: one key left, so one more fits the original quota.
    s.commit("a", &writes(&[("c", Some(b""))]), &quota).unwrap();
}

fn timers_are_due_in_order_per_plugin_and_paged(s: &dyn StateStore) {
    let mut c = Changes::default();
    c.timers.insert("late".into(), timer(30));
    c.timers.insert("early".into(), timer(10));
    c.timers.insert("mid".into(), timer(20));
    s.commit("a", &Transaction::writes(c), &ANY).unwrap();
    let mut c = Changes::default();
    c.timers.insert("b1".into(), timer(15));
    s.commit("b", &Transaction::writes(c), &ANY).unwrap();

    // A lease that has already ended leaves every timer claimable again at once.
    let ids = |now, plugins: &[&str], limit| -> Vec<String> {
        s.claim_timers(now, plugins, limit, 0)
            .unwrap()
            .into_iter()
            .map(|t| t.id)
            .collect()
    };
    assert_eq!(ids(30, &["a", "b"], 10), ["early", "b1", "mid", "late"]);
    assert_eq!(ids(30, &["a", "b"], 2), ["early", "b1"]);
    assert_eq!(ids(30, &["a"], 10), ["early", "mid", "late"]);
    assert_eq!(ids(19, &["a", "b"], 10), ["early", "b1"]);
    assert!(ids(30, &["c"], 10).is_empty());
    let t = s.timer("a", "mid").unwrap().unwrap();
    assert_eq!(
        (t.due_ms, t.payload, t.attempts),
        (20, 20u64.to_be_bytes().to_vec(), 0)
    );
    // Rescheduling moves it; cancelling removes it.
    let mut c = Changes::default();
    c.timers.insert("mid".into(), timer(40));
    c.timers.insert("early".into(), None);
    s.commit("a", &Transaction::writes(c), &ANY).unwrap();
    assert_eq!(ids(35, &["a"], 10), ["late"]);
    assert_eq!(s.timer("a", "early").unwrap(), None);
}

fn claimed_timers_are_leased_until_written_or_expired(s: &dyn StateStore) {
    let mut c = Changes::default();
    c.timers.insert("t1".into(), timer(10));
    c.timers.insert("t2".into(), timer(10));
    s.commit("a", &Transaction::writes(c), &ANY).unwrap();
    let claim = |now, lease| -> Vec<String> {
        s.claim_timers(now, &["a"], 10, lease)
            .unwrap()
            .into_iter()
            .map(|t| t.id)
            .collect()
    };
    assert_eq!(claim(10, 100), ["t1", "t2"]);
    // Leased: nobody claims them again before the lease ends.
    assert!(claim(50, 200).is_empty());
    // t1's handler commits (cancels it); t2's handler died: its lease expires.
    let mut done = Changes::default();
    done.timers.insert("t1".into(), None);
    s.commit("a", &Transaction::writes(done), &ANY).unwrap();
    assert_eq!(claim(100, 300), ["t2"]);
    // Rescheduling a leased timer ends its lease.
    let mut again = Changes::default();
    again.timers.insert("t2".into(), timer(150));
    s.commit("a", &Transaction::writes(again), &ANY).unwrap();
    assert_eq!(claim(150, 400), ["t2"]);
}

fn outbox_actions_commit_with_the_state_and_are_leased_and_acknowledged(s: &dyn StateStore) {
    let mut txn = writes(&[("k", Some(b"1"))]);
    txn.actions = vec!["{\"a\":1}".into(), "{\"a\":2}".into()];
    txn.actions_lease_until_ms = 100;
    let ids = s.commit("a", &txn, &ANY).unwrap();
    assert_eq!(ids.len(), 2);
    assert!(ids[0] < ids[1]);
    // A refused commit records no action.
    let mut stale = writes(&[]);
    stale.reads.insert("k".into(), 0);
    stale.actions = vec!["{\"a\":3}".into()];
    assert!(is_conflict(s.commit("a", &stale, &ANY)));
    // Leased to the caller until 100: nobody else gets them before.
    assert!(s.claim_actions(50, 10, 200).unwrap().is_empty());
    // The caller acknowledged the first, then died: the second is handed out again.
    s.ack_actions(&ids[..1]).unwrap();
    let again = s.claim_actions(100, 10, 300).unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].id, again[0].plugin.as_str()), (ids[1], "a"));
    assert_eq!(again[0].action, "{\"a\":2}");
    assert!(
        s.claim_actions(200, 10, 400).unwrap().is_empty(),
        "leased again"
    );
    s.ack_actions(&[ids[1], 999_999]).unwrap();
    assert!(s.claim_actions(1_000, 10, 2_000).unwrap().is_empty());
}

fn a_handled_timer_rescheduled_meanwhile_is_not_removed(s: &dyn StateStore) {
    use mxpolicy_host::Claimed;
    let mut c = Changes::default();
    c.timers.insert("fired".into(), timer(10));
    c.timers.insert("moved".into(), timer(10));
    s.commit("a", &Transaction::writes(c), &ANY).unwrap();
    assert_eq!(s.claim_timers(10, &["a"], 10, 100).unwrap().len(), 2);
    // While both are handled, another call reschedules `moved` (a new erasure request).
    let mut again = Changes::default();
    again.timers.insert("moved".into(), timer(50));
    s.commit("a", &Transaction::writes(again), &ANY).unwrap();
    // The handlers end: each removes its timer only if still under its claim.
    let mut done = Changes::default();
    for id in ["fired", "moved"] {
        done.claimed.insert(
            id.into(),
            Claimed {
                lease_until_ms: 100,
                then: None,
            },
        );
    }
    s.commit("a", &Transaction::writes(done), &ANY).unwrap();
    assert_eq!(s.timer("a", "fired").unwrap(), None);
    assert_eq!(s.timer("a", "moved").unwrap().map(|t| t.due_ms), Some(50));
    // The quota counted what was really removed: one timer left.
    let one = Quota {
        max_timers: 1,
        ..ANY
    };
    let mut more = Changes::default();
    more.timers.insert("new".into(), timer(60));
    assert!(
        s.commit("a", &Transaction::writes(more), &one)
            .unwrap_err()
            .quota_exceeded()
            .is_some()
    );
}

macro_rules! conformance {
    ($($test:ident),+ $(,)?) => {
        mod memory {
            $(
                #[test]
                fn $test() {
                    super::$test(&super::MemoryStore::new());
                }
            )+
        }

        mod sqlite {
            $(
                #[test]
                fn $test() {
                    let dir = super::TempDir::new("sqlite");
                    let store = super::SqliteStore::open(dir.0.join("state.db")).unwrap();
                    super::$test(&store);
                }
            )+
        }

        mod postgres {
            $(
                #[test]
                fn $test() {
                    let Some(url) = super::postgres_schema("conformance") else {
                        return;
                    };
                    let store = super::PostgresStore::connect(&url).unwrap();
                    super::$test(&store);
                }
            )+
        }
    };
}

conformance!(
    reads_see_commits_and_keys_are_per_plugin,
    lists_are_ordered_prefixed_and_limited,
    versions_change_on_every_write_and_never_repeat,
    stale_reads_conflict_and_apply_nothing,
    absent_reads_and_listings_are_validated,
    quotas_refuse_growth_atomically_and_allow_deletes,
    timers_are_due_in_order_per_plugin_and_paged,
    claimed_timers_are_leased_until_written_or_expired,
    outbox_actions_commit_with_the_state_and_are_leased_and_acknowledged,
    a_handled_timer_rescheduled_meanwhile_is_not_removed,
);

#[test]
fn postgres_timers_are_claimed_once_by_concurrent_processes() {
    let Some(url) = postgres_schema("claims") else {
        return;
    };
    let setup = PostgresStore::connect(&url).unwrap();
    let mut c = Changes::default();
    for i in 0..200 {
        c.timers.insert(format!("t{i:03}"), timer(1));
    }
    setup.commit("a", &Transaction::writes(c), &ANY).unwrap();
    // Four "processes" claim in small pages at once: every timer is claimed exactly once.
    let claimers: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let store = PostgresStore::connect(&url).unwrap();
                let mut mine = Vec::new();
                loop {
                    let page = store.claim_timers(10, &["a"], 7, 1_000).unwrap();
                    if page.is_empty() {
                        return mine;
                    }
                    mine.extend(page.into_iter().map(|t| t.id));
                }
            })
        })
        .collect();
    let mut all: Vec<String> = claimers
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    all.sort();
    let expected: Vec<String> = (0..200).map(|i| format!("t{i:03}")).collect();
    assert_eq!(all, expected);
}

#[test]
fn sqlite_keeps_commits_across_reopening() {
    let dir = TempDir::new("sqlite-reopen");
    let path = dir.0.join("state.db");
    {
        let s = SqliteStore::open(&path).unwrap();
        s.commit("a", &writes(&[("k", Some(b"v"))]), &ANY).unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.get("a", "k").unwrap().unwrap().value, b"v");
    // The usage was kept too: the quota still counts the key.
    let one = Quota { max_keys: 1, ..ANY };
    assert!(
        s.commit("a", &writes(&[("k2", Some(b""))]), &one)
            .unwrap_err()
            .quota_exceeded()
            .is_some()
    );
}

#[test]
fn sqlite_refuses_a_schema_from_another_version() {
    let dir = TempDir::new("sqlite-schema");
    let path = dir.0.join("state.db");
    drop(SqliteStore::open(&path).unwrap());
    // A database written by a future build.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute("UPDATE mxpolicy_schema SET version = 99", [])
        .unwrap();
    drop(conn);
    let err = SqliteStore::open(&path).err().expect("refused").to_string();
    assert!(err.contains("schema version 99"), "{err}");
}

#[test]
fn postgres_commits_of_one_process_are_seen_by_the_next_read_of_another() {
    let Some(url) = postgres_schema("processes") else {
        return;
    };
    // Two stores, two connection pools: two worker processes as far as the database knows.
    let one = PostgresStore::connect(&url).unwrap();
    let two = PostgresStore::connect(&url).unwrap();
    one.commit("a", &writes(&[("k", Some(b"1"))]), &ANY)
        .unwrap();
    assert_eq!(two.get("a", "k").unwrap().unwrap().value, b"1");
    // A read in one, a write in the other, then the first commits: a conflict.
    let seen = one.get("a", "k").unwrap().unwrap().version;
    let mut txn = writes(&[("k", Some(b"from one"))]);
    txn.reads.insert("k".into(), seen);
    two.commit("a", &writes(&[("k", Some(b"from two"))]), &ANY)
        .unwrap();
    assert!(is_conflict(one.commit("a", &txn, &ANY)));
    assert_eq!(one.get("a", "k").unwrap().unwrap().value, b"from two");
}

#[test]
fn postgres_refuses_a_schema_from_another_version() {
    let Some(url) = postgres_schema("version") else {
        return;
    };
    drop(PostgresStore::connect(&url).unwrap());
    let mut db = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap();
    db.execute("UPDATE mxpolicy_schema SET version = 99", &[])
        .unwrap();
    let err = PostgresStore::connect(&url)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("schema version 99"), "{err}");
}

#[test]
fn sqlite_cached_reads_see_another_processs_commits_within_the_bound() {
    // Two stores on one file: two processes as far as SQLite knows.
    let dir = TempDir::new("sqlite-cache");
    let path = dir.0.join("state.db");
    let one = SqliteStore::open(&path).unwrap();
    let two = SqliteStore::open(&path).unwrap();
    one.commit("a", &writes(&[("k", Some(b"1"))]), &ANY)
        .unwrap();
    let seen = one.get("a", "k").unwrap().unwrap();
    assert_eq!(seen.value, b"1");
    two.commit("a", &writes(&[("k", Some(b"2"))]), &ANY)
        .unwrap();
    // A write based on the cached read conflicts at once (validated against the file), and the
    // conflict empties the cache: the re-run reads the other process's value.
    let mut txn = writes(&[("k", Some(b"3"))]);
    txn.reads.insert("k".into(), seen.version);
    assert!(is_conflict(one.commit("a", &txn, &ANY)));
    assert_eq!(one.get("a", "k").unwrap().unwrap().value, b"2");
    // A plain read sees another process's commit within the documented bound (50 ms).
    two.commit("a", &writes(&[("k", Some(b"4"))]), &ANY)
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(120));
    assert_eq!(one.get("a", "k").unwrap().unwrap().value, b"4");
}
