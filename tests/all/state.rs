//! Plugin state and durable timers: writes commit only when a call succeeds; timers fire
//! `on-timer` once when due, and a failed timer stays scheduled.

use mxpolicy_host::{
    Action, FailureCause, FailurePolicy, FiredTimer, Hook, StateStore, ruma::owned_user_id,
};
use serde_json::{Value, json};

use crate::{
    end_to_end::message,
    support::{T0, spec, test_host},
};

fn counter(t: &crate::support::TestHost, plugin: &str, hook: &str) -> Option<u64> {
    t.store
        .get(plugin, &format!("calls/{hook}"))
        .unwrap()
        .map(|e| serde_json::from_slice(&e.value).expect("the SDK stores JSON"))
}

#[test]
fn writes_commit_when_the_call_succeeds() {
    let t = test_host();
    t.host.load(spec("scripted-a")).unwrap();
    for _ in 0..3 {
        t.host.on_send(&message("@a:hs.example", "hi"));
    }
    assert_eq!(counter(&t, "scripted-a", "on-send"), Some(3));
    // Keys are namespaced by plugin name.
    assert_eq!(t.store.get("scripted-b", "calls/on-send").unwrap(), None);
    assert_eq!(
        t.host.list_state("scripted-a", "calls/").unwrap(),
        vec!["calls/on-send"]
    );
}

#[test]
fn writes_of_a_failing_call_are_dropped() {
    let t = test_host();
    t.host
        .load(spec("scripted-a").config(json!({
            "misbehave": {"hook": "on-send", "how": "write-then-panic"},
        })))
        .unwrap();
    let d = t.host.on_send(&message("@a:hs.example", "hi"));
    assert!(matches!(d.failures[0].cause, FailureCause::Trap(_)));
    // The plugin incremented its counter before panicking: nothing was kept.
    assert_eq!(counter(&t, "scripted-a", "on-send"), None);
    assert!(t.host.list_state("scripted-a", "").unwrap().is_empty());

    // Output that fails validation is a failure too, and its writes are dropped as well.
    let t = test_host();
    t.host
        .load(spec("scripted-a").config(json!({"misbehave": {"hook": "x", "how": "bad-action"}})))
        .unwrap();
    t.host.on_send(&message("@a:hs.example", "hi"));
    assert_eq!(counter(&t, "scripted-a", "on-send"), None);
}

#[test]
fn timers_fire_once_when_due_with_their_payload() {
    let t = test_host();
    t.host
        .load(spec("scripted-a").config(json!({
            "label": "payload-1",
            "timer_after_ms": 60_000,
            "actions": [{"kind": "announce-erasure", "user": "@a:hs.example"}],
        })))
        .unwrap();
    t.host.on_send(&message("@a:hs.example", "hi"));
    assert!(
        t.host.run_timers().unwrap().outcome.is_empty(),
        "not due yet"
    );

    t.clock.advance(60_000);
    let run = t.host.run_timers().unwrap();
    assert_eq!(
        run.outcome,
        vec![FiredTimer {
            plugin: "scripted-a".into(),
            id: "t/0".into(),
            due_ms: T0 + 60_000,
            ok: true,
            attempts: 0,
            retry_at_ms: None,
            gave_up: false,
        }]
    );
    assert_eq!(
        run.actions,
        vec![Action::AnnounceErasure {
            user: owned_user_id!("@a:hs.example")
        }]
    );
    assert!(
        t.host
            .read_state("scripted-a", "fired/t/0")
            .unwrap()
            .is_some()
    );
    t.clock.advance(1);
    assert!(
        t.host.run_timers().unwrap().outcome.is_empty(),
        "fired only once"
    );
}

#[test]
fn a_failing_timer_stays_scheduled_and_is_retried() {
    let t = test_host();
    let config = |misbehave: Value| json!({"timer_after_ms": 10, "misbehave": misbehave});
    t.host
        .load(spec("scripted-a").config(config(json!({"hook": "on-timer", "how": "panic"}))))
        .unwrap();
    t.host.on_send(&message("@a:hs.example", "hi"));
    t.clock.advance(10);
    let run = t.host.run_timers().unwrap();
    assert!(!run.outcome[0].ok);
    assert_eq!(run.failures[0].hook, Hook::OnTimer);
    assert_eq!(run.failures[0].applied, FailurePolicy::Open);
    // Fixed build swapped in: the same timer fires now.
    t.host
        .replace(
            "scripted-a",
            spec("scripted-a").config(config(json!({"hook": "none", "how": "none"}))),
        )
        .unwrap();
    // It is retried after the backoff, not at once.
    assert!(t.host.run_timers().unwrap().outcome.is_empty());
    t.clock.advance(mxpolicy_host::TIMER_RETRY_BASE_MS);
    let run = t.host.run_timers().unwrap();
    assert!(run.outcome[0].ok, "{run:?}");
    assert!(t.host.run_timers().unwrap().outcome.is_empty());
}

#[test]
fn several_timers_fire_in_due_order() {
    // The scripted plugin schedules `t/<n>` per send, `timer_after_ms` after now: three sends
    // with decreasing delays schedule t/0, t/1, t/2 due in the reverse of their id order, so
    // only ordering by due time gives t/2, t/1, t/0.
    let t = test_host();
    t.host
        .load(spec("scripted-a").config(json!({"timer_after_ms": 30})))
        .unwrap();
    t.host.on_send(&message("@a:hs.example", "hi"));
    for after in [20, 10] {
        t.host
            .replace(
                "scripted-a",
                spec("scripted-a").config(json!({"timer_after_ms": after})),
            )
            .unwrap();
        t.host.on_send(&message("@a:hs.example", "hi"));
    }
    t.clock.advance(30);
    let fired: Vec<(String, u64)> = t
        .host
        .run_timers()
        .unwrap()
        .outcome
        .into_iter()
        .map(|f| (f.id, f.due_ms - T0))
        .collect();
    assert_eq!(
        fired,
        vec![("t/2".into(), 10), ("t/1".into(), 20), ("t/0".into(), 30)]
    );
}

/// Eight threads send at once; every send increments the call counter and appends to one
/// list (read-modify-writes of one key each): every call must count.
fn no_update_is_lost(host: std::sync::Arc<mxpolicy_host::Host>) {
    host.load(spec("scripted-a").config(json!({"append": true})))
        .unwrap();
    let (threads, calls) = (8, 25);
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(threads));
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (host, barrier) = (host.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                for _ in 0..calls {
                    let d = host.on_send(&message("@a:hs.example", "hi"));
                    assert!(d.failures.is_empty(), "{:?}", d.failures);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let total = (threads * calls) as u64;
    let calls = host.admin("scripted-a", "calls", &json!(null)).unwrap();
    assert_eq!(calls["calls"]["on-send"], json!(total), "{calls}");
    let list = host.admin("scripted-a", "list", &json!(null)).unwrap();
    let expected: Vec<u64> = (0..total).collect();
    assert_eq!(list, json!(expected));
}

#[test]
fn concurrent_read_modify_writes_lose_no_update() {
    no_update_is_lost(std::sync::Arc::new(test_host().host));
}

#[test]
fn concurrent_read_modify_writes_lose_no_update_on_sqlite() {
    let dir = crate::stores::TempDir::new("sqlite-concurrency");
    let store = std::sync::Arc::new(mxpolicy_host::SqliteStore::open(dir.0.join("s.db")).unwrap());
    let homeserver = mxpolicy_host::MemoryHomeserver::new(crate::support::server_name());
    let host = mxpolicy_host::Host::builder(std::sync::Arc::new(homeserver), store)
        .build()
        .unwrap();
    no_update_is_lost(std::sync::Arc::new(host));
}

#[test]
fn concurrent_read_modify_writes_lose_no_update_on_postgres() {
    let Some(url) = crate::stores::postgres_schema("concurrency") else {
        return;
    };
    let store = std::sync::Arc::new(mxpolicy_host::PostgresStore::connect(&url).unwrap());
    let homeserver = mxpolicy_host::MemoryHomeserver::new(crate::support::server_name());
    let host = mxpolicy_host::Host::builder(std::sync::Arc::new(homeserver), store)
        .build()
        .unwrap();
    no_update_is_lost(std::sync::Arc::new(host));
}

#[test]
fn outbox_actions_survive_a_restart_until_acknowledged() {
    use mxpolicy_host::{Action, ManualClock, OUTBOX_LEASE_MS, SqliteStore};
    let dir = crate::stores::TempDir::new("outbox");
    let path = dir.0.join("state.db");
    let clock = std::sync::Arc::new(ManualClock::new(T0));
    let start = |clock: &std::sync::Arc<ManualClock>| {
        let homeserver = mxpolicy_host::MemoryHomeserver::new(crate::support::server_name());
        let host = mxpolicy_host::Host::builder(
            std::sync::Arc::new(homeserver),
            std::sync::Arc::new(SqliteStore::open(&path).unwrap()),
        )
        .clock(clock.clone())
        .outbox(true)
        .build()
        .unwrap();
        host.load(spec("scripted-a").config(json!({"actions": [
            {"kind": "purge-room-history", "room": "!gone:hs.example"},
            {"kind": "delete-media", "mxc": "mxc://hs.example/abc"},
        ]})))
        .unwrap();
        host
    };
    let host = start(&clock);
    let d = host.on_send(&message("@a:hs.example", "hi"));
    assert_eq!(d.actions.len(), 2);
    assert_eq!(d.outbox.len(), 2);
    // The homeserver purges the room, acknowledges it, and dies before deleting the media.
    host.ack_actions(&d.outbox[..1]).unwrap();
    drop(host);

    let host = start(&clock);
    assert!(host.claim_actions(10).unwrap().is_empty(), "still leased");
    clock.advance(OUTBOX_LEASE_MS);
    let pending = host.claim_actions(10).unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].id, d.outbox[1]);
    assert_eq!(pending[0].plugin, "scripted-a");
    assert!(matches!(pending[0].action, Action::DeleteMedia { .. }));
    host.ack_actions(&[pending[0].id]).unwrap();
    clock.advance(OUTBOX_LEASE_MS);
    assert!(host.claim_actions(10).unwrap().is_empty());
}
