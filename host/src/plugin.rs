//! One loaded plugin: its compiled component, cached `InstancePre`, description, settings, and
//! the execution of one hook call with limits, deadline and buffered state writes.

use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use wasmtime::{Store, Trap, component::Component};

use crate::{
    bindings::{Policy, PolicyPre},
    context::CallCtx,
    convert::{self, OutputSize},
    engine::Runtime,
    error::{Error, FailureCause, Result},
    homeserver::Homeserver,
    spec::{InstanceMode, PluginSpec, Settings, Source},
    storage::{Changes, StateStore},
    types::{Hook, PluginInfo},
};

/// The interfaces a plugin may import: the `mxpolicy:policy` world, nothing else.
pub const ALLOWED_IMPORTS: [&str; 5] = [
    "mxpolicy:policy/types@0.1.0",
    "mxpolicy:policy/state@0.1.0",
    "mxpolicy:policy/timers@0.1.0",
    "mxpolicy:policy/log@0.1.0",
    "mxpolicy:policy/homeserver@0.1.0",
];

/// Warm instances kept per plugin in [`InstanceMode::Reuse`].
const MAX_IDLE_INSTANCES: usize = 16;

struct Warm {
    store: Store<CallCtx>,
    bindings: Policy,
}

/// A plugin ready to be called.
pub(crate) struct Plugin {
    pub(crate) info: PluginInfo,
    pub(crate) name: Arc<str>,
    pub(crate) sha256: String,
    pub(crate) imports: Vec<String>,
    pub(crate) settings: Settings,
    config_json: String,
    pre: PolicyPre<CallCtx>,
    state: Arc<dyn StateStore>,
    homeserver: Arc<dyn Homeserver>,
    idle: Mutex<Vec<Warm>>,
}

/// Names of the plugin's imports, as `component_type` reports them.
fn import_names(component: &Component, rt: &Runtime) -> Vec<String> {
    component
        .component_type()
        .imports(&rt.engine)
        .map(|(name, _)| name.to_owned())
        .collect()
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl Plugin {
    /// Compile, check imports and describe. The configuration is checked separately by
    /// [`check_config`](Self::check_config), so `mxpolicy check` can describe a plugin whose
    /// configuration is wrong.
    pub(crate) fn compile(
        rt: &Runtime,
        spec: PluginSpec,
        state: Arc<dyn StateStore>,
        homeserver: Arc<dyn Homeserver>,
    ) -> Result<Self> {
        let label = spec.source.label();
        let load_err = |message: String| Error::Load {
            plugin: label.clone(),
            message,
        };
        let bytes = match spec.source {
            Source::File(path) => std::fs::read(&path)
                .map_err(|e| load_err(format!("cannot read {}: {e}", path.display())))?,
            Source::Bytes { bytes, .. } => bytes,
        };
        if let Some(limit) = rt.max_memory_bytes
            && spec.settings.memory_bytes > limit
        {
            return Err(load_err(format!(
                "memory limit {} exceeds the host's pool slot of {limit} bytes",
                spec.settings.memory_bytes
            )));
        }
        let sha256 = hex::encode(Sha256::digest(&bytes));
        if bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[4..8] == [1, 0, 0, 0] {
            return Err(load_err(
                "this is a core WebAssembly module, not a component; build plugins with \
                 `cargo xtask build-plugins` (or `wasm-tools component new`)"
                    .into(),
            ));
        }
        let component = Component::new(&rt.engine, &bytes)
            .map_err(|e| load_err(format!("not a valid WebAssembly component: {e:#}")))?;
        let imports = import_names(&component, rt);
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

        // Describe on a throwaway instance, then validate the config on it.
        let mut store = Self::new_store(rt, &label, &state, &homeserver, &spec.settings);
        let bindings = pre
            .instantiate(&mut store)
            .map_err(|e| load_err(format!("cannot instantiate: {e:#}")))?;
        let info = bindings
            .call_describe(&mut store)
            .map_err(|e| load_err(format!("`describe` failed: {e:#}")))?;
        let info = convert::info_from_wit(info);
        if !valid_name(&info.name) {
            return Err(load_err(format!(
                "reports the name `{}`; names are 1-64 of a-z, 0-9 and `-`",
                info.name
            )));
        }
        Ok(Self {
            name: Arc::from(info.name.as_str()),
            info,
            sha256,
            imports,
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

    /// Run `init` with the configuration on a fresh instance.
    pub(crate) fn check_config(&self, rt: &Runtime) -> Result<()> {
        let mut store = self.fresh_store(rt);
        let bindings = self.pre.instantiate(&mut store).map_err(|e| Error::Load {
            plugin: self.info.name.clone(),
            message: format!("cannot instantiate: {e:#}"),
        })?;
        match bindings.call_init(&mut store, &self.config_json) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::Config {
                plugin: self.info.name.clone(),
                key: e.key,
                message: e.message,
            }),
            Err(e) => Err(Error::Load {
                plugin: self.info.name.clone(),
                message: format!("`init` failed: {}", self.classify(&e, &store)),
            }),
        }
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
                FailureCause::Config(format!("{}: {}", e.key, e.message)),
                store,
            )),
            Err(e) => Err((self.classify(&e, &store), store)),
        }
    }

    fn classify(&self, err: &wasmtime::Error, store: &Store<CallCtx>) -> FailureCause {
        let data = store.data();
        if data.limiter.hit {
            return FailureCause::OutOfMemory {
                limit_bytes: data.limiter.cap as u64,
            };
        }
        if let Some(msg) = &data.store_failed {
            return FailureCause::Store(msg.clone());
        }
        match err.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => FailureCause::Timeout {
                deadline_ms: self.settings.deadline.as_millis() as u64,
            },
            Some(trap) => {
                let mut msg = trap.to_string();
                if let Some(panic) = &data.last_error_log {
                    msg.push_str(&format!(" (plugin logged: {panic})"));
                }
                FailureCause::Trap(msg)
            }
            None => FailureCause::Trap(format!("{err:#}")),
        }
    }

    /// Run one hook: instance, deadline, call, output-size check. Returns the output and the
    /// call's buffered writes, which the caller commits after validating the output.
    pub(crate) fn call<R: OutputSize>(
        &self,
        rt: &Runtime,
        f: impl FnOnce(&Policy, &mut Store<CallCtx>) -> wasmtime::Result<R>,
    ) -> Result<(R, Changes), FailureCause> {
        let mut warm = self.instance(rt).map_err(|(cause, _)| cause)?;
        let result = f(&warm.bindings, &mut warm.store);
        match result {
            Err(e) => Err(self.classify(&e, &warm.store)),
            Ok(out) => {
                let changes = std::mem::take(&mut warm.store.data_mut().changes);
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
                Ok((out, changes))
            }
        }
    }

    /// Commit a successful call's writes.
    pub(crate) fn commit(&self, changes: &Changes) -> Result<(), FailureCause> {
        if changes.is_empty() {
            return Ok(());
        }
        self.state
            .commit(&self.name, changes)
            .map_err(|e| FailureCause::Store(e.to_string()))
    }
}
