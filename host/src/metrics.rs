//! What a homeserver exports about its policies, in the Prometheus text format
//! ([`Host::metrics`](crate::Host::metrics)), built with `prometheus-client`:
//!
//! - `mxpolicy_generation`: the chain's generation number;
//! - `mxpolicy_plugin_info{instance, component, version, sha256}`: 1 per loaded entry;
//! - `mxpolicy_plugin_loaded_timestamp_seconds{instance}`: when each entry's build was loaded;
//! - `mxpolicy_calls_total{instance, hook, outcome}`: calls, `outcome` = `ok`, `deny` or
//!   `failure`; timer firings are the calls of hook `on-timer`;
//! - `mxpolicy_failures_total{instance, hook, cause, applied}`: contained failures by cause
//!   and the failure policy applied;
//! - `mxpolicy_call_seconds{hook}`: latency histogram per hook (all plugins of a call).

use std::sync::Mutex;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use crate::{error::PluginFailure, types::Hook};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    instance: String,
    hook: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    instance: String,
    hook: String,
    cause: String,
    applied: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HookLabels {
    hook: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    instance: String,
    component: String,
    version: String,
    sha256: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabels {
    instance: String,
}

/// What the metrics show of one chain entry.
pub(crate) struct EntryInfo {
    pub(crate) instance: String,
    pub(crate) component: String,
    pub(crate) version: String,
    pub(crate) sha256: String,
    pub(crate) loaded_at_ms: u64,
}

/// The host's metrics.
pub(crate) struct Metrics {
    registry: Registry,
    generation: Gauge,
    info: Family<InfoLabels, Gauge>,
    loaded: Family<InstanceLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    calls: Family<CallLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    latency: Family<HookLabels, Histogram>,
    /// The info labels currently set, to clear them when the chain changes.
    current: Mutex<Vec<InfoLabels>>,
}

fn latency_histogram() -> Histogram {
    // 10 us to ~160 ms.
    Histogram::new(exponential_buckets(0.000_01, 2.0, 15))
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("mxpolicy");
        let generation = Gauge::default();
        let info = Family::<InfoLabels, Gauge>::default();
        let loaded = Family::<InstanceLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let calls = Family::<CallLabels, Counter>::default();
        let failures = Family::<FailureLabels, Counter>::default();
        let latency =
            Family::<HookLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> _);
        registry.register(
            "generation",
            "The policy chain's generation",
            generation.clone(),
        );
        registry.register("plugin_info", "One per loaded plugin entry", info.clone());
        registry.register(
            "plugin_loaded_timestamp_seconds",
            "When each entry's build was loaded (Unix time)",
            loaded.clone(),
        );
        registry.register(
            "calls",
            "Hook calls per entry, hook and outcome",
            calls.clone(),
        );
        registry.register(
            "failures",
            "Contained plugin failures by cause and failure policy applied",
            failures.clone(),
        );
        registry.register(
            "call_seconds",
            "Latency of hook calls, all plugins of the chain",
            latency.clone(),
        );
        Self {
            registry,
            generation,
            info,
            loaded,
            calls,
            failures,
            latency,
            current: Mutex::new(Vec::new()),
        }
    }

    /// The chain changed: its generation and entries.
    pub(crate) fn chain(&self, generation: u64, entries: &[EntryInfo]) {
        self.generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        for old in current.drain(..) {
            self.info.remove(&old);
            self.loaded.remove(&InstanceLabels {
                instance: old.instance,
            });
        }
        for entry in entries {
            let labels = InfoLabels {
                instance: entry.instance.clone(),
                component: entry.component.clone(),
                version: entry.version.clone(),
                sha256: entry.sha256.clone(),
            };
            self.info.get_or_create(&labels).set(1);
            self.loaded
                .get_or_create(&InstanceLabels {
                    instance: entry.instance.clone(),
                })
                .set(entry.loaded_at_ms as f64 / 1000.0);
            current.push(labels);
        }
    }

    /// One plugin's call: `denied` when it decided a deny.
    pub(crate) fn call(&self, instance: &str, hook: Hook, ok: bool, denied: bool) {
        let outcome = match (ok, denied) {
            (false, _) => "failure",
            (true, true) => "deny",
            (true, false) => "ok",
        };
        self.calls
            .get_or_create(&CallLabels {
                instance: instance.to_owned(),
                hook: hook.as_str().to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    pub(crate) fn failure(&self, failure: &PluginFailure) {
        let cause = serde_json::to_value(&failure.cause)
            .ok()
            .and_then(|v| v["kind"].as_str().map(str::to_owned))
            .unwrap_or_default();
        self.failures
            .get_or_create(&FailureLabels {
                instance: failure.plugin.clone(),
                hook: failure.hook.as_str().to_owned(),
                cause,
                applied: failure.applied.to_string(),
            })
            .inc();
    }

    pub(crate) fn latency(&self, hook: Hook, seconds: f64) {
        self.latency
            .get_or_create(&HookLabels {
                hook: hook.as_str().to_owned(),
            })
            .observe(seconds);
    }

    /// The Prometheus text exposition.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
