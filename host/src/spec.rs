//! [`PluginSpec`]: what to load and with which limits, configuration and failure policies.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use serde_json::Value;

use crate::{
    engine::TICK,
    types::{FailurePolicy, Hook},
};

/// Default deadline of one hook call. Epochs tick every millisecond, so a call is interrupted
/// between `deadline` and `deadline + 1 ms` after it started.
pub const DEFAULT_DEADLINE: Duration = Duration::from_millis(10);
/// Default cap on a plugin's linear memory.
pub const DEFAULT_MEMORY_BYTES: usize = 32 << 20;
/// Default cap on what one call may return (strings, lists, HTTP bodies), in bytes.
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 1 << 20;

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
}

/// A plugin to load: its component, its configuration, its limits.
///
/// ```
/// use std::time::Duration;
/// use mxpolicy_host::{FailurePolicy, Hook, PluginSpec};
///
/// let spec = PluginSpec::file("target/plugins/keyword_filter.wasm")
///     .config(serde_json::json!({"keywords": ["spam"]}))
///     .deadline(Duration::from_millis(5))
///     .failure_policy(Hook::OnSend, FailurePolicy::Open);
/// # let _ = spec;
/// ```
#[derive(Debug, Clone)]
pub struct PluginSpec {
    pub(crate) source: Source,
    pub(crate) config: Value,
    pub(crate) settings: Settings,
}

/// Limits and policies of one loaded plugin.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) deadline: Duration,
    pub(crate) memory_bytes: usize,
    pub(crate) max_output_bytes: usize,
    pub(crate) failure: BTreeMap<Hook, FailurePolicy>,
    pub(crate) instance_mode: InstanceMode,
}

impl Settings {
    /// The deadline in epoch ticks (at least one).
    pub(crate) fn deadline_ticks(&self) -> u64 {
        self.deadline.as_millis().div_ceil(TICK.as_millis()).max(1) as u64
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
            config: Value::Object(Default::default()),
            settings: Settings {
                deadline: DEFAULT_DEADLINE,
                memory_bytes: DEFAULT_MEMORY_BYTES,
                max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
                failure: BTreeMap::new(),
                instance_mode: InstanceMode::default(),
            },
        }
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

    /// Deadline of each hook call, instantiation included. Default [`DEFAULT_DEADLINE`].
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.settings.deadline = deadline;
        self
    }

    /// Cap on the plugin's linear memory. Default [`DEFAULT_MEMORY_BYTES`].
    pub fn memory_limit(mut self, bytes: usize) -> Self {
        self.settings.memory_bytes = bytes;
        self
    }

    /// Cap on the bytes one call may return. Default [`DEFAULT_MAX_OUTPUT_BYTES`].
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
}
