//! [`Host`]: the chain of plugins a homeserver calls, its composition rules, and hot swapping.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde::Serialize;
use wasmtime::Store;

use crate::{
    bindings::{Policy, wit},
    clock::{Clock, SystemClock},
    context::CallCtx,
    convert,
    decision::{Decision, FiredTimer},
    engine::{Allocation, Runtime},
    error::{Error, FailureCause, PluginFailure, Result},
    homeserver::Homeserver,
    plugin::Plugin,
    redact,
    spec::PluginSpec,
    storage::StateStore,
    types::{
        Deactivation, FailurePolicy, Hook, HttpRequest, HttpResponse, MatrixError, MediaFetch,
        MediaUpload, PluginInfo, Reactivation, SendEvent, ServeEvent, ServeVerdict, ServedEvent,
        Verdict, Viewer,
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
            .find(|p| p.info.name == name && p.wants(hook))
    }
}

/// A loaded plugin, as reported by [`Host::plugins`] and [`Host::inspect`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PluginReport {
    /// Name, version, hooks.
    #[serde(flatten)]
    pub info: PluginInfo,
    /// SHA-256 of the component's bytes, hex.
    pub sha256: String,
    /// The interfaces the component imports.
    pub imports: Vec<String>,
}

impl PluginReport {
    fn of(p: &Plugin) -> Self {
        Self {
            info: p.info.clone(),
            sha256: p.sha256.clone(),
            imports: p.imports.clone(),
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
    state: Option<Arc<dyn StateStore>>,
    homeserver: Arc<dyn Homeserver>,
    clock: Arc<dyn Clock>,
    allocation: Allocation,
}

impl HostBuilder {
    /// Where plugin state and timers live. Default: a fresh [`MemoryStore`](crate::MemoryStore).
    pub fn state(mut self, state: Arc<dyn StateStore>) -> Self {
        self.state = Some(state);
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

    /// Create the host (engine, linker, epoch thread) with an empty chain.
    pub fn build(self) -> Result<Host> {
        Ok(Host {
            runtime: Arc::new(Runtime::new(self.allocation)?),
            state: self
                .state
                .unwrap_or_else(|| Arc::new(crate::MemoryStore::new())),
            homeserver: self.homeserver,
            clock: self.clock,
            chain: ArcSwap::from_pointee(Generation {
                number: 0,
                plugins: Vec::new(),
            }),
            writer: Mutex::new(()),
            timers: Mutex::new(()),
        })
    }
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
    /// Serialises timer runs so a timer never fires twice concurrently.
    timers: Mutex<()>,
}

/// A hook's call on the bindings.
type HookCall<'a, R> = &'a dyn Fn(&Policy, &mut Store<CallCtx>) -> wasmtime::Result<R>;

impl Host {
    /// Start building a host for a homeserver.
    pub fn builder(homeserver: Arc<dyn Homeserver>) -> HostBuilder {
        HostBuilder {
            state: None,
            homeserver,
            clock: Arc::new(SystemClock),
            allocation: Allocation::default(),
        }
    }

    fn lock_writer(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn compile(&self, spec: PluginSpec) -> Result<Plugin> {
        let plugin = Plugin::compile(
            &self.runtime,
            spec,
            self.state.clone(),
            self.homeserver.clone(),
        )?;
        plugin.check_config(&self.runtime)?;
        Ok(plugin)
    }

    /// Compile and describe a plugin and validate its configuration, without loading it.
    pub fn inspect(&self, spec: PluginSpec) -> Result<Inspection> {
        let plugin = Plugin::compile(
            &self.runtime,
            spec,
            self.state.clone(),
            self.homeserver.clone(),
        )?;
        Ok(Inspection {
            report: PluginReport::of(&plugin),
            config: plugin.check_config(&self.runtime),
        })
    }

    /// Load a plugin at the end of the chain.
    pub fn load(&self, spec: PluginSpec) -> Result<PluginReport> {
        let plugin = self.compile(spec)?;
        let _w = self.lock_writer();
        let current = self.chain.load();
        if current
            .plugins
            .iter()
            .any(|p| p.info.name == plugin.info.name)
        {
            return Err(Error::Duplicate(plugin.info.name.clone()));
        }
        let report = PluginReport::of(&plugin);
        let mut plugins = current.plugins.clone();
        plugins.push(Arc::new(plugin));
        self.chain.store(Arc::new(Generation {
            number: current.number + 1,
            plugins,
        }));
        tracing::info!(plugin = %report.info.name, version = %report.info.version, "plugin loaded");
        Ok(report)
    }

    /// Replace the plugin `name` with a new build (or new configuration), keeping its place in
    /// the chain and its state. The new build is compiled and its configuration validated
    /// before the swap; on any error the old plugin stays. Calls in flight finish on the old
    /// build; calls that start after the swap use the new one.
    pub fn replace(&self, name: &str, spec: PluginSpec) -> Result<PluginReport> {
        let plugin = self.compile(spec)?;
        if plugin.info.name != name {
            return Err(Error::NameMismatch {
                expected: name.to_owned(),
                found: plugin.info.name.clone(),
            });
        }
        let _w = self.lock_writer();
        let current = self.chain.load();
        let index = current
            .plugins
            .iter()
            .position(|p| p.info.name == name)
            .ok_or_else(|| Error::NoSuchPlugin(name.to_owned()))?;
        let report = PluginReport::of(&plugin);
        let mut plugins = current.plugins.clone();
        plugins[index] = Arc::new(plugin);
        self.chain.store(Arc::new(Generation {
            number: current.number + 1,
            plugins,
        }));
        tracing::info!(plugin = %name, version = %report.info.version, "plugin replaced");
        Ok(report)
    }

    /// Remove the plugin `name` from the chain. Its state stays in the store.
    pub fn unload(&self, name: &str) -> Result<()> {
        let _w = self.lock_writer();
        let current = self.chain.load();
        if !current.plugins.iter().any(|p| p.info.name == name) {
            return Err(Error::NoSuchPlugin(name.to_owned()));
        }
        let plugins = current
            .plugins
            .iter()
            .filter(|p| p.info.name != name)
            .cloned()
            .collect();
        self.chain.store(Arc::new(Generation {
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

    /// The chain's generation number: it grows by one at every load, swap or unload.
    pub fn generation(&self) -> u64 {
        self.chain.load().number
    }

    /// Read a plugin's state directly (admin and audit APIs built on plugin state).
    pub fn read_state(&self, plugin: &str, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.state.get(plugin, key)?)
    }

    /// List a plugin's state keys under `prefix`.
    pub fn list_state(&self, plugin: &str, prefix: &str) -> Result<Vec<String>> {
        Ok(self.state.list(plugin, prefix)?)
    }

    fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    fn failure(plugin: &Plugin, hook: Hook, cause: FailureCause) -> PluginFailure {
        let failure = PluginFailure {
            plugin: plugin.info.name.clone(),
            hook,
            cause,
            applied: plugin.settings.failure_policy(hook),
        };
        tracing::warn!("{failure}");
        failure
    }

    /// Allow/deny hooks: the first deny wins and stops the chain; actions are concatenated.
    fn run_verdict(&self, hook: Hook, call: HookCall<'_, wit::Outcome>) -> Decision<Verdict> {
        let chain = self.chain.load();
        let mut decision = Decision::new(Verdict::Allow);
        for plugin in chain.plugins.iter().filter(|p| p.wants(hook)) {
            let result = plugin.call(&self.runtime, call).and_then(|(out, changes)| {
                let verdict = convert::verdict_from_wit(out.verdict)?;
                let actions = convert::actions_from_wit(out.actions)?;
                plugin.commit(&changes)?;
                Ok((verdict, actions))
            });
            match result {
                Ok((verdict, actions)) => {
                    decision.actions.extend(actions);
                    if !verdict.is_allow() {
                        decision.outcome = verdict;
                        decision.decided_by = Some(plugin.info.name.clone());
                        break;
                    }
                }
                Err(cause) => {
                    let failure = Self::failure(plugin, hook, cause);
                    let closed = failure.applied == FailurePolicy::Closed;
                    decision.failures.push(failure);
                    if closed {
                        decision.outcome =
                            Verdict::Deny(fail_closed_error(hook, &plugin.info.name));
                        decision.decided_by = Some(plugin.info.name.clone());
                        break;
                    }
                }
            }
        }
        decision
    }

    /// A local user's event, before the homeserver accepts it. A `Deny` carries the Matrix
    /// error to return (HTTP 403; see [`MatrixError::to_body`]).
    pub fn on_send(&self, event: &SendEvent) -> Decision<Verdict> {
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
            let result = plugin
                .call(&self.runtime, |b, s| {
                    if hook == Hook::OnClientServe {
                        b.call_on_client_serve(s, &ctx)
                    } else {
                        b.call_on_federation_serve(s, &ctx)
                    }
                })
                .and_then(|(out, changes)| {
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
                    plugin.commit(&changes)?;
                    Ok((out.verdicts, actions))
                });
            match result {
                Ok((plugin_verdicts, actions)) => {
                    decision.actions.extend(actions);
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
                    let failure = Self::failure(plugin, hook, cause);
                    if failure.applied == FailurePolicy::Closed {
                        verdicts
                            .iter_mut()
                            .for_each(|v| *v = ServeVerdict::Withhold);
                        decision.decided_by = Some(plugin.info.name.clone());
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
        let result = p
            .call(&self.runtime, |b, s| b.call_on_http(s, &req))
            .and_then(|(out, changes)| {
                let (response, actions) = convert::http_from_wit(out)?;
                p.commit(&changes)?;
                Ok((response, actions))
            });
        Ok(match result {
            Ok((response, actions)) => {
                let mut d = Decision::new(response);
                d.actions = actions;
                d
            }
            Err(cause) => {
                let mut d = Decision::new(HttpResponse {
                    status: 500,
                    headers: vec![("content-type".into(), "text/plain; charset=utf-8".into())],
                    body: format!("plugin `{plugin}` failed; the administrator has the details")
                        .into_bytes(),
                });
                d.failures.push(Self::failure(p, Hook::OnHttp, cause));
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
        let req = wit::AdminRequest {
            now_ms: self.now(),
            command: command.to_owned(),
            args_json: args.to_string(),
        };
        let result = p
            .call(&self.runtime, |b, s| b.call_on_admin(s, &req))
            .and_then(|(out, changes)| match out {
                Ok(text) => {
                    let value = serde_json::from_str(&text).map_err(|e| {
                        FailureCause::InvalidOutput(format!("admin answer is not JSON: {e}"))
                    })?;
                    p.commit(&changes)?;
                    Ok(Ok(value))
                }
                Err(message) => Ok(Err(message)),
            });
        match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(message)) => Err(Error::AdminRefused {
                plugin: plugin.to_owned(),
                command: command.to_owned(),
                message,
            }),
            Err(cause) => Err(Error::PluginFailed(Self::failure(p, Hook::OnAdmin, cause))),
        }
    }

    /// Fire every timer due at the clock's current time, in due order. A timer is removed when
    /// its `on-timer` call succeeds (unless the call rescheduled it); a failed call leaves it
    /// scheduled, to be retried at the next run. Timers of plugins not in the chain wait.
    pub fn run_timers(&self) -> Result<Decision<Vec<FiredTimer>>> {
        let _t = self.timers.lock().unwrap_or_else(|e| e.into_inner());
        let now = self.now();
        let due = self.state.due_timers(now)?;
        let chain = self.chain.load();
        let mut decision = Decision::new(Vec::new());
        for timer in due {
            let Some(plugin) = chain.find(&timer.plugin, Hook::OnTimer) else {
                continue;
            };
            let ctx = wit::TimerContext {
                now_ms: now,
                id: timer.id.clone(),
                due_ms: timer.due_ms,
                payload: timer.payload.clone(),
            };
            let result = plugin
                .call(&self.runtime, |b, s| b.call_on_timer(s, &ctx))
                .and_then(|(out, mut changes)| {
                    let actions = convert::actions_from_wit(out)?;
                    changes.timers.entry(timer.id.clone()).or_insert(None);
                    plugin.commit(&changes)?;
                    Ok(actions)
                });
            let ok = match result {
                Ok(actions) => {
                    decision.actions.extend(actions);
                    true
                }
                Err(cause) => {
                    decision
                        .failures
                        .push(Self::failure(plugin, Hook::OnTimer, cause));
                    false
                }
            };
            decision.outcome.push(FiredTimer {
                plugin: timer.plugin,
                id: timer.id,
                due_ms: timer.due_ms,
                ok,
            });
        }
        Ok(decision)
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
        ServeVerdict::Withhold => Ok(None),
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
