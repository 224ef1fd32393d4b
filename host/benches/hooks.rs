//! Criterion benchmark of hook calls through the host, against a native baseline running the
//! same policy source in-process.
//!
//! - `on-send`: one decision of the keyword-filter example policy (allow path).
//! - `federation-serve-1000`: one on-federation-serve batch of 1,000 events (50 senders, 5 of
//!   them erased, so 10% of the events are from erased users) through the erasure policy in
//!   its default "spec" mode; the erased users' events for which the requesting server had no
//!   user joined (2 in 3) are redacted by the host with ruma's redaction algorithm.
//!
//! Each wasm case runs with warm instances (`InstanceMode::Reuse`) and with a fresh instance
//! per call (`InstanceMode::Fresh`, the default), with the pooling allocator (the default) and,
//! for on-send, with on-demand allocation. After the run it prints medians and wasm/native
//! ratios read from criterion's own estimates.
//!
//! Needs the plugins built first: `cargo xtask build-plugins`, then `cargo bench -p mxpolicy-host`.

use std::{hint::black_box, path::PathBuf, sync::Arc, time::Duration};

use criterion::{Criterion, criterion_group};
use mxpolicy_guest::Policy as _;
use mxpolicy_host::{
    Allocation, HistoryVisibility, Host, InstanceMode, MemoryHomeserver, MemoryStore, PluginSpec,
    SendEvent, ServeEvent, ServeVerdict, UserKind, Viewer,
    ruma::{RoomVersionId, owned_room_id, owned_server_name, owned_user_id},
};
use serde_json::json;

fn plugin(name: &str) -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let path = dir.join("plugins").join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{} missing: run `cargo xtask build-plugins` first",
        path.display()
    );
    path
}

fn host(allocation: Allocation) -> Host {
    let hs = Arc::new(MemoryHomeserver::new(owned_server_name!("hs.example")));
    Host::builder(hs, Arc::new(MemoryStore::new()))
        .allocation(allocation)
        .build()
        .expect("host")
}

fn keyword_config() -> serde_json::Value {
    json!({"keywords": ["buy now", "free crypto", "click here"], "blocked_users": ["@spam:evil.example"]})
}

fn send_event() -> SendEvent {
    SendEvent {
        sender: owned_user_id!("@alice:hs.example"),
        sender_kind: UserKind::Regular,
        room_id: owned_room_id!("!room:hs.example"),
        room_version: RoomVersionId::V11,
        event_type: "m.room.message".into(),
        state_key: None,
        content: json!({"msgtype": "m.text", "body": "hello there, how are you today?"}),
        origin_server_ts: 1_700_000_000_000,
        is_server_notices_room: false,
    }
}

fn erasure_config() -> serde_json::Value {
    json!({"grace_period_days": 30})
}

fn erased_users() -> Vec<String> {
    (0..5)
        .map(|i| format!("@user{}:hs.example", i * 10))
        .collect()
}

fn batch() -> Vec<ServeEvent> {
    (0..1000)
        .map(|i| {
            let sender = format!("@user{}:hs.example", i % 50);
            ServeEvent {
                event: json!({
                    "event_id": format!("$event{i}"),
                    "room_id": "!room:hs.example",
                    "sender": sender,
                    "type": "m.room.message",
                    "origin_server_ts": 1_700_000_000_000u64 + i,
                    "content": {"msgtype": "m.text", "body": format!("message number {i}")},
                    "depth": i + 3,
                    "prev_events": [format!("$event{}", i.saturating_sub(1))],
                    "auth_events": ["$create", "$power", "$member"],
                    "hashes": {"sha256": "aGFzaA"},
                    "signatures": {"hs.example": {"ed25519:a": "c2ln"}},
                }),
                room_version: RoomVersionId::V10,
                history_visibility: HistoryVisibility::Shared,
                viewer_joined: i % 3 == 0,
            }
        })
        .collect()
}

fn on_send(c: &mut Criterion) {
    let mut g = c.benchmark_group("on-send");
    let event = send_event();

    mxpolicy_guest::testing::reset("hs.example");
    let config: mxpolicy_keyword_filter::Config =
        serde_json::from_value(keyword_config()).expect("config");
    let native = mxpolicy_keyword_filter::KeywordFilter::new(config).expect("policy");
    let ctx = mxpolicy_guest::SendContext::new(
        "@alice:hs.example",
        "!room:hs.example",
        "m.room.message",
        event.content.clone(),
    );
    g.bench_function("native", |b| {
        b.iter(|| black_box(native.on_send(black_box(&ctx))))
    });

    for (label, mode, allocation) in [
        ("wasm-warm", InstanceMode::Reuse, Allocation::default()),
        ("wasm-fresh", InstanceMode::Fresh, Allocation::default()),
        (
            "wasm-fresh-on-demand",
            InstanceMode::Fresh,
            Allocation::OnDemand,
        ),
    ] {
        let h = host(allocation);
        h.load(
            PluginSpec::file(plugin("keyword-filter"))
                .config(keyword_config())
                .instance_mode(mode),
        )
        .expect("load");
        assert!(h.on_send(&event).outcome.is_allow());
        g.bench_function(label, |b| {
            b.iter(|| black_box(h.on_send(black_box(&event))))
        });
    }
    g.finish();
}

fn federation_serve(c: &mut Criterion) {
    let mut g = c.benchmark_group("federation-serve-1000");
    g.measurement_time(Duration::from_secs(4));
    let events = batch();

    mxpolicy_guest::testing::reset("hs.example");
    let config: mxpolicy_erasure::Config =
        serde_json::from_value(erasure_config()).expect("config");
    let native = mxpolicy_erasure::Erasure::new(config).expect("policy");
    for user in erased_users() {
        let request = mxpolicy_guest::DeactivateContext {
            now_ms: 0,
            user: user.as_str().into(),
            erase: true,
            by_admin: true,
            second_factor: true,
        };
        assert!(native.on_deactivate(&request).is_allow());
    }
    // The native baseline gets the same facts the plugin receives.
    let ctx = mxpolicy_guest::ServeContext {
        now_ms: 0,
        viewer: mxpolicy_guest::Viewer::Server("other.example".into()),
        events: events
            .iter()
            .map(|e| mxpolicy_guest::ServeEvent {
                event_id: e.event["event_id"].as_str().unwrap_or_default().into(),
                room_id: "!room:hs.example".into(),
                sender: e.event["sender"].as_str().unwrap_or_default().into(),
                event_type: "m.room.message".into(),
                state_key: None,
                origin_server_ts: 0,
                room_version: "10".into(),
                history_visibility: mxpolicy_guest::HistoryVisibility::Shared,
                viewer_joined: e.viewer_joined,
            })
            .collect(),
    };
    g.bench_function("native", |b| {
        b.iter(|| black_box(native.on_federation_serve(black_box(&ctx))))
    });

    let viewer = Viewer::Server(owned_server_name!("other.example"));
    for (label, mode) in [
        ("wasm-warm", InstanceMode::Reuse),
        ("wasm-fresh", InstanceMode::Fresh),
    ] {
        let h = host(Allocation::default());
        h.load(
            PluginSpec::file(plugin("erasure"))
                .config(erasure_config())
                .instance_mode(mode),
        )
        .expect("load");
        for user in erased_users() {
            let d = h.on_deactivate(&mxpolicy_host::Deactivation {
                user: user.as_str().try_into().expect("user id"),
                erase: true,
                by_admin: true,
                second_factor: true,
            });
            assert!(d.outcome.is_allow(), "{d:?}");
        }
        let served = h
            .on_federation_serve(&viewer, events.clone())
            .expect("serve");
        let redacted = served
            .outcome
            .iter()
            .filter(|e| e.verdict != ServeVerdict::Serve)
            .count();
        assert_eq!(redacted, 66, "2 in 3 of the 100 erased events are redacted");
        g.bench_function(label, |b| {
            b.iter_batched(
                || events.clone(),
                |events| black_box(h.on_federation_serve(&viewer, events).expect("serve")),
                criterion::BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

/// Median in nanoseconds from criterion's estimates of `group/bench`.
fn median_ns(group: &str, bench: &str) -> Option<f64> {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let path = dir
        .join("criterion")
        .join(group)
        .join(bench)
        .join("new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["median"]["point_estimate"].as_f64()
}

fn summary() {
    println!("\nmedians (p50) and wasm/native ratios, this run:");
    for (group, cases) in [
        (
            "on-send",
            &["native", "wasm-warm", "wasm-fresh", "wasm-fresh-on-demand"][..],
        ),
        (
            "federation-serve-1000",
            &["native", "wasm-warm", "wasm-fresh"][..],
        ),
    ] {
        let native = median_ns(group, "native");
        for case in cases {
            let Some(ns) = median_ns(group, case) else {
                continue;
            };
            let ratio = native
                .map(|n| format!("{:.1}x native", ns / n))
                .unwrap_or_default();
            println!("  {group:<22} {case:<22} {:>12.3} us  {ratio}", ns / 1000.0);
        }
    }
}

criterion_group!(benches, on_send, federation_serve);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
