//! Embed the host the way a homeserver would: load the example policy (built by
//! `cargo xtask build-plugins`) with its embedded default config, run a few events through
//! `on_send`, and print each decision as the homeserver would answer it.
//!
//! `cargo run -p mxpolicy-host --example decisions [PLUGIN_DIR]`

use std::{path::PathBuf, sync::Arc};

use mxpolicy_host::{
    Host, MemoryHomeserver, MemoryStore, PluginSpec, SendEvent, UserKind, Verdict,
    ruma::{RoomVersionId, owned_room_id, owned_server_name},
};
use serde_json::json;

fn main() -> anyhow::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/plugins"));
    let homeserver = Arc::new(MemoryHomeserver::new(owned_server_name!("hs.example")));
    // Plugin state in memory: this example keeps nothing (a homeserver uses `SqliteStore`).
    let host = Host::builder(homeserver, Arc::new(MemoryStore::new())).build()?;
    let report = host.load(
        PluginSpec::file(dir.join("keyword-filter.wasm"))
            .config(json!({"keywords": ["buy now"], "blocked_users": ["@spam:evil.example"]})),
    )?;
    println!(
        "loaded {} {} (hooks: {}, sha256 {})",
        report.info.name,
        report.info.version,
        report
            .info
            .hooks
            .iter()
            .map(|h| h.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        report.sha256
    );
    for (sender, body) in [
        ("@alice:hs.example", "Hello, world"),
        ("@alice:hs.example", "BUY NOW while stocks last"),
        ("@spam:evil.example", "hi"),
    ] {
        let decision = host.on_send(&SendEvent {
            sender: sender.try_into()?,
            sender_kind: UserKind::Regular,
            room_id: owned_room_id!("!lobby:hs.example"),
            room_version: RoomVersionId::V11,
            event_type: "m.room.message".into(),
            state_key: None,
            content: json!({"msgtype": "m.text", "body": body}),
            origin_server_ts: 0,
            is_server_notices_room: false,
        });
        match decision.outcome {
            Verdict::Allow => println!("{sender}: {body:?} -> 200 accepted"),
            Verdict::Deny(error) => println!("{sender}: {body:?} -> 403 {}", error.to_body()),
        }
    }
    Ok(())
}
