//! [`Host`]: the chain of plugins a homeserver calls, its composition rules, and hot swapping.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicU64, Ordering},
};

use arc_swap::ArcSwap;
use serde::Serialize;
use wasmtime::Store;

use crate::{
    bindings::{Policy, wit},
    cache::CompileStats,
    changes::{self, Change},
    clock::{Clock, SystemClock},
    context::CallCtx,
    convert,
    decision::{Decision, FiredTimer, TimerStats},
    engine::{Allocation, Runtime},
    error::{Error, FailureCause, PluginFailure, Result},
    homeserver::Homeserver,
    json::{self, DEFAULT_MAX_CONTENT_DEPTH},
    metrics::{EntryInfo, Metrics},
    plugin::Plugin,
    policy_set::PolicySet,
    redact,
    spec::PluginSpec,
    storage::{Changes, Claimed, Quota, ScheduledTimer, StateStore, Transaction},
    types::{
        Action, Deactivation, FailurePolicy, Hook, HttpRequest, HttpResponse, MatrixError,
        MediaFetch, MediaUpload, PluginInfo, Reactivation, SendEvent, ServeEvent, ServeVerdict,
        ServedEvent, Verdict, Viewer,
    },
};

/// One immutable chain of plugins. A swap builds a new generation and publishes it atomically;
/// calls in flight keep the generation they started with.
struct Generation {
    number: u64,
    plugins: Vec<Arc<Plugin>>,
}

impl Generation {
    /// The plugin `name`, if it is in the chain and declared `hook`.
    fn find(&self, name: &str, hook: Hook) -> Option<&Arc<Plugin>> {
        self.plugins
            .iter()
            .find(|p| &*p.name == name && p.wants(hook))
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.plugins.iter().position(|p| &*p.name == name)
    }

    /// Whether any plugin of the chain declared `hook`.
    fn any_wants(&self, hook: Hook) -> bool {
        self.plugins.iter().any(|p| p.wants(hook))
    }
}

/// Most due timers one [`Host::run_timers`] pass fires by default. With the 64 KiB cap on
/// a timer's payload this also bounds the payload bytes a pass holds (16 MiB).
pub const DEFAULT_TIMERS_PER_PASS: usize = 256;
/// How long a claimed timer is leased to the process handling it: twice the longest deadline
/// a call may have. Past it, a timer whose handler never committed (the process died) is
/// claimed again.
pub const TIMER_LEASE_MS: u64 = 120_000;
/// How long the caller of a hook has to carry out and acknowledge the actions recorded in the
/// outbox before they are handed out again.
pub const OUTBOX_LEASE_MS: u64 = 60_000;
/// Failed attempts after which a timer is given up (removed, reported and counted).
pub const MAX_TIMER_ATTEMPTS: u32 = 10;
/// Delay before the first retry of a failed timer; each further retry waits four times
/// longer, up to [`TIMER_RETRY_MAX_MS`]. Ten attempts span about a day and a half, time for
/// an operator to swap in a fixed plugin.
pub const TIMER_RETRY_BASE_MS: u64 = 10_000;
/// Longest delay between two attempts of a failing timer: 6 hours.
pub const TIMER_RETRY_MAX_MS: u64 = 6 * 3600 * 1000;

/// The delay before attempt `attempts + 1` of a timer that failed `attempts` times.
fn retry_delay_ms(attempts: u32) -> u64 {
    let factor = 4u64.saturating_pow(attempts.saturating_sub(1));
    TIMER_RETRY_BASE_MS
        .saturating_mul(factor)
        .min(TIMER_RETRY_MAX_MS)
}

/// What [`Host::apply`] put in place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Applied {
    /// The new generation number.
    pub generation: u64,
    /// The chain, in order.
    pub plugins: Vec<PluginReport>,
    /// What changed from the chain it replaced.
    pub changes: Vec<Change>,
}

/// An action from the outbox, handed out by [`Host::claim_actions`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PendingAction {
    /// Its outbox id, for [`Host::ack_actions`].
    pub id: u64,
    /// The plugin instance whose call returned it.
    pub plugin: String,
    /// The action.
    pub action: Action,
}

/// A loaded plugin, as reported by [`Host::plugins`] and [`Host::inspect`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PluginReport {
    /// The instance name the operator gave (or the reported name, when none was given): the
    /// key of the chain, the state and the web endpoints.
    pub instance: String,
    /// Name, version and hooks, as the component reports them.
    #[serde(flatten)]
    pub info: PluginInfo,
    /// SHA-256 of the component's bytes, hex.
    pub sha256: String,
    /// The interfaces the component imports.
    pub imports: Vec<String>,
    /// When this build of the entry was loaded, in ms since the Unix epoch.
    pub loaded_at_ms: u64,
}

impl PluginReport {
    fn of(p: &Plugin) -> Self {
        Self {
            instance: p.name.to_string(),
            info: p.info.clone(),
            sha256: p.sha256.clone(),
            imports: p.imports.clone(),
            loaded_at_ms: p.loaded_at_ms,
        }
    }
}

/// The result of [`Host::inspect`]: the plugin's report and whether its config validates.
#[derive(Debug)]
pub struct Inspection {
    /// What the plugin says about itself.
    pub report: PluginReport,
    /// `Ok` if the configuration validates, else the plugin's error.
    pub config: Result<()>,
}

/// Builds a [`Host`].
pub struct HostBuilder {
    state: Arc<dyn StateStore>,
    homeserver: Arc<dyn Homeserver>,
    clock: Arc<dyn Clock>,
    allocation: Allocation,
    max_content_depth: usize,
    timers_per_pass: usize,
    outbox: bool,
    timer_actions_unclaimed: bool,
    compile_cache: Option<std::path::PathBuf>,
}

impl HostBuilder {
    /// Keep compiled components in `dir` between runs (default: compiled once per process,
    /// in memory only). Entries are keyed by the component's SHA-256 and the engine's
    /// compatibility hash and carry an HMAC under a key kept in `dir/key` (mode 0600, created
    /// on first use); an entry that does not verify is reported, removed and recompiled,
    /// never loaded. [`Host::compile_stats`] counts what came from where.
    pub fn compile_cache(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.compile_cache = Some(dir.into());
        self
    }

    /// The clock hooks see. Default: [`SystemClock`].
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Instance memory allocation. Default: pooling.
    pub fn allocation(mut self, allocation: Allocation) -> Self {
        self.allocation = allocation;
        self
    }

    /// Deepest event content accepted (the content object is level 1). Default
    /// [`DEFAULT_MAX_CONTENT_DEPTH`](crate::DEFAULT_MAX_CONTENT_DEPTH); on-send refuses
    /// deeper content with `M_BAD_JSON` before any plugin sees it.
    pub fn max_content_depth(mut self, levels: usize) -> Self {
        self.max_content_depth = levels;
        self
    }

    /// Most due timers one [`Host::run_timers`] pass fires. Default
    /// [`DEFAULT_TIMERS_PER_PASS`].
    pub fn timers_per_pass(mut self, timers: usize) -> Self {
        self.timers_per_pass = timers;
        self
    }

    /// Record every action in the store's outbox, in the same transaction as the call's state
    /// (default: off). The caller still gets the actions in the [`Decision`], with their
    /// outbox ids in [`Decision::outbox`], carries them out and acknowledges them
    /// ([`Host::ack_actions`]); actions not acknowledged within [`OUTBOX_LEASE_MS`] (the
    /// process died in between) are handed out again by [`Host::claim_actions`]. Off, actions
    /// exist only in the `Decision`: a crash after the commit loses them.
    pub fn outbox(mut self, enabled: bool) -> Self {
        self.outbox = enabled;
        self
    }

    /// With the outbox on: record the actions of timers fired by [`Host::run_timers`]
    /// unclaimed, so the next [`Host::claim_actions`] hands them out at once, instead of
    /// leasing them to the caller of `run_timers` (default: off). For a service whose
    /// scheduler fires timers while the homeserver takes the actions from the outbox.
    pub fn timer_actions_unclaimed(mut self, enabled: bool) -> Self {
        self.timer_actions_unclaimed = enabled;
        self
    }

    /// Create the host (engine, linker, epoch thread) with an empty chain.
    pub fn build(self) -> Result<Host> {
        if !(1..=100_000).contains(&self.timers_per_pass) {
            return Err(Error::InvalidLimit {
                plugin: "(host)".into(),
                limit: "timers_per_pass",
                message: format!("{} is outside 1..=100000", self.timers_per_pass),
            });
        }
        if !(1..=4096).contains(&self.max_content_depth) {
            return Err(Error::InvalidLimit {
                plugin: "(host)".into(),
                limit: "max_content_depth",
                message: format!("{} is outside 1..=4096", self.max_content_depth),
            });
        }
        Ok(Host {
            runtime: Arc::new(Runtime::new(
                self.allocation,
                self.compile_cache.as_deref(),
            )?),
            state: self.state,
            homeserver: self.homeserver,
            clock: self.clock,
            chain: ArcSwap::from_pointee(Generation {
                number: 0,
                plugins: Vec::new(),
            }),
            writer: Mutex::new(()),
            history: Mutex::new(std::collections::VecDeque::new()),
            timers: Mutex::new(()),
            max_content_depth: self.max_content_depth,
            timers_per_pass: self.timers_per_pass,
            timer_stats: TimerCounters::default(),
            outbox: self.outbox,
            timer_actions_unclaimed: self.timer_actions_unclaimed,
            metrics: Metrics::new(),
        })
    }
}

#[derive(Default)]
struct TimerCounters {
    fired: AtomicU64,
    failed: AtomicU64,
    given_up: AtomicU64,
}

/// The policy host a homeserver embeds: an ordered chain of plugins and the hooks to call them.
///
/// `Host` is `Send + Sync`; share it behind an `Arc` and call it from any thread. Hook calls
/// are synchronous and CPU-bound (bounded by each plugin's deadline); from async code, call
/// them inside `tokio::task::spawn_blocking` or accept the few microseconds on the executor.
pub struct Host {
    runtime: Arc<Runtime>,
    state: Arc<dyn StateStore>,
    homeserver: Arc<dyn Homeserver>,
    clock: Arc<dyn Clock>,
    chain: ArcSwap<Generation>,
    /// Serialises chain changes (loads, swaps) so none is lost.
    writer: Mutex<()>,
    /// Previous chains replaced by [`Host::apply`], newest last, for [`Host::rollback`].
    history: Mutex<std::collections::VecDeque<Arc<Generation>>>,
    /// Serialises timer runs so a timer never fires twice concurrently.
    timers: Mutex<()>,
    max_content_depth: usize,
    timers_per_pass: usize,
    timer_stats: TimerCounters,
    outbox: bool,
    timer_actions_unclaimed: bool,
    metrics: Metrics,
}

/// A hook's call on the bindings.
type HookCall<'a, R> = &'a dyn Fn(&Policy, &mut Store<CallCtx>) -> wasmtime::Result<R>;

impl Host {
    /// Start building a host for a homeserver, with the store that keeps plugin state and
    /// timers. There is no default store: a homeserver chooses a durable one
    /// ([`SqliteStore`](crate::SqliteStore)); `MemoryStore` (feature `testing`) is for tests
    /// and the replay tool, and loses everything on restart.
    pub fn builder(homeserver: Arc<dyn Homeserver>, state: Arc<dyn StateStore>) -> HostBuilder {
        HostBuilder {
            state,
            homeserver,
            clock: Arc::new(SystemClock),
            allocation: Allocation::default(),
            max_content_depth: DEFAULT_MAX_CONTENT_DEPTH,
            timers_per_pass: DEFAULT_TIMERS_PER_PASS,
            outbox: false,
            timer_actions_unclaimed: false,
            compile_cache: None,
        }
    }

    /// Record `actions` in the call's transaction when the outbox is on.
    fn record(&self, txn: &mut Transaction, actions: &[Action]) -> Result<(), FailureCause> {
        if !self.outbox || actions.is_empty() {
            return Ok(());
        }
        for action in actions {
            let json = serde_json::to_string(action)
                .map_err(|e| FailureCause::InvalidOutput(format!("unserializable action: {e}")))?;
            txn.actions.push(json);
        }
        txn.actions_lease_until_ms = self.now().saturating_add(OUTBOX_LEASE_MS);
        Ok(())
    }

    /// [`record`](Self::record) for a timer's actions: unclaimed when
    /// [`HostBuilder::timer_actions_unclaimed`] is on.
    fn record_timer_actions(
        &self,
        txn: &mut Transaction,
        actions: &[Action],
    ) -> Result<(), FailureCause> {
        self.record(txn, actions)?;
        if self.timer_actions_unclaimed {
            txn.actions_lease_until_ms = 0;
        }
        Ok(())
    }

    /// Claim at most `limit` outbox actions that were not acknowledged in time (their
    /// process died before carrying them out, or they were handed out and not acknowledged):
    /// the homeserver carries each out and acknowledges it with [`Host::ack_actions`]. Each
    /// claimed action is leased for [`OUTBOX_LEASE_MS`], so concurrent workers do not take the
    /// same one. Call it at startup and periodically.
    pub fn claim_actions(&self, limit: usize) -> Result<Vec<PendingAction>> {
        let now = self.now();
        let claimed = self
            .state
            .claim_actions(now, limit, now.saturating_add(OUTBOX_LEASE_MS))?;
        claimed
            .into_iter()
            .map(|e| {
                let action = serde_json::from_str(&e.action).map_err(|err| {
                    Error::Store(crate::error::StoreError::new(format!(
                        "outbox action {} is not an action: {err}",
                        e.id
                    )))
                })?;
                Ok(PendingAction {
                    id: e.id,
                    plugin: e.plugin,
                    action,
                })
            })
            .collect()
    }

    /// Acknowledge outbox actions carried out: they leave the outbox.
    pub fn ack_actions(&self, ids: &[u64]) -> Result<()> {
        Ok(self.state.ack_actions(ids)?)
    }

    fn lock_writer(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn compile(&self, spec: PluginSpec) -> Result<Plugin> {
        Plugin::compile(
            &self.runtime,
            spec,
            self.state.clone(),
            self.homeserver.clone(),
            true,
        )
    }

    /// Compile and describe a plugin and validate its configuration, without loading it.
    pub fn inspect(&self, spec: PluginSpec) -> Result<Inspection> {
        let _w = self.lock_writer();
        let plugin = Plugin::compile(
            &self.runtime,
            spec,
            self.state.clone(),
            self.homeserver.clone(),
            false,
        )?;
        Ok(Inspection {
            report: PluginReport::of(&plugin),
            config: plugin.check_config(&self.runtime),
        })
    }

    /// Check that the chain's concurrency limits fit the instance pool, one slot kept free for
    /// the instances a load creates to validate a plugin. `plugins` is the chain to be.
    fn check_pool(&self, plugins: &[Arc<Plugin>], new: &Plugin) -> Result<()> {
        let Some(pool) = self.runtime.pool_instances else {
            return Ok(());
        };
        let reserved: u64 = plugins
            .iter()
            .map(|p| u64::from(p.settings.max_concurrency))
            .sum();
        let available = u64::from(pool).saturating_sub(1);
        if reserved > available {
            return Err(Error::InvalidLimit {
                plugin: new.name.to_string(),
                limit: "max_concurrency",
                message: format!(
                    "the chain's concurrency limits add up to {reserved} instances, but the \
                     instance pool holds {pool} (one kept for loading); lower some plugins' \
                     max_concurrency or raise the pool's max_instances"
                ),
            });
        }
        Ok(())
    }

    /// Load a plugin at the end of the chain. It is keyed by its instance name
    /// ([`PluginSpec::instance`]), by default the name it reports.
    pub fn load(&self, spec: PluginSpec) -> Result<PluginReport> {
        // Compiling under the writer lock keeps at most one validation instance alive at a
        // time, the pool slot `check_pool` keeps free.
        let _w = self.lock_writer();
        let plugin = self.compile(spec)?;
        plugin.check_config(&self.runtime)?;
        let current = self.chain.load();
        if current.position(&plugin.name).is_some() {
            return Err(Error::Duplicate(plugin.name.to_string()));
        }
        let report = PluginReport::of(&plugin);
        let plugin = Arc::new(plugin);
        let mut plugins = current.plugins.clone();
        plugins.push(plugin.clone());
        self.check_pool(&plugins, &plugin)?;
        self.publish(Arc::new(Generation {
            number: current.number + 1,
            plugins,
        }));
        tracing::info!(
            plugin = %report.instance,
            component = %report.info.name,
            version = %report.info.version,
            "plugin loaded"
        );
        Ok(report)
    }

    /// Replace the plugin instance `name` with a new build (or new configuration), keeping
    /// its place in the chain, its state and its concurrency slots. The new build must report
    /// the same component name as the old one (a different plugin is unloaded and loaded, not
    /// swapped in over another's state). It is compiled and its configuration validated
    /// before the swap; on any error the old plugin stays. Calls in flight finish on the old
    /// build; calls that start after the swap use the new one.
    pub fn replace(&self, name: &str, spec: PluginSpec) -> Result<PluginReport> {
        let _w = self.lock_writer();
        let current = self.chain.load();
        let index = current
            .position(name)
            .ok_or_else(|| Error::NoSuchPlugin(name.to_owned()))?;
        let old = &current.plugins[index];
        let mut plugin = self.compile(spec.instance(name))?;
        if plugin.info.name != old.info.name {
            return Err(Error::NameMismatch {
                expected: old.info.name.clone(),
                found: plugin.info.name.clone(),
            });
        }
        plugin.check_config(&self.runtime)?;
        // In-flight calls of the old build keep counting against the instance's limit.
        plugin.slots = old.slots.clone();
        let limit = plugin.settings.max_concurrency;
        let report = PluginReport::of(&plugin);
        let plugin = Arc::new(plugin);
        let mut plugins = current.plugins.clone();
        plugins[index] = plugin.clone();
        self.check_pool(&plugins, &plugin)?;
        plugin.slots.set_limit(limit);
        self.publish(Arc::new(Generation {
            number: current.number + 1,
            plugins,
        }));
        tracing::info!(plugin = %name, version = %report.info.version, "plugin replaced");
        Ok(report)
    }

    /// Apply a whole policy set atomically: every entry is read, checked against its pin,
    /// compiled, described and initialised with its config before one generation swap. Any
    /// problem leaves the running chain untouched, and every problem found is returned, each
    /// naming the file, the entry and the key. Calls in flight finish on the generation they
    /// started on. The replaced chain is kept for [`Host::rollback`] (`engine.keep_generations`
    /// of them). Entries keep their state and concurrency slots by instance name. An entry
    /// whose component bytes, config and limits are those of the running entry of the same
    /// name is kept as it is, with its warm instances (its pin is still checked): a change to
    /// one entry re-initialises that entry only.
    pub fn apply(&self, set: &PolicySet) -> std::result::Result<Applied, Vec<Error>> {
        let _w = self.lock_writer();
        let current = self.chain.load_full();
        let mut plugins = Vec::new();
        let mut problems = Vec::new();
        // Every entry is checked, so every problem is reported at once.
        for result in set.spec_results() {
            let spec = match result {
                Ok(spec) => spec,
                Err(e) => {
                    problems.push(e);
                    continue;
                }
            };
            let instance = spec.instance.clone().unwrap_or_default();
            // An entry whose build, config and limits did not change is kept as it is.
            if let Some(same) = current.plugins.iter().find(|p| p.same_build(&spec)) {
                plugins.push(same.clone());
                continue;
            }
            let built = self.compile(spec).and_then(|p| {
                p.check_config(&self.runtime)?;
                Ok(p)
            });
            match built {
                Ok(mut plugin) => {
                    if let Some(old) = current.plugins.iter().find(|o| o.name == plugin.name) {
                        plugin.slots = old.slots.clone();
                    }
                    plugins.push(Arc::new(plugin));
                }
                Err(e) => problems.push(Error::PolicySet {
                    file: set.file.display().to_string(),
                    entry: Some(instance),
                    key: match &e {
                        Error::Config { key, .. } if key.is_empty() => "config".into(),
                        Error::Config { key, .. } => format!("config.{key}"),
                        _ => String::new(),
                    },
                    message: e.to_string(),
                }),
            }
        }
        if problems.is_empty()
            && let Some(last) = plugins.last()
            && let Err(e) = self.check_pool(&plugins, last)
        {
            problems.push(e);
        }
        if !problems.is_empty() {
            tracing::warn!(
                problems = problems.len(),
                "policy set refused; the running chain stays"
            );
            return Err(problems);
        }
        for p in &plugins {
            p.slots.set_limit(p.settings.max_concurrency);
        }
        let number = current.number + 1;
        let applied = Applied {
            generation: number,
            plugins: plugins.iter().map(|p| PluginReport::of(p)).collect(),
            changes: changes::diff(&current.plugins, &plugins),
        };
        self.publish(Arc::new(Generation { number, plugins }));
        self.remember(current, set.engine.keep_generations);
        tracing::info!(
            generation = number,
            file = %set.file.display(),
            "policy set applied: {}",
            changes::summary(&applied.changes)
        );
        Ok(applied)
    }

    fn remember(&self, generation: Arc<Generation>, keep: usize) {
        // Warm instances of a kept chain would hold pool slots the running chain reserved.
        for p in &generation.plugins {
            p.drop_idle();
        }
        let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        history.push_back(generation);
        while history.len() > keep {
            history.pop_front();
        }
    }

    /// Put the previous chain back (the one the last [`Host::apply`] replaced), as a new
    /// generation. The policy-set file is not rewritten: a watcher that reloads on the file's
    /// next change applies the file again. Errors when no previous chain is kept.
    pub fn rollback(&self) -> Result<u64> {
        let _w = self.lock_writer();
        let previous = self
            .history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_back()
            .ok_or(Error::NoPreviousGeneration)?;
        let current = self.chain.load_full();
        for p in &previous.plugins {
            p.slots.set_limit(p.settings.max_concurrency);
        }
        let number = current.number + 1;
        self.publish(Arc::new(Generation {
            number,
            plugins: previous.plugins.clone(),
        }));
        for p in &current.plugins {
            p.drop_idle();
        }
        tracing::info!(
            generation = number,
            to = previous.number,
            "rolled back to generation {}: {}",
            previous.number,
            changes::summary(&changes::diff(&current.plugins, &previous.plugins))
        );
        Ok(number)
    }

    /// Remove the plugin instance `name` from the chain. Its state stays in the store.
    pub fn unload(&self, name: &str) -> Result<()> {
        let _w = self.lock_writer();
        let current = self.chain.load();
        if current.position(name).is_none() {
            return Err(Error::NoSuchPlugin(name.to_owned()));
        }
        let plugins = current
            .plugins
            .iter()
            .filter(|p| &*p.name != name)
            .cloned()
            .collect();
        self.publish(Arc::new(Generation {
            number: current.number + 1,
            plugins,
        }));
        Ok(())
    }

    /// The chain, in order.
    pub fn plugins(&self) -> Vec<PluginReport> {
        self.chain
            .load()
            .plugins
            .iter()
            .map(|p| PluginReport::of(p))
            .collect()
    }

    /// How the components loaded so far were obtained: compiled, found in memory, loaded
    /// from the on-disk cache ([`HostBuilder::compile_cache`]), or refused there.
    pub fn compile_stats(&self) -> CompileStats {
        self.runtime.compile_stats()
    }

    /// Whether a plugin of the current chain declared `hook`. A homeserver can skip building
    /// a hook's context (reading the facts it needs) when none did; the answer may change at
    /// the next swap, so ask per request.
    pub fn wants(&self, hook: Hook) -> bool {
        self.chain.load().plugins.iter().any(|p| p.wants(hook))
    }

    /// The chain's generation number: it grows by one at every load, swap or unload.
    pub fn generation(&self) -> u64 {
        self.chain.load().number
    }

    /// Read a plugin's state directly (admin and audit APIs built on plugin state).
    pub fn read_state(&self, plugin: &str, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.state.get(plugin, key)?.map(|e| e.value))
    }

    /// List a plugin's state keys under `prefix`.
    pub fn list_state(&self, plugin: &str, prefix: &str) -> Result<Vec<String>> {
        Ok(self.state.list(plugin, prefix, None, usize::MAX)?)
    }

    fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    fn failure(&self, plugin: &Plugin, hook: Hook, cause: FailureCause) -> PluginFailure {
        let failure = PluginFailure {
            plugin: plugin.name.to_string(),
            hook,
            cause,
            applied: plugin.settings.failure_policy(hook),
        };
        tracing::warn!("{failure}");
        self.metrics.call(&plugin.name, hook, false, false);
        self.metrics.failure(&failure);
        failure
    }

    /// Publish a new chain generation (and its metrics).
    fn publish(&self, generation: Arc<Generation>) {
        let entries: Vec<EntryInfo> = generation
            .plugins
            .iter()
            .map(|p| EntryInfo {
                instance: p.name.to_string(),
                component: p.info.name.clone(),
                version: p.info.version.clone(),
                sha256: p.sha256.clone(),
                loaded_at_ms: p.loaded_at_ms,
            })
            .collect();
        let number = generation.number;
        self.chain.store(generation);
        self.metrics.chain(number, &entries);
    }

    /// The host's metrics in the Prometheus text format, for the homeserver to serve: the
    /// chain's generation, one `plugin_info` per entry, calls per entry, hook and outcome,
    /// contained failures by cause and failure policy applied, and a latency histogram per
    /// hook (see the names in the output's `# HELP` lines).
    pub fn metrics(&self) -> String {
        self.metrics.encode()
    }

    /// Allow/deny hooks: the first deny wins and stops the chain; actions are concatenated.
    fn run_verdict(&self, hook: Hook, call: HookCall<'_, wit::Outcome>) -> Decision<Verdict> {
        let started = std::time::Instant::now();
        let chain = self.chain.load();
        let mut decision = Decision::new(Verdict::Allow);
        for plugin in chain.plugins.iter().filter(|p| p.wants(hook)) {
            let result = plugin.run(&self.runtime, call, |out, txn| {
                let verdict = convert::verdict_from_wit(out.verdict)?;
                let actions = convert::actions_from_wit(out.actions)?;
                self.record(txn, &actions)?;
                Ok((verdict, actions))
            });
            match result {
                Ok(((verdict, actions), ids)) => {
                    decision.record(actions, ids);
                    self.metrics
                        .call(&plugin.name, hook, true, !verdict.is_allow());
                    if !verdict.is_allow() {
                        decision.outcome = verdict;
                        decision.decided_by = Some(plugin.name.to_string());
                        break;
                    }
                }
                Err(cause) => {
                    let failure = self.failure(plugin, hook, cause);
                    let closed = failure.applied == FailurePolicy::Closed;
                    decision.failures.push(failure);
                    if closed {
                        decision.outcome = Verdict::Deny(fail_closed_error(hook, &plugin.name));
                        decision.decided_by = Some(plugin.name.to_string());
                        break;
                    }
                }
            }
        }
        self.metrics.latency(hook, started.elapsed().as_secs_f64());
        decision
    }

    /// A local user's event, before the homeserver accepts it. A `Deny` carries the Matrix
    /// error to return (HTTP 403; see [`MatrixError::to_body`]).
    ///
    /// Content nested deeper than the host accepts
    /// ([`HostBuilder::max_content_depth`]) is refused with `M_BAD_JSON` before any plugin
    /// runs (`decided_by` is `None`): no policy could read it, so it must not pass unread.
    pub fn on_send(&self, event: &SendEvent) -> Decision<Verdict> {
        if json::depth_exceeds(&event.content, self.max_content_depth)
            && self.chain.load().any_wants(Hook::OnSend)
        {
            return Decision::new(Verdict::Deny(MatrixError::new(
                "M_BAD_JSON",
                format!(
                    "Event content nests deeper than {} levels",
                    self.max_content_depth
                ),
            )));
        }
        let ctx = convert::send_to_wit(event, self.now());
        self.run_verdict(Hook::OnSend, &|b, s| b.call_on_send(s, &ctx))
    }

    /// An account deactivation: a `Deny` vetoes it; the actions are what to do.
    pub fn on_deactivate(&self, request: &Deactivation) -> Decision<Verdict> {
        let ctx = convert::deactivate_to_wit(request, self.now());
        self.run_verdict(Hook::OnDeactivate, &|b, s| b.call_on_deactivate(s, &ctx))
    }

    /// An account reactivation: a `Deny` vetoes it.
    pub fn on_reactivate(&self, request: &Reactivation) -> Decision<Verdict> {
        let ctx = convert::reactivate_to_wit(request, self.now());
        self.run_verdict(Hook::OnReactivate, &|b, s| b.call_on_reactivate(s, &ctx))
    }

    /// A media upload, before the media is stored.
    pub fn on_media_upload(&self, upload: &MediaUpload) -> Decision<Verdict> {
        let ctx = convert::upload_to_wit(upload, self.now());
        self.run_verdict(Hook::OnMediaUpload, &|b, s| b.call_on_media_upload(s, &ctx))
    }

    /// A media fetch, before the media is served. A `Deny` should be answered exactly as for
    /// media that does not exist (404 `M_NOT_FOUND` by default), so nothing leaks.
    pub fn on_media_fetch(&self, fetch: &MediaFetch) -> Decision<Verdict> {
        let ctx = convert::fetch_to_wit(fetch, self.now());
        self.run_verdict(Hook::OnMediaFetch, &|b, s| b.call_on_media_fetch(s, &ctx))
    }

    /// Events about to be served to a client (`viewer` is a user or the anonymous public).
    /// Returns each event as it must be served: whole, redacted, pseudonymized or withheld.
    pub fn on_client_serve(
        &self,
        viewer: &Viewer,
        events: Vec<ServeEvent>,
    ) -> Result<Decision<Vec<ServedEvent>>> {
        self.serve(Hook::OnClientServe, viewer, events)
    }

    /// Events about to be served to a remote server. Pseudonymize verdicts become redactions:
    /// a pseudonymous sender would break the event's signatures.
    pub fn on_federation_serve(
        &self,
        viewer: &Viewer,
        events: Vec<ServeEvent>,
    ) -> Result<Decision<Vec<ServedEvent>>> {
        self.serve(Hook::OnFederationServe, viewer, events)
    }

    fn serve(
        &self,
        hook: Hook,
        viewer: &Viewer,
        events: Vec<ServeEvent>,
    ) -> Result<Decision<Vec<ServedEvent>>> {
        let mut facts = Vec::with_capacity(events.len());
        for (i, e) in events.iter().enumerate() {
            facts.push(convert::serve_event_to_wit(e).map_err(|m| Error::BadInput {
                hook,
                message: format!("event #{i}: {m}"),
            })?);
        }
        let ctx = wit::ServeContext {
            now_ms: self.now(),
            viewer: convert::viewer_to_wit(viewer),
            events: facts,
        };
        let n = events.len();
        // Per event: combined verdict and the first pseudonym proposed.
        let mut verdicts = vec![ServeVerdict::Serve; n];
        let mut pseudonyms: Vec<Option<String>> = vec![None; n];
        let mut decision = Decision::new(Vec::new());
        let chain = self.chain.load();
        for plugin in chain.plugins.iter().filter(|p| p.wants(hook)) {
            let serve_call = |b: &Policy, s: &mut Store<CallCtx>| {
                if hook == Hook::OnClientServe {
                    b.call_on_client_serve(s, &ctx)
                } else {
                    b.call_on_federation_serve(s, &ctx)
                }
            };
            let result = plugin.run(&self.runtime, serve_call, |out, txn| {
                if out.verdicts.len() != n {
                    return Err(FailureCause::InvalidOutput(format!(
                        "{} verdicts for {n} events",
                        out.verdicts.len()
                    )));
                }
                for v in &out.verdicts {
                    if let wit::ServeVerdict::Pseudonymize(p) = v
                        && ruma::UserId::parse(p).is_err()
                    {
                        return Err(FailureCause::InvalidOutput(format!(
                            "pseudonym `{p}` is not a user id"
                        )));
                    }
                }
                let actions = convert::actions_from_wit(out.actions)?;
                self.record(txn, &actions)?;
                Ok((out.verdicts, actions))
            });
            match result {
                Ok(((plugin_verdicts, actions), ids)) => {
                    decision.record(actions, ids);
                    self.metrics.call(&plugin.name, hook, true, false);
                    for (i, v) in plugin_verdicts.into_iter().enumerate() {
                        let (v, pseudonym) = match v {
                            wit::ServeVerdict::Serve => (ServeVerdict::Serve, None),
                            wit::ServeVerdict::Redact => (ServeVerdict::Redact, None),
                            wit::ServeVerdict::Withhold => (ServeVerdict::Withhold, None),
                            wit::ServeVerdict::Pseudonymize(p) if hook == Hook::OnClientServe => {
                                (ServeVerdict::Pseudonymize, Some(p))
                            }
                            wit::ServeVerdict::Pseudonymize(_) => (ServeVerdict::Redact, None),
                        };
                        if v > verdicts[i] {
                            verdicts[i] = v;
                        }
                        if pseudonyms[i].is_none() {
                            pseudonyms[i] = pseudonym;
                        }
                    }
                }
                Err(cause) => {
                    let failure = self.failure(plugin, hook, cause);
                    if failure.applied == FailurePolicy::Closed {
                        verdicts
                            .iter_mut()
                            .for_each(|v| *v = ServeVerdict::Withhold);
                        decision.decided_by = Some(plugin.name.to_string());
                    }
                    decision.failures.push(failure);
                }
            }
        }
        decision.outcome = events
            .into_iter()
            .zip(verdicts)
            .zip(pseudonyms)
            .map(|((e, verdict), pseudonym)| apply_serve_verdict(e, verdict, pseudonym))
            .collect();
        Ok(decision)
    }

    /// A request to the web endpoints of plugin `plugin` (mounted by the homeserver under
    /// `/_mxpolicy/<plugin>/`). A failing plugin answers 500.
    pub fn on_http(&self, plugin: &str, request: &HttpRequest) -> Result<Decision<HttpResponse>> {
        let chain = self.chain.load();
        let p = chain
            .find(plugin, Hook::OnHttp)
            .ok_or_else(|| Error::NoSuchPlugin(plugin.to_owned()))?;
        let req = convert::http_to_wit(request, self.now());
        let result = p.run(
            &self.runtime,
            |b, s| b.call_on_http(s, &req),
            |out, txn| {
                let (response, actions) = convert::http_from_wit(out)?;
                self.record(txn, &actions)?;
                Ok((response, actions))
            },
        );
        Ok(match result {
            Ok(((response, actions), ids)) => {
                self.metrics.call(&p.name, Hook::OnHttp, true, false);
                let mut d = Decision::new(response);
                d.record(actions, ids);
                d
            }
            Err(cause) => {
                let mut d = Decision::new(HttpResponse {
                    status: 500,
                    headers: vec![("content-type".into(), "text/plain; charset=utf-8".into())],
                    body: format!("plugin `{plugin}` failed; the administrator has the details")
                        .into_bytes(),
                });
                d.failures.push(self.failure(p, Hook::OnHttp, cause));
                d
            }
        })
    }

    /// Send an admin command to plugin `plugin` (its `on-admin` hook) and return its JSON
    /// answer. Host-side APIs of policies are built on this: recording the consent given at
    /// registration, asking whether a user accepted a policy version, listing erasures. The
    /// command's state writes are committed only if it succeeds.
    pub fn admin(
        &self,
        plugin: &str,
        command: &str,
        args: &serde_json::Value,
    ) -> Result<serde_json::Value> {
        let chain = self.chain.load();
        let p = chain
            .find(plugin, Hook::OnAdmin)
            .ok_or_else(|| Error::NoSuchPlugin(plugin.to_owned()))?;
        if json::depth_exceeds(args, self.max_content_depth) {
            return Err(Error::BadInput {
                hook: Hook::OnAdmin,
                message: format!(
                    "arguments nest deeper than {} levels",
                    self.max_content_depth
                ),
            });
        }
        let req = wit::AdminRequest {
            now_ms: self.now(),
            command: command.to_owned(),
            args_json: args.to_string(),
        };
        let result = p.run(
            &self.runtime,
            |b, s| b.call_on_admin(s, &req),
            |out, _txn| match out {
                Ok(text) => {
                    let value = serde_json::from_str(&text).map_err(|e| {
                        FailureCause::InvalidOutput(format!("admin answer is not JSON: {e}"))
                    })?;
                    Ok(Ok(value))
                }
                Err(message) => Ok(Err(message)),
            },
        );
        if result.is_ok() {
            self.metrics.call(&p.name, Hook::OnAdmin, true, false);
        }
        match result.map(|(answer, _ids)| answer) {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(message)) => Err(Error::AdminRefused {
                plugin: plugin.to_owned(),
                command: command.to_owned(),
                message,
            }),
            Err(cause) => Err(Error::PluginFailed(self.failure(p, Hook::OnAdmin, cause))),
        }
    }

    /// Fire the timers due at the clock's current time, in due order, at most
    /// [`HostBuilder::timers_per_pass`] of them: call it periodically (every second, say)
    /// and a backlog drains pass by pass without any one call taking long. A timer is removed
    /// when its `on-timer` call succeeds (unless the call rescheduled it). A failed call's
    /// writes are dropped and the timer is retried with exponential backoff
    /// ([`TIMER_RETRY_BASE_MS`] times 4 per attempt, at most [`TIMER_RETRY_MAX_MS`]); after
    /// [`MAX_TIMER_ATTEMPTS`] failures it is given up: removed, reported with
    /// [`FiredTimer::gave_up`] and counted in [`Host::timer_stats`]. Timers of plugins not in
    /// the chain wait, without taking room in a pass.
    pub fn run_timers(&self) -> Result<Decision<Vec<FiredTimer>>> {
        let _t = self.timers.lock().unwrap_or_else(|e| e.into_inner());
        let now = self.now();
        let chain = self.chain.load();
        let mut decision = Decision::new(Vec::new());
        let names: Vec<&str> = chain
            .plugins
            .iter()
            .filter(|p| p.wants(Hook::OnTimer))
            .map(|p| &*p.name)
            .collect();
        if names.is_empty() {
            return Ok(decision);
        }
        // Leased for twice the longest deadline a call may have: only a process that died
        // mid-way leaves a lease to expire, and its timers are then claimed again.
        let lease_until = now.saturating_add(TIMER_LEASE_MS);
        let due = self
            .state
            .claim_timers(now, &names, self.timers_per_pass, lease_until)?;
        for timer in due {
            let Some(plugin) = chain.find(&timer.plugin, Hook::OnTimer) else {
                continue;
            };
            let ctx = wit::TimerContext {
                now_ms: now,
                id: timer.id.clone(),
                due_ms: timer.due_ms,
                payload: timer.payload,
            };
            // A failure left over from another call on this thread is not this call's.
            let _ = self.homeserver.take_failure();
            let result = plugin.run_timer(
                &self.runtime,
                |b, s| b.call_on_timer(s, &ctx),
                |out, txn| {
                    if let Some(why) = self.homeserver.take_failure() {
                        return Err(FailureCause::Homeserver(why));
                    }
                    let actions = convert::actions_from_wit(out)?;
                    // Removed only if still under this claim: a timer another call rescheduled
                    // meanwhile (a new erasure request) stays.
                    txn.changes.claimed.insert(
                        timer.id.clone(),
                        Claimed {
                            lease_until_ms: lease_until,
                            then: None,
                        },
                    );
                    self.record_timer_actions(txn, &actions)?;
                    Ok(actions)
                },
            );
            let mut fired = FiredTimer {
                plugin: timer.plugin,
                id: timer.id,
                due_ms: timer.due_ms,
                ok: true,
                attempts: timer.attempts,
                retry_at_ms: None,
                gave_up: false,
            };
            match result {
                Ok((actions, ids)) => {
                    self.timer_stats.fired.fetch_add(1, Ordering::Relaxed);
                    self.metrics.call(&plugin.name, Hook::OnTimer, true, false);
                    decision.record(actions, ids);
                }
                Err(cause) => {
                    self.timer_stats.failed.fetch_add(1, Ordering::Relaxed);
                    decision
                        .failures
                        .push(self.failure(plugin, Hook::OnTimer, cause));
                    fired.ok = false;
                    fired.attempts = timer.attempts.saturating_add(1);
                    let retry = if fired.attempts >= MAX_TIMER_ATTEMPTS {
                        fired.gave_up = true;
                        self.timer_stats.given_up.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(
                            plugin = %fired.plugin,
                            timer = %crate::text::sanitize(&fired.id, 200),
                            "timer failed {} times; given up and removed",
                            fired.attempts
                        );
                        None
                    } else {
                        let at = now.saturating_add(retry_delay_ms(fired.attempts));
                        fired.retry_at_ms = Some(at);
                        Some(ScheduledTimer {
                            due_ms: at,
                            payload: ctx.payload,
                            attempts: fired.attempts,
                        })
                    };
                    let mut changes = Changes::default();
                    changes.claimed.insert(
                        fired.id.clone(),
                        Claimed {
                            lease_until_ms: lease_until,
                            then: retry,
                        },
                    );
                    // A store failure here must not lose the actions of the timers already
                    // fired in this pass: it is reported, and the timer's lease lets it be
                    // claimed again.
                    if let Err(e) = self.state.commit(
                        &plugin.name,
                        &Transaction::writes(changes),
                        &Quota::UNLIMITED,
                    ) {
                        decision.failures.push(self.failure(
                            plugin,
                            Hook::OnTimer,
                            FailureCause::Store(e.to_string()),
                        ));
                    }
                }
            }
            decision.outcome.push(fired);
        }
        Ok(decision)
    }

    /// Counts of timer calls since the host started: succeeded, failed, given up.
    pub fn timer_stats(&self) -> TimerStats {
        TimerStats {
            fired: self.timer_stats.fired.load(Ordering::Relaxed),
            failed: self.timer_stats.failed.load(Ordering::Relaxed),
            given_up: self.timer_stats.given_up.load(Ordering::Relaxed),
        }
    }
}

/// The error a fail-closed plugin failure produces.
fn fail_closed_error(hook: Hook, plugin: &str) -> MatrixError {
    match hook {
        // Identical to media that does not exist, so a failure leaks nothing.
        Hook::OnMediaFetch => MatrixError::new("M_NOT_FOUND", "Not found"),
        _ => MatrixError::new(
            "M_UNKNOWN",
            format!("The policy `{plugin}` is unavailable; please try again later"),
        ),
    }
}

fn apply_serve_verdict(
    e: ServeEvent,
    verdict: ServeVerdict,
    pseudonym: Option<String>,
) -> ServedEvent {
    let event_id = e.event.get("event_id").cloned();
    let result = match verdict {
        ServeVerdict::Serve => Ok(Some(e.event)),
        ServeVerdict::Withhold => {
            // A withheld event may be arbitrarily deep: take it apart without recursion.
            json::drop_deep(e.event);
            Ok(None)
        }
        ServeVerdict::Redact => redact::redact_event(e.event, &e.room_version).map(Some),
        ServeVerdict::Pseudonymize => redact::pseudonymize_event(
            e.event,
            &e.room_version,
            pseudonym.as_deref().unwrap_or("@erased:invalid"),
        )
        .map(Some),
    };
    match result {
        Ok(event) => ServedEvent { verdict, event },
        Err(msg) => {
            // Never leak an event we could not redact: withhold it.
            tracing::warn!(?event_id, "cannot redact event ({msg}); withholding it");
            ServedEvent {
                verdict: ServeVerdict::Withhold,
                event: None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn host_is_send_and_sync() {
        fn is<T: Send + Sync>() {}
        is::<super::Host>();
    }
}
