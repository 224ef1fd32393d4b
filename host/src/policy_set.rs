//! The policy-set file: the one way an operator describes a chain of plugins, read by an
//! embedding homeserver ([`PolicySet::from_file`], then [`Host::apply`](crate::Host::apply))
//! and by the service mode.
//!
//! ```toml
//! [store]
//! url = "sqlite:/var/lib/mxpolicy/state.db"
//!
//! [engine]
//! pinned_only = false          # allow-list mode: every entry must pin its sha256
//! keep_generations = 3         # how many previous chains `rollback` can go back to
//! cache_dir = "cache"          # compiled components kept between runs (MAC-verified)
//!
//! [[plugin]]
//! instance = "consent"                     # keys the chain, the state, the web endpoints
//! path = "plugins/consent.wasm"            # relative to this file
//! sha256 = "9f2c..."                       # optional pin
//! deadline_ms = 10
//! instance_mode = "fresh"                  # or "reuse": warm instances, for trusted plugins
//! failure = { on-send = "closed" }
//! config = { version = "1.0", public_baseurl = "https://hs.example/" }
//!
//! [[plugin]]
//! instance = "spam-words"
//! path = "plugins/keyword-filter.wasm"
//! config_file = "spam-words.json"          # or TOML
//! ```
//!
//! Every error names the file, the entry (by instance name, or its position) and the key.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::{
    error::Error,
    file::{MAX_COMPONENT_BYTES, read_bounded, read_bounded_to_string},
    homeserver::Homeserver,
    host::{Host, HostBuilder},
    spec::PluginSpec,
    storage::Quota,
    types::{FailurePolicy, Hook},
};

/// Largest policy-set or plugin-config file read.
pub const MAX_POLICY_SET_BYTES: u64 = 4 << 20;

/// A parsed policy-set file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySet {
    /// Where state lives (the service opens it; an embedding homeserver may pass its own).
    #[serde(default)]
    pub store: Option<StoreSection>,
    /// Engine-wide settings.
    #[serde(default)]
    pub engine: EngineSection,
    /// Settings of the service mode (`mxpolicy serve`), which parses and checks them; an
    /// embedding homeserver ignores them.
    #[serde(default)]
    pub service: Option<toml::Table>,
    /// The chain, in order.
    #[serde(default, rename = "plugin")]
    pub plugins: Vec<Entry>,
    /// The file it was read from (paths in it are relative to its directory).
    #[serde(skip)]
    pub file: PathBuf,
}

/// `[store]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// `sqlite:PATH` (relative to the policy-set file) or `postgresql://...` (see
    /// [`open_store`](crate::open_store)).
    pub url: String,
}

/// `[engine]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSection {
    /// Allow-list mode: an entry without a `sha256` pin is refused.
    #[serde(default)]
    pub pinned_only: bool,
    /// Previous chains kept for [`Host::rollback`](crate::Host::rollback). Default 3.
    #[serde(default = "default_keep")]
    pub keep_generations: usize,
    /// Directory of the on-disk compile cache, relative to the policy-set file (see
    /// [`HostBuilder::compile_cache`]). Default: none, components are compiled once per
    /// process.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
}

impl Default for EngineSection {
    fn default() -> Self {
        Self {
            pinned_only: false,
            keep_generations: default_keep(),
            cache_dir: None,
        }
    }
}

fn default_keep() -> usize {
    3
}

/// One `[[plugin]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// The instance name: keys the chain and the plugin's state.
    pub instance: String,
    /// The component, relative to the policy-set file.
    pub path: PathBuf,
    /// Hex SHA-256 the component's bytes must have.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Deadline of each call, in ms.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// Memory cap, in bytes.
    #[serde(default)]
    pub memory_bytes: Option<usize>,
    /// Output cap, in bytes.
    #[serde(default)]
    pub max_output_bytes: Option<usize>,
    /// Concurrent calls.
    #[serde(default)]
    pub max_concurrency: Option<u32>,
    /// `fresh` (default: a new instance per call) or `reuse` (warm instances; only for
    /// plugins trusted to keep no per-call data in memory, see [`InstanceMode`](crate::InstanceMode)).
    #[serde(default)]
    pub instance_mode: Option<crate::InstanceMode>,
    /// State quota: keys.
    #[serde(default)]
    pub max_keys: Option<u64>,
    /// State quota: bytes.
    #[serde(default)]
    pub max_bytes: Option<u64>,
    /// State quota: timers.
    #[serde(default)]
    pub max_timers: Option<u64>,
    /// Failure policy per hook (`on-send = "open"`).
    #[serde(default)]
    pub failure: BTreeMap<Hook, FailurePolicy>,
    /// The plugin's configuration, inline.
    #[serde(default)]
    pub config: Option<toml::Table>,
    /// The plugin's configuration, in a JSON or TOML file relative to the policy-set file.
    #[serde(default)]
    pub config_file: Option<PathBuf>,
}

fn problem(file: &Path, entry: Option<&str>, key: &str, message: impl Into<String>) -> Error {
    Error::PolicySet {
        file: file.display().to_string(),
        entry: entry.map(str::to_owned),
        key: key.to_owned(),
        message: message.into(),
    }
}

impl PolicySet {
    /// Read and parse `path`. A syntax or type error names the key (its dotted path).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let text = read_bounded_to_string(path, MAX_POLICY_SET_BYTES)
            .map_err(|e| problem(path, None, "", format!("cannot read: {e}")))?;
        let mut set = Self::from_str(&text).map_err(|(key, message)| {
            let entry = entry_of(&key);
            problem(path, entry.as_deref(), &key, message)
        })?;
        set.file = path.to_owned();
        Ok(set)
    }

    /// Parse policy-set text. Errors are `(key, message)`.
    fn from_str(text: &str) -> Result<Self, (String, String)> {
        let de = toml::Deserializer::parse(text).map_err(|e| (String::new(), e.to_string()))?;
        serde_path_to_error::deserialize(de)
            .map_err(|e| (e.path().to_string(), e.inner().to_string()))
    }

    /// A [`HostBuilder`] for this set: its `[store]` opened with
    /// [`open_store`](crate::open_store) and its `engine.cache_dir` as the compile cache.
    /// Apply the set to the built host with [`Host::apply`](crate::Host::apply). Errors
    /// when the set names no store or the store cannot be opened.
    pub fn host_builder(&self, homeserver: Arc<dyn Homeserver>) -> Result<HostBuilder, Error> {
        let Some(store) = &self.store else {
            return Err(problem(
                &self.file,
                None,
                "store.url",
                "the set names no store",
            ));
        };
        // A relative SQLite path is relative to the set, like every other path in it.
        let url = match store.url.strip_prefix("sqlite:") {
            Some(path) if Path::new(path).is_relative() && !path.is_empty() => {
                format!("sqlite:{}", self.dir().join(path).display())
            }
            _ => store.url.clone(),
        };
        let state = crate::open_store(&url)
            .map_err(|e| problem(&self.file, None, "store.url", e.to_string()))?;
        let mut builder = Host::builder(homeserver, state);
        if let Some(dir) = &self.engine.cache_dir {
            builder = builder.compile_cache(self.dir().join(dir));
        }
        Ok(builder)
    }

    /// Every file the set is made of: the set itself, each entry's component and config
    /// file. A watcher reloads when one of them changes.
    pub fn files(&self) -> Vec<PathBuf> {
        let dir = self.dir();
        let mut files = vec![self.file.clone()];
        for entry in &self.plugins {
            files.push(dir.join(&entry.path));
            if let Some(config) = &entry.config_file {
                files.push(dir.join(config));
            }
        }
        files
    }

    fn dir(&self) -> PathBuf {
        self.file
            .parent()
            .map(Path::to_owned)
            .unwrap_or_else(|| PathBuf::from("."))
    }

    /// Every entry as a [`PluginSpec`] (component bytes read once and hashed, pins checked,
    /// configs read), or every problem found.
    pub fn specs(&self) -> Result<Vec<PluginSpec>, Vec<Error>> {
        let (specs, problems): (Vec<_>, Vec<_>) =
            self.spec_results().into_iter().partition(Result::is_ok);
        if problems.is_empty() {
            Ok(specs.into_iter().filter_map(Result::ok).collect())
        } else {
            Err(problems.into_iter().filter_map(Result::err).collect())
        }
    }

    /// Each entry's spec or its problem, in order.
    pub(crate) fn spec_results(&self) -> Vec<Result<PluginSpec, Error>> {
        let dir = self.dir();
        let mut results = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for (i, entry) in self.plugins.iter().enumerate() {
            let name = if entry.instance.is_empty() {
                format!("plugin[{i}]")
            } else {
                entry.instance.clone()
            };
            let fail = |key: &str, message: String| problem(&self.file, Some(&name), key, message);
            if !seen.insert(entry.instance.clone()) {
                results.push(Err(fail(
                    "instance",
                    "another entry has this instance name".into(),
                )));
                continue;
            }
            results.push(self.spec(&dir, entry, &fail));
        }
        results
    }

    fn spec(
        &self,
        dir: &Path,
        entry: &Entry,
        fail: &dyn Fn(&str, String) -> Error,
    ) -> Result<PluginSpec, Error> {
        let path = dir.join(&entry.path);
        // Read once: the bytes hashed are the bytes compiled.
        let bytes = read_bounded(&path, MAX_COMPONENT_BYTES)
            .map_err(|e| fail("path", format!("cannot read {}: {e}", path.display())))?;
        let sha = hex::encode(Sha256::digest(&bytes));
        match &entry.sha256 {
            Some(pin) if !pin.eq_ignore_ascii_case(&sha) => {
                return Err(fail(
                    "sha256",
                    format!("{} has sha256 {sha}, the entry pins {pin}", path.display()),
                ));
            }
            None if self.engine.pinned_only => {
                return Err(fail(
                    "sha256",
                    "allow-list mode (engine.pinned_only): every entry must pin its sha256".into(),
                ));
            }
            _ => {}
        }
        let config = match (&entry.config, &entry.config_file) {
            (Some(_), Some(_)) => {
                return Err(fail(
                    "config_file",
                    "give `config` or `config_file`, not both".into(),
                ));
            }
            (Some(table), None) => serde_json::to_value(table)
                .map_err(|e| fail("config", format!("not representable as JSON: {e}")))?,
            (None, Some(file)) => {
                read_config(&dir.join(file)).map_err(|message| fail("config_file", message))?
            }
            (None, None) => serde_json::json!({}),
        };
        let mut spec = PluginSpec::bytes(entry.instance.clone(), bytes)
            .instance(entry.instance.clone())
            .config(config);
        spec.sha256 = Some(sha);
        if let Some(ms) = entry.deadline_ms {
            spec = spec.deadline(Duration::from_millis(ms));
        }
        if let Some(b) = entry.memory_bytes {
            spec = spec.memory_limit(b);
        }
        if let Some(b) = entry.max_output_bytes {
            spec = spec.max_output(b);
        }
        if let Some(n) = entry.max_concurrency {
            spec = spec.max_concurrency(n);
        }
        if let Some(mode) = entry.instance_mode {
            spec = spec.instance_mode(mode);
        }
        let defaults = crate::spec::DEFAULT_QUOTA;
        spec = spec.quota(Quota {
            max_keys: entry.max_keys.unwrap_or(defaults.max_keys),
            max_bytes: entry.max_bytes.unwrap_or(defaults.max_bytes),
            max_timers: entry.max_timers.unwrap_or(defaults.max_timers),
        });
        for (hook, policy) in &entry.failure {
            spec = spec.failure_policy(*hook, *policy);
        }
        Ok(spec)
    }
}

/// A plugin config file: JSON, or TOML by its `.toml` extension.
fn read_config(path: &Path) -> Result<serde_json::Value, String> {
    let text = read_bounded_to_string(path, MAX_POLICY_SET_BYTES)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if path.extension().is_some_and(|e| e == "toml") {
        let table: toml::Table =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::to_value(table).map_err(|e| format!("{}: {e}", path.display()))
    } else {
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// The entry a key path points into (`plugin[2].deadline_ms` is entry 2), for errors found
/// while parsing, before instance names are known.
fn entry_of(key: &str) -> Option<String> {
    key.strip_prefix("plugin[")
        .and_then(|rest| rest.split(']').next())
        .map(|i| format!("plugin[{i}]"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_name_the_key() {
        let (key, message) = PolicySet::from_str(
            "[[plugin]]\ninstance = \"a\"\npath = \"a.wasm\"\ndeadline_ms = \"x\"\n",
        )
        .unwrap_err();
        assert_eq!(key, "plugin[0].deadline_ms");
        assert!(message.contains("invalid type"), "{message}");
        let (key, _) = PolicySet::from_str("[engine]\npinned = true\n").unwrap_err();
        assert_eq!(key, "engine.pinned");
        assert_eq!(entry_of("plugin[3].failure"), Some("plugin[3]".into()));
    }

    #[test]
    fn a_full_file_parses() {
        let set = PolicySet::from_str(
            "[store]\nurl = \"sqlite:x.db\"\n[engine]\npinned_only = true\n\
             [[plugin]]\ninstance = \"a\"\npath = \"a.wasm\"\nfailure = { on-send = \"open\" }\n\
             config = { keywords = [\"x\"] }\n",
        )
        .unwrap();
        assert!(set.engine.pinned_only);
        assert_eq!(set.plugins[0].failure[&Hook::OnSend], FailurePolicy::Open);
    }
}
