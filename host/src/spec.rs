//! [`PluginSpec`]: what to load and with which limits, configuration and failure policies.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use serde_json::Value;

use crate::{
    engine::TICK,
    error::{Error, Result},
    storage::Quota,
    types::{FailurePolicy, Hook},
};

/// Shortest deadline of the calls a load makes (see `Settings::load_deadline_ticks`).
pub(crate) const LOAD_DEADLINE: Duration = Duration::from_secs(1);

/// Shortest deadline of an `on-timer` call (see `Settings::timer_deadline`).
pub(crate) const TIMER_DEADLINE: Duration = Duration::from_secs(2);

/// Default deadline of one hook call. Epochs tick every millisecond, so a call is interrupted
/// between `deadline` and `deadline + 1 ms` after it started.
pub const DEFAULT_DEADLINE: Duration = Duration::from_millis(10);
/// Default cap on a plugin's linear memory.
pub const DEFAULT_MEMORY_BYTES: usize = 32 << 20;
/// Default cap on what one call may return (strings, lists, HTTP bodies), in bytes.
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 1 << 20;
/// Default number of calls of one plugin that may run at once. Further calls wait for a free
/// slot until the plugin's deadline, then fail with
/// [`FailureCause::Busy`](crate::FailureCause::Busy); other plugins are not affected.
pub const DEFAULT_MAX_CONCURRENCY: u32 = 16;
/// Default state quota of one plugin: keys, bytes (with
/// [`ENTRY_OVERHEAD_BYTES`](crate::ENTRY_OVERHEAD_BYTES) per entry) and scheduled timers.
pub const DEFAULT_QUOTA: Quota = Quota {
    max_keys: 1_000_000,
    max_bytes: 256 << 20,
    max_timers: 100_000,
};

/// The range every limit must fall in, checked when a spec is loaded.
const DEADLINE_RANGE: (Duration, Duration) = (Duration::from_millis(1), Duration::from_secs(60));
const MEMORY_RANGE: (usize, usize) = (1 << 20, 4 << 30);
const OUTPUT_RANGE: (usize, usize) = (1 << 10, 256 << 20);
const CONCURRENCY_RANGE: (u32, u32) = (1, 4096);

/// How a plugin's instances are used across calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceMode {
    /// A new instance for every call (the default): nothing a call leaves in the plugin's
    /// memory can reach a later call, so one user's data can never leak into another user's
    /// decision. Costs an instantiation per call; see the README's benchmark table.
    #[default]
    Fresh,
    /// Keep warm instances and reuse them. Faster, but a plugin's globals persist between calls;
    /// only for plugins you trust to keep no per-call data in memory. A trapped instance is
    /// always dropped, never reused.
    Reuse,
}

/// Where the component's bytes come from.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    File(PathBuf),
    Bytes { label: String, bytes: Vec<u8> },
}

impl Source {
    pub(crate) fn label(&self) -> String {
        match self {
            Source::File(p) => p.display().to_string(),
            Source::Bytes { label, .. } => label.clone(),
        }
    }

    /// The instance name when the operator gave none: the file's stem
    /// (`plugins/consent.wasm` is `consent`), or the label of a byte source.
    pub(crate) fn default_instance(&self) -> String {
        match self {
            Source::File(p) => p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            Source::Bytes { label, .. } => label.clone(),
        }
    }
}

/// A plugin to load: its component, its configuration, its limits.
///
/// ```
/// use std::time::Duration;
/// use mxpolicy_host::{FailurePolicy, Hook, PluginSpec};
///
/// let spec = PluginSpec::file("target/plugins/keyword-filter.wasm")
///     .config(serde_json::json!({"keywords": ["spam"]}))
///     .deadline(Duration::from_millis(5))
///     .failure_policy(Hook::OnSend, FailurePolicy::Open);
/// # let _ = spec;
/// ```
#[derive(Debug, Clone)]
pub struct PluginSpec {
    pub(crate) source: Source,
    pub(crate) instance: Option<String>,
    pub(crate) config: Value,
    pub(crate) settings: Settings,
    /// The SHA-256 of `source`'s bytes when the caller already hashed exactly those bytes
    /// (a policy set checks pins with it), so they are not hashed twice.
    pub(crate) sha256: Option<String>,
}

/// Limits and policies of one loaded plugin.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) deadline: Duration,
    pub(crate) memory_bytes: usize,
    pub(crate) max_output_bytes: usize,
    pub(crate) failure: BTreeMap<Hook, FailurePolicy>,
    pub(crate) instance_mode: InstanceMode,
    pub(crate) max_concurrency: u32,
    pub(crate) quota: Quota,
}

/// `deadline` in epoch ticks (at least one).
pub(crate) fn ticks(deadline: Duration) -> u64 {
    let ticks = deadline.as_millis().div_ceil(TICK.as_millis()).max(1);
    u64::try_from(ticks).unwrap_or(u64::MAX)
}

impl Settings {
    /// The deadline in epoch ticks (at least one).
    pub(crate) fn deadline_ticks(&self) -> u64 {
        ticks(self.deadline)
    }

    /// The deadline of the calls a load makes (`describe`, and `init` with the config): the
    /// plugin's deadline, but at least [`LOAD_DEADLINE`]. The first instance of a component
    /// just compiled or read from the compile cache pays one-time costs (its code and memory
    /// image paged in) that no hook call pays later; a load must not fail for them. A plugin
    /// that loops in `describe` or `init` still fails, after this long.
    pub(crate) fn load_deadline(&self) -> Duration {
        self.deadline.max(LOAD_DEADLINE)
    }

    /// The deadline of an `on-timer` call: the plugin's deadline, but at least
    /// [`TIMER_DEADLINE`]. A timer is background work that nobody waits on (a grace period's
    /// end, a purge decision over every room of a user), and the homeserver's answers to its
    /// questions may have to be fetched: `mxpolicy serve` asks the homeserver back for a
    /// timer's facts, since no request brought them. A plugin looping in `on-timer` still
    /// fails, after this long, and the timer is retried with backoff.
    pub(crate) fn timer_deadline(&self) -> Duration {
        self.deadline.max(TIMER_DEADLINE)
    }

    /// Check every limit against its allowed range.
    pub(crate) fn validate(&self, plugin: &str) -> Result<()> {
        fn check<T: PartialOrd + std::fmt::Debug>(
            plugin: &str,
            limit: &'static str,
            value: T,
            (min, max): (T, T),
        ) -> Result<()> {
            if value < min || value > max {
                return Err(Error::InvalidLimit {
                    plugin: plugin.to_owned(),
                    limit,
                    message: format!("{value:?} is outside {min:?}..={max:?}"),
                });
            }
            Ok(())
        }
        check(plugin, "deadline", self.deadline, DEADLINE_RANGE)?;
        check(plugin, "memory_limit", self.memory_bytes, MEMORY_RANGE)?;
        check(plugin, "max_output", self.max_output_bytes, OUTPUT_RANGE)?;
        check(
            plugin,
            "max_concurrency",
            self.max_concurrency,
            CONCURRENCY_RANGE,
        )?;
        Ok(())
    }

    pub(crate) fn failure_policy(&self, hook: Hook) -> FailurePolicy {
        self.failure
            .get(&hook)
            .copied()
            .unwrap_or_else(|| hook.default_failure_policy())
    }
}

impl PluginSpec {
    fn new(source: Source) -> Self {
        Self {
            source,
            instance: None,
            config: Value::Object(Default::default()),
            settings: Settings {
                deadline: DEFAULT_DEADLINE,
                memory_bytes: DEFAULT_MEMORY_BYTES,
                max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
                failure: BTreeMap::new(),
                instance_mode: InstanceMode::default(),
                max_concurrency: DEFAULT_MAX_CONCURRENCY,
                quota: DEFAULT_QUOTA,
            },
            sha256: None,
        }
    }

    /// The instance name: what the chain, the plugin's state, its timers, its web endpoints
    /// and its errors are keyed by. The operator chooses it; the name a component reports
    /// about itself is only reported beside it, never trusted, so a plugin cannot read
    /// another's state by calling itself by the other's name. One component can be loaded
    /// twice under two instance names. Default: the file's stem (`plugins/consent.wasm` is
    /// `consent`), or the label given to [`PluginSpec::bytes`]. 1-64 of `a-z`, `0-9` and `-`.
    pub fn instance(mut self, name: impl Into<String>) -> Self {
        self.instance = Some(name.into());
        self
    }

    /// A component read from a file when loaded.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Self::new(Source::File(path.into()))
    }

    /// A component given as bytes; `label` names it in errors until it reports its name.
    pub fn bytes(label: impl Into<String>, bytes: Vec<u8>) -> Self {
        Self::new(Source::Bytes {
            label: label.into(),
            bytes,
        })
    }

    /// The plugin's configuration (a JSON document handed to its `init`). Default `{}`.
    pub fn config(mut self, config: Value) -> Self {
        self.config = config;
        self
    }

    /// Deadline of each hook call, instantiation included. Default [`DEFAULT_DEADLINE`];
    /// 1 ms to 60 s (checked at load).
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.settings.deadline = deadline;
        self
    }

    /// Cap on the plugin's linear memory (all its memories together). Default
    /// [`DEFAULT_MEMORY_BYTES`]; 1 MiB to 4 GiB and at most the host's pool slot (checked at
    /// load).
    pub fn memory_limit(mut self, bytes: usize) -> Self {
        self.settings.memory_bytes = bytes;
        self
    }

    /// Cap on the bytes one call may return (HTTP headers included). Default
    /// [`DEFAULT_MAX_OUTPUT_BYTES`]; 1 KiB to 256 MiB (checked at load).
    pub fn max_output(mut self, bytes: usize) -> Self {
        self.settings.max_output_bytes = bytes;
        self
    }

    /// What happens when the plugin fails in `hook`. Default: [`Hook::default_failure_policy`].
    pub fn failure_policy(mut self, hook: Hook, policy: FailurePolicy) -> Self {
        self.settings.failure.insert(hook, policy);
        self
    }

    /// Fresh instance per call (default) or reuse of warm instances.
    pub fn instance_mode(mut self, mode: InstanceMode) -> Self {
        self.settings.instance_mode = mode;
        self
    }

    /// Calls of this plugin that may run at once. Default [`DEFAULT_MAX_CONCURRENCY`];
    /// 1 to 4096, and the chain's total must fit the host's instance pool (checked at load).
    pub fn max_concurrency(mut self, calls: u32) -> Self {
        self.settings.max_concurrency = calls;
        self
    }

    /// The plugin's persistent state quota. Default [`DEFAULT_QUOTA`].
    pub fn quota(mut self, quota: Quota) -> Self {
        self.settings.quota = quota;
        self
    }
}
