//! Errors of the host API. Every error that involves a plugin names it, and the hook when there
//! is one.

use std::fmt;

use crate::types::Hook;

/// Result type of the host API.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error of the host API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A plugin could not be loaded: unreadable file, not a component, missing exports,
    /// failing `describe`, ...
    #[error("plugin `{plugin}`: cannot load: {message}")]
    Load {
        /// The plugin (its name, or its file when the name is not known yet).
        plugin: String,
        /// What went wrong.
        message: String,
    },
    /// The component imports something outside the `mxpolicy:policy` world (WASI, for
    /// example). Refused at load time.
    #[error(
        "plugin `{plugin}`: imports `{import}`, which the mxpolicy host does not provide \
         (allowed: {allowed}); build the plugin for wasm32-unknown-unknown with the mxpolicy \
         SDK, or remove the import"
    )]
    ForbiddenImport {
        /// The plugin (its file when the name is not known yet).
        plugin: String,
        /// The import's name, e.g. `wasi:io/poll@0.2.6`.
        import: String,
        /// The imports the host provides.
        allowed: String,
    },
    /// The plugin refused its configuration.
    #[error("plugin `{plugin}`: invalid config at `{key}`: {message}")]
    Config {
        /// The plugin name.
        plugin: String,
        /// The offending key (dotted path), empty for the whole document.
        key: String,
        /// The plugin's explanation.
        message: String,
    },
    /// A plugin with this name is already in the chain.
    #[error("plugin `{0}` is already loaded; use `replace` to swap it")]
    Duplicate(String),
    /// No plugin with this name is in the chain.
    #[error("no plugin named `{0}` is loaded")]
    NoSuchPlugin(String),
    /// A replacement reported a different name than the plugin it replaces.
    #[error("replacement for plugin `{expected}` calls itself `{found}`")]
    NameMismatch {
        /// The name of the plugin being replaced.
        expected: String,
        /// The name the new build reports.
        found: String,
    },
    /// The homeserver passed input the host cannot use (an event without `event_id`, ...).
    #[error("bad input for {hook}: {message}")]
    BadInput {
        /// The hook being called.
        hook: Hook,
        /// What is wrong.
        message: String,
    },
    /// A plugin refused an admin command (unknown command, bad arguments).
    #[error("plugin `{plugin}`: admin command `{command}` refused: {message}")]
    AdminRefused {
        /// The plugin.
        plugin: String,
        /// The command.
        command: String,
        /// The plugin's message.
        message: String,
    },
    /// A plugin failed while handling a call whose result cannot be substituted (admin
    /// commands).
    #[error("{0}")]
    PluginFailed(PluginFailure),
    /// The state store failed.
    #[error("state store: {0}")]
    Store(#[from] StoreError),
    /// The wasmtime engine could not be set up.
    #[error("engine: {0}")]
    Engine(String),
    /// A problem in a policy-set file, naming the file, the entry and the key.
    #[error("{file}: {}{}{message}", entry.as_ref().map(|e| format!("entry `{e}`: ")).unwrap_or_default(), if key.is_empty() { String::new() } else { format!("`{key}`: ") })]
    PolicySet {
        /// The policy-set file.
        file: String,
        /// The entry (instance name, or `plugin[i]`).
        entry: Option<String>,
        /// The key (dotted path), empty when the problem is the entry as a whole.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// The on-disk compile cache cannot be used (its directory or key).
    #[error("compile cache {dir}: {message}")]
    CompileCache {
        /// The cache directory.
        dir: String,
        /// What is wrong.
        message: String,
    },
    /// [`Host::rollback`](crate::Host::rollback) with no previous chain kept.
    #[error("no previous policy set to roll back to")]
    NoPreviousGeneration,
    /// A limit in a [`PluginSpec`](crate::PluginSpec) or the host's configuration is out of
    /// its allowed range.
    #[error("plugin `{plugin}`: invalid limit `{limit}`: {message}")]
    InvalidLimit {
        /// The plugin (its instance name).
        plugin: String,
        /// The limit, as its builder method is named (`deadline`, `memory_limit`, ...).
        limit: &'static str,
        /// The allowed range and the value given.
        message: String,
    },
}

/// A failure of one plugin during one hook call. Contained: the host applies the plugin's
/// failure policy and keeps serving; the failure is reported in the decision and logged.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PluginFailure {
    /// The plugin that failed.
    pub plugin: String,
    /// The hook it failed in.
    pub hook: Hook,
    /// Why.
    pub cause: FailureCause,
    /// What the host did about it.
    pub applied: crate::FailurePolicy,
}

impl fmt::Display for PluginFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "plugin `{}` failed in {}: {} (failing {})",
            self.plugin, self.hook, self.cause, self.applied
        )
    }
}

impl std::error::Error for PluginFailure {}

/// Why a plugin call failed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", content = "detail", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum FailureCause {
    /// The call ran past its deadline.
    Timeout {
        /// The deadline, in milliseconds.
        deadline_ms: u64,
    },
    /// The plugin tried to grow its memory past the cap.
    OutOfMemory {
        /// The cap, in bytes.
        limit_bytes: u64,
    },
    /// The plugin trapped (a panic, `unreachable`, a bad memory access, ...).
    Trap(String),
    /// The plugin returned more bytes than allowed.
    OutputTooLarge {
        /// Bytes returned.
        bytes: u64,
        /// The limit.
        limit_bytes: u64,
    },
    /// The plugin returned something malformed (a wrong number of serve verdicts, an invalid
    /// Matrix id in an action, invalid JSON in error fields, ...).
    InvalidOutput(String),
    /// The plugin's configuration was refused when a new instance was created.
    Config(String),
    /// The state store failed while committing the call's writes.
    Store(String),
    /// The plugin overflowed its stack: wasmtime's native stack limit, or the shadow stack a
    /// Rust or C guest keeps in its linear memory (which wraps below address zero and faults
    /// at the top of the 32-bit address space).
    StackOverflow,
    /// The plugin exceeded a per-call limit: state written in one call, the size of a key,
    /// timer id or timer payload, the number of keys one `keys` call may return.
    LimitExceeded(String),
    /// The plugin's persistent state quota (keys, bytes or scheduled timers) would be
    /// exceeded by the call's writes; the writes are dropped.
    QuotaExceeded(String),
    /// The plugin already runs as many calls as its concurrency limit allows, and no slot
    /// freed up within its deadline. Only this plugin's calls are refused.
    Busy {
        /// The plugin's concurrency limit.
        max_concurrency: u32,
    },
    /// The call kept conflicting with concurrent calls that wrote keys it read (see
    /// [`StateStore`](crate::StateStore)'s transactions), and was given up.
    Conflict(String),
    /// A question the plugin asked the homeserver during the call could not be answered (the
    /// homeserver was unreachable: [`Homeserver::take_failure`](crate::Homeserver::take_failure)).
    /// The call's writes are dropped; a timer is retried with backoff, so no decision is
    /// made on an answer that did not come.
    Homeserver(String),
    /// wasmtime's instance pool had no free slot (memories, tables or instances). The host
    /// reserves pool capacity per plugin, so this means the pool is configured smaller than
    /// the chain needs.
    PoolExhausted(String),
}

impl fmt::Display for FailureCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout { deadline_ms } => write!(f, "timed out after {deadline_ms} ms"),
            Self::OutOfMemory { limit_bytes } => {
                write!(f, "out of memory (cap {limit_bytes} bytes)")
            }
            Self::Trap(msg) => write!(f, "trapped: {msg}"),
            Self::OutputTooLarge { bytes, limit_bytes } => {
                write!(f, "output too large ({bytes} bytes, limit {limit_bytes})")
            }
            Self::InvalidOutput(msg) => write!(f, "invalid output: {msg}"),
            Self::Config(msg) => write!(f, "config refused: {msg}"),
            Self::Store(msg) => write!(f, "state store failed: {msg}"),
            Self::StackOverflow => write!(f, "stack overflow"),
            Self::LimitExceeded(msg) => write!(f, "limit exceeded: {msg}"),
            Self::QuotaExceeded(msg) => write!(f, "state quota exceeded: {msg}"),
            Self::Busy { max_concurrency } => write!(
                f,
                "busy: all {max_concurrency} concurrent calls allowed for this plugin are in use"
            ),
            Self::PoolExhausted(msg) => write!(f, "instance pool exhausted: {msg}"),
            Self::Homeserver(msg) => write!(f, "the homeserver did not answer: {msg}"),
            Self::Conflict(key) => write!(f, "state conflict: {key}"),
        }
    }
}

/// An error of a [`StateStore`](crate::StateStore) implementation.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub Box<dyn std::error::Error + Send + Sync>);

impl StoreError {
    /// Wrap any error.
    pub fn new(err: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self(err.into())
    }

    /// The quota violation, if this error is one.
    pub fn quota_exceeded(&self) -> Option<&QuotaExceeded> {
        self.0.downcast_ref()
    }
}

/// The error a [`StateStore`](crate::StateStore) returns (inside a [`StoreError`]) when a
/// commit would take a plugin past its [`Quota`](crate::Quota). The host reports it as
/// [`FailureCause::QuotaExceeded`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {used} after this call, quota {limit}")]
pub struct QuotaExceeded {
    /// Which quota: `keys`, `bytes` or `timers`.
    pub what: &'static str,
    /// The usage the commit would reach.
    pub used: u64,
    /// The quota.
    pub limit: u64,
}
