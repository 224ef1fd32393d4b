//! `mxpolicy replay`: run a scenario's steps through the real host and the real compiled
//! plugins, with the simulated homeserver in front; print one JSON line per step; compare each
//! step's `expect`.
//!
//! Every plugin gets a generous deadline (1 s unless the scenario says otherwise: replay is
//! about decisions, not latency) and the host's default instance mode (a fresh instance per
//! call). State lives in an in-memory store for the length of one scenario file.

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use mxpolicy_host::{
    Action, Clock, Deactivation, Decision, Error, Host, ManualClock, MediaFetch, MediaUpload,
    MemoryStore, PluginFailure, PluginSpec, Reactivation, Requester, SendEvent, ServeVerdict,
    Verdict, Viewer,
    ruma::{OwnedMxcUri, OwnedServerName, RoomId, RoomVersionId, UserId},
};
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::{
    expect::Mismatch,
    locate,
    scenario::{self, Op, PluginEntry, Step},
    sim::{Membership, Slot, User, World},
};

/// Deadline of a hook call in replay, unless the scenario sets `deadline_ms`.
pub const REPLAY_DEADLINE: Duration = Duration::from_secs(1);

/// The clock's start when a scenario does not set it: 2026-01-01T00:00:00Z.
pub const DEFAULT_START_MS: u64 = 1_767_225_600_000;

/// Bodies longer than this are cut in the printed report (expectations see the whole body).
const MAX_PRINTED_BODY: usize = 2000;

/// How one scenario file went (bad input is an `Err` of [`run_file`] instead).
#[derive(Debug)]
pub struct FileResult {
    /// Steps run.
    pub steps: usize,
    /// Labels of the steps whose expectations failed.
    pub failed: Vec<String>,
}

/// Where reports go.
pub struct Output<'a> {
    /// JSON lines (stdout), or `None` for `--quiet`.
    pub lines: Option<&'a mut dyn Write>,
    /// Human-readable failures (stderr).
    pub human: &'a mut dyn Write,
}

#[derive(Serialize)]
struct Line<'a> {
    step: usize,
    op: &'a str,
    #[serde(flatten)]
    rest: &'a Map<String, Value>,
}

/// A loaded plugin, remembered for `swap`.
#[derive(Clone)]
struct Loaded {
    path: PathBuf,
    entry: PluginEntry,
}

fn spec_for(path: &Path, entry: &PluginEntry) -> PluginSpec {
    let mut spec = PluginSpec::file(path)
        .config(entry.config.clone().unwrap_or_else(|| json!({})))
        .deadline(
            entry
                .deadline_ms
                .map(Duration::from_millis)
                .unwrap_or(REPLAY_DEADLINE),
        );
    for (hook, policy) in &entry.failure_policy {
        spec = spec.failure_policy(*hook, *policy);
    }
    if let Some(mode) = entry.instance_mode {
        spec = spec.instance_mode(mode);
    }
    spec
}

/// Run one scenario file. `Err` is bad input (exit 2): unreadable or malformed file, unknown
/// user, room or event, a plugin that cannot be found or loaded.
pub fn run_file(path: &Path, out: &mut Output<'_>) -> anyhow::Result<FileResult> {
    let scenario = scenario::load(path)?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let world = Arc::new(World::new(scenario.server_name.clone()));
    let clock = Arc::new(ManualClock::new(DEFAULT_START_MS));
    let host = Host::builder(world.clone())
        .state(Arc::new(MemoryStore::new()))
        .clock(clock.clone())
        .build()
        .context("cannot start the policy host")?;
    let mut runner = Runner {
        world,
        host,
        clock,
        dir,
        loaded: BTreeMap::new(),
    };
    let mut plugins = Vec::new();
    for (i, entry) in scenario.plugins.iter().enumerate() {
        let report = runner
            .load(entry)
            .map_err(|e| anyhow::anyhow!("{}: plugins[{i}]: {e}", path.display()))?;
        plugins.push(report);
    }
    if let Some(lines) = out.lines.as_deref_mut() {
        let mut header = json!({
            "scenario": path.display().to_string(),
            "server_name": scenario.server_name.as_str(),
            "plugins": plugins,
        });
        if let (Some(d), Some(h)) = (&scenario.description, header.as_object_mut()) {
            h.insert("description".into(), d.as_str().into());
        }
        let _ = writeln!(lines, "{header}");
    }

    let mut result = FileResult {
        steps: 0,
        failed: Vec::new(),
    };
    for (i, step) in scenario.steps.0.iter().enumerate() {
        let label = format!("step {i} ({})", describe(&step.op));
        let mut report = runner.step(i, step).map_err(|e| {
            let (line, column) = scenario.position(i);
            anyhow::anyhow!(
                "{}:{line}:{column}: step {i} ({}): {e}",
                path.display(),
                step.op.name()
            )
        })?;
        result.steps += 1;
        let mismatches = judge(step, &mut report);
        if !mismatches.is_empty() {
            print_failure(out.human, path, &label, step.note.as_deref(), &mismatches);
            result.failed.push(label);
        }
        truncate_body(&mut report);
        if let Some(lines) = out.lines.as_deref_mut() {
            let line = Line {
                step: i,
                op: step.op.name(),
                rest: &report,
            };
            if let Ok(text) = serde_json::to_string(&line) {
                let _ = writeln!(lines, "{text}");
            }
        }
    }
    if let Some(lines) = out.lines.as_deref_mut() {
        let summary = json!({
            "scenario": path.display().to_string(),
            "passed": result.failed.is_empty(),
            "steps": result.steps,
            "failed": result.failed,
        });
        let _ = writeln!(lines, "{summary}");
    }
    Ok(result)
}

/// Compare a step's report with its expectations (an error the step did not expect is a
/// mismatch too), and record the outcome in the report.
fn judge(step: &Step, report: &mut Map<String, Value>) -> Vec<Mismatch> {
    let mut mismatches = step
        .expect
        .as_ref()
        .map(|e| e.compare(report))
        .unwrap_or_default();
    if let Some(err) = report.get("error").and_then(Value::as_str)
        && step.expect.as_ref().is_none_or(|e| e.error.is_none())
    {
        mismatches.push(Mismatch {
            what: "error".into(),
            expected: "no error".into(),
            actual: err.to_owned(),
            diff: None,
        });
    }
    if let Some(note) = &step.note {
        report.insert("note".into(), note.as_str().into());
    }
    report.insert("ok".into(), mismatches.is_empty().into());
    if !mismatches.is_empty() {
        report.insert(
            "mismatches".into(),
            mismatches.iter().map(Mismatch::summary).collect(),
        );
    }
    mismatches
}

/// The human-readable failure of one step: file, step, note, then each mismatch.
fn print_failure(
    human: &mut dyn Write,
    path: &Path,
    label: &str,
    note: Option<&str>,
    mismatches: &[Mismatch],
) {
    let note = note.map(|n| format!(" - {n}")).unwrap_or_default();
    let _ = writeln!(human, "FAIL {}: {label}{note}", path.display());
    for m in mismatches {
        let _ = write!(human, "{}", m.render());
    }
}

/// Cut long HTTP bodies in the printed line (expectations have seen the whole body).
fn truncate_body(report: &mut Map<String, Value>) {
    if let Some(Value::String(body)) = report.get_mut("body")
        && body.len() > MAX_PRINTED_BODY
    {
        let mut cut = MAX_PRINTED_BODY;
        while !body.is_char_boundary(cut) {
            cut -= 1;
        }
        body.truncate(cut);
        body.push_str("...(truncated)");
    }
}

/// A short description of a step for failure messages.
fn describe(op: &Op) -> String {
    let opt = |id: &Option<String>| id.as_deref().map(|i| format!(" {i}")).unwrap_or_default();
    match op {
        Op::Send {
            sender,
            room,
            event_id,
            ..
        } => format!("send{} from {sender} in {room}", opt(event_id)),
        Op::Join { room, user, .. } => format!("join {user} to {room}"),
        Op::Leave { room, user, .. } => format!("leave {user} from {room}"),
        Op::Invite { room, user, .. } => format!("invite {user} to {room}"),
        Op::Deactivate { user, erase, .. } => format!("deactivate {user}, erase: {erase}"),
        Op::Reactivate { user, .. } => format!("reactivate {user}"),
        Op::Consent { user, version, .. } => format!("consent of {user} to {version}"),
        Op::Upload { mxc, .. } => format!("upload {mxc}"),
        Op::FetchMedia { mxc, requester } => format!(
            "fetch_media {mxc} by {}",
            requester.as_deref().unwrap_or("anonymous")
        ),
        Op::ClientServe { viewer, .. } => format!(
            "client_serve to {}",
            viewer.as_ref().map(|v| v.as_str()).unwrap_or("anonymous")
        ),
        Op::FederationServe { server, .. } => format!("federation_serve to {server}"),
        Op::Http {
            plugin,
            method,
            path,
            ..
        } => format!("http {method} {path} on {plugin}"),
        Op::Swap { plugin, .. } => format!("swap {plugin}"),
        Op::Admin {
            plugin, command, ..
        } => format!("admin {command} on {plugin}"),
        other => other.name().to_owned(),
    }
}

struct Runner {
    world: Arc<World>,
    host: Host,
    clock: Arc<ManualClock>,
    dir: PathBuf,
    loaded: BTreeMap<String, Loaded>,
}

/// A denial by the simulated homeserver itself, before or after the plugins.
fn homeserver_deny(r: &mut Map<String, Value>, errcode: &str, message: String) {
    r.insert("verdict".into(), "deny".into());
    r.insert("errcode".into(), errcode.into());
    r.insert("message".into(), message.into());
    r.insert("decided_by".into(), "homeserver".into());
}

fn failures_value(failures: &[PluginFailure]) -> Value {
    serde_json::to_value(failures).unwrap_or(Value::Null)
}

/// Host errors that mean the scenario names something that is not there: bad input.
fn is_bad_input(e: &Error) -> bool {
    matches!(e, Error::NoSuchPlugin(_))
}

impl Runner {
    fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    fn load(&mut self, entry: &PluginEntry) -> Result<Value, String> {
        let reference = entry
            .path
            .as_deref()
            .or(entry.name.as_deref())
            .ok_or("a plugin needs a `path` or a `name`")?;
        let path = locate::resolve(reference, &self.dir)?;
        // Host errors name the plugin (its file until it reports its name).
        let report = self
            .host
            .load(spec_for(&path, entry))
            .map_err(|e| e.to_string())?;
        if let Some(name) = &entry.name
            && *name != report.info.name
        {
            return Err(format!(
                "{} reports the name `{}`, but the scenario calls it `{name}`",
                path.display(),
                report.info.name
            ));
        }
        self.loaded.insert(
            report.info.name.clone(),
            Loaded {
                path: path.clone(),
                entry: entry.clone(),
            },
        );
        Ok(json!({
            "name": report.info.name,
            "version": report.info.version,
            "hooks": report.info.hooks,
            "sha256": report.sha256,
            "path": path.display().to_string(),
        }))
    }

    fn local_user(&self, user: &UserId) -> Result<User, String> {
        if !self.world.is_local(user) {
            return Err(format!(
                "{user} is not a user of {}; this op needs a local user",
                self.world.name()
            ));
        }
        self.world.known_user(user)
    }

    fn new_event_id(
        &self,
        given: &Option<String>,
        prefix: &str,
        step: usize,
    ) -> Result<String, String> {
        let id = given.clone().unwrap_or_else(|| format!("${prefix}-{step}"));
        if self.world.read().event_id_taken(&id) {
            return Err(format!("event id {id} is already used"));
        }
        if !id.starts_with('$') {
            return Err(format!("event id {id:?} must start with `$`"));
        }
        Ok(id)
    }

    /// Report a verdict decision, then carry out its actions.
    fn verdict(&self, r: &mut Map<String, Value>, d: &Decision<Verdict>, step: usize) {
        match &d.outcome {
            Verdict::Allow => {
                r.insert("verdict".into(), "allow".into());
            }
            Verdict::Deny(e) => {
                r.insert("verdict".into(), "deny".into());
                r.insert("errcode".into(), e.errcode.as_str().into());
                r.insert("message".into(), e.message.as_str().into());
                if !e.fields.is_empty() {
                    r.insert("fields".into(), Value::Object(e.fields.clone()));
                }
            }
        }
        r.insert("decided_by".into(), json!(d.decided_by));
        r.insert("failures".into(), failures_value(&d.failures));
        self.apply(r, &d.actions, step);
    }

    /// Report the actions and carry them out in the simulation.
    fn apply(&self, r: &mut Map<String, Value>, actions: &[Action], step: usize) {
        r.insert(
            "actions".into(),
            serde_json::to_value(actions).unwrap_or(Value::Null),
        );
        if actions.is_empty() {
            return;
        }
        let now = self.now();
        let mut world = self.world.write();
        let effects: Vec<Value> = actions
            .iter()
            .enumerate()
            .map(|(k, a)| world.apply(a, &format!("{step}-{k}"), now).into())
            .collect();
        r.insert("effects".into(), Value::Array(effects));
    }

    /// Call on-send for a local user's event; `event` comes without the time and the
    /// server-notices flag, which the simulation fills in.
    fn send_event(&self, mut event: SendEvent) -> Decision<Verdict> {
        event.is_server_notices_room = self
            .world
            .read()
            .rooms
            .get(&event.room_id)
            .and_then(|r| r.server_notices_for.clone())
            .is_some_and(|u| u == event.sender);
        event.origin_server_ts = self.now();
        self.host.on_send(&event)
    }

    /// One step. `Ok` is the step's report; `Err` is bad input.
    fn step(&mut self, i: usize, step: &Step) -> Result<Map<String, Value>, String> {
        let mut r = Map::new();
        match &step.op {
            Op::Clock { now_ms } => self.clock.set(*now_ms),
            Op::Advance { ms } => self.clock.advance(*ms),
            Op::Register { user, kind } => {
                self.world.register(user, *kind)?;
                r.insert("user".into(), user.as_str().into());
            }
            Op::CreateRoom { .. } => self.create_room(&mut r, i, &step.op)?,
            Op::Join {
                room,
                user,
                event_id,
            } => self.membership(&mut r, i, room, user, user, Membership::Join, event_id)?,
            Op::Leave {
                room,
                user,
                event_id,
            } => self.membership(&mut r, i, room, user, user, Membership::Leave, event_id)?,
            Op::Invite {
                room,
                user,
                by,
                event_id,
            } => self.membership(&mut r, i, room, by, user, Membership::Invite, event_id)?,
            Op::Consent {
                user,
                version,
                plugin,
            } => {
                self.local_user(user)?;
                let args = json!({"user": user.as_str(), "version": version});
                self.admin(&mut r, plugin, "record-consent", &args)
                    .map_err(|e| {
                        format!(
                            "{e}: the consent op records consent through that plugin's \
                         `record-consent` admin command, as the homeserver does at \
                         registration (load the consent plugin in `plugins`, or name another \
                         with \"plugin\")"
                        )
                    })?;
            }
            Op::Send {
                room,
                sender,
                event_id,
                event_type,
                state_key,
                content,
            } => self.send(
                &mut r, i, room, sender, event_id, event_type, state_key, content,
            )?,
            Op::Deactivate { .. } | Op::Reactivate { .. } => {
                self.account(&mut r, i, &step.op)?;
            }
            Op::Upload {
                user,
                mxc,
                size,
                content_type,
            } => self.upload(&mut r, i, user, mxc, *size, content_type)?,
            Op::FetchMedia { mxc, requester } => {
                self.check_mxc(mxc, false)?;
                let requester = self.requester(requester.as_deref())?;
                if !self.world.read().media.contains_key(mxc.as_str()) {
                    homeserver_deny(&mut r, "M_NOT_FOUND", "Not found".into());
                } else {
                    let d = self.host.on_media_fetch(&MediaFetch {
                        mxc: mxc.clone(),
                        requester,
                    });
                    self.verdict(&mut r, &d, i);
                }
            }
            Op::ClientServe { viewer, event_ids } => {
                let viewer = match viewer {
                    Some(u) => {
                        self.world.known_user(u)?;
                        Viewer::User(u.clone())
                    }
                    None => Viewer::Anonymous,
                };
                self.serve(&mut r, i, &viewer, event_ids, false)?;
            }
            Op::FederationServe { server, event_ids } => {
                let viewer = Viewer::Server(server.clone());
                self.serve(&mut r, i, &viewer, event_ids, true)?;
            }
            Op::Http { .. } => self.http(&mut r, i, &step.op)?,
            Op::RunTimers => match self.host.run_timers() {
                Ok(d) => {
                    r.insert(
                        "fired".into(),
                        serde_json::to_value(&d.outcome).unwrap_or(Value::Null),
                    );
                    r.insert("failures".into(), failures_value(&d.failures));
                    self.apply(&mut r, &d.actions, i);
                }
                Err(e) => {
                    r.insert("error".into(), e.to_string().into());
                }
            },
            Op::Swap {
                plugin,
                path,
                config,
                deadline_ms,
            } => self.swap(&mut r, plugin, path, config, *deadline_ms)?,
            Op::Admin {
                plugin,
                command,
                args,
            } => self.admin(&mut r, plugin, command, args)?,
            Op::Inspect { user, room, mxc } => {
                let facts = match (user, room, mxc) {
                    (Some(u), None, None) => {
                        self.world.known_user(u)?;
                        self.world.read().user_facts(u)
                    }
                    (None, Some(room), None) => {
                        self.world.known_room(room)?;
                        self.world.read().room_facts(room)
                    }
                    (None, None, Some(m)) => Some(self.world.read().media_facts(m.as_str())),
                    _ => return Err("inspect takes exactly one of `user`, `room`, `mxc`".into()),
                };
                r.insert("facts".into(), facts.unwrap_or(Value::Null));
            }
        }
        if r.get("verdict").and_then(Value::as_str) == Some("deny")
            && let Some(id) = r.get("event_id").and_then(Value::as_str)
        {
            self.world.write().refused_ids.insert(id.to_owned());
        }
        r.insert("now_ms".into(), self.now().into());
        Ok(r)
    }

    fn create_room(&self, r: &mut Map<String, Value>, i: usize, op: &Op) -> Result<(), String> {
        let Op::CreateRoom {
            room,
            creator,
            room_version,
            history_visibility,
            event_id,
            server_notices_for,
        } = op
        else {
            return Ok(());
        };
        self.world.known_user(creator)?;
        let version = RoomVersionId::try_from(room_version.as_str())
            .ok()
            .filter(|v| v.rules().is_some())
            .ok_or_else(|| format!("unknown room version {room_version:?}"))?;
        if let Some(u) = server_notices_for {
            self.local_user(u)?;
        }
        let id = self.new_event_id(event_id, "create", i)?;
        let ids = self.world.write().create_room(
            &id,
            room,
            creator,
            version,
            *history_visibility,
            server_notices_for.clone(),
            self.now(),
        )?;
        r.insert("event_ids".into(), json!(ids));
        Ok(())
    }

    /// `deactivate` and `reactivate`: the hook, then the account's marks when allowed.
    fn account(&self, r: &mut Map<String, Value>, i: usize, op: &Op) -> Result<(), String> {
        let (user, d, deactivated, erased) = match op {
            Op::Deactivate {
                user,
                erase,
                by_admin,
                second_factor,
            } => {
                self.local_user(user)?;
                let d = self.host.on_deactivate(&Deactivation {
                    user: user.clone(),
                    erase: *erase,
                    by_admin: *by_admin,
                    second_factor: *second_factor,
                });
                (user, d, true, *erase)
            }
            Op::Reactivate { user, by_admin } => {
                self.local_user(user)?;
                let d = self.host.on_reactivate(&Reactivation {
                    user: user.clone(),
                    by_admin: *by_admin,
                });
                (user, d, false, false)
            }
            _ => return Ok(()),
        };
        if d.outcome.is_allow()
            && let Some(u) = self.world.write().users.get_mut(user)
        {
            u.deactivated = deactivated;
            u.erased = erased;
        }
        self.verdict(r, &d, i);
        Ok(())
    }

    fn upload(
        &self,
        r: &mut Map<String, Value>,
        i: usize,
        user: &UserId,
        mxc: &OwnedMxcUri,
        size: u64,
        content_type: &Option<String>,
    ) -> Result<(), String> {
        let u = self.local_user(user)?;
        self.check_mxc(mxc, true)?;
        if self.world.read().media.contains_key(mxc.as_str()) {
            return Err(format!("{mxc} was already uploaded"));
        }
        if u.deactivated {
            homeserver_deny(r, "M_USER_DEACTIVATED", format!("{user} is deactivated"));
            return Ok(());
        }
        let d = self.host.on_media_upload(&MediaUpload {
            mxc: mxc.clone(),
            uploader: user.to_owned(),
            size,
            content_type: content_type.clone(),
        });
        if d.outcome.is_allow() {
            self.world.write().media.insert(
                mxc.to_string(),
                crate::sim::Media {
                    uploader: user.to_owned(),
                    size,
                    content_type: content_type.clone(),
                },
            );
        }
        self.verdict(r, &d, i);
        Ok(())
    }

    fn http(&self, r: &mut Map<String, Value>, i: usize, op: &Op) -> Result<(), String> {
        let Op::Http {
            plugin,
            method,
            path,
            query,
            body,
            headers,
        } = op
        else {
            return Ok(());
        };
        let request = mxpolicy_host::HttpRequest {
            method: method.clone(),
            path: path.clone(),
            query: query.clone(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect(),
            body: body.clone().into_bytes(),
        };
        match self.host.on_http(plugin, &request) {
            Ok(d) => {
                let resp = &d.outcome;
                r.insert("status".into(), resp.status.into());
                let headers: Map<String, Value> = resp
                    .headers
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().into()))
                    .collect();
                r.insert("headers".into(), Value::Object(headers));
                r.insert(
                    "body".into(),
                    String::from_utf8_lossy(&resp.body).into_owned().into(),
                );
                r.insert("failures".into(), failures_value(&d.failures));
                self.apply(r, &d.actions, i);
            }
            Err(e) if is_bad_input(&e) => {
                return Err(format!(
                    "no plugin named `{plugin}` with an on-http hook is loaded"
                ));
            }
            Err(e) => {
                r.insert("error".into(), e.to_string().into());
            }
        }
        Ok(())
    }

    /// Replace a plugin, each of path, config and deadline defaulting to the current one.
    fn swap(
        &mut self,
        r: &mut Map<String, Value>,
        plugin: &str,
        path: &Option<String>,
        config: &Option<Value>,
        deadline_ms: Option<u64>,
    ) -> Result<(), String> {
        let current = self.loaded.get(plugin).cloned().ok_or_else(|| {
            format!(
                "no plugin named `{plugin}` is loaded (loaded: {})",
                self.loaded.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })?;
        let mut entry = current.entry;
        let file = match path {
            Some(p) => {
                entry.path = Some(p.clone());
                locate::resolve(p, &self.dir)?
            }
            None => current.path,
        };
        if let Some(c) = config {
            entry.config = Some(c.clone());
        }
        if let Some(d) = deadline_ms {
            entry.deadline_ms = Some(d);
        }
        match self.host.replace(plugin, spec_for(&file, &entry)) {
            Ok(report) => {
                r.insert(
                    "plugin".into(),
                    json!({
                        "name": report.info.name,
                        "version": report.info.version,
                        "sha256": report.sha256,
                        "generation": self.host.generation(),
                    }),
                );
                self.loaded
                    .insert(plugin.to_owned(), Loaded { path: file, entry });
            }
            Err(e) => {
                r.insert("error".into(), e.to_string().into());
            }
        }
        Ok(())
    }

    /// An admin command: `result`, or `error` when the plugin refuses or fails; a plugin that
    /// is not loaded is bad input.
    fn admin(
        &self,
        r: &mut Map<String, Value>,
        plugin: &str,
        command: &str,
        args: &Value,
    ) -> Result<(), String> {
        match self.host.admin(plugin, command, args) {
            Ok(v) => {
                r.insert("result".into(), v);
            }
            Err(e) if is_bad_input(&e) => {
                return Err(format!(
                    "no plugin named `{plugin}` with an on-admin hook is loaded"
                ));
            }
            Err(e) => {
                r.insert("error".into(), e.to_string().into());
            }
        }
        Ok(())
    }

    fn check_mxc(&self, mxc: &OwnedMxcUri, upload: bool) -> Result<(), String> {
        let (server, _) = mxc
            .parts()
            .map_err(|e| format!("{mxc} is not a valid mxc:// URI: {e}"))?;
        if upload && server != self.world.name() {
            return Err(format!(
                "{mxc}: media is uploaded to this server, so its URI starts with mxc://{}/",
                self.world.name()
            ));
        }
        Ok(())
    }

    fn requester(&self, requester: Option<&str>) -> Result<Requester, String> {
        match requester {
            None => Ok(Requester::Anonymous),
            Some(s) if s.starts_with('@') => {
                let user = UserId::parse(s).map_err(|e| format!("requester {s:?}: {e}"))?;
                self.world.known_user(&user)?;
                Ok(Requester::User(user))
            }
            Some(s) => match s.strip_prefix("server:") {
                Some(name) => OwnedServerName::try_from(name)
                    .map(Requester::Server)
                    .map_err(|e| format!("requester {s:?}: {e}")),
                None => Err(format!(
                    "requester {s:?} must be \"@user:server\", \"server:<name>\" or null"
                )),
            },
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn membership(
        &self,
        r: &mut Map<String, Value>,
        i: usize,
        room: &RoomId,
        sender: &UserId,
        target: &UserId,
        membership: Membership,
        event_id: &Option<String>,
    ) -> Result<(), String> {
        let room_rec = self.world.known_room(room)?;
        let sender_rec = self.world.known_user(sender)?;
        if target != sender {
            self.world.known_user(target)?;
        }
        let id = self.new_event_id(event_id, membership.as_str(), i)?;
        r.insert("event_id".into(), id.as_str().into());
        if sender_rec.deactivated {
            homeserver_deny(r, "M_USER_DEACTIVATED", format!("{sender} is deactivated"));
            return Ok(());
        }
        if sender_rec.local {
            let d = self.send_event(SendEvent {
                sender: sender.to_owned(),
                sender_kind: sender_rec.kind,
                room_id: room.to_owned(),
                room_version: room_rec.version.clone(),
                event_type: "m.room.member".into(),
                state_key: Some(target.to_string()),
                content: json!({"membership": membership.as_str()}),
                origin_server_ts: 0,
                is_server_notices_room: false,
            });
            self.verdict(r, &d, i);
            if !d.outcome.is_allow() {
                return Ok(());
            }
        } else {
            r.insert("verdict".into(), "allow".into());
            r.insert("federated".into(), true.into());
        }
        // The homeserver's own authorization, after the policies (as Synapse checks consent
        // before auth rules).
        let (sender_now, target_now) = {
            let w = self.world.read();
            (w.membership(room, sender), w.membership(room, target))
        };
        let refusal = match membership {
            Membership::Leave
                if !matches!(target_now, Some(Membership::Join | Membership::Invite)) =>
            {
                Some(format!("{target} is not in {room}"))
            }
            Membership::Invite if sender_now != Some(Membership::Join) => {
                Some(format!("{sender} is not in {room}"))
            }
            Membership::Invite if target_now == Some(Membership::Join) => {
                Some(format!("{target} is already in {room}"))
            }
            _ => None,
        };
        if let Some(message) = refusal {
            homeserver_deny(r, "M_FORBIDDEN", message);
            return Ok(());
        }
        self.world
            .write()
            .set_membership(&id, room, sender, target, membership, self.now())
    }

    #[allow(clippy::too_many_arguments)]
    fn send(
        &self,
        r: &mut Map<String, Value>,
        i: usize,
        room: &RoomId,
        sender: &UserId,
        event_id: &Option<String>,
        event_type: &str,
        state_key: &Option<String>,
        content: &Value,
    ) -> Result<(), String> {
        let room_rec = self.world.known_room(room)?;
        let sender_rec = self.world.known_user(sender)?;
        if !content.is_object() {
            return Err("`content` must be a JSON object".into());
        }
        let id = self.new_event_id(event_id, "send", i)?;
        r.insert("event_id".into(), id.as_str().into());
        if sender_rec.deactivated {
            homeserver_deny(r, "M_USER_DEACTIVATED", format!("{sender} is deactivated"));
            return Ok(());
        }
        if sender_rec.local {
            let d = self.send_event(SendEvent {
                sender: sender.to_owned(),
                sender_kind: sender_rec.kind,
                room_id: room.to_owned(),
                room_version: room_rec.version.clone(),
                event_type: event_type.to_owned(),
                state_key: state_key.clone(),
                content: content.clone(),
                origin_server_ts: 0,
                is_server_notices_room: false,
            });
            self.verdict(r, &d, i);
            if !d.outcome.is_allow() {
                return Ok(());
            }
        } else {
            // A remote user's event arrives over federation: on-send is for local users only.
            r.insert("verdict".into(), "allow".into());
            r.insert("federated".into(), true.into());
        }
        if self.world.read().membership(room, sender) != Some(Membership::Join) {
            homeserver_deny(r, "M_FORBIDDEN", format!("{sender} is not in {room}"));
            return Ok(());
        }
        self.world
            .write()
            .add_event(
                &id,
                room,
                sender,
                event_type,
                state_key.clone(),
                content.clone(),
                self.now(),
            )
            .map(|_| ())
    }

    fn serve(
        &self,
        r: &mut Map<String, Value>,
        i: usize,
        viewer: &Viewer,
        ids: &[String],
        federation: bool,
    ) -> Result<(), String> {
        let slots = self.world.read().serve_slots(viewer, ids, federation)?;
        let mut visible = Vec::new();
        let mut verdicts: Vec<Value> = Vec::with_capacity(slots.len());
        for slot in slots {
            match slot {
                Slot::NotFound => verdicts.push("not_found".into()),
                Slot::NotVisible => verdicts.push("not_visible".into()),
                Slot::Visible(e) => {
                    verdicts.push(Value::Null);
                    visible.push(e);
                }
            }
        }
        let mut served = Vec::new();
        if !visible.is_empty() {
            let result = if federation {
                self.host.on_federation_serve(viewer, visible)
            } else {
                self.host.on_client_serve(viewer, visible)
            };
            let d = match result {
                Ok(d) => d,
                Err(e) => {
                    r.insert("error".into(), e.to_string().into());
                    return Ok(());
                }
            };
            let mut outcome = d.outcome.iter();
            for v in verdicts.iter_mut().filter(|v| v.is_null()) {
                if let Some(one) = outcome.next() {
                    *v = serde_json::to_value(one.verdict).unwrap_or(Value::Null);
                    if one.verdict != ServeVerdict::Withhold {
                        served.extend(one.event.clone());
                    }
                }
            }
            r.insert("decided_by".into(), json!(d.decided_by));
            r.insert("failures".into(), failures_value(&d.failures));
            self.apply(r, &d.actions, i);
        } else {
            r.insert("decided_by".into(), Value::Null);
            r.insert("failures".into(), json!([]));
            r.insert("actions".into(), json!([]));
        }
        r.insert("verdicts".into(), Value::Array(verdicts));
        r.insert("events".into(), Value::Array(served));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replay `scenario` (no plugins: the simulation's own behaviour) and return the JSON
    /// lines, the human output and the result.
    fn replay(scenario: &str) -> (Vec<Value>, String, anyhow::Result<FileResult>) {
        let dir = std::env::temp_dir().join(format!(
            "mxpolicy-replay-unit-{}-{}",
            std::process::id(),
            scenario.len()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.json");
        std::fs::write(&path, scenario).unwrap();
        let (mut lines, mut human) = (Vec::new(), Vec::new());
        let result = run_file(
            &path,
            &mut Output {
                lines: Some(&mut lines),
                human: &mut human,
            },
        );
        std::fs::remove_dir_all(&dir).ok();
        let lines = String::from_utf8(lines)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (lines, String::from_utf8(human).unwrap(), result)
    }

    #[test]
    fn the_homeserver_refuses_what_it_must_without_plugins() {
        let (lines, human, result) = replay(
            r#"{"steps": [
              {"op": "register", "user": "@a:hs.example"},
              {"op": "register", "user": "@b:hs.example"},
              {"op": "create_room", "room": "!r:hs.example", "creator": "@a:hs.example"},
              {"op": "send", "room": "!r:hs.example", "sender": "@b:hs.example",
               "expect": {"verdict": "deny", "errcode": "M_FORBIDDEN", "decided_by": "homeserver"}},
              {"op": "send", "room": "!r:hs.example", "sender": "@c:remote.example",
               "expect": {"verdict": "deny", "errcode": "M_FORBIDDEN"}},
              {"op": "join", "room": "!r:hs.example", "user": "@c:remote.example"},
              {"op": "send", "room": "!r:hs.example", "sender": "@c:remote.example",
               "event_id": "$remote", "expect": {"verdict": "allow"}},
              {"op": "deactivate", "user": "@b:hs.example", "expect": {"verdict": "allow"}},
              {"op": "join", "room": "!r:hs.example", "user": "@b:hs.example",
               "expect": {"verdict": "deny", "errcode": "M_USER_DEACTIVATED"}},
              {"op": "client_serve", "viewer": "@a:hs.example", "event_ids": ["$remote", "$send-3"],
               "expect": {"verdicts": ["serve", "not_found"]}},
              {"op": "inspect", "room": "!r:hs.example",
               "expect": {"facts": {"members": ["@a:hs.example", "@c:remote.example"]}}}
            ]}"#,
        );
        let result = result.unwrap();
        assert!(result.failed.is_empty(), "{human}");
        assert_eq!(result.steps, 11);
        assert_eq!(lines.len(), 13);
        assert_eq!(lines[7]["federated"], true);
        assert_eq!(lines[7]["decided_by"], Value::Null);
    }

    #[test]
    fn a_failed_expectation_names_the_step_and_the_run_goes_on() {
        let (lines, human, result) = replay(
            r#"{"steps": [
              {"op": "register", "user": "@a:hs.example"},
              {"op": "inspect", "user": "@a:hs.example", "expect": {"facts": {"kind": "bot"}}},
              {"op": "admin", "plugin": "nobody", "command": "x"}
            ]}"#,
        );
        let err = result.unwrap_err().to_string();
        assert!(
            err.contains("step 2 (admin): no plugin named `nobody`"),
            "{err}"
        );
        assert!(
            human.contains(
                ": step 1 (inspect)\n    facts.kind: expected \"bot\", got \"regular\"\n"
            ),
            "{human}"
        );
        assert_eq!(lines[2]["ok"], false);
    }
}
