//! Shared set-up: locating the built plugins and creating a host with in-memory services and a
//! manual clock.

#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use mxpolicy_host::{
    Host, ManualClock, MemoryHomeserver, MemoryStore, PluginSpec,
    ruma::{OwnedServerName, owned_server_name},
};

/// Generous deadline for real plugins in tests: the suite runs many tests in parallel on two
/// cores, and a 10 ms production deadline would fail on scheduling noise, not on the plugin.
pub const TEST_DEADLINE: Duration = Duration::from_secs(2);

/// The start of every test clock: 2026-01-01T00:00:00Z.
pub const T0: u64 = 1_767_225_600_000;

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// The repository's root (the workspace).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The modification time of the newest file under `dir`, recursively.
pub fn newest_source(dir: &Path) -> SystemTime {
    let mut newest = SystemTime::UNIX_EPOCH;
    for entry in std::fs::read_dir(dir).expect("cli sources").flatten() {
        let path = entry.path();
        let modified = if path.is_dir() {
            newest_source(&path)
        } else {
            entry
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH)
        };
        newest = newest.max(modified);
    }
    newest
}

/// The built `mxpolicy` binary (`cargo build -p mxpolicy`), for the tests that run the command
/// as a subprocess; fails with the command to run when it is missing or older than its sources.
pub fn binary() -> PathBuf {
    let bin = target_dir()
        .join("debug")
        .join(format!("mxpolicy{}", std::env::consts::EXE_SUFFIX));
    let Ok(built) = std::fs::metadata(&bin).and_then(|m| m.modified()) else {
        panic!(
            "{} is missing: run `cargo build -p mxpolicy` before the tests (the README's test \
             command does)",
            bin.display()
        );
    };
    assert!(
        built >= newest_source(&repo().join("cli/src")),
        "{} is older than cli/src: run `cargo build -p mxpolicy` before the tests",
        bin.display()
    );
    bin
}

/// Path of a plugin built by `cargo xtask build-plugins` (`policies/<name>` or
/// `tests/plugins/<name>`).
pub fn plugin_path(name: &str) -> PathBuf {
    let path = target_dir().join("plugins").join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: run `cargo xtask build-plugins` before the tests (the README's test \
         command does)",
        path.display()
    );
    path
}

/// A spec for a built plugin with the test deadline.
pub fn spec(name: &str) -> PluginSpec {
    PluginSpec::file(plugin_path(name)).deadline(TEST_DEADLINE)
}

pub struct TestHost {
    pub host: Host,
    pub homeserver: Arc<MemoryHomeserver>,
    pub clock: Arc<ManualClock>,
    pub store: Arc<MemoryStore>,
}

pub fn server_name() -> OwnedServerName {
    owned_server_name!("hs.example")
}

/// A host for `hs.example` with an in-memory store and a manual clock at [`T0`].
pub fn test_host() -> TestHost {
    let homeserver = Arc::new(MemoryHomeserver::new(server_name()));
    let clock = Arc::new(ManualClock::new(T0));
    let store = Arc::new(MemoryStore::new());
    let host = Host::builder(homeserver.clone(), store.clone())
        .clock(clock.clone())
        .build()
        .expect("host");
    TestHost {
        host,
        homeserver,
        clock,
        store,
    }
}

/// Deliver timer `id` of `plugin` again, due now, with `payload` as the SDK writes it (JSON):
/// what happens when a handler's process dies after its effects but before its commit, or
/// any other duplicate delivery. Timer handlers must be idempotent under it.
pub fn redeliver_timer(t: &TestHost, plugin: &str, id: &str, payload: &serde_json::Value) {
    use mxpolicy_host::{Changes, Clock, Quota, ScheduledTimer, StateStore, Transaction};
    let mut changes = Changes::default();
    changes.timers.insert(
        id.to_owned(),
        Some(ScheduledTimer {
            due_ms: t.clock.now_ms(),
            payload: serde_json::to_vec(payload).expect("json"),
            attempts: 0,
        }),
    );
    t.store
        .commit(plugin, &Transaction::writes(changes), &Quota::UNLIMITED)
        .expect("redeliver");
}
