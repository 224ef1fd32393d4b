//! One step: the dispatch of each op, and the small ops handled in place.

use mxpolicy_host::{MediaFetch, Viewer};
use serde_json::{Map, Value, json};

use super::runner::{Runner, failures_value, homeserver_deny};
use crate::{
    scenario::{Op, Step},
    sim::Membership,
};

impl Runner {
    /// One step. `Ok` is the step's report; `Err` is bad input.
    pub(super) fn step(&mut self, i: usize, step: &Step) -> Result<Map<String, Value>, String> {
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
            Op::RunTimers {} => match self.host.run_timers() {
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
}
