//! One loaded plugin: its compiled component, cached `InstancePre`, description, settings, and
//! the execution of one hook call with limits, deadline and buffered state writes.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use sha2::{Digest, Sha256};
use wasmtime::{PoolConcurrencyLimitError, Store, Trap, component::Component};

use crate::{
    bindings::{Policy, PolicyPre},
    context::{CallCtx, MAX_CORE_INSTANCES, MAX_MEMORIES, MAX_TABLES},
    convert::{self, OutputSize},
    engine::Runtime,
    error::{Error, FailureCause, Result},
    homeserver::Homeserver,
    slots::Slots,
    spec::{InstanceMode, PluginSpec, Settings, Source},
    storage::{Conflict, StateStore, Transaction},
    text,
    types::{Hook, PluginInfo},
};

/// The version of the `mxpolicy:policy` world this host runs (`wit/policy.wit`).
pub(crate) const WIT_VERSION: &str = "0.2.0";

/// The interfaces a plugin may import: the `mxpolicy:policy` world, nothing else.
pub(crate) const ALLOWED_IMPORTS: [&str; 5] = [
    "mxpolicy:policy/types@0.2.0",
    "mxpolicy:policy/state@0.2.0",
    "mxpolicy:policy/timers@0.2.0",
    "mxpolicy:policy/log@0.2.0",
    "mxpolicy:policy/homeserver@0.2.0",
];

/// Warm instances kept per plugin in [`InstanceMode::Reuse`] (never more than its
/// concurrency limit, since only calls holding a slot create instances).
const MAX_IDLE_INSTANCES: usize = 16;
/// Conflicting attempts after which a call runs holding its instance's commit lock.
const OPTIMISTIC_ATTEMPTS: u32 = 3;
/// Attempts after which a call that keeps conflicting fails (only calls of other processes
/// sharing the store can still conflict once the lock is held).
const MAX_ATTEMPTS: u32 = 10;
/// Longest version string a plugin may report.
const MAX_VERSION_BYTES: usize = 64;
/// Most hook entries `describe` may list (there are ten hooks).
const MAX_DESCRIBED_HOOKS: usize = 32;
/// Longest config-error key and message kept from `init`.
const MAX_CONFIG_KEY: usize = 256;
const MAX_CONFIG_MESSAGE: usize = 1024;
/// A fault this close to the top of the 32-bit address space is a shadow stack that wrapped
/// below zero: Rust and C guests keep their stack at the bottom of linear memory
/// (`--stack-first`), so an overflow turns the stack pointer into an address near 4 GiB.
const STACK_WRAP_ZONE: u64 = 16 << 20;

struct Warm {
    store: Store<CallCtx>,
    bindings: Policy,
}

/// A plugin ready to be called.
pub(crate) struct Plugin {
    /// What the component reports about itself (name, version, hooks). The name is only
    /// reported, never used as a key.
    pub(crate) info: PluginInfo,
    /// The instance name the operator chose: the key of the chain, the state and timers.
    pub(crate) name: Arc<str>,
    pub(crate) sha256: String,
    /// When this build was loaded, in ms since the Unix epoch (wall clock).
    pub(crate) loaded_at_ms: u64,
    pub(crate) imports: Vec<String>,
    pub(crate) settings: Settings,
    pub(crate) config_json: String,
    pre: PolicyPre<CallCtx>,
    state: Arc<dyn StateStore>,
    homeserver: Arc<dyn Homeserver>,
    idle: Mutex<Vec<Warm>>,
    /// Calls in flight, shared with the other builds of the same instance.
    pub(crate) slots: Arc<Slots>,
}

/// Names of the plugin's imports, as `component_type` reports them.
fn import_names(component: &Component, rt: &Runtime) -> Vec<String> {
    component
        .component_type()
        .imports(&rt.engine)
        .map(|(name, _)| name.to_owned())
        .collect()
}

pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl Plugin {
    /// Compile, check imports and describe. `keyed` is false for an inspection, which needs
    /// no valid instance name. The configuration is checked separately by
    /// [`check_config`](Self::check_config), so `mxpolicy check` can describe a plugin whose
    /// configuration is wrong.
    pub(crate) fn compile(
        rt: &Runtime,
        spec: PluginSpec,
        state: Arc<dyn StateStore>,
        homeserver: Arc<dyn Homeserver>,
        keyed: bool,
    ) -> Result<Self> {
        // The instance name is the operator's: given explicitly, or the file's stem, or the
        // label of a byte source. Never the name the component reports.
        let (instance, label) = match &spec.instance {
            Some(name) => (name.clone(), name.clone()),
            None => (spec.source.default_instance(), spec.source.label()),
        };
        let load_err = |message: String| Error::Load {
            plugin: label.clone(),
            message,
        };
        // An inspection keys nothing: any file name will do.
        let instance = if !keyed && !valid_name(&instance) {
            "inspected".to_owned()
        } else {
            instance
        };
        if !valid_name(&instance) {
            return Err(load_err(format!(
                "instance name {:?} is invalid: names are 1-64 of a-z, 0-9 and `-`; name the \
                 instance with `PluginSpec::instance`",
                text::sanitize(&instance, 80)
            )));
        }
        spec.settings.validate(&label)?;
        if let Some(limit) = rt.max_memory_bytes
            && spec.settings.memory_bytes > limit
        {
            return Err(load_err(format!(
                "memory limit {} exceeds the host's pool slot of {limit} bytes",
                spec.settings.memory_bytes
            )));
        }
        let bytes = match spec.source {
            Source::File(path) => {
                crate::file::read_bounded(&path, crate::file::MAX_COMPONENT_BYTES)
                    .map_err(|e| load_err(format!("cannot read {}: {e}", path.display())))?
            }
            Source::Bytes { bytes, .. } => bytes,
        };
        // Hashed here unless the caller hashed these very bytes (a policy set, for its pins).
        let sha256 = spec
            .sha256
            .clone()
            .unwrap_or_else(|| hex::encode(Sha256::digest(&bytes)));
        if bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[4..8] == [1, 0, 0, 0] {
            return Err(load_err(
                "this is a core WebAssembly module, not a component; build plugins with \
                 `cargo xtask build-plugins` (or `wasm-tools component new`)"
                    .into(),
            ));
        }
        let component = rt
            .compiled(&sha256, || Component::new(&rt.engine, &bytes))
            .map_err(|e| load_err(format!("not a valid WebAssembly component: {e:#}")))?;
        let imports = import_names(&component, rt);
        // A plugin of another version of this world gets its own answer: what it was built
        // for, what this host runs, and how to rebuild it.
        if let Some(other) = imports.iter().find_map(|i| {
            let version = i.strip_prefix("mxpolicy:policy/")?.split_once('@')?.1;
            (version != WIT_VERSION).then_some(version)
        }) {
            return Err(load_err(format!(
                "built for the WIT world mxpolicy:policy@{}, but this host runs \
                 mxpolicy:policy@{WIT_VERSION}; rebuild the plugin against this host's \
                 wit/policy.wit (`cargo xtask build-plugins`)",
                text::sanitize(other, 40)
            )));
        }
        if let Some(bad) = imports
            .iter()
            .find(|i| !ALLOWED_IMPORTS.contains(&i.as_str()))
        {
            return Err(Error::ForbiddenImport {
                plugin: label,
                import: bad.clone(),
                allowed: ALLOWED_IMPORTS.join(", "),
            });
        }
        let pre = rt
            .linker
            .instantiate_pre(&component)
            .and_then(PolicyPre::new)
            .map_err(|e| {
                load_err(format!(
                    "does not implement the mxpolicy:policy world: {e:#}"
                ))
            })?;
        let config_json = spec.config.to_string();

        // Describe on a throwaway instance. Until it answers, the plugin is named by its
        // instance name or its file; what it reports is checked before it is used anywhere.
        let mut store = Self::new_store(rt, &label, &state, &homeserver, &spec.settings);
        let load_deadline = spec.settings.load_deadline();
        store.set_epoch_deadline(crate::spec::ticks(load_deadline));
        let bindings = pre.instantiate(&mut store).map_err(|e| {
            load_err(format!(
                "cannot instantiate (a plugin instance may have {MAX_MEMORIES} memory, \
                 {MAX_TABLES} tables and {MAX_CORE_INSTANCES} core instances): {}",
                classify(&e, &store, load_deadline)
            ))
        })?;
        let info = bindings.call_describe(&mut store).map_err(|e| {
            load_err(format!(
                "`describe` failed: {}",
                classify(&e, &store, load_deadline)
            ))
        })?;
        let info = check_info(info).map_err(load_err)?;
        let name: Arc<str> = Arc::from(instance.as_str());
        Ok(Self {
            name,
            info,
            sha256,
            imports,
            slots: Arc::new(Slots::new(spec.settings.max_concurrency)),
            loaded_at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            settings: spec.settings,
            config_json,
            pre,
            state,
            homeserver,
            idle: Mutex::new(Vec::new()),
        })
    }

    fn new_store(
        rt: &Runtime,
        name: &str,
        state: &Arc<dyn StateStore>,
        homeserver: &Arc<dyn Homeserver>,
        settings: &Settings,
    ) -> Store<CallCtx> {
        let ctx = CallCtx::new(
            Arc::from(name),
            state.clone(),
            homeserver.clone(),
            settings.memory_bytes,
        );
        let mut store = Store::new(&rt.engine, ctx);
        store.limiter(|ctx| &mut ctx.limiter);
        store.set_epoch_deadline(settings.deadline_ticks());
        store
    }

    fn fresh_store(&self, rt: &Runtime) -> Store<CallCtx> {
        Self::new_store(
            rt,
            &self.name,
            &self.state,
            &self.homeserver,
            &self.settings,
        )
    }

    /// Whether `spec` describes this very build: same instance, component bytes (by hash),
    /// configuration and settings. A policy set applied again reuses such an entry as it is
    /// (with its warm instances) instead of describing and initialising it again.
    pub(crate) fn same_build(&self, spec: &PluginSpec) -> bool {
        spec.instance.as_deref() == Some(&*self.name)
            && spec.sha256.as_deref() == Some(self.sha256.as_str())
            && serde_json::to_string(&spec.config).is_ok_and(|c| c == self.config_json)
            && format!("{:?}", spec.settings) == format!("{:?}", self.settings)
    }

    /// Run `init` with the configuration on a fresh instance.
    pub(crate) fn check_config(&self, rt: &Runtime) -> Result<()> {
        let mut store = self.fresh_store(rt);
        let deadline = self.settings.load_deadline();
        store.set_epoch_deadline(crate::spec::ticks(deadline));
        let bindings = self.pre.instantiate(&mut store).map_err(|e| Error::Load {
            plugin: self.name.to_string(),
            message: format!("cannot instantiate: {}", classify(&e, &store, deadline)),
        })?;
        match bindings.call_init(&mut store, &self.config_json) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::Config {
                plugin: self.name.to_string(),
                key: text::sanitize(&e.key, MAX_CONFIG_KEY),
                message: text::sanitize(&e.message, MAX_CONFIG_MESSAGE),
            }),
            Err(e) => Err(Error::Load {
                plugin: self.name.to_string(),
                message: format!("`init` failed: {}", classify(&e, &store, deadline)),
            }),
        }
    }

    /// Drop the warm instances kept for reuse (they hold pool slots).
    pub(crate) fn drop_idle(&self) {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Whether the plugin declared `hook`.
    pub(crate) fn wants(&self, hook: Hook) -> bool {
        self.info.hooks.contains(&hook)
    }

    /// A ready instance: a warm one in reuse mode, else a fresh one with its config applied.
    fn instance(&self, rt: &Runtime) -> Result<Warm, (FailureCause, Store<CallCtx>)> {
        if self.settings.instance_mode == InstanceMode::Reuse {
            let warm = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            if let Some(mut warm) = warm {
                warm.store.data_mut().reset();
                warm.store
                    .set_epoch_deadline(self.settings.deadline_ticks());
                return Ok(warm);
            }
        }
        let mut store = self.fresh_store(rt);
        let bindings = match self.pre.instantiate(&mut store) {
            Ok(b) => b,
            Err(e) => return Err((self.classify(&e, &store), store)),
        };
        match bindings.call_init(&mut store, &self.config_json) {
            Ok(Ok(())) => Ok(Warm { store, bindings }),
            Ok(Err(e)) => Err((
                FailureCause::Config(format!(
                    "{}: {}",
                    text::sanitize(&e.key, MAX_CONFIG_KEY),
                    text::sanitize(&e.message, MAX_CONFIG_MESSAGE)
                )),
                store,
            )),
            Err(e) => Err((self.classify(&e, &store), store)),
        }
    }

    fn classify(&self, err: &wasmtime::Error, store: &Store<CallCtx>) -> FailureCause {
        classify(err, store, self.settings.deadline)
    }

    /// Run one hook as a transaction: call it, let `finish` check and convert its output
    /// (and add writes of the host's own), then commit. On a [`Conflict`] (another call
    /// wrote a key this one read) the call runs again on fresh state; after
    /// [`OPTIMISTIC_ATTEMPTS`] conflicts it runs holding the instance's commit lock, so no
    /// call of this process can conflict with it; after [`MAX_ATTEMPTS`] it fails with
    /// [`FailureCause::Conflict`] and the hook's failure policy applies. Returns `finish`'s
    /// value and the outbox ids of the actions `finish` recorded.
    pub(crate) fn run<R: OutputSize, T>(
        &self,
        rt: &Runtime,
        f: impl Fn(&Policy, &mut Store<CallCtx>) -> wasmtime::Result<R>,
        finish: impl FnMut(R, &mut Transaction) -> Result<T, FailureCause>,
    ) -> Result<(T, Vec<u64>), FailureCause> {
        self.run_within(rt, None, f, finish)
    }

    /// [`Plugin::run`] for `on-timer`: the hook call gets [`Settings::timer_deadline`].
    pub(crate) fn run_timer<R: OutputSize, T>(
        &self,
        rt: &Runtime,
        f: impl Fn(&Policy, &mut Store<CallCtx>) -> wasmtime::Result<R>,
        finish: impl FnMut(R, &mut Transaction) -> Result<T, FailureCause>,
    ) -> Result<(T, Vec<u64>), FailureCause> {
        let deadline = self.settings.timer_deadline();
        self.run_within(
            rt,
            (deadline != self.settings.deadline).then_some(deadline),
            f,
            finish,
        )
    }

    /// [`Plugin::run`], the hook call itself under `deadline` if given (instead of the
    /// plugin's own, which then covers only getting the instance ready).
    fn run_within<R: OutputSize, T>(
        &self,
        rt: &Runtime,
        deadline: Option<Duration>,
        f: impl Fn(&Policy, &mut Store<CallCtx>) -> wasmtime::Result<R>,
        mut finish: impl FnMut(R, &mut Transaction) -> Result<T, FailureCause>,
    ) -> Result<(T, Vec<u64>), FailureCause> {
        let mut conflicts = 0;
        loop {
            let exclusive = (conflicts >= OPTIMISTIC_ATTEMPTS).then(|| self.slots.commit_lock());
            let (out, mut txn) = self.call(rt, deadline, &f)?;
            let value = finish(out, &mut txn)?;
            let commit = match &exclusive {
                Some(_) => self.commit(&txn),
                None => {
                    let _lock = self.slots.commit_lock();
                    self.commit(&txn)
                }
            };
            match commit {
                Err(FailureCause::Conflict(key)) => {
                    conflicts += 1;
                    if conflicts >= MAX_ATTEMPTS {
                        return Err(FailureCause::Conflict(format!(
                            "{key} ({conflicts} attempts)"
                        )));
                    }
                }
                other => return other.map(|ids| (value, ids)),
            }
        }
    }

    /// Run one hook: instance, deadline, call, output-size check. Returns the output and the
    /// call's transaction, which the caller commits after validating the output.
    fn call<R: OutputSize>(
        &self,
        rt: &Runtime,
        deadline: Option<Duration>,
        f: &impl Fn(&Policy, &mut Store<CallCtx>) -> wasmtime::Result<R>,
    ) -> Result<(R, Transaction), FailureCause> {
        // Queue for a slot at most as long as the call itself may take.
        let _permit =
            self.slots
                .acquire(self.settings.deadline)
                .ok_or_else(|| FailureCause::Busy {
                    max_concurrency: self.slots.limit(),
                })?;
        let mut warm = self.instance(rt).map_err(|(cause, mut store)| {
            store.data_mut().flush_log();
            cause
        })?;
        if let Some(deadline) = deadline {
            warm.store.set_epoch_deadline(crate::spec::ticks(deadline));
        }
        let result = f(&warm.bindings, &mut warm.store);
        warm.store.data_mut().flush_log();
        match result {
            Err(e) => Err(match deadline {
                Some(deadline) => classify(&e, &warm.store, deadline),
                None => self.classify(&e, &warm.store),
            }),
            Ok(out) => {
                let txn = std::mem::take(&mut warm.store.data_mut().txn);
                if self.settings.instance_mode == InstanceMode::Reuse {
                    let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                    if idle.len() < MAX_IDLE_INSTANCES {
                        idle.push(warm);
                    }
                }
                let bytes = out.output_size();
                if bytes > self.settings.max_output_bytes {
                    return Err(FailureCause::OutputTooLarge {
                        bytes: bytes as u64,
                        limit_bytes: self.settings.max_output_bytes as u64,
                    });
                }
                Ok((out, txn))
            }
        }
    }

    /// Commit a successful call's transaction, within the plugin's quota; the ids of its
    /// actions in the outbox.
    fn commit(&self, txn: &Transaction) -> Result<Vec<u64>, FailureCause> {
        if txn.writes_nothing() {
            // Nothing written: a read-only call needs no validation (it is serializable at
            // the moment of its reads).
            return Ok(Vec::new());
        }
        self.state
            .commit(&self.name, txn, &self.settings.quota)
            .map_err(|e| {
                if let Some(q) = e.quota_exceeded() {
                    FailureCause::QuotaExceeded(q.to_string())
                } else if let Some(c) = e.0.downcast_ref::<Conflict>() {
                    FailureCause::Conflict(c.key.clone())
                } else {
                    FailureCause::Store(e.to_string())
                }
            })
    }
}

/// Check what `describe` reported: a valid name, a short printable version, a short hook
/// list. A plugin's answer is untrusted: nothing of it is echoed unbounded.
fn check_info(info: crate::bindings::wit::PluginInfo) -> Result<PluginInfo, String> {
    if !valid_name(&info.name) {
        return Err(format!(
            "reports the name {:?}; names are 1-64 of a-z, 0-9 and `-`",
            text::sanitize(&info.name, 80)
        ));
    }
    if info.version.is_empty()
        || info.version.len() > MAX_VERSION_BYTES
        || !info.version.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(format!(
            "reports the version {:?} ({} bytes); versions are 1-{MAX_VERSION_BYTES} \
             printable ASCII characters",
            text::sanitize(&info.version, 80),
            info.version.len()
        ));
    }
    if info.hooks.len() > MAX_DESCRIBED_HOOKS {
        return Err(format!(
            "lists {} hooks; at most {MAX_DESCRIBED_HOOKS} entries are accepted",
            info.hooks.len()
        ));
    }
    Ok(convert::info_from_wit(info))
}

/// Name why a call failed: the limit an import or the limiter recorded first, then the trap.
fn classify(err: &wasmtime::Error, store: &Store<CallCtx>, deadline: Duration) -> FailureCause {
    let data = store.data();
    if let Some(cause) = &data.limiter.hit {
        return cause.clone();
    }
    if let Some(cause) = &data.limit_failure {
        return cause.clone();
    }
    if let Some(msg) = &data.store_failed {
        return FailureCause::Store(msg.clone());
    }
    if let Some(pool) = err.downcast_ref::<PoolConcurrencyLimitError>() {
        return FailureCause::PoolExhausted(pool.to_string());
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => FailureCause::Timeout {
            deadline_ms: u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
        },
        Some(Trap::StackOverflow) => FailureCause::StackOverflow,
        Some(Trap::MemoryOutOfBounds) if shadow_stack_wrapped(err) => FailureCause::StackOverflow,
        Some(trap) => {
            let mut msg = trap.to_string();
            if let Some(panic) = &data.last_error_log {
                msg.push_str(&format!(" (plugin logged: {panic})"));
            }
            FailureCause::Trap(msg)
        }
        None => FailureCause::Trap(text::sanitize(&format!("{err:#}"), 4096)),
    }
}

/// Whether an out-of-bounds trap hit the top of the 32-bit address space, where a shadow
/// stack that wrapped below zero lands. wasmtime attaches the faulting address as context
/// (`memory fault at wasm address 0x...`) but does not export the type carrying it, so the
/// address is read from that message.
fn shadow_stack_wrapped(err: &wasmtime::Error) -> bool {
    err.chain().any(|cause| {
        let msg = cause.to_string();
        msg.strip_prefix("memory fault at wasm address 0x")
            .and_then(|rest| rest.split(' ').next())
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
            .is_some_and(|addr| addr >= (1u64 << 32) - STACK_WRAP_ZONE)
    })
}
