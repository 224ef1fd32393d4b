//! What the service benchmarks share (`serve.rs`, `conduit.rs`): where the plugins are, the
//! HTTP client, and the host `mxpolicy serve` builds, run in process for comparison.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use mxpolicy::serve::facts::ServiceHomeserver;
use mxpolicy_host::{Host, PolicySet, SqliteStore, ruma::OwnedServerName};
use serde_json::json;

/// `target/plugins`, which must hold the built plugins (`cargo xtask build-plugins`).
pub(crate) fn plugins_dir() -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = dir.join("plugins");
    assert!(
        dir.join("consent.wasm").is_file(),
        "{} has no consent.wasm: run `cargo xtask build-plugins` first",
        dir.display()
    );
    dir
}

/// A client keeping one connection (ureq pools it in the agent); 4xx and 5xx are answers.
pub(crate) fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_idle_connections_per_host(1)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// The host `mxpolicy serve` builds, from `set`, with its own SQLite file in `dir` and the
/// compile cache `cache`; `user` has accepted the consent policy's version 1.0 if the set has
/// that policy (a set without it has nothing to record: said, not fatal).
pub(crate) fn service_host(
    set: &PolicySet,
    server_name: &str,
    dir: &Path,
    cache: &Path,
    user: &str,
) -> Host {
    let server_name: OwnedServerName = server_name.try_into().expect("server name");
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let store = SqliteStore::open(dir.join("in-process.db")).expect("open the SQLite store");
    let host = Host::builder(
        Arc::new(ServiceHomeserver::new(server_name)),
        Arc::new(store),
    )
    .compile_cache(cache)
    .outbox(true)
    .timer_actions_unclaimed(true)
    .build()
    .expect("build the host");
    host.apply(set).expect("apply the set");
    if let Err(e) = host.admin(
        "consent",
        "record-consent",
        &json!({"user": user, "version": "1.0"}),
    ) {
        println!("in process: record-consent: {e}");
    }
    host
}
