//! The mxpolicy host: run WebAssembly policy plugins inside a Matrix homeserver.
//!
//! A homeserver builds one [`Host`], loads an ordered chain of plugins (WebAssembly components
//! targeting the `mxpolicy:policy` world in `wit/`), and calls a hook wherever its own code
//! reaches the matching point: [`Host::on_send`] before accepting a local event,
//! [`Host::on_client_serve`] / [`Host::on_federation_serve`] before serving events,
//! [`Host::on_deactivate`], [`Host::on_media_fetch`], and so on.
//!
//! ```no_run
//! use std::sync::Arc;
//! use mxpolicy_host::{Host, MemoryHomeserver, PluginSpec, SendEvent, SqliteStore, Verdict};
//! use ruma::{owned_room_id, owned_server_name, owned_user_id, RoomVersionId};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let homeserver = Arc::new(MemoryHomeserver::new(owned_server_name!("hs.example")));
//! let store = Arc::new(SqliteStore::open("mxpolicy-state.db")?);
//! let host = Host::builder(homeserver, store).build()?;
//! host.load(
//!     PluginSpec::file("target/plugins/keyword-filter.wasm")
//!         .config(serde_json::json!({"keywords": ["buy now"]})),
//! )?;
//!
//! let decision = host.on_send(&SendEvent {
//!     sender: owned_user_id!("@alice:hs.example"),
//!     sender_kind: Default::default(),
//!     room_id: owned_room_id!("!room:hs.example"),
//!     room_version: RoomVersionId::V11,
//!     event_type: "m.room.message".into(),
//!     state_key: None,
//!     content: serde_json::json!({"msgtype": "m.text", "body": "BUY NOW!"}),
//!     origin_server_ts: 1_700_000_000_000,
//!     is_server_notices_room: false,
//! });
//! match decision.outcome {
//!     Verdict::Allow => println!("accepted"),
//!     // Return HTTP 403 with this body, exactly as Synapse would.
//!     Verdict::Deny(error) => println!("403 {}", error.to_body()),
//! }
//! # Ok(()) }
//! ```
//!
//! # Composition
//! Plugins run in chain order, and only for the hooks they declared. For on-send, media,
//! deactivate and reactivate hooks the first deny wins (later plugins are not called); for the
//! serve hooks every plugin runs and the most restrictive verdict wins per event
//! (withhold > pseudonymize > redact > serve). Actions are concatenated in chain order. The host
//! redacts with ruma's implementation of the redaction algorithm of each event's room version.
//!
//! # Containment
//! Each call has an epoch deadline, a memory cap, an output cap, a per-call write budget and a
//! concurrency slot; each plugin has a state quota. A trap, timeout, stack overflow,
//! out-of-memory, exceeded limit, oversized or malformed output is a [`PluginFailure`] naming
//! the plugin instance, hook and cause, and the plugin's
//! [`FailurePolicy`] for that hook applies (closed by default for everything that guards data).
//! State written during a failing call is dropped. Components importing anything outside the
//! world (WASI included) are refused at load time.
//!
//! # Hot swap
//! [`Host::replace`] compiles and validates a new build, then publishes a new immutable chain
//! generation atomically: calls in flight finish on the old build; state, keyed by the plugin's
//! instance name, carries over.

#![deny(missing_docs)]

mod bindings;
mod cache;
mod changes;
mod clock;
mod context;
mod convert;
mod decision;
mod engine;
mod error;
mod file;
mod homeserver;
mod host;
mod imports;
mod json;
mod metrics;
mod plugin;
mod policy_set;
mod redact;
mod slots;
mod spec;
mod storage;
mod text;
mod types;
mod watch;

pub use cache::CompileStats;
pub use changes::Change;
#[cfg(feature = "testing")]
pub use clock::ManualClock;
pub use clock::{Clock, SystemClock};
pub use decision::{Decision, FiredTimer, TimerStats};
pub use engine::Allocation;
pub use error::{Error, FailureCause, PluginFailure, QuotaExceeded, Result, StoreError};
pub use file::{MAX_COMPONENT_BYTES, read_bounded, read_bounded_to_string};
pub use homeserver::Homeserver;
#[cfg(feature = "testing")]
pub use homeserver::MemoryHomeserver;
pub use host::{
    Applied, DEFAULT_TIMERS_PER_PASS, Host, HostBuilder, Inspection, MAX_TIMER_ATTEMPTS,
    OUTBOX_LEASE_MS, PendingAction, PluginReport, TIMER_LEASE_MS, TIMER_RETRY_BASE_MS,
    TIMER_RETRY_MAX_MS,
};
pub use json::DEFAULT_MAX_CONTENT_DEPTH;
pub use policy_set::{
    EngineSection, Entry as PolicyEntry, MAX_POLICY_SET_BYTES, PolicySet, StoreSection,
};
/// ruma is part of this crate's API: every id in the hook types is a ruma id, and events are
/// redacted with ruma's rules. It is re-exported so an embedder names exactly the version the
/// host was built with; a ruma release that breaks these types is a breaking release of
/// this crate.
pub use ruma;
pub use spec::{
    DEFAULT_DEADLINE, DEFAULT_MAX_CONCURRENCY, DEFAULT_MAX_OUTPUT_BYTES, DEFAULT_MEMORY_BYTES,
    DEFAULT_QUOTA, InstanceMode, PluginSpec,
};
#[cfg(feature = "testing")]
pub use storage::MemoryStore;
pub use storage::{
    Changes, Claimed, Conflict, ENTRY_OVERHEAD_BYTES, Entry, ListRead, OutboxEntry, PostgresStore,
    Quota, ScheduledTimer, SqliteStore, StateStore, Timer, Transaction, entry_bytes, open_store,
};
pub use types::{
    Action, Deactivation, FailurePolicy, HistoryVisibility, Hook, HttpRequest, HttpResponse,
    MatrixError, MediaFetch, MediaUpload, PluginInfo, Reactivation, Requester, SendEvent,
    ServeEvent, ServeVerdict, ServedEvent, UserKind, Verdict, Viewer,
};
pub use watch::{Reload, WatchStats, Watcher};
