//! Criterion benchmark of the durable stores under a real policy:
//!
//! - `consent-decision/<store>/<instance>`: one on-send decision of the consent policy for a
//!   user who accepted the policy, with 10,000 users' consent records in the store (memory,
//!   SQLite, PostgreSQL), warm (`InstanceMode::Reuse`) and fresh instances;
//! - `commit/<store>`: one on-send call that writes (the scripted fixture's call counter, a
//!   read-modify-write) committed to the store: the inverse of the commit throughput.
//!
//! PostgreSQL runs when `MXPOLICY_TEST_POSTGRES` names a server (`scripts/postgres.sh start
//! DIR` starts one). Needs the plugins built: `cargo xtask build-plugins`, then
//! `cargo bench -p mxpolicy-host --bench stores`. Prints medians and the ratio to memory.

use std::{path::PathBuf, sync::Arc, time::Duration};

use criterion::{Criterion, criterion_group};
use mxpolicy_host::{
    Host, InstanceMode, MemoryHomeserver, MemoryStore, PluginSpec, PostgresStore, Quota, SendEvent,
    SqliteStore, StateStore, Transaction, UserKind,
    ruma::{RoomVersionId, owned_room_id, owned_server_name},
};
use serde_json::json;

const USERS: usize = 10_000;

fn plugin(name: &str) -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    dir.join("plugins").join(format!("{name}.wasm"))
}

fn consent_config() -> serde_json::Value {
    json!({
        "version": "1.0",
        "policy_name": "Privacy Policy",
        "policy_text_html": "<p>Copies of your messages go to everyone in the room.</p>",
        "public_baseurl": "https://matrix.hs.example/",
        "form_secret": "bench-secret-bench-secret-bench-secret",
        "block_events_error": "Please accept %(consent_uri)s",
        "server_notice_content": {"msgtype": "m.text", "body": "Accept: %(consent_uri)s"},
    })
}

fn user(i: usize) -> String {
    format!("@user{i:05}:hs.example")
}

fn message(sender: &str) -> SendEvent {
    SendEvent {
        sender: sender.try_into().expect("user id"),
        sender_kind: UserKind::Regular,
        room_id: owned_room_id!("!room:hs.example"),
        room_version: RoomVersionId::V11,
        event_type: "m.room.message".into(),
        state_key: None,
        content: json!({"msgtype": "m.text", "body": "hello"}),
        origin_server_ts: 1,
        is_server_notices_room: false,
    }
}

fn host(store: Arc<dyn StateStore>) -> Host {
    let hs = Arc::new(MemoryHomeserver::new(owned_server_name!("hs.example")));
    Host::builder(hs, store).build().expect("host")
}

/// The consent records of `USERS` users, made by the policy itself (its `record-consent`
/// admin command) in a memory store, then copied into `target` in one transaction.
fn seed(target: &dyn StateStore) {
    let memory = Arc::new(MemoryStore::new());
    let h = host(memory.clone());
    h.load(PluginSpec::file(plugin("consent")).config(consent_config()))
        .expect("consent");
    for i in 0..USERS {
        h.admin(
            "consent",
            "record-consent",
            &json!({"user": user(i), "version": "1.0"}),
        )
        .expect("record");
    }
    let mut txn = Transaction::default();
    for key in memory.list("consent", "", None, usize::MAX).expect("keys") {
        let value = memory.get("consent", &key).expect("get").map(|e| e.value);
        txn.changes.kv.insert(key, value);
    }
    target
        .commit("consent", &txn, &Quota::UNLIMITED)
        .expect("seed");
}

struct Stores {
    _dir: PathBuf,
    list: Vec<(&'static str, Arc<dyn StateStore>)>,
}

fn stores() -> Stores {
    let dir = std::env::temp_dir().join(format!("mxpolicy-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let mut list: Vec<(&'static str, Arc<dyn StateStore>)> = vec![
        ("memory", Arc::new(MemoryStore::new())),
        (
            "sqlite",
            Arc::new(SqliteStore::open(dir.join("bench.db")).expect("sqlite")),
        ),
    ];
    if let Ok(url) = std::env::var("MXPOLICY_TEST_POSTGRES") {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let schema = format!("bench_{}_{n}", std::process::id());
        let mut admin = postgres::Client::connect(&url, postgres::NoTls).expect("postgres");
        admin
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .expect("schema");
        let sep = if url.contains('?') { '&' } else { '?' };
        let url = format!("{url}{sep}options=-c%20search_path%3D{schema}");
        list.push((
            "postgres",
            Arc::new(PostgresStore::connect(&url).expect("postgres")),
        ));
    } else {
        eprintln!("PostgreSQL skipped: MXPOLICY_TEST_POSTGRES is not set");
    }
    Stores { _dir: dir, list }
}

fn consent_decision(c: &mut Criterion) {
    let stores = stores();
    let mut group = c.benchmark_group("consent-decision");
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_millis(500));
    for (name, store) in &stores.list {
        seed(&**store);
        for (mode, instance) in [
            ("warm", InstanceMode::Reuse),
            ("fresh", InstanceMode::Fresh),
        ] {
            let h = host(store.clone());
            h.load(
                PluginSpec::file(plugin("consent"))
                    .config(consent_config())
                    .instance_mode(instance)
                    // Other builds share these two cores: a timeout would fail the decision
                    // closed and end the run, not measure the store.
                    .deadline(Duration::from_secs(1)),
            )
            .expect("consent");
            let mut i = 0;
            group.bench_function(format!("{name}/{mode}"), |b| {
                b.iter(|| {
                    i = (i + 7919) % USERS;
                    let d = h.on_send(&message(&user(i)));
                    assert!(d.outcome.is_allow(), "{d:?}");
                })
            });
        }
    }
    group.finish();
}

fn commit(c: &mut Criterion) {
    let stores = stores();
    let mut group = c.benchmark_group("commit");
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_millis(500));
    for (name, store) in &stores.list {
        let h = host(store.clone());
        h.load(
            PluginSpec::file(plugin("scripted-a"))
                .instance_mode(InstanceMode::Reuse)
                .deadline(Duration::from_secs(1)),
        )
        .expect("scripted");
        group.bench_function(*name, |b| {
            b.iter(|| {
                let d = h.on_send(&message("@writer:hs.example"));
                assert!(d.failures.is_empty(), "{d:?}");
            })
        });
    }
    group.finish();
}

criterion_group!(benches, consent_decision, commit);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    report();
}

/// Medians from criterion's own estimates, with the ratio to the memory store.
fn report() {
    let base = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("criterion");
    let median = |group: &str, id: &str| -> Option<f64> {
        // criterion names directories after the id with `/` replaced by `_`.
        let path = base
            .join(group)
            .join(id.replace('/', "_"))
            .join("new/estimates.json");
        let text = std::fs::read_to_string(path).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v["median"]["point_estimate"].as_f64()
    };
    println!("\nmedians (us), ratio to memory:");
    for mode in ["warm", "fresh"] {
        let memory = median("consent-decision", &format!("memory/{mode}"));
        for store in ["memory", "sqlite", "postgres"] {
            if let Some(ns) = median("consent-decision", &format!("{store}/{mode}")) {
                let ratio = memory.map(|m| ns / m).unwrap_or(f64::NAN);
                println!(
                    "consent decision {store:<8} {mode:<5} {:>8.1} us  {ratio:>5.2}x",
                    ns / 1000.0
                );
            }
        }
    }
    for store in ["memory", "sqlite", "postgres"] {
        if let Some(ns) = median("commit", store) {
            println!(
                "commit           {store:<8}       {:>8.1} us  {:>8.0} calls/s",
                ns / 1000.0,
                1e9 / ns
            );
        }
    }
}
