//! The host API's paths that the topic modules do not reach: a state store that fails (on a
//! read, on a commit) and unloading a plugin.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use mxpolicy_host::{
    Entry, Error, FailureCause, FailurePolicy, Host, ManualClock, MemoryHomeserver, MemoryStore,
    OutboxEntry, Quota, StateStore, StoreError, Timer, Transaction, Verdict,
};
use serde_json::json;

use crate::{
    end_to_end::message,
    support::{T0, server_name, spec, test_host},
};

/// A [`MemoryStore`] that fails reads or commits on demand: the only way to reach the host's
/// store-failure paths, since the in-memory store never fails (a test double, said so).
#[derive(Default)]
struct FlakyStore {
    inner: MemoryStore,
    fail_reads: AtomicBool,
    fail_commits: AtomicBool,
}

fn down() -> StoreError {
    StoreError::new("database is down")
}

impl StateStore for FlakyStore {
    fn get(&self, plugin: &str, key: &str) -> Result<Option<Entry>, StoreError> {
        if self.fail_reads.load(Ordering::SeqCst) {
            return Err(down());
        }
        self.inner.get(plugin, key)
    }
    fn plugins(&self) -> Result<Vec<String>, StoreError> {
        self.inner.plugins()
    }
    fn list(
        &self,
        plugin: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        if self.fail_reads.load(Ordering::SeqCst) {
            return Err(down());
        }
        self.inner.list(plugin, prefix, after, limit)
    }
    fn timer(&self, plugin: &str, id: &str) -> Result<Option<Timer>, StoreError> {
        self.inner.timer(plugin, id)
    }
    fn claim_timers(
        &self,
        now_ms: u64,
        plugins: &[&str],
        limit: usize,
        lease_until_ms: u64,
    ) -> Result<Vec<Timer>, StoreError> {
        self.inner
            .claim_timers(now_ms, plugins, limit, lease_until_ms)
    }
    fn commit(
        &self,
        plugin: &str,
        txn: &Transaction,
        quota: &Quota,
    ) -> Result<Vec<u64>, StoreError> {
        if self.fail_commits.load(Ordering::SeqCst) {
            return Err(down());
        }
        self.inner.commit(plugin, txn, quota)
    }
    fn claim_actions(
        &self,
        now_ms: u64,
        limit: usize,
        lease_until_ms: u64,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        self.inner.claim_actions(now_ms, limit, lease_until_ms)
    }
    fn ack_actions(&self, ids: &[u64]) -> Result<(), StoreError> {
        self.inner.ack_actions(ids)
    }
}

fn flaky_host() -> (Host, Arc<FlakyStore>) {
    let store = Arc::new(FlakyStore::default());
    let host = Host::builder(
        Arc::new(MemoryHomeserver::new(server_name())),
        store.clone(),
    )
    .clock(Arc::new(ManualClock::new(T0)))
    .build()
    .unwrap();
    // The scripted plugin reads and writes its call counter on every call.
    host.load(spec("scripted-a")).unwrap();
    (host, store)
}

#[test]
fn a_failing_store_read_is_a_store_failure_and_fails_closed() {
    let (host, store) = flaky_host();
    store.fail_reads.store(true, Ordering::SeqCst);
    let d = host.on_send(&message("@a:hs.example", "hi"));
    assert_eq!(
        d.failures[0].cause,
        FailureCause::Store("database is down".into())
    );
    assert_eq!(d.failures[0].applied, FailurePolicy::Closed);
    assert!(matches!(d.outcome, Verdict::Deny(_)));
    store.fail_reads.store(false, Ordering::SeqCst);
    assert!(
        host.on_send(&message("@a:hs.example", "hi"))
            .failures
            .is_empty()
    );
}

#[test]
fn a_failing_commit_is_a_store_failure_and_nothing_is_kept() {
    let (host, store) = flaky_host();
    store.fail_commits.store(true, Ordering::SeqCst);
    let d = host.on_send(&message("@a:hs.example", "hi"));
    assert_eq!(
        d.failures[0].cause,
        FailureCause::Store("database is down".into())
    );
    assert!(matches!(d.outcome, Verdict::Deny(_)));
    store.fail_commits.store(false, Ordering::SeqCst);
    assert_eq!(
        host.read_state("scripted-a", "calls/on-send").unwrap(),
        None
    );
}

#[test]
fn unload_removes_the_plugin_and_keeps_its_state() {
    let t = test_host();
    t.host
        .load(spec("scripted-a").config(json!({"deny": "M_FORBIDDEN"})))
        .unwrap();
    t.host.load(spec("scripted-b")).unwrap();
    assert!(
        !t.host
            .on_send(&message("@a:hs.example", "hi"))
            .outcome
            .is_allow()
    );
    let generation = t.host.generation();

    t.host.unload("scripted-a").unwrap();
    assert_eq!(t.host.generation(), generation + 1);
    let names: Vec<String> = t.host.plugins().into_iter().map(|p| p.instance).collect();
    assert_eq!(names, ["scripted-b"]);
    // Its hooks are no longer called; its state stays in the store.
    let d = t.host.on_send(&message("@a:hs.example", "hi"));
    assert!(d.outcome.is_allow(), "{d:?}");
    assert!(
        t.host
            .read_state("scripted-a", "calls/on-send")
            .unwrap()
            .is_some()
    );
    assert!(matches!(
        t.host.admin("scripted-a", "calls", &json!(null)),
        Err(Error::NoSuchPlugin(_))
    ));
    // Unloading again names the missing instance and changes nothing.
    assert!(matches!(
        t.host.unload("scripted-a"),
        Err(Error::NoSuchPlugin(name)) if name == "scripted-a"
    ));
    assert_eq!(t.host.generation(), generation + 1);
    // Loaded again, it finds its state.
    t.host.load(spec("scripted-a")).unwrap();
    let calls = t.host.admin("scripted-a", "calls", &json!(null)).unwrap();
    assert_eq!(calls["calls"]["on-send"], json!(1), "{calls}");
}
