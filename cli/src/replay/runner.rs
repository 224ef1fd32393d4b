//! The runner: the simulated homeserver, the host and the clock of one scenario file, and
//! what every op shares (reporting decisions, carrying out actions, checking ids).

use std::{collections::BTreeMap, path::PathBuf, sync::Arc};

use mxpolicy_host::{
    Action, Clock, Decision, Error, Host, ManualClock, PluginFailure, SendEvent, Verdict,
    ruma::UserId,
};
use serde_json::{Map, Value, json};

use super::plugins::Loaded;
use crate::sim::{Account, World};

pub(super) struct Runner {
    pub(super) world: Arc<World>,
    pub(super) host: Host,
    pub(super) clock: Arc<ManualClock>,
    pub(super) dir: PathBuf,
    pub(super) loaded: BTreeMap<String, Loaded>,
}

/// A denial by the simulated homeserver itself, before or after the plugins.
pub(super) fn homeserver_deny(r: &mut Map<String, Value>, errcode: &str, message: String) {
    r.insert("verdict".into(), "deny".into());
    r.insert("errcode".into(), errcode.into());
    r.insert("message".into(), message.into());
    r.insert("decided_by".into(), "homeserver".into());
}

pub(super) fn failures_value(failures: &[PluginFailure]) -> Value {
    serde_json::to_value(failures).unwrap_or(Value::Null)
}

/// Host errors that mean the scenario names something that is not there: bad input.
pub(super) fn is_bad_input(e: &Error) -> bool {
    matches!(e, Error::NoSuchPlugin(_))
}

impl Runner {
    pub(super) fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    pub(super) fn local_user(&self, user: &UserId) -> Result<Account, String> {
        if !self.world.is_local(user) {
            return Err(format!(
                "{user} is not a user of {}; this op needs a local user",
                self.world.name()
            ));
        }
        self.world.known_user(user)
    }

    pub(super) fn new_event_id(
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
    pub(super) fn verdict(&self, r: &mut Map<String, Value>, d: &Decision<Verdict>, step: usize) {
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
    pub(super) fn apply(&self, r: &mut Map<String, Value>, actions: &[Action], step: usize) {
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
    pub(super) fn send_event(&self, mut event: SendEvent) -> Decision<Verdict> {
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
}
